//! Discovery over a kv backend: the in-memory one, and narrowed copies of it.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use plane_core::discovery::*;
use plane_core::kv::Kv;
use plane_core::kv::{BucketConfig, DynKvBucketBackend, KvBackend, KvCapabilities};
use plane_core::request::InstanceId;
use plane_core::{ErrorKind, Result};
use plane_mem::{Hub, MemConfig, MemKv};

fn mem() -> Kv {
    Hub::new().kv(&MemConfig::default())
}

fn mem_backend() -> MemKv {
    Hub::new().kv_backend(&MemConfig::default())
}

// Tests run on paused time, so leases and renewals are exact whatever the
// machine's load.
fn fast() -> DiscoveryConfig {
    DiscoveryConfig::default()
        .lease(Duration::from_millis(300))
        .resync(Duration::from_millis(200))
}

async fn next(w: &mut DiscoveryWatch) -> DiscoveryEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .expect("discovery event in time")
        .expect("discovery watch never ends")
}

/// The mem backend with fewer declared capabilities, to exercise the
/// per-key lease and list-only watching.
struct Restricted {
    inner: MemKv,
    caps: KvCapabilities,
}

impl KvBackend for Restricted {
    fn name(&self) -> &'static str {
        "restricted"
    }
    fn capabilities(&self) -> &KvCapabilities {
        &self.caps
    }
    async fn create_bucket(&self, config: BucketConfig) -> Result<Arc<dyn DynKvBucketBackend>> {
        self.inner.create_bucket(config).await
    }
    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        self.inner.open_bucket(name).await
    }
    async fn delete_bucket(&self, name: &str) -> Result<()> {
        self.inner.delete_bucket(name).await
    }
}

#[test]
fn instance_record_is_stable_json() {
    let i = Instance::new("ep", InstanceId(0xab), "addr").with_metadata("zone", "a");
    let json = serde_json::to_string(&i).unwrap();
    assert_eq!(
        json,
        r#"{"endpoint":"ep","id":"00000000000000ab","address":"addr","metadata":{"zone":"a"}}"#
    );
    assert_eq!(serde_json::from_str::<Instance>(&json).unwrap(), i);
    assert_eq!(i.key(), "ep.00000000000000ab");
}

#[tokio::test(start_paused = true)]
async fn register_list_watch_deregister() {
    let d = Discovery::open(&mem(), fast()).await.unwrap();
    let a = Instance::new("ep", InstanceId(1), "a");
    let b = Instance::new("ep", InstanceId(2), "b");
    let other = Instance::new("other", InstanceId(3), "c");
    let ra = d.register(a.clone()).await.unwrap();
    let _ro = d.register(other).await.unwrap();
    let mut w = d.watch("ep").await.unwrap();
    assert_eq!(next(&mut w).await, DiscoveryEvent::Added(a.clone()));
    let rb = d.register(b.clone()).await.unwrap();
    assert_eq!(next(&mut w).await, DiscoveryEvent::Added(b.clone()));
    assert_eq!(d.list("ep").await.unwrap(), vec![a.clone(), b.clone()]);
    ra.deregister().await.unwrap();
    assert_eq!(next(&mut w).await, DiscoveryEvent::Removed(a.id));
    // Renewals of b do not produce events.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(d.list("ep").await.unwrap(), vec![b.clone()]);
    assert_eq!(rb.reregistrations(), 0);
    drop(rb);
    assert_eq!(next(&mut w).await, DiscoveryEvent::Removed(b.id));
    assert!(d.list("ep").await.unwrap().is_empty());
    assert_eq!(
        d.list("bad.*").await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
}

#[tokio::test(start_paused = true)]
async fn reregisters_after_the_record_vanishes() {
    let d = Discovery::open(&mem(), fast()).await.unwrap();
    let a = Instance::new("ep", InstanceId(7), "a");
    let r = d.register(a.clone()).await.unwrap();
    d.bucket().delete(&a.key()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while r.reregistrations() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("re-registered");
    assert_eq!(d.list("ep").await.unwrap(), vec![a]);
    r.deregister().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn per_key_lease_and_list_only_watch() {
    let mut caps = KvCapabilities::default();
    caps.key_ttl = true;
    caps.max_value = 1 << 20;
    let kv = Kv::new(Restricted {
        inner: mem_backend(),
        caps,
    });
    let d = Discovery::open(&kv, fast()).await.unwrap();
    let a = Instance::new("ep", InstanceId(9), "a");
    let r = d.register(a.clone()).await.unwrap();
    let mut w = d.watch("ep").await.unwrap();
    assert_eq!(next(&mut w).await, DiscoveryEvent::Added(a.clone()));
    // Renewal keeps the per-key lease alive well past one lease.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(d.list("ep").await.unwrap(), vec![a.clone()]);
    drop(r);
    // Found by the periodic re-list once the lease has run out.
    assert_eq!(next(&mut w).await, DiscoveryEvent::Removed(a.id));
}

#[tokio::test(start_paused = true)]
async fn needs_some_ttl() {
    let kv = Kv::new(Restricted {
        inner: mem_backend(),
        caps: KvCapabilities::default(),
    });
    let err = Discovery::open(&kv, fast()).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}
