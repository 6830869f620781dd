//! The request plane: call an endpoint, get one reply or a stream of replies.
//!
//! # Lifecycle of a call
//!
//! A call is a stream of [`Frame`]s from the server: an optional
//! [`Frame::Accepted`] prologue (sent for streamed calls, so a refusal is
//! distinguishable from a slow first reply), then [`Frame::Data`] replies, then
//! an explicit end: [`Frame::End`], or [`Frame::Last`] which is a final reply
//! and the end at once (what unary handlers send). A typed error travels
//! in-band as an `Err` item and also ends the stream. A transport that stops
//! without an end marker yields [`ErrorKind::Disconnected`], never a clean end.
//!
//! Cancellation flows from caller to handler in two strengths: a graceful
//! *stop* ([`Replies::stop`]) that the handler observes through
//! [`Request::stopped`] and may finish its current item, and a hard *kill*
//! ([`Replies::kill`], or dropping an unfinished [`Replies`]) that aborts the
//! handler's future. Losing the caller's connection counts as a kill.
//!
//! # Layers
//!
//! - [`RequestBackend`]: what a backend implements (send a call, attach an
//!   endpoint); [`DynRequestBackend`] is its object-safe twin.
//! - [`Dispatcher`]: the server runtime every backend hands incoming calls to;
//!   admission, deadlines, stop/kill and drain are implemented once, there.
//! - [`Requests`]: the cheap, cloneable handle applications hold.
//!
//! A broadcast call ([`Requests::broadcast`]) is answered by every live
//! instance of an endpoint; see [`Broadcast`].

mod balance;
mod broadcast;
mod client;
pub mod flow;
mod idempotency;
mod server;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tracing::Instrument;

pub use balance::Balancer;
pub use broadcast::{Answer, Broadcast, GatherTransport, Reach};
pub use client::Replies;
pub use server::{
    handler_fn, unary_fn, Dispatcher, Handler, Incoming, Request, Responder, ServeOptions, Server,
};

pub use crate::capabilities::RequestCapabilities;
use crate::error::{Error, ErrorKind, Result};
pub use crate::health::ConnectionState;
pub use crate::ids::{InstanceId, RequestId};
use crate::message::{names, Body, Headers, Message};
use crate::metrics::{self, Labels};
use crate::policy::{CallPolicy, InFlightLimit, Limiter, OnError};
use crate::subject::validate_endpoint;
use crate::trace::TraceContext;
use client::CallMeta;

/// How a call picks among an endpoint's instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Route {
    /// Each instance in turn.
    #[default]
    RoundRobin,
    /// A uniformly random instance.
    Random,
    /// The less loaded of two random instances (by in-flight calls).
    PowerOfTwo,
    /// Exactly this instance; `NoResponders` if it is gone.
    Instance(InstanceId),
}

/// One frame of a reply stream, as a backend's transport yields it.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// The server admitted the call (prologue of streamed calls).
    Accepted,
    /// One reply; more may follow.
    Data(Message),
    /// The final reply, which is also the end marker.
    Last(Message),
    /// The explicit end marker, with no reply attached.
    End,
}

/// Cancellation strength, caller to handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// Graceful: the handler is asked to stop and may finish its current item.
    Stop,
    /// Hard: the handler's future is dropped now.
    Kill,
}

/// A call as it is handed to a backend.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct Call {
    /// Unique id of this call (a UUIDv7), assigned afresh each time the call
    /// is sent, so a cloned `Call` sent twice is two distinct calls.
    pub id: RequestId,
    /// Endpoint name.
    pub endpoint: String,
    /// Request headers and body.
    pub message: Message,
    /// Whether the caller expects a stream (and so an `Accepted` prologue).
    pub stream: bool,
    /// Time budget of the whole call. Also sent to the server as
    /// [`names::TIMEOUT_MS`] so the handler is not kept running past it.
    pub timeout: Option<Duration>,
    /// Instance selection.
    pub route: Route,
}

impl Call {
    /// A call to `endpoint` with `body` and no headers, default route and timeout.
    pub fn new(endpoint: impl Into<String>, body: impl Into<Body>) -> Self {
        Call {
            id: RequestId::new_v7(),
            endpoint: endpoint.into(),
            message: Message::from(body.into()),
            stream: false,
            timeout: None,
            route: Route::default(),
        }
    }

