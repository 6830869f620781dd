//! The in-memory events plane: at-most-once fan-out and durable streams.
//!
//! # Design
//!
//! One mutex (`HubState`) guards the subscription tables and the stream
//! directory; each stream has its own mutex guarding its stored events and
//! its consumers; each at-most-once subscription has a mutex around its
//! bounded buffer. Locks are only ever nested in that order (hub → stream →
//! subscription buffer), never across an `.await`, and wakers are woken after
//! every lock is released.
//!
//! At-most-once subscriptions are *pushed* into a bounded buffer: a publisher
//! never waits, and a full buffer drops the event for that subscriber only,
//! which later reads one `Overloaded` item at the point of the gap.
//!
//! Durable consumers are *pulled*: a subscriber takes a delivery only when it
//! polls, so the buffer between a consumer and its subscribers is empty by
//! construction, nothing is stranded in a slow or dead subscriber, and the
//! only bound needed is the consumer's `max_in_flight`. A timer task per
//! consumer handles ack-wait expiry and delayed nacks; it holds the stream
//! weakly and ends when the consumer is deleted or the hub goes away.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::{self, BoxFuture};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::MemConfig;
use plane_core::ack::{AckHandle, Acker};
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::events::buffer::EventBuffer;
use plane_core::events::groups::{Groups, Offered};
use plane_core::events::*;
use plane_core::message::names;
use plane_core::subject::matches;

/// Lock a mutex, recovering from poisoning: no code path panics while holding
/// one of these locks, so the data is consistent even if a waker panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `now + d`, saturating at a far-future instant instead of panicking on an
/// absurd `ack_wait` or nack delay.
fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn wake_all(wakers: Vec<Waker>) {
    for w in wakers {
        w.wake();
    }
}

/// Whether some subject matches both patterns.
fn overlap(a: &str, b: &str) -> bool {
    let mut a = a.split('.');
    let mut b = b.split('.');
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

use crate::error::stream_gone;

// ---------------------------------------------------------------------------
// Hub
// ---------------------------------------------------------------------------

/// The events state of one in-process hub.
#[derive(Default)]
pub(crate) struct EventHub {
    state: Mutex<HubState>,
}

#[derive(Default)]
struct HubState {
    next_id: u64,
    broadcast: Vec<Arc<SubShared>>,
    /// Worker groups keyed by (pattern, group name), members by id.
    groups: Groups<Arc<SubShared>>,
    streams: BTreeMap<String, Arc<StreamShared>>,
}

impl HubState {
    /// Offer `event` to every matching at-most-once subscriber: each broadcast
    /// subscriber, and one member of each matching worker group.
    fn fan_out(&mut self, event: &Event, wake: &mut Vec<Waker>) {
        for sub in &self.broadcast {
            if matches(&sub.pattern, &event.subject) {
                sub.buffer.offer_deferred(event, true, wake);
            }
        }
        // Round-robin, skipping members whose buffer is full; when all are
        // full the member whose turn it was counts (and later reports) the
        // drop. Members leave through `remove_sub`, never by an offer.
        self.groups.deliver(&event.subject, |member, last_resort| {
            if member.buffer.offer_deferred(event, last_resort, wake) {
                Offered::Taken
            } else {
                Offered::Full
            }
        });
    }

    fn remove_sub(&mut self, sub: &SubShared) {
        match &sub.group {
            None => self.broadcast.retain(|s| s.id != sub.id),
            Some(name) => drop(self.groups.leave(&sub.pattern, name, sub.id)),
        }
    }
}

impl EventHub {
    /// Store `event` in the stream capturing its subject (if any) and offer it
    /// to the at-most-once subscribers. With `require_stream`, a subject no
    /// stream captures is refused with `NotFound` before anything happens.
    fn route(
        &self,
        event: Event,
        msg_id: Option<String>,
        require_stream: bool,
    ) -> Result<Option<PublishAck>> {
        let mut wake = Vec::new();
        let ack = {
            let mut hub = lock(&self.state);
            let stream = hub
                .streams
                .values()
                .find(|s| s.captures(&event.subject))
                .cloned();
            let ack = match stream {
                Some(stream) => Some(stream.store(&event, msg_id, &mut wake)),
                None if require_stream => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("no stream captures subject `{}`", event.subject),
                    ))
                }
                None => None,
            };
            // A recognised duplicate was not published again, so live
            // subscribers do not see it a second time either.
            if !ack.as_ref().is_some_and(|a| a.duplicate) {
                hub.fan_out(&event, &mut wake);
            }
            ack
        };
        wake_all(wake);
        Ok(ack)
    }
}

