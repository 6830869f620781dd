//! Conformance cases of the events section.
//!
//! Every case publishes through its own [`Events::publisher`], so sequences
//! start at 1 and cases do not see each other's publishers, and uses subjects,
//! streams and consumers made unique by [`Ctx::name`]. Durable cases create
//! their stream through `with_stream`, which deletes it again whatever the
//! outcome. Subscriptions are closed when dropped.
//!
//! "Nothing more arrived" is established with a marker event where the
//! backend declares per-publisher ordering (everything published before the
//! marker has arrived once the marker has), and with a bounded quiet window
//! otherwise.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use plane_core::events::{
    ConsumerConfig, DeliverPolicy, Delivery, DurableSubscription, Event, PublisherId, StreamConfig,
    SubscribeOptions, Subscription,
};
use plane_core::message::names;
use plane_core::trace::TraceContext;
use plane_core::{ErrorKind, Events, Headers, Message};

use crate::{case, check, check_eq, check_kind, skip, within, Case, CaseResult, Ctx, Verdict};

/// The events cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("events", pubsub_roundtrip_with_metadata),
        case!("events", subject_isolation),
        case!("events", wildcard_matching),
        case!("events", broadcast_every_subscriber_gets_all),
        case!("events", worker_group_once_per_group),
        case!("events", worker_group_member_leaves),
        case!("events", concurrent_publish_no_loss),
        case!("events", per_publisher_ordering),
        case!("events", sequence_gap_detected),
        case!("events", nack_redelivers),
        case!("events", ack_prevents_redelivery),
        case!("events", nack_with_delay_respected),
        case!("events", max_in_flight_blocks_until_ack),
        case!("events", consumer_crash_mid_message_redelivered),
        case!("events", max_deliver_dead_letters),
        case!("events", publish_dedup_by_id),
        case!("events", new_durable_subscriber_replays),
        case!("events", unsubscribe_and_close_safe),
        case!("events", slow_consumer_signalled),
        case!("events", oversized_event_rejected),
        case!("events", broker_restart_no_loss),
        case!("events", unsupported_ops_refused),
        case!("events", trace_context_propagates_events),
    ]
}

/// How long something that must happen may take.
const EVENTUALLY: Duration = Duration::from_secs(10);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(500);
/// How long a departure may take to reach the publisher. A brokerless
/// publisher (QUIC, ZeroMQ) hears that a subscription closed over the
/// network, after `close` returned; whatever it handed the departing
/// subscription meanwhile is lost with it, as at-most-once allows.
const DEPARTURE: Duration = Duration::from_secs(1);
/// Header marking the marker event that ends a batch.
const MARKER: &str = "x-conformance-marker";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A fresh publisher on the target's events plane, so sequences start at 1.
fn events(cx: &Ctx<'_>) -> Result<Events, Verdict> {
    Ok(cx.events()?.publisher())
}

/// Like [`events`], skipping unless the backend declares durable mode.
fn durable(cx: &Ctx<'_>) -> Result<Events, Verdict> {
    let ev = events(cx)?;
    if !ev.capabilities().durable {
        skip!("backend does not declare `durable`");
    }
    Ok(ev)
}

/// Create the stream, run `body`, and delete the stream whatever happened.
async fn with_stream(
    ev: &Events,
    config: StreamConfig,
    body: impl AsyncFnOnce() -> CaseResult,
) -> CaseResult {
    let name = config.name.clone();
    ev.create_stream(config).await?;
    let result = body().await;
    let cleanup = ev.delete_stream(&name).await;
    result?;
    cleanup.map_err(Verdict::from)
}

/// The next item of a stream within [`EVENTUALLY`]; errors and the end of the
/// stream fail the case.
async fn next_ok<S, T>(stream: &mut S, what: &str) -> Result<T, Verdict>
where
    S: Stream<Item = plane_core::Result<T>> + Unpin,
{
    match within(EVENTUALLY, what, stream.next()).await? {
        Some(Ok(item)) => Ok(item),
        Some(Err(e)) => Err(Verdict::Fail(format!(
            "unexpected error while waiting for {what}: {e}"
        ))),
        None => Err(Verdict::Fail(format!(
            "the subscription ended while waiting for {what}"
        ))),
    }
}

async fn recv(sub: &mut Subscription, what: &str) -> Result<Event, Verdict> {
    next_ok(sub, what).await
}

async fn recv_delivery(sub: &mut DurableSubscription, what: &str) -> Result<Delivery, Verdict> {
    next_ok(sub, what).await
}

/// Fail if anything at all arrives within `window`.
async fn expect_quiet<S>(stream: &mut S, window: Duration, what: &str) -> CaseResult
where
    S: Stream + Unpin,
    S::Item: std::fmt::Debug,
{
    match tokio::time::timeout(window, stream.next()).await {
        Err(_) => Ok(()),
        Ok(item) => Err(Verdict::Fail(format!(
            "expected nothing within {window:?} ({what}), got {item:?}"
        ))),
    }
}

