//! The shared conformance suite against the ZeroMQ request and events planes:
//! peers in one process on loopback, found through a `mem://` discovery kv.
//! That kv is not the backend's (so the kv cases skip); the discovery cases
//! run over it as the target's `discovery_kv`.

use plane_conformance::assert_conforms;
use plane_conformance::peer::brokerless_target;
use plane_core::Events;
use plane_zmq::{CurveConfig, ZmqConfig, ZmqEvents, ZmqRequests};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_backend_conforms() {
    conforms("zmq", None).await;
}

/// The same suite with every connection under CURVE (an allow-list too, so
/// the ZAP handler answers every handshake).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_backend_conforms_with_curve() {
    let (_, server) = plane_zmq::curve_keypair().expect("keypair");
    let (public, secret) = plane_zmq::curve_keypair().expect("keypair");
    conforms(
        "zmq-curve",
        Some(
            CurveConfig::new(server)
                .with_client_secret(secret)
                .with_allowed_clients([public]),
        ),
    )
    .await;
}

/// `name`: the report's, so each run has its own column.
async fn conforms(name: &'static str, curve: Option<CurveConfig>) {
    let registry = plane_mem::registry();
    let hub = format!("mem://zmq-conformance-{:016x}", rand::random::<u64>());
    let mut config = ZmqConfig::new("tcp://127.0.0.1:0", hub.clone());
    config.curve = curve;
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .expect("discovery");
    let events = ZmqEvents::connect(config.clone(), discovery.clone())
        .await
        .expect("events plane");
    let backend = ZmqRequests::connect(config, discovery).expect("listener");
    let kv = registry.kv(&hub).await.expect("discovery kv");
    // One process serves every endpoint on one listener: garbage goes to it.
    let target = brokerless_target(name, backend, Some(Events::new(events)), kv, |b, bytes| {
        Box::pin(async move {
            b.links()
                .send_raw(&[bytes::Bytes::from(bytes)], Duration::from_secs(2))
                .await
                .map(drop)
        })
    });
    assert_conforms(&target).await;
}
