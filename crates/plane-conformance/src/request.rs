//! Conformance cases of the request section.
//!
//! Every case serves its own uniquely named endpoint and drops its servers
//! before returning, on every path (servers are RAII handles). Handlers
//! report what they saw through shared state (`Arc` counters, flags and logs)
//! rather than through replies alone, so a case can tell "the handler never
//! ran" from "its reply was lost", and "the handler was killed" (its future was
//! dropped, which a `DropFlag` inside it records) from "it finished".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::time::Instant;

use plane_core::request::{
    handler_fn, unary_fn, Call, InstanceId, Replies, Request, Responder, Route, Server,
};
use plane_core::{Body, Error, ErrorKind, Headers, Message, Requests};

use crate::{case, check, check_eq, check_kind, skip, within, Case, CaseResult, Ctx, Verdict};

/// The request cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("request", request_reply_roundtrip),
        case!("request", concurrent_requests_no_crosstalk),
        case!("request", handler_error_propagates),
        case!("request", request_timeout_silent_handler),
        case!("request", request_no_responders_fast_fail),
        case!("request", request_cancel_by_caller),
        case!("request", kill_vs_stop),
        case!("request", stream_all_chunks_then_end),
        case!("request", stream_missing_end_is_disconnected),
        case!("request", stream_error_midway),
        case!("request", stream_cancel_midway),
        case!("request", stream_slow_reader_backpressure),
        case!("request", load_balance_across_instances),
        case!("request", direct_instance_routing),
        case!("request", oversized_request_rejected),
        case!("request", malformed_frame_peer_survives),
        case!("request", stopped_endpoint_not_routed),
        case!("request", responder_restart_recovers),
        case!("request", unsupported_ops_refused),
        case!("request", trace_context_propagates),
        case!("request", hierarchical_endpoint_names),
        case!("request", broadcast_every_instance_answers_once),
        case!("request", broadcast_silent_instance_bounded),
    ]
}

/// How long "eventually" may take: generous for networked backends.
const EVENTUALLY: Duration = Duration::from_secs(10);
/// How much later than its deadline a fast failure or a timeout may arrive.
const SLACK: Duration = Duration::from_secs(2);

/// Sets its flag when dropped. Held inside a handler's future, it fires when
/// that future is dropped: on completion, and on a kill.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn flag() -> Arc<AtomicBool> {
    Arc::new(AtomicBool::new(false))
}

