//! The shared conformance suite against the ZeroMQ request and events planes:
//! peers in one process on loopback, found through a `mem://` discovery kv.
//! That kv is not the backend's (so the kv cases skip); the discovery cases
//! run over it as the target's `discovery_kv`.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use plane_conformance::{assert_conforms, Hooks, Target};
use plane_core::{Events, Requests};
use plane_zmq::{ZmqConfig, ZmqEvents, ZmqRequests};

struct ZmqHooks(ZmqRequests);

impl Hooks for ZmqHooks {
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
            let frame = bytes::Bytes::copy_from_slice(garbage);
            self.0
                .links()
                .send_raw(&[frame], std::time::Duration::from_secs(2))
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_backend_conforms() {
    let registry = plane_mem::registry();
    let hub = format!("mem://zmq-conformance-{:016x}", rand::random::<u64>());
    let config = ZmqConfig::new("tcp://127.0.0.1:0", hub.clone());
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .expect("discovery");
    let events = ZmqEvents::connect(config.clone(), discovery.clone())
        .await
        .expect("events plane");
    let backend = ZmqRequests::connect(config, discovery).expect("zmq router");
    let mut target = Target::new("zmq", "in-process");
    target.requests = Some(Requests::new(backend.clone()));
    target.events = Some(Events::new(events));
    target.discovery_kv = Some(registry.kv(&hub).await.expect("discovery kv"));
    target.hooks = Arc::new(ZmqHooks(backend));
    assert_conforms(&target).await;
}
