//! The ZeroMQ request plane: a ROUTER serving every endpoint instance
//! registered through a handle, and one DEALER per peer process for calls.
//!
//! # Messages
//!
//! Each message is one wire envelope in the multipart form
//! (`wire::encode_parts`: the head as the first frame, then one frame per
//! body part). The ROUTER prefixes the caller's routing identity, as ZeroMQ
//! does. Calls are multiplexed on a DEALER by request id.
//!
//! # Liveness
//!
//! ZeroMQ hides disconnects, so the server sends a `heartbeat` envelope for
//! every call in flight every [`ZmqConfig::heartbeat`]; a caller that hears
//! nothing about a call for [`ZmqConfig::idle_timeout`] ends it, which the
//! plane reports as `Disconnected`. The ROUTER runs with
//! `ZMQ_ROUTER_MANDATORY`, so a reply or heartbeat to a caller that
//! disconnected fails, and the server kills that caller's handlers.
//!
//! # Backpressure
//!
//! Per-call reply buffers, the socket queues (high-water marks) and the
//! handle's internal channels are bounded; when a caller stops reading, the
//! server's sends wait. The cost is head-of-line blocking: the other calls
//! between the same two processes wait too.
//!
//! libzmq sets `TCP_NODELAY` on every TCP connection it makes, so small
//! replies are not delayed by Nagle's algorithm.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use plane_core::discovery::{Discovery, Instance};
use plane_core::message::names;
use plane_core::request::flow::{Credit, Grants, Liveness};
use plane_core::request::{
    Call, Cancel, Dispatcher, Frame, InstanceId, ReplySink, ReplyTransport, RequestBackend,
    RequestCapabilities, ServeTransport,
};
use plane_core::wire::{self, Envelope, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::{
    self as peer, call_envelope, check_limits, decode_inbound, decode_reply, frame_envelope,
    Endpoints, InFlight, Inbound, PeerDirectory, Reply,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::socket::{zmq_error, AsyncSocket, Sent};
use crate::ZmqConfig;

/// Frames buffered per call on the caller's side.
const CALL_BUFFER: usize = 64;
/// Messages waiting for a socket task.
const SOCKET_QUEUE: usize = 1024;
/// Queued messages a socket's loop sends before it reads its socket again.
const SEND_BATCH: usize = 64;
/// Data frames a server may send on one call ahead of the caller's reader;
/// the caller grants more with `ack` envelopes carrying [`names::CREDIT`] as
/// its reader consumes them. Sockets and TCP buffers alone would let a
/// handler run megabytes ahead of a stalled reader.
const WINDOW: u32 = 256;
/// Pause before retrying a send that hit a high-water mark.
const RETRY: Duration = Duration::from_millis(1);

/// The ZeroMQ request plane. Build it with [`ZmqRequests::connect`] (or
/// through the registry with a `zmq+tcp://` URL) and wrap it in
/// [`plane_core::Requests`].
#[derive(Clone)]
pub struct ZmqRequests {
    node: Arc<Node>,
}

impl std::fmt::Debug for ZmqRequests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqRequests")
            .field("address", &self.address())
            .finish()
    }
}

