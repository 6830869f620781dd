//! A tour of plane: all five planes and discovery, each built from a URL.
//!
//! ```text
//! cargo run --example tour                       # everything on the embedded mem:// backend
//! cargo run --example tour -- --url mem://other  # one URL for every plane
//! cargo run --example tour -- --requests URL --events URL --kv URL --objects URL --queue URL
//! ```
//!
//! Each plane's URL comes from its flag, else from its environment variable
//! (`PLANE_REQUESTS_URL`, `PLANE_EVENTS_URL`, `PLANE_KV_URL`,
//! `PLANE_OBJECTS_URL`, `PLANE_QUEUE_URL`) or its key in the config file
//! (`--config FILE` or `PLANE_CONFIG`; `docs/config.md`), else from `--url`,
//! `PLANE_URL` or the file's `url`, else `mem://tour`. The file's client
//! policies apply to the request handle. Discovery runs on the kv plane. The binary is the same
//! for every backend: only configuration changes. What a backend does not
//! declare is reported and skipped, never faked.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};

use plane::config::Config;
use plane::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, Instance};
use plane::events::{ConsumerConfig, StreamConfig};
use plane::kv::{BucketConfig, WatchEvent};
use plane::objects::{Digester, ObjectMeta};
use plane::offload::Offload;
use plane::queue::QueueConfig;
use plane::request::{handler_fn, unary_fn, Call, Request, Responder};
use plane::session::Plane;
use plane::{Error, ErrorKind, Message, Result};

struct Urls {
    requests: String,
    events: String,
    kv: String,
    objects: String,
    queue: String,
}

fn usage() -> &'static str {
    "usage: tour [--config FILE] [--url URL] [--requests URL] [--events URL] [--kv URL] [--objects URL] [--queue URL]"
}

/// The planes' URLs and the configuration: `--config FILE` (else
/// `PLANE_CONFIG`) and the `PLANE_…` variables, with the flags over them.
fn parse_args() -> std::result::Result<(Urls, Config), String> {
    let mut flags = std::collections::HashMap::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let name = match flag.as_str() {
            "--config" | "--url" | "--requests" | "--events" | "--kv" | "--objects" | "--queue" => {
                flag.trim_start_matches("--").to_owned()
            }
            "-h" | "--help" => return Err(usage().to_owned()),
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        };
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))?;
        flags.insert(name, value);
    }
    let file = flags
        .get("config")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os(plane::config::CONFIG_ENV).map(Into::into));
    let mut config =
        Config::load_from(file.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
    // Client keys in a flag's URL (`--requests 'nats://h?timeout_ms=500'`)
    // are the policy's, as in the file's and the environment's URLs.
    for name in ["url", "requests"] {
        if let Some(url) = flags.get_mut(name) {
            *url = config.url_keys(url).map_err(|e| e.to_string())?;
        }
    }
    // A plane's own URL first (flag, then environment or file), then the
    // URL for every plane in the same order, then the embedded default.
    let pick = |name: &str, plane: Plane| {
        flags
            .get(name)
            .cloned()
            .or_else(|| config.urls.of(plane).map(str::to_owned))
            .or_else(|| flags.get("url").cloned())
            .or_else(|| config.urls.url.clone())
            .unwrap_or_else(|| "mem://tour".to_owned())
    };
    let urls = Urls {
        requests: pick("requests", Plane::Request),
        events: pick("events", Plane::Events),
        kv: pick("kv", Plane::Kv),
        objects: pick("objects", Plane::Objects),
        queue: pick("queue", Plane::Queue),
    };
    Ok((urls, config))
}

/// A unique suffix so repeated tours against a persistent backend never collide.
fn run_id() -> String {
    format!("{:08x}", rand_u32())
}

fn rand_u32() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ std::process::id().rotate_left(16)
}

fn step(plane: &str, what: impl std::fmt::Display) {
    println!("[{plane:>9}] {what}");
}

