//! The shared layer of the brokerless backends (`plane-quic`, `plane-tcp`,
//! `plane-http`, `plane-zmq`).
//!
//! Without a broker the caller talks straight to a serving process, so what
//! every brokerless transport needs is written once, here:
//!
//! - **The request plane** ([`PeerRequests`]): the whole call, caller's and
//!   server's sides, over a transport's [`RequestLinks`]; the transport only
//!   carries envelopes, in `src/calls.rs`.
//! - **The envelope mapping** of the request plane: how a [`Call`], a reply
//!   [`Frame`], a stop or kill, and a heartbeat travel as wire
//!   [`Envelope`]s, and how a serving process decodes what it receives
//!   ([`decode_inbound`]) and routes it to the [`Dispatcher`] of the right
//!   endpoint instance ([`Endpoints`]).
//! - **The events plane** ([`events::PeerEvents`]) over the same links:
//!   the publisher's subscriber table, how an event travels as an envelope,
//!   and the bounded, visibly dropping buffer of a subscription.
//! - **The served instances** ([`Served`]): the routing table of a serving
//!   process and the discovery registration of each instance it serves,
//!   withdrawn when the instance closes and renewed after a restart.
//! - **The connections to peers** ([`Pool`]): one per peer process, made
//!   once, replaced when dead, never cached when the connect failed.
//! - **The peer directory** ([`PeerDirectory`]): servers register an
//!   [`Instance`] in [discovery](plane_core::discovery); callers list and watch an
//!   endpoint's instances, pick one with a [`Balancer`] according to the
//!   call's [`Route`], retry a failed connect on another instance (bounded),
//!   and stop routing to instances that left.
//! - **TLS** ([`tls`], feature `tls`): identities, certificate pinning
//!   through discovery, CA mode and mutual TLS, for the transports that run
//!   rustls.
//! - **Sockets** ([`net`], feature `net`): the listener, the caller's
//!   connection and the URL keys of the transports over TCP sockets (tcp,
//!   http).
//!
//! # Envelope mapping (request plane)
//!
//! | what | kind | headers | body |
//! |---|---|---|---|
//! | call | `request` | the call's headers, plus [`names::ENDPOINT`], [`names::INSTANCE`] and, for streamed calls, [`names::STREAM`] = `1` | the request body |
//! | [`Frame::Accepted`] | `ack` | — | empty |
//! | [`Frame::Data`] | `data` | the reply's headers | the reply body |
//! | [`Frame::Last`] | `data` | the reply's headers plus [`names::LAST`] = `1` | the reply body |
//! | [`Frame::End`] | `end` | — | empty |
//! | typed error | `error` | see [`Envelope::error`] | the message |
//! | [`Cancel::Stop`] / [`Cancel::Kill`] | `stop` / `kill` | — | empty |
//! | liveness | `heartbeat` | — | empty |
//!
//! Every envelope carries the call's request id. Header names starting with
//! `plane-` are reserved for plane's own use; the mapping removes the ones it
//! adds before the handler or the caller sees the message.

mod calls;
mod connector;
pub mod events;
#[cfg(feature = "net")]
pub mod net;
mod pool;
mod served;
#[cfg(feature = "tls")]
pub mod tls;

pub use calls::{
    abandoned, advertised, ends_call, limits, CallLink, Config, Control, LinkSettings,
    PeerRequests, ReplyWriter, RequestLinks, ServedCall, WINDOW,
};
pub use connector::{discovery_of, PeerConnector, PeerPlanes, Transport};
pub use pool::Pool;

pub use served::Served;

use futures_util::StreamExt;
use plane_core::message::names;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};

use plane_core::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, Instance};
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::message::Message;
use plane_core::registry::{QueryParams, Registry};
use plane_core::request::{Balancer, Call, Cancel, Dispatcher, Frame, Incoming, InstanceId, Route};
use plane_core::wire::{Envelope, EnvelopeKind, Limits, RequestId, WireError};

