//! NATS: plane-nats against async-nats used directly, on one nats-server
//! started in a container the way the conformance suite starts it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use plane::events::StreamConfig;
use plane_nats::testkit::NatsServer;
use tokio::io::AsyncReadExt;

use crate::drive::{self, Get, Pair, Params, PubSub, PubSubFactory, Put, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{progress, step, Result};

/// Raw request subjects (plane's are under `plane.`, so they never meet).
const ECHO: &str = "raw.echo";
/// The control echo: raw async-nats carrying the headers plane sends.
const CONTROL_ECHO: &str = "raw.echo.control";
const CHUNKS: &str = "raw.chunks";
/// The chunk size plane-nats reads objects back with.
const READ_CHUNK: usize = 128 * 1024;

/// Run every scenario against plane-nats and async-nats.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let server = NatsServer::start().await?;
    let url = server.url();
    progress(format_args!("  nats-server at {url}"));
    let pid = server_pid(server.id());
    match pid {
        Some(pid) => progress(format_args!(
            "  nats-server is process {pid}: its CPU is counted"
        )),
        None => progress("  nats-server's process cannot be read here: no server CPU rows"),
    }
    drive::watch_server(pid);
    let registry = plane::registry();

    // Request plane: one plane handle (one connection) serves and calls; the
    // raw side likewise uses one client for its responders and its calls.
    let requests = registry.requests(&url).await?;
    let _servers = plane_ops::serve(&requests).await?;
    let client = async_nats::connect(&url).await?;
    let (request_headers, reply_headers) = plane_headers(&url, &requests).await?;
    progress(format_args!(
        "  control: a plane request carries {}, its reply {}",
        describe(&request_headers),
        describe(&reply_headers)
    ));
    let responders = [
        tokio::spawn(raw_echo(client.clone(), ECHO, None)),
        tokio::spawn(raw_echo(client.clone(), CONTROL_ECHO, Some(reply_headers))),
        tokio::spawn(raw_chunks(client.clone())),
    ];
    client.flush().await?;

    let payload = Bytes::from(vec![0x5a; SMALL]);
    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(&client, ECHO, None, payload.clone())),
    };
    let control = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(
            &client,
            CONTROL_ECHO,
            Some(request_headers),
            payload,
        )),
    };
    step(
        rows,
        "nats unary_latency",
        drive::unary_latency("nats", &unary, p),
    )
    .await?;
    step(
        rows,
        "nats unary_throughput",
        drive::unary_throughput("nats", &unary, p),
    )
    .await?;
    step(
        rows,
        "nats unary_allocs",
        drive::unary_allocs("nats", "unary_latency", &unary, p),
    )
    .await?;
    step(rows, "nats control rows", async {
        let mut out = drive::unary_latency("nats", &control, p).await?;
        out.extend(drive::unary_throughput("nats", &control, p).await?);
        out.extend(drive::unary_allocs("nats", "unary_latency", &control, p).await?);
        Ok(out.into_iter().map(Row::against_control).collect())
    })
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: Some(raw_unary(&client, ECHO, None, plane_ops::await_payload())),
    };
    step(
        rows,
        "nats unary_await",
        drive::unary_await("nats", &awaiting, p),
    )
    .await?;
    step(rows, "nats paced_slo", drive::paced_slo("nats", &unary, p)).await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: Some(raw_streamed(&client)),
    };
    step(
        rows,
        "nats stream_throughput",
        drive::stream_throughput("nats", &streamed, p),
    )
    .await?;
    for r in responders {
        r.abort();
    }

    let events = registry.events(&url).await?;
    let pubsub = Pair {
        plane: plane_ops::plane_pubsub(&events, "nats"),
        raw: Some(raw_pubsub(&client)),
    };
    step(
        rows,
        "nats pubsub_throughput",
        drive::pubsub_throughput("nats", &pubsub, p),
    )
    .await?;

    let js = jetstream::new(client.clone());
    events
        .create_stream(StreamConfig::new("bench-plane", ["bench.durable.plane"]))
        .await?;
    js.create_stream(jetstream::stream::Config {
        name: "bench-raw".to_owned(),
        subjects: vec!["bench.durable.raw".to_owned()],
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await?;
    let durable = Pair {
        plane: plane_ops::plane_durable(&events, "bench.durable.plane"),
        raw: Some(raw_durable(&js, "bench.durable.raw")),
    };
    step(
        rows,
        "nats durable_publish",
        drive::durable_publish("nats", &durable, p),
    )
    .await?;
    events.delete_stream("bench-plane").await?;
    js.delete_stream("bench-raw").await?;

    let objects = registry.objects(&url).await?;
    let bucket = objects.create_bucket("bench-plane").await?;
    let store = js
        .create_object_store(jetstream::object_store::Config {
            bucket: "bench-raw".to_owned(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    let pair = Pair {
        plane: plane_ops::plane_objects(&bucket),
        raw: Some(raw_objects(store)),
    };
    step(
        rows,
        "nats object_put_get",
        drive::object_put_get("nats", &pair, p),
    )
    .await?;
    objects.delete_bucket("bench-plane").await?;
    js.delete_object_store("bench-raw").await?;
    drive::watch_server(None);
    drop(server);
    Ok(())
}

/// The host process id of the server in container `id`, if this machine
/// runs the container and its `/proc` entry can be read.
fn server_pid(id: &str) -> Option<u32> {
    let out = std::process::Command::new("docker")
        .args(["inspect", "--format", "{{.State.Pid}}", id])
        .output()
        .ok()?;
    let pid: u32 = std::str::from_utf8(&out.stdout).ok()?.trim().parse().ok()?;
    (pid != 0 && std::fs::metadata(format!("/proc/{pid}/stat")).is_ok()).then_some(pid)
}

/// The headers of one plane request and of its final reply, as they cross
/// the wire (seen by a second client subscribed to everything), so the
/// control row carries the same names with values of the same sizes.
async fn plane_headers(
    url: &str,
    requests: &plane::Requests,
) -> Result<(async_nats::HeaderMap, async_nats::HeaderMap)> {
    use plane::message::names::{FRAME, ID};
    let spy = async_nats::connect(url).await?;
    let mut all = spy.subscribe(">").await?;
    spy.flush().await?;
    requests
        .call("echo", Bytes::from(vec![0x5a; SMALL]))
        .await?;
    let (mut request, mut reply) = (None, None);
    while request.is_none() || reply.is_none() {
        let msg = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .map_err(|_| "no plane request and reply seen on the wire")?
            .ok_or("the spy subscription ended")?;
        let Some(h) = msg.headers else { continue };
        if request.is_none() && msg.reply.is_some() && h.get(ID).is_some() {
            request = Some(h);
        } else if reply.is_none() && h.get(FRAME).is_some_and(|f| f.as_str() == "last") {
            reply = Some(h);
        }
    }
    let _ = all.unsubscribe().await;
    Ok((
        request.ok_or("no plane request seen")?,
        reply.ok_or("no plane reply seen")?,
    ))
}

/// `name (value bytes), …` of a header map.
fn describe(h: &async_nats::HeaderMap) -> String {
    let mut out: Vec<String> = h
        .iter()
        .map(|(n, v)| {
            let len: usize = v.iter().map(|v| v.as_str().len()).sum();
            format!("{n} ({len} B)")
        })
        .collect();
    out.sort();
    if out.is_empty() {
        "no headers".to_owned()
    } else {
        out.join(", ")
    }
}

/// Echo every request on `subject` back to its reply subject, with
/// `headers` where given; a request starting with `y` is answered after
/// awaiting once (`yield_now`).
async fn raw_echo(
    client: async_nats::Client,
    subject: &'static str,
    headers: Option<async_nats::HeaderMap>,
) {
    let Ok(mut sub) = client.queue_subscribe(subject, "raw".to_owned()).await else {
        return;
    };
    while let Some(msg) = sub.next().await {
        if let Some(reply) = msg.reply {
            if msg.payload.first() == Some(&b'y') {
                tokio::task::yield_now().await;
            }
            let sent = match &headers {
                Some(h) => {
                    client
                        .publish_with_headers(reply, h.clone(), msg.payload)
                        .await
                }
                None => client.publish(reply, msg.payload).await,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// Answer a request naming `n` with `n` 64 B chunks, then an empty end marker.
async fn raw_chunks(client: async_nats::Client) {
    let Ok(mut sub) = client.queue_subscribe(CHUNKS, "raw".to_owned()).await else {
        return;
    };
    let chunk = Bytes::from(vec![0x5a; SMALL]);
    while let Some(msg) = sub.next().await {
        let Some(reply) = msg.reply else { continue };
        let n: u32 = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        for _ in 0..n {
            if client.publish(reply.clone(), chunk.clone()).await.is_err() {
                return;
            }
        }
        if client.publish(reply, Bytes::new()).await.is_err() {
            return;
        }
    }
}

fn raw_unary(
    client: &async_nats::Client,
    subject: &'static str,
    headers: Option<async_nats::HeaderMap>,
    payload: Bytes,
) -> Unary {
    let client = client.clone();
    Arc::new(move || {
        let client = client.clone();
        let payload = payload.clone();
        let headers = headers.clone();
        Box::pin(async move {
            match headers {
                Some(h) => client.request_with_headers(subject, h, payload).await?,
                None => client.request(subject, payload).await?,
            };
            Ok(())
        })
    })
}

fn raw_streamed(client: &async_nats::Client) -> Streamed {
    let client = client.clone();
    Arc::new(move |n| {
        let client = client.clone();
        Box::pin(async move {
            let inbox = client.new_inbox();
            let mut sub = client.subscribe(inbox.clone()).await?;
            client
                .publish_with_reply(CHUNKS, inbox, n.to_string().into())
                .await?;
            let mut got = 0;
            loop {
                let msg = tokio::time::timeout(Duration::from_secs(10), sub.next())
                    .await?
                    .ok_or("the raw stream's subscription ended")?;
                if msg.payload.is_empty() {
                    return Ok(got);
                }
                got += 1;
            }
        })
    })
}

fn raw_pubsub(client: &async_nats::Client) -> PubSubFactory {
    let client = client.clone();
    let round = Arc::new(AtomicU64::new(0));
    Arc::new(move || {
        let client = client.clone();
        let n = round.fetch_add(1, Ordering::Relaxed);
        Box::pin(async move {
            let subject = format!("bench.nats.raw.{n}");
            let sub = client.subscribe(subject.clone()).await?;
            // Same settling time as the plane side.
            client.flush().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
            let publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync> =
                Arc::new(move |b: Bytes| {
                    let client = client.clone();
                    let subject = subject.clone();
                    Box::pin(async move {
                        client.publish(subject, b).await?;
                        Ok(())
                    })
                });
            Ok(PubSub::new(publish, sub, |_| true))
        })
    })
}

fn raw_durable(js: &jetstream::Context, subject: &str) -> Unary {
    let js = js.clone();
    let subject = subject.to_owned();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    Arc::new(move || {
        let js = js.clone();
        let subject = subject.clone();
        let payload = payload.clone();
        Box::pin(async move {
            js.publish(subject, payload).await?.await?;
            Ok(())
        })
    })
}

fn raw_objects(store: jetstream::object_store::ObjectStore) -> (Put, Get) {
    let s = store.clone();
    let put: Put = Arc::new(move |name, data: Bytes| {
        let s = s.clone();
        Box::pin(async move {
            s.put(name.as_str(), &mut data.as_ref()).await?;
            Ok(())
        })
    });
    let get: Get = Arc::new(move |name| {
        let s = store.clone();
        Box::pin(async move {
            let mut object = s.get(name).await?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            let mut size = 0u64;
            loop {
                buf.clear();
                let n = object.read_buf(&mut buf).await?;
                if n == 0 {
                    return Ok(size);
                }
                size += n as u64;
            }
        })
    });
    (put, get)
}
