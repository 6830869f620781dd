//! The brokerless request plane, written once: [`PeerRequests`] over any
//! transport that can carry one call's envelopes each way ([`RequestLinks`]).
//!
//! What is the same on every brokerless transport lives here: building the
//! request envelope, checking it against the receiver's limits before any
//! connection is made, picking and connecting an instance through the
//! [`PeerDirectory`], the caller's credit grants and idle limit
//! ([`Grants`], [`Liveness`]), decoding replies, and on the serving side
//! routing a received call, its credit ([`Credit`]), its stop and kill, and
//! telling the caller when a handler went away without its end marker.
//!
//! What a transport keeps is bytes: how it connects to a peer and carries
//! envelopes ([`CallLink`] on the caller's side, [`ReplyWriter`] on the
//! server's), how it accepts connections, and how it notices a peer is gone.
//!
//! ```text
//! Requests (plane-core handle)
//!   └─ PeerRequests<L>        call: envelope, limits, pick + connect, PeerReply
//!        ├─ L: RequestLinks   open(instance, request) -> L::Link
//!        │    └─ CallLink     poll_envelope / control / kill
//!        └─ ServedCall        accept, control; replies through a ReplyWriter
//! ```

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use plane_core::discovery::{Discovery, Instance};
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::message::names;
use plane_core::request::flow::{Credit, Grants, IdleTimer};
use plane_core::request::{
    Call, Cancel, Dispatcher, Frame, Incoming, InstanceId, Reach, ReplySink, ReplyTransport,
    RequestBackend, RequestCapabilities, ServeTransport,
};
use plane_core::wire::{self, Envelope, EnvelopeKind, Limits, RequestId};

use crate::{
    call_envelope, cancel_envelope, check_limits, decode_inbound, decode_reply, frame_envelope,
    Endpoints, InFlight, Inbound, PeerDirectory, Reply, Served, Transport,
};

/// Data frames a server may send on one call ahead of the caller's reader.
/// The caller grants more with `ack` envelopes carrying [`names::CREDIT`] as
/// its reader consumes them; without it sockets and kernel buffers would let
/// a handler run megabytes ahead of a stalled reader.
pub const WINDOW: u32 = 256;

/// The receiver's limits for a transport that takes payloads up to
/// `max_payload` bytes: the payload plus the largest head.
pub fn limits(max_payload: usize) -> Limits {
    Limits::default().with_max_envelope_bytes(
        max_payload
            .saturating_add(wire::MAX_HEADER_BYTES)
            .min(u32::MAX as usize),
    )
}

/// What the shared runtime needs to know of a transport's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSettings {
    /// The largest payload the transport takes.
    pub max_payload: usize,
    /// The longest wait for a connection to a peer (and for a publisher to
    /// confirm a subscription).
    pub connect_timeout: Duration,
    /// How long a call may go without a word from its server, for a
    /// transport whose servers send heartbeats because a lost peer can go
    /// unnoticed; `None` when the transport notices a lost peer itself.
    pub idle_limit: Option<Duration>,
}

/// The address to publish for a listener bound to `bound`: `advertise` if
/// set, else the bound address with an unspecified IP replaced by loopback
/// (the one address sure to reach it; multi-host deployments set
/// `advertise`).
pub fn advertised(bound: std::net::SocketAddr, advertise: Option<&str>) -> String {
    if let Some(a) = advertise {
        return a.to_owned();
    }
    let mut addr = bound;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    addr.to_string()
}

/// What a brokerless transport gives the request plane: a listener whose
/// received calls go to [`ServedCall`], and per-call links to peers.
pub trait RequestLinks: Sized + Send + Sync + 'static {
    /// The transport these links belong to: its name and configuration.
    type Transport: Transport;
    /// The caller's side of one call.
    type Link: CallLink;

    /// Bind the listener as `config` (already validated) says; calls it
    /// receives are routed through `endpoints`.
    ///
    /// # Errors
    /// `InvalidConfig` for TLS material or settings the transport cannot
    /// use, `Connection` when the listener cannot be bound.
    fn bind(config: Config<Self>, endpoints: Endpoints) -> Result<Self>;
    /// What the shared runtime needs to know of the configuration.
    fn settings(&self) -> LinkSettings;
    /// The discovery record of `instance` of `endpoint` served here.
    ///
    /// # Errors
    /// `Connection` when the listener's address is gone.
    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance>;
    /// Open a link to `instance` and send `request` on it. Fails with
    /// `Connection` when the peer cannot be reached (the directory then
    /// tries another instance).
    fn open(
        &self,
        instance: &Instance,
        request: Envelope,
    ) -> impl Future<Output = Result<Self::Link>> + Send;
    /// Close the listener and bind a new one, as a restarted process would
    /// (a test hook: calls in flight are lost).
    ///
    /// # Errors
    /// `Unsupported` unless the transport can.
    fn rebind(&self) -> impl Future<Output = Result<()>> + Send {
        std::future::ready(Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} cannot rebind its listener", Self::Transport::NAME),
        )))
    }
}