/// The request envelope of `call`, addressed to `instance` when given.
///
/// Moves the call's headers and body into the envelope; the body's bytes are
/// shared, not copied.
pub fn call_envelope(call: Call, instance: Option<InstanceId>) -> Envelope {
    let Message { mut headers, body } = call.message;
    headers.insert(names::ENDPOINT, call.endpoint);
    if let Some(instance) = instance {
        headers.insert(names::INSTANCE, instance.to_string());
    }
    if call.stream {
        headers.insert(names::STREAM, "1");
    }
    Envelope::new(EnvelopeKind::Request, call.id)
        .with_headers(headers)
        .with_body(body)
}

/// The envelope of one reply frame of call `id`.
pub fn frame_envelope(id: RequestId, frame: Frame) -> Envelope {
    match frame {
        Frame::Accepted => Envelope::new(EnvelopeKind::Ack, id),
        Frame::Data(m) => Envelope::new(EnvelopeKind::Data, id)
            .with_headers(m.headers)
            .with_body(m.body),
        Frame::Last(m) => {
            let mut headers = m.headers;
            headers.insert(names::LAST, "1");
            Envelope::new(EnvelopeKind::Data, id)
                .with_headers(headers)
                .with_body(m.body)
        }
        Frame::End => Envelope::new(EnvelopeKind::End, id),
    }
}

/// The envelope asking the handler of call `id` to stop or die.
pub fn cancel_envelope(id: RequestId, how: Cancel) -> Envelope {
    let kind = match how {
        Cancel::Stop => EnvelopeKind::Stop,
        Cancel::Kill => EnvelopeKind::Kill,
    };
    Envelope::new(kind, id)
}

/// A heartbeat for call `id` (or for the connection, with any id).
pub fn heartbeat_envelope(id: RequestId) -> Envelope {
    Envelope::new(EnvelopeKind::Heartbeat, id)
}

/// What a caller makes of one envelope received for its call.
#[derive(Debug)]
pub enum Reply {
    /// A reply frame for the plane.
    Frame(Frame),
    /// A typed error, which ends the call.
    Error(Error),
    /// Liveness only: the server still works on the call.
    Heartbeat,
}

/// Decode one envelope received by a caller.
///
/// # Errors
/// `Decode` for a kind a server never sends to a caller.
pub fn decode_reply(env: Envelope) -> Result<Reply> {
    Ok(match env.kind {
        EnvelopeKind::Ack => Reply::Frame(Frame::Accepted),
        EnvelopeKind::Data => {
            let mut headers = env.headers;
            let last = headers.remove(names::LAST).is_some();
            let m = Message {
                headers,
                body: env.body,
            };
            Reply::Frame(if last { Frame::Last(m) } else { Frame::Data(m) })
        }
        EnvelopeKind::End => Reply::Frame(Frame::End),
        EnvelopeKind::Error => Reply::Error(env.to_error()),
        EnvelopeKind::Heartbeat => Reply::Heartbeat,
        other => {
            return Err(Error::new(
                ErrorKind::Decode,
                format!("unexpected `{other}` frame in a reply stream"),
            ))
        }
    })
}

/// What a serving process makes of one envelope it received.
#[derive(Debug)]
pub enum Inbound {
    /// A new call, with the routing its caller asked for.
    Call {
        /// The endpoint called.
        endpoint: String,
        /// The instance the caller picked, if it named one.
        instance: Option<InstanceId>,
        /// The call, ready for [`Dispatcher::dispatch`].
        incoming: Incoming,
    },
    /// Stop or kill the call with this id.
    Cancel(RequestId, Cancel),
    /// The caller's reader consumed data: more credit (the header's value).
    Credit(RequestId, Option<String>),
    /// Liveness from the caller.
    Heartbeat(RequestId),
}

