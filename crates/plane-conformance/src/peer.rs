//! What the brokerless backends' own tests (`plane-quic`, `plane-zmq`,
//! `plane-tcp`, `plane-http`) share: their conformance target ([`brokerless_target`],
//! with [`PeerHooks`]) and end-to-end checks run over each transport between
//! separate handles (separate sockets, as separate processes would have).
//! Unlike the cases of the suite the checks panic on failure, like the
//! tests that call them.

use std::future::Future;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use plane_core::events::SubscribeOptions;
use plane_core::kv::Kv;
use plane_core::request::{handler_fn, unary_fn, Call, Request, Responder, Route};
use plane_core::{ErrorKind, Events, Requests};
use plane_peer::{PeerRequests, RequestLinks};

/// How a test sends raw bytes to a brokerless backend's own listener.
pub type SendGarbage<L> =
    fn(PeerRequests<L>, Vec<u8>) -> BoxFuture<'static, plane_core::Result<()>>;

/// The hooks of a brokerless backend: a restart is
/// [`PeerRequests::restart`] (a new listener, every instance registered
/// again), garbage goes to the process's one listener, whatever the
/// endpoint.
pub struct PeerHooks<L> {
    requests: PeerRequests<L>,
    garbage: SendGarbage<L>,
}

impl<L: RequestLinks> crate::Hooks for PeerHooks<L> {
    fn restart(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(Box::pin(async move {
            self.requests.restart().await.map_err(|e| e.to_string())
        }))
    }

    fn send_garbage<'a>(
        &'a self,
        _endpoint: &'a str,
        garbage: &'a [u8],
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        let sent = (self.garbage)(self.requests.clone(), garbage.to_vec());
        Some(Box::pin(
            async move { sent.await.map_err(|e| e.to_string()) },
        ))
    }
}

/// The conformance target of a brokerless backend `name` in one process:
/// its request plane `requests`, its events plane (`None` for a backend
/// that serves none: the events cases skip, saying so), and the discovery
/// kv they share (the discovery cases run over it; it is not the backend's
/// own kv, so the kv cases skip).
pub fn brokerless_target<L: RequestLinks>(
    name: &str,
    requests: PeerRequests<L>,
    events: Option<Events>,
    discovery_kv: Kv,
    garbage: SendGarbage<L>,
) -> crate::Target {
    let mut target = crate::Target::new(name, "in-process");
    target.requests = Some(Requests::new(requests.clone()));
    target.events = events;
    target.discovery_kv = Some(discovery_kv);
    target.hooks = std::sync::Arc::new(PeerHooks { requests, garbage });
    target
}