struct RouterHandle {
    address: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RouterHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Node {
    config: ZmqConfig,
    context: zmq::Context,
    router: Mutex<RouterHandle>,
    served: peer::Served,
    directory: PeerDirectory,
    dealers: Mutex<HashMap<String, DealerHandle>>,
    limits: Limits,
    capabilities: RequestCapabilities,
}

pub(crate) fn socket(
    context: &zmq::Context,
    kind: zmq::SocketType,
    config: &ZmqConfig,
) -> Result<zmq::Socket> {
    let s = context
        .socket(kind)
        .map_err(|e| zmq_error("cannot create a zmq socket", e))?;
    let set = |r: zmq::Result<()>| r.map_err(|e| zmq_error("cannot set a zmq socket option", e));
    // Never block process exit on unsent messages.
    set(s.set_linger(0))?;
    set(s.set_sndhwm(config.hwm))?;
    set(s.set_rcvhwm(config.hwm))?;
    // libzmq refuses (and disconnects) a peer sending a larger frame, so a
    // hostile peer cannot make it allocate without bound.
    set(s.set_maxmsgsize(
        i64::try_from(config.max_payload + wire::MAX_HEADER_BYTES).unwrap_or(i64::MAX),
    ))?;
    Ok(s)
}

impl ZmqRequests {
    /// Bind a ROUTER as `config` says and find peers through `discovery`.
    ///
    /// # Errors
    /// `Connection` when the address cannot be bound.
    pub fn connect(config: ZmqConfig, discovery: Discovery) -> Result<Self> {
        config.validate()?;
        let context = zmq::Context::new();
        let limits = Limits::default().with_max_envelope_bytes(
            config
                .max_payload
                .saturating_add(wire::MAX_HEADER_BYTES)
                .min(u32::MAX as usize),
        );
        let served = peer::Served::new(discovery.clone());
        let router = start_router(&context, &config, served.endpoints().clone(), limits)?;
        let capabilities = RequestCapabilities::complete(config.max_payload);
        Ok(ZmqRequests {
            node: Arc::new(Node {
                directory: PeerDirectory::new(discovery, Default::default()),
                context,
                router: Mutex::new(router),
                served,
                dealers: Mutex::new(HashMap::new()),
                limits,
                capabilities,
                config,
            }),
        })
    }

    /// The address the ROUTER is bound to (`tcp://127.0.0.1:PORT`).
    pub fn address(&self) -> String {
        self.node.lock_router().address.clone()
    }

    /// Send `parts` as one multipart message, as they are, from a fresh
    /// DEALER to this handle's ROUTER, and return the first answer (or `None`
    /// after `wait`). A test hook (feature `testkit`) for checking that a peer
    /// survives garbage.
    ///
    /// # Errors
    /// `Connection` if the socket cannot be created or connected.
    #[cfg(feature = "testkit")]
    pub async fn send_raw(&self, parts: &[Bytes], wait: Duration) -> Result<Option<Vec<Bytes>>> {
        let node = &self.node;
        let s = socket(&node.context, zmq::DEALER, &node.config)?;
        s.connect(&self.address())
            .map_err(|e| zmq_error("cannot connect", e))?;
        let s = AsyncSocket::new(&node.context, s)?;
        let deadline = Instant::now() + wait;
        let mut sent = false;
        loop {
            if !sent {
                sent = matches!(s.try_send(parts)?, Sent::Done);
            }
            if let Some(answer) = s.try_recv()? {
                return Ok(Some(answer));
            }
            tokio::select! {
                _ = s.changed() => {}
                _ = tokio::time::sleep(RETRY * 10), if !sent => {}
                _ = tokio::time::sleep_until(deadline) => return Ok(None),
            }
        }
    }

    /// Restart the serving side as a crashed and restarted process would:
    /// close the ROUTER (calls in flight are lost), bind a new one (on a new
    /// port when the configured port is 0) and re-register every served
    /// instance at the new address.
    ///
    /// # Errors
    /// `Connection` if the new socket cannot be bound; discovery errors.
    pub async fn restart(&self) -> Result<()> {
        let node = &self.node;
        let fresh = start_router(
            &node.context,
            &node.config,
            node.served.endpoints().clone(),
            node.limits,
        )?;
        // Dropping the old handle aborts its task, which closes its socket.
        drop(std::mem::replace(&mut *node.lock_router(), fresh));
        node.dealers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        node.served
            .reregister(|endpoint, instance| Ok(node.record(endpoint, instance)))
            .await
    }
}

impl Node {
    fn lock_router(&self) -> std::sync::MutexGuard<'_, RouterHandle> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The discovery record of `instance` of `endpoint` served here.
    fn record(&self, endpoint: &str, instance: InstanceId) -> Instance {
        Instance::new(endpoint, instance, self.lock_router().address.clone())
    }