impl Drop for EventHub {
    fn drop(&mut self) {
        // Nobody can publish any more: end every subscription so that readers
        // see their streams finish instead of waiting forever.
        let state = self.state.get_mut().unwrap_or_else(|p| p.into_inner());
        for sub in state.broadcast.iter().chain(state.groups.iter()) {
            sub.buffer.close();
        }
        for stream in state.streams.values() {
            stream.shut_down();
        }
    }
}

// ---------------------------------------------------------------------------
// At-most-once subscriptions
// ---------------------------------------------------------------------------

struct SubShared {
    id: u64,
    pattern: String,
    group: Option<String>,
    /// The one subscriber buffer every backend that buffers shares; offers
    /// happen under the hub lock, so readers are woken after it is released.
    buffer: EventBuffer,
}

struct MemSubscription {
    shared: Arc<SubShared>,
    hub: Weak<EventHub>,
}

impl SubscriptionTransport for MemSubscription {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        self.shared.buffer.poll(cx)
    }

    fn close(&mut self) {
        // The buffer lock is released before the hub lock is taken: the
        // publish path nests them the other way round.
        if self.shared.buffer.close() {
            if let Some(hub) = self.hub.upgrade() {
                lock(&hub.state).remove_sub(&self.shared);
            }
        }
    }
}

impl Drop for MemSubscription {
    fn drop(&mut self) {
        SubscriptionTransport::close(self);
    }
}

// ---------------------------------------------------------------------------
// Durable streams
// ---------------------------------------------------------------------------

struct StreamShared {
    name: String,
    /// Fixed at creation, so routing needs no stream lock.
    subjects: Vec<String>,
    hub: Weak<EventHub>,
    state: Mutex<StreamState>,
}

struct StreamState {
    deleted: bool,
    log: Log,
    duplicate_window: Duration,
    /// Message id → stream sequence, for ids seen within the window.
    dedup: HashMap<String, u64>,
    /// The same ids in arrival order, to expire them.
    dedup_order: VecDeque<(Instant, String)>,
    consumers: HashMap<String, ConsumerState>,
}

struct Stored {
    seq: u64,
    at: Instant,
    event: Event,
}

/// The stored events. Pruning only removes from the front, so the sequences
/// held are contiguous and an event is found by index.
struct Log {
    events: VecDeque<Stored>,
    last_seq: u64,
    max_age: Option<Duration>,
}

impl Log {
    fn prune(&mut self, now: Instant) {
        let Some(max_age) = self.max_age else { return };
        while self
            .events
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.at) >= max_age)
        {
            self.events.pop_front();
        }
    }

    fn get(&self, seq: u64) -> Option<&Stored> {
        let first = self.events.front()?.seq;
        let idx = usize::try_from(seq.checked_sub(first)?).ok()?;
        self.events.get(idx)
    }
}

impl StreamShared {
    fn captures(&self, subject: &str) -> bool {
        self.subjects.iter().any(|p| matches(p, subject))
    }

    fn store(&self, event: &Event, msg_id: Option<String>, wake: &mut Vec<Waker>) -> PublishAck {
        let now = Instant::now();
        let mut st = lock(&self.state);
        st.log.prune(now);
        let window = st.duplicate_window;
        while let Some((at, _)) = st.dedup_order.front() {
            if now.saturating_duration_since(*at) < window {
                break;
            }
            if let Some((_, id)) = st.dedup_order.pop_front() {
                st.dedup.remove(&id);
            }
        }
        if let Some(&sequence) = msg_id.as_ref().and_then(|id| st.dedup.get(id)) {
            return PublishAck {
                stream: self.name.clone(),
                sequence,
                duplicate: true,
            };
        }
        st.log.last_seq += 1;
        let seq = st.log.last_seq;
        st.log.events.push_back(Stored {
            seq,
            at: now,
            event: event.clone(),
        });
        if let Some(id) = msg_id {
            if !window.is_zero() {
                st.dedup.insert(id.clone(), seq);
                st.dedup_order.push_back((now, id));
            }
        }
        for c in st.consumers.values_mut() {
            if c.wants(&event.subject) {
                c.wake(wake);
            }
        }
        PublishAck {
            stream: self.name.clone(),
            sequence: seq,
            duplicate: false,
        }
    }

    /// Mark deleted, drop the consumers (which ends their timer tasks) and
    /// free the stored events; subscribers are woken to see the end.
    fn shut_down(&self) {
        let mut wake = Vec::new();
        {
            let mut st = lock(&self.state);
            st.deleted = true;
            for (_, mut c) in st.consumers.drain() {
                c.wake(&mut wake);
            }
            st.log.events.clear();
            st.dedup.clear();
            st.dedup_order.clear();
        }
        wake_all(wake);
    }

