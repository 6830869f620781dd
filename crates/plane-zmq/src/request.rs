//! The ZeroMQ request plane: a ROUTER serving every endpoint instance
//! registered through a handle, and one DEALER per peer process for calls.
//! The plane itself is [`plane_peer::PeerRequests`]; this module is its
//! ZeroMQ links ([`ZmqLinks`]): sockets, their tasks, and what ZeroMQ hides.
//!
//! # Messages
//!
//! Each message is one wire envelope in the multipart form
//! (`wire::encode_parts`: the head as the first message part, then one
//! part per body part). The ROUTER prefixes the caller's routing identity, as ZeroMQ
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
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use plane_core::discovery::Instance;
use plane_core::request::{Cancel, InstanceId};
use plane_core::wire::{self, Envelope, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::{
    self as peer, ends_call, CallLink, Control, Endpoints, LinkSettings, PeerRequests, Pool,
    ReplyWriter, RequestLinks, ServedCall,
};
use plane_zmq_sys as zmq;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::curve::{self, Monitored, Role, Zap};
use crate::error::zmq_error;
use crate::socket::{AsyncSocket, Sent};
use crate::ZmqConfig;

/// Envelopes buffered per call on the caller's side.
const CALL_BUFFER: usize = 64;
/// Messages waiting for a socket task.
const SOCKET_QUEUE: usize = 1024;
/// Queued messages a socket's loop sends before it reads its socket again.
const SEND_BATCH: usize = 64;
/// Pause before retrying a send that hit a high-water mark.
const RETRY: Duration = Duration::from_millis(1);

/// The ZeroMQ request plane. Build it with [`ZmqRequests::connect`] (or
/// through the registry with a `zmq+tcp://` URL) and wrap it in
/// [`plane_core::Requests`]; its own methods are on [`ZmqRequests::links`].
pub type ZmqRequests = PeerRequests<ZmqLinks>;

/// What the ZeroMQ request plane is made of: the ROUTER serving this
/// process's endpoint instances and a DEALER per peer process.
pub struct ZmqLinks {
    config: ZmqConfig,
    context: zmq::Context,
    router: Mutex<RouterHandle>,
    endpoints: Endpoints,
    dealers: Pool<String, DealerHandle>,
    limits: Limits,
    /// The allow-list's ZAP handler, if CURVE has one.
    _zap: Option<Zap>,
}

impl std::fmt::Debug for ZmqLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZmqLinks")
            .field("address", &self.address())
            .finish_non_exhaustive()
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
    // libzmq refuses (and disconnects) a peer sending a larger message part,
    // so a hostile peer cannot make it allocate without bound.
    set(s.set_maxmsgsize(
        i64::try_from(config.max_payload + wire::MAX_HEADER_BYTES).unwrap_or(i64::MAX),
    ))?;
    // The binding sockets are CURVE servers, the connecting ones clients.
    let role = match kind {
        zmq::ROUTER | zmq::XPUB | zmq::PUB => Role::Serve,
        _ => Role::Connect,
    };
    curve::apply(&s, config.curve.as_ref(), role)?;
    Ok(s)
}

impl RequestLinks for ZmqLinks {
    type Transport = crate::Zmq;
    type Link = ZmqLink;

    fn bind(config: ZmqConfig, endpoints: Endpoints) -> Result<Self> {
        let context = zmq::Context::new();
        let limits = peer::limits(config.max_payload);
        // Before the ROUTER binds, so no handshake goes unchecked.
        let zap = curve::start_zap(&context, config.curve.as_ref())?;
        let router = start_router(&context, &config, endpoints.clone(), limits)?;
        Ok(ZmqLinks {
            _zap: zap,
            context,
            router: Mutex::new(router),
            endpoints,
            dealers: Pool::default(),
            limits,
            config,
        })
    }

