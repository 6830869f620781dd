//! One session per URL: every plane of a `nats://` session shares one
//! connection. Counted by a TCP relay between plane and the server, so the
//! count is the server's view, not plane's claim.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::kv::BucketConfig;
use plane_core::queue::QueueConfig;
use plane_core::request::{unary_fn, Request};
use plane_core::Registry;
use plane_nats::testkit::NatsServer;
use tokio::net::{TcpListener, TcpStream};

/// Relay every connection accepted on a loopback port to `target`, counting
/// them. Returns the relay's port and the count.
async fn counting_relay(target: u16) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = listener.local_addr().expect("relay address").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", target)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (port, accepted)
}

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_plane_of_a_session_shares_one_connection() {
    let server = NatsServer::start().await.expect("server");
    let (port, accepted) = counting_relay(server.port()).await;
    let url = format!("nats://127.0.0.1:{port}");
    let registry = registry();

    let session = registry.connect(&url).await.expect("session");
    assert_eq!(session.backend(), "nats");

    // Use every plane, so that none of them can be lazily unconnected.
    let requests = session.requests().await.expect("requests");
    let _server = requests
        .serve(
            "session_echo",
            unary_fn(|r: Request| async move { Ok(r.message) }),
        )
        .await
        .expect("serve");
    let reply = requests.call("session_echo", "hi").await.expect("call");
    assert_eq!(reply.to_bytes(), "hi");

    let events = session.events().await.expect("events");
    let mut sub = events.subscribe("session.ev").await.expect("subscribe");
    events.publish("session.ev", "e").await.expect("publish");
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("event in time")
        .expect("stream open")
        .expect("event");
    assert_eq!(got.body().to_bytes(), "e");

    let kv = session.kv().await.expect("kv");
    let bucket = kv
        .create_bucket(BucketConfig::new("session_kv"))
        .await
        .expect("bucket");
    bucket.put("k", "v").await.expect("put");

    let objects = session.objects().await.expect("objects");
    let store = objects
        .create_bucket("session_obj")
        .await
        .expect("object bucket");
    store.put("o", "body").await.expect("object put");

    let queues = session.queues().await.expect("queues");
    let q = queues
        .create_queue(QueueConfig::new("session_q"))
        .await
        .expect("queue");
    q.enqueue("job").await.expect("enqueue");

    // Asking again hands out the same planes, not new connections.
    session.kv().await.expect("kv again");
    session.requests().await.expect("requests again");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection for the session"
    );

    // The per-plane shortcut opens a session (and a connection) of its own:
    // the relay counts it, so the count above is not stuck at one.
    let _kv2 = registry.kv(&url).await.expect("kv shortcut");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);

    kv.delete_bucket("session_kv")
        .await
        .expect("delete kv bucket");
    objects
        .delete_bucket("session_obj")
        .await
        .expect("delete object bucket");
}