/// The configuration of the transport of links `L`.
pub type Config<L> = <<L as RequestLinks>::Transport as Transport>::Config;

/// The caller's side of one call on a transport: the envelopes the server
/// sends for it, and a way back for control.
pub trait CallLink: Send + 'static {
    /// The next envelope for this call; `None` once the link ended (which
    /// the plane reports as `Disconnected` unless an end marker came first).
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>>;
    /// Send a control envelope (a credit grant, a stop) without blocking.
    /// Returns `false` when it could not be queued.
    fn control(&mut self, env: Envelope) -> bool;
    /// Kill the call: tell the server, and stop reading. Never blocks.
    fn kill(&mut self);
    /// The call heard nothing (not even a heartbeat) for the transport's
    /// idle limit; `kill` follows. A transport whose server heartbeats every
    /// call on a shared connection takes that connection for dead here, so
    /// the next call connects afresh instead of waiting out the limit on it
    /// too. Never blocks.
    fn silent(&mut self) {}
}

/// How a transport writes one served call's replies.
pub trait ReplyWriter: Send + Sync + 'static {
    /// Write `env`; `last` when it ends the call.
    fn write(&self, env: Envelope, last: bool) -> BoxFuture<'_, Result<()>>;
    /// The handler went away without an end marker: tell the caller, so it
    /// reports `Disconnected` rather than waiting. Never blocks.
    fn abandon(&mut self);
}

/// The brokerless request plane over the transport `L`. Cheap to clone.
pub struct PeerRequests<L> {
    inner: Arc<Inner<L>>,
}

struct Inner<L> {
    links: L,
    served: Served,
    directory: PeerDirectory,
    limits: Limits,
    capabilities: RequestCapabilities,
}

impl<L> Clone for PeerRequests<L> {
    fn clone(&self) -> Self {
        PeerRequests {
            inner: self.inner.clone(),
        }
    }
}

impl<L: RequestLinks> std::fmt::Debug for PeerRequests<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerRequests")
            .field("backend", &L::Transport::NAME)
            .field("served", &self.inner.served)
            .finish_non_exhaustive()
    }
}

impl<L: RequestLinks> PeerRequests<L> {
    /// Check `config`, bind the transport as it says and find peers
    /// through `discovery`.
    ///
    /// # Errors
    /// `InvalidConfig` for a bad configuration; whatever
    /// [`RequestLinks::bind`] fails with.
    pub fn connect(config: Config<L>, discovery: Discovery) -> Result<Self> {
        L::Transport::validate(&config)?;
        let served = Served::new(discovery.clone());
        let links = L::bind(config, served.endpoints().clone())?;
        let max_payload = links.settings().max_payload;
        Ok(PeerRequests {
            inner: Arc::new(Inner {
                links,
                served,
                directory: PeerDirectory::new(discovery, Default::default()),
                limits: limits(max_payload),
                capabilities: RequestCapabilities::complete(max_payload),
            }),
        })
    }

    /// The transport, for what is its own (addresses, test hooks).
    pub fn links(&self) -> &L {
        &self.inner.links
    }

    /// The routing table of this process's listener (calls and events
    /// subscribers).
    pub fn endpoints(&self) -> &Endpoints {
        self.inner.served.endpoints()
    }

    /// The directory calls pick their peers from.
    pub fn directory(&self) -> &PeerDirectory {
        &self.inner.directory
    }

    /// Restart the serving side as a crashed and restarted process would:
    /// the transport binds a new listener (calls in flight are lost) and
    /// every served instance is registered again at its new address.
    ///
    /// # Errors
    /// `Unsupported` when the transport cannot rebind; `Connection` if the
    /// new listener cannot be bound; discovery errors.
    pub async fn restart(&self) -> Result<()> {
        let inner = &self.inner;
        inner.links.rebind().await?;
        inner
            .served
            .reregister(|endpoint, instance| inner.links.record(endpoint, instance))
            .await
    }
}