    /// Add a header.
    pub fn header(
        mut self,
        name: impl AsRef<str> + Into<String>,
        value: impl Into<String>,
    ) -> Self {
        self.message.headers.insert(name, value);
        self
    }

    /// Replace all headers.
    pub fn headers(mut self, headers: Headers) -> Self {
        self.message.headers = headers;
        self
    }

    /// Set the time budget.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Set the instance selection.
    pub fn route(mut self, route: Route) -> Self {
        self.route = route;
        self
    }
}

/// A backend's receiving side of one call.
pub trait ReplyTransport: Send + 'static {
    /// The next frame; `None` when the transport has nothing more, which the
    /// plane reports as `Disconnected` unless an end marker came first.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>>;
    /// Tell the server to stop or kill the handler. Must not block; called
    /// from `Drop` too.
    fn cancel(&mut self, how: Cancel);
}

/// A backend's sending side of one call's replies, owned by the [`Dispatcher`].
pub trait ReplySink: Send + Sync + 'static {
    /// Send one frame, waiting for flow control. `Err(Cancelled)` or
    /// `Err(Disconnected)` when the caller is gone.
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<()>>;
    /// Send a typed error, which ends the stream.
    fn send_error(&self, error: Error) -> BoxFuture<'_, Result<()>>;
}

/// A backend's registration of one endpoint instance.
pub trait ServeTransport: Send + Sync + 'static {
    /// Stop routing new calls to this instance. Idempotent; in-flight calls
    /// keep their reply path.
    fn close(&self);
}

/// What a backend implements for the request plane.
pub trait RequestBackend: Send + Sync + 'static {
    /// Backend name for errors and metrics (`"mem"`, `"nats"`).
    fn name(&self) -> &'static str;
    /// Declared capabilities.
    fn capabilities(&self) -> &RequestCapabilities;
    /// The transport's connection state, for health checks. Cheap, no I/O.
    /// Defaults to `Up` (right for backends without a connection).
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Up
    }
    /// Send `call` and return the transport its frames arrive on.
    ///
    /// # Behavior
    /// MUST fail with `NoResponders` (here or as the first frame) when no
    /// instance serves the endpoint, without waiting for the timeout.
    /// MUST honour `call.route`; the plane only passes declared routes.
    fn call(&self, call: Call) -> impl Future<Output = Result<Box<dyn ReplyTransport>>> + Send;
    /// Start routing calls for the dispatcher's endpoint
    /// ([`Dispatcher::endpoint`]) to it, as its instance
    /// ([`Dispatcher::instance`]).
    ///
    /// # Behavior
    /// MUST hand every admitted call to [`Dispatcher::dispatch`] and deliver
    /// stop/kill (and connection loss, as kill) to it.
    fn serve(
        &self,
        dispatcher: Dispatcher,
    ) -> impl Future<Output = Result<Box<dyn ServeTransport>>> + Send;
    /// How a broadcast of `call` reaches every live instance of its
    /// endpoint: the instances to call one by one, or the answers of a
    /// fan-out the backend sent itself.
    ///
    /// # Behavior
    /// Only called when [`RequestCapabilities::broadcast`] is declared; the
    /// default refuses with `Unsupported`. MUST fail with `NoResponders` when
    /// no instance serves the endpoint. A gathering backend MUST report, in
    /// [`GatherTransport::unanswered`], every instance that took the call and
    /// has not answered.
    fn broadcast(&self, call: &Call) -> impl Future<Output = Result<Reach>> + Send {
        let _ = call;
        async { Err(Error::unsupported("broadcast")) }
    }
}

/// Object-safe twin of [`RequestBackend`], implemented for every backend.
pub trait DynRequestBackend: Send + Sync + 'static {
    /// See [`RequestBackend::name`].
    fn name(&self) -> &'static str;
    /// See [`RequestBackend::capabilities`].
    fn capabilities(&self) -> &RequestCapabilities;
    /// See [`RequestBackend::connection_state`].
    fn connection_state(&self) -> ConnectionState;
    /// See [`RequestBackend::call`].
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Box<dyn ReplyTransport>>>;
    /// See [`RequestBackend::serve`].
    fn serve(&self, dispatcher: Dispatcher) -> BoxFuture<'_, Result<Box<dyn ServeTransport>>>;
    /// See [`RequestBackend::broadcast`].
    fn broadcast<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Result<Reach>>;
}