/// Poll `cond` every 10 ms until it holds, failing the case after `limit`.
async fn eventually(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) -> CaseResult {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Verdict::Fail(format!(
                "timed out after {limit:?} waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn text(body: &Body) -> String {
    String::from_utf8_lossy(&body.to_bytes()).into_owned()
}

/// A handler that never answers (until its call is killed).
fn silent() -> impl plane_core::request::Handler {
    unary_fn(|_req: Request| async move {
        std::future::pending::<()>().await;
        Ok(Message::default())
    })
}

/// An echo handler: replies with the request's headers and body.
fn echo() -> impl plane_core::request::Handler {
    unary_fn(|req: Request| async move { Ok(req.message) })
}

/// Serves `n` instances of `endpoint` that each reply with their instance id
/// and count the calls they handle. Returns the servers and their counters.
async fn serve_whoami(
    requests: &Requests,
    endpoint: &str,
    n: usize,
) -> Result<(Vec<Server>, Vec<Arc<AtomicUsize>>), Verdict> {
    let mut servers = Vec::new();
    let mut counters = Vec::new();
    for _ in 0..n {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let server = requests
            .serve(
                endpoint,
                unary_fn(move |req: Request| {
                    c.fetch_add(1, Ordering::SeqCst);
                    async move { Ok(req.instance.to_string()) }
                }),
            )
            .await?;
        servers.push(server);
        counters.push(count);
    }
    Ok((servers, counters))
}

/// Read every reply until the end marker; an error item fails the case.
async fn collect(replies: &mut Replies) -> Result<Vec<String>, Verdict> {
    let mut out = Vec::new();
    while let Some(reply) = replies.next_reply().await {
        out.push(text(&reply?.body));
    }
    Ok(out)
}

/// Every header in `expected` is in `actual` with the same value.
fn has_headers(actual: &Headers, expected: &Headers) -> Result<(), String> {
    for (name, value) in expected.iter() {
        match actual.get(name) {
            Some(v) if v == value => {}
            other => {
                return Err(format!(
                    "header `{name}`: expected {value:?}, got {other:?}"
                ))
            }
        }
    }
    Ok(())
}

async fn request_reply_roundtrip(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("roundtrip");
    let seen: Arc<Mutex<Vec<Message>>> = Arc::default();
    let log = seen.clone();
    let _server = requests
        .serve(
            &ep,
            unary_fn(move |req: Request| {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(req.message.clone());
                let mut reply = req.message;
                reply.headers.insert("x-replied", "yes");
                async move { Ok(reply) }
            }),
        )
        .await?;

    let headers = Headers::new()
        .with("content-type", "application/octet-stream")
        .with(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with("x-plane-test", "value with spaces, commas; and = signs")
        .with("x-empty", "");
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let large: Vec<u8> = (0..64 * 1024).map(|_| rand::random::<u8>()).collect();
    let bodies = vec![
        ("empty body", Body::empty()),
        ("text", Body::from("hello, plane")),
        ("every byte value", Body::from(all_bytes)),
        (
            "multipart with an empty part",
            Body::from_parts(vec![
                Bytes::from_static(b"head"),
                Bytes::new(),
                Bytes::from_static(b"\xff\xfe\x00tail"),
            ]),
        ),
        ("64 KiB random", Body::from(large)),
    ];
    let limit = requests.capabilities().max_payload;
    for (what, body) in bodies {
        if body.len() + headers.encoded_len() > limit {
            continue;
        }
        let call = Call::new(&ep, body.clone()).headers(headers.clone());
        let reply = within(EVENTUALLY, what, requests.call_with(call)).await??;
        check_eq!(reply.body.parts(), body.parts(), "{what}: reply body");
        let mut expected = headers.clone();
        expected.insert("x-replied", "yes");
        if let Err(e) = has_headers(&reply.headers, &expected) {
            return Err(Verdict::Fail(format!("{what}: reply {e}")));
        }
        let saw = seen.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let Some(saw) = saw else {
            return Err(Verdict::Fail(format!("{what}: handler saw no request")));
        };
        check_eq!(
            saw.body.parts(),
            body.parts(),
            "{what}: body the handler saw"
        );
        if let Err(e) = has_headers(&saw.headers, &headers) {
            return Err(Verdict::Fail(format!("{what}: handler saw {e}")));
        }
    }
    Ok(())
}

async fn concurrent_requests_no_crosstalk(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("crosstalk");
    let _server = requests.serve(&ep, echo()).await?;
    let salt: u32 = rand::random();
    let calls = (0..100).map(|i| {
        let body = format!("call-{i}-{salt:08x}");
        let ep = ep.clone();
        async move {
            let reply = requests.call(&ep, body.clone()).await;
            (body, reply)
        }
    });
    let results = within(EVENTUALLY, "100 parallel calls", join_all(calls)).await?;
    for (body, reply) in results {
        check_eq!(text(&reply?), body);
    }
    Ok(())
}

async fn handler_error_propagates(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("failing");
    let _server = requests
        .serve(
            &ep,
            unary_fn(|req: Request| {
                let kind = if req.body().to_bytes() == "missing" {
                    ErrorKind::NotFound
                } else {
                    ErrorKind::InvalidArgument
                };
                async move {
                    Err::<Message, _>(Error::new(
                        kind,
                        match kind {
                            ErrorKind::NotFound => "no such model",
                            _ => "temperature must be in [0, 2]",
                        },
                    ))
                }
            }),
        )
        .await?;
    let err = check_kind!(
        within(EVENTUALLY, "the call", requests.call(&ep, "missing")).await?,
        ErrorKind::NotFound
    );
    check_eq!(err.message(), "no such model");
    let err = check_kind!(
        within(EVENTUALLY, "the call", requests.call(&ep, "bad")).await?,
        ErrorKind::InvalidArgument
    );
    check_eq!(err.message(), "temperature must be in [0, 2]");
    if requests.capabilities().streaming {
        let result = within(
            EVENTUALLY,
            "the stream",
            requests.stream(Call::new(&ep, "missing")),
        )
        .await?;
        // The refusal may come as the prologue or as the first item.
        let err = match result {
            Err(e) => e,
            Ok(mut replies) => match replies.next_reply().await {
                Some(Err(e)) => e,
                other => {
                    return Err(Verdict::Fail(format!(
                        "streamed call to a failing handler yielded {other:?}"
                    )))
                }
            },
        };
        check_eq!(err.kind(), ErrorKind::NotFound);
        check_eq!(err.message(), "no such model");
    }
    Ok(())
}

async fn request_timeout_silent_handler(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("silent");
    let server = requests.serve(&ep, silent()).await?;
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let result = within(
        timeout + SLACK * 5,
        "the call to time out",
        requests.call_with(Call::new(&ep, "hello?").timeout(timeout)),
    )
    .await?;
    let elapsed = started.elapsed();
    check_kind!(result, ErrorKind::Timeout);
    check!(
        elapsed < timeout + SLACK,
        "timeout of {timeout:?} reported after {elapsed:?}"
    );
    // Nobody waits for the reply any more; the handler must not hold its slot.
    eventually(
        EVENTUALLY,
        "the silent handler's slot to be released",
        || server.in_flight() == 0,
    )
    .await
}

/// A generous deadline that a fast failure must come well within.
const LONG: Duration = Duration::from_secs(10);

/// `op` fails with `NoResponders` in less than [`SLACK`], long before its
/// [`LONG`] deadline.
async fn no_responders_fast<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = plane_core::Result<T>>,
) -> CaseResult {
    let started = Instant::now();
    let result = within(LONG + SLACK, what, op).await?;
    check_kind!(result, ErrorKind::NoResponders);
    let elapsed = started.elapsed();
    check!(elapsed < SLACK, "{what}: no-responders took {elapsed:?}");
    Ok(())
}

async fn request_no_responders_fast_fail(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("nobody");
    let call = || Call::new(&ep, "anyone?").timeout(LONG);
    no_responders_fast("the call", requests.call_with(call())).await?;
    if requests.capabilities().streaming {
        no_responders_fast("the stream", requests.stream(call())).await?;
    }
    Ok(())
}

async fn request_cancel_by_caller(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().cancellation {
        skip!("backend does not declare `cancellation`");
    }
    let ep = cx.name("cancelled");
    let (started, dropped) = (flag(), flag());
    let (s, d) = (started.clone(), dropped.clone());
    let server = requests
        .serve(
            &ep,
            unary_fn(move |_req: Request| {
                let guard = DropFlag(d.clone());
                s.store(true, Ordering::SeqCst);
                async move {
                    let _guard = guard;
                    std::future::pending::<()>().await;
                    Ok(Message::default())
                }
            }),
        )
        .await?;

    // Drive the call until the handler runs, then walk away from it.
    let mut call = Box::pin(requests.call(&ep, "work"));
    let handler_started = eventually(EVENTUALLY, "the handler to start", || {
        started.load(Ordering::SeqCst)
    });
    tokio::select! {
        r = &mut call => {
            return Err(Verdict::Fail(format!("a handler that never answers was answered: {r:?}")));
        }
        r = handler_started => r?,
    }
    drop(call);
    eventually(
        EVENTUALLY,
        "the handler to observe the cancellation",
        || dropped.load(Ordering::SeqCst),
    )
    .await?;
    eventually(EVENTUALLY, "the handler's slot to be released", || {
        server.in_flight() == 0
    })
    .await
}

/// One entry of the [`kill_vs_stop`] handler's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Started(u32),
    Finished(u32),
}

async fn kill_vs_stop(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let caps = requests.capabilities();
    if !caps.streaming {
        skip!("backend does not declare `streaming`");
    }
    if !caps.cancellation {
        skip!("backend does not declare `cancellation`");
    }
    const ITEM: Duration = Duration::from_millis(200);
    let ep = cx.name("items");
    // Per call (keyed by the request body): the steps taken, and whether the
    // handler's future has been dropped.
    type Logs = Arc<Mutex<HashMap<String, Vec<Step>>>>;
    let logs: Logs = Arc::default();
    let drops: Arc<Mutex<HashMap<String, Arc<AtomicBool>>>> = Arc::default();
    let (l, d) = (logs.clone(), drops.clone());
    let _server = requests
        .serve(
            &ep,
            handler_fn(move |req: Request, out: Responder| {
                let tag = text(req.body());
                let dropped = flag();
                d.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(tag.clone(), dropped.clone());
                let guard = DropFlag(dropped);
                let logs = l.clone();
                let record = move |step| {
                    logs.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(tag.clone())
                        .or_default()
                        .push(step);
                };
                async move {
                    let _guard = guard;
                    for i in 0..50u32 {
                        if req.stop_requested() {
                            break;
                        }
                        record(Step::Started(i));
                        tokio::time::sleep(ITEM).await;
                        record(Step::Finished(i));
                        out.send(format!("item-{i}")).await?;
                    }
                    Ok(())
                }
            }),
        )
        .await?;
    let steps = |tag: &str| {
        logs.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tag)
            .cloned()
            .unwrap_or_default()
    };
    let dropped = |tag: &str| {
        drops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(tag)
            .is_some_and(|f| f.load(Ordering::SeqCst))
    };

    // Graceful stop while item 1 is in progress: item 1 finishes, its reply
    // arrives, and the stream ends cleanly.
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "stop")),
    )
    .await??;
    let first = within(EVENTUALLY, "item 0", replies.next_reply()).await?;
    check_eq!(
        first.map(|r| r.map(|m| text(&m.body))).transpose()?,
        Some("item-0".to_owned())
    );
    eventually(EVENTUALLY, "item 1 to start", || {
        steps("stop").contains(&Step::Started(1))
    })
    .await?;
    replies.stop();
    let rest = within(
        EVENTUALLY,
        "the rest of the stopped stream",
        collect(&mut replies),
    )
    .await??;
    check_eq!(
        rest,
        vec!["item-1".to_owned()],
        "replies after a graceful stop"
    );
    check_eq!(
        steps("stop"),
        vec![
            Step::Started(0),
            Step::Finished(0),
            Step::Started(1),
            Step::Finished(1)
        ],
        "a stopped handler finishes its current item and starts no other"
    );
    drop(replies);

    // Kill while item 1 is in progress: the handler's future is dropped and
    // item 1 never finishes.
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "kill")),
    )
    .await??;
    let first = within(EVENTUALLY, "item 0", replies.next_reply()).await?;
    check_eq!(
        first.map(|r| r.map(|m| text(&m.body))).transpose()?,
        Some("item-0".to_owned())
    );
    eventually(EVENTUALLY, "item 1 to start", || {
        steps("kill").contains(&Step::Started(1))
    })
    .await?;
    replies.kill();
    eventually(EVENTUALLY, "the killed handler to be dropped", || {
        dropped("kill")
    })
    .await?;
    check_eq!(
        steps("kill"),
        vec![Step::Started(0), Step::Finished(0), Step::Started(1)],
        "a killed handler stops in the middle of its item"
    );
    Ok(())
}