/// Unary and streamed calls, refusals, a vanishing handler and direct
/// routing, from `caller` to `server` (two handles on one discovery).
///
/// # Panics
/// When a check fails.
pub async fn requests_between_handles(server: Requests, caller: Requests) {
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let reply = caller.call("echo", "hello").await.unwrap();
    assert_eq!(reply.to_bytes(), "hello");

    let _count = server
        .serve(
            "count",
            handler_fn(|_r: Request, out: Responder| async move {
                for i in 0..5u8 {
                    out.send(vec![i]).await?;
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("count", "")).await.unwrap();
    let mut got = Vec::new();
    while let Some(r) = replies.next_reply().await {
        got.push(r.unwrap().body.to_bytes()[0]);
    }
    assert_eq!(got, vec![0, 1, 2, 3, 4]);

    assert_eq!(
        caller.call("nobody", "x").await.unwrap_err().kind(),
        ErrorKind::NoResponders
    );
    let big = vec![0u8; caller.capabilities().max_payload + 1];
    assert_eq!(
        caller.call("echo", big).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );

    // A handler that vanishes mid-stream: Disconnected, not a clean end.
    let vanish = server
        .serve(
            "vanish",
            handler_fn(|_r: Request, out: Responder| async move {
                out.send("one").await?;
                std::future::pending::<()>().await;
                Ok(())
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("vanish", "")).await.unwrap();
    assert_eq!(
        replies.next_reply().await.unwrap().unwrap().body.to_bytes(),
        "one"
    );
    vanish.abort();
    let end = tokio::time::timeout(Duration::from_secs(5), replies.next_reply())
        .await
        .unwrap();
    assert_eq!(end.unwrap().unwrap_err().kind(), ErrorKind::Disconnected);

    // Direct routing.
    let direct = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    for _ in 0..3 {
        let call = Call::new("echo", "d").route(Route::Instance(direct.instance()));
        caller.call_with(call).await.unwrap();
    }
}

/// Calls to the `echo` endpoint served through `requests` succeed again
/// (within a few seconds) after the serving side restarted.
///
/// # Panics
/// When no call succeeds in time.
pub async fn calls_recover_after_restart(requests: &Requests) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if requests.call("echo", "again").await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("calls succeed after a restart");
}

/// Events reach subscribers of other handles, from publishers known when
/// subscribing (nothing published after `subscribe` returned is lost) and
/// from ones that appear later. `handle` makes a new handle on one shared
/// discovery.
///
/// # Panics
/// When a check fails.
pub async fn events_between_handles<F, Fut>(handle: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Events>,
{
    let publisher = handle().await;
    let subscriber = handle().await;
    let mut sub = subscriber.subscribe("peer.>").await.expect("subscribe");

    // A publisher known when subscribing: nothing published after
    // `subscribe` returned is lost.
    publisher.publish("peer.a", "one").await.expect("publish");
    let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the event in time")
        .expect("an open subscription")
        .expect("an event");
    assert_eq!(e.subject, "peer.a");
    assert_eq!(e.body().to_bytes(), "one");
    let origin = e.origin.expect("an origin");
    assert_eq!(origin.publisher, publisher.publisher_id());
    assert_eq!(origin.sequence, 1);

    // A publisher that appears later is found through the discovery watch.
    let late = handle().await;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            late.publish("peer.late", "hello").await.expect("publish");
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                let e = item.expect("an event");
                if e.origin.map(|o| o.publisher) == Some(late.publisher_id()) {
                    return e;
                }
            }
        }
    })
    .await
    .expect("an event of the later publisher");
    assert_eq!(found.subject, "peer.late");
    sub.close();
}

/// A burst far beyond what the subscriber's buffer and the publisher's
/// per-subscriber queue hold, to a subscriber that reads only once it is
/// over: every event is either delivered or counted in an `Overloaded`
/// report. That includes the events dropped at the very end of the burst,
/// after which no event comes to carry their count (the publisher sends a
/// drop notice for them). Not for zmq, whose sockets drop at their
/// high-water mark without telling anyone.
///
/// # Panics
/// When a check fails.
pub async fn a_burst_loses_nothing_unreported(publisher: Events, subscriber: Events) {
    const BURST: u64 = 20_000;
    let mut sub = subscriber
        .subscribe_with(SubscribeOptions::new("flood.>").capacity(64))
        .await
        .expect("subscribe");
    // Until a probe arrives the publisher may not know the subscriber yet.
    // Probes travel ahead of the burst on the same link, so none of them
    // can be among the drops.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            publisher
                .publish("flood.probe", "p")
                .await
                .expect("publish");
            if let Ok(Some(Ok(_))) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                return;
            }
        }
    })
    .await
    .expect("a probe through in time");
    for _ in 0..BURST {
        publisher
            .publish("flood.burst", "e")
            .await
            .expect("publish");
    }
    let (mut delivered, mut dropped) = (0u64, 0u64);
    loop {
        match tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
            Err(_) => break,
            Ok(None) => panic!("the subscription ended"),
            Ok(Some(Ok(e))) => delivered += u64::from(e.subject == "flood.burst"),
            Ok(Some(Err(e))) => {
                assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
                // The report's message starts with the count.
                dropped += e
                    .message()
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("no count in `{e}`"));
            }
        }
    }
    assert!(
        dropped > 0,
        "the burst overflowed nothing ({delivered} delivered)"
    );
    assert_eq!(
        delivered + dropped,
        BURST,
        "{delivered} delivered and {dropped} reported dropped of {BURST}"
    );
    sub.close();
}