/// Events arriving until a gap of [`QUIET`]; at most `limit`.
async fn collect_quiet(sub: &mut Subscription, limit: usize) -> Result<Vec<Event>, Verdict> {
    let mut got = Vec::new();
    while let Ok(item) = tokio::time::timeout(QUIET, sub.next()).await {
        match item {
            Some(Ok(e)) => got.push(e),
            Some(Err(e)) => return Err(Verdict::Fail(format!("unexpected error: {e}"))),
            None => break,
        }
        check!(got.len() <= limit, "more than {limit} events arrived");
    }
    Ok(got)
}

/// A message marking the end of a batch.
fn marker() -> Message {
    Message::new(Headers::new().with(MARKER, "1"), "marker")
}

fn is_marker(e: &Event) -> bool {
    e.message.headers.get(MARKER).is_some()
}

/// The events received before the marker (at most `limit`). Without declared
/// ordering the marker proves nothing about earlier events, so a quiet window
/// then catches late ones.
async fn until_marker(
    ev: &Events,
    sub: &mut Subscription,
    limit: usize,
) -> Result<Vec<Event>, Verdict> {
    let mut got = Vec::new();
    loop {
        let e = recv(sub, "the marker event").await?;
        if is_marker(&e) {
            break;
        }
        got.push(e);
        check!(
            got.len() <= limit,
            "more than {limit} events before the marker"
        );
    }
    if !ev.capabilities().ordered_per_publisher {
        let late = collect_quiet(sub, limit).await?;
        got.extend(late.into_iter().filter(|e| !is_marker(e)));
    }
    Ok(got)
}

fn sequence(e: &Event) -> Result<u64, Verdict> {
    e.origin
        .map(|o| o.sequence)
        .ok_or_else(|| Verdict::Fail(format!("event on `{}` has no origin", e.subject)))
}

fn subjects(events: &[Event]) -> Vec<String> {
    let mut v: Vec<String> = events.iter().map(|e| e.subject.clone()).collect();
    v.sort();
    v
}

fn body_str(e: &Event) -> String {
    String::from_utf8_lossy(&e.body().to_bytes()).into_owned()
}

// ---------------------------------------------------------------------------
// At-most-once
// ---------------------------------------------------------------------------

async fn pubsub_roundtrip_with_metadata(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("rt");
    let mut sub = ev.subscribe(&subject).await?;
    const N: u64 = 100;
    for i in 1..=N {
        let headers = Headers::new()
            .with("x-index", i.to_string())
            .with("content-type", "application/octet-stream");
        // Binary bodies with every byte value, of varying length.
        let body: Vec<u8> = (0..(i as usize * 7)).map(|b| (b % 256) as u8).collect();
        ev.publish(&subject, Message::new(headers, body)).await?;
    }
    let mut seen = Vec::new();
    for _ in 0..N {
        let e = recv(&mut sub, "the published events").await?;
        check_eq!(e.subject, subject);
        let origin = e
            .origin
            .ok_or_else(|| Verdict::Fail("event without origin".into()))?;
        check_eq!(origin.publisher, ev.publisher_id());
        let i = origin.sequence;
        check!((1..=N).contains(&i), "sequence {i} out of range");
        let index = i.to_string();
        check_eq!(e.message.headers.get("x-index"), Some(index.as_str()));
        check_eq!(
            e.message.headers.get("content-type"),
            Some("application/octet-stream")
        );
        let expected: Vec<u8> = (0..(i as usize * 7)).map(|b| (b % 256) as u8).collect();
        check!(
            e.body().to_bytes() == expected,
            "payload of event {i} differs"
        );
        seen.push(i);
    }
    if !ev.capabilities().ordered_per_publisher {
        seen.sort();
    }
    check_eq!(seen, (1..=N).collect::<Vec<_>>());
    sub.close();
    Ok(())
}

async fn subject_isolation(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let a = cx.name("a");
    let b = cx.name("b");
    let mut sub_a = ev.subscribe(&a).await?;
    let mut sub_b = ev.subscribe(&b).await?;
    // Near misses of `a`: a longer subject and one sharing its prefix.
    for near in [format!("{a}.more"), format!("{a}x")] {
        ev.publish(&near, "near").await?;
    }
    for i in 0..10 {
        ev.publish(&a, format!("a{i}")).await?;
        ev.publish(&b, format!("b{i}")).await?;
    }
    ev.publish(&a, marker()).await?;
    ev.publish(&b, marker()).await?;
    for (sub, subject, prefix) in [(&mut sub_a, &a, "a"), (&mut sub_b, &b, "b")] {
        let got = until_marker(&ev, sub, 100).await?;
        check_eq!(got.len(), 10, "events on `{subject}`");
        for e in &got {
            check_eq!(&e.subject, subject);
            check!(
                body_str(e).starts_with(prefix),
                "event `{}` crossed over to `{subject}`",
                body_str(e)
            );
        }
    }
    Ok(())
}