/// A streaming handler that sends `chunk-0..chunk-{n}` and ends.
fn chunks(n: u32) -> impl plane_core::request::Handler {
    handler_fn(move |_req: Request, out: Responder| async move {
        for i in 0..n {
            out.send(format!("chunk-{i}")).await?;
        }
        Ok(())
    })
}

fn chunk_names(n: u32) -> Vec<String> {
    (0..n).map(|i| format!("chunk-{i}")).collect()
}

async fn stream_all_chunks_then_end(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().streaming {
        skip!("backend does not declare `streaming`");
    }
    let ep = cx.name("chunks");
    let _server = requests.serve(&ep, chunks(25)).await?;
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "")),
    )
    .await??;
    let got = within(EVENTUALLY, "every chunk", collect(&mut replies)).await??;
    check_eq!(got, chunk_names(25));
    check!(replies.is_done(), "the stream is done after its end marker");
    check!(
        replies.next_reply().await.is_none(),
        "nothing follows the end marker"
    );
    // A handler that ends without any reply is a clean, empty stream.
    let ep = cx.name("nothing");
    let _empty = requests.serve(&ep, chunks(0)).await?;
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "")),
    )
    .await??;
    let got = within(EVENTUALLY, "the end marker", collect(&mut replies)).await??;
    check!(got.is_empty(), "an empty stream yielded {got:?}");
    Ok(())
}

