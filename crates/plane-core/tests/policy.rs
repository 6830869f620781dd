//! Client policies and server runtime guarantees, over the in-memory backend.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::Semaphore;

use plane_core::message::names;
use plane_core::policy::{CallPolicy, InFlightLimit, OnError, RetryPolicy};
use plane_core::request::*;
use plane_core::{Error, ErrorKind, Message, Result};
use plane_mem::{Hub, MemConfig};

fn mem() -> Requests {
    Hub::new().requests(&MemConfig::default())
}

fn quick_retries(n: u32) -> CallPolicy {
    CallPolicy::retry(
        RetryPolicy::exponential(n)
            .initial_backoff(Duration::from_millis(1))
            .max_backoff(Duration::from_millis(5)),
    )
}

/// Loses the first `lose` replies in transit: the handler ran and answered,
/// but the caller sees the transport end without an end marker.
struct Lossy {
    inner: Arc<dyn DynRequestBackend>,
    lose: AtomicUsize,
}

struct LossyReply(Box<dyn ReplyTransport>);

impl ReplyTransport for LossyReply {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame>>> {
        match self.0.poll_frame(cx) {
            Poll::Ready(Some(Ok(Frame::Last(_)))) => Poll::Ready(None),
            other => other,
        }
    }
    fn cancel(&mut self, how: Cancel) {
        self.0.cancel(how)
    }
}

impl RequestBackend for Lossy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn capabilities(&self) -> &RequestCapabilities {
        self.inner.capabilities()
    }
    async fn call(&self, call: Call) -> Result<Box<dyn ReplyTransport>> {
        let transport = self.inner.call(call).await?;
        let lose = self
            .lose
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
            .is_ok();
        Ok(if lose {
            Box::new(LossyReply(transport))
        } else {
            transport
        })
    }
    async fn serve(&self, dispatcher: Dispatcher) -> Result<Box<dyn ServeTransport>> {
        self.inner.serve(dispatcher).await
    }
}

/// A unary handler counting its executions and echoing the idempotency key.
fn counting(runs: Arc<AtomicUsize>) -> impl Handler {
    unary_fn(move |req: Request| {
        let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
        let key = req.idempotency_key().unwrap_or("none").to_owned();
        async move { Ok(format!("run {n} key {key}")) }
    })
}

#[tokio::test]
async fn a_retried_call_with_a_lost_reply_runs_the_handler_once() {
    let requests = Requests::new(Lossy {
        inner: Arc::new(Hub::new().requests_backend(&MemConfig::default())),
        lose: AtomicUsize::new(2),
    })
    .with_policy(quick_retries(3));
    let runs = Arc::new(AtomicUsize::new(0));
    let _server = requests.serve("pay", counting(runs.clone())).await.unwrap();
    let reply = requests.call("pay", "x").await.unwrap();
    let reply = String::from_utf8(reply.to_bytes().to_vec()).unwrap();
    assert!(reply.starts_with("run 1 key "), "{reply}");
    assert_ne!(reply, "run 1 key none", "retries carry a generated key");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
}

#[tokio::test]
async fn without_retries_no_key_is_generated_and_nothing_is_deduplicated() {
    let requests = mem();
    let runs = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve("plain", counting(runs.clone()))
        .await
        .unwrap();
    let a = requests.call("plain", "x").await.unwrap();
    let b = requests.call("plain", "x").await.unwrap();
    assert_eq!(a.to_bytes(), "run 1 key none");
    assert_eq!(b.to_bytes(), "run 2 key none");
}

#[tokio::test]
async fn a_repeated_key_gets_the_original_answer_even_when_concurrent() {
    let requests = mem();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let _server = requests
        .serve(
            "slow",
            unary_fn(move |_req: Request| {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                async move {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok(format!("run {n}"))
                }
            }),
        )
        .await
        .unwrap();
    let call = || requests.call_with(Call::new("slow", "x").header(names::IDEMPOTENCY_KEY, "k-1"));
    let (a, b) = tokio::join!(call(), call());
    assert_eq!(a.unwrap().body.to_bytes(), "run 1");
    assert_eq!(b.unwrap().body.to_bytes(), "run 1", "waited for the first");
    let c = call().await.unwrap();
    assert_eq!(c.body.to_bytes(), "run 1", "answered from the cache");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Another key runs again.
    let d = requests
        .call_with(Call::new("slow", "x").header(names::IDEMPOTENCY_KEY, "k-2"))
        .await
        .unwrap();
    assert_eq!(d.body.to_bytes(), "run 2");
}

