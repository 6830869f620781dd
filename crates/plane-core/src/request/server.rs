//! The serving side, shared by every backend.
//!
//! A backend only moves frames. Everything with semantics — bounded admission
//! with a typed refusal, the stream prologue, deadlines, graceful stop versus
//! hard kill, containing a panicking handler, drain — happens here, once, so
//! that it behaves identically on every transport.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::idempotency::{Answer, Cache, Claim, Owner};
use super::{Frame, InstanceId, ReplySink, RequestId, ServeTransport};
use crate::error::{Error, ErrorKind, Result};
use crate::message::{names, Body, Headers, Message};
use crate::metrics::{self as m, Labels};
use crate::trace::TraceContext;

/// Options for serving an endpoint.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServeOptions {
    /// Calls handled at once by this instance; further calls are refused with
    /// `Overloaded` rather than queued without bound. Default 1024.
    pub max_in_flight: usize,
    /// The largest request body, in bytes, this instance accepts; a larger
    /// request is refused with `PayloadTooLarge` without running the
    /// handler. `None` (the default) leaves only the transport's limit.
    pub max_request_bytes: Option<usize>,
    /// Instance id to serve as; random when `None`.
    pub instance: Option<InstanceId>,
    /// How long this instance remembers the answer of a unary call that
    /// carried an idempotency key, to repeat it to a retry instead of running
    /// the handler again. Default 2 minutes.
    pub idempotency_window: Duration,
    /// Answers remembered at once, oldest evicted first; 0 turns
    /// deduplication off. Memory is bounded by this × the largest reply.
    /// Default 1024.
    pub idempotency_max_entries: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            max_in_flight: 1024,
            max_request_bytes: None,
            instance: None,
            idempotency_window: Duration::from_secs(120),
            idempotency_max_entries: 1024,
        }
    }
}

impl ServeOptions {
    /// Set [`max_in_flight`](ServeOptions::max_in_flight).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Set [`max_request_bytes`](ServeOptions::max_request_bytes).
    ///
    /// ```
    /// # use plane_core::request::ServeOptions;
    /// let options = ServeOptions::default().max_request_bytes(64 * 1024);
    /// assert_eq!(options.max_request_bytes, Some(64 * 1024));
    /// ```
    pub fn max_request_bytes(mut self, n: usize) -> Self {
        self.max_request_bytes = Some(n);
        self
    }

    /// Set [`instance`](ServeOptions::instance).
    pub fn instance(mut self, id: InstanceId) -> Self {
        self.instance = Some(id);
        self
    }

    /// Set [`idempotency_window`](ServeOptions::idempotency_window) and
    /// [`idempotency_max_entries`](ServeOptions::idempotency_max_entries).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use plane_core::request::ServeOptions;
    /// let options = ServeOptions::default().idempotency(Duration::from_secs(30), 10_000);
    /// ```
    pub fn idempotency(mut self, window: Duration, max_entries: usize) -> Self {
        self.idempotency_window = window;
        self.idempotency_max_entries = max_entries;
        self
    }
}

/// The graceful-stop flag of one call.
#[derive(Default)]
struct StopState {
    flag: AtomicBool,
    notify: Notify,
}

impl StopState {
    fn request(&self) {
        self.flag.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.flag.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }
}

/// A call as the handler sees it.
pub struct Request {
    /// The call's id.
    pub id: RequestId,
    /// The endpoint called.
    pub endpoint: Arc<str>,
    /// The instance serving it.
    pub instance: InstanceId,
    /// Headers and body as the caller sent them (plane's own control headers removed).
    pub message: Message,
    /// When the caller stops waiting, if it set a timeout.
    pub deadline: Option<Instant>,
    stop: Arc<StopState>,
    trace: Option<TraceContext>,
}

impl Request {
    /// Request headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// Request body.
    pub fn body(&self) -> &Body {
        &self.message.body
    }

    /// The caller's trace context (from `traceparent` / `tracestate`), if it
    /// sent a valid one. The handler itself runs in a child of it, so calls
    /// it makes continue the trace.
    pub fn trace_context(&self) -> Option<&TraceContext> {
        self.trace.as_ref()
    }

