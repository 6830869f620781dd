//! Mutual TLS and CA mode of the QUIC planes, with certificates issued in
//! the test by two unrelated CAs (the checks are shared with every transport
//! that runs rustls).

use plane_conformance::pki;
use plane_core::Requests;
use plane_peer::tls::TlsConfig;
use plane_quic::{QuicConfig, QuicRequests};

/// A request handle on a fresh QUIC endpoint with `tls`, using the mem
/// discovery hub `hub`.
async fn node(hub: String, tls: TlsConfig) -> Requests {
    let registry = plane_mem::registry();
    let mut config = QuicConfig::new("127.0.0.1:0".parse().expect("address"), hub);
    config.tls = tls;
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .expect("discovery");
    Requests::new(QuicRequests::connect(config, discovery).expect("quic endpoint"))
}

fn hub() -> String {
    format!("mem://quic-tls-{:016x}", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let hub = hub();
    pki::mutual_tls_admits_only_clients_of_the_ca(|tls| node(hub.clone(), tls)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_mode_trusts_servers_of_the_configured_ca_only() {
    let hub = hub();
    pki::ca_mode_trusts_servers_of_the_ca_only(|tls| node(hub.clone(), tls)).await;
}