#[tokio::test]
async fn typed_errors_are_repeated_but_retryable_ones_are_not() {
    let requests = mem();
    let runs = Arc::new(AtomicUsize::new(0));
    let counter = runs.clone();
    let _server = requests
        .serve(
            "fails",
            unary_fn(move |req: Request| {
                counter.fetch_add(1, Ordering::SeqCst);
                let kind = if req.body().to_bytes() == "busy" {
                    ErrorKind::Overloaded
                } else {
                    ErrorKind::NotFound
                };
                async move { Err::<Message, _>(Error::new(kind, "no")) }
            }),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let e = requests
            .call_with(Call::new("fails", "missing").header(names::IDEMPOTENCY_KEY, "a"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    for _ in 0..2 {
        let e = requests
            .call_with(Call::new("fails", "busy").header(names::IDEMPOTENCY_KEY, "b"))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Overloaded);
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        3,
        "a retryable answer is not kept"
    );
}

#[tokio::test]
async fn idempotency_can_be_turned_off_per_server() {
    let requests = mem();
    let runs = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve_with(
            "off",
            counting(runs.clone()),
            ServeOptions::default().idempotency(Duration::from_secs(1), 0),
        )
        .await
        .unwrap();
    for _ in 0..2 {
        requests
            .call_with(Call::new("off", "x").header(names::IDEMPOTENCY_KEY, "k"))
            .await
            .unwrap();
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn endpoint_policies_override_the_default() {
    let requests = mem()
        .with_policy(quick_retries(3))
        .with_endpoint_policy("once", CallPolicy::end());
    let runs = Arc::new(AtomicUsize::new(0));
    let busy = |runs: Arc<AtomicUsize>| {
        unary_fn(move |_req: Request| {
            runs.fetch_add(1, Ordering::SeqCst);
            async { Err::<Message, _>(Error::from(ErrorKind::Overloaded)) }
        })
    };
    let _a = requests.serve("once", busy(runs.clone())).await.unwrap();
    let _b = requests.serve("thrice", busy(runs.clone())).await.unwrap();
    let e = requests.call("once", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert_eq!(runs.swap(0, Ordering::SeqCst), 1);
    let e = requests.call("thrice", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(requests.policy_for("once").on_error, OnError::End);
}

#[tokio::test]
async fn a_stream_refused_before_replies_is_retried() {
    let requests = mem().with_policy(quick_retries(50));
    let gate = Arc::new(Semaphore::new(0));
    let g = gate.clone();
    let _server = requests
        .serve_with(
            "narrow",
            handler_fn(move |_req: Request, out: Responder| {
                let g = g.clone();
                async move {
                    let _permit = g.acquire().await;
                    out.send("done").await
                }
            }),
            ServeOptions::default().max_in_flight(1),
        )
        .await
        .unwrap();
    // The first stream occupies the only slot until the gate opens.
    let first = requests.stream(Call::new("narrow", "a")).await.unwrap();
    let opener = {
        let gate = gate.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(5)).await;
            gate.add_permits(2);
        })
    };
    // Refused with `Overloaded` until the first finishes, then admitted.
    let mut second = requests.stream(Call::new("narrow", "b")).await.unwrap();
    let first: Vec<_> = first.collect().await;
    assert_eq!(first.len(), 1);
    let item = second.next().await.unwrap().unwrap();
    assert_eq!(item.body.to_bytes(), "done");
    opener.await.unwrap();
}

#[tokio::test]
async fn best_effort_streams_keep_what_arrived() {
    let requests = mem().with_policy(CallPolicy::best_effort());
    let _server = requests
        .serve(
            "flaky",
            handler_fn(|_req: Request, out: Responder| async move {
                out.send("a").await?;
                out.send("b").await?;
                Err(Error::new(ErrorKind::Other, "broke"))
            }),
        )
        .await
        .unwrap();
    let mut replies = requests.stream(Call::new("flaky", "x")).await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = replies.next().await {
        got.push(item.unwrap().body.to_bytes());
    }
    assert_eq!(got, vec!["a", "b"]);
    assert_eq!(
        replies.suppressed_error().map(Error::kind),
        Some(ErrorKind::Other)
    );
    // Without the policy the same stream ends with the error.
    let strict = requests.clone().with_policy(CallPolicy::end());
    let items: Vec<_> = strict
        .stream(Call::new("flaky", "x"))
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(items.len(), 3);
    assert_eq!(items[2].as_ref().unwrap_err().kind(), ErrorKind::Other);
}

/// A handler that holds each call until the test releases it.
fn gated(gate: Arc<Semaphore>, entered: Arc<AtomicUsize>) -> impl Handler {
    unary_fn(move |_req: Request| {
        let gate = gate.clone();
        entered.fetch_add(1, Ordering::SeqCst);
        async move {
            let _permit = gate.acquire().await;
            Ok("done")
        }
    })
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

#[tokio::test]
async fn client_overflow_under_reject_is_overloaded_at_once() {
    let requests = mem()
        .with_in_flight_limit(InFlightLimit::reject(1))
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve("held", gated(gate.clone(), entered.clone()))
        .await
        .unwrap();
    let first = tokio::spawn({
        let requests = requests.clone();
        async move { requests.call("held", "a").await }
    });
    until("the first call to be handled", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let e = requests.call("held", "b").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    assert_eq!(entered.load(Ordering::SeqCst), 1, "nothing was sent");
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    assert_eq!(requests.in_flight_slots(), Some((0, 0)));
    assert!(mem()
        .with_in_flight_limit(InFlightLimit::reject(0))
        .is_err());
}

#[tokio::test]
async fn slot_available_waits_for_a_free_slot_without_taking_it() {
    assert_eq!(mem().in_flight_limit(), None);
    // Without a limit there is always a slot.
    tokio::time::timeout(Duration::from_secs(5), mem().slot_available())
        .await
        .unwrap();

    let requests = mem()
        .with_in_flight_limit(InFlightLimit::reject(1))
        .unwrap();
    assert_eq!(requests.in_flight_limit(), Some(InFlightLimit::reject(1)));
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve("held", gated(gate.clone(), entered.clone()))
        .await
        .unwrap();
    let first = tokio::spawn({
        let requests = requests.clone();
        async move { requests.call("held", "a").await }
    });
    until("the first call to be handled", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let mut available = std::pin::pin!(requests.slot_available());
    assert!(available.as_mut().now_or_never().is_none());
    // Giving up a wait (polled once, then dropped) leaks nothing.
    assert!(requests.slot_available().now_or_never().is_none());
    gate.add_permits(1);
    first.await.unwrap().unwrap();
    tokio::time::timeout(Duration::from_secs(5), available)
        .await
        .unwrap();
    // The slot was only observed, not kept.
    assert_eq!(requests.in_flight_slots(), Some((0, 0)));
    gate.add_permits(1);
    assert_eq!(requests.call("held", "b").await.unwrap().to_bytes(), "done");
}

#[tokio::test]
async fn cancelled_waiting_callers_and_dropped_calls_leak_no_slot() {
    let requests = mem()
        .with_in_flight_limit(InFlightLimit::queue(1, 8))
        .unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve("held", gated(gate.clone(), entered.clone()))
        .await
        .unwrap();
    let first = tokio::spawn({
        let requests = requests.clone();
        async move { requests.call("held", "a").await }
    });
    until("the first call to be handled", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let waiters: Vec<_> = (0..4)
        .map(|_| {
            let requests = requests.clone();
            tokio::spawn(async move { requests.call("held", "w").await })
        })
        .collect();
    until("four waiting callers", || {
        requests.in_flight_slots() == Some((1, 4))
    })
    .await;
    for w in &waiters {
        w.abort();
    }
    for w in waiters {
        assert!(w.await.unwrap_err().is_cancelled());
    }
    assert_eq!(requests.in_flight_slots(), Some((1, 0)));
    // Dropping a call in flight gives its slot back too.
    first.abort();
    let _ = first.await;
    until("the dropped call's slot to come back", || {
        requests.in_flight_slots() == Some((0, 0))
    })
    .await;
    gate.add_permits(10);
    assert_eq!(requests.call("held", "c").await.unwrap().to_bytes(), "done");
    assert_eq!(requests.in_flight_slots(), Some((0, 0)));
}

#[tokio::test]
async fn server_admission_is_bounded_with_a_typed_refusal() {
    let requests = mem();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let server = requests
        .serve_with(
            "bounded",
            gated(gate.clone(), entered.clone()),
            ServeOptions::default().max_in_flight(2),
        )
        .await
        .unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| {
            let requests = requests.clone();
            tokio::spawn(async move { requests.call("bounded", "x").await })
        })
        .collect();
    until("two calls in flight", || server.in_flight() == 2).await;
    let e = requests.call("bounded", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Overloaded);
    gate.add_permits(2);
    for h in held {
        h.await.unwrap().unwrap();
    }
    assert_eq!(server.in_flight(), 0);
    assert_eq!(
        requests.call("bounded", "x").await.unwrap().to_bytes(),
        "done"
    );
}

#[tokio::test]
async fn a_drained_server_finishes_in_flight_work_and_refuses_new_work() {
    let requests = mem();
    let gate = Arc::new(Semaphore::new(0));
    let entered = Arc::new(AtomicUsize::new(0));
    let server = requests
        .serve("draining", gated(gate.clone(), entered.clone()))
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let requests = requests.clone();
        async move { requests.call("draining", "x").await }
    });
    until("the call to be handled", || {
        entered.load(Ordering::SeqCst) == 1
    })
    .await;
    let drain = tokio::spawn(server.drain(Duration::from_secs(5)));
    tokio::task::yield_now().await;
    let e = requests.call("draining", "new").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
    gate.add_permits(1);
    assert_eq!(in_flight.await.unwrap().unwrap().to_bytes(), "done");
    assert_eq!(drain.await.unwrap(), 0, "nothing had to be killed");
}

#[tokio::test]
async fn the_callers_trace_reaches_the_handler_and_nested_calls_continue_it() {
    let requests = mem();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let _inner = requests
        .serve(
            "inner",
            unary_fn(move |req: Request| {
                log.lock().unwrap().push(req.trace_context().cloned());
                async { Ok("inner") }
            }),
        )
        .await
        .unwrap();
    let nested = requests.clone();
    let _outer = requests
        .serve(
            "outer",
            unary_fn(move |_req: Request| {
                let nested = nested.clone();
                async move { nested.call("inner", "x").await.map(Message::from) }
            }),
        )
        .await
        .unwrap();
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    requests
        .call_with(
            Call::new("outer", "x")
                .header(names::TRACEPARENT, tp)
                .header(names::TRACESTATE, "k=v"),
        )
        .await
        .unwrap();
    let ctx = seen
        .lock()
        .unwrap()
        .pop()
        .flatten()
        .expect("a trace context");
    assert_eq!(ctx.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_ne!(ctx.span_id(), "00f067aa0ba902b7", "a new span for the hop");
    assert_eq!(ctx.tracestate(), Some("k=v"));
    // A call made outside any trace starts one.
    requests.call("inner", "x").await.unwrap();
    let root = seen.lock().unwrap().pop().flatten().expect("a new trace");
    assert_ne!(root.trace_id(), ctx.trace_id());
}

/// A unary handler that answers `done` after `delay`, counting its runs.
fn slow(delay: Duration, runs: Arc<AtomicUsize>) -> impl Handler {
    unary_fn(move |_req: Request| {
        runs.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(delay).await;
            Ok("done")
        }
    })
}

// Paused time: the clock only moves when every task waits, so which
// deadline fires first does not depend on how loaded the machine is.
#[tokio::test(start_paused = true)]
async fn an_endpoint_timeout_is_that_endpoints_deadline() {
    let requests = mem()
        .with_timeout(Some(Duration::from_secs(5)))
        .with_endpoint_timeout("quick", Some(Duration::from_millis(100)));
    let runs = Arc::new(AtomicUsize::new(0));
    let one_second = Duration::from_secs(1);
    let _quick = requests
        .serve("quick", slow(one_second, runs.clone()))
        .await
        .unwrap();
    let _patient = requests
        .serve("patient", slow(one_second, runs.clone()))
        .await
        .unwrap();
    assert_eq!(
        requests.timeout_for("quick"),
        Some(Duration::from_millis(100))
    );
    assert_eq!(
        requests.timeout_for("patient"),
        Some(Duration::from_secs(5))
    );

    let started = tokio::time::Instant::now();
    let e = requests.call("quick", "x").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(100) && waited < one_second,
        "the endpoint's 100 ms deadline, not the handle's 5 s: {waited:?}"
    );
    // The handle's 5 s holds everywhere else.
    assert_eq!(
        requests.call("patient", "x").await.unwrap().to_bytes(),
        "done"
    );
    // A call's own timeout beats the endpoint's.
    let reply = requests
        .call_with(Call::new("quick", "x").timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    assert_eq!(reply.body.to_bytes(), "done");
    // `None` for an endpoint is no deadline at all, even with the handle's.
    let unbounded = requests.with_endpoint_timeout("quick", None);
    assert_eq!(unbounded.timeout_for("quick"), None);
    assert_eq!(
        unbounded.call("quick", "x").await.unwrap().to_bytes(),
        "done"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 4);
}

#[tokio::test]
async fn a_request_over_the_clients_limit_is_refused_before_it_is_sent() {
    let requests = mem()
        .with_max_request_bytes(Some(8))
        .with_endpoint_max_request_bytes("upload", Some(32));
    let runs = Arc::new(AtomicUsize::new(0));
    let _small = requests
        .serve("small", counting(runs.clone()))
        .await
        .unwrap();
    let _upload = requests
        .serve("upload", counting(runs.clone()))
        .await
        .unwrap();
    assert_eq!(requests.max_request_bytes_for("small"), Some(8));
    assert_eq!(requests.max_request_bytes_for("upload"), Some(32));

    // At the limit it goes through; one byte over, it is refused and the
    // handler does not run.
    requests.call("small", "12345678").await.unwrap();
    let e = requests.call("small", "123456789").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // Nothing reaches the transport: an endpoint nobody serves would be
    // `NoResponders` if the call had been sent.
    let e = requests
        .call("nobody.serves", "123456789")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(
        requests
            .call("nobody.serves", "1")
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NoResponders
    );
    // The endpoint's own limit replaces the handle's, both ways.
    requests.call("upload", vec![0u8; 32]).await.unwrap();
    let e = requests.call("upload", vec![0u8; 33]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn the_backends_limit_holds_whatever_the_handle_allows() {
    let url = url::Url::parse("mem://x?max_payload=64").unwrap();
    let requests = Hub::new()
        .requests(&MemConfig::from_url(&url).unwrap())
        .with_max_request_bytes(Some(1024));
    let runs = Arc::new(AtomicUsize::new(0));
    let _s = requests.serve("e", counting(runs.clone())).await.unwrap();
    let e = requests.call("e", vec![0u8; 65]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_refuses_a_request_over_its_limit_without_running_the_handler() {
    let requests = mem();
    let runs = Arc::new(AtomicUsize::new(0));
    let _server = requests
        .serve_with(
            "bounded",
            counting(runs.clone()),
            ServeOptions::default().max_request_bytes(16),
        )
        .await
        .unwrap();
    let _other = requests
        .serve("open", counting(runs.clone()))
        .await
        .unwrap();
    requests.call("bounded", vec![0u8; 16]).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    // The caller has no limit of its own: the refusal is the server's.
    assert_eq!(requests.max_request_bytes_for("bounded"), None);
    let e = requests.call("bounded", vec![0u8; 17]).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::PayloadTooLarge, "{e}");
    let stream = requests
        .stream(Call::new("bounded", vec![0u8; 17]))
        .await
        .unwrap_err();
    assert_eq!(stream.kind(), ErrorKind::PayloadTooLarge, "{stream}");
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler did not run");
    // Another endpoint's server has no such limit.
    requests.call("open", vec![0u8; 17]).await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}