async fn wildcard_matching(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    if !ev.capabilities().wildcards {
        skip!("backend does not declare `wildcards`");
    }
    let base = cx.name("w");
    let mut star = ev.subscribe(&format!("{base}.*")).await?;
    let mut rest = ev.subscribe(&format!("{base}.>")).await?;
    let one = format!("{base}.a");
    let two = format!("{base}.a.b");
    let three = format!("{base}.b.c.d");
    for subject in [
        base.clone(),
        one.clone(),
        two.clone(),
        three.clone(),
        format!("{base}x.a"),
        format!("other.{base}.a"),
    ] {
        ev.publish(&subject, "x").await?;
    }
    // The marker matches both patterns.
    ev.publish(&format!("{base}.end"), marker()).await?;
    let got = until_marker(&ev, &mut star, 20).await?;
    check_eq!(
        subjects(&got),
        vec![one.clone()],
        "`*` matches exactly one token"
    );
    let got = until_marker(&ev, &mut rest, 20).await?;
    let mut expected = vec![one, two, three];
    expected.sort();
    check_eq!(subjects(&got), expected, "`>` matches one or more tokens");
    Ok(())
}

async fn broadcast_every_subscriber_gets_all(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("bc");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(ev.subscribe(&subject).await?);
    }
    const N: u64 = 50;
    for i in 0..N {
        ev.publish(&subject, format!("{i}")).await?;
    }
    ev.publish(&subject, marker()).await?;
    for (k, sub) in subs.iter_mut().enumerate() {
        let got = until_marker(&ev, sub, 1000).await?;
        let mut seqs = got.iter().map(sequence).collect::<Result<Vec<_>, _>>()?;
        seqs.sort();
        check_eq!(
            seqs,
            (1..=N).collect::<Vec<_>>(),
            "subscriber {k} gets every event exactly once"
        );
    }
    Ok(())
}

async fn worker_group_once_per_group(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    if !ev.capabilities().groups {
        skip!("backend does not declare `groups`");
    }
    let subject = cx.name("wg");
    const N: u64 = 60;
    let mut groups = Vec::new();
    for g in ["g1", "g2"] {
        let group = cx.name(g);
        let mut members = Vec::new();
        for m in 0..3usize {
            let opts = SubscribeOptions::new(subject.clone()).group(group.clone());
            let sub = ev.subscribe_with(opts).await?;
            members.push(sub.map(move |e| (m, e)));
        }
        groups.push((group, futures_util::stream::select_all(members)));
    }
    for i in 0..N {
        ev.publish(&subject, format!("{i}")).await?;
    }
    for (group, merged) in &mut groups {
        let mut seen = BTreeSet::new();
        let mut per_member = [0u64; 3];
        while (seen.len() as u64) < N {
            let (m, item) = within(EVENTUALLY, "the group's events", merged.next())
                .await?
                .ok_or_else(|| Verdict::Fail("a group member's subscription ended".into()))?;
            let e = item?;
            let seq = sequence(&e)?;
            check!(
                seen.insert(seq),
                "event {seq} delivered twice within group `{group}`"
            );
            per_member[m] += 1;
        }
        expect_quiet(merged, QUIET, "no event twice within a group").await?;
        check_eq!(per_member.iter().sum::<u64>(), N);
    }
    Ok(())
}

/// Publish events `seqs` (the publisher's sequence numbers) and check that
/// the `members` of one group together receive each exactly once.
async fn group_gets_each_once(
    ev: &Events,
    subject: &str,
    members: &mut [Subscription],
    seqs: std::ops::RangeInclusive<u64>,
    what: &str,
) -> CaseResult {
    for i in seqs.clone() {
        ev.publish(subject, format!("{i}")).await?;
    }
    let want: BTreeSet<u64> = seqs.collect();
    let mut seen = BTreeSet::new();
    let mut merged = futures_util::stream::select_all(members.iter_mut());
    while seen.len() < want.len() {
        let item = match tokio::time::timeout(EVENTUALLY, merged.next()).await {
            Ok(Some(item)) => item,
            Ok(None) => return Err(Verdict::Fail(format!("every member ended ({what})"))),
            Err(_) => {
                let missing: Vec<u64> = want.difference(&seen).copied().collect();
                return Err(Verdict::Fail(format!(
                    "events {missing:?} reached no member within {EVENTUALLY:?} ({what})"
                )));
            }
        };
        let seq = sequence(&item?)?;
        check!(want.contains(&seq), "unexpected event {seq} ({what})");
        check!(seen.insert(seq), "event {seq} delivered twice ({what})");
    }
    expect_quiet(&mut merged, QUIET, what).await
}

async fn worker_group_member_leaves(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    if !ev.capabilities().groups {
        skip!("backend does not declare `groups`");
    }
    let subject = cx.name("wl");
    let group = cx.name("g");
    let mut members = Vec::new();
    for _ in 0..3 {
        let opts = SubscribeOptions::new(subject.clone()).group(group.clone());
        members.push(ev.subscribe_with(opts).await?);
    }
    const N: u64 = 30;
    group_gets_each_once(&ev, &subject, &mut members, 1..=N, "three members").await?;

    // One member unsubscribes: it gets nothing more, the other two get
    // every later event once.
    let mut closed = members.remove(0);
    closed.close();
    tokio::time::sleep(DEPARTURE).await;
    group_gets_each_once(&ev, &subject, &mut members, N + 1..=2 * N, "after a close").await?;
    let after = closed.next().await;
    check!(after.is_none(), "a closed member yielded {after:?}");

    // Another member is dropped without closing: the last one gets all.
    drop(members.remove(0));
    tokio::time::sleep(DEPARTURE).await;
    group_gets_each_once(
        &ev,
        &subject,
        &mut members,
        2 * N + 1..=3 * N,
        "after a drop",
    )
    .await
}

