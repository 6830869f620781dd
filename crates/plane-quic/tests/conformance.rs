//! The shared conformance suite against the QUIC request and events planes:
//! peers in one process on loopback, found through a `mem://` discovery kv.
//! That kv is not the backend's (so the kv cases skip); the discovery cases
//! run over it as the target's `discovery_kv`.

use plane_conformance::assert_conforms;
use plane_conformance::peer::brokerless_target;
use plane_core::Events;
use plane_quic::{QuicConfig, QuicEvents, QuicRequests};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_backend_conforms() {
    let registry = plane_mem::registry();
    let hub = format!("mem://quic-conformance-{:016x}", rand::random::<u64>());
    let config = QuicConfig::new("127.0.0.1:0".parse().expect("address"), hub.clone());
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .expect("discovery");
    let events = QuicEvents::connect(config.clone(), discovery.clone())
        .await
        .expect("events plane");
    let backend = QuicRequests::connect(config, discovery).expect("listener");
    let kv = registry.kv(&hub).await.expect("discovery kv");
    // One process serves every endpoint on one listener: garbage goes to it.
    let target = brokerless_target(
        "quic",
        backend,
        Some(Events::new(events)),
        kv,
        |b, bytes| Box::pin(async move { b.links().send_raw(&bytes).await.map(drop) }),
    );
    assert_conforms(&target).await;
}
