//! End-to-end checks of the ZeroMQ request plane on loopback.

use std::time::Duration;

use plane_core::request::{unary_fn, Request};
use plane_core::Requests;
use plane_zmq::ZmqRequests;

fn hub() -> String {
    format!("mem://zmq-smoke-{:016x}", rand::random::<u64>())
}

async fn plane(hub: &str) -> (ZmqRequests, Requests) {
    let registry = plane_mem::registry();
    let config = plane_zmq::ZmqConfig::new("tcp://127.0.0.1:0", hub);
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .unwrap();
    let backend = ZmqRequests::connect(config, discovery).unwrap();
    (backend.clone(), Requests::new(backend))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_stream_cancel_and_refusals() {
    let hub = hub();
    let (_server_backend, server) = plane(&hub).await;
    let (_caller_backend, caller) = plane(&hub).await;
    plane_conformance::peer::requests_between_handles(server, caller).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_refused_and_restart_recovers() {
    let hub = hub();
    let (backend, requests) = plane(&hub).await;
    let _echo = requests
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let garbage = [
        bytes::Bytes::from_static(b"junk"),
        bytes::Bytes::from_static(b"!"),
    ];
    let answer = backend
        .links()
        .send_raw(&garbage, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.is_some(), "a typed refusal comes back");
    assert_eq!(requests.call("echo", "ok").await.unwrap().to_bytes(), "ok");
    let before = backend.links().address();
    backend.restart().await.unwrap();
    assert_ne!(before, backend.links().address());
    plane_conformance::peer::calls_recover_after_restart(&requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_built_in_code_is_validated() {
    let registry = plane_mem::registry();
    let mut config = plane_zmq::ZmqConfig::new("tcp://127.0.0.1:0", hub());
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .unwrap();
    // Silence shorter than the heartbeat would end every call.
    config.idle_timeout = config.heartbeat;
    let e = ZmqRequests::connect(config.clone(), discovery.clone()).unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig);
    assert!(e.message().contains("idle_timeout_ms"), "{e}");
    let e = plane_zmq::ZmqEvents::connect(config, discovery)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig);
}
