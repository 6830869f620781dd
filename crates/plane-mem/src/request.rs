//! The in-memory request plane.
//!
//! The hub maps each endpoint to its live instances. A call picks one with a
//! per-endpoint [`Balancer`], opens a bounded reply channel, and hands the call
//! to that instance's [`Dispatcher`], which owns everything with semantics
//! (admission, prologue, deadline, stop and kill, drain). This module only
//! moves [`Frame`]s, as typed values: there is no wire in between.
//!
//! Two properties the rest of the plane relies on are made real here:
//!
//! - Backpressure: the reply channel holds at most `REPLY_WINDOW` frames, so
//!   a caller that stops reading stops the handler's `Responder::send`
//!   instead of growing a queue.
//! - Loss of the caller is a kill: dropping the reply transport before the end
//!   marker kills the handler, and a handler still sending notices at once
//!   because its sink fails with `Cancelled`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use futures_util::future::BoxFuture;
use tokio::sync::mpsc;

use super::MemConfig;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::request::*;

/// Frames buffered between a handler and its caller. Small enough that a
/// stalled reader holds back a fast streaming handler after a few dozen
/// replies, large enough that a reader keeping up rarely makes it wait.
const REPLY_WINDOW: usize = 32;

/// One live instance of an endpoint, as the hub routes to it.
struct Registration {
    instance: InstanceId,
    dispatcher: Dispatcher,
}

/// The instances of one endpoint and the balancer that takes turns among them.
#[derive(Default)]
struct Endpoint {
    balancer: Balancer,
    /// In registration order, so round-robin visits instances predictably.
    instances: Vec<Arc<Registration>>,
}

/// Endpoints to live instances, shared by every handle of one [`Hub`](super::Hub).
#[derive(Default)]
pub(crate) struct RequestHub {
    endpoints: Mutex<HashMap<String, Endpoint>>,
}

impl RequestHub {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Endpoint>> {
        // Nothing panics while holding this lock except on allocation
        // failure; a poisoned map is still consistent, so keep serving.
        self.endpoints.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The dispatcher of the instance `route` picks for `endpoint`.
    fn route(&self, endpoint: &str, route: Route) -> Result<Dispatcher> {
        let endpoints = self.lock();
        let Some(ep) = endpoints.get(endpoint) else {
            return Err(Error::new(
                ErrorKind::NoResponders,
                "no instance serves the endpoint",
            ));
        };
        // The dispatcher's own count of admitted calls is the load signal for
        // power-of-two choices: it rises synchronously in `dispatch` and falls
        // when a call's task ends however it ends, so it cannot drift.
        let i = ep.balancer.pick(
            route,
            &ep.instances,
            |r| r.instance,
            |r| r.dispatcher.in_flight(),
        )?;
        Ok(ep.instances[i].dispatcher.clone())
    }

    /// The instances serving `endpoint` now, in registration order.
    fn instances(&self, endpoint: &str) -> Vec<InstanceId> {
        self.lock()
            .get(endpoint)
            .map(|ep| ep.instances.iter().map(|r| r.instance).collect())
            .unwrap_or_default()
    }

    fn register(&self, endpoint: &str, registration: Arc<Registration>) -> Result<()> {
        let mut endpoints = self.lock();
        let ep = endpoints.entry(endpoint.to_owned()).or_default();
        if ep
            .instances
            .iter()
            .any(|r| r.instance == registration.instance)
        {
            // Two live instances under one id would make direct routing
            // ambiguous; the first keeps serving.
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!(
                    "instance {} already serves the endpoint",
                    registration.instance
                ),
            ));
        }
        ep.instances.push(registration);
        Ok(())
    }

    /// Remove exactly `registration` (not a later one under the same id) and
    /// forget the endpoint once nobody serves it, so the map does not grow
    /// with every endpoint ever served.
    fn unregister(&self, endpoint: &str, registration: &Arc<Registration>) {
        let mut endpoints = self.lock();
        if let Some(ep) = endpoints.get_mut(endpoint) {
            ep.instances.retain(|r| !Arc::ptr_eq(r, registration));
            if ep.instances.is_empty() {
                endpoints.remove(endpoint);
            }
        }
    }

    #[cfg(test)]
    fn endpoint_count(&self) -> usize {
        self.lock().len()
    }
}

