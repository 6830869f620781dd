//! Two environments side by side on one server (`namespace=nylon.dev` and
//! `namespace=nylon.prod`): the same endpoint, subject, stream, bucket and
//! queue names in both, and neither sees the other's. A plain NATS client
//! checks that the names really live under the namespace on the server, so
//! one permission (`nylon.dev.>`) covers an environment's traffic.

use std::time::Duration;

use futures_util::StreamExt;
use plane_core::events::{ConsumerConfig, StreamConfig};
use plane_core::kv::BucketConfig;
use plane_core::queue::QueueConfig;
use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Registry};
use plane_nats::testkit::NatsServer;

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

const LIMIT: Duration = Duration::from_secs(10);
/// How long to wait for something that must not arrive.
const QUIET: Duration = Duration::from_millis(500);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_environments_on_one_server_never_see_each_other() {
    let server = NatsServer::start().await.expect("server");
    let dev_url = format!("{}?namespace=nylon.dev", server.url());
    let prod_url = format!("{}?namespace=nylon.prod", server.url());
    let plain = async_nats::connect(server.url())
        .await
        .expect("plain client");
    // Subscribes to what plane sends, with inboxes of its own so that its
    // round trips do not show up among the inboxes it watches.
    let watcher = async_nats::ConnectOptions::new()
        .custom_inbox_prefix("watcher")
        .connect(server.url())
        .await
        .expect("watching client");

    // Requests: one dotted endpoint name served in both environments.
    let endpoint = "agent.7.status";
    let dev = registry().requests(&dev_url).await.expect("dev requests");
    let prod = registry().requests(&prod_url).await.expect("prod requests");
    let bare = registry()
        .requests(&server.url())
        .await
        .expect("requests outside any namespace");
    let _dev_server = dev
        .serve(endpoint, unary_fn(|_: Request| async { Ok("dev") }))
        .await
        .expect("serve dev");
    let _prod_server = prod
        .serve(endpoint, unary_fn(|_: Request| async { Ok("prod") }))
        .await
        .expect("serve prod");
    for _ in 0..5 {
        let reply = within("dev call", dev.call(endpoint, "?"))
            .await
            .expect("dev call");
        assert_eq!(reply.to_bytes(), "dev");
        let reply = within("prod call", prod.call(endpoint, "?"))
            .await
            .expect("prod call");
        assert_eq!(reply.to_bytes(), "prod");
    }
    let e = within("bare call", bare.call(endpoint, "?"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders, "{e}");
    let reply = within(
        "plain request",
        plain.request("nylon.dev.plane.req.agent.7.status", "?".into()),
    )
    .await
    .expect("a plain request under the namespace reaches the dev endpoint");
    assert_eq!(&reply.payload[..], b"dev");

    // Replies come back on inboxes inside the namespace.
    let mut dev_inboxes = watcher.subscribe("nylon.dev._INBOX.>").await.expect("sub");
    let mut bare_inboxes = watcher.subscribe("_INBOX.>").await.expect("sub");
    round_trip(&watcher).await;
    within("dev call", dev.call(endpoint, "?"))
        .await
        .expect("dev call");
    let reply = within("the dev reply on its inbox", dev_inboxes.next())
        .await
        .expect("message");
    assert_eq!(&reply.payload[..], b"dev");
    assert!(
        tokio::time::timeout(QUIET, bare_inboxes.next())
            .await
            .is_err(),
        "a namespaced call used an inbox outside its namespace"
    );

    // Events: a wildcard subscriber in prod hears prod only, and sees its own
    // subject names, without the namespace.
    let dev_events = registry().events(&dev_url).await.expect("dev events");
    let prod_events = registry().events(&prod_url).await.expect("prod events");
    let mut prod_all = prod_events.subscribe(">").await.expect("prod sub");
    let mut plain_dev = watcher
        .subscribe("nylon.dev.orders.>")
        .await
        .expect("plain sub");
    round_trip(&watcher).await;
    dev_events
        .publish("orders.created", "from dev")
        .await
        .expect("dev publish");
    prod_events
        .publish("orders.created", "from prod")
        .await
        .expect("prod publish");
    // `>` inside a namespace is everything in it, plane's own traffic (calls,
    // inbox replies) included, as `>` is on a server without one; only the
    // application's subjects are checked here.
    let mut heard = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout(QUIET, prod_all.next()).await {
        let event = event.expect("ok");
        assert!(
            !event.subject.starts_with("nylon."),
            "a subject shows its namespace: {}",
            event.subject
        );
        if event.subject.starts_with("orders.") {
            heard.push((event.subject.clone(), event.body().to_bytes()));
        }
    }
    assert_eq!(
        heard,
        vec![("orders.created".to_owned(), bytes::Bytes::from("from prod"))],
        "prod's `>` hears prod's event once and nothing of dev's"
    );
    let raw = within("dev's event on the server", plain_dev.next())
        .await
        .expect("message");
    assert_eq!(raw.subject.as_str(), "nylon.dev.orders.created");
    assert_eq!(&raw.payload[..], b"from dev");

    // Durable streams of one name, one per environment.
    for events in [&dev_events, &prod_events] {
        events
            .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
            .await
            .expect("stream");
    }
    let ack = dev_events
        .publish_durable("orders.paid", "paid in dev", None)
        .await
        .expect("durable publish");
    assert_eq!(
        ack.stream, "ORDERS",
        "the application sees its own stream name"
    );
    let js = async_nats::jetstream::new(plain.clone());
    let mut dev_stream = js
        .get_stream("nylon_dev__ORDERS")
        .await
        .expect("dev's stream on the server");
    assert_eq!(dev_stream.info().await.expect("info").state.messages, 1);
    let mut prod_consumer = prod_events
        .consume(ConsumerConfig::new("ORDERS", "router"))
        .await
        .expect("prod consumer");
    assert!(
        tokio::time::timeout(QUIET, prod_consumer.next())
            .await
            .is_err(),
        "prod's consumer got dev's durable event"
    );
    let mut dev_consumer = dev_events
        .consume(ConsumerConfig::new("ORDERS", "router").filter("orders.paid"))
        .await
        .expect("dev consumer");
    let d = within("dev's durable event", dev_consumer.next())
        .await
        .expect("delivery")
        .expect("ok");
    assert_eq!(d.event.subject, "orders.paid");
    assert_eq!(d.event.body().to_bytes(), "paid in dev");
    d.ack().await.expect("ack");

    // Kv buckets of one name.
    let dev_kv = registry().kv(&dev_url).await.expect("dev kv");
    let prod_kv = registry().kv(&prod_url).await.expect("prod kv");
    let dev_cfg = dev_kv
        .create_bucket(BucketConfig::new("cfg"))
        .await
        .expect("bucket");
    let prod_cfg = prod_kv
        .create_bucket(BucketConfig::new("cfg"))
        .await
        .expect("bucket");
    dev_cfg.put("mode", "dev").await.expect("put");
    assert!(prod_cfg.get("mode").await.expect("get").is_none());
    prod_cfg.put("mode", "prod").await.expect("put");
    assert_eq!(
        dev_cfg.get("mode").await.expect("get").expect("live").value,
        "dev"
    );
    assert_eq!(
        prod_cfg
            .get("mode")
            .await
            .expect("get")
            .expect("live")
            .value,
        "prod"
    );
    js.get_stream("KV_nylon_prod__cfg")
        .await
        .expect("prod's bucket on the server");

    // Object buckets of one name.
    let dev_objects = registry().objects(&dev_url).await.expect("dev objects");
    let prod_objects = registry().objects(&prod_url).await.expect("prod objects");
    let dev_blobs = dev_objects.create_bucket("blobs").await.expect("bucket");
    let prod_blobs = prod_objects.create_bucket("blobs").await.expect("bucket");
    dev_blobs.put("model.bin", "weights").await.expect("put");
    assert_eq!(
        prod_blobs.head("model.bin").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        dev_blobs.get_bytes("model.bin").await.expect("get"),
        "weights"
    );

    // Work queues of one name.
    let dev_queues = registry().queues(&dev_url).await.expect("dev queues");
    let prod_queues = registry().queues(&prod_url).await.expect("prod queues");
    let dev_jobs = dev_queues
        .create_queue(QueueConfig::new("jobs"))
        .await
        .expect("queue");
    let prod_jobs = prod_queues
        .create_queue(QueueConfig::new("jobs"))
        .await
        .expect("queue");
    dev_jobs.enqueue("build").await.expect("enqueue");
    assert_eq!(dev_jobs.depth().await.expect("depth"), 1);
    assert_eq!(prod_jobs.depth().await.expect("depth"), 0);
    assert!(prod_jobs.receive(QUIET).await.expect("receive").is_none());
    let job = dev_jobs
        .receive(LIMIT)
        .await
        .expect("receive")
        .expect("job");
    assert_eq!(job.body().to_bytes(), "build");
    job.ack().await.expect("ack");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_namespaces_are_refused_naming_the_key() {
    for bad in ["nylon..dev", "nylon_dev", "nylon.*", "nylon dev"] {
        let e = registry()
            .requests(&format!("nats://127.0.0.1:1?namespace={bad}"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad}: {e}");
        assert!(e.message().contains("namespace"), "{bad}: {e}");
    }
    let e = registry()
        .requests("nats://127.0.0.1:1?prefix=nylon.dev")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig);
    assert!(
        e.message().contains("`namespace`"),
        "a hint at the right key: {e}"
    );
}

/// Make sure the server has processed `client`'s subscriptions (flush only
/// empties the client's buffer): a request nobody answers comes back only
/// after everything sent before it was handled.
async fn round_trip(client: &async_nats::Client) {
    let _ = client.request("nobody.listens.here", "".into()).await;
}
