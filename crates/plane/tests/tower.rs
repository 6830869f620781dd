//! The tower adapter (feature `tower`), over the in-memory backend.
#![cfg(feature = "tower")]

use std::cell::Cell;
use std::future::{poll_fn, ready, Ready};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use plane::policy::InFlightLimit;
use plane::request::{unary_fn, Call, Request};
use plane::tower::{RequestService, Service, ServiceHandler};
use plane::{Error, ErrorKind, Message, Requests};
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(5);

async fn mem(name: &str) -> Requests {
    plane_mem::registry()
        .requests(&format!("mem://tower-{name}"))
        .await
        .expect("the mem backend is always registered")
}

/// `poll_ready` then `call`, as tower's `ServiceExt::oneshot` would.
async fn ready_call<S: Service<R>, R>(
    service: &mut S,
    request: R,
) -> Result<S::Response, S::Error> {
    poll_fn(|cx| service.poll_ready(cx)).await?;
    service.call(request).await
}

/// A hand-written tower middleware: adds a header to every call it forwards.
#[derive(Clone)]
struct AddHeader<S> {
    inner: S,
    name: &'static str,
    value: &'static str,
}

impl<S: Service<Call>> Service<Call> for AddHeader<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, call: Call) -> S::Future {
        self.inner.call(call.header(self.name, self.value))
    }
}

#[tokio::test]
async fn a_call_through_a_tower_stack_reaches_a_plane_endpoint() {
    let requests = mem("stack").await;
    let _server = requests
        .serve(
            "tenant",
            unary_fn(|req: Request| {
                let tenant = req.headers().get("x-tenant").unwrap_or("none").to_owned();
                async move { Ok(tenant) }
            }),
        )
        .await
        .unwrap();
    let mut stack = AddHeader {
        inner: RequestService::new(requests),
        name: "x-tenant",
        value: "acme",
    };
    let reply = ready_call(&mut stack, Call::new("tenant", "who"))
        .await
        .unwrap();
    assert_eq!(reply.body.to_bytes(), "acme", "the layer's header arrived");
    // Plane errors come out of the stack typed.
    let e = ready_call(&mut stack, Call::new("nobody-serves-this", "x"))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
}

#[tokio::test]
async fn poll_ready_reflects_the_client_in_flight_limit() {
    let mut unlimited = RequestService::new(mem("unlimited").await);
    assert!(matches!(
        poll_fn(|cx| unlimited.poll_ready(cx)).now_or_never(),
        Some(Ok(()))
    ));

    let requests = mem("limited")
        .await
        .with_in_flight_limit(InFlightLimit::reject(1))
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve(
            "held",
            unary_fn({
                let (gate, entered) = (gate.clone(), entered.clone());
                move |_: Request| {
                    let (gate, entered) = (gate.clone(), entered.clone());
                    async move {
                        entered.fetch_add(1, Ordering::SeqCst);
                        let _permit = gate.acquire().await;
                        Ok("done")
                    }
                }
            }),
        )
        .await
        .unwrap();
    let mut service = RequestService::new(requests);
    let first = tokio::spawn({
        let mut service = service.clone();
        async move { ready_call(&mut service, Call::new("held", "a")).await }
    });
    tokio::time::timeout(WAIT, async {
        while entered.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the first call reached the handler");

    // The only slot is taken: not ready, and stays so across polls.
    let mut readiness = std::pin::pin!(async { poll_fn(|cx| service.poll_ready(cx)).await });
    assert!(readiness.as_mut().now_or_never().is_none());
    assert!(readiness.as_mut().now_or_never().is_none());

    gate.add_permits(1);
    first.await.unwrap().unwrap();
    tokio::time::timeout(WAIT, readiness)
        .await
        .expect("ready once the slot is free")
        .unwrap();
    gate.add_permits(1);
    let reply = ready_call(&mut service, Call::new("held", "b"))
        .await
        .unwrap();
    assert_eq!(reply.body.to_bytes(), "done");
    assert_eq!(service.requests().in_flight_slots(), Some((0, 0)));
}

/// A tower service answering with the upper-cased body, refusing empty
/// bodies with its own error type. `Cell` makes it `!Sync`, like tower's
/// boxed services.
#[derive(Clone)]
struct Shout {
    calls: Arc<AtomicUsize>,
    _not_sync: PhantomData<Cell<()>>,
}

#[derive(Debug)]
struct NothingToShout;

impl Service<Request> for Shout {
    type Response = String;
    type Error = NothingToShout;
    type Future = Ready<Result<String, NothingToShout>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), NothingToShout>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let body = req.body().to_bytes();
        ready(if body.is_empty() {
            Err(NothingToShout)
        } else {
            Ok(String::from_utf8_lossy(&body).to_uppercase())
        })
    }
}

/// A tower service that is never ready: it is overloaded.
#[derive(Clone)]
struct Saturated;

impl Service<Request> for Saturated {
    type Response = Message;
    type Error = Error;
    type Future = Ready<Result<Message, Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Error>> {
        Poll::Ready(Err(Error::new(ErrorKind::Overloaded, "saturated")))
    }

    fn call(&mut self, _: Request) -> Self::Future {
        ready(Err(Error::new(
            ErrorKind::Other,
            "called although poll_ready failed",
        )))
    }
}

#[tokio::test]
async fn a_tower_service_serves_an_endpoint_a_plane_caller_reaches() {
    let requests = mem("serve").await;
    let calls = Arc::new(AtomicUsize::new(0));
    let shout = Shout {
        calls: calls.clone(),
        _not_sync: PhantomData,
    };
    let _shout = requests
        .serve(
            "shout",
            ServiceHandler::with_map_err(shout, |NothingToShout| {
                Error::new(ErrorKind::InvalidArgument, "nothing to shout")
            }),
        )
        .await
        .unwrap();
    let reply = tokio::time::timeout(WAIT, requests.call("shout", "hello"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.to_bytes(), "HELLO");
    let e = tokio::time::timeout(WAIT, requests.call("shout", ""))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    assert_eq!(calls.load(Ordering::SeqCst), 2);

    // A service whose error is already a plane error, failing readiness: the
    // caller gets that error and the service is never called.
    let _saturated = requests
        .serve("saturated", ServiceHandler::new(Saturated))
        .await
        .unwrap();
    let e = tokio::time::timeout(WAIT, requests.call("saturated", "x"))
        .await
        .unwrap()
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
}