/// The in-memory request backend: every request capability, in one process.
///
/// Serving a second live instance of an endpoint under an [`InstanceId`]
/// already serving it is refused with `AlreadyExists`, since direct routing
/// could not tell the two apart.
pub struct MemRequests {
    caps: RequestCapabilities,
    hub: Arc<RequestHub>,
}

impl MemRequests {
    pub(crate) fn new(hub: Arc<RequestHub>, config: &MemConfig) -> Self {
        MemRequests {
            caps: RequestCapabilities::complete(config.max_payload),
            hub,
        }
    }
}

impl RequestBackend for MemRequests {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn capabilities(&self) -> &RequestCapabilities {
        &self.caps
    }

    async fn call(&self, call: Call) -> Result<Box<dyn ReplyTransport>> {
        let dispatcher = self.hub.route(&call.endpoint, call.route)?;
        let (tx, rx) = mpsc::channel(REPLY_WINDOW);
        let incoming = Incoming {
            id: call.id,
            message: call.message,
            stream: call.stream,
        };
        dispatcher.dispatch(incoming, Arc::new(MemSink { tx }));
        Ok(Box::new(MemReply {
            id: call.id,
            rx,
            dispatcher,
            open: true,
        }))
    }

    async fn broadcast(&self, call: &Call) -> Result<Reach> {
        Ok(Reach::Instances(self.hub.instances(&call.endpoint)))
    }

    async fn serve(&self, dispatcher: Dispatcher) -> Result<Box<dyn ServeTransport>> {
        let endpoint = dispatcher.endpoint().to_owned();
        let registration = Arc::new(Registration {
            instance: dispatcher.instance(),
            dispatcher,
        });
        self.hub.register(&endpoint, registration.clone())?;
        Ok(Box::new(MemServe {
            hub: Arc::downgrade(&self.hub),
            endpoint,
            registration,
            closed: AtomicBool::new(false),
        }))
    }
}

/// The handler's end of a call's reply channel.
struct MemSink {
    tx: mpsc::Sender<Result<Frame>>,
}

fn caller_gone() -> Error {
    Error::new(ErrorKind::Cancelled, "the caller is gone")
}

impl ReplySink for MemSink {
    fn send(&self, frame: Frame) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move { self.tx.send(Ok(frame)).await.map_err(|_| caller_gone()) })
    }

    fn send_error(&self, error: Error) -> BoxFuture<'_, Result<()>> {
        // Only kind and message cross a real wire. Keeping the handler's
        // source, op or backend here would let in-process callers depend on
        // details no networked backend can deliver.
        let error = Error::new(error.kind(), error.message().to_owned());
        Box::pin(async move { self.tx.send(Err(error)).await.map_err(|_| caller_gone()) })
    }
}

/// The caller's end of a call's reply channel.
struct MemReply {
    id: RequestId,
    rx: mpsc::Receiver<Result<Frame>>,
    /// Where stop and kill go. A clone rather than a weak reference because
    /// `Dispatcher` offers none; it keeps the instance's runtime alive only
    /// while this call's replies are held.
    dispatcher: Dispatcher,
    /// No end marker, error, or closed channel seen, and no kill sent.
    open: bool,
}

impl ReplyTransport for MemReply {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        let item = match self.rx.poll_recv(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        if matches!(
            item,
            None | Some(Err(_)) | Some(Ok(Frame::Last(_) | Frame::End))
        ) {
            self.open = false;
        }
        Poll::Ready(item)
    }

    fn cancel(&mut self, how: Cancel) {
        match how {
            Cancel::Stop => self.dispatcher.stop(self.id),
            Cancel::Kill => {
                self.open = false;
                self.dispatcher.kill(self.id);
            }
        }
    }
}

impl Drop for MemReply {
    fn drop(&mut self) {
        // Dropping the transport of an unfinished call is this backend's
        // connection loss, which counts as a kill: a handler that is not
        // sending (and so would not notice the closed channel) must not keep
        // working for nobody.
        if self.open {
            self.dispatcher.kill(self.id);
        }
    }
}

/// One instance's registration in the hub; closing it stops routing.
struct MemServe {
    hub: Weak<RequestHub>,
    endpoint: String,
    registration: Arc<Registration>,
    closed: AtomicBool,
}