    /// The caller's idempotency key, if it sent one: the same for every retry
    /// of one logical call, for handlers that deduplicate in shared state.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.message.headers.get(names::IDEMPOTENCY_KEY)
    }

    /// Whether the caller asked for a graceful stop.
    pub fn stop_requested(&self) -> bool {
        self.stop.flag.load(Ordering::Acquire)
    }

    /// Resolves when the caller asks for a graceful stop. A kill never
    /// resolves this: it drops the handler's future instead.
    pub async fn stopped(&self) {
        self.stop.wait().await
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("endpoint", &self.endpoint)
            .field("message", &self.message)
            .finish()
    }
}

/// Where a streaming handler sends its replies.
pub struct Responder {
    sink: Arc<dyn ReplySink>,
    max_payload: usize,
    /// Set once a reply went out this way: such a call's answer is a stream,
    /// which the idempotency cache does not repeat.
    used: Arc<AtomicBool>,
    labels: Labels,
}

impl Responder {
    /// Send one reply, waiting while the caller's window is full.
    ///
    /// # Errors
    /// `PayloadTooLarge` for a reply over the backend's limit (nothing is sent);
    /// `Cancelled` or `Disconnected` once the caller is gone, which tells the
    /// handler to give up.
    pub async fn send(&self, reply: impl Into<Message>) -> Result<()> {
        let reply = reply.into();
        let len = reply.payload_len();
        if len > self.max_payload {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "reply of {len} bytes exceeds the limit of {}",
                    self.max_payload
                ),
            ));
        }
        self.used.store(true, Ordering::Release);
        self.labels
            .counter(m::SERVER_BYTES_SENT)
            .increment(len as u64);
        self.sink.send(Frame::Data(reply)).await
    }
}

/// Application code that serves an endpoint.
///
/// Return `Ok(Some(reply))` to send a final reply with the end marker (what a
/// unary handler does), `Ok(None)` to end a stream after the replies sent
/// through the [`Responder`], or `Err(e)` to end the call with a typed error.
/// Use [`unary_fn`] and [`handler_fn`] to build one from a closure.
pub trait Handler: Send + Sync + 'static {
    /// Handle one call.
    fn handle(
        &self,
        request: Request,
        responder: Responder,
    ) -> BoxFuture<'static, Result<Option<Message>>>;
}

/// A handler from `Fn(Request) -> impl Future<Output = Result<impl Into<Message>>>`.
pub struct UnaryFn<F>(F);

/// A handler from `Fn(Request, Responder) -> impl Future<Output = Result<()>>`.
pub struct HandlerFn<F>(F);

/// Build a unary handler from an async closure.
///
/// ```
/// # use plane_core::request::{unary_fn, Request};
/// let echo = unary_fn(|req: Request| async move { Ok(req.message) });
/// ```
pub fn unary_fn<F, Fut, R>(f: F) -> UnaryFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Into<Message>,
{
    UnaryFn(f)
}

/// Build a streaming handler from an async closure.
///
/// ```
/// # use plane_core::request::{handler_fn, Request, Responder};
/// let count = handler_fn(|_req: Request, out: Responder| async move {
///     for i in 0..3u8 {
///         out.send(vec![i]).await?;
///     }
///     Ok(())
/// });
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Request, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    HandlerFn(f)
}

impl<F, Fut, R> Handler for UnaryFn<F>
where
    F: Fn(Request) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R>> + Send + 'static,
    R: Into<Message>,
{
    fn handle(
        &self,
        request: Request,
        _: Responder,
    ) -> BoxFuture<'static, Result<Option<Message>>> {
        let fut = (self.0)(request);
        Box::pin(async move { fut.await.map(|r| Some(r.into())) })
    }
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(Request, Responder) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    fn handle(
        &self,
        request: Request,
        responder: Responder,
    ) -> BoxFuture<'static, Result<Option<Message>>> {
        let fut = (self.0)(request, responder);
        Box::pin(async move { fut.await.map(|()| None) })
    }
}

