//! The conformance suite against the in-memory reference backend.

use plane_conformance::{assert_conforms, Target};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mem_backend_conforms() {
    let registry = plane_mem::registry();
    let target = Target::from_url(&registry, "mem", "in-process", "mem://conformance")
        .await
        .expect("mem target");
    assert_conforms(&target).await;
}
