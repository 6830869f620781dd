//! TLS on the HTTP plane (`h2://`): mutual TLS and CA mode with certificates
//! issued in the test by two unrelated CAs (the checks shared with QUIC and
//! TCP), and what happens when a cleartext process meets a TLS one.

use plane_conformance::pki;
use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Requests};
use plane_http::{HttpConfig, HttpRequests};
use plane_peer::tls::TlsConfig;

/// A request handle on a fresh HTTP listener with `tls` (`None`:
/// cleartext), using the mem discovery hub `hub`.
async fn node(hub: String, tls: Option<TlsConfig>) -> Requests {
    let registry = plane_mem::registry();
    let mut config = HttpConfig::new("127.0.0.1:0".parse().expect("address"), hub);
    config.tls = tls;
    let discovery = plane_peer::discovery_of::<plane_http::Http>(&config, &registry)
        .await
        .expect("discovery");
    Requests::new(HttpRequests::connect(config, discovery).expect("http listener"))
}

fn hub() -> String {
    format!("mem://http-tls-{:016x}", rand::random::<u64>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let hub = hub();
    pki::mutual_tls_admits_only_clients_of_the_ca(|tls| node(hub.clone(), Some(tls))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_mode_trusts_servers_of_the_configured_ca_only() {
    let hub = hub();
    pki::ca_mode_trusts_servers_of_the_ca_only(|tls| node(hub.clone(), Some(tls))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleartext_and_tls_processes_refuse_each_other_by_name() {
    let hub = hub();
    let tls_server = node(hub.clone(), Some(TlsConfig::default())).await;
    let plain_server = node(hub.clone(), None).await;
    let echo = || unary_fn(|r: Request| async move { Ok(r.message) });
    let _a = tls_server.serve("secure", echo()).await.expect("serve");
    let _b = plain_server.serve("open", echo()).await.expect("serve");

    let plain = node(hub.clone(), None).await;
    let e = plain.call("secure", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(
        e.to_string().contains("serves h2 (TLS)"),
        "names the mismatch: {e}"
    );
    assert_eq!(
        plain
            .call("open", "hi")
            .await
            .expect("h2c to h2c")
            .to_bytes(),
        "hi"
    );

    let secure = node(hub, Some(TlsConfig::default())).await;
    let e = secure.call("open", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(
        e.to_string().contains("serves cleartext h2c"),
        "names the mismatch: {e}"
    );
    assert_eq!(
        secure
            .call("secure", "hi")
            .await
            .expect("h2 to h2")
            .to_bytes(),
        "hi"
    );
}
