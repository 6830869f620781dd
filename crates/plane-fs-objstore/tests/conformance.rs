//! The shared conformance suite against the filesystem backend: objects and
//! kv planes (and discovery over the kv) on a temporary directory.

use plane_conformance::{assert_conforms, Target};
use plane_core::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fs_backend_conforms() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut registry = Registry::new();
    plane_fs_objstore::register(&mut registry);
    // A short poll keeps the watch and expiry cases quick.
    let url = format!("file://{}?poll_ms=20", dir.path().display());
    let mut target = Target::new("fs", "in-process");
    target.kv = Some(registry.kv(&url).await.expect("kv plane"));
    target.objects = Some(registry.objects(&url).await.expect("objects plane"));
    assert_conforms(&target).await;
}
