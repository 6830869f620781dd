//! End-to-end checks of the TCP planes on loopback.

use std::time::Duration;

use plane_core::request::{unary_fn, Request};
use plane_core::{Events, Requests};
use plane_tcp::{TcpConfig, TcpEvents, TcpRequests};

fn hub() -> String {
    format!("mem://tcp-smoke-{:016x}", rand::random::<u64>())
}

fn config(hub: &str) -> TcpConfig {
    TcpConfig::new("127.0.0.1:0".parse().unwrap(), hub)
}

async fn plane(hub: &str) -> (TcpRequests, Requests) {
    let registry = plane_mem::registry();
    let config = config(hub);
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&config, &registry)
        .await
        .unwrap();
    let backend = TcpRequests::connect(config, discovery).unwrap();
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
    // A length prefix far beyond the limit: a typed refusal, then the
    // connection closes; the server goes on serving.
    let answer = backend
        .links()
        .send_raw(b"\xff\xff\xff\xffjunk", Duration::from_secs(5))
        .await
        .unwrap();
    assert!(!answer.is_empty(), "a typed refusal comes back");
    assert_eq!(requests.call("echo", "ok").await.unwrap().to_bytes(), "ok");
    let before = backend.links().local_addr();
    backend.restart().await.unwrap();
    assert_ne!(before, backend.links().local_addr());
    plane_conformance::peer::calls_recover_after_restart(&requests).await;
}

async fn events_handle(hub: &str) -> Events {
    let registry = plane_mem::registry();
    let config = config(hub);
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&config, &registry)
        .await
        .expect("discovery");
    Events::new(TcpEvents::connect(config, discovery).await.expect("events"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_of_other_handles_and_of_later_publishers() {
    let hub = hub();
    plane_conformance::peer::events_between_handles(|| events_handle(&hub)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_loses_nothing_unreported() {
    let hub = hub();
    plane_conformance::peer::a_burst_loses_nothing_unreported(
        events_handle(&hub).await,
        events_handle(&hub).await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_configs_are_typed_errors() {
    for url in [
        "tcp://127.0.0.1:0",
        "tcp://not-an-ip:0?discovery=mem%3A%2F%2Fx",
        "tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fx&nope=1",
        "tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fx&heartbeat_ms=0",
        // TLS keys without TLS, and a TLS switch that is not a boolean.
        "tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fx&ca=%2Fetc%2Fca.pem",
        "tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fx&tls=yes",
    ] {
        let e = TcpConfig::from_url(&url.parse().unwrap()).unwrap_err();
        assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig, "{url}: {e}");
    }
    let with_tls = TcpConfig::from_url(
        &"tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fx&tls=true&server_name=svc"
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(with_tls.tls.map(|t| t.server_name).as_deref(), Some("svc"));
    // A certificate file that does not exist fails the constructor, typed.
    let registry = plane_mem::registry();
    let mut missing_cert = config(&hub());
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&missing_cert, &registry)
        .await
        .unwrap();
    let mut tls = plane_peer::tls::TlsConfig::default();
    tls.cert = Some("/nonexistent/plane.crt".into());
    tls.key = Some("/nonexistent/plane.key".into());
    missing_cert.tls = Some(tls);
    let e = TcpRequests::connect(missing_cert, discovery).unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig, "{e}");
    let registry = plane_mem::registry();
    let mut config = config(&hub());
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&config, &registry)
        .await
        .unwrap();
    config.timings.idle_timeout = config.timings.heartbeat;
    let e = TcpRequests::connect(config, discovery).unwrap_err();
    assert_eq!(e.kind(), plane_core::ErrorKind::InvalidConfig);
    assert!(e.message().contains("idle_timeout_ms"), "{e}");
}