async fn concurrent_publish_no_loss(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("cp");
    const PUBLISHERS: usize = 4;
    const EACH: u64 = 250;
    let mut sub = ev
        .subscribe_with(SubscribeOptions::new(subject.clone()).capacity(8192))
        .await?;
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..PUBLISHERS {
        let p = ev.publisher();
        ids.push(p.publisher_id());
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..EACH {
                p.publish(&subject, format!("{i}")).await?;
            }
            Ok::<_, plane_core::Error>(())
        }));
    }
    let mut per: HashMap<PublisherId, BTreeSet<u64>> = HashMap::new();
    for _ in 0..(PUBLISHERS as u64 * EACH) {
        let e = recv(&mut sub, "the concurrently published events").await?;
        let origin = e
            .origin
            .ok_or_else(|| Verdict::Fail("event without origin".into()))?;
        check!(
            per.entry(origin.publisher)
                .or_default()
                .insert(origin.sequence),
            "duplicate event {origin:?}"
        );
    }
    for t in tasks {
        t.await
            .map_err(|e| Verdict::Fail(format!("publisher task failed: {e}")))??;
    }
    for id in ids {
        let got = per.get(&id).map_or(0, BTreeSet::len);
        check_eq!(got as u64, EACH, "events of publisher {id}");
    }
    Ok(())
}

async fn per_publisher_ordering(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    if !ev.capabilities().ordered_per_publisher {
        skip!("backend does not declare `ordered_per_publisher`");
    }
    let subject = cx.name("ord");
    const EACH: u64 = 200;
    let mut sub = ev.subscribe(&subject).await?;
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let p = ev.publisher();
        let subject = subject.clone();
        tasks.push(tokio::spawn(async move {
            for i in 1..=EACH {
                p.publish(&subject, format!("{i}")).await?;
            }
            Ok::<_, plane_core::Error>(())
        }));
    }
    let mut last: HashMap<PublisherId, u64> = HashMap::new();
    for _ in 0..2 * EACH {
        let e = recv(&mut sub, "the interleaved events").await?;
        let origin = e
            .origin
            .ok_or_else(|| Verdict::Fail("event without origin".into()))?;
        let prev = last.insert(origin.publisher, origin.sequence).unwrap_or(0);
        check_eq!(
            origin.sequence,
            prev + 1,
            "publisher {} out of order",
            origin.publisher
        );
        check_eq!(body_str(&e), origin.sequence.to_string());
    }
    for t in tasks {
        t.await
            .map_err(|e| Verdict::Fail(format!("publisher task failed: {e}")))??;
    }
    Ok(())
}