fn unexpected(what: &str) -> Error {
    Error::new(ErrorKind::Other, format!("tour: {what}"))
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct ModelCard {
    name: String,
    parameters: u64,
    quantised: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let (urls, config) = match parse_args() {
        Ok(u) => u,
        Err(msg) => {
            eprintln!("{msg}");
            return ExitCode::from(2);
        }
    };
    let started = Instant::now();
    match tour(&urls, &config).await {
        Ok(()) => {
            println!("tour finished in {:.2?}", started.elapsed());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tour failed: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn tour(urls: &Urls, config: &Config) -> Result<()> {
    let registry = plane::registry();
    let id = run_id();
    println!("plane tour (run {id}); backends are chosen by URL:");
    for (plane, url) in [
        ("request", &urls.requests),
        ("events", &urls.events),
        ("kv", &urls.kv),
        ("objects", &urls.objects),
        ("queue", &urls.queue),
    ] {
        // Printed without passwords or tokens: tour output ends up in logs.
        println!("  {plane:>9} -> {}", plane::registry::redacted(url));
    }
    // One session per distinct URL: planes named by the same URL share its
    // connection (one NATS client for `--url nats://…`, not five).
    let mut sessions: Vec<(&str, plane::Session)> = Vec::new();
    for url in [
        &urls.kv,
        &urls.requests,
        &urls.events,
        &urls.objects,
        &urls.queue,
    ] {
        if !sessions.iter().any(|(u, _)| u == url) {
            sessions.push((url, registry.connect(url).await?));
        }
    }
    let session = |url: &str| {
        sessions
            .iter()
            .find(|(u, _)| *u == url)
            .map(|(_, s)| s.clone())
            .expect("a session was opened for every URL")
    };
    let kv = session(&urls.kv).kv().await?;
    // The configuration's client policies (timeout, retries, in-flight
    // limit, per-endpoint overrides) on the request handle.
    let requests = config.apply(session(&urls.requests).requests().await?)?;
    let events = session(&urls.events).events().await?;
    let objects = session(&urls.objects).objects().await?;
    let queues = session(&urls.queue).queues().await?;

    kv_tour(&kv, &id).await?;
    let discovery = Discovery::open(
        &kv,
        DiscoveryConfig::default().bucket(format!("tour_discovery_{id}")),
    )
    .await?;
    request_tour(&requests, &discovery, &id).await?;
    events_tour(&events, &id).await?;
    objects_tour(&objects, &id).await?;
    offload_tour(&requests, &objects, &id).await?;
    queue_tour(&queues, &id).await?;
    kv.delete_bucket(&format!("tour_discovery_{id}")).await?;
    Ok(())
}

async fn kv_tour(kv: &plane::Kv, id: &str) -> Result<()> {
    let name = format!("tour_config_{id}");
    let caps = kv.capabilities().clone();
    let bucket = kv
        .create_bucket(BucketConfig::new(&name).history(if caps.history { 5 } else { 1 }))
        .await?;
    let r1 = bucket.put("model.default", "llama-3-8b").await?;
    step(
        "kv",
        format!("put model.default = llama-3-8b at revision {r1}"),
    );
    let r2 = bucket.update("model.default", "llama-3-70b", r1).await?;
    step("kv", format!("compare-and-swap from revision {r1} -> {r2}"));
    match bucket.update("model.default", "stale-writer", r1).await {
        Err(e) if e.kind() == ErrorKind::RevisionMismatch => step(
            "kv",
            "a stale compare-and-swap is refused: RevisionMismatch, value unchanged",
        ),
        other => return Err(unexpected(&format!("stale update gave {other:?}"))),
    }
    match bucket.create("model.default", "again").await {
        Err(e) if e.kind() == ErrorKind::AlreadyExists => {
            step("kv", "create-if-absent on an existing key: AlreadyExists")
        }
        other => return Err(unexpected(&format!("second create gave {other:?}"))),
    }
    let current = bucket
        .get("model.default")
        .await?
        .ok_or_else(|| unexpected("key vanished"))?;
    step(
        "kv",
        format!(
            "get model.default = {:?}",
            String::from_utf8_lossy(&current.value)
        ),
    );
    if caps.watch {
        let mut watch = bucket.watch("model.>").await?;
        let mut snapshot = 0;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
                Ok(Some(Ok(WatchEvent::Entry(_)))) => snapshot += 1,
                Ok(Some(Ok(WatchEvent::CaughtUp))) => break,
                other => return Err(unexpected(&format!("watch gave {other:?}"))),
            }
        }
        bucket.put("model.fallback", "mistral-7b").await?;
        match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
            Ok(Some(Ok(WatchEvent::Entry(e)))) => step(
                "kv",
                format!(
                    "watch: {snapshot} snapshot entr(y/ies), caught up, then live {} {:?}",
                    e.key, e.op
                ),
            ),
            other => return Err(unexpected(&format!("live watch gave {other:?}"))),
        }
    } else {
        step("kv", "backend does not declare watch; skipped");
    }
    if caps.history {
        let history = bucket.history("model.default").await?;
        step(
            "kv",
            format!("history of model.default: {} revisions", history.len()),
        );
    }
    kv.delete_bucket(&name).await?;
    Ok(())
}

async fn request_tour(requests: &plane::Requests, discovery: &Discovery, id: &str) -> Result<()> {
    let caps = requests.capabilities().clone();
    let echo = format!("tour-echo-{id}");
    let server = requests
        .serve(
            &echo,
            unary_fn(|req: Request| async move {
                let mut reply = Vec::from(&b"echo: "[..]);
                reply.extend_from_slice(&req.body().to_bytes());
                Ok(reply)
            }),
        )
        .await?;
    let registration = discovery
        .register(Instance::new(
            &echo,
            server.instance(),
            format!("{}://in-process", requests.backend_name()),
        ))
        .await?;
    let found = discovery.list(&echo).await?;
    step(
        "discovery",
        format!(
            "registered {echo} instance {}; list finds {} instance(s)",
            server.instance(),
            found.len()
        ),
    );
    let mut watch = discovery.watch(&echo).await?;
    match tokio::time::timeout(Duration::from_secs(5), watch.next()).await {
        Ok(Some(DiscoveryEvent::Added(i))) => step(
            "discovery",
            format!("watch reports instance {} at {}", i.id, i.address),
        ),
        other => return Err(unexpected(&format!("discovery watch gave {other:?}"))),
    }

    let reply = requests.call(&echo, "hello").await?;
    step(
        "request",
        format!(
            "unary call -> {:?}",
            String::from_utf8_lossy(&reply.to_bytes())
        ),
    );

    let missing = requests
        .call_with(Call::new(format!("tour-nobody-{id}"), "?").timeout(Duration::from_secs(5)))
        .await;
    match missing {
        Err(e) if e.kind() == ErrorKind::NoResponders => step(
            "request",
            "call to an endpoint nobody serves: NoResponders, at once",
        ),
        other => return Err(unexpected(&format!("call to nobody gave {other:?}"))),
    }

    if caps.streaming {
        let tokens = format!("tour-tokens-{id}");
        let streamer = requests
            .serve(
                &tokens,
                handler_fn(|_req: Request, out: Responder| async move {
                    for token in ["The", " quick", " brown", " fox", "."] {
                        out.send(Bytes::from_static(token.as_bytes())).await?;
                    }
                    Ok(())
                }),
            )
            .await?;
        let mut replies = requests.stream(Call::new(&tokens, "generate")).await?;
        let mut text = String::new();
        let mut chunks = 0;
        while let Some(chunk) = replies.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk?.body.to_bytes()));
            chunks += 1;
        }
        step(
            "request",
            format!("streamed {chunks} chunks then an explicit end: {text:?}"),
        );
        drop(streamer);
    } else {
        step("request", "backend does not declare streaming; skipped");
    }
    if caps.broadcast {
        // Stats collection: every live instance answers one call. A broker
        // that cannot count its subscribers (NATS) runs it to the deadline.
        let stats = format!("tour-stats-{id}");
        let mut instances = Vec::new();
        for load in ["0.25", "0.75"] {
            instances.push(
                requests
                    .serve(
                        &stats,
                        unary_fn(move |_req: Request| async move { Ok(format!("load={load}")) }),
                    )
                    .await?,
            );
        }
        let answers = requests
            .broadcast(Call::new(&stats, "stats?").timeout(Duration::from_secs(1)))
            .await?
            .collect()
            .await;
        let mut seen: Vec<String> = Vec::new();
        for answer in answers {
            let reply = answer.reply?;
            seen.push(format!(
                "{} {}",
                answer.instance,
                String::from_utf8_lossy(&reply.body.to_bytes())
            ));
        }
        if seen.len() != instances.len() {
            return Err(unexpected(&format!(
                "broadcast to {} instances answered by {seen:?}",
                instances.len()
            )));
        }
        seen.sort();
        step(
            "request",
            format!("broadcast answered by every instance: {}", seen.join(", ")),
        );
    } else {
        step("request", "backend does not declare broadcast; skipped");
    }
    registration.deregister().await?;
    let killed = server.drain(Duration::from_secs(5)).await;
    step(
        "request",
        format!("drained {echo} ({killed} call(s) had to be killed)"),
    );
    Ok(())
}