    fn settings(&self) -> LinkSettings {
        let c = &self.config;
        LinkSettings {
            max_payload: c.max_payload,
            connect_timeout: c.connect_timeout,
            // ZeroMQ hides disconnects: the server's heartbeats are the only
            // sign it is still there.
            idle_limit: Some(c.idle_timeout),
        }
    }

    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        Ok(Instance::new(endpoint, instance, self.address()))
    }

    async fn open(&self, instance: &Instance, request: Envelope) -> Result<ZmqLink> {
        let dealer = self.dealer(&instance.address).await?;
        let id = request.id;
        let (reply_tx, reply_rx) = mpsc::channel(CALL_BUFFER);
        let (sent_tx, sent_rx) = oneshot::channel();
        let start = DealerCmd::Start {
            id,
            parts: wire::encode_parts(&request),
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
            Ok(Ok(())) => Ok(ZmqLink {
                id,
                replies: reply_rx,
                dealer,
            }),
            Ok(Err(e)) => {
                // The peer did not take the message in time: forget this
                // DEALER so the next call connects afresh.
                self.dealers
                    .forget(&instance.address, |d| d.tx.same_channel(&dealer.tx));
                Err(e)
            }
            Err(_) => Err(gone()),
        }
    }

    async fn rebind(&self) -> Result<()> {
        let fresh = start_router(
            &self.context,
            &self.config,
            self.endpoints.clone(),
            self.limits,
        )?;
        // Dropping the old handle aborts its task, which closes its socket.
        drop(std::mem::replace(&mut *self.lock_router(), fresh));
        self.dealers.clear();
        Ok(())
    }
}