impl<T: RequestBackend> DynRequestBackend for T {
    fn name(&self) -> &'static str {
        RequestBackend::name(self)
    }
    fn capabilities(&self) -> &RequestCapabilities {
        RequestBackend::capabilities(self)
    }
    fn connection_state(&self) -> ConnectionState {
        RequestBackend::connection_state(self)
    }
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Box<dyn ReplyTransport>>> {
        Box::pin(RequestBackend::call(self, call))
    }
    fn serve(&self, dispatcher: Dispatcher) -> BoxFuture<'_, Result<Box<dyn ServeTransport>>> {
        Box::pin(RequestBackend::serve(self, dispatcher))
    }
    fn broadcast<'a>(&'a self, call: &'a Call) -> BoxFuture<'a, Result<Reach>> {
        Box::pin(RequestBackend::broadcast(self, call))
    }
}

/// How a handle makes calls: the default policy and request limit, and
/// what individual endpoints set over them. The handle's default timeout
/// lives beside it, in [`Requests`].
#[derive(Debug, Clone, Default)]
struct Policies {
    default: CallPolicy,
    endpoints: HashMap<String, CallPolicy>,
    /// Per-endpoint deadlines; `None` in the map is "no deadline".
    timeouts: HashMap<String, Option<Duration>>,
    max_request_bytes: Option<usize>,
    /// Per-endpoint request limits; `None` in the map is "only the
    /// backend's".
    endpoint_max_request_bytes: HashMap<String, Option<usize>>,
}

/// The request plane handle applications hold. Cheap to clone.
///
/// A handle carries its client policies (see [`crate::policy`]): a
/// [`CallPolicy`] (retries, on-error), a timeout and a request size limit,
/// each with per-endpoint overrides, and an optional [`InFlightLimit`] that
/// clones share.
#[derive(Clone)]
pub struct Requests {
    backend: Arc<dyn DynRequestBackend>,
    default_timeout: Option<Duration>,
    default_route: Route,
    policies: Arc<Policies>,
    limiter: Option<Arc<Limiter>>,
    /// Metric labels per endpoint called, shared by the handle's clones.
    labels: Arc<Mutex<HashMap<String, Labels>>>,
}

/// Endpoints whose metric labels a handle keeps; calls to further endpoints
/// build theirs each time.
const LABELS_KEPT: usize = 1024;

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("backend", &self.backend.name())
            .field("policy", &self.policies.default)
            .field("limit", &self.limiter)
            .finish()
    }
}

impl Requests {
    /// Wrap a backend.
    pub fn new(backend: impl RequestBackend) -> Self {
        Requests::from_dyn(Arc::new(backend))
    }

    /// Wrap an already shared backend.
    pub fn from_dyn(backend: Arc<dyn DynRequestBackend>) -> Self {
        Requests {
            backend,
            default_timeout: Some(Duration::from_secs(30)),
            default_route: Route::RoundRobin,
            policies: Arc::default(),
            limiter: None,
            labels: Arc::default(),
        }
    }

    /// A handle whose calls default to `timeout` (30 s unless set), except
    /// for endpoints with their own
    /// ([`with_endpoint_timeout`](Requests::with_endpoint_timeout)). With
    /// retries, the timeout applies to each attempt.
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// A handle whose calls to `endpoint` default to `timeout` instead of
    /// the handle's (`None`: no deadline). A [`Call`] with its own timeout
    /// keeps it.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # let requests = plane_mem::Hub::new().requests(&Default::default());
    /// let requests = requests
    ///     .with_timeout(Some(Duration::from_secs(5)))
    ///     .with_endpoint_timeout("payments.charge", Some(Duration::from_millis(500)));
    /// assert_eq!(requests.timeout_for("payments.charge"), Some(Duration::from_millis(500)));
    /// assert_eq!(requests.timeout_for("search"), Some(Duration::from_secs(5)));
    /// ```
    pub fn with_endpoint_timeout(
        mut self,
        endpoint: impl Into<String>,
        timeout: Option<Duration>,
    ) -> Self {
        Arc::make_mut(&mut self.policies)
            .timeouts
            .insert(endpoint.into(), timeout);
        self
    }

    /// The deadline a call to `endpoint` gets when it sets none: the
    /// endpoint's, else the handle's.
    pub fn timeout_for(&self, endpoint: &str) -> Option<Duration> {
        self.policies
            .timeouts
            .get(endpoint)
            .copied()
            .unwrap_or(self.default_timeout)
    }