async fn sequence_gap_detected(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let watched = cx.name("gap");
    let unwatched = cx.name("elsewhere");
    let other = ev.publisher();
    let mut sub = ev.subscribe(&watched).await?;
    // `ev` publishes 1 (watched), 2 (unwatched), 3 (watched): the subscriber
    // sees a gap. `other` publishes its own 1 and 2, which are no duplicates
    // of `ev`'s although the numbers repeat.
    ev.publish(&watched, "first").await?;
    ev.publish(&unwatched, "missed").await?;
    ev.publish(&watched, "after the gap").await?;
    other.publish(&watched, "other 1").await?;
    other.publish(&watched, "other 2").await?;
    let mut last: HashMap<PublisherId, u64> = HashMap::new();
    let mut seen = BTreeSet::new();
    let mut gaps = Vec::new();
    for _ in 0..4 {
        let e = recv(&mut sub, "the watched events").await?;
        let o = e
            .origin
            .ok_or_else(|| Verdict::Fail("event without origin".into()))?;
        check!(
            seen.insert((o.publisher, o.sequence)),
            "(publisher, sequence) {o:?} repeated without a redelivery"
        );
        let prev = last.entry(o.publisher).or_insert(0);
        if o.sequence > *prev + 1 {
            gaps.push((o.publisher, *prev, o.sequence));
        }
        *prev = (*prev).max(o.sequence);
    }
    check_eq!(
        gaps,
        vec![(ev.publisher_id(), 1, 3)],
        "exactly the gap of the missed event is visible"
    );
    check_eq!(seen.len(), 4);
    check!(
        seen.contains(&(other.publisher_id(), 1)) && seen.contains(&(ev.publisher_id(), 1)),
        "both publishers' first events are distinct"
    );

    // A durable redelivery carries the same origin, so a consumer can drop it
    // as a duplicate.
    if ev.capabilities().durable {
        let stream = cx.name("gaps");
        let subject = format!("{stream}.x");
        with_stream(
            &ev,
            StreamConfig::new(&stream, [subject.clone()]),
            async || {
                let mut c = ev
                    .consume(ConsumerConfig::new(&stream, cx.name("c")))
                    .await?;
                ev.publish_durable(&subject, "once", None).await?;
                let first = recv_delivery(&mut c, "the durable event").await?;
                first.nack(None).await?;
                let again = recv_delivery(&mut c, "the redelivery").await?;
                check!(first.event.origin.is_some(), "durable event without origin");
                check_eq!(
                    again.event.origin,
                    first.event.origin,
                    "a redelivery keeps its origin"
                );
                again.ack().await?;
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Durable
// ---------------------------------------------------------------------------

async fn nack_redelivers(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    let stream = cx.name("nr");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            // A long ack wait: anything redelivered within the case came back
            // because of the nack.
            let config =
                ConsumerConfig::new(&stream, cx.name("c")).ack_wait(Duration::from_secs(60));
            let mut c = ev.consume(config).await?;
            const N: u64 = 10;
            for i in 0..N {
                ev.publish_durable(&subject, format!("{i}"), None).await?;
            }
            let mut deliveries: HashMap<u64, u32> = HashMap::new();
            let mut acked = BTreeSet::new();
            while (acked.len() as u64) < N {
                let d = recv_delivery(&mut c, "deliveries and redeliveries").await?;
                *deliveries.entry(d.stream_sequence).or_default() += 1;
                if d.attempt == 1 {
                    d.nack(None).await?;
                } else {
                    d.ack().await?;
                    acked.insert(d.stream_sequence);
                }
            }
            for (seq, n) in &deliveries {
                check!(*n >= 2, "event {seq} was nacked but delivered {n} time(s)");
            }
            check_eq!(deliveries.len() as u64, N);
            Ok(())
        },
    )
    .await
}

async fn ack_prevents_redelivery(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    let stream = cx.name("ap");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let ack_wait = Duration::from_millis(300);
            let config = ConsumerConfig::new(&stream, cx.name("c")).ack_wait(ack_wait);
            let mut c = ev.consume(config).await?;
            for i in 0..5 {
                ev.publish_durable(&subject, format!("{i}"), None).await?;
            }
            for _ in 0..5 {
                let d = recv_delivery(&mut c, "the events").await?;
                check_eq!(d.attempt, 1);
                d.ack().await?;
            }
            expect_quiet(
                &mut c,
                ack_wait * 2 + Duration::from_millis(200),
                "acked events",
            )
            .await?;
            // The consumer is still alive: the quiet was not a dead subscription.
            ev.publish_durable(&subject, "later", None).await?;
            let d = recv_delivery(&mut c, "an event after the quiet window").await?;
            check_eq!(d.attempt, 1);
            check_eq!(body_str(&d.event), "later");
            d.ack().await?;
            Ok(())
        },
    )
    .await
}

async fn nack_with_delay_respected(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    if !ev.capabilities().nack_delay {
        skip!("backend does not declare `nack_delay`");
    }
    let stream = cx.name("nd");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let config =
                ConsumerConfig::new(&stream, cx.name("c")).ack_wait(Duration::from_secs(60));
            let mut c = ev.consume(config).await?;
            ev.publish_durable(&subject, "x", None).await?;
            let d = recv_delivery(&mut c, "the event").await?;
            let delay = Duration::from_millis(1000);
            let nacked = Instant::now();
            d.nack(Some(delay)).await?;
            let again = recv_delivery(&mut c, "the delayed redelivery").await?;
            let waited = nacked.elapsed();
            // Timers have millisecond granularity; nothing may come sooner.
            check!(
                waited + Duration::from_millis(20) >= delay,
                "redelivered after {waited:?}, before the delay of {delay:?}"
            );
            check_eq!(again.attempt, 2);
            check_eq!(again.stream_sequence, d.stream_sequence);
            again.ack().await?;
            Ok(())
        },
    )
    .await
}

async fn max_in_flight_blocks_until_ack(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    let stream = cx.name("mif");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let config = ConsumerConfig::new(&stream, cx.name("c"))
                .ack_wait(Duration::from_secs(60))
                .max_in_flight(1);
            let mut c = ev.consume(config).await?;
            ev.publish_durable(&subject, "first", None).await?;
            ev.publish_durable(&subject, "second", None).await?;
            let first = recv_delivery(&mut c, "the first event").await?;
            expect_quiet(&mut c, QUIET, "the second event before the first is acked").await?;
            first.ack().await?;
            let second = recv_delivery(&mut c, "the second event after the ack").await?;
            check!(
                second.stream_sequence != first.stream_sequence,
                "the first event came back instead of the second"
            );
            check_eq!(second.attempt, 1);
            second.ack().await?;
            Ok(())
        },
    )
    .await
}

async fn consumer_crash_mid_message_redelivered(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    let stream = cx.name("crash");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let config =
                ConsumerConfig::new(&stream, cx.name("c")).ack_wait(Duration::from_millis(500));
            let mut a = ev.consume(config.clone()).await?;
            ev.publish_durable(&subject, "work", None).await?;
            let taken = recv_delivery(&mut a, "the event at subscriber A").await?;
            let (seq, origin) = (taken.stream_sequence, taken.event.origin);
            // A crashes mid-message: neither ack nor nack.
            drop(taken);
            drop(a);
            let mut b = ev.consume(config).await?;
            let d = recv_delivery(&mut b, "the redelivery at subscriber B").await?;
            check_eq!(d.stream_sequence, seq);
            check_eq!(d.event.origin, origin);
            check!(d.attempt >= 2, "attempt {} after a crash", d.attempt);
            d.ack().await?;
            b.close();
            Ok(())
        },
    )
    .await
}