impl ServeTransport for MemServe {
    fn close(&self) {
        if !self.closed.swap(true, Ordering::AcqRel) {
            if let Some(hub) = self.hub.upgrade() {
                hub.unregister(&self.endpoint, &self.registration);
            }
        }
    }
}

impl Drop for MemServe {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::Hub;
    use crate::Requests;
    use plane_core::message::Message;

    fn plane() -> (Arc<Hub>, Requests) {
        let hub = Hub::new();
        let requests = hub.requests(&MemConfig::default());
        (hub, requests)
    }

    fn echo() -> impl Handler {
        unary_fn(|req: Request| async move { Ok(req.message) })
    }

    /// Replies with the serving instance's id.
    fn whoami() -> impl Handler {
        unary_fn(|req: Request| async move { Ok(req.instance.to_string()) })
    }

    /// Sets its flag when dropped: observes a killed handler future.
    struct DropFlag(Arc<AtomicBool>);
    impl Drop for DropFlag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..200 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[test]
    fn declares_every_request_capability() {
        let (_hub, requests) = plane();
        let caps = requests.capabilities();
        assert!(caps.streaming && caps.cancellation && caps.direct);
        assert!(caps.round_robin && caps.random && caps.power_of_two);
        assert_eq!(caps.max_payload, MemConfig::default().max_payload);
    }

    #[tokio::test]
    async fn no_responders_and_unregistered_endpoint_is_forgotten() {
        let (hub, requests) = plane();
        let err = requests.call("nobody", "x").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoResponders);