    /// Publish dead letters. Called without the stream lock held: the
    /// dead-letter subject may be captured by this very stream.
    fn publish_dead(&self, dead: Vec<Event>) {
        if dead.is_empty() {
            return;
        }
        if let Some(hub) = self.hub.upgrade() {
            for event in dead {
                tracing::debug!(stream = %self.name, subject = %event.subject, "event dead-lettered");
                // Without `require_stream`, routing cannot fail.
                let _ = hub.route(event, None, false);
            }
        }
    }

    /// One round of the consumer's timer: expire ack waits, release delayed
    /// nacks, and say when to run next. `None` ends the timer.
    fn tick(&self, consumer: &str) -> Option<Option<Instant>> {
        let now = Instant::now();
        let mut wake = Vec::new();
        let mut dead = Vec::new();
        let next = {
            let mut st = lock(&self.state);
            if st.deleted {
                return None;
            }
            let StreamState { log, consumers, .. } = &mut *st;
            let c = consumers.get_mut(consumer)?;
            let changed = c.expire(now, log, &mut dead);
            if changed || c.has_eligible_retry(now) {
                c.wake(&mut wake);
            }
            let next = c.next_deadline(now);
            c.timer_at = next;
            next
        };
        wake_all(wake);
        self.publish_dead(dead);
        Some(next)
    }
}

/// A consumer's timer: runs `StreamShared::tick` whenever the earliest
/// deadline passes or it is poked about an earlier one. It holds the stream
/// weakly and ends when the stream or consumer is gone (the poke sender lives
/// in the consumer's state, so dropping the consumer closes the channel).
async fn consumer_timer(
    stream: Weak<StreamShared>,
    consumer: String,
    mut poke: mpsc::Receiver<()>,
) {
    loop {
        let next = match stream.upgrade().and_then(|s| s.tick(&consumer)) {
            Some(next) => next,
            None => return,
        };
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    p = poke.recv() => if p.is_none() { return },
                }
            }
            None => {
                if poke.recv().await.is_none() {
                    return;
                }
            }
        }
    }
}

struct InFlight {
    attempt: u32,
    token: u64,
    deadline: Instant,
}

struct Retry {
    /// Deliveries made so far.
    attempt: u32,
    not_before: Option<Instant>,
}

struct ConsumerState {
    config: ConsumerConfig,
    /// Next stream sequence never delivered to this consumer.
    cursor: u64,
    /// Distinguishes deliveries of the same event, so a late nack or extend
    /// from an earlier, expired delivery does not touch the current one.
    next_token: u64,
    next_sub: u64,
    /// Delivered and not yet settled, by stream sequence.
    pending: BTreeMap<u64, InFlight>,
    /// Waiting for redelivery, by stream sequence.
    retry: BTreeMap<u64, Retry>,
    /// Subscribers waiting for a delivery, by subscriber id.
    waiters: HashMap<u64, Waker>,
    poke: mpsc::Sender<()>,
    /// The deadline the timer currently sleeps towards.
    timer_at: Option<Instant>,
}

impl ConsumerState {
    fn wants(&self, subject: &str) -> bool {
        self.config
            .filter
            .as_deref()
            .is_none_or(|f| matches(f, subject))
    }

    fn wake(&mut self, wake: &mut Vec<Waker>) {
        wake.extend(self.waiters.drain().map(|(_, w)| w));
    }

    /// Make sure the timer runs by `at`.
    fn schedule(&mut self, at: Instant) {
        if self.timer_at.is_none_or(|t| at < t) {
            self.timer_at = Some(at);
            // A full channel already holds a poke the timer has not seen yet.
            let _ = self.poke.try_send(());
        }
    }

    fn has_eligible_retry(&self, now: Instant) -> bool {
        self.retry
            .values()
            .any(|r| r.not_before.is_none_or(|t| t <= now))
    }

    fn next_deadline(&self, now: Instant) -> Option<Instant> {
        let acks = self.pending.values().map(|p| p.deadline);
        let delays = self
            .retry
            .values()
            .filter_map(|r| r.not_before)
            .filter(|&t| t > now);
        acks.chain(delays).min()
    }

    /// After `attempt` deliveries failed: schedule a retry, or dead-letter
    /// (or drop) the event when it has had all its deliveries.
    fn retry_or_dead_letter(
        &mut self,
        seq: u64,
        attempt: u32,
        not_before: Option<Instant>,
        log: &Log,
        dead: &mut Vec<Event>,
    ) {
        if self.config.max_deliver.is_some_and(|max| attempt >= max) {
            if let (Some(subject), Some(stored)) = (&self.config.dead_letter, log.get(seq)) {
                let mut event = stored.event.clone();
                event
                    .message
                    .headers
                    .insert(names::DEAD_LETTER_SUBJECT, event.subject.clone());
                event
                    .message
                    .headers
                    .insert(names::DEAD_LETTER_DELIVERIES, attempt.to_string());
                event.subject = subject.clone();
                dead.push(event);
            } else {
                tracing::debug!(
                    consumer = %self.config.name,
                    seq,
                    attempt,
                    "event dropped after its maximum deliveries"
                );
            }
        } else {
            self.retry.insert(
                seq,
                Retry {
                    attempt,
                    not_before,
                },
            );
            if let Some(at) = not_before {
                self.schedule(at);
            }
        }
    }