async fn events_tour(events: &plane::Events, id: &str) -> Result<()> {
    let caps = events.capabilities().clone();
    let prefix = format!("tour.{id}.orders");
    let pattern = if caps.wildcards {
        format!("{prefix}.*")
    } else {
        format!("{prefix}.eu")
    };
    let mut sub = events.subscribe(&pattern).await?;
    for i in 0..3u8 {
        events.publish(&format!("{prefix}.eu"), vec![i]).await?;
    }
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(Ok(ev))) => {
                let origin = ev
                    .origin
                    .ok_or_else(|| unexpected("event without origin"))?;
                step(
                    "events",
                    format!(
                        "{} <- {:?} (publisher {}, seq {})",
                        pattern,
                        ev.body().to_bytes(),
                        origin.publisher,
                        origin.sequence
                    ),
                );
            }
            other => return Err(unexpected(&format!("subscription gave {other:?}"))),
        }
    }
    sub.close();
    if caps.durable {
        let stream = format!("tour_orders_{id}");
        events
            .create_stream(StreamConfig::new(&stream, [format!("{prefix}.durable")]))
            .await?;
        let ack = events
            .publish_durable(&format!("{prefix}.durable"), "order-1", Some("order-1"))
            .await?;
        step(
            "events",
            format!("durable publish stored at stream sequence {}", ack.sequence),
        );
        if caps.dedup {
            let again = events
                .publish_durable(&format!("{prefix}.durable"), "order-1", Some("order-1"))
                .await?;
            step(
                "events",
                format!("same message id again: duplicate = {}", again.duplicate),
            );
        }
        let mut consumer = events
            .consume(ConsumerConfig::new(&stream, "billing").ack_wait(Duration::from_secs(5)))
            .await?;
        match tokio::time::timeout(Duration::from_secs(5), consumer.next()).await {
            Ok(Some(Ok(delivery))) => {
                delivery.ack().await?;
                step(
                    "events",
                    format!(
                        "durable consumer got {:?} (attempt {}) and acked it after processing",
                        delivery.event.body().to_bytes(),
                        delivery.attempt
                    ),
                );
            }
            other => return Err(unexpected(&format!("durable consumer gave {other:?}"))),
        }
        consumer.close();
        events.delete_stream(&stream).await?;
    } else {
        step(
            "events",
            "backend does not declare durable streams; skipped",
        );
    }
    Ok(())
}

