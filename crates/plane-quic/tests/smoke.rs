//! End-to-end checks of the QUIC request plane on loopback.

use plane_core::request::{unary_fn, Request};
use plane_core::Requests;
use plane_quic::QuicRequests;

fn hub() -> String {
    format!("mem://quic-smoke-{:016x}", rand::random::<u64>())
}

async fn plane(hub: &str) -> (QuicRequests, Requests) {
    let registry = plane_mem::registry();
    let config = plane_quic::QuicConfig::new("127.0.0.1:0".parse().unwrap(), hub);
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .unwrap();
    let backend = QuicRequests::connect(config, discovery).unwrap();
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
    let answer = backend
        .links()
        .send_raw(b"\x00\x00\x00\x05junk!")
        .await
        .unwrap();
    assert!(!answer.is_empty(), "a typed refusal comes back");
    assert_eq!(requests.call("echo", "ok").await.unwrap().to_bytes(), "ok");
    let before = backend.links().local_addr().unwrap();
    backend.restart().await.unwrap();
    assert_ne!(before, backend.links().local_addr().unwrap());
    plane_conformance::peer::calls_recover_after_restart(&requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_built_in_code_is_validated() {
    let registry = plane_mem::registry();
    let mut config = plane_quic::QuicConfig::new("127.0.0.1:0".parse().unwrap(), hub());
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .unwrap();
    config.stream_window = 0;
    let e = QuicRequests::connect(config.clone(), discovery.clone()).unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig);
    assert!(e.message().contains("stream_window"), "{e}");
    let e = plane_quic::QuicEvents::connect(config, discovery)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_serves_requests_and_events_on_one_endpoint() {
    let hub = hub();
    let mut registry = plane_mem::registry();
    plane_quic::register(&mut registry);
    let url = format!(
        "quic://127.0.0.1:0?discovery={}",
        hub.replace(':', "%3A").replace('/', "%2F")
    );
    let session = registry.connect(&url).await.unwrap();
    let requests = session.requests().await.unwrap();
    let _events = session.events().await.unwrap();
    let _echo = requests
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let kv = registry.kv(&hub).await.unwrap();
    let discovery = plane_core::discovery::Discovery::open(&kv, Default::default())
        .await
        .unwrap();
    let served = discovery.list("echo").await.unwrap();
    let publishers = discovery
        .list(plane_quic::events::EVENTS_ENDPOINT)
        .await
        .unwrap();
    assert_eq!((served.len(), publishers.len()), (1, 1));
    assert_eq!(
        served[0].address, publishers[0].address,
        "the events publisher is the request plane's endpoint"
    );
}