async fn stream_missing_end_is_disconnected(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().streaming {
        skip!("backend does not declare `streaming`");
    }
    let ep = cx.name("vanishing");
    let blocked = flag();
    let b = blocked.clone();
    let server = requests
        .serve(
            &ep,
            handler_fn(move |_req: Request, out: Responder| {
                let blocked = b.clone();
                async move {
                    out.send("chunk-0").await?;
                    out.send("chunk-1").await?;
                    blocked.store(true, Ordering::SeqCst);
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await?;
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "")),
    )
    .await??;
    for expected in chunk_names(2) {
        let reply = within(EVENTUALLY, "a chunk", replies.next_reply()).await?;
        match reply {
            Some(Ok(m)) => check_eq!(text(&m.body), expected),
            other => return Err(Verdict::Fail(format!("expected {expected}, got {other:?}"))),
        }
    }
    eventually(EVENTUALLY, "the handler to block", || {
        blocked.load(Ordering::SeqCst)
    })
    .await?;
    // The serving side vanishes as a crashed process would: no end marker.
    server.abort();
    let next = within(
        EVENTUALLY + SLACK,
        "the stream to notice the server is gone",
        replies.next_reply(),
    )
    .await?;
    match next {
        Some(result) => {
            check_kind!(result, ErrorKind::Disconnected);
        }
        None => {
            return Err(Verdict::Fail(
                "a stream without its end marker ended cleanly".into(),
            ))
        }
    }
    check!(
        replies.next_reply().await.is_none(),
        "nothing follows the error"
    );
    Ok(())
}

async fn stream_error_midway(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().streaming {
        skip!("backend does not declare `streaming`");
    }
    let ep = cx.name("halfway");
    let _server = requests
        .serve(
            &ep,
            handler_fn(|_req: Request, out: Responder| async move {
                for i in 0..3 {
                    out.send(format!("chunk-{i}")).await?;
                }
                Err(Error::new(ErrorKind::NotFound, "shard 3 is missing"))
            }),
        )
        .await?;
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "")),
    )
    .await??;
    for expected in chunk_names(3) {
        let reply = within(EVENTUALLY, "a chunk", replies.next_reply()).await?;
        match reply {
            Some(Ok(m)) => check_eq!(text(&m.body), expected),
            other => return Err(Verdict::Fail(format!("expected {expected}, got {other:?}"))),
        }
    }
    let next = within(EVENTUALLY, "the error", replies.next_reply()).await?;
    let Some(result) = next else {
        return Err(Verdict::Fail(
            "a stream that failed midway ended cleanly".into(),
        ));
    };
    let err = check_kind!(result, ErrorKind::NotFound);
    check_eq!(err.message(), "shard 3 is missing");
    check!(
        replies.next_reply().await.is_none(),
        "nothing follows the error"
    );
    Ok(())
}