async fn max_deliver_dead_letters(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    if !ev.capabilities().dead_letter {
        skip!("backend does not declare `dead_letter`");
    }
    let stream = cx.name("dlq");
    let subject = format!("{stream}.x");
    let dead_subject = cx.name("dead");
    let mut dead = ev.subscribe(&dead_subject).await?;
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let config = ConsumerConfig::new(&stream, cx.name("c"))
                .ack_wait(Duration::from_secs(60))
                .max_deliver(2)
                .dead_letter(&dead_subject);
            let mut c = ev.consume(config).await?;
            let headers = Headers::new().with("x-app", "kept");
            ev.publish_durable(&subject, Message::new(headers, "poison"), None)
                .await?;
            let mut origin = None;
            for attempt in 1..=2 {
                let d = recv_delivery(&mut c, "a delivery of the poison event").await?;
                check_eq!(d.attempt, attempt);
                origin = d.event.origin;
                d.nack(None).await?;
            }
            let e = recv(&mut dead, "the dead-lettered event").await?;
            check_eq!(e.subject, dead_subject);
            check_eq!(body_str(&e), "poison");
            check_eq!(e.message.headers.get("x-app"), Some("kept"));
            check_eq!(
                e.message.headers.get(names::DEAD_LETTER_SUBJECT),
                Some(subject.as_str())
            );
            check_eq!(
                e.message.headers.get(names::DEAD_LETTER_DELIVERIES),
                Some("2")
            );
            check!(origin.is_some(), "delivery without origin");
            check_eq!(e.origin, origin, "the dead letter keeps its origin");
            expect_quiet(&mut c, QUIET, "deliveries after dead-lettering").await?;
            Ok(())
        },
    )
    .await
}

async fn publish_dedup_by_id(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    if !ev.capabilities().dedup {
        skip!("backend does not declare `dedup`");
    }
    let stream = cx.name("dd");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            let config = ConsumerConfig::new(&stream, cx.name("c"))
                .deliver(DeliverPolicy::New)
                .ack_wait(Duration::from_secs(60));
            let mut c = ev.consume(config).await?;
            let id = cx.name("msg");
            let first = ev.publish_durable(&subject, "once", Some(&id)).await?;
            let second = ev.publish_durable(&subject, "once", Some(&id)).await?;
            check!(
                !first.duplicate,
                "the first publish was taken for a duplicate"
            );
            check!(second.duplicate, "the repeated id was not recognised");
            check_eq!(second.sequence, first.sequence);
            check_eq!(second.stream, stream);
            let other = ev
                .publish_durable(&subject, "other", Some(&cx.name("msg2")))
                .await?;
            check!(!other.duplicate);
            check!(other.sequence > first.sequence);
            // Stream order: the deduplicated event, then the other one, then nothing.
            let d = recv_delivery(&mut c, "the deduplicated event").await?;
            check_eq!(d.stream_sequence, first.sequence);
            d.ack().await?;
            let d = recv_delivery(&mut c, "the other event").await?;
            check_eq!(d.stream_sequence, other.sequence);
            check_eq!(body_str(&d.event), "other");
            d.ack().await?;
            expect_quiet(&mut c, QUIET, "a second copy of the deduplicated event").await?;
            Ok(())
        },
    )
    .await
}

async fn new_durable_subscriber_replays(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    if !ev.capabilities().replay {
        skip!("backend does not declare `replay`");
    }
    let stream = cx.name("rp");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            for i in 0..5 {
                ev.publish_durable(&subject, format!("old{i}"), None)
                    .await?;
            }
            let all = ConsumerConfig::new(&stream, cx.name("all"))
                .deliver(DeliverPolicy::All)
                .ack_wait(Duration::from_secs(60));
            let mut c = ev.consume(all).await?;
            let mut got = Vec::new();
            while got.len() < 5 {
                let d = recv_delivery(&mut c, "the replayed history").await?;
                if !got.contains(&body_str(&d.event)) {
                    got.push(body_str(&d.event));
                }
                d.ack().await?;
            }
            let expected: Vec<String> = (0..5).map(|i| format!("old{i}")).collect();
            check_eq!(got, expected, "history replayed in stream order");
            // A consumer starting at new events does not replay.
            let new = ConsumerConfig::new(&stream, cx.name("new"))
                .deliver(DeliverPolicy::New)
                .ack_wait(Duration::from_secs(60));
            let mut n = ev.consume(new).await?;
            ev.publish_durable(&subject, "fresh", None).await?;
            let d = recv_delivery(&mut n, "the event after creation").await?;
            check_eq!(body_str(&d.event), "fresh");
            d.ack().await?;
            Ok(())
        },
    )
    .await
}