impl ZmqLinks {
    /// The address the ROUTER is bound to (`tcp://127.0.0.1:PORT`).
    pub fn address(&self) -> String {
        self.lock_router().address.clone()
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
        let s = socket(&self.context, zmq::DEALER, &self.config)?;
        s.connect(&self.address())
            .map_err(|e| zmq_error("cannot connect", e))?;
        let s = AsyncSocket::new(&self.context, s)?;
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

    fn lock_router(&self) -> std::sync::MutexGuard<'_, RouterHandle> {
        self.router.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The DEALER for `address`, created on first use and again once its
    /// task ended.
    async fn dealer(&self, address: &str) -> Result<DealerHandle> {
        let key = address.to_owned();
        let alive = |d: &DealerHandle| !d.tx.is_closed();
        self.dealers
            .get(&key, false, alive, || async { self.new_dealer(address) })
            .await
    }

    fn new_dealer(&self, address: &str) -> Result<DealerHandle> {
        let s = socket(&self.context, zmq::DEALER, &self.config)?;
        // Queue only to completed connections, so a peer that is gone is
        // noticed (the send would block) instead of filling a queue.
        s.set_immediate(true)
            .map_err(|e| zmq_error("cannot set a zmq socket option", e))?;
        // Watched before connecting, so a failed handshake (keys that do
        // not fit) ends a call as `Unauthorized`, not as a timeout.
        let s = Monitored::new(&self.context, s)?;
        s.with(|s| s.connect(address))
            .map_err(|e| zmq_error(&format!("cannot connect to {address}"), e))?;
        let (tx, rx) = mpsc::channel(SOCKET_QUEUE);
        tokio::spawn(dealer_loop(
            s,
            rx,
            self.limits,
            self.config.heartbeat,
            self.config.connect_timeout,
        ));
        Ok(DealerHandle { tx })
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
        replies: mpsc::Sender<Envelope>,
        sent: oneshot::Sender<Result<()>>,
    },
    /// Send a control envelope of call `id` (a credit grant, a stop, a
    /// kill); `forget` drops the call's replies from now on.
    Control {
        id: RequestId,
        parts: Vec<Bytes>,
        forget: bool,
    },
}

/// Owns one DEALER: sends requests and control envelopes, and routes
/// replies to their calls by request id.
async fn dealer_loop(
    socket: Monitored,
    mut rx: mpsc::Receiver<DealerCmd>,
    limits: Limits,
    sweep: Duration,
    connect_timeout: Duration,
) {
    let mut calls: HashMap<RequestId, mpsc::Sender<Envelope>> = HashMap::new();
    // A message libzmq could not take yet, with when it was first tried.
    let mut pending: Option<(DealerCmd, Instant)> = None;
    let mut tick = tokio::time::interval(sweep);
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
                    tracing::debug!(error = %e, "malformed reply envelope dropped");
                    continue;
                }
            };
            let id = env.id;
            let Some(replies) = calls.get(&id) else {
                continue;
            };
            let end = ends_call(&env);
            // Waiting here is the backpressure of a slow reader (and blocks
            // the other calls on this DEALER meanwhile).
            let replies = replies.clone();
            let delivered = replies.send(env).await.is_ok();
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
            match try_dealer_send(&socket, cmd, &mut calls) {
                Ok(None) => sent = true,
                Ok(Some(cmd)) => {
                    if since.elapsed() >= connect_timeout {
                        fail_start(cmd, connect_timeout, socket.failure());
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
                // Keep the monitor's queue short (see `Monitored`).
                socket.drain();
                // Forget calls whose caller went away without a kill.
                calls.retain(|_, replies| !replies.is_closed());
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
    calls: &mut HashMap<RequestId, mpsc::Sender<Envelope>>,
) -> Result<Option<DealerCmd>> {
    match cmd {
        DealerCmd::Start {
            id,
            parts,
            replies,
            sent,
        } => match socket.try_send(&parts)? {
            Sent::Done => {
                calls.insert(id, replies);
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
        DealerCmd::Control { id, parts, forget } => {
            if forget {
                calls.remove(&id);
            }
            match socket.try_send(&parts)? {
                Sent::Done | Sent::Unreachable => Ok(None),
                Sent::WouldBlock => Ok(Some(DealerCmd::Control { id, parts, forget })),
            }
        }
    }
}

/// End a call whose request found no connection in time: `Unauthorized` if
/// the handshake failed (`handshake`), else `Connection`.
fn fail_start(cmd: DealerCmd, waited: Duration, handshake: Option<Error>) {
    match cmd {
        DealerCmd::Start { sent, .. } => {
            let _ = sent.send(Err(handshake.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Connection,
                    format!("no connection to the peer within {waited:?}"),
                )
            })));
        }
        // The server is unreachable; it kills the handler itself once it
        // notices the caller is gone, or the call ends by its deadline.
        DealerCmd::Control { .. } => {}
    }
}

/// The caller's side of one call: its replies, routed here by the DEALER's
/// task, and that task's queue for control.
pub struct ZmqLink {
    id: RequestId,
    replies: mpsc::Receiver<Envelope>,
    dealer: DealerHandle,
}

impl ZmqLink {
    fn queue(&self, env: &Envelope, forget: bool) -> bool {
        self.dealer
            .tx
            .try_send(DealerCmd::Control {
                id: self.id,
                parts: wire::encode_parts(env),
                forget,
            })
            .is_ok()
    }
}

impl CallLink for ZmqLink {
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>> {
        self.replies.poll_recv(cx).map(|env| env.map(Ok))
    }

    fn control(&mut self, env: Envelope) -> bool {
        self.queue(&env, false)
    }

    fn kill(&mut self) {
        // With the DEALER's queue full the kill is dropped, and the server
        // learns of it when the call's replies go nowhere or its deadline
        // passes.
        if !self.queue(&peer::cancel_envelope(self.id, Cancel::Kill), true) {
            tracing::debug!(id = %self.id, "kill dropped: dealer queue full");
        }
        self.replies.close();
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
        Ok(a) => a,
        Err(_) => config.bind.clone(),
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

/// Calls in flight, by caller identity and request id.
type ServedCalls = HashMap<(Bytes, RequestId), ServedCall>;

/// Owns the ROUTER: decodes and routes incoming calls and control
/// envelopes, sends replies, heartbeats calls in flight, and kills the
/// handlers of callers that disconnected.
async fn router_loop(
    socket: AsyncSocket,
    endpoints: Endpoints,
    tx: mpsc::Sender<Outgoing>,
    mut rx: mpsc::Receiver<Outgoing>,
    limits: Limits,
    heartbeat: Duration,
) {
    let mut calls = ServedCalls::new();
    let mut pending: Option<Outgoing> = None;
    let mut tick = tokio::time::interval(heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        loop {
            let parts = match socket.try_recv() {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "zmq router failed");
                    return;
                }
            };
            if let Some(refusal) = handle_inbound(parts, &endpoints, &tx, &mut calls, &limits) {
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
                    if let Some(call) = calls.remove(&key) {
                        call.kill();
                    }
                }
            }
        }
    }
}