    /// A handle whose calls fail with `PayloadTooLarge`, before anything
    /// is sent, when the request's body is larger than `max` bytes
    /// (`None`: only the backend's
    /// [`max_payload`](RequestCapabilities::max_payload) bounds it, the
    /// default), except for endpoints with their own
    /// ([`with_endpoint_max_request_bytes`](Requests::with_endpoint_max_request_bytes)).
    pub fn with_max_request_bytes(mut self, max: Option<usize>) -> Self {
        Arc::make_mut(&mut self.policies).max_request_bytes = max;
        self
    }

    /// A handle whose calls to `endpoint` are held to `max` request body
    /// bytes instead of the handle's limit (`None`: only the backend's).
    /// The backend's `max_payload` bounds every call whatever this says.
    ///
    /// ```
    /// # let requests = plane_mem::Hub::new().requests(&Default::default());
    /// let requests = requests
    ///     .with_max_request_bytes(Some(64 * 1024))
    ///     .with_endpoint_max_request_bytes("images.upload", Some(512 * 1024));
    /// assert_eq!(requests.max_request_bytes_for("search"), Some(64 * 1024));
    /// assert_eq!(requests.max_request_bytes_for("images.upload"), Some(512 * 1024));
    /// ```
    pub fn with_endpoint_max_request_bytes(
        mut self,
        endpoint: impl Into<String>,
        max: Option<usize>,
    ) -> Self {
        Arc::make_mut(&mut self.policies)
            .endpoint_max_request_bytes
            .insert(endpoint.into(), max);
        self
    }

    /// The largest request body a call to `endpoint` may send, as this
    /// handle sets it (the endpoint's, else the handle's); `None` when only
    /// the backend's `max_payload` bounds it.
    pub fn max_request_bytes_for(&self, endpoint: &str) -> Option<usize> {
        self.policies
            .endpoint_max_request_bytes
            .get(endpoint)
            .copied()
            .unwrap_or(self.policies.max_request_bytes)
    }

    /// A handle whose [`call`](Requests::call) uses `route` (round-robin
    /// unless set). A [`Call`] passed explicitly keeps its own route.
    pub fn with_route(mut self, route: Route) -> Self {
        self.default_route = route;
        self
    }

    /// A handle whose calls follow `policy` (no retries unless set), except
    /// for endpoints with their own.
    ///
    /// ```
    /// use plane_core::policy::{CallPolicy, RetryPolicy};
    /// # async fn demo(requests: plane_core::Requests) {
    /// let requests = requests
    ///     .with_policy(CallPolicy::retry(RetryPolicy::exponential(3)))
    ///     .with_endpoint_policy("charge-card", CallPolicy::end());
    /// # }
    /// ```
    pub fn with_policy(mut self, policy: CallPolicy) -> Self {
        Arc::make_mut(&mut self.policies).default = policy;
        self
    }

    /// A handle whose calls to `endpoint` follow `policy`.
    pub fn with_endpoint_policy(mut self, endpoint: impl Into<String>, policy: CallPolicy) -> Self {
        Arc::make_mut(&mut self.policies)
            .endpoints
            .insert(endpoint.into(), policy);
        self
    }

    /// The policy calls to `endpoint` follow.
    pub fn policy_for(&self, endpoint: &str) -> &CallPolicy {
        self.policies
            .endpoints
            .get(endpoint)
            .unwrap_or(&self.policies.default)
    }

    /// A handle (and its future clones) with at most `limit.max_in_flight`
    /// calls in flight together; see [`Overflow`](crate::policy::Overflow).
    /// A call holds its slot until its reply stream ends or is dropped.
    ///
    /// # Errors
    /// `InvalidConfig` when `max_in_flight` is 0.
    pub fn with_in_flight_limit(mut self, limit: InFlightLimit) -> Result<Self> {
        self.limiter = Some(Arc::new(Limiter::new(limit)?));
        Ok(self)
    }

    /// Calls holding a slot of this handle's in-flight limit, and calls
    /// waiting for one; `None` without a limit.
    pub fn in_flight_slots(&self) -> Option<(usize, usize)> {
        self.limiter.as_ref().map(|l| (l.in_flight(), l.waiting()))
    }

    /// This handle's in-flight limit, if it has one.
    pub fn in_flight_limit(&self) -> Option<InFlightLimit> {
        self.limiter.as_ref().map(|l| l.limit())
    }