    /// The DEALER for `address`, created on first use.
    fn dealer(&self, address: &str, fresh: bool) -> Result<DealerHandle> {
        let mut dealers = self.dealers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(d) = dealers.get(address) {
            if !fresh && !d.tx.is_closed() {
                return Ok(d.clone());
            }
        }
        let s = socket(&self.context, zmq::DEALER, &self.config)?;
        // Queue only to completed connections, so a peer that is gone is
        // noticed (the send would block) instead of filling a queue.
        s.set_immediate(true)
            .map_err(|e| zmq_error("cannot set a zmq socket option", e))?;
        s.connect(address)
            .map_err(|e| zmq_error(&format!("cannot connect to {address}"), e))?;
        let s = AsyncSocket::new(&self.context, s)?;
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        tokio::spawn(dealer_loop(
            s,
            rx,
            self.limits,
            self.config.idle_timeout,
            self.config.heartbeat,
            self.config.connect_timeout,
        ));
        let handle = DealerHandle { tx };
        dealers.insert(address.to_owned(), handle.clone());
        Ok(handle)
    }

    /// Start a call on `instance`: queue the request `env` (its instance
    /// header still unset) on its DEALER and wait until libzmq took it (a
    /// connection exists).
    async fn start(
        &self,
        instance: Instance,
        env: &Envelope,
    ) -> Result<(DealerHandle, mpsc::Receiver<Result<Frame>>)> {
        let dealer = self.dealer(&instance.address, false)?;
        let mut env = env.clone();
        env.headers.insert(names::INSTANCE, instance.id.to_string());
        let (reply_tx, reply_rx) = mpsc::channel(CALL_BUFFER);
        let (sent_tx, sent_rx) = oneshot::channel();
        let start = DealerCmd::Start {
            id: env.id,
            parts: wire::encode_parts(&env),
            replies: reply_tx,
            sent: sent_tx,
        };
        let gone = || {
            Error::new(
                ErrorKind::Connection,
                format!("peer {} is unreachable", instance.address),
            )
        };
        dealer.tx.send(start).await.map_err(|_| gone())?;
        match sent_rx.await {
            Ok(Ok(())) => Ok((dealer, reply_rx)),
            Ok(Err(e)) => {
                // The peer did not take the message in time: forget this
                // DEALER so the next call connects afresh.
                let mut dealers = self.dealers.lock().unwrap_or_else(|p| p.into_inner());
                if dealers
                    .get(&instance.address)
                    .is_some_and(|d| d.tx.same_channel(&dealer.tx))
                {
                    dealers.remove(&instance.address);
                }
                Err(e)
            }
            Err(_) => Err(gone()),
        }
    }
}

impl RequestBackend for ZmqRequests {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &RequestCapabilities {
        &self.node.capabilities
    }

    async fn call(&self, call: Call) -> Result<Box<dyn ReplyTransport>> {
        let node = &self.node;
        let id = call.id;
        let route = call.route;
        let endpoint = call.endpoint.clone();
        // Built once and checked before connecting; each attempt's copy gets
        // the instance it goes to.
        let env = call_envelope(call, InstanceId(0));
        check_limits(&env, &node.limits)?;
        let ((dealer, replies), _instance, in_flight) = node
            .directory
            .connect(&endpoint, route, |instance| node.start(instance, &env))
            .await?;
        Ok(Box::new(ZmqReply {
            id,
            grants: Grants::new(WINDOW),
            replies,
            dealer,
            _in_flight: in_flight,
        }))
    }