    /// Move deliveries whose ack wait passed to the retry set (or dead-letter
    /// them). Returns whether any expired.
    fn expire(&mut self, now: Instant, log: &Log, dead: &mut Vec<Event>) -> bool {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(&seq, _)| seq)
            .collect();
        for &seq in &due {
            if let Some(p) = self.pending.remove(&seq) {
                self.retry_or_dead_letter(seq, p.attempt, None, log, dead);
            }
        }
        !due.is_empty()
    }

    /// The next event to hand out, as (sequence, attempt, event): due
    /// redeliveries first, then events not yet delivered.
    fn next_delivery(&mut self, log: &Log, now: Instant) -> Option<(u64, u32, Event)> {
        while let Some(seq) = self
            .retry
            .iter()
            .find(|(_, r)| r.not_before.is_none_or(|t| t <= now))
            .map(|(&seq, _)| seq)
        {
            // An event pruned by `max_age` in the meantime is simply gone.
            if let (Some(r), Some(stored)) = (self.retry.remove(&seq), log.get(seq)) {
                return Some((seq, r.attempt + 1, stored.event.clone()));
            }
        }
        let first = log.events.front().map_or(self.cursor, |s| s.seq);
        let mut seq = self.cursor.max(first);
        while let Some(stored) = log.get(seq) {
            seq += 1;
            if self.wants(&stored.event.subject) {
                self.cursor = seq;
                return Some((stored.seq, 1, stored.event.clone()));
            }
        }
        self.cursor = self.cursor.max(log.last_seq + 1);
        None
    }
}

// ---------------------------------------------------------------------------
// Durable subscriptions and acknowledgement
// ---------------------------------------------------------------------------

struct MemConsumerSub {
    stream: Arc<StreamShared>,
    consumer: String,
    id: u64,
    closed: bool,
    /// The stream was deleted and that was reported; only `None` follows.
    ended: bool,
}

impl DeliveryTransport for MemConsumerSub {
    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        if self.closed || self.ended {
            return Poll::Ready(None);
        }
        let now = Instant::now();
        let mut st = lock(&self.stream.state);
        st.log.prune(now);
        let StreamState {
            deleted,
            log,
            consumers,
            ..
        } = &mut *st;
        let consumer = match consumers.get_mut(&self.consumer) {
            Some(c) if !*deleted => c,
            _ => {
                self.ended = true;
                return Poll::Ready(Some(Err(Error::new(
                    ErrorKind::Closed,
                    "the stream was deleted",
                ))));
            }
        };
        if consumer.pending.len() < consumer.config.max_in_flight {
            if let Some((seq, attempt, event)) = consumer.next_delivery(log, now) {
                let token = consumer.next_token;
                consumer.next_token += 1;
                let deadline = after(now, consumer.config.ack_wait);
                consumer.pending.insert(
                    seq,
                    InFlight {
                        attempt,
                        token,
                        deadline,
                    },
                );
                consumer.schedule(deadline);
                consumer.waiters.remove(&self.id);
                let acker = MemAcker {
                    stream: Arc::downgrade(&self.stream),
                    consumer: self.consumer.clone(),
                    seq,
                    token,
                };
                let ack = AckHandle::new(Box::new(acker), true, true);
                return Poll::Ready(Some(Ok(Delivery::new(event, attempt, seq, ack))));
            }
        }
        match consumer.waiters.get_mut(&self.id) {
            Some(w) => w.clone_from(cx.waker()),
            None => {
                consumer.waiters.insert(self.id, cx.waker().clone());
            }
        }
        Poll::Pending
    }

    fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        // Unsettled deliveries stay pending and come back to another
        // subscriber after their ack wait, as after a crash.
        let mut st = lock(&self.stream.state);
        if let Some(c) = st.consumers.get_mut(&self.consumer) {
            c.waiters.remove(&self.id);
        }
    }
}

impl Drop for MemConsumerSub {
    fn drop(&mut self) {
        DeliveryTransport::close(self);
    }
}

/// Settles one delivery. Holds the stream weakly: a delivery kept after its
/// stream was deleted does not keep the stream's memory alive.
struct MemAcker {
    stream: Weak<StreamShared>,
    consumer: String,
    seq: u64,
    token: u64,
}

