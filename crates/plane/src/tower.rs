//! A [`tower`](https://docs.rs/tower) adapter (feature `tower`): a plane
//! client as a `tower::Service`, and a `tower::Service` serving an endpoint.
//!
//! - [`RequestService`] is a `Service<Call>` over a [`Requests`] handle, so
//!   tower middleware (timeouts, rate limits, load shedding, your own layers)
//!   can sit in front of plane calls. Each call is a unary
//!   [`Requests::call_with`], with the handle's policies.
//! - [`ServiceHandler`] is a [`Handler`] built from a cloneable
//!   `Service<Request>`, so an existing tower service can serve a plane
//!   endpoint. It answers unary calls: the service's response is the reply.
//!
//! ```
//! use plane::request::{Call, Request};
//! use plane::tower::{RequestService, Service, ServiceHandler};
//! # use std::convert::Infallible;
//! # use std::future::{ready, Ready};
//! # use std::task::{Context, Poll};
//! # #[derive(Clone)]
//! # struct Echo;
//! # impl Service<Request> for Echo {
//! #     type Response = plane::Message;
//! #     type Error = plane::Error;
//! #     type Future = Ready<plane::Result<plane::Message>>;
//! #     fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<plane::Result<()>> {
//! #         Poll::Ready(Ok(()))
//! #     }
//! #     fn call(&mut self, req: Request) -> Self::Future {
//! #         ready(Ok(req.message))
//! #     }
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane::Result<()> {
//! let requests = plane::registry().requests("mem://tower-doc").await?;
//! // `Echo` is any `tower::Service<Request>` whose response is a `Message`.
//! let _server = requests.serve("echo", ServiceHandler::new(Echo)).await?;
//!
//! let mut client = RequestService::new(requests);
//! std::future::poll_fn(|cx| client.poll_ready(cx)).await?;
//! let reply = client.call(Call::new("echo", "hi")).await?;
//! assert_eq!(reply.body.to_bytes(), "hi");
//! # Ok(()) }
//! ```

use std::fmt;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use plane_core::request::{Call, Handler, Request, Responder};
use plane_core::{Error, Message, Requests, Result};
/// The `tower::Service` trait (from `tower-service`), re-exported so users of
/// this module need no direct dependency.
pub use tower_service::Service;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A [`Requests`] handle as a `tower::Service<Call>`: each call is a unary
/// [`Requests::call_with`] (handle policies, retries and all) whose response is
/// the reply [`Message`].
///
/// `poll_ready` reflects the handle's
/// [`InFlightLimit`](plane_core::policy::InFlightLimit): without one it is
/// always ready; with one it is pending while every slot is taken, so tower's
/// backpressure layers (load shedding, buffering) see the limit. Readiness does
/// not reserve the slot: a call that loses it to another caller of the same
/// handle meets the limit's [`Overflow`](plane_core::policy::Overflow) policy,
/// as a direct call would.
///
/// Clones share the handle (and so its limit); each clone has its own
/// readiness state, as tower expects.
pub struct RequestService {
    requests: Requests,
    /// The wait for a free slot started by a pending `poll_ready`.
    waiting: Option<BoxFuture<()>>,
}

impl RequestService {
    /// Wrap a handle.
    pub fn new(requests: Requests) -> Self {
        RequestService {
            requests,
            waiting: None,
        }
    }

    /// The wrapped handle.
    pub fn requests(&self) -> &Requests {
        &self.requests
    }

    /// Whether a slot looks free right now, without waiting (always true
    /// without a limit).
    fn slot_free_now(&self) -> bool {
        match (
            self.requests.in_flight_limit(),
            self.requests.in_flight_slots(),
        ) {
            (Some(limit), Some((in_flight, waiting))) => {
                in_flight < limit.max_in_flight && waiting == 0
            }
            _ => true,
        }
    }
}

impl Clone for RequestService {
    fn clone(&self) -> Self {
        RequestService::new(self.requests.clone())
    }
}

impl fmt::Debug for RequestService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestService")
            .field("requests", &self.requests)
            .field("waiting", &self.waiting.is_some())
            .finish()
    }
}

impl Service<Call> for RequestService {
    type Response = Message;
    type Error = Error;
    type Future = BoxFuture<Result<Message>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<()>> {
        // The cheap check first, so a service with free slots never allocates.
        if self.waiting.is_none() && self.slot_free_now() {
            return Poll::Ready(Ok(()));
        }
        let requests = &self.requests;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(requests.slot_available()));
        match waiting.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.waiting = None;
                Poll::Ready(Ok(()))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, call: Call) -> Self::Future {
        let requests = self.requests.clone();
        Box::pin(async move { requests.call_with(call).await })
    }
}

/// Maps a tower service's error to a plane [`Error`].
type MapErr<E> = Arc<dyn Fn(E) -> Error + Send + Sync>;

/// A [`Handler`] serving an endpoint with a cloneable `tower::Service<Request>`.
///
/// Each call clones the service (the usual tower pattern), waits for
/// `poll_ready` and calls it; its response becomes the final reply and its
/// error ends the call with a typed error, so the caller sees its
/// [`ErrorKind`](plane_core::ErrorKind). The service answers unary calls only:
/// it has no [`Responder`] to stream through. The service need not be `Sync`
/// (tower's boxed services are not): it is kept behind a lock taken only to
/// clone it.
pub struct ServiceHandler<S: Service<Request>> {
    service: Mutex<S>,
    map_err: MapErr<S::Error>,
}

impl<S> ServiceHandler<S>
where
    S: Service<Request>,
    S::Error: Into<Error> + 'static,
{
    /// A handler from a service whose error converts into a plane [`Error`].
    pub fn new(service: S) -> Self {
        ServiceHandler::with_map_err(service, Into::into)
    }
}

impl<S> ServiceHandler<S>
where
    S: Service<Request>,
    S::Error: 'static,
{
    /// A handler from any service, `map_err` turning its errors into plane
    /// errors (choose the [`ErrorKind`](plane_core::ErrorKind) callers see,
    /// e.g. a retryable one only for failures worth retrying).
    pub fn with_map_err(
        service: S,
        map_err: impl Fn(S::Error) -> Error + Send + Sync + 'static,
    ) -> Self {
        ServiceHandler {
            service: Mutex::new(service),
            map_err: Arc::new(map_err),
        }
    }
}

impl<S: Service<Request>> fmt::Debug for ServiceHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceHandler")
            .field("service", &std::any::type_name::<S>())
            .finish()
    }
}

impl<S> Handler for ServiceHandler<S>
where
    S: Service<Request> + Clone + Send + 'static,
    S::Response: Into<Message>,
    S::Error: 'static,
    S::Future: Send + 'static,
{
    fn handle(
        &self,
        request: Request,
        _: Responder,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Message>>> + Send + 'static>> {
        // A poisoned lock only means another clone panicked mid-`clone`; the
        // service itself was never handed out half-built.
        let mut service = self
            .service
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let map_err = self.map_err.clone();
        Box::pin(async move {
            poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(|e| map_err(e))?;
            let reply = service.call(request).await.map_err(|e| map_err(e))?;
            Ok(Some(reply.into()))
        })
    }
}
