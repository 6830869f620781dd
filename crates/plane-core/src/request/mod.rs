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

mod balance;
mod client;
mod server;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::future::BoxFuture;

pub use balance::Balancer;
pub use client::Replies;
pub use server::{
    handler_fn, unary_fn, Dispatcher, Handler, Incoming, Request, Responder, ServeOptions, Server,
};

pub use crate::capabilities::RequestCapabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::message::{names, Body, Headers, Message};
use crate::subject::validate_name;
pub use crate::wire::RequestId;

/// Identifies one serving instance of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(pub u64);

impl InstanceId {
    /// A random instance id.
    pub fn random() -> Self {
        InstanceId(rand::random())
    }
}

impl std::fmt::Display for InstanceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for InstanceId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        u64::from_str_radix(s, 16).map(InstanceId).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, "invalid instance id").with_source(e)
        })
    }
}

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
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
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
    /// Send `call` and return the transport its frames arrive on.
    ///
    /// # Behavior
    /// MUST fail with `NoResponders` (here or as the first frame) when no
    /// instance serves the endpoint, without waiting for the timeout.
    /// MUST honour `call.route`; the plane only passes declared routes.
    fn call(&self, call: Call) -> impl Future<Output = Result<Box<dyn ReplyTransport>>> + Send;
    /// Start routing calls for `endpoint` to `dispatcher` as instance `instance`.
    ///
    /// # Behavior
    /// MUST hand every admitted call to [`Dispatcher::dispatch`] and deliver
    /// stop/kill (and connection loss, as kill) to it.
    fn serve(
        &self,
        endpoint: &str,
        instance: InstanceId,
        dispatcher: Dispatcher,
    ) -> impl Future<Output = Result<Box<dyn ServeTransport>>> + Send;
}

/// Object-safe twin of [`RequestBackend`], implemented for every backend.
pub trait DynRequestBackend: Send + Sync + 'static {
    /// See [`RequestBackend::name`].
    fn name(&self) -> &'static str;
    /// See [`RequestBackend::capabilities`].
    fn capabilities(&self) -> &RequestCapabilities;
    /// See [`RequestBackend::call`].
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Box<dyn ReplyTransport>>>;
    /// See [`RequestBackend::serve`].
    fn serve<'a>(
        &'a self,
        endpoint: &'a str,
        instance: InstanceId,
        dispatcher: Dispatcher,
    ) -> BoxFuture<'a, Result<Box<dyn ServeTransport>>>;
}

impl<T: RequestBackend> DynRequestBackend for T {
    fn name(&self) -> &'static str {
        RequestBackend::name(self)
    }
    fn capabilities(&self) -> &RequestCapabilities {
        RequestBackend::capabilities(self)
    }
    fn call(&self, call: Call) -> BoxFuture<'_, Result<Box<dyn ReplyTransport>>> {
        Box::pin(RequestBackend::call(self, call))
    }
    fn serve<'a>(
        &'a self,
        endpoint: &'a str,
        instance: InstanceId,
        dispatcher: Dispatcher,
    ) -> BoxFuture<'a, Result<Box<dyn ServeTransport>>> {
        Box::pin(RequestBackend::serve(self, endpoint, instance, dispatcher))
    }
}

/// The request plane handle applications hold. Cheap to clone.
#[derive(Clone)]
pub struct Requests {
    backend: Arc<dyn DynRequestBackend>,
    default_timeout: Option<Duration>,
    default_route: Route,
}

impl std::fmt::Debug for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("backend", &self.backend.name())
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
        }
    }

    /// A handle whose calls default to `timeout` (30 s unless set).
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// A handle whose [`call`](Requests::call) uses `route` (round-robin
    /// unless set). A [`Call`] passed explicitly keeps its own route.
    pub fn with_route(mut self, route: Route) -> Self {
        self.default_route = route;
        self
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &RequestCapabilities {
        self.backend.capabilities()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Unary call with the handle's defaults; returns the reply body.
    pub async fn call(&self, endpoint: &str, body: impl Into<Body>) -> Result<Body> {
        let call = Call::new(endpoint, body).route(self.default_route);
        Ok(self.call_with(call).await?.body)
    }

    /// Unary call with explicit options; returns the reply with its headers.
    ///
    /// A handler that streams several replies to a unary call yields its first
    /// reply here; the rest of its stream is cancelled.
    pub async fn call_with(&self, mut call: Call) -> Result<Message> {
        call.stream = false;
        let mut replies = self.start(call, "request.call").await?;
        let first = replies.next_reply().await;
        let reply = match first {
            Some(Ok(reply)) => reply,
            Some(Err(e)) => return Err(e),
            None => {
                return Err(
                    Error::new(ErrorKind::Other, "endpoint ended the call without a reply")
                        .with_op("request.call"),
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
    pub async fn stream(&self, mut call: Call) -> Result<Replies> {
        if !self.capabilities().streaming {
            return Err(Error::unsupported("streaming").with_op("request.stream"));
        }
        call.stream = true;
        let mut replies = self.start(call, "request.stream").await?;
        replies.await_prologue().await?;
        Ok(replies)
    }

    async fn start(&self, mut call: Call, op: &'static str) -> Result<Replies> {
        call.id = RequestId::new_v7();
        let caps = self.backend.capabilities();
        validate_name("endpoint", &call.endpoint).map_err(|e| e.with_op(op))?;
        let route_supported = match call.route {
            Route::RoundRobin => caps.round_robin,
            Route::Random => caps.random,
            Route::PowerOfTwo => caps.power_of_two,
            Route::Instance(_) => caps.direct,
        };
        if !route_supported {
            return Err(Error::unsupported("route").with_op(op));
        }
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
        if call.timeout.is_none() {
            call.timeout = self.default_timeout;
        }
        if let Some(t) = call.timeout {
            call.message
                .headers
                .insert(names::TIMEOUT_MS, t.as_millis().to_string());
        }
        let timeout = call.timeout;
        let backend = self.backend.name();
        let transport = match timeout {
            Some(t) => tokio::time::timeout(t, self.backend.call(call))
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, "call timed out while sending"))?,
            None => self.backend.call(call).await,
        }
        .map_err(|e| e.with_op(op).with_backend(backend))?;
        Ok(Replies::new(transport, timeout))
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
        validate_name("endpoint", endpoint).map_err(|e| e.with_op("request.serve"))?;
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
            options.max_in_flight,
            self.capabilities().max_payload,
        );
        let transport = self
            .backend
            .serve(endpoint, instance, dispatcher.clone())
            .await
            .map_err(|e| e.with_op("request.serve").with_backend(self.backend.name()))?;
        Ok(Server::new(endpoint, instance, dispatcher, transport))
    }
}
