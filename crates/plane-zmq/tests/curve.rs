//! CURVE between separate handles: calls and events go through, encrypted
//! (a TCP proxy in the middle records the bytes and never sees the payload),
//! and peers with the wrong keys or none do not get through.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::request::{unary_fn, Request, Server};
use plane_core::{ErrorKind, Events, Requests};
use plane_zmq::{CurveConfig, ZmqConfig, ZmqEvents, ZmqRequests};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

const CANARY: &str = "plane-curve-canary-payload-0123456789";

fn hub() -> String {
    format!("mem://zmq-curve-{:016x}", rand::random::<u64>())
}

/// A port free a moment ago, for a socket that must be bound before its
/// proxy's address is known.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A TCP proxy to `127.0.0.1:target`: its port, and every byte it carried in
/// either direction.
async fn proxy(target: u16) -> (u16, Arc<Mutex<Vec<u8>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(("127.0.0.1", target)).await else {
                continue;
            };
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            tokio::spawn(pump(ri, wo, record.clone()));
            tokio::spawn(pump(ro, wi, record.clone()));
        }
    });
    (port, seen)
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    seen: Arc<Mutex<Vec<u8>>>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 {
            break;
        }
        seen.lock().unwrap().extend_from_slice(&buf[..n]);
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn config(hub: &str, curve: Option<CurveConfig>) -> ZmqConfig {
    let mut c = ZmqConfig::new("tcp://127.0.0.1:0", hub);
    c.curve = curve;
    // How long a refused caller waits; long enough for a loaded machine to
    // finish a good handshake.
    c.connect_timeout = Duration::from_millis(1500);
    c
}

async fn requests(config: ZmqConfig) -> Requests {
    let registry = plane_mem::registry();
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .unwrap();
    Requests::new(ZmqRequests::connect(config, discovery).unwrap())
}

async fn events(config: ZmqConfig) -> Events {
    let registry = plane_mem::registry();
    let discovery = plane_peer::discovery_of::<plane_zmq::Zmq>(&config, &registry)
        .await
        .unwrap();
    Events::new(ZmqEvents::connect(config, discovery).await.unwrap())
}

/// A plane serving `echo` with `curve`, reached through a recording proxy;
/// keep the handles as long as it should serve.
async fn echo_behind_proxy(
    hub: &str,
    curve: Option<CurveConfig>,
) -> ((Requests, Server), Arc<Mutex<Vec<u8>>>) {
    let port = free_port();
    let (proxied, seen) = proxy(port).await;
    let mut c = config(hub, curve);
    c.bind = format!("tcp://127.0.0.1:{port}");
    c.advertise = Some(format!("tcp://127.0.0.1:{proxied}"));
    let server = requests(c).await;
    let echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    ((server, echo), seen)
}

fn server_curve() -> CurveConfig {
    let (_, secret) = plane_zmq::curve_keypair().unwrap();
    CurveConfig::new(secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_with_curve_are_encrypted_on_the_wire() {
    // Without CURVE the proxy sees the payload: the recording works.
    let hub = hub();
    let (_server, seen) = echo_behind_proxy(&hub, None).await;
    let caller = requests(config(&hub, None)).await;
    assert_eq!(
        caller.call("echo", CANARY).await.unwrap().to_bytes(),
        CANARY
    );
    assert!(contains(&seen.lock().unwrap(), CANARY), "plaintext visible");

    // With CURVE the call goes through and the payload never shows.
    let hub = self::hub();
    let curve = server_curve();
    let (_server, seen) = echo_behind_proxy(&hub, Some(curve.clone())).await;
    let caller = requests(config(&hub, Some(curve))).await;
    assert_eq!(
        caller.call("echo", CANARY).await.unwrap().to_bytes(),
        CANARY
    );
    let seen = seen.lock().unwrap();
    assert!(seen.len() > CANARY.len(), "the call went through the proxy");
    assert!(!contains(&seen, CANARY), "the payload is encrypted");
    assert!(
        contains(&seen, "CURVE"),
        "the CURVE mechanism was negotiated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_with_curve_are_encrypted_on_the_wire() {
    let hub = hub();
    let curve = server_curve();
    let port = free_port();
    let (proxied, seen) = proxy(port).await;
    let mut c = config(&hub, Some(curve.clone()));
    c.events_bind = Some(format!("tcp://127.0.0.1:{port}"));
    c.events_advertise = Some(format!("tcp://127.0.0.1:{proxied}"));
    let publisher = events(c).await;
    let subscriber = events(config(&hub, Some(curve))).await;
    let mut sub = subscriber.subscribe("secret.>").await.unwrap();
    publisher.publish("secret.a", CANARY).await.unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the event in time")
        .expect("an open subscription")
        .expect("an event");
    assert_eq!(e.body().to_bytes(), CANARY);
    let seen = seen.lock().unwrap();
    assert!(
        seen.len() > CANARY.len(),
        "the event went through the proxy"
    );
    assert!(!contains(&seen, CANARY), "the event is encrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_without_the_right_keys_are_refused() {
    let hub = hub();
    let curve = server_curve();
    let (_server, _) = echo_behind_proxy(&hub, Some(curve.clone())).await;

    // No CURVE at all against a CURVE server.
    let plain = requests(config(&hub, None)).await;
    let e = plain.call("echo", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    // The reason is a mechanism mismatch or the server closing the
    // connection, whichever the client's socket notices first.
    assert!(e.message().contains("handshake"), "{e}");

    // CURVE with another deployment's server key.
    let other = requests(config(&hub, Some(server_curve()))).await;
    let e = other.call("echo", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.message().contains("handshake"), "{e}");

    // The right keys get through.
    let good = requests(config(&hub, Some(curve.clone()))).await;
    assert_eq!(good.call("echo", "hi").await.unwrap().to_bytes(), "hi");

    // And a CURVE caller does not talk to a server without CURVE.
    let hub = self::hub();
    let (_plain_server, _) = echo_behind_proxy(&hub, None).await;
    let strict = requests(config(&hub, Some(curve))).await;
    let e = strict.call("echo", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allow_list_refuses_other_client_keys() {
    let hub = hub();
    let curve = server_curve();
    let (allowed_public, allowed_secret) = plane_zmq::curve_keypair().unwrap();
    let listed = curve
        .clone()
        .with_client_secret(allowed_secret)
        .with_allowed_clients([allowed_public]);
    let (_server, _) = echo_behind_proxy(&hub, Some(listed.clone())).await;

    // The server key but a client key not on the list.
    let (_, stranger) = plane_zmq::curve_keypair().unwrap();
    let unlisted = requests(config(&hub, Some(curve.with_client_secret(stranger)))).await;
    let e = unlisted.call("echo", "hi").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");
    assert!(e.message().contains("refused"), "{e}");

    let member = requests(config(&hub, Some(listed))).await;
    assert_eq!(member.call("echo", "hi").await.unwrap().to_bytes(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_without_the_right_keys_receive_nothing() {
    let hub = hub();
    let curve = server_curve();
    let publisher = events(config(&hub, Some(curve))).await;
    let outsider = events(config(&hub, Some(server_curve()))).await;
    let mut sub = outsider.subscribe("secret.>").await.unwrap();
    for _ in 0..5 {
        publisher.publish("secret.a", CANARY).await.unwrap();
    }
    let got = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await;
    assert!(
        got.is_err(),
        "no event reaches a subscriber with other keys"
    );
}
