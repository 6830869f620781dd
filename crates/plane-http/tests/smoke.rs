//! End-to-end checks of the HTTP request plane on loopback: between plane
//! handles, and the bad input a peer must survive (garbage bytes, malformed
//! bodies on the plane path, unknown versions, bad URLs).

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plane_core::request::{unary_fn, Request as PlaneRequest};
use plane_core::wire::{self, Envelope, EnvelopeKind, RequestId};
use plane_core::{ErrorKind, Requests};
use plane_http::{HttpConfig, HttpRequests};

fn hub() -> String {
    format!("mem://http-smoke-{:016x}", rand::random::<u64>())
}

async fn plane(hub: &str) -> (HttpRequests, Requests) {
    let registry = plane_mem::registry();
    let config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), hub);
    let discovery = plane_peer::discovery_of::<plane_http::Http>(&config, &registry)
        .await
        .unwrap();
    let backend = HttpRequests::connect(config, discovery).unwrap();
    (backend.clone(), Requests::new(backend))
}

async fn serve_echo(requests: &Requests) -> plane_core::request::Server {
    requests
        .serve(
            "echo",
            unary_fn(|r: PlaneRequest| async move { Ok(r.message) }),
        )
        .await
        .unwrap()
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
    let _echo = serve_echo(&requests).await;
    // Not HTTP at all: hyper answers 400 and closes; the server goes on.
    let answer = backend
        .links()
        .send_raw(b"\xff\xff\xff\xffjunk\r\n\r\n", Duration::from_secs(5))
        .await
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "a refusal: {answer}");
    assert_eq!(requests.call("echo", "ok").await.unwrap().to_bytes(), "ok");
    let before = backend.links().local_addr();
    backend.restart().await.unwrap();
    assert_ne!(before, backend.links().local_addr());
    plane_conformance::peer::calls_recover_after_restart(&requests).await;
}

/// A raw HTTP/2 client on `backend`'s listener: what a buggy or hostile
/// peer could send.
async fn h2_post(backend: &HttpRequests, path: &str, body: Bytes) -> (StatusCode, Bytes) {
    let stream = tokio::net::TcpStream::connect(backend.links().local_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::post(format!("http://plane{path}"))
        .body(Full::new(body))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(req))
        .await
        .expect("an answer in time")
        .unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, body)
}

fn kind_of(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON error body");
    v["kind"].as_str().expect("a kind").to_owned()
}

fn delimited(env: &Envelope) -> Bytes {
    let mut b = BytesMut::new();
    wire::encode_delimited(env, &mut b).unwrap();
    b.freeze()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_plane_bodies_get_typed_errors_and_the_server_serves_on() {
    let hub = hub();
    let (backend, requests) = plane(&hub).await;
    let _echo = serve_echo(&requests).await;

    // A well-framed run of bytes that is no envelope.
    let (status, body) = h2_post(
        &backend,
        "/.plane/v1/call",
        Bytes::from_static(&[0, 0, 0, 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(kind_of(&body), "decode");

    // A length prefix beyond the limit.
    let (status, body) = h2_post(
        &backend,
        "/.plane/v1/call",
        Bytes::from_static(&[0x7f, 0xff, 0xff, 0xff, 0, 0]),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(kind_of(&body), "payload_too_large");

    // An envelope of a wire version this server does not speak.
    let mut future = delimited(&Envelope::new(EnvelopeKind::Request, RequestId::new_v7())).to_vec();
    future[wire::LENGTH_PREFIX_LEN] = 0xee;
    let (status, body) = h2_post(&backend, "/.plane/v1/call", future.into()).await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(kind_of(&body), "decode");

    // A body that ends before its request envelope.
    let (status, body) = h2_post(&backend, "/.plane/v1/call", Bytes::new()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(kind_of(&body), "decode");

    // A control envelope where the request must be: refused in-band, as a
    // plane caller expects.
    let (status, body) = h2_post(
        &backend,
        "/.plane/v1/call",
        delimited(&Envelope::new(EnvelopeKind::Kill, RequestId::new_v7())),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let mut decoder = wire::DelimitedDecoder::new();
    decoder.push(&body);
    let refusal = decoder.next_envelope().unwrap().expect("an error envelope");
    assert_eq!(refusal.kind, EnvelopeKind::Error);
    assert_eq!(refusal.to_error().kind(), ErrorKind::Decode);

    // An unknown version of the mapping, and an unknown route in this one.
    let (status, body) = h2_post(&backend, "/.plane/v9/call", Bytes::new()).await;
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED);
    assert_eq!(kind_of(&body), "unsupported");
    let (status, body) = h2_post(&backend, "/.plane/v1/nope", Bytes::new()).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(kind_of(&body), "not_found");

    // Through all of it the server kept serving.
    assert_eq!(
        requests.call("echo", "still").await.unwrap().to_bytes(),
        "still"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_refused_unsupported() {
    let mut registry = plane_mem::registry();
    plane_http::register(&mut registry);
    let url = format!(
        "h2c://127.0.0.1:0?discovery={}",
        url::form_urlencoded::byte_serialize(hub().as_bytes()).collect::<String>()
    );
    let e = registry.events(&url).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let requests = registry.requests(&url).await.unwrap();
    let _echo = serve_echo(&requests).await;
    assert_eq!(requests.call("echo", "hi").await.unwrap().to_bytes(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_and_configs_are_typed_errors() {
    for url in [
        "h2c://127.0.0.1:0",
        "h2c://not-an-ip:0?discovery=mem%3A%2F%2Fx",
        "h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx&nope=1",
        "h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx&heartbeat_ms=0",
        "h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx&max_payload=0",
        // TLS keys on the cleartext scheme.
        "h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx&ca=%2Fetc%2Fca.pem",
        // The scheme is the switch: there is no `tls` key.
        "h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx&tls=true",
        "https://127.0.0.1:0?discovery=mem%3A%2F%2Fx",
    ] {
        let e = HttpConfig::from_url(&url.parse().unwrap()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
    }
    let tls = HttpConfig::from_url(
        &"h2://127.0.0.1:0?discovery=mem%3A%2F%2Fx&server_name=svc"
            .parse()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(tls.tls.map(|t| t.server_name).as_deref(), Some("svc"));
    let plain = HttpConfig::from_url(&"h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fx".parse().unwrap())
        .unwrap();
    assert!(plain.tls.is_none());
    // A certificate file that does not exist fails the constructor, typed.
    let registry = plane_mem::registry();
    let mut missing = HttpConfig::new("127.0.0.1:0".parse().unwrap(), hub());
    let discovery = plane_peer::discovery_of::<plane_http::Http>(&missing, &registry)
        .await
        .unwrap();
    let mut tls = plane_peer::tls::TlsConfig::default();
    tls.cert = Some("/nonexistent/plane.crt".into());
    tls.key = Some("/nonexistent/plane.key".into());
    missing.tls = Some(tls);
    let e = HttpRequests::connect(missing, discovery).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
}