impl MemAcker {
    /// Run `f` on the consumer's state; `f` returns whether waiting
    /// subscribers should look again.
    fn with_consumer(
        &self,
        f: impl FnOnce(&mut ConsumerState, &Log, Instant, &mut Vec<Event>) -> Result<bool>,
    ) -> Result<()> {
        let stream = self.stream.upgrade().ok_or_else(stream_gone)?;
        let now = Instant::now();
        let mut wake = Vec::new();
        let mut dead = Vec::new();
        let result = {
            let mut st = lock(&stream.state);
            if st.deleted {
                return Err(stream_gone());
            }
            let StreamState { log, consumers, .. } = &mut *st;
            let c = consumers.get_mut(&self.consumer).ok_or_else(stream_gone)?;
            let result = f(c, log, now, &mut dead);
            if matches!(result, Ok(true)) {
                c.wake(&mut wake);
            }
            result
        };
        wake_all(wake);
        stream.publish_dead(dead);
        result.map(|_| ())
    }

    fn ack_now(&self) -> Result<()> {
        self.with_consumer(|c, _, _, _| {
            // An ack from an earlier, expired delivery still means the event
            // was processed, so it settles whatever delivery is current.
            let pending = c.pending.remove(&self.seq).is_some();
            let retry = c.retry.remove(&self.seq).is_some();
            Ok(pending || retry)
        })
    }

    fn nack_now(&self, delay: Option<Duration>) -> Result<()> {
        self.with_consumer(|c, log, now, dead| {
            // A nack from an expired delivery is moot: the event was already
            // scheduled for redelivery when its ack wait passed.
            if c.pending
                .get(&self.seq)
                .is_none_or(|p| p.token != self.token)
            {
                return Ok(false);
            }
            let Some(p) = c.pending.remove(&self.seq) else {
                return Ok(false);
            };
            let not_before = delay.map(|d| after(now, d));
            c.retry_or_dead_letter(self.seq, p.attempt, not_before, log, dead);
            Ok(true)
        })
    }

    fn extend_now(&self) -> Result<()> {
        self.with_consumer(|c, _, now, _| {
            let ack_wait = c.config.ack_wait;
            match c.pending.get_mut(&self.seq) {
                Some(p) if p.token == self.token => {
                    // Later than before, so the timer needs no poke: it wakes
                    // at the old deadline and recomputes.
                    p.deadline = after(now, ack_wait);
                    Ok(false)
                }
                _ => Err(Error::new(
                    ErrorKind::NotFound,
                    "the delivery is no longer pending: its ack wait expired",
                )),
            }
        })
    }
}

impl Acker for MemAcker {
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(future::ready(self.ack_now()))
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'_, Result<()>> {
        Box::pin(future::ready(self.nack_now(delay)))
    }

    fn extend(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(future::ready(self.extend_now()))
    }
}

// ---------------------------------------------------------------------------
// Backend
// ---------------------------------------------------------------------------

/// The in-memory events backend.
///
/// Declares every events capability. Streams may not overlap: creating a
/// stream whose subjects intersect another stream's fails with
/// `InvalidConfig` (as on NATS JetStream), so each subject is stored by at
/// most one stream. Events published at most once to a captured subject are
/// stored too, and durably published events also reach at-most-once
/// subscribers, except recognised duplicates.
///
/// A consumer's configuration is fixed when it is first created; later
/// `consume` calls with the same name bind to it as it is. Events older than a
/// stream's `max_age` are discarded lazily, on the next publish or delivery.
/// When a stream is deleted, each of its consumer subscriptions yields one
/// `Closed` error and then ends. Durable consumers run a timer task, so
/// `consume` needs a tokio runtime with timers enabled.
pub struct MemEvents {
    caps: EventsCapabilities,
    hub: Arc<EventHub>,
}

impl MemEvents {
    pub(crate) fn new(hub: Arc<EventHub>, config: &MemConfig) -> Self {
        // Every field set, even where the default agrees: a capability added
        // later should be a decision for the reference backend, not a silent
        // default.
        let mut caps = EventsCapabilities::default();
        caps.wildcards = true;
        caps.groups = true;
        caps.ordered_per_publisher = true;
        caps.durable = true;
        caps.nack_delay = true;
        caps.dead_letter = true;
        caps.dedup = true;
        caps.replay = true;
        caps.max_payload = config.max_payload;
        MemEvents { caps, hub }
    }
}

impl EventsBackend for MemEvents {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn capabilities(&self) -> &EventsCapabilities {
        &self.caps
    }

    async fn publish(&self, event: Event) -> Result<()> {
        self.hub.route(event, None, false).map(|_| ())
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        let buffer = EventBuffer::for_options(&options);
        let mut hub = lock(&self.hub.state);
        hub.next_id += 1;
        let shared = Arc::new(SubShared {
            id: hub.next_id,
            pattern: options.pattern,
            group: options.group,
            buffer,
        });
        match &shared.group {
            None => hub.broadcast.push(shared.clone()),
            Some(group) => hub
                .groups
                .join(&shared.pattern, group, shared.id, shared.clone()),
        }
        Ok(Box::new(MemSubscription {
            shared,
            hub: Arc::downgrade(&self.hub),
        }))
    }

