//! ZeroMQ: plane-zmq against libzmq used directly (through plane-zmq-sys,
//! the same binding plane-zmq uses, so one libzmq) — one DEALER
//! (shared by every call, replies matched by id) talking to one ROUTER, both
//! driven by tokio through `ZMQ_FD` as plane-zmq drives its sockets.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, oneshot};

use futures_util::future::BoxFuture;
use plane_zmq_sys as zmq;

use crate::drive::{self, Pair, Params, PubSub, PubSubFactory, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// plane-zmq's default high-water mark, used by the raw sockets too.
const HWM: i32 = 1000;
/// plane-zmq's default high-water mark of the events sockets.
const EVENTS_HWM: i32 = 10_000;

/// Run the request scenarios on `zmq+tcp://`.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let registry = plane::registry();
    let requests = registry
        .requests("zmq+tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-zmq")
        .await?;
    let _servers = plane_ops::serve(&requests).await?;

    let context = zmq::Context::new();
    let router = context.socket(zmq::ROUTER)?;
    router.set_sndhwm(HWM)?;
    router.set_rcvhwm(HWM)?;
    // Wait at the high-water mark rather than drop, like plane.
    router.set_router_mandatory(true)?;
    router.bind("tcp://127.0.0.1:0")?;
    let address = router.get_last_endpoint()?;
    let dealer = context.socket(zmq::DEALER)?;
    dealer.set_sndhwm(HWM)?;
    dealer.set_rcvhwm(HWM)?;
    dealer.connect(&address)?;
    let server = tokio::spawn(raw_server(Socket::new(router)?));
    let (calls, queue) = mpsc::channel(256);
    let client = tokio::spawn(raw_client(Socket::new(dealer)?, queue));

    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(calls.clone(), Bytes::from(vec![0x5a; SMALL]))),
    };
    step(
        rows,
        "zmq unary_latency",
        drive::unary_latency("zmq", &unary, p),
    )
    .await?;
    step(
        rows,
        "zmq unary_throughput",
        drive::unary_throughput("zmq", &unary, p),
    )
    .await?;
    step(
        rows,
        "zmq unary_allocs",
        drive::unary_allocs("zmq", "unary_latency", &unary, p),
    )
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: Some(raw_unary(calls.clone(), plane_ops::await_payload())),
    };
    step(
        rows,
        "zmq unary_await",
        drive::unary_await("zmq", &awaiting, p),
    )
    .await?;
    step(rows, "zmq paced_slo", drive::paced_slo("zmq", &unary, p)).await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: Some(raw_streamed(calls)),
    };
    step(
        rows,
        "zmq stream_throughput",
        drive::stream_throughput("zmq", &streamed, p),
    )
    .await?;
    server.abort();
    client.abort();

    // Events: one plane handle publishes and subscribes to itself over
    // loopback; the raw side is one PUB socket and a fresh SUB per round.
    let events = registry
        .events("zmq+tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-zmq-events")
        .await?;
    let publisher = context.socket(zmq::PUB)?;
    publisher.set_sndhwm(EVENTS_HWM)?;
    publisher.bind("tcp://127.0.0.1:0")?;
    let address = publisher.get_last_endpoint()?;
    let pubsub = Pair {
        plane: plane_ops::plane_pubsub(&events, "zmq"),
        raw: Some(raw_pubsub(
            context,
            address,
            Arc::new(Socket::new(publisher)?),
        )),
    };
    step(
        rows,
        "zmq pubsub_throughput",
        drive::pubsub_throughput("zmq", &pubsub, p),
    )
    .await?;
    Ok(())
}

/// A libzmq socket registered with tokio. `zmq::Socket` is not `Sync`; the
/// mutex is only taken for one non-blocking call at a time.
struct Socket {
    fd: AsyncFd<Fd>,
}

struct Fd {
    socket: Mutex<zmq::Socket>,
    raw: RawFd,
}

impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> RawFd {
        self.raw
    }
}