/// A call as a backend received it, before admission.
#[derive(Debug)]
pub struct Incoming {
    /// The call's id.
    pub id: RequestId,
    /// Headers and body, including plane's control headers.
    pub message: Message,
    /// Whether the caller expects a stream (and so an `Accepted` prologue).
    pub stream: bool,
}

struct Control {
    stop: Arc<StopState>,
    abort: Option<AbortHandle>,
    /// A kill that arrived before the task's abort handle was recorded.
    killed: bool,
}

struct Shared {
    endpoint: Arc<str>,
    backend: &'static str,
    labels: Labels,
    idempotency: Option<Arc<Cache>>,
    instance: InstanceId,
    handler: Arc<dyn Handler>,
    max_in_flight: usize,
    max_request_bytes: Option<usize>,
    max_payload: usize,
    in_flight: AtomicUsize,
    accepting: AtomicBool,
    calls: Mutex<HashMap<RequestId, Control>>,
    idle: Notify,
}

/// The server runtime of one endpoint instance. Backends hand it every
/// incoming call and every stop or kill; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// Releases an admitted call's slot however its task ends (return, kill,
/// panic), so cancellation can never leak in-flight capacity.
struct Slot {
    shared: Arc<Shared>,
    id: RequestId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
        self.shared.labels.gauge(m::SERVER_IN_FLIGHT).decrement(1.0);
        if self.shared.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.idle.notify_waiters();
        }
    }
}

impl Dispatcher {
    /// The runtime of one endpoint instance. [`Requests::serve`](crate::Requests::serve)
    /// builds one for every served instance; a backend's own tests build one
    /// directly to exercise its routing without a handle.
    pub fn new(
        endpoint: &str,
        instance: InstanceId,
        handler: Arc<dyn Handler>,
        options: &ServeOptions,
        max_payload: usize,
        backend: &'static str,
    ) -> Self {
        let endpoint: Arc<str> = Arc::from(endpoint);
        Dispatcher {
            shared: Arc::new(Shared {
                labels: Labels::new()
                    .with("endpoint", endpoint.clone())
                    .with("backend", backend),
                endpoint,
                backend,
                idempotency: (options.idempotency_max_entries > 0).then(|| {
                    Cache::new(options.idempotency_window, options.idempotency_max_entries)
                }),
                instance,
                handler,
                max_in_flight: options.max_in_flight,
                max_request_bytes: options.max_request_bytes,
                max_payload,
                in_flight: AtomicUsize::new(0),
                accepting: AtomicBool::new(true),
                calls: Mutex::new(HashMap::new()),
                idle: Notify::new(),
            }),
        }
    }

    /// The endpoint served.
    pub fn endpoint(&self) -> &str {
        &self.shared.endpoint
    }

    /// The instance served as.
    pub fn instance(&self) -> InstanceId {
        self.shared.instance
    }