    async fn serve(
        &self,
        endpoint: &str,
        instance: InstanceId,
        dispatcher: Dispatcher,
    ) -> Result<Box<dyn ServeTransport>> {
        let record = self.node.record(endpoint, instance);
        self.node.served.serve(dispatcher, record).await
    }
}

// ---------------------------------------------------------------- caller side

#[derive(Clone)]
struct DealerHandle {
    tx: mpsc::Sender<DealerCmd>,
}

enum DealerCmd {
    /// Send a call's request; report on `sent` whether libzmq took it.
    Start {
        id: RequestId,
        parts: Vec<Bytes>,
        replies: mpsc::Sender<Result<Frame>>,
        sent: oneshot::Sender<Result<()>>,
    },
    /// Send a stop or kill; a kill also forgets the call.
    Cancel(RequestId, Cancel),
    /// Grant the server more data frames for a call.
    Credit(RequestId, u32),
}

struct CallState {
    replies: mpsc::Sender<Result<Frame>>,
    liveness: Liveness,
}

/// Owns one DEALER: sends requests and cancellations, routes replies to
/// their calls by request id, and ends calls whose server went silent.
async fn dealer_loop(
    socket: AsyncSocket,
    mut rx: mpsc::Receiver<DealerCmd>,
    limits: Limits,
    idle_timeout: Duration,
    heartbeat: Duration,
    connect_timeout: Duration,
) {
    let mut calls: HashMap<RequestId, CallState> = HashMap::new();
    // A message libzmq could not take yet, with when it was first tried.
    let mut pending: Option<(DealerCmd, Instant)> = None;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // Deliver everything that arrived.
        loop {
            let parts = match socket.try_recv() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "zmq dealer failed");
                    return;
                }
            };
            let env = match wire::decode_parts_with(&parts, &limits) {
                Ok(env) => env,
                Err(e) => {
                    tracing::debug!(error = %e, "malformed reply frame dropped");
                    continue;
                }
            };
            let id = env.id;
            let Some(state) = calls.get_mut(&id) else {
                continue;
            };
            state.liveness.heard(Instant::now().into_std());
            let item = match decode_reply(env) {
                Ok(Reply::Heartbeat) => continue,
                Ok(Reply::Frame(f)) => Ok(f),
                Ok(Reply::Error(e)) => Err(e),
                Err(e) => Err(e),
            };
            let end = !matches!(item, Ok(Frame::Accepted | Frame::Data(_)));
            // Waiting here is the backpressure of a slow reader (and blocks
            // the other calls on this DEALER meanwhile).
            let replies = state.replies.clone();
            let delivered = replies.send(item).await.is_ok();
            if end || !delivered {
                calls.remove(&id);
            }
        }
        // Hand libzmq what is waiting, then what else is queued: under load
        // a batch per trip around the loop rather than one message.
        let mut sent = false;
        for _ in 0..SEND_BATCH {
            let Some((cmd, since)) = pending
                .take()
                .or_else(|| rx.try_recv().ok().map(|cmd| (cmd, Instant::now())))
            else {
                break;
            };
            match try_dealer_send(&socket, cmd, &mut calls, idle_timeout) {
                Ok(None) => sent = true,
                Ok(Some(cmd)) => {
                    if since.elapsed() >= connect_timeout {
                        fail_start(cmd, connect_timeout);
                    } else {
                        pending = Some((cmd, since));
                    }
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "zmq dealer failed");
                    return;
                }
            }
        }
        tokio::select! {
            _ = socket.changed() => {}
            // A send may have taken in what woke `ZMQ_FD` (see the socket
            // module): read again rather than wait for an edge.
            () = std::future::ready(()), if sent => {}
            cmd = rx.recv(), if pending.is_none() => match cmd {
                Some(cmd) => pending = Some((cmd, Instant::now())),
                None if calls.is_empty() => return,
                None => {}
            },
            _ = tokio::time::sleep(RETRY), if pending.is_some() => {}
            _ = tick.tick() => {
                // A server that says nothing about a call for this long is
                // gone (ZeroMQ would not tell): end the call, which the
                // caller sees as Disconnected.
                let now = Instant::now().into_std();
                calls.retain(|_, s| s.liveness.expired(now).is_none() && !s.replies.is_closed());
                if rx.is_closed() && calls.is_empty() {
                    return;
                }
            }
        }
    }
}