    /// Resolves once this handle's in-flight limit has a free slot (at once
    /// without a limit), for adapters with a readiness step such as tower's
    /// `poll_ready`. It waits in line behind calls already waiting.
    ///
    /// Advisory: the slot is not reserved, so a call started afterwards may
    /// still find it taken by another caller, and then meets the limit's
    /// [`Overflow`](crate::policy::Overflow) policy. Cancel-safe.
    pub fn slot_available(&self) -> impl Future<Output = ()> + Send + 'static {
        let wait = self.limiter.as_ref().map(|l| l.slot_free());
        async move {
            if let Some(wait) = wait {
                wait.await;
            }
        }
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &RequestCapabilities {
        self.backend.capabilities()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.backend.connection_state()
    }

    /// Unary call with the handle's defaults; returns the reply body.
    pub async fn call(&self, endpoint: &str, body: impl Into<Body>) -> Result<Body> {
        let call = Call::new(endpoint, body).route(self.default_route);
        Ok(self.call_with(call).await?.body)
    }

    /// Unary call with explicit options; returns the reply with its headers.
    ///
    /// A handler that streams several replies to a unary call yields its first
    /// reply here; the rest of its stream is cancelled. Retryable failures are
    /// retried per the endpoint's [`CallPolicy`], every attempt carrying the
    /// same idempotency key.
    pub async fn call_with(&self, mut call: Call) -> Result<Message> {
        let op = "request.call";
        call.stream = false;
        self.check_route(call.route, op)?;
        let policy = self.policy_for(&call.endpoint).clone();
        let span = self.prepare(&mut call, &policy, op)?;
        let retry = policy.effective_retry();
        if !retry.retries() {
            // One attempt: it can have the call itself rather than a copy.
            return self
                .unary_once(call, policy.on_error, op)
                .instrument(span)
                .await;
        }
        let labels = self.labels(&call.endpoint);
        async {
            retry
                .run(
                    |_| self.unary_once(call.clone(), policy.on_error, op),
                    |e, n| self.on_retry(&labels, e, n),
                )
                .await
        }
        .instrument(span)
        .await
    }