    /// Calls currently being handled.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight.load(Ordering::Acquire)
    }

    /// Whether new calls are still admitted.
    pub fn is_accepting(&self) -> bool {
        self.shared.accepting.load(Ordering::Acquire)
    }

    /// Admit and run one call, replying through `sink`. Never blocks: a call
    /// that cannot be admitted is refused in-band with a typed error
    /// (`PayloadTooLarge` for a body over
    /// [`max_request_bytes`](ServeOptions::max_request_bytes), `Overloaded`
    /// when full, `NoResponders` when draining, `InvalidArgument` for
    /// malformed control headers). Must be called within a tokio runtime.
    ///
    /// A unary call whose idempotency key was answered within the window is
    /// answered again from the cache, without admission and without running
    /// the handler; one whose key is being handled right now waits for that
    /// call and then gets its answer (see [`ServeOptions::idempotency`]).
    pub fn dispatch(&self, incoming: Incoming, sink: Arc<dyn ReplySink>) {
        let shared = &self.shared;
        let labels = &shared.labels;
        labels
            .counter(m::SERVER_BYTES_RECEIVED)
            .increment(incoming.message.payload_len() as u64);
        let refuse = |error: Error| {
            count_outcome(labels, Err(error.kind()));
            let sink = sink.clone();
            tokio::spawn(async move {
                // The caller may already be gone; there is nobody else to tell.
                let _ = sink.send_error(error).await;
            });
        };
        // First, before the cache and admission: the refusal then costs no
        // slot, and the cache can hold no answer to a request this limit
        // refuses, since it was never handled.
        if let Some(max) = shared.max_request_bytes {
            let len = incoming.message.body.len();
            if len > max {
                return refuse(Error::new(
                    ErrorKind::PayloadTooLarge,
                    format!("request body of {len} bytes exceeds this endpoint's limit of {max}"),
                ));
            }
        }
        // Streams are not repeated from the cache: their answer is the whole
        // stream, and a retried stream is only ever one that got no reply.
        let idempotency = match (&shared.idempotency, incoming.stream) {
            (Some(cache), false) => incoming
                .message
                .headers
                .get(names::IDEMPOTENCY_KEY)
                .map(|key| (cache.clone(), key.to_owned())),
            _ => None,
        };
        if let Some((cache, key)) = &idempotency {
            if let Some(answer) = cache.lookup(key) {
                labels.counter(m::SERVER_REPLAYS).increment(1);
                tracing::debug!(endpoint = %shared.endpoint, request_id = %incoming.id, "answered a repeated idempotency key from the cache");
                let labels = labels.clone();
                tokio::spawn(async move {
                    let _ = send_answer(&*sink, answer, &labels).await;
                });
                return;
            }
        }
        if !shared.accepting.load(Ordering::Acquire) {
            return refuse(Error::new(
                ErrorKind::NoResponders,
                "endpoint instance is draining",
            ));
        }
        if shared.in_flight.fetch_add(1, Ordering::AcqRel) >= shared.max_in_flight {
            shared.in_flight.fetch_sub(1, Ordering::AcqRel);
            return refuse(Error::new(
                ErrorKind::Overloaded,
                format!(
                    "endpoint instance has {} calls in flight",
                    shared.max_in_flight
                ),
            ));
        }
        labels.gauge(m::SERVER_IN_FLIGHT).increment(1.0);
        let slot = Slot {
            shared: shared.clone(),
            id: incoming.id,
        };
        let Incoming {
            id,
            mut message,
            stream,
        } = incoming;
        let deadline = match message.headers.remove(names::TIMEOUT_MS) {
            None => None,
            Some(ms) => match ms.parse::<u64>() {
                Ok(ms) => Some(Instant::now() + Duration::from_millis(ms)),
                Err(_) => {
                    drop(slot);
                    return refuse(Error::new(
                        ErrorKind::InvalidArgument,
                        format!("invalid {} header", names::TIMEOUT_MS),
                    ));
                }
            },
        };
        let trace = TraceContext::from_headers(&message.headers);
        let span = tracing::info_span!(
            "plane.handle",
            endpoint = %shared.endpoint,
            backend = shared.backend,
            instance = %shared.instance,
            request_id = %id,
            stream,
            trace_id = trace.as_ref().map(|t| t.trace_id()),
            parent_span_id = trace.as_ref().map(|t| t.span_id()),
        );
        let stop = Arc::new(StopState::default());
        shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                id,
                Control {
                    stop: stop.clone(),
                    abort: None,
                    killed: false,
                },
            );
        let request = Request {
            id,
            endpoint: shared.endpoint.clone(),
            instance: shared.instance,
            message,
            deadline,
            stop,
            trace: trace.clone(),
        };
        let used = Arc::new(AtomicBool::new(false));
        let responder = Responder {
            sink: sink.clone(),
            max_payload: shared.max_payload,
            used: used.clone(),
            labels: labels.clone(),
        };
        let handler = shared.handler.clone();
        let max_payload = shared.max_payload;
        let labels = labels.clone();
        let task = tokio::spawn(
            async move {
                let _slot = slot;
                let started = std::time::Instant::now();
                if stream && sink.send(Frame::Accepted).await.is_err() {
                    count_outcome(&labels, Err(ErrorKind::Cancelled));
                    return;
                }
                let work = async move {
                    let mut owner = None;
                    if let Some((cache, key)) = idempotency {
                        loop {
                            match cache.claim(&key) {
                                Claim::Cached(answer) => return Run::Replayed(answer),
                                // The running call's end resolves this, however it ends.
                                Claim::Wait(mut done) => {
                                    let _ = done.changed().await;
                                }
                                Claim::Owner(o) => {
                                    owner = Some(o);
                                    break;
                                }
                            }
                        }
                    }
                    let run = AssertUnwindSafe(handler.handle(request, responder)).catch_unwind();
                    // Calls the handler makes continue the caller's trace.
                    let outcome = match trace {
                        Some(ctx) => ctx.child().scope(run).await,
                        None => run.await,
                    };
                    Run::Handled(outcome, owner)
                };
                let run = match deadline {
                    Some(d) => tokio::time::timeout_at(d, work)
                        .await
                        .unwrap_or(Run::DeadlineExceeded),
                    None => work.await,
                };
                // The caller may have gone; failures to reply are not errors here.
                let _ = match run {
                    Run::Replayed(answer) => {
                        labels.counter(m::SERVER_REPLAYS).increment(1);
                        send_answer(&*sink, answer, &labels).await
                    }
                    Run::DeadlineExceeded => {
                        labels.counter(m::SERVER_TIMEOUTS).increment(1);
                        count_outcome(&labels, Err(ErrorKind::Timeout));
                        sink.send_error(Error::new(
                            ErrorKind::Timeout,
                            "handler exceeded the deadline",
                        ))
                        .await
                    }
                    Run::Handled(outcome, mut owner) => {
                        let streamed = used.load(Ordering::Acquire);
                        let answer = match outcome {
                            // A final reply is held to the same limit as the replies a
                            // `Responder` sends; the caller learns why instead of the
                            // transport failing (or, in memory, passing it silently).
                            Ok(Ok(Some(reply))) if reply.payload_len() > max_payload => {
                                let len = reply.payload_len();
                                Err(Error::new(
                                    ErrorKind::PayloadTooLarge,
                                    format!(
                                        "reply of {len} bytes exceeds the limit of {max_payload}"
                                    ),
                                ))
                            }
                            Ok(Ok(reply)) => Ok(reply),
                            Ok(Err(e)) => Err(e),
                            Err(_panic) => {
                                tracing::error!("request handler panicked");
                                if let Some(owner) = owner.take() {
                                    owner.complete(None);
                                }
                                Err(Error::new(ErrorKind::Other, "handler panicked"))
                            }
                        };
                        if let Some(owner) = owner {
                            // Remember only a complete, repeatable answer: not a
                            // stream, not a condition of the moment that a retry
                            // should get the chance to overcome.
                            let keep = match &answer {
                                _ if streamed => None,
                                Ok(Some(reply)) => Some(Answer::Reply(reply.clone())),
                                Ok(None) => None,
                                Err(e) if e.is_retryable() => None,
                                Err(e) => Some(Answer::error(e)),
                            };
                            owner.complete(keep);
                        }
                        count_outcome(&labels, answer.as_ref().map(|_| ()).map_err(Error::kind));
                        match answer {
                            Ok(Some(reply)) => {
                                labels
                                    .counter(m::SERVER_BYTES_SENT)
                                    .increment(reply.payload_len() as u64);
                                sink.send(Frame::Last(reply)).await
                            }
                            Ok(None) => sink.send(Frame::End).await,
                            Err(e) => sink.send_error(e).await,
                        }
                    }
                };
                labels
                    .histogram(m::SERVER_DURATION)
                    .record(started.elapsed().as_secs_f64());
            }
            .instrument(span),
        );
        if let Some(control) = shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            if control.killed {
                task.abort();
            }
            control.abort = Some(task.abort_handle());
        }
    }

    /// Ask the handler of `id` to stop gracefully. Unknown ids are ignored: the
    /// call may have finished while the request crossed the network.
    pub fn stop(&self, id: RequestId) {
        if let Some(c) = self.lock_calls().get(&id) {
            c.stop.request();
        }
    }

    /// Kill the handler of `id` now. Unknown ids are ignored.
    pub fn kill(&self, id: RequestId) {
        if let Some(c) = self.lock_calls().get_mut(&id) {
            c.killed = true;
            if let Some(abort) = &c.abort {
                abort.abort();
            }
        }
    }

    /// Stop admitting new calls.
    pub fn stop_accepting(&self) {
        self.shared.accepting.store(false, Ordering::Release);
    }

    /// Kill every call in flight; returns how many were killed.
    pub fn kill_all(&self) -> usize {
        let mut calls = self.lock_calls();
        for c in calls.values_mut() {
            c.killed = true;
            if let Some(abort) = &c.abort {
                abort.abort();
            }
        }
        calls.len()
    }

    /// Wait until no call is in flight, or `timeout` passes. Returns whether idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight() == 0;
            }
        }
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<RequestId, Control>> {
        self.shared.calls.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How one admitted call's work ended.
enum Run {
    /// A repeated idempotency key, answered with the first call's answer.
    Replayed(Answer),
    /// The handler ran (or panicked); the key's owner, if the call had one.
    Handled(
        std::result::Result<Result<Option<Message>>, Box<dyn std::any::Any + Send>>,
        Option<Owner>,
    ),
    /// The caller's deadline passed first.
    DeadlineExceeded,
}

fn count_outcome(labels: &Labels, outcome: std::result::Result<(), ErrorKind>) {
    let name = match outcome {
        Ok(()) => "ok",
        Err(kind) => {
            labels
                .counter_with(m::SERVER_ERRORS, "kind", kind.as_str())
                .increment(1);
            kind.as_str()
        }
    };
    labels
        .counter_with(m::SERVER_REQUESTS, "outcome", name)
        .increment(1);
}

async fn send_answer(sink: &dyn ReplySink, answer: Answer, labels: &Labels) -> Result<()> {
    labels
        .counter_with(m::SERVER_REQUESTS, "outcome", answer.outcome())
        .increment(1);
    match answer {
        Answer::Reply(reply) => {
            labels
                .counter(m::SERVER_BYTES_SENT)
                .increment(reply.payload_len() as u64);
            sink.send(Frame::Last(reply)).await
        }
        Answer::Error(kind, message) => sink.send_error(Error::new(kind, message)).await,
    }
}

/// A served endpoint instance. Keep it alive while serving: dropping it (or
/// [`abort`](Server::abort)) stops routing and kills in-flight calls at once,
/// as a crashed process would; [`drain`](Server::drain) is the graceful way.
pub struct Server {
    endpoint: String,
    instance: InstanceId,
    dispatcher: Dispatcher,
    transport: Box<dyn ServeTransport>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("endpoint", &self.endpoint)
            .field("instance", &self.instance)
            .finish()
    }
}

impl Server {
    pub(crate) fn new(
        endpoint: &str,
        instance: InstanceId,
        dispatcher: Dispatcher,
        transport: Box<dyn ServeTransport>,
    ) -> Self {
        Server {
            endpoint: endpoint.to_owned(),
            instance,
            dispatcher,
            transport,
        }
    }

    /// The endpoint served.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// This instance's id, for direct routing.
    pub fn instance(&self) -> InstanceId {
        self.instance
    }

    /// Calls currently being handled.
    pub fn in_flight(&self) -> usize {
        self.dispatcher.in_flight()
    }

    /// Stop accepting, let in-flight calls finish for up to `grace`, then kill
    /// what is left. Returns how many calls had to be killed.
    pub async fn drain(self, grace: Duration) -> usize {
        self.transport.close();
        self.dispatcher.stop_accepting();
        self.dispatcher.wait_idle(grace).await;
        self.dispatcher.kill_all()
        // Drop then closes the (already closed) transport again: idempotent.
    }

    /// Stop at once, killing in-flight calls without their end markers.
    pub fn abort(self) {}
}

impl Drop for Server {
    fn drop(&mut self) {
        self.transport.close();
        self.dispatcher.stop_accepting();
        self.dispatcher.kill_all();
    }
}