/// Decode one envelope received by a serving process.
///
/// # Errors
/// `InvalidArgument` for a request without a valid endpoint or instance
/// header, `Decode` for a kind a caller never sends. The error should be sent
/// back in-band ([`Envelope::error`]) with the envelope's id.
pub fn decode_inbound(env: Envelope) -> Result<Inbound> {
    match env.kind {
        EnvelopeKind::Request => {
            let mut headers = env.headers;
            let endpoint = headers.remove(names::ENDPOINT).ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("request without the `{}` header", names::ENDPOINT),
                )
            })?;
            let instance = headers
                .remove(names::INSTANCE)
                .map(|s| s.parse::<InstanceId>())
                .transpose()?;
            let stream = headers.remove(names::STREAM).is_some_and(|v| v == "1");
            Ok(Inbound::Call {
                endpoint,
                instance,
                incoming: Incoming {
                    id: env.id,
                    message: Message {
                        headers,
                        body: env.body,
                    },
                    stream,
                },
            })
        }
        EnvelopeKind::Stop => Ok(Inbound::Cancel(env.id, Cancel::Stop)),
        EnvelopeKind::Kill => Ok(Inbound::Cancel(env.id, Cancel::Kill)),
        EnvelopeKind::Heartbeat => Ok(Inbound::Heartbeat(env.id)),
        EnvelopeKind::Ack => {
            let mut headers = env.headers;
            Ok(Inbound::Credit(env.id, headers.remove(names::CREDIT)))
        }
        other => Err(Error::new(
            ErrorKind::Decode,
            format!("unexpected `{other}` frame from a caller"),
        )),
    }
}

/// The address a brokerless backend's URL binds: its host, which must be an
/// IP address (a listener binds an interface, not a name), and its port, 0
/// (any free port) when absent. `backend` names the backend in the message.
///
/// # Errors
/// `InvalidConfig` for a missing host or one that is no IP address.
pub fn bind_address(url: &url::Url, backend: &str) -> Result<std::net::SocketAddr> {
    let host = url.host_str().filter(|h| !h.is_empty()).ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{backend} url needs a host to bind"),
        )
    })?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().map_err(|_| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{backend} url binds an IP address, not `{host}`"),
        )
    })?;
    Ok(std::net::SocketAddr::new(ip, url.port().unwrap_or(0)))
}

/// The discovery part of a brokerless backend's URL: the required
/// `discovery` key (the kv URL of the discovery plane, percent-encoded) and
/// the optional `bucket` and `lease_ms`. Returns the kv URL and the
/// discovery configuration.
///
/// # Errors
/// `InvalidConfig` when `discovery` is missing or `lease_ms` is invalid;
/// `backend` names the backend in the message.
pub fn discovery_query(q: &mut QueryParams, backend: &str) -> Result<(String, DiscoveryConfig)> {
    let url = q.take_str("discovery").ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{backend} url needs `discovery=<percent-encoded kv url>`"),
        )
    })?;
    let mut config = DiscoveryConfig::default();
    if let Some(b) = q.take_str("bucket") {
        config = config.bucket(b);
    }
    if let Some(l) = q.take_millis("lease_ms")? {
        config = config.lease(l);
    }
    Ok((url, config))
}

/// How a brokerless transport whose servers heartbeat their calls times
/// them: the URL keys `heartbeat_ms`, `idle_timeout_ms` and
/// `connect_timeout_ms`, read and checked in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Interval of the server's per-call heartbeats.
    pub heartbeat: std::time::Duration,
    /// Silence after which a call is `Disconnected`.
    pub idle_timeout: std::time::Duration,
    /// Longest wait for a connection to a peer.
    pub connect_timeout: std::time::Duration,
}

impl Timings {
    /// Take the three keys from `q` where given, keeping `self`'s values
    /// otherwise.
    ///
    /// # Errors
    /// `InvalidConfig` for a value that is no number of milliseconds.
    pub fn read(mut self, q: &mut QueryParams) -> Result<Self> {
        q.set_millis("heartbeat_ms", &mut self.heartbeat)?;
        q.set_millis("idle_timeout_ms", &mut self.idle_timeout)?;
        q.set_millis("connect_timeout_ms", &mut self.connect_timeout)?;
        Ok(self)
    }

    /// Check them.
    ///
    /// # Errors
    /// `InvalidConfig` unless the heartbeat and connect timeout are positive
    /// and the idle timeout is longer than the heartbeat (or every call
    /// would end for silence).
    pub fn check(&self) -> Result<()> {
        if self.heartbeat.is_zero() || self.connect_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "heartbeat_ms and connect_timeout_ms must be positive",
            ));
        }
        if self.idle_timeout <= self.heartbeat {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "idle_timeout_ms must be longer than heartbeat_ms, or every call would end for silence",
            ));
        }
        Ok(())
    }
}