impl Socket {
    fn new(socket: zmq::Socket) -> Result<Self> {
        let raw = socket.get_fd()?;
        // `register_with_interest` is the same call marked `unsafe` for I/O
        // safety: the descriptor stays open while registered, because the
        // `AsyncFd` owns the socket and deregisters before dropping it.
        #[allow(deprecated)]
        let fd = AsyncFd::with_interest(
            Fd {
                socket: Mutex::new(socket),
                raw,
            },
            tokio::io::Interest::READABLE,
        )?;
        Ok(Socket { fd })
    }

    fn socket(&self) -> std::sync::MutexGuard<'_, zmq::Socket> {
        self.fd
            .get_ref()
            .socket
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn try_recv(&self) -> Result<Option<Vec<Vec<u8>>>> {
        match self.socket().recv_multipart(zmq::DONTWAIT) {
            Ok(parts) => Ok(Some(parts)),
            Err(zmq::Error::EAGAIN) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Send, waiting while the high-water mark is reached.
    async fn send(&self, parts: &[&[u8]]) -> Result<()> {
        loop {
            match self
                .socket()
                .send_multipart(parts.iter().copied(), zmq::DONTWAIT)
            {
                Ok(()) => return Ok(()),
                Err(zmq::Error::EAGAIN) => {}
                Err(e) => return Err(e.into()),
            }
            if !self.ready(zmq::POLLOUT)? {
                self.changed().await;
            }
        }
    }

    /// Whether the socket can do `what` now. Reading `ZMQ_EVENTS` also makes
    /// libzmq process its pending commands (a peer's read freeing room under
    /// the high-water mark), which is what re-arms `ZMQ_FD`.
    fn ready(&self, what: i32) -> Result<bool> {
        Ok(self.socket().get_events()? & what != 0)
    }

    /// Wait until libzmq signals a possible state change. `ZMQ_FD` is
    /// edge-triggered: the readiness is cleared before the caller retries,
    /// so an edge after that retry wakes us again.
    async fn changed(&self) {
        if let Ok(Ok(mut guard)) =
            tokio::time::timeout(Duration::from_millis(100), self.fd.readable()).await
        {
            guard.clear_ready();
        }
    }
}

/// ROUTER: `[peer, id, body]` in; an echo, or for a body `n<count>` that many
/// 64 B chunks and an empty end marker, out.
async fn raw_server(socket: Socket) {
    let chunk = [0x5a; SMALL];
    loop {
        loop {
            let parts = match socket.try_recv() {
                Ok(Some(parts)) if parts.len() == 3 => parts,
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            };
            let (peer, id, body) = (&parts[0][..], &parts[1][..], &parts[2][..]);
            let sent = match body.strip_prefix(b"n") {
                Some(n) => {
                    let n: u32 = std::str::from_utf8(n)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(0);
                    let mut sent = Ok(());
                    for _ in 0..n {
                        sent = socket.send(&[peer, id, &chunk[..]]).await;
                        if sent.is_err() {
                            break;
                        }
                    }
                    match sent {
                        Ok(()) => socket.send(&[peer, id, &[]]).await,
                        e => e,
                    }
                }
                None => {
                    if body.first() == Some(&b'y') {
                        tokio::task::yield_now().await;
                    }
                    socket.send(&[peer, id, body]).await
                }
            };
            if sent.is_err() {
                return;
            }
        }
        match socket.ready(zmq::POLLIN) {
            Ok(true) => {}
            Ok(false) => socket.changed().await,
            Err(_) => return,
        }
    }
}

/// A call handed to the DEALER's task.
enum Call {
    Unary(Bytes, oneshot::Sender<Vec<u8>>),
    Stream(u32, mpsc::Sender<Vec<u8>>),
}

/// Where a reply goes.
enum Pending {
    Unary(oneshot::Sender<Vec<u8>>),
    Stream(mpsc::Sender<Vec<u8>>),
}

/// DEALER: sends `[id, body]` for each call and routes replies by id.
async fn raw_client(socket: Socket, mut calls: mpsc::Receiver<Call>) {
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        loop {
            let parts = match socket.try_recv() {
                Ok(Some(parts)) if parts.len() == 2 => parts,
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            };
            let Ok(id) = <[u8; 8]>::try_from(&parts[0][..]).map(u64::from_be_bytes) else {
                continue;
            };
            let Some(Pending::Stream(_)) = pending.get(&id) else {
                if let Some(Pending::Unary(reply)) = pending.remove(&id) {
                    let _ = reply.send(parts[1].clone());
                }
                continue;
            };
            if parts[1].is_empty() {
                pending.remove(&id);
            } else if let Some(Pending::Stream(chunks)) = pending.get(&id) {
                let _ = chunks.send(parts[1].clone()).await;
            }
        }
        match socket.ready(zmq::POLLIN) {
            Ok(true) => continue,
            Ok(false) => {}
            Err(_) => return,
        }
        tokio::select! {
            call = calls.recv() => {
                let Some(call) = call else { return };
                next_id += 1;
                let id = next_id.to_be_bytes();
                let sent = match call {
                    Call::Unary(body, reply) => {
                        pending.insert(next_id, Pending::Unary(reply));
                        socket.send(&[&id[..], &body[..]]).await
                    }
                    Call::Stream(n, chunks) => {
                        pending.insert(next_id, Pending::Stream(chunks));
                        socket.send(&[&id[..], format!("n{n}").as_bytes()]).await
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
            () = socket.changed() => {}
        }
    }
}

fn raw_unary(calls: mpsc::Sender<Call>, payload: Bytes) -> Unary {
    Arc::new(move || {
        let calls = calls.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            calls
                .send(Call::Unary(payload, tx))
                .await
                .map_err(|_| "the raw DEALER task ended")?;
            let reply = rx.await?;
            if reply.len() != SMALL {
                return Err(format!("echo of {} bytes", reply.len()).into());
            }
            Ok(())
        })
    })
}

fn raw_streamed(calls: mpsc::Sender<Call>) -> Streamed {
    Arc::new(move |n| {
        let calls = calls.clone();
        Box::pin(async move {
            let (tx, mut rx) = mpsc::channel(64);
            calls
                .send(Call::Stream(n, tx))
                .await
                .map_err(|_| "the raw DEALER task ended")?;
            let mut got = 0;
            while rx.recv().await.is_some() {
                got += 1;
            }
            Ok(got)
        })
    })
}

/// A fresh SUB socket per round on a fresh topic, connected to the raw PUB
/// with plane-zmq's events high-water mark; publishing is one non-blocking
/// send (PUB drops at the high-water mark, as plane-zmq's XPUB does).
fn raw_pubsub(context: zmq::Context, address: String, publisher: Arc<Socket>) -> PubSubFactory {
    let round = Arc::new(std::sync::atomic::AtomicU64::new(0));
    Arc::new(move || {
        let context = context.clone();
        let address = address.clone();
        let publisher = publisher.clone();
        let n = round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Box::pin(async move {
            let topic = Bytes::from(format!("bench.zmq.raw.{n}"));
            let sub = context.socket(zmq::SUB)?;
            sub.set_rcvhwm(EVENTS_HWM)?;
            sub.set_subscribe(&topic)?;
            sub.connect(&address)?;
            // Same settling time as the plane side (PUB/SUB's slow joiner).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync> =
                Arc::new(move |event: Bytes| {
                    let publisher = publisher.clone();
                    let topic = topic.clone();
                    Box::pin(async move { publisher.send(&[&topic[..], &event[..]]).await })
                });
            let messages = futures_util::stream::unfold(Socket::new(sub)?, |sub| async {
                loop {
                    match sub.try_recv() {
                        Ok(Some(parts)) => return Some((parts, sub)),
                        Ok(None) => {}
                        Err(_) => return None,
                    }
                    match sub.ready(zmq::POLLIN) {
                        Ok(true) => {}
                        Ok(false) => sub.changed().await,
                        Err(_) => return None,
                    }
                }
            });
            Ok(PubSub::new(publish, Box::pin(messages), |parts| {
                parts.len() == 2
            }))
        })
    })
}