impl<L: RequestLinks> RequestBackend for PeerRequests<L> {
    fn name(&self) -> &'static str {
        L::Transport::NAME
    }

    fn capabilities(&self) -> &RequestCapabilities {
        &self.inner.capabilities
    }

    async fn call(&self, call: Call) -> Result<Box<dyn ReplyTransport>> {
        let inner = &self.inner;
        let id = call.id;
        let route = call.route;
        let endpoint = call.endpoint.clone();
        // Refuse an oversized call before connecting, let alone sending.
        // Each attempt's copy is addressed to the instance it goes to.
        let env = call_envelope(call, None);
        check_limits(&env, &inner.limits)?;
        let (link, _instance, in_flight) = inner
            .directory
            .connect(&endpoint, route, |instance| {
                let mut env = env.clone();
                env.headers.insert(names::INSTANCE, instance.id.to_string());
                async move { inner.links.open(&instance, env).await }
            })
            .await?;
        let idle = inner.links.settings().idle_limit.map(|limit| {
            // Every server on such a transport speaks plane, so the call's
            // start counts as heard: a server that never answers is timed
            // out too.
            let mut idle = IdleTimer::new(limit);
            idle.heard();
            idle
        });
        Ok(Box::new(PeerReply {
            id,
            link,
            grants: Grants::new(WINDOW),
            idle,
            _in_flight: in_flight,
        }))
    }

    async fn broadcast(&self, call: &Call) -> Result<Reach> {
        // A fresh listing: an instance registered a moment ago is live too.
        let instances = self.inner.directory.listed(&call.endpoint).await?;
        Ok(Reach::Instances(instances))
    }

    async fn serve(&self, dispatcher: Dispatcher) -> Result<Box<dyn ServeTransport>> {
        let record = self
            .inner
            .links
            .record(dispatcher.endpoint(), dispatcher.instance())?;
        self.inner.served.serve(dispatcher, record).await
    }
}

/// The caller's side of one call, on any brokerless transport.
struct PeerReply<K> {
    id: RequestId,
    link: K,
    grants: Grants,
    idle: Option<IdleTimer>,
    _in_flight: InFlight,
}

impl<K: CallLink> ReplyTransport for PeerReply<K> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        loop {
            let env = match self.link.poll_envelope(cx) {
                Poll::Ready(Some(Ok(env))) => env,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {
                    let Some(idle) = &mut self.idle else {
                        return Poll::Pending;
                    };
                    let e = ready!(idle.poll_expired(cx));
                    self.link.silent();
                    // Given up: a server still there stops working on it.
                    self.link.kill();
                    self.idle = None;
                    return Poll::Ready(Some(Err(e)));
                }
            };
            if let Some(idle) = &mut self.idle {
                idle.heard();
            }
            // A refusal before the call was read carries no id of its own.
            if env.id != self.id && env.kind != EnvelopeKind::Error {
                return Poll::Ready(Some(Err(Error::new(
                    ErrorKind::Decode,
                    "reply envelope for another call",
                ))));
            }
            let frame = match decode_reply(env) {
                Ok(Reply::Frame(f)) => f,
                Ok(Reply::Heartbeat) => continue,
                Ok(Reply::Error(e)) | Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if matches!(frame, Frame::Data(_)) {
                if let Some(n) = self.grants.data_read() {
                    let grant = Envelope::new(EnvelopeKind::Ack, self.id).with_headers(
                        plane_core::Headers::new().with(names::CREDIT, n.to_string()),
                    );
                    // Credit that could not be queued goes with the next grant.
                    if !self.link.control(grant) {
                        self.grants.grant_failed(n);
                    }
                }
            }
            return Poll::Ready(Some(Ok(frame)));
        }
    }

    fn cancel(&mut self, how: Cancel) {
        match how {
            Cancel::Stop => {
                // Never blocks: with the link's queue full the stop is
                // dropped, and the call ends by its deadline instead.
                if !self.link.control(cancel_envelope(self.id, Cancel::Stop)) {
                    tracing::debug!(id = %self.id, "stop dropped: link queue full");
                }
            }
            Cancel::Kill => {
                self.link.kill();
                self.idle = None;
            }
        }
    }
}

/// Whether `env`, sent by a server, ends its call.
pub fn ends_call(env: &Envelope) -> bool {
    match env.kind {
        EnvelopeKind::End | EnvelopeKind::Error => true,
        EnvelopeKind::Data => env.headers.get(names::LAST).is_some(),
        _ => false,
    }
}