/// Open the discovery plane kept on the kv plane at `url`.
///
/// # Errors
/// Whatever building the kv plane or opening the bucket fails with.
pub async fn open_discovery(
    registry: &Registry,
    url: &str,
    config: &DiscoveryConfig,
) -> Result<Discovery> {
    let kv = registry.kv(url).await?;
    Discovery::open(&kv, config.clone()).await
}

/// Check `env` against the receiver's `limits` before sending it.
///
/// # Errors
/// `PayloadTooLarge` when the receiver would refuse the envelope.
pub fn check_limits(env: &Envelope, limits: &Limits) -> Result<()> {
    limits.check(env).map_err(|e| {
        Error::new(
            ErrorKind::PayloadTooLarge,
            format!("frame refused before sending: {e}"),
        )
        .with_source(e)
    })
}

/// The typed error a serving process answers an undecodable frame with.
pub fn malformed(e: WireError) -> Error {
    Error::new(ErrorKind::Decode, format!("malformed frame refused: {e}")).with_source(e)
}

/// The error for a call whose endpoint (or instance) this process does not serve.
pub fn not_served(endpoint: &str, instance: Option<InstanceId>) -> Error {
    match instance {
        Some(i) => Error::new(
            ErrorKind::NoResponders,
            format!("instance {i} of endpoint `{endpoint}` is not served here"),
        ),
        None => Error::new(
            ErrorKind::NoResponders,
            format!("endpoint `{endpoint}` is not served here"),
        ),
    }
}

/// The routing table of a serving process: every endpoint instance served
/// through one transport listener. Cheap to clone.
#[derive(Clone, Default)]
pub struct Endpoints {
    inner: Arc<RwLock<Table>>,
    /// The events subscribers connected to the same listener.
    subscribers: events::Subscribers,
}

/// Endpoint name → the instances served under it.
type Table = HashMap<String, Vec<(InstanceId, Dispatcher)>>;

impl std::fmt::Debug for Endpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        f.debug_map()
            .entries(
                map.iter()
                    .map(|(e, v)| (e, v.iter().map(|(i, _)| *i).collect::<Vec<_>>())),
            )
            .finish()
    }
}

impl Endpoints {
    /// An empty table.
    pub fn new() -> Self {
        Endpoints::default()
    }

    /// The events subscribers served by the same listener: a link that
    /// opens with a subscription request goes to
    /// [`Subscribers::serve`](events::Subscribers::serve).
    pub fn subscribers(&self) -> &events::Subscribers {
        &self.subscribers
    }

    /// Route calls for `dispatcher`'s endpoint and instance to it.
    pub fn insert(&self, dispatcher: Dispatcher) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(dispatcher.endpoint().to_owned()).or_default();
        list.retain(|(i, _)| *i != dispatcher.instance());
        list.push((dispatcher.instance(), dispatcher));
    }

    /// Stop routing to `instance` of `endpoint`. Idempotent.
    pub fn remove(&self, endpoint: &str, instance: InstanceId) {
        let mut map = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(endpoint) {
            list.retain(|(i, _)| *i != instance);
            if list.is_empty() {
                map.remove(endpoint);
            }
        }
    }

    /// The dispatcher for a call: the named instance, or (when the caller
    /// named none) the least loaded instance of the endpoint.
    ///
    /// # Errors
    /// `NoResponders` when the endpoint or instance is not served here.
    pub fn lookup(&self, endpoint: &str, instance: Option<InstanceId>) -> Result<Dispatcher> {
        let map = self.inner.read().unwrap_or_else(|p| p.into_inner());
        let list = map.get(endpoint);
        let found = match (list, instance) {
            (Some(list), Some(id)) => list.iter().find(|(i, _)| *i == id).map(|(_, d)| d),
            (Some(list), None) => list.iter().map(|(_, d)| d).min_by_key(|d| d.in_flight()),
            (None, _) => None,
        };
        found.cloned().ok_or_else(|| not_served(endpoint, instance))
    }

    /// Whether nothing is served.
    pub fn is_empty(&self) -> bool {
        self.inner
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Tuning of a [`PeerDirectory`].
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectoryConfig {
    /// Connection attempts per call, each on a different instance where the
    /// route allows it. Default 3.
    pub connect_attempts: usize,
}

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig {
            connect_attempts: 3,
        }
    }
}