/// Try to send `cmd`; gives it back when libzmq cannot take it yet.
fn try_dealer_send(
    socket: &AsyncSocket,
    cmd: DealerCmd,
    calls: &mut HashMap<RequestId, CallState>,
    idle_timeout: Duration,
) -> Result<Option<DealerCmd>> {
    match cmd {
        DealerCmd::Start {
            id,
            parts,
            replies,
            sent,
        } => match socket.try_send(&parts)? {
            Sent::Done => {
                // Every ZeroMQ server speaks plane, so the call's start
                // counts as heard: a server that never answers is timed out.
                let mut liveness = Liveness::new(idle_timeout);
                liveness.heard(Instant::now().into_std());
                calls.insert(id, CallState { replies, liveness });
                let _ = sent.send(Ok(()));
                Ok(None)
            }
            Sent::WouldBlock | Sent::Unreachable => Ok(Some(DealerCmd::Start {
                id,
                parts,
                replies,
                sent,
            })),
        },
        DealerCmd::Credit(id, n) => {
            let env = Envelope::new(wire::EnvelopeKind::Ack, id)
                .with_headers(plane_core::Headers::new().with(names::CREDIT, n.to_string()));
            match socket.try_send(&wire::encode_parts(&env))? {
                Sent::Done | Sent::Unreachable => Ok(None),
                Sent::WouldBlock => Ok(Some(DealerCmd::Credit(id, n))),
            }
        }
        DealerCmd::Cancel(id, how) => {
            if how == Cancel::Kill {
                calls.remove(&id);
            }
            let parts = wire::encode_parts(&peer::cancel_envelope(id, how));
            match socket.try_send(&parts)? {
                Sent::Done | Sent::Unreachable => Ok(None),
                Sent::WouldBlock => Ok(Some(DealerCmd::Cancel(id, how))),
            }
        }
    }
}

fn fail_start(cmd: DealerCmd, waited: Duration) {
    match cmd {
        DealerCmd::Start { sent, .. } => {
            let _ = sent.send(Err(Error::new(
                ErrorKind::Connection,
                format!("no connection to the peer within {waited:?}"),
            )));
        }
        // The server is unreachable; it kills the handler itself once it
        // notices the caller is gone, or the call ends by its deadline.
        DealerCmd::Cancel(..) | DealerCmd::Credit(..) => {}
    }
}

/// The caller's side of one call.
struct ZmqReply {
    id: RequestId,
    grants: Grants,
    replies: mpsc::Receiver<Result<Frame>>,
    dealer: DealerHandle,
    _in_flight: InFlight,
}

impl ReplyTransport for ZmqReply {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        let item = std::task::ready!(self.replies.poll_recv(cx));
        if let Some(Ok(Frame::Data(_))) = &item {
            if let Some(n) = self.grants.data_read() {
                // Credit lost to a full queue is granted with the next batch.
                if self
                    .dealer
                    .tx
                    .try_send(DealerCmd::Credit(self.id, n))
                    .is_err()
                {
                    self.grants.grant_failed(n);
                }
            }
        }
        Poll::Ready(item)
    }

    fn cancel(&mut self, how: Cancel) {
        // Never blocks: with the DEALER's queue full the cancellation is
        // dropped, and the server learns of it when the call's replies go
        // nowhere or its deadline passes.
        if self
            .dealer
            .tx
            .try_send(DealerCmd::Cancel(self.id, how))
            .is_err()
        {
            tracing::debug!(id = %self.id, "cancellation dropped: dealer queue full");
        }
        if how == Cancel::Kill {
            self.replies.close();
        }
    }
}

// ---------------------------------------------------------------- server side

/// A message for the ROUTER task.
enum Outgoing {
    /// A reply envelope for `identity`'s call `id`; `last` ends the call.
    Reply {
        identity: Bytes,
        id: RequestId,
        parts: Vec<Bytes>,
        last: bool,
    },
    /// The handler of `identity`'s call `id` went away without an end.
    Abandoned { identity: Bytes, id: RequestId },
}

fn start_router(
    context: &zmq::Context,
    config: &ZmqConfig,
    endpoints: Endpoints,
    limits: Limits,
) -> Result<RouterHandle> {
    let s = socket(context, zmq::ROUTER, config)?;
    s.set_router_mandatory(true)
        .map_err(|e| zmq_error("cannot set a zmq socket option", e))?;
    s.bind(&config.bind)
        .map_err(|e| zmq_error(&format!("cannot bind {}", config.bind), e))?;
    let address = match s.get_last_endpoint() {
        Ok(Ok(a)) => a,
        _ => config.bind.clone(),
    };
    let address = advertised(&address, config.advertise.as_deref());
    let s = AsyncSocket::new(context, s)?;
    let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
    let task = tokio::spawn(router_loop(s, endpoints, tx, rx, limits, config.heartbeat));
    Ok(RouterHandle { address, task })
}

