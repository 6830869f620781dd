//! Backend-specific checks against a real nats-server: interoperability with
//! plain NATS clients, typed errors, and each plane's NATS mapping.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use plane_core::events::{ConsumerConfig, StreamConfig};
use plane_core::kv::{BucketConfig, Op, PutOptions, WatchEvent};
use plane_core::message::names;
use plane_core::queue::QueueConfig;
use plane_core::request::{handler_fn, unary_fn, Call, Request, Responder};
use plane_core::{ErrorKind, Events, Kv, Message, Objects, Queues, Registry, Requests};
use plane_nats::testkit::{NatsServer, ServerOptions};

fn registry() -> Registry {
    let mut r = plane_mem::registry();
    plane_nats::register(&mut r);
    r
}

async fn requests(url: &str) -> Requests {
    registry().requests(url).await.expect("requests")
}

/// Make sure the server has processed this client's subscriptions (flush
/// only empties the client's buffer): a request nobody answers comes back
/// only after everything sent before it was handled.
async fn round_trip(client: &async_nats::Client) {
    let _ = client.request(client.new_inbox(), "".into()).await;
}

const LIMIT: Duration = Duration::from_secs(10);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_nats_clients_interoperate() {
    let server = NatsServer::start().await.expect("server");
    let url = server.url();
    let plain = async_nats::connect(&url).await.expect("plain client");
    let reqs = requests(&url).await;

    // A plain request to a plane endpoint gets the unary reply body.
    let _echo = reqs
        .serve(
            "echo",
            unary_fn(|r: Request| async move {
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&r.body().to_bytes());
                Ok(out)
            }),
        )
        .await
        .expect("serve");
    let reply = within(
        "plain request",
        plain.request("plane.req.echo", "hi".into()),
    )
    .await
    .expect("plain request answered");
    assert_eq!(&reply.payload[..], b"echo:hi");

    // A plain responder serves a plane caller.
    let mut plain_sub = plain
        .queue_subscribe("plane.req.upper", "plane.upper".into())
        .await
        .expect("plain responder");
    round_trip(&plain).await;
    let responder_client = plain.clone();
    let responder = tokio::spawn(async move {
        if let Some(msg) = plain_sub.next().await {
            let body = String::from_utf8_lossy(&msg.payload).to_uppercase();
            if let Some(reply) = msg.reply {
                let _ = responder_client.publish(reply, body.into()).await;
            }
        }
    });
    let answer = within(
        "plane call to a plain responder",
        reqs.call("upper", "shout"),
    )
    .await
    .expect("plain responder answers");
    assert_eq!(answer.to_bytes(), "SHOUT");
    responder.await.expect("responder task");

    // A plain publish reaches a plane subscriber; a plane event reaches a
    // plain subscriber, with its origin headers.
    let events = registry().events(&url).await.expect("events");
    let mut sub = events.subscribe("interop.>").await.expect("subscribe");
    plain
        .publish("interop.from.plain", "p1".into())
        .await
        .expect("plain publish");
    let got = within("plain event", sub.next())
        .await
        .expect("event")
        .expect("ok");
    assert_eq!(got.subject, "interop.from.plain");
    assert_eq!(got.body().to_bytes(), "p1");
    assert!(
        got.origin.is_none(),
        "a plain publisher has no plane origin"
    );

    let mut plain_events = plain.subscribe("interop2.*").await.expect("plain sub");
    round_trip(&plain).await;
    events
        .publish(
            "interop2.x",
            Message::new(plane_core::Headers::new().with("k", "v"), "e1"),
        )
        .await
        .expect("plane publish");
    let msg = within("plane event at plain subscriber", plain_events.next())
        .await
        .expect("message");
    assert_eq!(&msg.payload[..], b"e1");
    let headers = msg.headers.expect("headers");
    assert_eq!(headers.get("k").map(|v| v.as_str()), Some("v"));
    assert_eq!(headers.get("plane-seq").map(|v| v.as_str()), Some("1"));
    assert!(headers.get("plane-publisher").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_errors() {
    let server =
        NatsServer::start_with(ServerOptions::default().args(["--user", "u", "--pass", "p"]))
            .await
            .expect("server");
    let good = format!("nats://u:p@127.0.0.1:{}", server.port());
    let reqs = requests(&good).await;

    // Unknown endpoint: NoResponders, long before the timeout.
    let started = Instant::now();
    let err = reqs
        .call_with(Call::new("nobody-home", "x").timeout(Duration::from_secs(10)))
        .await
        .expect_err("no responders");
    assert_eq!(err.kind(), ErrorKind::NoResponders, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    // Oversized payload: refused before sending; large payloads pass (the
    // exact boundary is the conformance case `oversized_request_rejected`).
    let _echo = reqs
        .serve(
            "echo",
            unary_fn(|r: Request| async move { Ok(r.body().to_bytes()) }),
        )
        .await
        .expect("serve");
    let max = reqs.capabilities().max_payload;
    assert_eq!(
        max,
        1024 * 1024 - plane_nats::request::HEADER_RESERVE,
        "server default max_payload less the reserve"
    );
    let big = Call::new("echo", vec![7u8; max - 200]).timeout(Duration::from_secs(5));
    let back = reqs.call_with(big).await.expect("a large payload passes");
    assert_eq!(back.body.len(), max - 200);
    let err = reqs
        .call_with(Call::new("echo", vec![7u8; max + 1]).timeout(Duration::from_secs(5)))
        .await
        .expect_err("oversized");
    assert_eq!(err.kind(), ErrorKind::PayloadTooLarge, "{err}");

    // Malformed plane headers from a raw client: a typed Decode error frame.
    let plain = async_nats::ConnectOptions::new()
        .user_and_password("u".into(), "p".into())
        .connect(format!("127.0.0.1:{}", server.port()))
        .await
        .expect("plain");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("plane-id", "garbage");
    let reply = within(
        "malformed call answer",
        plain.request_with_headers("plane.req.echo", headers, "x".into()),
    )
    .await
    .expect("answered");
    let h = reply.headers.expect("error headers");
    assert_eq!(h.get("plane-frame").map(|v| v.as_str()), Some("error"));
    assert_eq!(
        h.get("plane-error-code").map(|v| v.as_str()),
        Some(ErrorKind::Decode.code().to_string().as_str())
    );
    // The endpoint survives it.
    assert_eq!(
        reqs.call("echo", "ok")
            .await
            .expect("still serving")
            .to_bytes(),
        "ok"
    );
    plane_nats::request::send_garbage(&plain, "plane", "echo", b"\x00\xff")
        .await
        .expect("garbage refused with an error frame");

    // Wrong credentials: Unauthorized. Unreachable: Connection, fast.
    let bad = format!("nats://u:wrong@127.0.0.1:{}", server.port());
    let err = registry().kv(&bad).await.expect_err("wrong password");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let err = registry()
        .kv(&format!("nats://127.0.0.1:{}", server.port()))
        .await
        .expect_err("no credentials");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let started = Instant::now();
    let err = registry()
        .events(&format!("nats://127.0.0.1:{port}?connect_timeout_ms=1000"))
        .await
        .expect_err("unreachable");
    assert_eq!(err.kind(), ErrorKind::Connection, "{err}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let err = registry()
        .events("nats://h?bogus=1")
        .await
        .expect_err("unknown key");
    assert_eq!(err.kind(), ErrorKind::InvalidConfig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_streams_cancellation_and_routing() {
    let server = NatsServer::start().await.expect("server");
    let reqs = requests(&server.url()).await;

    let _count = reqs
        .serve(
            "count",
            handler_fn(|r: Request, out: Responder| async move {
                let n: u32 = String::from_utf8_lossy(&r.body().to_bytes())
                    .parse()
                    .unwrap_or(0);
                for i in 0..n {
                    out.send(i.to_string()).await?;
                }
                Ok(())
            }),
        )
        .await
        .expect("serve");
    // More chunks than the flow-control window, in order, then a clean end.
    let mut replies = reqs
        .stream(Call::new("count", "300"))
        .await
        .expect("stream");
    for i in 0..300u32 {
        let m = within("chunk", replies.next_reply())
            .await
            .expect("chunk")
            .expect("ok");
        assert_eq!(m.body.to_bytes(), i.to_string());
    }
    assert!(within("end", replies.next_reply()).await.is_none());

    // A stalled reader stalls the handler at the window.
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let _flood = reqs
        .serve(
            "flood",
            handler_fn(move |_r: Request, out: Responder| {
                let counter = counter.clone();
                async move {
                    for _ in 0..10_000 {
                        out.send("x").await?;
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                }
            }),
        )
        .await
        .expect("serve");
    let replies = reqs.stream(Call::new("flood", "")).await.expect("stream");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = sent.load(Ordering::Relaxed);
    assert!(
        n <= plane_nats::request::STREAM_WINDOW as usize + 1,
        "sent {n} unread"
    );
    drop(replies);

    // A handler that dies mid-stream: Disconnected, not a clean end.
    let hang = reqs
        .serve(
            "hang",
            handler_fn(|_r: Request, out: Responder| async move {
                out.send("first").await?;
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .await
        .expect("serve");
    let mut replies = reqs.stream(Call::new("hang", "")).await.expect("stream");
    within("first", replies.next_reply())
        .await
        .expect("first")
        .expect("ok");
    hang.abort();
    let err = within("disconnect", replies.next_reply())
        .await
        .expect("an error item")
        .expect_err("disconnected");
    assert_eq!(err.kind(), ErrorKind::Disconnected, "{err}");

    // Caller cancellation reaches the handler (stop, observed gracefully).
    let stopped = Arc::new(tokio::sync::Notify::new());
    let seen = stopped.clone();
    let _stoppable = reqs
        .serve(
            "stoppable",
            handler_fn(move |r: Request, out: Responder| {
                let seen = seen.clone();
                async move {
                    out.send("go").await?;
                    r.stopped().await;
                    seen.notify_one();
                    Ok(())
                }
            }),
        )
        .await
        .expect("serve");
    let mut replies = reqs
        .stream(Call::new("stoppable", ""))
        .await
        .expect("stream");
    within("go", replies.next_reply())
        .await
        .expect("go")
        .expect("ok");
    replies.stop();
    within("handler sees stop", stopped.notified()).await;
    assert!(within("end after stop", replies.next_reply())
        .await
        .is_none());

    // Direct routing reaches exactly the addressed instance.
    let mut servers = Vec::new();
    for _ in 0..3 {
        servers.push(
            reqs.serve(
                "who",
                unary_fn(|r: Request| async move { Ok(r.instance.to_string()) }),
            )
            .await
            .expect("serve"),
        );
    }
    let target = servers[1].instance();
    for _ in 0..10 {
        let m = reqs
            .call_with(Call::new("who", "").route(plane_core::request::Route::Instance(target)))
            .await
            .expect("direct");
        assert_eq!(m.body.to_bytes(), target.to_string());
    }
    // After a drain, calls fail fast with NoResponders.
    let drained = reqs
        .serve(
            "drained",
            unary_fn(|r: Request| async move { Ok(r.message) }),
        )
        .await
        .expect("serve");
    reqs.call("drained", "x")
        .await
        .expect("served before the drain");
    assert_eq!(drained.drain(Duration::from_secs(1)).await, 0);
    let started = Instant::now();
    let err = reqs
        .call_with(Call::new("drained", "x").timeout(Duration::from_secs(5)))
        .await
        .expect_err("drained");
    assert_eq!(err.kind(), ErrorKind::NoResponders, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let gone = plane_core::request::InstanceId(42);
    let err = reqs
        .call_with(Call::new("who", "").route(plane_core::request::Route::Instance(gone)))
        .await
        .expect_err("gone");
    assert_eq!(err.kind(), ErrorKind::NoResponders);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_dead_letter_both_ways() {
    let server = NatsServer::start().await.expect("server");
    let events: Events = registry().events(&server.url()).await.expect("events");
    events
        .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
        .await
        .expect("stream");
    let mut dead = events.subscribe("dead.orders").await.expect("dl sub");
    let a = events
        .publish_durable("orders.a", "A", Some("id-a"))
        .await
        .expect("publish");
    let again = events
        .publish_durable("orders.a", "A", Some("id-a"))
        .await
        .expect("publish");
    assert!(!a.duplicate && again.duplicate);
    events
        .publish_durable("orders.b", "B", None)
        .await
        .expect("publish");

    let mut consumer = events
        .consume(
            ConsumerConfig::new("ORDERS", "c1")
                .ack_wait(Duration::from_millis(500))
                .max_deliver(2)
                .dead_letter("dead.orders"),
        )
        .await
        .expect("consume");
    // A: nacked on every attempt. B: never settled (its ack wait runs out).
    let started = Instant::now();
    let mut dead_subjects = Vec::new();
    while dead_subjects.len() < 2 && started.elapsed() < Duration::from_secs(15) {
        tokio::select! {
            d = consumer.next() => {
                let d = d.expect("delivery").expect("ok");
                if d.event.subject == "orders.a" {
                    d.nack(None).await.expect("nack");
                } else {
                    drop(d);
                }
            }
            e = dead.next() => {
                let e = e.expect("dead letter").expect("ok");
                dead_subjects.push(
                    e.message.headers.get(names::DEAD_LETTER_SUBJECT).unwrap_or("").to_owned(),
                );
            }
        }
    }
    dead_subjects.sort();
    assert_eq!(dead_subjects, vec!["orders.a", "orders.b"]);
    events.delete_stream("ORDERS").await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_cas_ttl_and_expiry_events() {
    let server = NatsServer::start().await.expect("server");
    let kv: Kv = registry().kv(&server.url()).await.expect("kv");
    let b = kv
        .create_bucket(BucketConfig::new("cfg").history(5))
        .await
        .expect("bucket");
    let r1 = b.create("k", "v1").await.expect("create");
    assert_eq!(
        b.create("k", "again").await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let r2 = b.update("k", "v2", r1).await.expect("cas");
    let stale = b.update("k", "v3", r1).await.unwrap_err();
    assert_eq!(stale.kind(), ErrorKind::RevisionMismatch);
    assert_eq!(b.get("k").await.expect("get").expect("live").value, "v2");
    let del = b.delete_if("k", r2).await.expect("delete");
    assert_eq!(
        b.update("k", "v4", del).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(b.get("k").await.expect("get").is_none());
    b.create("k", "back").await.expect("create after delete");
    let ops: Vec<Op> = b
        .history("k")
        .await
        .expect("history")
        .iter()
        .map(|e| e.op)
        .collect();
    assert_eq!(ops, vec![Op::Put, Op::Put, Op::Delete, Op::Put]);
    assert_eq!(b.keys(">").await.expect("keys"), vec!["k".to_owned()]);

    let mut watch = b.watch(">").await.expect("watch");
    let first = within("snapshot", watch.next())
        .await
        .expect("item")
        .expect("ok");
    assert!(matches!(first, WatchEvent::Entry(ref e) if e.key == "k"));
    assert_eq!(
        within("caught up", watch.next())
            .await
            .expect("item")
            .expect("ok"),
        WatchEvent::CaughtUp
    );
    b.put_opts(
        "short",
        "lived",
        PutOptions::default().ttl(Duration::from_secs(1)),
    )
    .await
    .expect("ttl put");
    let mut saw_expire = false;
    let started = Instant::now();
    while !saw_expire && started.elapsed() < Duration::from_secs(10) {
        if let Ok(Some(Ok(WatchEvent::Entry(e)))) =
            tokio::time::timeout(Duration::from_secs(10), watch.next()).await
        {
            saw_expire = e.key == "short" && e.op == Op::Expire;
        }
    }
    assert!(saw_expire, "per-key ttl expiry reported to the watcher");
    assert!(b.get("short").await.expect("get").is_none());
    assert!(!b
        .keys(">")
        .await
        .expect("keys")
        .contains(&"short".to_owned()));
    kv.delete_bucket("cfg").await.expect("delete bucket");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_and_queues() {
    let server = NatsServer::start().await.expect("server");
    let objects: Objects = registry().objects(&server.url()).await.expect("objects");
    let bucket = objects.create_bucket("blobs").await.expect("bucket");
    let chunks: Vec<Bytes> = (0..40u8).map(|i| Bytes::from(vec![i; 100_003])).collect();
    let mut digest = plane_core::objects::Digester::new();
    for c in &chunks {
        digest.update(c);
    }
    let data = futures_util::stream::iter(chunks.clone().into_iter().map(Ok)).boxed();
    let meta = plane_core::objects::ObjectMeta::default()
        .content_type("application/octet-stream")
        .attribute("a", "b");
    let info = bucket
        .put_stream("dir/big obj%", meta.clone(), data)
        .await
        .expect("put");
    assert_eq!(info.size, 40 * 100_003);
    assert_eq!(info.digest, digest.finish());
    let head = bucket.head("dir/big obj%").await.expect("head");
    assert_eq!(head.meta, meta);
    assert_eq!(head.digest, info.digest);
    let back = bucket.get_bytes("dir/big obj%").await.expect("get");
    assert_eq!(back.len(), 40 * 100_003);
    assert_eq!(bucket.list("dir/").await.expect("list").len(), 1);
    bucket.delete("dir/big obj%").await.expect("delete");
    assert_eq!(
        bucket.head("dir/big obj%").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        bucket.delete("dir/big obj%").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    // A content type NATS headers cannot carry as is still round-trips.
    let odd = plane_core::objects::ObjectMeta::default().content_type("text/plain;\r\nx=1");
    bucket
        .put_stream(
            "odd",
            odd.clone(),
            futures_util::stream::iter([Ok(Bytes::from_static(b"x"))]).boxed(),
        )
        .await
        .expect("put odd");
    assert_eq!(bucket.head("odd").await.expect("head").meta, odd);
    bucket.delete("odd").await.expect("delete odd");
    objects.delete_bucket("blobs").await.expect("delete bucket");

    let queues: Queues = registry().queues(&server.url()).await.expect("queues");
    let dlq = queues
        .create_queue(QueueConfig::new("dlq"))
        .await
        .expect("dlq");
    let q = queues
        .create_queue(
            QueueConfig::new("jobs")
                .ack_wait(Duration::from_millis(500))
                .max_deliver(2)
                .dead_letter("dlq"),
        )
        .await
        .expect("queue");
    q.enqueue("one").await.expect("enqueue");
    assert_eq!(q.depth().await.expect("depth"), 1);
    let job = q.receive(LIMIT).await.expect("receive").expect("job");
    assert_eq!(job.attempt, 1);
    job.nack(None).await.expect("nack");
    let job = q.receive(LIMIT).await.expect("receive").expect("job again");
    assert_eq!(job.attempt, 2);
    drop(job); // the last attempt times out
    let dead = dlq
        .receive(LIMIT)
        .await
        .expect("receive")
        .expect("dead letter");
    assert_eq!(dead.body().to_bytes(), "one");
    dead.ack().await.expect("ack");
    assert_eq!(
        dead.ack().await.unwrap_err().kind(),
        ErrorKind::AlreadyAcked
    );
    assert!(q
        .receive(Duration::from_millis(300))
        .await
        .expect("receive")
        .is_none());

    let b = queues
        .create_queue(QueueConfig::new("fanout").broadcast(["x", "y"]))
        .await
        .expect("broadcast");
    b.enqueue("m").await.expect("enqueue");
    for c in ["x", "y"] {
        let j = b.receive_as(c, LIMIT).await.expect("receive").expect("job");
        j.ack().await.expect("ack");
    }
    assert_eq!(
        b.receive_as("z", Duration::from_millis(10))
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
    for name in ["jobs", "dlq", "fanout"] {
        queues.delete_queue(name).await.expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_authentication() {
    let server = NatsServer::start_with(ServerOptions::default().args(["--auth", "t0ken"]))
        .await
        .expect("server");
    let port = server.port();
    let kv = registry()
        .kv(&format!("nats://127.0.0.1:{port}?token=t0ken"))
        .await
        .expect("the right token connects");
    let b = kv
        .create_bucket(BucketConfig::new("tok"))
        .await
        .expect("bucket");
    b.put("k", "v").await.expect("put");
    kv.delete_bucket("tok").await.expect("delete");
    let err = registry()
        .kv(&format!("nats://127.0.0.1:{port}?token=wrong"))
        .await
        .expect_err("a wrong token is refused");
    assert_eq!(err.kind(), ErrorKind::Unauthorized, "{err}");
}

/// A responder that ignores flow control (a plain NATS client flooding a
/// plane caller's inbox with data frames) cuts off only that call, with
/// `Overloaded`, and never stalls other calls sharing the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_responder_overloads_only_its_own_call() {
    let server = NatsServer::start().await.expect("server");
    let reqs = requests(&server.url()).await;
    let client = async_nats::connect(server.url()).await.expect("connect");
    let mut flood = client.subscribe("plane.req.flood").await.expect("sub");
    round_trip(&client).await;
    let flooder = {
        let client = client.clone();
        tokio::spawn(async move {
            while let Some(msg) = flood.next().await {
                let Some(reply) = msg.reply else { continue };
                let mut accepted = async_nats::HeaderMap::new();
                accepted.insert("plane-frame", "accepted");
                let _ = client
                    .publish_with_headers(reply.clone(), accepted, Bytes::new())
                    .await;
                for i in 0..2_000u32 {
                    let mut h = async_nats::HeaderMap::new();
                    h.insert("plane-frame", "data");
                    let _ = client
                        .publish_with_headers(reply.clone(), h, i.to_string().into())
                        .await;
                }
                let _ = client.flush().await;
            }
        })
    };
    let _echo = reqs
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .expect("serve");

    let mut flooded = within("stream", reqs.stream(Call::new("flood", "")))
        .await
        .expect("the flooder accepts");
    // Let the flood arrive without reading it; other calls keep working.
    for _ in 0..20 {
        let got = within("echo", reqs.call("echo", "still here"))
            .await
            .expect("an echo while another call is flooded");
        assert_eq!(got.to_bytes(), "still here");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut data = 0usize;
    let end = loop {
        match within("flooded replies", flooded.next_reply()).await {
            Some(Ok(_)) => data += 1,
            Some(Err(e)) => break Some(e.kind()),
            None => break None,
        }
    };
    assert_eq!(end, Some(ErrorKind::Overloaded), "after {data} replies");
    assert!(data < 2_000, "the call was cut off, {data} replies read");
    assert!(flooded.next_reply().await.is_none(), "the stream ended");
    flooder.abort();
}
