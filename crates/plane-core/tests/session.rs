//! Sessions: one per URL, each plane built once, the backend's own session
//! used where it has one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::future::BoxFuture;
use plane_core::registry::{Connector, Registry};
use plane_core::session::{Session, SessionBackend};
use plane_core::{Error, ErrorKind, Kv, Result};
use url::Url;

/// A backend whose kv plane is a mem hub's, counting how often it is built;
/// its first build fails when asked to, and it serves no other plane.
#[derive(Clone, Default)]
struct Counting {
    builds: Arc<AtomicUsize>,
    fail_first: bool,
}

impl Connector for Counting {
    fn name(&self) -> &'static str {
        "counting"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["counting"]
    }
    fn kv<'a>(&'a self, _url: &'a Url, _registry: &'a Registry) -> BoxFuture<'a, Result<Kv>> {
        Box::pin(async move {
            let n = self.builds.fetch_add(1, Ordering::SeqCst);
            if self.fail_first && n == 0 {
                return Err(Error::new(ErrorKind::Connection, "first connect fails"));
            }
            Ok(plane_mem::Hub::new().kv(&Default::default()))
        })
    }
}

fn registry(c: Counting) -> Registry {
    let mut r = Registry::new();
    r.register(c);
    r
}

#[tokio::test]
async fn a_plane_is_built_once_per_session() {
    let c = Counting::default();
    let r = registry(c.clone());
    let s = r.connect("counting://x").await.unwrap();
    assert_eq!(s.backend(), "counting");
    let a = s.kv().await.unwrap();
    let b = s.clone().kv().await.unwrap();
    assert_eq!(
        c.builds.load(Ordering::SeqCst),
        1,
        "clones share the built plane"
    );
    // Both handles are the one plane: a bucket made through one is seen by
    // the other (a second build would be a fresh, empty hub).
    a.create_bucket(plane_core::kv::BucketConfig::new("b"))
        .await
        .unwrap();
    b.open_bucket("b").await.unwrap();
    // Another session builds its own.
    r.connect("counting://x").await.unwrap().kv().await.unwrap();
    assert_eq!(c.builds.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_failed_build_is_retried_and_unserved_planes_are_unsupported() {
    let c = Counting {
        fail_first: true,
        ..Counting::default()
    };
    let s = registry(c.clone()).connect("counting://x").await.unwrap();
    assert_eq!(s.kv().await.unwrap_err().kind(), ErrorKind::Connection);
    s.kv().await.expect("the next call builds again");
    assert_eq!(c.builds.load(Ordering::SeqCst), 2);
    assert_eq!(
        s.requests().await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(s.events().await.unwrap_err().kind(), ErrorKind::Unsupported);
    assert_eq!(
        s.objects().await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(s.queues().await.unwrap_err().kind(), ErrorKind::Unsupported);
}

/// A backend with a session of its own: the registry must use it rather
/// than the per-plane methods, which this one leaves unserved.
struct OwnSession;

struct OwnPlanes;

impl SessionBackend for OwnPlanes {
    fn name(&self) -> &'static str {
        "own"
    }
    fn kv(&self) -> BoxFuture<'_, Result<Kv>> {
        Box::pin(async { Ok(plane_mem::Hub::new().kv(&Default::default())) })
    }
}

impl Connector for OwnSession {
    fn name(&self) -> &'static str {
        "own"
    }
    fn schemes(&self) -> &'static [&'static str] {
        &["own"]
    }
    fn session<'a>(
        &'a self,
        _url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Option<Session>>> {
        Box::pin(async { Ok(Some(Session::new(OwnPlanes))) })
    }
}

#[tokio::test]
async fn a_backend_session_is_used_by_connect_and_the_shortcuts() {
    let mut r = Registry::new();
    r.register(OwnSession);
    r.connect("own://").await.unwrap().kv().await.unwrap();
    r.kv("own://")
        .await
        .expect("the shortcut goes through the session");
    assert_eq!(
        r.requests("own://").await.unwrap_err().kind(),
        ErrorKind::Unsupported
    );
    assert_eq!(
        r.connect("nope://").await.unwrap_err().kind(),
        ErrorKind::InvalidConfig
    );
}