/// The address to publish: `advertise` if set, else the bound one with an
/// unspecified host replaced by loopback.
pub(crate) fn advertised(bound: &str, advertise: Option<&str>) -> String {
    if let Some(a) = advertise {
        return a.to_owned();
    }
    bound
        .replace("tcp://0.0.0.0:", "tcp://127.0.0.1:")
        .replace("tcp://[::]:", "tcp://[::1]:")
}

struct Served {
    dispatcher: Dispatcher,
    credit: Arc<Credit>,
}

/// Owns the ROUTER: decodes and routes incoming calls and cancellations,
/// sends replies, heartbeats calls in flight, and kills the handlers of
/// callers that disconnected.
async fn router_loop(
    socket: AsyncSocket,
    endpoints: Endpoints,
    tx: mpsc::Sender<Outgoing>,
    mut rx: mpsc::Receiver<Outgoing>,
    limits: Limits,
    heartbeat: Duration,
) {
    let mut calls: HashMap<(Bytes, RequestId), Served> = HashMap::new();
    let mut pending: Option<Outgoing> = None;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            let frames = match socket.try_recv() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "zmq router failed");
                    return;
                }
            };
            if let Some(refusal) = handle_inbound(frames, &endpoints, &tx, &mut calls, &limits) {
                // A refusal to a caller that is gone is nobody's loss.
                let _ = socket.try_send(&refusal);
            }
        }
        // As in the DEALER's loop: what is waiting, then a batch of what is
        // queued.
        let mut sent = false;
        for _ in 0..SEND_BATCH {
            let Some(out) = pending.take().or_else(|| rx.try_recv().ok()) else {
                break;
            };
            match send_outgoing(&socket, out, &mut calls) {
                Ok(None) => sent = true,
                Ok(Some(out)) => {
                    pending = Some(out);
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "zmq router failed");
                    return;
                }
            }
        }
        tokio::select! {
            _ = socket.changed() => {}
            // As in the DEALER's loop.
            () = std::future::ready(()), if sent => {}
            out = rx.recv(), if pending.is_none() => {
                // The loop holds a sender itself, so the channel never closes.
                pending = out;
            }
            _ = tokio::time::sleep(RETRY), if pending.is_some() => {}
            _ = tick.tick() => {
                let mut gone = Vec::new();
                for (identity, id) in calls.keys() {
                    let mut parts = vec![identity.clone()];
                    parts.extend(wire::encode_parts(&peer::heartbeat_envelope(*id)));
                    if let Ok(Sent::Unreachable) = socket.try_send(&parts) {
                        gone.push((identity.clone(), *id));
                    }
                }
                for key in gone {
                    // The caller disconnected: a lost connection is a kill.
                    if let Some(s) = calls.remove(&key) {
                        s.dispatcher.kill(key.1);
                    }
                }
            }
        }
    }
}

/// Handle one message from a caller; returns a refusal to send back.
fn handle_inbound(
    frames: Vec<Bytes>,
    endpoints: &Endpoints,
    tx: &mpsc::Sender<Outgoing>,
    calls: &mut HashMap<(Bytes, RequestId), Served>,
    limits: &Limits,
) -> Option<Vec<Bytes>> {
    let (identity, rest) = frames.split_first()?;
    let refuse = |id: RequestId, e: &Error| {
        let mut parts = vec![identity.clone()];
        parts.extend(wire::encode_parts(&Envelope::error(id, e)));
        Some(parts)
    };
    let env = match wire::decode_parts_with(rest, limits) {
        Ok(env) => env,
        Err(e) => {
            let error = peer::malformed(e);
            tracing::debug!(error = %error, "malformed request frame refused");
            return refuse(RequestId::default(), &error);
        }
    };
    let id = env.id;
    if env.kind == wire::EnvelopeKind::Ack {
        if let Some(s) = calls.get(&(identity.clone(), id)) {
            s.credit.grant_header(env.headers.get(names::CREDIT));
        }
        return None;
    }
    match decode_inbound(env) {
        Ok(Inbound::Call(routed)) => {
            let dispatcher = match endpoints.route(&routed) {
                Ok(d) => d,
                Err(e) => return refuse(id, &e),
            };
            let credit = Arc::new(Credit::new(WINDOW));
            calls.insert(
                (identity.clone(), id),
                Served {
                    dispatcher: dispatcher.clone(),
                    credit: credit.clone(),
                },
            );
            let sink = Arc::new(ZmqSink {
                identity: identity.clone(),
                id,
                credit,
                tx: tx.clone(),
                ended: std::sync::atomic::AtomicBool::new(false),
            });
            dispatcher.dispatch(routed.incoming, sink);
            None
        }
        Ok(Inbound::Cancel(id, how)) => {
            let key = (identity.clone(), id);
            match how {
                Cancel::Stop => {
                    if let Some(s) = calls.get(&key) {
                        s.dispatcher.stop(id);
                    }
                }
                Cancel::Kill => {
                    if let Some(s) = calls.remove(&key) {
                        s.dispatcher.kill(id);
                    }
                }
            }
            None
        }
        Ok(Inbound::Heartbeat(_)) => None,
        Err(e) => refuse(id, &e),
    }
}

