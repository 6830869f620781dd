//! TLS on the TCP planes: mutual TLS and CA mode with certificates issued in
//! the test by two unrelated CAs (the checks shared with QUIC), and what
//! happens when a plain process meets a TLS one.

use plane_conformance::pki;
use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Requests};
use plane_peer::tls::TlsConfig;
use plane_tcp::{TcpConfig, TcpRequests};

/// A request handle on a fresh TCP listener with `tls` (`None`: plain),
/// using the mem discovery hub `hub`.
async fn node(hub: String, tls: Option<TlsConfig>) -> Requests {
    let registry = plane_mem::registry();
    let mut config = TcpConfig::new("127.0.0.1:0".parse().expect("address"), hub);
    config.tls = tls;
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&config, &registry)
        .await
        .expect("discovery");
    Requests::new(TcpRequests::connect(config, discovery).expect("tcp listener"))
}

fn hub() -> String {
    format!("mem://tcp-tls-{:016x}", rand::random::<u64>())
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
async fn plain_and_tls_processes_refuse_each_other_by_name() {
    let hub = hub();
    let tls_server = node(hub.clone(), Some(TlsConfig::default())).await;
    let plain_server = node(hub.clone(), None).await;
    let echo = || unary_fn(|r: Request| async move { Ok(r.message) });
    let _a = tls_server.serve("secure", echo()).await.expect("serve");
    let _b = plain_server.serve("open", echo()).await.expect("serve");

    let plain = node(hub.clone(), None).await;
    let e = plain.call("secure", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(e.to_string().contains("tls=true"), "names the fix: {e}");
    assert_eq!(
        plain
            .call("open", "hi")
            .await
            .expect("plain to plain")
            .to_bytes(),
        "hi"
    );

    let secure = node(hub, Some(TlsConfig::default())).await;
    let e = secure.call("open", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
    assert!(
        e.to_string().contains("plain TCP"),
        "names the mismatch: {e}"
    );
    assert_eq!(
        secure
            .call("secure", "hi")
            .await
            .expect("tls to tls")
            .to_bytes(),
        "hi"
    );
}