async fn stream_cancel_midway(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().streaming {
        skip!("backend does not declare `streaming`");
    }
    let ep = cx.name("abandoned");
    let dropped = flag();
    let d = dropped.clone();
    let server = requests
        .serve(
            &ep,
            handler_fn(move |_req: Request, out: Responder| {
                let guard = DropFlag(d.clone());
                async move {
                    let _guard = guard;
                    for i in 0..10_000u32 {
                        out.send(format!("chunk-{i}")).await?;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(())
                }
            }),
        )
        .await?;
    let mut replies = within(
        EVENTUALLY,
        "the stream",
        requests.stream(Call::new(&ep, "")),
    )
    .await??;
    for expected in chunk_names(2) {
        let reply = within(EVENTUALLY, "a chunk", replies.next_reply()).await?;
        match reply {
            Some(Ok(m)) => check_eq!(text(&m.body), expected),
            other => return Err(Verdict::Fail(format!("expected {expected}, got {other:?}"))),
        }
    }
    drop(replies);
    // The handler either fails its next send or is killed; either way its
    // future ends long before its 10 000 chunks, and its slot is released.
    eventually(EVENTUALLY, "the handler to notice the caller left", || {
        dropped.load(Ordering::SeqCst)
    })
    .await?;
    eventually(EVENTUALLY, "no call in flight", || server.in_flight() == 0).await
}

async fn stream_slow_reader_backpressure(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().streaming {
        skip!("backend does not declare `streaming`");
    }
    const TOTAL: u32 = 10_000;
    const BOUND: usize = 1_000;
    let ep = cx.name("firehose");
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let _server = requests
        .serve(
            &ep,
            handler_fn(move |_req: Request, out: Responder| {
                let sent = s.clone();
                async move {
                    // 64-byte chunks: the index, padded, so order is checkable.
                    for i in 0..TOTAL {
                        let mut chunk = i.to_be_bytes().to_vec();
                        chunk.resize(64, 0xa5);
                        out.send(chunk).await?;
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(())
                }
            }),
        )
        .await?;
    let call = Call::new(&ep, "").timeout(Duration::from_secs(50));
    let mut replies = within(EVENTUALLY, "the stream", requests.stream(call)).await??;
    let first = within(EVENTUALLY, "the first chunk", replies.next_reply()).await?;
    check!(
        matches!(&first, Some(Ok(m)) if m.body.to_bytes()[..4] == 0u32.to_be_bytes()),
        "first chunk: {first:?}"
    );
    // Stall: the handler must be held back instead of queueing everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ahead = sent.load(Ordering::SeqCst);
    check!(
        ahead <= BOUND,
        "a stalled reader let the handler send {ahead} of {TOTAL} chunks"
    );
    let mut next = 1u32;
    let drained = within(Duration::from_secs(40), "the rest of the stream", async {
        while let Some(reply) = replies.next_reply().await {
            let body = reply?.body.to_bytes();
            if body.len() != 64 || body[..4] != next.to_be_bytes() {
                return Err(Verdict::Fail(format!(
                    "chunk {next} out of order or damaged: {:?}",
                    &body[..body.len().min(8)]
                )));
            }
            next += 1;
        }
        Ok(())
    })
    .await?;
    drained?;
    check_eq!(next, TOTAL, "chunks received after draining");
    Ok(())
}

async fn load_balance_across_instances(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let caps = requests.capabilities().clone();
    let routes = [
        (Route::RoundRobin, caps.round_robin, 30, true),
        // 60 uniform picks leave one of three instances unused with
        // probability 3 * (2/3)^60, about 1e-10.
        (Route::Random, caps.random, 60, true),
        // Sequential calls leave every instance idle, so power-of-two choices
        // are free to favour any; only delivery is checked.
        (Route::PowerOfTwo, caps.power_of_two, 30, false),
    ];
    if !routes.iter().any(|r| r.1) {
        skip!("backend declares no load-balancing route");
    }
    let ep = cx.name("balanced");
    let (servers, counters) = serve_whoami(requests, &ep, 3).await?;
    let ids: Vec<String> = servers.iter().map(|s| s.instance().to_string()).collect();
    for (route, declared, n, all_used) in routes {
        if !declared {
            continue;
        }
        for c in &counters {
            c.store(0, Ordering::SeqCst);
        }
        let mut answered = vec![0usize; 3];
        for _ in 0..n {
            let call = Call::new(&ep, "").route(route);
            let reply = within(EVENTUALLY, "a balanced call", requests.call_with(call)).await??;
            let who = text(&reply.body);
            let Some(i) = ids.iter().position(|id| *id == who) else {
                return Err(Verdict::Fail(format!(
                    "{route:?}: reply from unknown instance {who:?}"
                )));
            };
            answered[i] += 1;
        }
        let handled: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        check_eq!(
            handled.iter().sum::<usize>(),
            n,
            "{route:?}: each call handled exactly once ({handled:?})"
        );
        check_eq!(
            handled,
            answered,
            "{route:?}: replies match the handlers that ran"
        );
        if all_used {
            check!(
                handled.iter().all(|&h| h > 0),
                "{route:?}: every instance used, got {handled:?}"
            );
        }
    }
    drop(servers);
    Ok(())
}

async fn direct_instance_routing(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().direct {
        skip!("backend does not declare `direct`");
    }
    let ep = cx.name("direct");
    let (servers, counters) = serve_whoami(requests, &ep, 3).await?;
    for (target, server) in servers.iter().enumerate() {
        for c in &counters {
            c.store(0, Ordering::SeqCst);
        }
        for _ in 0..5 {
            let call = Call::new(&ep, "").route(Route::Instance(server.instance()));
            let reply = within(EVENTUALLY, "a direct call", requests.call_with(call)).await??;
            check_eq!(text(&reply.body), server.instance().to_string());
        }
        let handled: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
        for (i, h) in handled.iter().enumerate() {
            check_eq!(
                *h,
                if i == target { 5 } else { 0 },
                "calls addressed to instance {target} reached {handled:?}"
            );
        }
    }
    let mut unknown = InstanceId::random();
    while servers.iter().any(|s| s.instance() == unknown) {
        unknown = InstanceId::random();
    }
    let call = Call::new(&ep, "")
        .route(Route::Instance(unknown))
        .timeout(LONG);
    no_responders_fast("a call to a gone instance", requests.call_with(call)).await?;
    drop(servers);
    Ok(())
}

/// Endpoints named as a hierarchy (`agent.7.status`), nested in each other:
/// each is reached on its own, by name and (where declared) by instance, and a
/// name one token longer than a served one is nobody's.
async fn hierarchical_endpoint_names(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let agent = cx.name("agent.7");
    let status = format!("{agent}.status");
    let answer = |answer: &'static str| unary_fn(move |_req: Request| async move { Ok(answer) });
    let agent_server = requests.serve(&agent, answer("agent")).await?;
    let status_server = requests.serve(&status, answer("status")).await?;
    for _ in 0..3 {
        let reply = within(
            EVENTUALLY,
            "the call to the agent",
            requests.call(&agent, ""),
        )
        .await?;
        check_eq!(text(&reply?), "agent");
        let reply = within(
            EVENTUALLY,
            "the call to its status",
            requests.call(&status, ""),
        )
        .await?;
        check_eq!(text(&reply?), "status");
    }
    if requests.capabilities().direct {
        for (ep, server, answer) in [
            (&agent, &agent_server, "agent"),
            (&status, &status_server, "status"),
        ] {
            let call = Call::new(ep, "").route(Route::Instance(server.instance()));
            let reply = within(EVENTUALLY, "a direct call", requests.call_with(call)).await??;
            check_eq!(text(&reply.body), answer);
        }
    }
    let unserved = Call::new(format!("{status}.detail"), "").timeout(LONG);
    no_responders_fast(
        "a call one token below a served endpoint",
        requests.call_with(unserved),
    )
    .await?;
    Ok(())
}

async fn oversized_request_rejected(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let max = requests.capabilities().max_payload;
    if max > 64 * 1024 * 1024 {
        skip!("declared max_payload of {max} bytes is too large to exercise");
    }
    let ep = cx.name("sized");
    let invoked = Arc::new(AtomicUsize::new(0));
    let n = invoked.clone();
    let _server = requests
        .serve(
            &ep,
            unary_fn(move |req: Request| {
                n.fetch_add(1, Ordering::SeqCst);
                // The length, not the bytes: the reply stays small.
                let len = req.body().len();
                async move { Ok(len.to_string()) }
            }),
        )
        .await?;

    // Exactly the limit passes, whatever control headers plane adds (a
    // timeout is set so that it does add one).
    let call = Call::new(&ep, vec![0x5au8; max]).timeout(Duration::from_secs(30));
    let reply = within(
        Duration::from_secs(30),
        "the largest call",
        requests.call_with(call),
    )
    .await??;
    check_eq!(text(&reply.body), max.to_string());
    check_eq!(invoked.load(Ordering::SeqCst), 1);

    // One byte more, in the body or in a header, is refused before sending.
    let over = Call::new(&ep, vec![0x5au8; max + 1]);
    check_kind!(
        within(EVENTUALLY, "the oversized call", requests.call_with(over)).await?,
        ErrorKind::PayloadTooLarge
    );
    let over = Call::new(&ep, vec![0x5au8; max - 1]).header("h", "v");
    check_kind!(
        within(EVENTUALLY, "the oversized call", requests.call_with(over)).await?,
        ErrorKind::PayloadTooLarge
    );
    if requests.capabilities().streaming {
        let over = Call::new(&ep, vec![0x5au8; max + 1]);
        check_kind!(
            within(EVENTUALLY, "the oversized stream", requests.stream(over)).await?,
            ErrorKind::PayloadTooLarge
        );
    }
    // Give a (wrongly) sent request time to arrive before checking it did not.
    tokio::time::sleep(Duration::from_millis(200)).await;
    check_eq!(
        invoked.load(Ordering::SeqCst),
        1,
        "the handler ran for an oversized request"
    );
    Ok(())
}

async fn malformed_frame_peer_survives(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("robust");
    let _server = requests.serve(&ep, echo()).await?;
    let random: Vec<u8> = (0..256).map(|_| rand::random::<u8>()).collect();
    let garbage: Vec<Vec<u8>> = vec![
        random,
        Vec::new(),
        vec![0x01],
        // A plausible version and kind, then nothing.
        vec![0x01, 0x00, 0x00],
        // A length prefix claiming far more than follows (and than any limit).
        vec![
            0x01, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 0x00,
        ],
        vec![0xff; 1024],
    ];
    for bytes in &garbage {
        let Some(send) = cx.target.hooks.send_garbage(&ep, bytes) else {
            skip!("target has no byte-level transport to corrupt (in-process backend)");
        };
        within(EVENTUALLY, "the garbage to be sent", send)
            .await?
            .map_err(|e| Verdict::Fail(format!("send_garbage hook failed: {e}")))?;
    }
    let reply = within(EVENTUALLY, "a valid call", requests.call(&ep, "still here")).await??;
    check_eq!(text(&reply), "still here");
    Ok(())
}

async fn stopped_endpoint_not_routed(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("draining");
    let started = flag();
    let s = started.clone();
    let server = requests
        .serve(
            &ep,
            unary_fn(move |_req: Request| {
                s.store(true, Ordering::SeqCst);
                async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    Ok("done")
                }
            }),
        )
        .await?;
    let in_flight = requests.call(&ep, "work");
    let drain = async {
        eventually(EVENTUALLY, "the handler to start", || {
            started.load(Ordering::SeqCst)
        })
        .await?;
        Ok::<_, Verdict>(server.drain(Duration::from_secs(5)).await)
    };
    let (reply, killed) = within(EVENTUALLY, "the call and the drain", async {
        tokio::join!(in_flight, drain)
    })
    .await?;
    check_eq!(
        text(&reply?),
        "done",
        "the call in flight during the drain completes"
    );
    check_eq!(killed?, 0, "calls killed by a drain with ample grace");

    let timeout = Duration::from_secs(10);
    let started = Instant::now();
    let result = within(
        timeout + SLACK,
        "a call after the drain",
        requests.call_with(Call::new(&ep, "more").timeout(timeout)),
    )
    .await?;
    check_kind!(result, ErrorKind::NoResponders);
    let elapsed = started.elapsed();
    check!(
        elapsed < SLACK,
        "no-responders after drain took {elapsed:?}"
    );
    Ok(())
}

async fn responder_restart_recovers(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("phoenix");
    let mut server = Some(requests.serve(&ep, echo()).await?);
    let reply = within(
        EVENTUALLY,
        "the call before restart",
        requests.call(&ep, "before"),
    )
    .await??;
    check_eq!(text(&reply), "before");

    cx.restart().await?;

    // A reconnecting backend re-attaches the existing server; where the
    // serving peer itself went away, serve again after a grace period.
    let started = Instant::now();
    let reserve_after = Duration::from_secs(5);
    let limit = Duration::from_secs(20);
    let mut reserved = false;
    loop {
        let call = Call::new(&ep, "after").timeout(Duration::from_secs(1));
        let last_err = match requests.call_with(call).await {
            Ok(reply) => {
                check_eq!(text(&reply.body), "after");
                break;
            }
            Err(e) => e,
        };
        if started.elapsed() > limit {
            return Err(Verdict::Fail(format!(
                "no successful call within {limit:?} of the restart; last error: {last_err}"
            )));
        }
        if !reserved && started.elapsed() > reserve_after {
            server = None;
            match requests.serve(&ep, echo()).await {
                Ok(s) => {
                    server = Some(s);
                    reserved = true;
                }
                // The connection may still be coming back; try again.
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e.into()),
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Recovered for good, not for one lucky call.
    for i in 0..5 {
        let body = format!("again-{i}");
        let reply = within(
            EVENTUALLY,
            "a call after recovery",
            requests.call(&ep, body.clone()),
        )
        .await??;
        check_eq!(text(&reply), body);
    }
    drop(server);
    Ok(())
}

async fn unsupported_ops_refused(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let caps = requests.capabilities().clone();
    let ep = cx.name("refusals");
    let server = requests.serve(&ep, echo()).await?;

    let result = within(EVENTUALLY, "a stream", requests.stream(Call::new(&ep, "s"))).await?;
    if caps.streaming {
        let mut replies = result?;
        let got = within(EVENTUALLY, "the stream", collect(&mut replies)).await??;
        check_eq!(
            got,
            vec!["s".to_owned()],
            "streamed call to a unary handler"
        );
    } else {
        check_kind!(result, ErrorKind::Unsupported);
    }

    let routes = [
        (Route::RoundRobin, caps.round_robin),
        (Route::Random, caps.random),
        (Route::PowerOfTwo, caps.power_of_two),
        (Route::Instance(server.instance()), caps.direct),
    ];
    for (route, declared) in routes {
        let call = Call::new(&ep, "r").route(route);
        let result = within(EVENTUALLY, "a routed call", requests.call_with(call)).await?;
        if declared {
            match result {
                Ok(reply) => check_eq!(text(&reply.body), "r", "{route:?}"),
                Err(e) => {
                    return Err(Verdict::Fail(format!(
                        "declared route {route:?} failed: {e}"
                    )))
                }
            }
        } else {
            check_kind!(result, ErrorKind::Unsupported);
        }
    }
    // A backend that cannot count its instances runs a broadcast to its
    // deadline: keep it short.
    let deadline = Duration::from_secs(1);
    let result = within(
        EVENTUALLY,
        "a broadcast",
        requests.broadcast(Call::new(&ep, "b").timeout(deadline)),
    )
    .await?;
    if caps.broadcast {
        let answers = within(
            deadline + SLACK,
            "the broadcast's answers",
            result?.collect(),
        )
        .await?;
        check_eq!(answers.len(), 1, "one instance, one answer: {answers:?}");
        check_eq!(answers[0].instance, server.instance());
        match &answers[0].reply {
            Ok(reply) => check_eq!(text(&reply.body), "b", "broadcast answer"),
            Err(e) => return Err(Verdict::Fail(format!("declared broadcast failed: {e}"))),
        }
    } else {
        check_kind!(result, ErrorKind::Unsupported);
    }
    // `cancellation` has no operation to refuse: stop and kill are requests
    // a backend without it cannot deliver, so the cases needing it skip.
    drop(server);
    Ok(())
}

/// A `traceparent` sent by the caller reaches the handler intact (trace id and
/// parent span id), with its `tracestate`; a call without one still carries a
/// valid, fresh trace context, so a trace crosses processes on every backend.
async fn trace_context_propagates(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    let ep = cx.name("traced");
    // What the handler saw: (traceparent, tracestate) of its trace context.
    type Seen = Vec<(Option<String>, Option<String>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let log = seen.clone();
    let server = requests
        .serve(
            &ep,
            unary_fn(move |req: Request| {
                let ctx = req.trace_context();
                log.lock().unwrap_or_else(|p| p.into_inner()).push((
                    ctx.map(|c| c.traceparent()),
                    ctx.and_then(|c| c.tracestate().map(str::to_owned)),
                ));
                async { Ok("traced") }
            }),
        )
        .await?;
    let last = |seen: &Mutex<Vec<_>>| seen.lock().unwrap_or_else(|p| p.into_inner()).pop();

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let call = Call::new(&ep, "x")
        .header("traceparent", traceparent)
        .header("tracestate", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    within(EVENTUALLY, "a traced call", requests.call_with(call)).await??;
    let Some((tp, ts)) = last(&seen) else {
        return Err(Verdict::Fail("handler saw no call".into()));
    };
    check_eq!(
        tp.as_deref(),
        Some(traceparent),
        "traceparent the handler saw"
    );
    check_eq!(
        ts.as_deref(),
        Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
        "tracestate the handler saw"
    );

    within(EVENTUALLY, "an untraced call", requests.call(&ep, "y")).await??;
    let Some((tp, _)) = last(&seen) else {
        return Err(Verdict::Fail("handler saw no call".into()));
    };
    let Some(tp) = tp else {
        return Err(Verdict::Fail(
            "a call without a traceparent reached the handler without a trace context".into(),
        ));
    };
    check!(
        !tp.contains("0af7651916cd43dd8448eb211c80319c"),
        "a new call must not reuse another call's trace id: {tp}"
    );
    drop(server);
    Ok(())
}

/// Each live instance answers one broadcast call exactly once, and each
/// answer names the instance that sent it; an endpoint nobody serves fails
/// fast with `NoResponders`.
async fn broadcast_every_instance_answers_once(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().broadcast {
        skip!("backend does not declare `broadcast`");
    }
    let ep = cx.name("everyone");
    let (servers, counters) = serve_whoami(requests, &ep, 3).await?;
    // A backend that cannot count its instances runs to the deadline.
    let timeout = Duration::from_secs(2);
    let broadcast = within(
        EVENTUALLY,
        "the broadcast to start",
        requests.broadcast(Call::new(&ep, "").timeout(timeout)),
    )
    .await??;
    let answers = within(timeout + SLACK, "the broadcast to end", broadcast.collect()).await?;
    let mut answered: Vec<InstanceId> = Vec::new();
    for answer in &answers {
        let reply = match &answer.reply {
            Ok(reply) => reply,
            Err(e) => {
                return Err(Verdict::Fail(format!(
                    "instance {} failed its answer: {e}",
                    answer.instance
                )))
            }
        };
        check_eq!(
            text(&reply.body),
            answer.instance.to_string(),
            "the answer names the instance that sent it"
        );
        answered.push(answer.instance);
    }
    answered.sort();
    let mut expected: Vec<InstanceId> = servers.iter().map(|s| s.instance()).collect();
    expected.sort();
    check_eq!(answered, expected, "every instance answers exactly once");
    let handled: Vec<usize> = counters.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    check_eq!(handled, vec![1, 1, 1], "each handler ran once");
    drop(servers);

    let nobody = cx.name("nobody");
    no_responders_fast(
        "a broadcast nobody hears",
        requests.broadcast(Call::new(&nobody, "").timeout(LONG)),
    )
    .await
}

/// A silent instance does not hold the others' answers past the deadline:
/// theirs arrive before it, and the silent one is reported with `Timeout` at
/// the deadline, not left out. Its handler is not kept running.
async fn broadcast_silent_instance_bounded(cx: &Ctx<'_>) -> CaseResult {
    let requests = cx.requests()?;
    if !requests.capabilities().broadcast {
        skip!("backend does not declare `broadcast`");
    }
    let ep = cx.name("mostly");
    let (talkers, _) = serve_whoami(requests, &ep, 2).await?;
    let silent = requests.serve(&ep, silent()).await?;
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let mut broadcast = within(
        EVENTUALLY,
        "the broadcast to start",
        requests.broadcast(Call::new(&ep, "").timeout(timeout)),
    )
    .await??;
    let mut answers = Vec::new();
    let ended = within(timeout + SLACK, "the broadcast to end", async {
        while let Some(answer) = futures_util::StreamExt::next(&mut broadcast).await {
            answers.push((answer, started.elapsed()));
        }
    })
    .await;
    ended?;
    for talker in &talkers {
        let Some((answer, at)) = answers
            .iter()
            .find(|(a, _)| a.instance == talker.instance())
        else {
            return Err(Verdict::Fail(format!(
                "instance {} did not answer: {answers:?}",
                talker.instance()
            )));
        };
        check!(
            answer.reply.is_ok(),
            "instance {} failed: {:?}",
            talker.instance(),
            answer.reply
        );
        check!(
            *at < timeout,
            "an answering instance was held up until {at:?}, past the {timeout:?} deadline"
        );
    }
    let Some((answer, _)) = answers
        .iter()
        .find(|(a, _)| a.instance == silent.instance())
    else {
        return Err(Verdict::Fail(format!(
            "the silent instance was left out instead of reported: {answers:?}"
        )));
    };
    match &answer.reply {
        Err(e) if e.kind() == ErrorKind::Timeout => {}
        other => {
            return Err(Verdict::Fail(format!(
                "the silent instance: expected Timeout, got {other:?}"
            )))
        }
    }
    check_eq!(answers.len(), 3, "one answer per instance: {answers:?}");
    eventually(
        EVENTUALLY,
        "the silent handler's slot to be released",
        || silent.in_flight() == 0,
    )
    .await?;
    drop(talkers);
    drop(silent);
    Ok(())
}