/// Send one outgoing message; gives it back when libzmq cannot take it yet.
fn send_outgoing(
    socket: &AsyncSocket,
    out: Outgoing,
    calls: &mut HashMap<(Bytes, RequestId), Served>,
) -> Result<Option<Outgoing>> {
    let (identity, id, parts, last) = match out {
        Outgoing::Reply {
            identity,
            id,
            parts,
            last,
        } => (identity, id, parts, last),
        Outgoing::Abandoned { identity, id } => {
            let e = Error::new(ErrorKind::Disconnected, "the handler went away mid-call");
            let parts = wire::encode_parts(&Envelope::error(id, &e));
            (identity, id, parts, true)
        }
    };
    let mut message = Vec::with_capacity(parts.len() + 1);
    message.push(identity.clone());
    message.extend(parts.iter().cloned());
    match socket.try_send(&message)? {
        Sent::Done => {
            if last {
                calls.remove(&(identity, id));
            }
            Ok(None)
        }
        Sent::WouldBlock => Ok(Some(Outgoing::Reply {
            identity,
            id,
            parts,
            last,
        })),
        Sent::Unreachable => {
            if let Some(s) = calls.remove(&(identity, id)) {
                s.dispatcher.kill(id);
            }
            Ok(None)
        }
    }
}

/// The server's side of one call, owned by the dispatcher.
struct ZmqSink {
    identity: Bytes,
    id: RequestId,
    credit: Arc<Credit>,
    tx: mpsc::Sender<Outgoing>,
    ended: std::sync::atomic::AtomicBool,
}

impl ZmqSink {
    async fn send_env(&self, env: Envelope, last: bool) -> Result<()> {
        if last {
            self.ended.store(true, std::sync::atomic::Ordering::Release);
        }
        self.tx
            .send(Outgoing::Reply {
                identity: self.identity.clone(),
                id: self.id,
                parts: wire::encode_parts(&env),
                last,
            })
            .await
            .map_err(|_| Error::new(ErrorKind::Disconnected, "the server socket is closed"))
    }
}

impl ReplySink for ZmqSink {
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<()>> {
        let last = matches!(frame, Frame::Last(_) | Frame::End);
        let data = matches!(frame, Frame::Data(_));
        Box::pin(async move {
            if data {
                // Wait for the caller's reader; the credit is never closed.
                let _ = self.credit.take().await;
            }
            self.send_env(frame_envelope(self.id, frame), last).await
        })
    }

    fn send_error(&self, error: Error) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.send_env(Envelope::error(self.id, &error), true))
    }
}

impl Drop for ZmqSink {
    fn drop(&mut self) {
        if !self.ended.load(std::sync::atomic::Ordering::Acquire) {
            // Tell the caller now rather than after its idle timeout. If the
            // queue is full the heartbeat silence tells it instead.
            let _ = self.tx.try_send(Outgoing::Abandoned {
                identity: self.identity.clone(),
                id: self.id,
            });
        }
    }
}