/// A call a serving process accepted: the dispatcher running it and the
/// credit its data frames wait for.
#[derive(Clone)]
pub struct ServedCall {
    id: RequestId,
    dispatcher: Dispatcher,
    credit: Arc<Credit>,
}

impl std::fmt::Debug for ServedCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServedCall")
            .field("id", &self.id)
            .field("endpoint", &self.dispatcher.endpoint())
            .field("instance", &self.dispatcher.instance())
            .finish()
    }
}

/// What the caller's control envelope did to a served call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// The call goes on.
    Continue,
    /// The call was killed: forget it.
    Killed,
}

impl ServedCall {
    /// Route the request `env` to the endpoint instance it names. Returns
    /// the served call and the call for the dispatcher; hand both to
    /// [`start`](ServedCall::start) once the transport has its writer.
    ///
    /// # Errors
    /// The typed error to send back with the envelope's id: `NoResponders`
    /// when the endpoint or instance is not served here, `InvalidArgument`
    /// or `Decode` for an envelope that is no valid request.
    pub fn accept(endpoints: &Endpoints, env: Envelope) -> Result<(ServedCall, Incoming)> {
        let id = env.id;
        let (endpoint, instance, incoming) = match decode_inbound(env)? {
            Inbound::Call {
                endpoint,
                instance,
                incoming,
            } => (endpoint, instance, incoming),
            Inbound::Cancel(..) | Inbound::Credit(..) | Inbound::Heartbeat(_) => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    "a call must start with a request",
                ))
            }
        };
        let dispatcher = endpoints.lookup(&endpoint, instance)?;
        Ok((
            ServedCall {
                id,
                dispatcher,
                credit: Arc::new(Credit::new(WINDOW)),
            },
            incoming,
        ))
    }

    /// The call's id.
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Hand the call to its handler, its replies going through `writer`.
    pub fn start(&self, incoming: Incoming, writer: impl ReplyWriter) {
        let sink = PeerSink {
            id: self.id,
            credit: self.credit.clone(),
            writer,
            ended: AtomicBool::new(false),
        };
        self.dispatcher.dispatch(incoming, Arc::new(sink));
    }

    /// Apply an envelope the caller sent after the request: a credit grant,
    /// a stop, a kill, a heartbeat.
    ///
    /// # Errors
    /// `Decode` for anything else (the transport then kills the call).
    pub fn control(&self, env: Envelope) -> Result<Control> {
        match decode_inbound(env)? {
            Inbound::Credit(_, value) => self.credit.grant_header(value.as_deref()),
            Inbound::Cancel(_, Cancel::Stop) => self.dispatcher.stop(self.id),
            Inbound::Cancel(_, Cancel::Kill) => {
                self.kill();
                return Ok(Control::Killed);
            }
            Inbound::Heartbeat(_) => {}
            Inbound::Call { .. } => {
                return Err(Error::new(
                    ErrorKind::Decode,
                    "a second request on a call in flight",
                ))
            }
        }
        Ok(Control::Continue)
    }

    /// Kill the handler: the caller is gone or asked for it. Does nothing
    /// for a call that is already over.
    pub fn kill(&self) {
        self.dispatcher.kill(self.id);
    }
}

/// The server's side of one call, owned by the dispatcher.
struct PeerSink<W: ReplyWriter> {
    id: RequestId,
    credit: Arc<Credit>,
    writer: W,
    ended: AtomicBool,
}

impl<W: ReplyWriter> PeerSink<W> {
    async fn write(&self, env: Envelope, last: bool) -> Result<()> {
        if last {
            self.ended.store(true, Ordering::Release);
        }
        self.writer.write(env, last).await
    }
}

impl<W: ReplyWriter> ReplySink for PeerSink<W> {
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<()>> {
        let last = matches!(frame, Frame::Last(_) | Frame::End);
        let data = matches!(frame, Frame::Data(_));
        Box::pin(async move {
            if data {
                // Wait for the caller's reader; the credit is never closed.
                let _ = self.credit.take().await;
            }
            self.write(frame_envelope(self.id, frame), last).await
        })
    }

    fn send_error(&self, error: Error) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.write(Envelope::error(self.id, &error), true))
    }
}

impl<W: ReplyWriter> Drop for PeerSink<W> {
    fn drop(&mut self) {
        if !*self.ended.get_mut() {
            self.writer.abandon();
        }
    }
}

/// The error a caller sees when a handler went away mid-call.
pub fn abandoned() -> Error {
    Error::new(ErrorKind::Disconnected, "the handler went away mid-call")
}