async fn unsubscribe_and_close_safe(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("uc");
    let mut keep = ev.subscribe(&subject).await?;
    let mut gone = ev.subscribe(&subject).await?;
    gone.close();
    gone.close();
    ev.publish(&subject, "after close").await?;
    let e = recv(&mut keep, "the event at the remaining subscription").await?;
    check_eq!(body_str(&e), "after close");
    let end = within(EVENTUALLY, "the closed subscription to end", gone.next()).await?;
    check!(end.is_none(), "a closed subscription yielded {end:?}");
    keep.close();
    check!(keep.next().await.is_none());

    if ev.capabilities().durable {
        let stream = cx.name("ucs");
        let subject = format!("{stream}.x");
        with_stream(
            &ev,
            StreamConfig::new(&stream, [subject.clone()]),
            async || {
                let config = ConsumerConfig::new(&stream, cx.name("c"));
                let mut a = ev.consume(config.clone()).await?;
                let mut b = ev.consume(config).await?;
                a.close();
                a.close();
                check!(
                    a.next().await.is_none(),
                    "a closed durable subscription yielded"
                );
                ev.publish_durable(&subject, "x", None).await?;
                let d = recv_delivery(&mut b, "the event at the remaining subscriber").await?;
                d.ack().await?;
                b.close();
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

async fn slow_consumer_signalled(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("slow");
    const CAPACITY: usize = 8;
    // Transports may buffer a little beyond the subscription's own capacity.
    const SLACK: usize = 32;
    let mut sub = ev
        .subscribe_with(SubscribeOptions::new(subject.clone()).capacity(CAPACITY))
        .await?;
    for i in 0..1000 {
        ev.publish(&subject, format!("{i}")).await?;
    }
    // Stay stalled while the burst is delivered: on a networked broker
    // `publish` returns before delivery, and a reader that starts at once
    // keeps up with the tail of the burst instead of being slow.
    tokio::time::sleep(QUIET).await;
    let mut events = 0usize;
    let mut overloaded = 0usize;
    loop {
        match tokio::time::timeout(QUIET, sub.next()).await {
            Err(_) => break,
            Ok(None) => return Err(Verdict::Fail("the subscription ended".into())),
            Ok(Some(Ok(_))) => events += 1,
            Ok(Some(Err(e))) => {
                check_eq!(e.kind(), ErrorKind::Overloaded, "error {e}");
                overloaded += 1;
            }
        }
        check!(
            events <= CAPACITY + SLACK,
            "{events} events buffered for a subscriber of capacity {CAPACITY}"
        );
        check!(overloaded <= 1000, "too many overload signals");
    }
    check!(overloaded >= 1, "dropping events was not signalled");
    // The subscription still works after the overflow.
    ev.publish(&subject, "after").await?;
    let e = recv(&mut sub, "an event after the overflow").await?;
    check_eq!(body_str(&e), "after");
    sub.close();
    Ok(())
}

async fn oversized_event_rejected(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let max = ev.capabilities().max_payload;
    let subject = cx.name("big");
    let mut sub = ev.subscribe(&subject).await?;
    let exact = Bytes::from(vec![7u8; max]);
    let over = Bytes::from(vec![7u8; max + 1]);
    ev.publish(&subject, exact.clone()).await?;
    check_kind!(
        ev.publish(&subject, over.clone()).await,
        ErrorKind::PayloadTooLarge
    );
    // Headers count against the limit too.
    let headers = Headers::new().with("k", "v");
    check_kind!(
        ev.publish(&subject, Message::new(headers, exact.clone()))
            .await,
        ErrorKind::PayloadTooLarge
    );
    let e = recv(&mut sub, "the event of exactly max_payload bytes").await?;
    check_eq!(e.body().len(), max);
    check!(
        e.body().to_bytes() == exact,
        "the large payload arrived altered"
    );
    sub.close();

    if ev.capabilities().durable {
        let stream = cx.name("bigs");
        let subject = format!("{stream}.x");
        with_stream(
            &ev,
            StreamConfig::new(&stream, [subject.clone()]),
            async || {
                ev.publish_durable(&subject, exact.clone(), None).await?;
                check_kind!(
                    ev.publish_durable(&subject, over.clone(), None).await,
                    ErrorKind::PayloadTooLarge
                );
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}

async fn broker_restart_no_loss(cx: &Ctx<'_>) -> CaseResult {
    let ev = durable(cx)?;
    let stream = cx.name("rs");
    let subject = format!("{stream}.x");
    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            const N: u64 = 20;
            let mut stored = BTreeSet::new();
            for i in 0..N {
                let ack = ev.publish_durable(&subject, format!("{i}"), None).await?;
                stored.insert(ack.sequence);
            }
            check_eq!(stored.len() as u64, N);
            cx.restart().await?;
            let config =
                ConsumerConfig::new(&stream, cx.name("c")).ack_wait(Duration::from_secs(5));
            let mut c = ev.consume(config).await?;
            let mut got = BTreeSet::new();
            while got.len() < stored.len() {
                let d = recv_delivery(&mut c, "the events stored before the restart").await?;
                got.insert(d.stream_sequence);
                d.ack().await?;
            }
            check_eq!(
                got,
                stored,
                "every acknowledged publish survived the restart"
            );
            Ok(())
        },
    )
    .await
}

async fn unsupported_ops_refused(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let caps = ev.capabilities().clone();
    let base = cx.name("u");

    let r = ev.subscribe(&format!("{base}.*")).await;
    if caps.wildcards {
        check!(
            r.as_ref()
                .err()
                .is_none_or(|e| e.kind() != ErrorKind::Unsupported),
            "`wildcards` declared but refused: {:?}",
            r.as_ref().err()
        );
    } else {
        check_kind!(r.map(drop), ErrorKind::Unsupported);
    }

    let r = ev
        .subscribe_with(SubscribeOptions::new(base.clone()).group(cx.name("g")))
        .await;
    if caps.groups {
        check!(
            r.as_ref()
                .err()
                .is_none_or(|e| e.kind() != ErrorKind::Unsupported),
            "`groups` declared but refused: {:?}",
            r.as_ref().err()
        );
    } else {
        check_kind!(r.map(drop), ErrorKind::Unsupported);
    }

    let stream = cx.name("us");
    let subject = format!("{stream}.x");
    if !caps.durable {
        check_kind!(
            ev.create_stream(StreamConfig::new(&stream, [subject.clone()]))
                .await,
            ErrorKind::Unsupported
        );
        check_kind!(
            ev.publish_durable(&subject, "x", None).await,
            ErrorKind::Unsupported
        );
        check_kind!(
            ev.consume(ConsumerConfig::new(&stream, "c"))
                .await
                .map(drop),
            ErrorKind::Unsupported
        );
        for (name, declared) in [
            ("nack_delay", caps.nack_delay),
            ("dead_letter", caps.dead_letter),
            ("dedup", caps.dedup),
        ] {
            check!(
                !declared,
                "`{name}` declared without `durable`, which it needs"
            );
        }
        return Ok(());
    }

    with_stream(
        &ev,
        StreamConfig::new(&stream, [subject.clone()]),
        async || {
            // dedup
            let r = ev
                .publish_durable(&subject, "x", Some(&cx.name("id")))
                .await;
            if caps.dedup {
                r?;
            } else {
                check_kind!(r, ErrorKind::Unsupported);
                ev.publish_durable(&subject, "x", None).await?;
            }

            // dead_letter
            let config = ConsumerConfig::new(&stream, cx.name("c"))
                .ack_wait(Duration::from_secs(60))
                .dead_letter(cx.name("dead"));
            let r = ev.consume(config).await;
            if caps.dead_letter {
                drop(r?);
            } else {
                check_kind!(r.map(drop), ErrorKind::Unsupported);
            }

            // nack_delay
            let config =
                ConsumerConfig::new(&stream, cx.name("n")).ack_wait(Duration::from_secs(60));
            let mut c = ev.consume(config).await?;
            let d = recv_delivery(&mut c, "an event to nack").await?;
            let r = d.nack(Some(Duration::from_millis(10))).await;
            if caps.nack_delay {
                r?;
            } else {
                check_kind!(r, ErrorKind::Unsupported);
                d.ack().await?;
            }
            Ok(())
        },
    )
    .await
}

/// A `traceparent` (and `tracestate`) the publisher set reaches the subscriber
/// unchanged, and an event published within a trace context carries that
/// trace (with a span of its own), so a trace crosses processes through
/// events on every backend.
async fn trace_context_propagates_events(cx: &Ctx<'_>) -> CaseResult {
    let ev = events(cx)?;
    let subject = cx.name("traced");
    let mut sub = ev.subscribe(&subject).await?;

    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let tracestate = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE";
    let headers = Headers::new()
        .with("traceparent", traceparent)
        .with("tracestate", tracestate);
    ev.publish(&subject, Message::new(headers, "set by the caller"))
        .await?;
    let e = recv(&mut sub, "the event with the caller's traceparent").await?;
    check_eq!(
        e.message.headers.get("traceparent"),
        Some(traceparent),
        "traceparent the subscriber saw"
    );
    check_eq!(
        e.message.headers.get("tracestate"),
        Some(tracestate),
        "tracestate the subscriber saw"
    );

    // Published from within a trace (as a handler serving a traced call
    // would): the event continues it.
    let parent = TraceContext::parse(
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        None,
    )
    .ok_or_else(|| Verdict::Fail("the case's own traceparent does not parse".into()))?;
    parent
        .clone()
        .scope(ev.publish(&subject, "within a trace"))
        .await?;
    let e = recv(&mut sub, "the event published within a trace").await?;
    let Some(seen) = TraceContext::from_headers(&e.message.headers) else {
        return Err(Verdict::Fail(format!(
            "an event published within a trace arrived without a valid traceparent: {:?}",
            e.message.headers.get("traceparent")
        )));
    };
    check_eq!(seen.trace_id(), parent.trace_id(), "trace id of the event");
    check!(
        seen.span_id() != parent.span_id(),
        "the event must have a span of its own, not reuse its parent's {}",
        parent.span_id()
    );
    sub.close();
    Ok(())
}