async fn objects_tour(objects: &plane::Objects, id: &str) -> Result<()> {
    let name = format!("tour_models_{id}");
    let bucket = objects.create_bucket(&name).await?;
    // 16 MiB streamed in 1 MiB chunks: the whole object never exists as one buffer here.
    const CHUNK: usize = 1 << 20;
    let chunks = 16usize;
    let mut expected = Digester::new();
    let pieces: Vec<Bytes> = (0..chunks)
        .map(|i| Bytes::from(vec![(i % 251) as u8; CHUNK]))
        .collect();
    for p in &pieces {
        expected.update(p);
    }
    let meta = if objects.capabilities().metadata {
        ObjectMeta::default()
            .content_type("application/octet-stream")
            .attribute("format", "gguf")
    } else {
        ObjectMeta::default()
    };
    let info = bucket
        .put_stream(
            "weights/tour.bin",
            meta,
            stream::iter(pieces.into_iter().map(Ok)).boxed(),
        )
        .await?;
    step(
        "objects",
        format!(
            "streamed put of {} bytes, {}",
            info.size,
            &info.digest[..19]
        ),
    );
    let reader = bucket.get("weights/tour.bin").await?;
    let mut got = Digester::new();
    let mut body = reader.stream;
    while let Some(chunk) = body.next().await {
        got.update(&chunk?);
    }
    let (size, digest) = (got.size(), got.finish());
    if digest != expected.finish() || size != info.size {
        return Err(unexpected("object read back differs"));
    }
    step(
        "objects",
        format!("streamed get of {size} bytes, digest matches"),
    );
    let card = ModelCard {
        name: "tour-model".into(),
        parameters: 8_000_000_000,
        quantised: true,
    };
    bucket.put_json("cards/tour.json", &card).await?;
    let back: ModelCard = bucket.get_json("cards/tour.json").await?;
    step("objects", format!("typed put/get round-trips: {back:?}"));
    if objects.capabilities().list {
        let listed = bucket.list("weights/").await?;
        step(
            "objects",
            format!("list weights/: {} object(s)", listed.len()),
        );
    }
    bucket.delete("weights/tour.bin").await?;
    bucket.delete("cards/tour.json").await?;
    objects.delete_bucket(&name).await?;
    Ok(())
}

