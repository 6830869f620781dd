//! TCP: plane-tcp against tokio TCP used directly, with the same socket
//! setting (`TCP_NODELAY`) and framing (a 4-byte big-endian length before
//! every message). The raw caller keeps one connection per call in flight
//! (a pool, each connection carrying one call at a time), the simplest
//! correct raw client; plane multiplexes every call on one connection.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::drive::{self, Pair, Params, PubSub, PubSubFactory, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// Largest message the raw side reads (plane-tcp's default `max_payload`).
const MAX_PAYLOAD: usize = 8 << 20;
/// Events queued per subscriber at the raw publisher before it drops
/// (plane-tcp's publisher queue).
const SUBSCRIBER_QUEUE: usize = plane::tcp::events::SUBSCRIBER_QUEUE;

/// Run the request and events scenarios on `tcp://`.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let registry = plane::registry();
    let requests = registry
        .requests("tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-tcp")
        .await?;
    let _servers = plane_ops::serve(&requests).await?;

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(raw_server(listener));
    let pool = Pool::new(addr);

    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(pool.clone(), Bytes::from(vec![0x5a; SMALL]))),
    };
    step(
        rows,
        "tcp unary_latency",
        drive::unary_latency("tcp", &unary, p),
    )
    .await?;
    step(
        rows,
        "tcp unary_throughput",
        drive::unary_throughput("tcp", &unary, p),
    )
    .await?;
    step(
        rows,
        "tcp unary_allocs",
        drive::unary_allocs("tcp", "unary_latency", &unary, p),
    )
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: Some(raw_unary(pool.clone(), plane_ops::await_payload())),
    };
    step(
        rows,
        "tcp unary_await",
        drive::unary_await("tcp", &awaiting, p),
    )
    .await?;
    step(rows, "tcp paced_slo", drive::paced_slo("tcp", &unary, p)).await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: Some(raw_streamed(pool)),
    };
    step(
        rows,
        "tcp stream_throughput",
        drive::stream_throughput("tcp", &streamed, p),
    )
    .await?;

    let events = registry
        .events("tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-tcp-events")
        .await?;
    let publisher_listener = TcpListener::bind("127.0.0.1:0").await?;
    let publisher_addr = publisher_listener.local_addr()?;
    let pubsub = Pair {
        plane: plane_ops::plane_pubsub(&events, "tcp"),
        raw: Some(raw_pubsub(publisher_listener, publisher_addr)),
    };
    step(
        rows,
        "tcp pubsub_throughput",
        drive::pubsub_throughput("tcp", &pubsub, p),
    )
    .await?;
    server.abort();
    Ok(())
}

async fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Write one length-prefixed message.
async fn write_frame(s: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(4 + payload.len());
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(payload);
    s.write_all(&frame).await
}

/// Read one length-prefixed message into `buf`.
async fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<()> {
    let len = s.read_u32().await? as usize;
    if len > MAX_PAYLOAD {
        return Err(format!("frame of {len} bytes").into());
    }
    buf.resize(len, 0);
    s.read_exact(buf).await?;
    Ok(())
}

/// Idle connections to the raw server, one taken per call.
#[derive(Clone)]
struct Pool {
    addr: SocketAddr,
    idle: Arc<Mutex<Vec<TcpStream>>>,
}

impl Pool {
    fn new(addr: SocketAddr) -> Self {
        Pool {
            addr,
            idle: Arc::default(),
        }
    }

    async fn take(&self) -> Result<TcpStream> {
        let cached = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match cached {
            Some(s) => Ok(s),
            None => connect(self.addr).await,
        }
    }

    fn give(&self, s: TcpStream) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }
}

/// Each connection carries calls one after the other: a request frame is
/// answered with its echo, or, for `n<count>`, that many 64 B frames and an
/// empty one as the end.
async fn raw_server(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        let _ = s.set_nodelay(true);
        tokio::spawn(async move {
            let mut request = Vec::new();
            while read_frame(&mut s, &mut request).await.is_ok() {
                let ok = if let Some(n) = request.strip_prefix(b"n") {
                    let n: u32 = std::str::from_utf8(n)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let chunk = [0x5a; SMALL];
                    let mut all = Vec::with_capacity((n as usize + 1) * (SMALL + 4));
                    for _ in 0..n {
                        all.extend_from_slice(&(SMALL as u32).to_be_bytes());
                        all.extend_from_slice(&chunk);
                    }
                    all.extend_from_slice(&0u32.to_be_bytes());
                    s.write_all(&all).await.is_ok()
                } else {
                    if request.first() == Some(&b'y') {
                        tokio::task::yield_now().await;
                    }
                    write_frame(&mut s, &request).await.is_ok()
                };
                if !ok {
                    return;
                }
            }
        });
    }
}

fn raw_unary(pool: Pool, payload: Bytes) -> Unary {
    Arc::new(move || {
        let pool = pool.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let mut s = pool.take().await?;
            write_frame(&mut s, &payload).await?;
            let mut reply = Vec::new();
            read_frame(&mut s, &mut reply).await?;
            if reply.len() != SMALL {
                return Err(format!("echo of {} bytes", reply.len()).into());
            }
            pool.give(s);
            Ok(())
        })
    })
}

fn raw_streamed(pool: Pool) -> Streamed {
    Arc::new(move |n| {
        let pool = pool.clone();
        Box::pin(async move {
            let mut s = pool.take().await?;
            write_frame(&mut s, format!("n{n}").as_bytes()).await?;
            let mut got = 0;
            let mut chunk = Vec::with_capacity(SMALL);
            loop {
                read_frame(&mut s, &mut chunk).await?;
                if chunk.is_empty() {
                    pool.give(s);
                    return Ok(got);
                }
                got += 1;
            }
        })
    })
}

/// A raw subscription per round: one connection to a raw publisher task,
/// which offers each event to the subscriber's bounded queue (dropping when
/// full, as plane-tcp's publisher does) and drains it into the connection.
fn raw_pubsub(listener: TcpListener, addr: SocketAddr) -> PubSubFactory {
    let listener = Arc::new(listener);
    Arc::new(move || {
        let listener = listener.clone();
        Box::pin(async move {
            let (accepted, subscriber) = tokio::join!(listener.accept(), connect(addr));
            let (mut to_subscriber, _) = accepted?;
            to_subscriber.set_nodelay(true)?;
            let subscriber = subscriber?;
            let (queue, mut outgoing) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
            tokio::spawn(async move {
                while let Some(event) = outgoing.recv().await {
                    if write_frame(&mut to_subscriber, &event).await.is_err() {
                        return;
                    }
                }
            });
            // Same settling time as the plane side.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync> =
                Arc::new(move |event: Bytes| {
                    // Full: dropped, as at-most-once allows; the receiver's
                    // count shows it.
                    let _ = queue.try_send(event);
                    Box::pin(async { Ok(()) })
                });
            let frames = futures_util::stream::unfold(subscriber, |mut s| async move {
                let mut event = Vec::new();
                read_frame(&mut s, &mut event).await.ok()?;
                Some((event, s))
            });
            Ok(PubSub::new(publish, Box::pin(frames), |_| true))
        })
    })
}