/// Handle one message from a caller; returns a refusal to send back.
fn handle_inbound(
    parts: Vec<Bytes>,
    endpoints: &Endpoints,
    tx: &mpsc::Sender<Outgoing>,
    calls: &mut ServedCalls,
    limits: &Limits,
) -> Option<Vec<Bytes>> {
    let (identity, rest) = parts.split_first()?;
    let refuse = |id: RequestId, e: &Error| {
        let mut parts = vec![identity.clone()];
        parts.extend(wire::encode_parts(&Envelope::error(id, e)));
        Some(parts)
    };
    let env = match wire::decode_parts_with(rest, limits) {
        Ok(env) => env,
        Err(e) => {
            let error = peer::malformed(e);
            tracing::debug!(error = %error, "malformed request envelope refused");
            return refuse(RequestId::default(), &error);
        }
    };
    let id = env.id;
    let key = (identity.clone(), id);
    if let Some(call) = calls.get(&key) {
        return match call.control(env) {
            Ok(Control::Continue) => None,
            Ok(Control::Killed) => {
                calls.remove(&key);
                None
            }
            Err(e) => {
                if let Some(call) = calls.remove(&key) {
                    call.kill();
                }
                refuse(id, &e)
            }
        };
    }
    if env.kind != wire::EnvelopeKind::Request {
        // Control for a call that is over: nothing to do.
        return None;
    }
    match ServedCall::accept(endpoints, env) {
        Ok((call, incoming)) => {
            call.start(
                incoming,
                ZmqWriter {
                    identity: identity.clone(),
                    id,
                    tx: tx.clone(),
                },
            );
            calls.insert(key, call);
            None
        }
        Err(e) => refuse(id, &e),
    }
}

/// Send one outgoing message; gives it back when libzmq cannot take it yet.
fn send_outgoing(
    socket: &AsyncSocket,
    out: Outgoing,
    calls: &mut ServedCalls,
) -> Result<Option<Outgoing>> {
    let (identity, id, parts, last) = match out {
        Outgoing::Reply {
            identity,
            id,
            parts,
            last,
        } => (identity, id, parts, last),
        Outgoing::Abandoned { identity, id } => {
            let parts = wire::encode_parts(&Envelope::error(id, &peer::abandoned()));
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
            if let Some(call) = calls.remove(&(identity, id)) {
                call.kill();
            }
            Ok(None)
        }
    }
}

/// How a served call's replies reach the ROUTER's task.
struct ZmqWriter {
    identity: Bytes,
    id: RequestId,
    tx: mpsc::Sender<Outgoing>,
}

impl ReplyWriter for ZmqWriter {
    fn write(&self, env: Envelope, last: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.tx
                .send(Outgoing::Reply {
                    identity: self.identity.clone(),
                    id: self.id,
                    parts: wire::encode_parts(&env),
                    last,
                })
                .await
                .map_err(|_| Error::new(ErrorKind::Disconnected, "the server socket is closed"))
        })
    }

    fn abandon(&mut self) {
        // Tell the caller now rather than after its idle limit. If the queue
        // is full the heartbeat silence tells it instead.
        let _ = self.tx.try_send(Outgoing::Abandoned {
            identity: self.identity.clone(),
            id: self.id,
        });
    }
}
