//! One session per URL: every plane a backend serves, over one connection.
//!
//! [`Registry::connect`](crate::Registry::connect) resolves a URL once and
//! returns a [`Session`]. Each plane is built the first time it is asked for
//! and the same handle (a cheap clone) is returned after that, so a process
//! that uses all five planes on `nats://…` holds one NATS connection, not
//! five. The per-plane shortcuts (`Registry::requests` and its siblings)
//! stay: each opens a session of its own and takes one plane from it.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! let registry = plane_mem::registry();
//! let session = registry.connect("mem://session-doc").await?;
//! let kv = session.kv().await?;
//! let events = session.events().await?;
//! assert_eq!(session.backend(), "mem");
//! # let _ = (kv, events);
//! # Ok(()) }
//! ```

use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio::sync::OnceCell;

use crate::error::{Error, ErrorKind, Result};
use crate::events::Events;
use crate::kv::Kv;
use crate::objects::Objects;
use crate::queue::Queues;
use crate::request::Requests;

/// The planes, for messages and capability listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plane {
    /// Request/reply.
    Request,
    /// Pub/sub events.
    Events,
    /// Key-value.
    Kv,
    /// Objects.
    Objects,
    /// Work queues.
    Queue,
}

impl Plane {
    /// Lower-case name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Plane::Request => "request",
            Plane::Events => "events",
            Plane::Kv => "kv",
            Plane::Objects => "objects",
            Plane::Queue => "queue",
        }
    }
}

pub(crate) fn not_served(backend: &str, plane: Plane) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "backend `{backend}` does not serve the {} plane",
            plane.as_str()
        ),
    )
}

/// What a backend implements to hand out the planes of one connection.
///
/// Each method builds its plane over the connection the backend opened for
/// the session; [`Session`] calls each at most once. A plane the backend does
/// not serve keeps the default, which refuses with `Unsupported`.
pub trait SessionBackend: Send + Sync + 'static {
    /// Backend name (`"mem"`, `"nats"`).
    fn name(&self) -> &'static str;
    /// Build the request plane.
    fn requests(&self) -> BoxFuture<'_, Result<Requests>> {
        Box::pin(async move { Err(not_served(self.name(), Plane::Request)) })
    }
    /// Build the events plane.
    fn events(&self) -> BoxFuture<'_, Result<Events>> {
        Box::pin(async move { Err(not_served(self.name(), Plane::Events)) })
    }
    /// Build the kv plane.
    fn kv(&self) -> BoxFuture<'_, Result<Kv>> {
        Box::pin(async move { Err(not_served(self.name(), Plane::Kv)) })
    }
    /// Build the objects plane.
    fn objects(&self) -> BoxFuture<'_, Result<Objects>> {
        Box::pin(async move { Err(not_served(self.name(), Plane::Objects)) })
    }
    /// Build the queue plane.
    fn queues(&self) -> BoxFuture<'_, Result<Queues>> {
        Box::pin(async move { Err(not_served(self.name(), Plane::Queue)) })
    }
}

/// Every plane one URL's backend serves, sharing one connection. Cheap to
/// clone; clones share the planes already built.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Box<dyn SessionBackend>,
    requests: OnceCell<Requests>,
    events: OnceCell<Events>,
    kv: OnceCell<Kv>,
    objects: OnceCell<Objects>,
    queues: OnceCell<Queues>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let built = [
            ("request", self.inner.requests.initialized()),
            ("events", self.inner.events.initialized()),
            ("kv", self.inner.kv.initialized()),
            ("objects", self.inner.objects.initialized()),
            ("queue", self.inner.queues.initialized()),
        ];
        f.debug_struct("Session")
            .field("backend", &self.backend())
            .field(
                "planes_built",
                &built
                    .iter()
                    .filter(|(_, b)| *b)
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Session {
    /// A session over `backend`.
    pub fn new(backend: impl SessionBackend) -> Self {
        Session {
            inner: Arc::new(Inner {
                backend: Box::new(backend),
                requests: OnceCell::new(),
                events: OnceCell::new(),
                kv: OnceCell::new(),
                objects: OnceCell::new(),
                queues: OnceCell::new(),
            }),
        }
    }

    /// The backend's name.
    pub fn backend(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The request plane, built on first use.
    ///
    /// # Errors
    /// `Unsupported` when the backend does not serve it; whatever building
    /// it fails with (a failed build is retried by the next call).
    pub async fn requests(&self) -> Result<Requests> {
        let b = &self.inner.backend;
        self.inner
            .requests
            .get_or_try_init(|| b.requests())
            .await
            .cloned()
    }

    /// The events plane, built on first use.
    ///
    /// # Errors
    /// As for [`requests`](Session::requests).
    pub async fn events(&self) -> Result<Events> {
        let b = &self.inner.backend;
        self.inner
            .events
            .get_or_try_init(|| b.events())
            .await
            .cloned()
    }

    /// The kv plane, built on first use.
    ///
    /// # Errors
    /// As for [`requests`](Session::requests).
    pub async fn kv(&self) -> Result<Kv> {
        let b = &self.inner.backend;
        self.inner.kv.get_or_try_init(|| b.kv()).await.cloned()
    }

    /// The objects plane, built on first use.
    ///
    /// # Errors
    /// As for [`requests`](Session::requests).
    pub async fn objects(&self) -> Result<Objects> {
        let b = &self.inner.backend;
        self.inner
            .objects
            .get_or_try_init(|| b.objects())
            .await
            .cloned()
    }

    /// The queue plane, built on first use.
    ///
    /// # Errors
    /// As for [`requests`](Session::requests).
    pub async fn queues(&self) -> Result<Queues> {
        let b = &self.inner.backend;
        self.inner
            .queues
            .get_or_try_init(|| b.queues())
            .await
            .cloned()
    }
}
