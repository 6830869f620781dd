//! The shared conformance suite against the filesystem backend: objects and
//! kv planes (and discovery over the kv) on a temporary directory.

use plane_conformance::{report_dir, run, Filter, Status, Target};
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
    let report = run(&target, &Filter::from_env()).await;
    let path = report.write(&report_dir()).expect("write report");
    eprintln!("{}report: {}", report.summary(), path.display());
    for skipped in report.cases.iter().filter(|c| c.status == Status::Skip) {
        assert!(
            skipped.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{}/{} skipped without a reason",
            skipped.plane,
            skipped.case
        );
    }
    assert!(
        report.failures().is_empty(),
        "conformance failures:\n{}",
        report.summary()
    );
}
