//! End-to-end checks of the QUIC request plane on loopback.

use std::time::Duration;

use plane_core::request::{handler_fn, unary_fn, Call, Request, Responder, Route};
use plane_core::{ErrorKind, Registry, Requests};
use plane_quic::QuicRequests;

fn hub() -> String {
    format!("mem://quic-smoke-{:016x}", rand::random::<u64>())
}

async fn plane(hub: &str) -> (QuicRequests, Requests) {
    let registry = Registry::with_defaults();
    let config = plane_quic::QuicConfig::new("127.0.0.1:0".parse().unwrap(), hub);
    let discovery = config.discovery(&registry).await.unwrap();
    let backend = QuicRequests::connect(config, discovery).unwrap();
    (backend.clone(), Requests::new(backend))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_stream_cancel_and_refusals() {
    let hub = hub();
    let (_server_backend, server) = plane(&hub).await;
    let (_caller_backend, caller) = plane(&hub).await;
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let reply = caller.call("echo", "hello").await.unwrap();
    assert_eq!(reply.to_bytes(), "hello");

    let _count = server
        .serve(
            "count",
            handler_fn(|_r: Request, out: Responder| async move {
                for i in 0..5u8 {
                    out.send(vec![i]).await?;
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("count", "")).await.unwrap();
    let mut got = Vec::new();
    while let Some(r) = replies.next_reply().await {
        got.push(r.unwrap().body.to_bytes()[0]);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    assert_eq!(
        caller.call("nobody", "x").await.unwrap_err().kind(),
        ErrorKind::NoResponders
    );
    let big = vec![0u8; caller.capabilities().max_payload + 1];
    assert_eq!(
        caller.call("echo", big).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );

    // A handler that vanishes mid-stream: Disconnected, not a clean end.
    let vanish = server
        .serve(
            "vanish",
            handler_fn(|_r: Request, out: Responder| async move {
                out.send("one").await?;
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("vanish", "")).await.unwrap();
    assert_eq!(
        replies.next_reply().await.unwrap().unwrap().body.to_bytes(),
        "one"
    );
    vanish.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), replies.next_reply())
        .await
        .unwrap();
    assert_eq!(end.unwrap().unwrap_err().kind(), ErrorKind::Disconnected);

    // Direct routing.
    let direct = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    for _ in 0..3 {
        let call = Call::new("echo", "d").route(Route::Instance(direct.instance()));
        caller.call_with(call).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_refused_and_restart_recovers() {
    let hub = hub();
    let (backend, requests) = plane(&hub).await;
    let _echo = requests
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let answer = backend.send_raw(b"\x00\x00\x00\x05junk!").await.unwrap();
    assert!(!answer.is_empty(), "a typed refusal comes back");
    assert_eq!(requests.call("echo", "ok").await.unwrap().to_bytes(), "ok");
    let before = backend.local_addr().unwrap();
    backend.restart().await.unwrap();
    assert_ne!(before, backend.local_addr().unwrap());
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if requests.call("echo", "again").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("calls succeed after a restart");
}