        let server = requests.serve("echo", echo()).await.unwrap();
        assert_eq!(hub.requests.endpoint_count(), 1);
        assert_eq!(requests.call("echo", "hi").await.unwrap().to_bytes(), "hi");
        drop(server);
        assert_eq!(hub.requests.endpoint_count(), 0);
        let err = requests.call("echo", "hi").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoResponders);
    }

    #[tokio::test]
    async fn round_robin_and_direct_routing() {
        let (_hub, requests) = plane();
        let mut servers = Vec::new();
        for _ in 0..3 {
            servers.push(requests.serve("who", whoami()).await.unwrap());
        }
        let mut seen = Vec::new();
        for _ in 0..6 {
            let body = requests.call("who", "").await.unwrap();
            seen.push(String::from_utf8(body.to_bytes().to_vec()).unwrap());
        }
        let ids: Vec<String> = servers.iter().map(|s| s.instance().to_string()).collect();
        let expected: Vec<String> = ids.iter().chain(ids.iter()).cloned().collect();
        assert_eq!(seen, expected, "round-robin takes turns in serving order");

        for server in &servers {
            let call = Call::new("who", "").route(Route::Instance(server.instance()));
            let reply = requests.call_with(call).await.unwrap();
            assert_eq!(reply.body.to_bytes(), server.instance().to_string());
        }
        let call = Call::new("who", "").route(Route::Instance(InstanceId(7)));
        let err = requests.call_with(call).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NoResponders);
    }

    #[tokio::test]
    async fn duplicate_instance_refused_and_stale_close_is_harmless() {
        let (_hub, requests) = plane();
        let id = InstanceId(42);
        let opts = ServeOptions::default().instance(id);
        let first = requests
            .serve_with("dup", echo(), opts.clone())
            .await
            .unwrap();
        let err = requests
            .serve_with("dup", echo(), opts.clone())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::AlreadyExists);
        drop(first);
        // Re-serving under the same id works once the first is gone, and the
        // first's (idempotent) close cannot unregister the second.
        let second = requests.serve_with("dup", echo(), opts).await.unwrap();
        let call = Call::new("dup", "x").route(Route::Instance(id));
        assert_eq!(requests.call_with(call).await.unwrap().body.to_bytes(), "x");
        drop(second);
    }

    #[tokio::test]
    async fn stalled_reader_bounds_the_handler() {
        let (_hub, requests) = plane();
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let _server = requests
            .serve(
                "flood",
                handler_fn(move |_req: Request, out: Responder| {
                    let sent = counter.clone();
                    async move {
                        for i in 0..1000u32 {
                            out.send(i.to_be_bytes().to_vec()).await?;
                            sent.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(())
                    }
                }),
            )
            .await
            .unwrap();
        let mut replies = requests.stream(Call::new("flood", "")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let stalled = sent.load(Ordering::SeqCst);
        assert!(
            stalled <= REPLY_WINDOW + 1,
            "handler ran {stalled} replies ahead of a stalled reader"
        );
        let mut n = 0u32;
        while let Some(reply) = replies.next_reply().await {
            assert_eq!(reply.unwrap().body.to_bytes(), n.to_be_bytes().to_vec());
            n += 1;
        }
        assert_eq!(n, 1000);
    }

    #[tokio::test]
    async fn dropped_transport_kills_a_silent_handler() {
        let (_hub, requests) = plane();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        let server = requests
            .serve(
                "silent",
                unary_fn(move |_req: Request| {
                    let guard = DropFlag(flag.clone());
                    async move {
                        let _guard = guard;
                        std::future::pending::<()>().await;
                        Ok(Message::default())
                    }
                }),
            )
            .await
            .unwrap();
        let call = requests.call("silent", "");
        assert!(tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err());
        eventually("the handler to be killed", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
        eventually("the slot to be released", || server.in_flight() == 0).await;
    }

    #[tokio::test]
    async fn stop_reaches_the_handler_and_its_end_still_arrives() {
        let (_hub, requests) = plane();
        let _server = requests
            .serve(
                "stoppable",
                handler_fn(|req: Request, out: Responder| async move {
                    out.send("working").await?;
                    req.stopped().await;
                    out.send("stopped").await?;
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let mut replies = requests.stream(Call::new("stoppable", "")).await.unwrap();
        let first = replies.next_reply().await.unwrap().unwrap();
        assert_eq!(first.body.to_bytes(), "working");
        replies.stop();
        let last = replies.next_reply().await.unwrap().unwrap();
        assert_eq!(last.body.to_bytes(), "stopped");
        assert!(replies.next_reply().await.is_none());
    }

    #[tokio::test]
    async fn aborted_server_mid_stream_is_disconnected() {
        let (_hub, requests) = plane();
        let server = requests
            .serve(
                "vanish",
                handler_fn(|_req: Request, out: Responder| async move {
                    out.send("a").await?;
                    std::future::pending::<()>().await;
                    Ok(())
                }),
            )
            .await
            .unwrap();
        let mut replies = requests.stream(Call::new("vanish", "")).await.unwrap();
        assert_eq!(
            replies.next_reply().await.unwrap().unwrap().body.to_bytes(),
            "a"
        );
        server.abort();
        let err = replies.next_reply().await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Disconnected);
        assert!(replies.next_reply().await.is_none());
    }

    #[tokio::test]
    async fn handler_errors_arrive_as_kind_and_message_only() {
        let (_hub, requests) = plane();
        let _server = requests
            .serve(
                "fail",
                unary_fn(|_req: Request| async move {
                    Err::<Message, _>(
                        Error::new(ErrorKind::NotFound, "no such model")
                            .with_op("model.load")
                            .with_source(std::io::Error::other("disk")),
                    )
                }),
            )
            .await
            .unwrap();
        let err = requests.call("fail", "").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(err.message(), "no such model");
        assert!(err.op().is_none());
        assert!(std::error::Error::source(&err).is_none());
    }

    #[tokio::test]
    async fn oversized_unary_reply_is_refused_in_band() {
        let hub = Hub::new();
        let config = MemConfig {
            max_payload: 16,
            ..MemConfig::default()
        };
        let requests = hub.requests(&config);
        let _server = requests
            .serve(
                "big",
                unary_fn(|_req: Request| async move { Ok(vec![0u8; 17]) }),
            )
            .await
            .unwrap();
        let err = requests.call("big", "").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::PayloadTooLarge);
    }

    #[tokio::test]
    async fn full_instance_is_overloaded() {
        let (_hub, requests) = plane();
        let _server = requests
            .serve_with(
                "busy",
                unary_fn(|_req: Request| async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    Ok(Message::default())
                }),
                ServeOptions::default().max_in_flight(1),
            )
            .await
            .unwrap();
        let slow = requests.stream(Call::new("busy", "")).await.unwrap();
        let err = requests.call("busy", "").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        drop(slow);
    }
}