/// Counts one call in flight on an instance (for power-of-two choices) until
/// dropped. Keep it with the call's reply transport.
#[derive(Debug)]
pub struct InFlight {
    counter: Arc<AtomicUsize>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug, Clone)]
struct Peer {
    instance: Arc<Instance>,
    in_flight: Arc<AtomicUsize>,
}

/// What the caller knows about one endpoint: its instances, kept current by a
/// discovery watch.
///
/// Calls read an `Arc` snapshot of the list (one reference count, no
/// copy); only a discovery change builds a new list.
#[derive(Debug, Default)]
struct View {
    peers: RwLock<Arc<[Peer]>>,
    balancer: Balancer,
}

impl View {
    fn snapshot(&self) -> Arc<[Peer]> {
        self.peers.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn apply(&self, event: DiscoveryEvent) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let mut next = peers.to_vec();
        match event {
            DiscoveryEvent::Added(instance) => {
                let instance = Arc::new(instance);
                match next.iter_mut().find(|p| p.instance.id == instance.id) {
                    // A changed record (a restarted peer on a new address)
                    // replaces the old one; its load counter carries over.
                    Some(p) => p.instance = instance,
                    None => next.push(Peer {
                        instance,
                        in_flight: Arc::default(),
                    }),
                }
            }
            DiscoveryEvent::Removed(id) => next.retain(|p| p.instance.id != id),
        }
        *peers = next.into();
    }

    /// Replace the instances with a fresh listing, keeping load counters.
    fn replace(&self, listed: Vec<Instance>) {
        let mut peers = self.peers.write().unwrap_or_else(|p| p.into_inner());
        let next: Vec<Peer> = listed
            .into_iter()
            .map(|instance| {
                let in_flight = peers
                    .iter()
                    .find(|p| p.instance.id == instance.id)
                    .map(|p| p.in_flight.clone())
                    .unwrap_or_default();
                Peer {
                    instance: Arc::new(instance),
                    in_flight,
                }
            })
            .collect();
        *peers = next.into();
    }
}