    async fn unary_once(&self, call: Call, on_error: OnError, op: &'static str) -> Result<Message> {
        let mut replies = self.start(call, on_error, op).await?;
        let first = replies.next_reply().await;
        let reply = match first {
            Some(Ok(reply)) => reply,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(
                    Error::new(ErrorKind::Other, "endpoint ended the call without a reply")
                        .with_op(op),
                )
            }
        };
        if !replies.is_done() {
            // A streaming handler answered a unary call: its end marker is
            // normally already queued; anything further is cancelled by drop.
            if let Some(Err(e)) = replies.next_reply().await {
                return Err(e);
            }
        }
        Ok(reply)
    }

    /// Streamed call: returns once the server admitted the call (or refused it
    /// with a typed error), then yields replies until the end marker.
    ///
    /// Under [`OnError::Retry`] a refusal or failure before admission is
    /// retried; errors after replies flowed are not (they would repeat them).
    pub async fn stream(&self, mut call: Call) -> Result<Replies> {
        let op = "request.stream";
        if !self.capabilities().streaming {
            return Err(Error::unsupported("streaming").with_op(op));
        }
        call.stream = true;
        self.check_route(call.route, op)?;
        let policy = self.policy_for(&call.endpoint).clone();
        let span = self.prepare(&mut call, &policy, op)?;
        let retry = policy.effective_retry();
        let attempt = |call: Call| async {
            let mut replies = self.start(call, policy.on_error, op).await?;
            replies.await_prologue().await?;
            Ok(replies)
        };
        if !retry.retries() {
            // One attempt: it can have the call itself rather than a copy.
            return attempt(call).instrument(span).await;
        }
        let labels = self.labels(&call.endpoint);
        async {
            retry
                .run(
                    |_| attempt(call.clone()),
                    |e, n| self.on_retry(&labels, e, n),
                )
                .await
        }
        .instrument(span)
        .await
    }

    /// Broadcast call: `call` answered by every live instance of its
    /// endpoint, each [`Answer`] naming its instance.
    ///
    /// The call's deadline (its timeout, else the handle's) bounds the whole
    /// broadcast: instances that have not answered by then are reported with
    /// `Timeout` and do not hold up the others. Nothing is retried, since a
    /// retry would ask every instance again. A handler that streams answers
    /// with its first reply.
    ///
    /// # Errors
    /// `Unsupported` unless the backend declares
    /// [`broadcast`](RequestCapabilities::broadcast); `InvalidArgument`
    /// without a deadline; `NoResponders` when no instance serves the
    /// endpoint; the checks of [`call_with`](Requests::call_with) otherwise.
    pub async fn broadcast(&self, mut call: Call) -> Result<Broadcast> {
        let op = "request.broadcast";
        if !self.capabilities().broadcast {
            return Err(Error::unsupported("broadcast").with_op(op));
        }
        call.stream = false;
        let once = CallPolicy {
            on_error: OnError::End,
            ..CallPolicy::default()
        };
        let span = self.prepare(&mut call, &once, op)?;
        let Some(timeout) = call.timeout else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "a broadcast call needs a deadline: set the call's or the handle's timeout",
            )
            .with_op(op));
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // What a gathering backend sends as is; the plane's own calls to
        // each instance stamp their own id and what is left of the budget.
        call.id = RequestId::new_v7();
        call.message
            .headers
            .insert(names::TIMEOUT_MS, timeout.as_millis().to_string());
        let reach = tokio::time::timeout_at(deadline, self.backend.broadcast(&call))
            .instrument(span.clone())
            .await
            .unwrap_or_else(|_| {
                Err(Error::new(
                    ErrorKind::Timeout,
                    "broadcast timed out while sending",
                ))
            })
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        let instances = match reach {
            Reach::Gathered(transport) => return Ok(Broadcast::gathered(transport, deadline)),
            Reach::Instances(instances) => instances,
        };
        if instances.is_empty() {
            return Err(
                Error::new(ErrorKind::NoResponders, "no instance serves the endpoint")
                    .with_op(op)
                    .with_backend(self.backend.name()),
            );
        }
        let calls = instances.into_iter().map(|instance| {
            let me = self.clone();
            let mut call = call.clone().route(Route::Instance(instance));
            let span = span.clone();
            let answer = async move {
                // Each call gets what is left of the broadcast's budget
                // when it starts, so none outlives the deadline.
                call.timeout =
                    Some(deadline.saturating_duration_since(tokio::time::Instant::now()));
                Answer {
                    instance,
                    reply: me.unary_once(call, OnError::End, op).await,
                }
            };
            Box::pin(answer.instrument(span)) as BoxFuture<'static, Answer>
        });
        Ok(Broadcast::calls(calls))
    }

    fn labels(&self, endpoint: &str) -> Labels {
        let mut kept = self.labels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(l) = kept.get(endpoint) {
            return l.clone();
        }
        let l = Labels::new()
            .with("endpoint", endpoint.to_owned())
            .with("backend", self.backend.name());
        if kept.len() < LABELS_KEPT {
            kept.insert(endpoint.to_owned(), l.clone());
        }
        l
    }

    fn on_retry(&self, labels: &Labels, error: &Error, retry: u32) {
        labels.counter(metrics::CLIENT_RETRIES).increment(1);
        tracing::debug!(error = %error, retry, "retrying call");
    }

    /// `Unsupported` unless the backend declares `route`.
    fn check_route(&self, route: Route, op: &'static str) -> Result<()> {
        let caps = self.backend.capabilities();
        let supported = match route {
            Route::RoundRobin => caps.round_robin,
            Route::Random => caps.random,
            Route::PowerOfTwo => caps.power_of_two,
            Route::Instance(_) => caps.direct,
        };
        if supported {
            Ok(())
        } else {
            Err(Error::unsupported("route").with_op(op))
        }
    }

    /// Checks and headers shared by every attempt of one logical call:
    /// validation and the payload limits (on what the caller sent), then the
    /// endpoint's default timeout, trace context and idempotency key.
    /// Returns the call's span.
    fn prepare(
        &self,
        call: &mut Call,
        policy: &CallPolicy,
        op: &'static str,
    ) -> Result<tracing::Span> {
        let caps = self.backend.capabilities();
        validate_endpoint(&call.endpoint).map_err(|e| e.with_op(op))?;
        // The limit applies to what the caller sent: plane's own control
        // headers, added below, must not make a request of exactly
        // `max_payload` fail (backends leave room for them).
        let len = call.message.payload_len();
        if len > caps.max_payload {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "request of {len} bytes exceeds the limit of {}",
                    caps.max_payload
                ),
            )
            .with_op(op)
            .with_backend(self.backend.name()));
        }
        // The handle's own limit counts the body alone: the headers vary
        // with tracing and retries, and a server's `max_request_bytes`
        // counts the same bytes.
        if let Some(max) = self.max_request_bytes_for(&call.endpoint) {
            let len = call.message.body.len();
            if len > max {
                return Err(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!(
                        "request body of {len} bytes exceeds `{}`'s limit of {max}",
                        call.endpoint
                    ),
                )
                .with_op(op)
                .with_backend(self.backend.name()));
            }
        }
        if call.timeout.is_none() {
            call.timeout = self.timeout_for(&call.endpoint);
        }
        let trace = TraceContext::outgoing(&mut call.message.headers, true);
        // A key is only worth its bytes (and the server's cache entry) when
        // the call may be repeated.
        if policy.effective_retry().retries()
            && call.message.headers.get(names::IDEMPOTENCY_KEY).is_none()
        {
            call.message.headers.insert(
                names::IDEMPOTENCY_KEY,
                uuid::Uuid::from_u128(RequestId::new_v7().0)
                    .simple()
                    .to_string(),
            );
        }
        Ok(tracing::debug_span!(
            "plane.call",
            endpoint = %call.endpoint,
            backend = self.backend.name(),
            stream = call.stream,
            trace_id = trace.as_ref().map(|t| t.trace_id()),
            span_id = trace.as_ref().map(|t| t.span_id()),
        ))
    }

    /// Send one attempt: take a slot, stamp a fresh id and the time budget.
    async fn start(&self, mut call: Call, on_error: OnError, op: &'static str) -> Result<Replies> {
        let permit = match &self.limiter {
            Some(limiter) => Some(
                limiter
                    .acquire()
                    .await
                    .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?,
            ),
            None => None,
        };
        call.id = RequestId::new_v7();
        if let Some(t) = call.timeout {
            call.message
                .headers
                .insert(names::TIMEOUT_MS, t.as_millis().to_string());
        }
        let labels = self.labels(&call.endpoint);
        labels
            .counter(metrics::CLIENT_BYTES_SENT)
            .increment(call.message.payload_len() as u64);
        tracing::debug!(request_id = %call.id, "sending call");
        let timeout = call.timeout;
        let backend = self.backend.name();
        let meta = CallMeta {
            labels,
            started: std::time::Instant::now(),
            permit,
            on_error,
        };
        let sent = match timeout {
            Some(t) => tokio::time::timeout(t, self.backend.call(call))
                .await
                .unwrap_or_else(|_| {
                    Err(Error::new(
                        ErrorKind::Timeout,
                        "call timed out while sending",
                    ))
                }),
            None => self.backend.call(call).await,
        };
        match sent {
            Ok(transport) => Ok(Replies::new(transport, timeout, meta)),
            Err(e) => {
                let labels = &meta.labels;
                labels
                    .counter_with(metrics::CLIENT_REQUESTS, "outcome", e.kind().as_str())
                    .increment(1);
                labels
                    .counter_with(metrics::CLIENT_ERRORS, "kind", e.kind().as_str())
                    .increment(1);
                if e.kind() == ErrorKind::Timeout {
                    labels.counter(metrics::CLIENT_TIMEOUTS).increment(1);
                }
                Err(e.with_op(op).with_backend(backend))
            }
        }
    }

    /// Serve `endpoint` with `handler` and default options.
    pub async fn serve(&self, endpoint: &str, handler: impl Handler) -> Result<Server> {
        self.serve_with(endpoint, handler, ServeOptions::default())
            .await
    }

    /// Serve `endpoint` with `handler` and explicit options.
    pub async fn serve_with(
        &self,
        endpoint: &str,
        handler: impl Handler,
        options: ServeOptions,
    ) -> Result<Server> {
        validate_endpoint(endpoint).map_err(|e| e.with_op("request.serve"))?;
        if options.max_in_flight == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_in_flight must be at least 1",
            ));
        }
        let instance = options.instance.unwrap_or_else(InstanceId::random);
        let dispatcher = Dispatcher::new(
            endpoint,
            instance,
            Arc::new(handler),
            &options,
            self.capabilities().max_payload,
            self.backend.name(),
        );
        let transport = self
            .backend
            .serve(dispatcher.clone())
            .await
            .map_err(|e| e.with_op("request.serve").with_backend(self.backend.name()))?;
        Ok(Server::new(endpoint, instance, dispatcher, transport))
    }
}
