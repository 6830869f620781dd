//! The conformance suite against the in-memory reference backend.

use plane_conformance::{report_dir, run, Filter, Status, Target};
use plane_core::Registry;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_backend_conforms() {
    let registry = Registry::with_defaults();
    let target = Target::from_url(&registry, "mem", "in-process", "mem://conformance")
        .await
        .expect("mem target");
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
