//! The plane side of every scenario, shared by all backends: the same
//! handlers and the same calls whatever the URL.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use plane::objects::ObjectBucket;
use plane::request::{handler_fn, unary_fn, Call, Request, Responder, Server};
use plane::{Events, Requests};

use crate::drive::{Get, PubSub, PubSubFactory, Put, Streamed, Unary, SMALL};
use crate::Result;

/// Serve `echo` (a unary echo), `echo_await` (an echo that awaits once,
/// `yield_now`, before replying) and `chunks` (see [`chunk_handler`]); the
/// servers stop when the returned handles are dropped.
pub async fn serve(requests: &Requests) -> Result<[Server; 3]> {
    Ok([
        requests
            .serve(
                "echo",
                unary_fn(|req: Request| async move { Ok(req.message.body) }),
            )
            .await?,
        requests
            .serve(
                "echo_await",
                unary_fn(|req: Request| async move {
                    tokio::task::yield_now().await;
                    Ok(req.message.body)
                }),
            )
            .await?,
        requests.serve("chunks", chunk_handler()).await?,
    ])
}

/// The 64 B request of the `unary_await` scenario: the raw servers await
/// once (`yield_now`) before echoing a request that starts with `y`.
pub fn await_payload() -> Bytes {
    let mut p = vec![0x5a; SMALL];
    p[0] = b'y';
    Bytes::from(p)
}

/// One 64 B call to `echo_await`.
pub fn plane_unary_await(requests: &Requests) -> Unary {
    let requests = requests.clone();
    let payload = await_payload();
    Arc::new(move || {
        let requests = requests.clone();
        let payload = payload.clone();
        Box::pin(async move {
            requests.call("echo_await", payload).await?;
            Ok(())
        })
    })
}

/// Streams the number of 64 B chunks the request body names, then ends.
pub fn chunk_handler() -> impl plane::request::Handler {
    handler_fn(|req: Request, out: Responder| async move {
        let n: u32 = std::str::from_utf8(&req.body().to_bytes())
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunk = Bytes::from(vec![0x5a; SMALL]);
        for _ in 0..n {
            out.send(chunk.clone()).await?;
        }
        Ok(())
    })
}

/// One 64 B call to `echo`.
pub fn plane_unary(requests: &Requests) -> Unary {
    let requests = requests.clone();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    Arc::new(move || {
        let requests = requests.clone();
        let payload = payload.clone();
        Box::pin(async move {
            requests.call("echo", payload).await?;
            Ok(())
        })
    })
}

/// One streamed call to `chunks`, counting the replies.
pub fn plane_streamed(requests: &Requests) -> Streamed {
    let requests = requests.clone();
    Arc::new(move |n| {
        let requests = requests.clone();
        Box::pin(async move {
            let mut replies = requests.stream(Call::new("chunks", n.to_string())).await?;
            let mut got = 0;
            while let Some(reply) = replies.next_reply().await {
                reply?;
                got += 1;
            }
            Ok(got)
        })
    })
}

/// A fresh subscription on a fresh subject per round.
pub fn plane_pubsub(events: &Events, backend: &'static str) -> PubSubFactory {
    let events = events.clone();
    let round = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move || {
        let events = events.clone();
        let n = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let subject = format!("bench.{backend}.plane.{n}");
            let sub = events.subscribe(&subject).await?;
            // Let the subscription reach the broker before publishing.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let publisher = events.clone();
            let publish: Arc<dyn Fn(Bytes) -> _ + Send + Sync> = Arc::new(move |b: Bytes| {
                let publisher = publisher.clone();
                let subject = subject.clone();
                Box::pin(async move {
                    publisher.publish(&subject, b).await?;
                    Ok(())
                }) as futures_util::future::BoxFuture<'static, Result<()>>
            });
            Ok(PubSub::new(publish, sub.boxed(), |e| e.is_ok()))
        })
    })
}

/// One acked durable publish of 64 B to `subject`.
pub fn plane_durable(events: &Events, subject: &str) -> Unary {
    let events = events.clone();
    let subject = subject.to_owned();
    let payload = Bytes::from(vec![0x5a; SMALL]);
    Arc::new(move || {
        let events = events.clone();
        let subject = subject.clone();
        let payload = payload.clone();
        Box::pin(async move {
            events.publish_durable(&subject, payload, None).await?;
            Ok(())
        })
    })
}

/// Put and streaming get on `bucket`.
pub fn plane_objects(bucket: &ObjectBucket) -> (Put, Get) {
    let b = bucket.clone();
    let put: Put = Arc::new(move |name, data| {
        let b = b.clone();
        Box::pin(async move {
            b.put(&name, data).await?;
            Ok(())
        })
    });
    let b = bucket.clone();
    let get: Get = Arc::new(move |name| {
        let b = b.clone();
        Box::pin(async move {
            let mut reader = b.get(&name).await?;
            let mut size = 0u64;
            while let Some(chunk) = reader.stream.next().await {
                size += chunk?.len() as u64;
            }
            Ok(size)
        })
    });
    (put, get)
}
