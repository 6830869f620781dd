//! The shared conformance suite against the HTTP request plane: peers in
//! one process on loopback, found through a `mem://` discovery kv. That kv
//! is not the backend's (so the kv cases skip); the discovery cases run over
//! it as the target's `discovery_kv`. The backend serves no events plane, so
//! the events cases skip, saying so. Run in cleartext (h2c) and under TLS
//! (h2).

use plane_conformance::assert_conforms;
use plane_conformance::peer::brokerless_target;
use plane_http::{HttpConfig, HttpRequests};
use plane_peer::tls::TlsConfig;
use std::time::Duration;

async fn conform(name: &str, tls: Option<TlsConfig>) {
    let registry = plane_mem::registry();
    let hub = format!("mem://{name}-conformance-{:016x}", rand::random::<u64>());
    let mut config = HttpConfig::new("127.0.0.1:0".parse().expect("address"), hub.clone());
    config.tls = tls;
    let discovery = plane_peer::discovery_of::<plane_http::Http>(&config, &registry)
        .await
        .expect("discovery");
    let backend = HttpRequests::connect(config, discovery).expect("listener");
    let kv = registry.kv(&hub).await.expect("discovery kv");
    // One process serves every endpoint on one listener: garbage goes to it
    // (under TLS, to its handshake).
    let target = brokerless_target(name, backend, None, kv, |b, bytes| {
        Box::pin(async move {
            b.links()
                .send_raw(&bytes, Duration::from_secs(2))
                .await
                .map(drop)
        })
    });
    assert_conforms(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_conforms() {
    conform("http", None).await;
}

/// The same suite with every connection under TLS 1.3, certificates
/// generated and pinned through discovery.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_backend_conforms_over_tls() {
    conform("http-tls", Some(TlsConfig::default())).await;
}
