//! The shared conformance suite against the QUIC request and events planes:
//! peers in one process on loopback, found through a `mem://` discovery kv.
//! That kv is not the backend's (so the kv cases skip); the discovery cases
//! run over it as the target's `discovery_kv`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use plane_conformance::{assert_conforms, Hooks, Target};
use plane_core::{Events, Requests};
use plane_quic::{QuicConfig, QuicEvents, QuicRequests};

struct QuicHooks(QuicRequests);

impl Hooks for QuicHooks {
    fn restart(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(Box::pin(async move {
            self.0.restart().await.map_err(|e| e.to_string())
        }))
    }

    fn send_garbage<'a>(
        &'a self,
        _endpoint: &'a str,
        garbage: &'a [u8],
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        // One process serves every endpoint on one port: the garbage goes to it.
        Some(Box::pin(async move {
            self.0
                .links()
                .send_raw(garbage)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }))
    }
}

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
    let backend = QuicRequests::connect(config, discovery).expect("quic endpoint");
    let mut target = Target::new("quic", "in-process");
    target.requests = Some(Requests::new(backend.clone()));
    target.events = Some(Events::new(events));
    target.discovery_kv = Some(registry.kv(&hub).await.expect("discovery kv"));
    target.hooks = Arc::new(QuicHooks(backend));
    assert_conforms(&target).await;
}