    async fn create_stream(&self, config: StreamConfig) -> Result<()> {
        let mut hub = lock(&self.hub.state);
        if hub.streams.contains_key(&config.name) {
            return Ok(());
        }
        for other in hub.streams.values() {
            let clash = other
                .subjects
                .iter()
                .find(|a| config.subjects.iter().any(|b| overlap(a, b)));
            if let Some(subject) = clash {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "subjects overlap with `{subject}` of stream `{}`",
                        other.name
                    ),
                ));
            }
        }
        let stream = Arc::new(StreamShared {
            name: config.name.clone(),
            subjects: config.subjects,
            hub: Arc::downgrade(&self.hub),
            state: Mutex::new(StreamState {
                deleted: false,
                log: Log {
                    events: VecDeque::new(),
                    last_seq: 0,
                    max_age: config.max_age,
                },
                duplicate_window: config.duplicate_window,
                dedup: HashMap::new(),
                dedup_order: VecDeque::new(),
                consumers: HashMap::new(),
            }),
        });
        hub.streams.insert(config.name, stream);
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        let stream = lock(&self.hub.state).streams.remove(name);
        let stream = stream.ok_or_else(|| crate::error::missing("stream", name))?;
        stream.shut_down();
        Ok(())
    }

    async fn publish_durable(&self, event: Event, msg_id: Option<String>) -> Result<PublishAck> {
        self.hub
            .route(event, msg_id, true)?
            .ok_or_else(|| Error::new(ErrorKind::NotFound, "no stream captures the subject"))
    }

    async fn consume(&self, config: ConsumerConfig) -> Result<Box<dyn DeliveryTransport>> {
        let stream = lock(&self.hub.state)
            .streams
            .get(&config.stream)
            .cloned()
            .ok_or_else(|| crate::error::missing("stream", &config.stream))?;
        // The consumer's timer task needs a runtime; refuse rather than panic.
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                "durable consumers of the mem backend need a tokio runtime",
            )
            .with_source(e)
        })?;
        let name = config.name.clone();
        let id = {
            let mut st = lock(&stream.state);
            if st.deleted {
                return Err(stream_gone());
            }
            let last_seq = st.log.last_seq;
            let consumer = st.consumers.entry(name.clone()).or_insert_with(|| {
                let (poke, rx) = mpsc::channel(1);
                runtime.spawn(consumer_timer(Arc::downgrade(&stream), name.clone(), rx));
                let cursor = match config.deliver {
                    DeliverPolicy::All => 1,
                    DeliverPolicy::New => last_seq + 1,
                };
                ConsumerState {
                    config,
                    cursor,
                    next_token: 0,
                    next_sub: 0,
                    pending: BTreeMap::new(),
                    retry: BTreeMap::new(),
                    waiters: HashMap::new(),
                    poke,
                    timer_at: None,
                }
            });
            consumer.next_sub += 1;
            consumer.next_sub
        };
        Ok(Box::new(MemConsumerSub {
            stream,
            consumer: name,
            id,
            closed: false,
            ended: false,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Events;
    use crate::Hub;
    use futures_util::StreamExt;
    use plane_core::message::{Headers, Message};

    fn events() -> Events {
        Hub::new().events(&MemConfig::default())
    }

    fn seq_of(e: &Event) -> u64 {
        e.origin.map_or(0, |o| o.sequence)
    }

    /// The next item, or a panic if none is ready within a second (of
    /// possibly paused time).
    async fn next<S: futures_util::Stream + Unpin>(s: &mut S) -> S::Item {
        tokio::time::timeout(Duration::from_secs(1), s.next())
            .await
            .expect("an item within a second")
            .expect("stream still open")
    }

    async fn nothing_within<S: futures_util::Stream + Unpin>(s: &mut S, d: Duration) -> bool {
        tokio::time::timeout(d, s.next()).await.is_err()
    }

    #[tokio::test]
    async fn overflow_reported_once_then_stream_continues() {
        let ev = events();
        let mut sub = ev
            .subscribe_with(SubscribeOptions::new("a").capacity(2))
            .await
            .unwrap();
        for _ in 0..5 {
            ev.publish("a", "x").await.unwrap();
        }
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 1);
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 2);
        let err = next(&mut sub).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Overloaded);
        assert!(err.to_string().contains("3 events dropped"), "{err}");
        assert!(nothing_within(&mut sub, Duration::from_millis(20)).await);
        ev.publish("a", "x").await.unwrap();
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 6);
    }

    #[tokio::test]
    async fn overflow_marker_sits_at_the_gap() {
        let ev = events();
        let mut sub = ev
            .subscribe_with(SubscribeOptions::new("a").capacity(2))
            .await
            .unwrap();
        for _ in 0..3 {
            ev.publish("a", "x").await.unwrap();
        }
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 1);
        ev.publish("a", "x").await.unwrap();
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 2);
        assert_eq!(
            next(&mut sub).await.unwrap_err().kind(),
            ErrorKind::Overloaded
        );
        assert_eq!(seq_of(&next(&mut sub).await.unwrap()), 4);
    }

    #[tokio::test]
    async fn group_prefers_member_with_room_and_forgets_closed_members() {
        let ev = events();
        let opts = SubscribeOptions::new("g.*").group("w").capacity(1);
        let mut a = ev.subscribe_with(opts.clone()).await.unwrap();
        let mut b = ev.subscribe_with(opts).await.unwrap();
        ev.publish("g.1", "x").await.unwrap();
        ev.publish("g.2", "x").await.unwrap();
        // Each member holds one; nothing was dropped.
        let mut got = [
            seq_of(&next(&mut a).await.unwrap()),
            seq_of(&next(&mut b).await.unwrap()),
        ];
        got.sort();
        assert_eq!(got, [1, 2]);
        a.close();
        for _ in 0..3 {
            ev.publish("g.3", "x").await.unwrap();
            assert!(next(&mut b).await.is_ok());
        }
        assert!(a.next().await.is_none());
    }

    #[tokio::test]
    async fn at_most_once_publish_is_stored_by_a_capturing_stream() {
        let ev = events();
        ev.create_stream(StreamConfig::new("s", ["s.>"]))
            .await
            .unwrap();
        ev.publish("s.x", "plain").await.unwrap();
        let mut c = ev.consume(ConsumerConfig::new("s", "c")).await.unwrap();
        let d = next(&mut c).await.unwrap();
        assert_eq!(d.stream_sequence, 1);
        assert_eq!(d.event.body().to_bytes(), "plain");
        ev.delete_stream("s").await.unwrap();
    }

    #[tokio::test]
    async fn overlapping_streams_refused() {
        let ev = events();
        ev.create_stream(StreamConfig::new("s1", ["a.*.c"]))
            .await
            .unwrap();
        let err = ev
            .create_stream(StreamConfig::new("s2", ["a.b.>"]))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        ev.create_stream(StreamConfig::new("s3", ["a.b"]))
            .await
            .unwrap();
        assert!(overlap("a.>", "a.b.c") && !overlap("a.>", "a") && !overlap("a.*", "b.*"));
    }

    #[tokio::test(start_paused = true)]
    async fn unacked_redelivered_after_ack_wait_and_extend_postpones() {
        let ev = events();
        ev.create_stream(StreamConfig::new("s", ["s"]))
            .await
            .unwrap();
        let mut c = ev
            .consume(ConsumerConfig::new("s", "c").ack_wait(Duration::from_secs(10)))
            .await
            .unwrap();
        ev.publish_durable("s", "x", None).await.unwrap();
        let d1 = next(&mut c).await.unwrap();
        assert_eq!(d1.attempt, 1);
        let start = Instant::now();
        tokio::time::sleep(Duration::from_secs(6)).await;
        d1.extend().await.unwrap();
        let d2 = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(d2.attempt, 2);
        assert!(start.elapsed() >= Duration::from_secs(16));
        // The expired delivery can neither be extended nor nack the new one.
        assert_eq!(d1.extend().await.unwrap_err().kind(), ErrorKind::NotFound);
        d1.nack(None).await.unwrap();
        assert!(nothing_within(&mut c, Duration::from_secs(5)).await);
        d2.ack().await.unwrap();
        assert!(nothing_within(&mut c, Duration::from_secs(30)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_nack_then_dead_letter_keeps_origin() {
        let ev = events();
        let mut dl = ev.subscribe("dl.s").await.unwrap();
        ev.create_stream(StreamConfig::new("s", ["s"]))
            .await
            .unwrap();
        let mut c = ev
            .consume(
                ConsumerConfig::new("s", "c")
                    .max_deliver(2)
                    .dead_letter("dl.s"),
            )
            .await
            .unwrap();
        let headers = Headers::new().with("k", "v");
        ev.publish_durable("s", Message::new(headers, "x"), None)
            .await
            .unwrap();
        let d1 = next(&mut c).await.unwrap();
        let start = Instant::now();
        d1.nack(Some(Duration::from_secs(5))).await.unwrap();
        let d2 = tokio::time::timeout(Duration::from_secs(60), c.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(start.elapsed() >= Duration::from_secs(5));
        assert_eq!(d2.attempt, 2);
        d2.nack(None).await.unwrap();
        let dead = next(&mut dl).await.unwrap();
        assert_eq!(dead.subject, "dl.s");
        assert_eq!(dead.origin, d1.event.origin);
        assert_eq!(dead.message.headers.get("k"), Some("v"));
        assert_eq!(
            dead.message.headers.get(names::DEAD_LETTER_SUBJECT),
            Some("s")
        );
        assert_eq!(
            dead.message.headers.get(names::DEAD_LETTER_DELIVERIES),
            Some("2")
        );
        assert!(nothing_within(&mut c, Duration::from_secs(60)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn max_in_flight_holds_back_until_ack() {
        let ev = events();
        ev.create_stream(StreamConfig::new("s", ["s"]))
            .await
            .unwrap();
        let mut c = ev
            .consume(ConsumerConfig::new("s", "c").max_in_flight(1))
            .await
            .unwrap();
        ev.publish_durable("s", "1", None).await.unwrap();
        ev.publish_durable("s", "2", None).await.unwrap();
        let d1 = next(&mut c).await.unwrap();
        assert!(nothing_within(&mut c, Duration::from_secs(5)).await);
        d1.ack().await.unwrap();
        assert_eq!(next(&mut c).await.unwrap().stream_sequence, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dedup_window_and_max_age() {
        let ev = events();
        let cfg = StreamConfig::new("s", ["s"])
            .duplicate_window(Duration::from_secs(10))
            .max_age(Duration::from_secs(100));
        ev.create_stream(cfg).await.unwrap();
        let a = ev.publish_durable("s", "x", Some("id")).await.unwrap();
        let b = ev.publish_durable("s", "x", Some("id")).await.unwrap();
        assert_eq!((a.sequence, a.duplicate), (1, false));
        assert_eq!((b.sequence, b.duplicate), (1, true));
        tokio::time::sleep(Duration::from_secs(11)).await;
        let c = ev.publish_durable("s", "x", Some("id")).await.unwrap();
        assert_eq!((c.sequence, c.duplicate), (2, false));
        tokio::time::sleep(Duration::from_secs(95)).await;
        // Sequence 1 is older than max_age now; a replaying consumer starts at 2.
        let mut con = ev.consume(ConsumerConfig::new("s", "c")).await.unwrap();
        assert_eq!(next(&mut con).await.unwrap().stream_sequence, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn deliver_new_and_shared_consumer() {
        let ev = events();
        ev.create_stream(StreamConfig::new("s", ["s.>"]))
            .await
            .unwrap();
        ev.publish_durable("s.old", "x", None).await.unwrap();
        let cfg = ConsumerConfig::new("s", "c")
            .deliver(DeliverPolicy::New)
            .filter("s.keep");
        let mut c1 = ev.consume(cfg.clone()).await.unwrap();
        let mut c2 = ev.consume(cfg).await.unwrap();
        ev.publish_durable("s.skip", "x", None).await.unwrap();
        ev.publish_durable("s.keep", "x", None).await.unwrap();
        ev.publish_durable("s.keep", "x", None).await.unwrap();
        let a = next(&mut c1).await.unwrap();
        let b = next(&mut c2).await.unwrap();
        let mut seqs = [a.stream_sequence, b.stream_sequence];
        seqs.sort();
        assert_eq!(seqs, [3, 4]);
        a.ack().await.unwrap();
        b.ack().await.unwrap();
        assert!(nothing_within(&mut c1, Duration::from_secs(60)).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn delete_stream_ends_subscribers_and_timer() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let ev = events();
        ev.create_stream(StreamConfig::new("s", ["s"]))
            .await
            .unwrap();
        let mut c = ev.consume(ConsumerConfig::new("s", "c")).await.unwrap();
        ev.publish_durable("s", "x", None).await.unwrap();
        let d = next(&mut c).await.unwrap();
        assert_eq!(metrics.num_alive_tasks(), 1);
        ev.delete_stream("s").await.unwrap();
        assert_eq!(next(&mut c).await.unwrap_err().kind(), ErrorKind::Closed);
        assert!(c.next().await.is_none());
        assert_eq!(d.ack().await.unwrap_err().kind(), ErrorKind::NotFound);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0);
        let err = ev.delete_stream("s").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        let err = ev.publish_durable("s", "x", None).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_hub_ends_subscriptions_and_timers() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let ev = events();
        let mut sub = ev.subscribe("a").await.unwrap();
        ev.create_stream(StreamConfig::new("s", ["s"]))
            .await
            .unwrap();
        let mut c = ev.consume(ConsumerConfig::new("s", "c")).await.unwrap();
        assert_eq!(metrics.num_alive_tasks(), 1);
        drop(ev);
        assert!(sub.next().await.is_none());
        assert_eq!(next(&mut c).await.unwrap_err().kind(), ErrorKind::Closed);
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(metrics.num_alive_tasks(), 0);
    }
}