struct Watched {
    view: Arc<View>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watched {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The caller's side of discovery-driven routing: which instances serve an
/// endpoint, and which one a call goes to. Cheap to clone.
///
/// # Behavior
/// - The first call to an endpoint lists its instances from discovery and
///   starts a watch (whose periodic resync is discovery's); later calls use
///   the watched set. An instance that is removed from discovery (it
///   deregistered, or its lease expired) is no longer picked.
/// - When the watched set is empty, or a directly addressed instance is not
///   in it, the endpoint is listed once more before the call fails with
///   `NoResponders` — fast, without waiting for any timeout.
/// - A failed connect ([`ErrorKind::Connection`]) is retried on another
///   instance, up to [`DirectoryConfig::connect_attempts`]; a directly
///   addressed call retries the same instance after re-listing it (it may
///   have restarted on a new address).
#[derive(Clone)]
pub struct PeerDirectory {
    inner: Arc<DirectoryInner>,
}

struct DirectoryInner {
    discovery: Discovery,
    config: DirectoryConfig,
    views: Mutex<HashMap<String, Watched>>,
}

impl std::fmt::Debug for PeerDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDirectory")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl PeerDirectory {
    /// A directory over `discovery`.
    pub fn new(discovery: Discovery, config: DirectoryConfig) -> Self {
        PeerDirectory {
            inner: Arc::new(DirectoryInner {
                discovery,
                config,
                views: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The discovery this directory reads (servers register through it).
    pub fn discovery(&self) -> &Discovery {
        &self.inner.discovery
    }

    /// The instances of `endpoint` currently known.
    ///
    /// # Errors
    /// Whatever listing the endpoint in discovery fails with.
    pub async fn instances(&self, endpoint: &str) -> Result<Vec<Instance>> {
        let view = self.view(endpoint).await?;
        Ok(view
            .snapshot()
            .iter()
            .map(|p| Instance::clone(&p.instance))
            .collect())
    }

    /// The instances of `endpoint` as discovery lists them now, which also
    /// refreshes the view calls pick from: what a broadcast reaches.
    ///
    /// # Errors
    /// Whatever listing the endpoint in discovery fails with.
    pub async fn listed(&self, endpoint: &str) -> Result<Vec<InstanceId>> {
        let view = self.view(endpoint).await?;
        view.replace(self.inner.discovery.list(endpoint).await?);
        Ok(view.snapshot().iter().map(|p| p.instance.id).collect())
    }

    async fn view(&self, endpoint: &str) -> Result<Arc<View>> {
        if let Some(w) = self.lock_views().get(endpoint) {
            if !w.task.is_finished() {
                return Ok(w.view.clone());
            }
        }
        let view = Arc::new(View::default());
        // Watch first, then list: an instance registered in between is in
        // the listing or in the watch, never in neither.
        let watch = self.inner.discovery.watch(endpoint).await?;
        view.replace(self.inner.discovery.list(endpoint).await?);
        let task = tokio::spawn(follow(Arc::downgrade(&view), watch));
        let mut views = self.lock_views();
        if let Some(w) = views.get(endpoint) {
            if !w.task.is_finished() {
                // Another call raced us here; keep its view, drop ours.
                task.abort();
                return Ok(w.view.clone());
            }
        }
        views.insert(
            endpoint.to_owned(),
            Watched {
                view: view.clone(),
                task,
            },
        );
        Ok(view)
    }

    fn lock_views(&self) -> std::sync::MutexGuard<'_, HashMap<String, Watched>> {
        self.inner.views.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pick an instance of `endpoint` for `route`, skipping `exclude`.
    async fn pick(
        &self,
        view: &View,
        endpoint: &str,
        route: Route,
        exclude: &[InstanceId],
        relist: bool,
    ) -> Result<Peer> {
        if relist {
            view.replace(self.inner.discovery.list(endpoint).await?);
        }
        let peers = view.snapshot();
        let id_of = |p: &&Peer| p.instance.id;
        let load_of = |p: &&Peer| p.in_flight.load(Ordering::Acquire);
        // The first attempt excludes nothing: pick from the snapshot as it is.
        let candidates: Vec<&Peer> = if exclude.is_empty() {
            peers.iter().collect()
        } else {
            peers
                .iter()
                .filter(|p| !exclude.contains(&p.instance.id))
                .collect()
        };
        let i = view.balancer.pick(route, &candidates, id_of, load_of)?;
        Ok(candidates[i].clone())
    }

    /// Pick an instance of `endpoint` for `route` and connect to it with
    /// `connect`, retrying failed connects as described on
    /// [`PeerDirectory`]. Returns what `connect` returned, the instance, and
    /// its in-flight counter.
    ///
    /// # Errors
    /// `NoResponders` when no instance serves the endpoint (or the directly
    /// addressed one is gone); the last connect error when every attempt
    /// failed; errors of kinds other than `Connection` at once.
    pub async fn connect<T, F, Fut>(
        &self,
        endpoint: &str,
        route: Route,
        mut connect: F,
    ) -> Result<(T, Arc<Instance>, InFlight)>
    where
        F: FnMut(Arc<Instance>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let view = self.view(endpoint).await?;
        let mut exclude = Vec::new();
        let mut last_error = None;
        let attempts = self.inner.config.connect_attempts.max(1);
        for attempt in 0..attempts {
            // Re-list when the watched set has nothing to offer, and before
            // retrying a direct route (the peer may have a new address).
            let empty = view.snapshot().is_empty();
            let relist = empty || (attempt > 0 && matches!(route, Route::Instance(_)));
            let peer = match self.pick(&view, endpoint, route, &exclude, relist).await {
                Ok(p) => p,
                Err(e) if e.kind() == ErrorKind::NoResponders && !relist => {
                    match self.pick(&view, endpoint, route, &exclude, true).await {
                        Ok(p) => p,
                        // Every instance there is failed to connect: that
                        // failure, not "nobody serves", is the answer.
                        Err(e) => return Err(last_error.unwrap_or(e)),
                    }
                }
                Err(e) => return Err(last_error.unwrap_or(e)),
            };
            peer.in_flight.fetch_add(1, Ordering::AcqRel);
            let guard = InFlight {
                counter: peer.in_flight.clone(),
            };
            match connect(peer.instance.clone()).await {
                Ok(t) => return Ok((t, peer.instance, guard)),
                Err(e) if e.kind() == ErrorKind::Connection => {
                    tracing::debug!(endpoint, instance = %peer.instance.id, address = %peer.instance.address, error = %e, "connect to peer failed");
                    if !matches!(route, Route::Instance(_)) {
                        exclude.push(peer.instance.id);
                    }
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| not_served(endpoint, None)))
    }
}

/// Apply a discovery watch to a view until the view's directory is gone.
async fn follow(view: Weak<View>, mut watch: plane_core::discovery::DiscoveryWatch) {
    while let Some(event) = watch.next().await {
        let Some(view) = view.upgrade() else { return };
        view.apply(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_core::discovery::DiscoveryConfig;
    use plane_core::message::Headers;
    use std::time::Duration;

    async fn discovery(hub: &str) -> Discovery {
        let kv = plane_mem::registry()
            .kv(&format!("mem://{hub}"))
            .await
            .unwrap();
        Discovery::open(&kv, DiscoveryConfig::default())
            .await
            .unwrap()
    }

    #[test]
    fn call_and_frames_round_trip() {
        let call = Call::new("echo", "hi").header("content-type", "text/plain");
        let id = call.id;
        let mut call = call;
        call.stream = true;
        let env = call_envelope(call, Some(InstanceId(7)));
        let Inbound::Call {
            endpoint,
            instance,
            incoming,
        } = decode_inbound(env).unwrap()
        else {
            panic!("a call")
        };
        assert_eq!(endpoint, "echo");
        assert_eq!(instance, Some(InstanceId(7)));
        assert_eq!(incoming.id, id);
        assert!(incoming.stream);
        assert_eq!(
            incoming.message.headers,
            Headers::new().with("content-type", "text/plain")
        );
        let reply = Message::new(Headers::new().with("a", "b"), "r");
        for frame in [
            Frame::Accepted,
            Frame::Data(reply.clone()),
            Frame::Last(reply.clone()),
            Frame::End,
        ] {
            match decode_reply(frame_envelope(id, frame.clone())).unwrap() {
                Reply::Frame(f) => assert_eq!(f, frame),
                other => panic!("{other:?}"),
            }
        }
        let err = Error::new(ErrorKind::Overloaded, "busy");
        match decode_reply(Envelope::error(id, &err)).unwrap() {
            Reply::Error(e) => assert_eq!(e.kind(), ErrorKind::Overloaded),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode_inbound(cancel_envelope(id, Cancel::Kill)).unwrap(),
            Inbound::Cancel(i, Cancel::Kill) if i == id
        ));
        assert!(matches!(
            decode_reply(heartbeat_envelope(id)).unwrap(),
            Reply::Heartbeat
        ));
        assert_eq!(
            decode_inbound(Envelope::new(EnvelopeKind::Request, id))
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            decode_reply(Envelope::new(EnvelopeKind::Request, id))
                .unwrap_err()
                .kind(),
            ErrorKind::Decode
        );
    }

    #[test]
    fn oversized_is_payload_too_large() {
        let env = Envelope::new(EnvelopeKind::Request, RequestId(1)).with_body(vec![0u8; 100]);
        let limits = Limits::default().with_max_envelope_bytes(64);
        assert_eq!(
            check_limits(&env, &limits).unwrap_err().kind(),
            ErrorKind::PayloadTooLarge
        );
        assert!(check_limits(&env, &Limits::default()).is_ok());
    }

    #[tokio::test]
    async fn directory_balances_retries_and_forgets() {
        let d = discovery("peer-directory-test").await;
        let mut regs = Vec::new();
        for i in 1..=3u64 {
            let inst = Instance::new("svc", InstanceId(i), format!("addr-{i}"));
            regs.push(d.register(inst).await.unwrap());
        }
        let dir = PeerDirectory::new(d.clone(), DirectoryConfig::default());
        let ok = |i: Arc<Instance>| async move { Ok::<_, Error>(i.id) };

        // Round-robin uses every instance.
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..3 {
            let (id, _, _) = dir.connect("svc", Route::RoundRobin, ok).await.unwrap();
            seen.insert(id);
        }
        assert_eq!(seen.len(), 3);

        // Direct routing reaches exactly the named instance.
        let (id, _, _) = dir
            .connect("svc", Route::Instance(InstanceId(2)), ok)
            .await
            .unwrap();
        assert_eq!(id, InstanceId(2));

        // A failed connect moves on to another instance.
        let (id, _, _) = dir
            .connect("svc", Route::Instance(InstanceId(1)), ok)
            .await
            .unwrap();
        assert_eq!(id, InstanceId(1));
        let flaky = |i: Arc<Instance>| async move {
            if i.id == InstanceId(1) {
                Err(Error::new(ErrorKind::Connection, "refused"))
            } else {
                Ok(i.id)
            }
        };
        for _ in 0..6 {
            let (id, _, _) = dir.connect("svc", Route::RoundRobin, flaky).await.unwrap();
            assert_ne!(id, InstanceId(1));
        }
        // Other errors are not retried.
        let bad = |_: Arc<Instance>| async move {
            Err::<InstanceId, _>(Error::new(ErrorKind::Decode, "x"))
        };
        assert_eq!(
            dir.connect("svc", Route::RoundRobin, bad)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Decode
        );

        // An instance that leaves is no longer picked.
        let gone = regs.remove(0);
        gone.deregister().await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let ids: Vec<_> = dir
                    .instances("svc")
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|i| i.id)
                    .collect();
                if !ids.contains(&InstanceId(1)) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("removed instance forgotten");
        assert_eq!(
            dir.connect("svc", Route::Instance(InstanceId(1)), ok)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NoResponders
        );

        // When each of the two instances left fails to connect (fewer
        // than the attempts), the caller learns
        // why rather than `NoResponders`.
        let down = |_: Arc<Instance>| async move {
            Err::<InstanceId, _>(Error::new(ErrorKind::Connection, "refused"))
        };
        assert_eq!(
            dir.connect("svc", Route::RoundRobin, down)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::Connection
        );
        // Nobody serving: NoResponders at once.
        assert_eq!(
            dir.connect("nobody", Route::RoundRobin, ok)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::NoResponders
        );
    }

    #[test]
    fn endpoints_route_by_endpoint_and_instance() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _g = rt.enter();
        let table = Endpoints::new();
        let handler = Arc::new(plane_core::request::unary_fn(
            |r: plane_core::request::Request| async move { Ok(r.message) },
        ));
        let d = Dispatcher::new(
            "echo",
            InstanceId(3),
            handler,
            &plane_core::request::ServeOptions::default().max_in_flight(4),
            1024,
            "test",
        );
        table.insert(d);
        assert_eq!(
            table.lookup("echo", None).unwrap().instance(),
            InstanceId(3)
        );
        assert_eq!(
            table
                .lookup("echo", Some(InstanceId(3)))
                .unwrap()
                .instance(),
            InstanceId(3)
        );
        assert_eq!(
            table
                .lookup("echo", Some(InstanceId(4)))
                .err()
                .map(|e| e.kind()),
            Some(ErrorKind::NoResponders)
        );
        table.remove("echo", InstanceId(3));
        assert!(table.is_empty());
        assert_eq!(
            table.lookup("echo", None).err().map(|e| e.kind()),
            Some(ErrorKind::NoResponders)
        );
    }
}