/// Payloads above a threshold travel through the objects plane; only a small
/// handle crosses the request plane, so no broker payload limit is hit.
async fn offload_tour(
    requests: &plane::Requests,
    objects: &plane::Objects,
    id: &str,
) -> Result<()> {
    let bucket_name = format!("tour_payloads_{id}");
    let offload = Offload::new(objects.create_bucket(&bucket_name).await?, 256 * 1024);
    let ingest = format!("tour-ingest-{id}");
    let server_side = offload.clone();
    let server = requests
        .serve(
            &ingest,
            unary_fn(move |req: Request| {
                let offload = server_side.clone();
                async move {
                    let full = offload.resolve(req.message).await?;
                    let digest = Digester::of(&full.body.to_bytes());
                    Ok(format!("{} bytes, {}", full.body.len(), &digest[..19]))
                }
            }),
        )
        .await?;
    let payload = Bytes::from(vec![7u8; 3 * 1024 * 1024]);
    let message = offload.offload(Message::from(payload.clone())).await?;
    step(
        "offload",
        format!(
            "a {} byte payload travels as a {} byte handle ({})",
            payload.len(),
            message.payload_len(),
            message
                .headers
                .get(plane::message::names::OBJECT_REF)
                .unwrap_or("?")
        ),
    );
    let reply = requests
        .call_with(Call::new(&ingest, message.body.clone()).headers(message.headers.clone()))
        .await?;
    step(
        "offload",
        format!(
            "the handler fetched it back: {}",
            String::from_utf8_lossy(&reply.body.to_bytes())
        ),
    );
    offload.discard(&message).await?;
    drop(server);
    objects.delete_bucket(&bucket_name).await?;
    Ok(())
}

async fn queue_tour(queues: &plane::Queues, id: &str) -> Result<()> {
    let name = format!("tour_jobs_{id}");
    let queue = queues
        .create_queue(QueueConfig::new(&name).ack_wait(Duration::from_secs(5)))
        .await?;
    for i in 0..6u8 {
        queue.enqueue(vec![i]).await?;
    }
    if queues.capabilities().depth {
        step(
            "queue",
            format!("enqueued 6 jobs; depth {}", queue.depth().await?),
        );
    }
    let mut workers = Vec::new();
    for w in 0..2 {
        let queue = queue.clone();
        workers.push(tokio::spawn(async move {
            let mut done = 0u32;
            while let Some(job) = queue.receive(Duration::from_millis(300)).await? {
                // Process first, then ack: a crash before this line means redelivery, not loss.
                tokio::time::sleep(Duration::from_millis(5)).await;
                job.ack().await?;
                done += 1;
            }
            Ok::<_, Error>((w, done))
        }));
    }
    let mut total = 0;
    for w in workers {
        let (worker, done) = w.await.map_err(|e| unexpected(&e.to_string()))??;
        step(
            "queue",
            format!("worker {worker} processed and acked {done} job(s)"),
        );
        total += done;
    }
    if total != 6 {
        return Err(unexpected(&format!(
            "workers processed {total} jobs, expected 6"
        )));
    }
    if queues.capabilities().depth {
        step(
            "queue",
            format!("depth after acks: {}", queue.depth().await?),
        );
    }
    queues.delete_queue(&name).await?;
    Ok(())
}
