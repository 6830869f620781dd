//! The QUIC events plane: at-most-once publish/subscribe between peers.
//!
//! # Topology
//!
//! An events handle publishes on a QUIC endpoint — the one its session's
//! request plane binds, or one of its own from [`QuicEvents::connect`] —
//! (TLS as for the request plane) and registers it in [discovery](plane_core::discovery) as an
//! instance of the reserved endpoint [`EVENTS_ENDPOINT`] (`plane-events`),
//! with its certificate fingerprint. A subscription opens one bidirectional
//! stream to every publisher listed there, on the connection shared with
//! any other traffic to that process, and follows the discovery watch to
//! subscribe at publishers that appear and forget ones that leave.
//!
//! # Streams
//!
//! The subscriber writes one `request` envelope carrying the pattern in
//! [`names::SUBSCRIBE`] (and, for a worker-group member, the group name in
//! [`names::GROUP`]) and keeps its side open: finishing or resetting it
//! unsubscribes. The publisher answers with an `ack` envelope once the
//! subscription is in place — `subscribe` returns only after every publisher
//! known at that moment answered (or [`QuicConfig::connect_timeout`]
//! passed), so nothing published after it returns is missed for want of a
//! subscription — then writes every matching event as a length-delimited
//! envelope ([`event_envelope`]: origin in the `plane-publisher` and
//! `plane-seq` headers). Patterns are matched by the publisher, with
//! [`subject::matches`], and checked again by the subscriber.
//!
//! # Overload
//!
//! A publisher never waits for subscribers: it offers each event to each
//! matching subscriber's queue of [`SUBSCRIBER_QUEUE`] envelopes, drained
//! into the stream by one task per subscriber. A full queue (the subscriber
//! or the network is slower than the publisher) drops the event and counts
//! it; the count travels with the next event that gets through, in
//! [`names::DROPPED`]. On the
//! subscriber's side, a reader task per publisher drains the stream into the
//! subscription's bounded buffer, dropping and counting when it is full.
//! Either way the subscriber reads one `Overloaded` item at the gap.
//!
//! # Worker groups
//!
//! Every event starts at exactly one publisher, and every subscription —
//! group member or not — subscribes at every publisher in discovery, so each
//! publisher knows every member of every group and picks one member per
//! group for each event ([`Groups`]): a group is (group name, pattern), as
//! on the in-memory backend; members take turns (round-robin, in the order
//! they subscribed at this publisher). A member whose queue is full is
//! skipped for the next one, so one stalled member does not lose events its
//! peers could take; only when every member of the group is full is the
//! event dropped, counted at the member whose turn it was (it reads one
//! `Overloaded` item). A member whose stream ended is forgotten. Members
//! leave a publisher's table when their stream ends, which takes one trip
//! over the network: events the publisher handed to a member before it
//! heard of its departure are lost with that member, at most once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::discovery::{Discovery, DiscoveryEvent, Instance, Registration};
use plane_core::events::buffer::EventBuffer;
use plane_core::events::groups::{Groups, Offered};
use plane_core::events::{
    Event, EventsBackend, EventsCapabilities, SubscribeOptions, SubscriptionTransport,
};
use plane_core::message::names;
use plane_core::request::InstanceId;
use plane_core::subject;
use plane_core::wire::{Envelope, EnvelopeKind, RequestId};
use plane_core::{Error, ErrorKind, Headers, Result};
use plane_peer::events::{decode_event, event_envelope, AbortOnDrop, BufferedSubscription};
use tokio::sync::mpsc;

use crate::error::{refusal, write_error};
use crate::request::{frame_chunks, write_envelope, EnvelopeReader, Node, QuicRequests};
use crate::QuicConfig;

/// The discovery endpoint under which publishers register.
pub const EVENTS_ENDPOINT: &str = "plane-events";
/// Envelopes queued per subscriber at a publisher before events are dropped.
pub const SUBSCRIBER_QUEUE: usize = 1024;

/// The subscribers connected to one process's endpoint. Cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Subscribers {
    inner: Arc<Mutex<SubscriberTable>>,
}

#[derive(Default)]
struct SubscriberTable {
    next: u64,
    /// Subscribers outside any worker group, by slot id.
    slots: HashMap<u64, Slot>,
    /// Members of worker groups, by slot id.
    groups: Groups<Slot>,
}

struct Slot {
    pattern: String,
    tx: mpsc::Sender<Envelope>,
    /// Events dropped for this subscriber since the last one sent.
    dropped: u64,
}

impl Slot {
    /// Queue `event` for this subscriber if its queue has room. When it is
    /// full the event is counted as dropped only as a `last_resort` (a group
    /// may still hand it to another member).
    fn offer(&mut self, event: &Event, last_resort: bool) -> Offered {
        if self.tx.is_closed() {
            return Offered::Gone;
        }
        // Checked before encoding: the table's lock makes this the only
        // sender, so room seen here is still there for `try_send`.
        if self.tx.capacity() > 0 {
            match self.tx.try_send(event_envelope(event, self.dropped)) {
                Ok(()) => {
                    self.dropped = 0;
                    return Offered::Taken;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Offered::Gone,
                Err(mpsc::error::TrySendError::Full(_)) => {}
            }
        }
        if last_resort {
            self.dropped += 1;
        }
        Offered::Full
    }
}

impl Subscribers {
    fn lock(&self) -> std::sync::MutexGuard<'_, SubscriberTable> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Offer `event` to every matching subscriber outside groups, and to one
    /// matching member of each group. Never waits.
    fn publish(&self, event: &Event) {
        let mut table = self.lock();
        let SubscriberTable { slots, groups, .. } = &mut *table;
        slots.retain(|_, slot| {
            !subject::matches(&slot.pattern, &event.subject)
                || slot.offer(event, true) != Offered::Gone
        });
        groups.deliver(&event.subject, |slot, last_resort| {
            slot.offer(event, last_resort)
        });
    }

    /// Add a subscriber (a member of `group` if given) whose events go to
    /// `tx`; returns its slot.
    fn add(&self, pattern: String, group: Option<&str>, tx: mpsc::Sender<Envelope>) -> u64 {
        let mut table = self.lock();
        table.next += 1;
        let id = table.next;
        let slot = Slot {
            pattern,
            tx,
            dropped: 0,
        };
        match group {
            Some(group) => {
                let pattern = slot.pattern.clone();
                table.groups.join(&pattern, group, id, slot);
            }
            None => drop(table.slots.insert(id, slot)),
        }
        id
    }

    /// Forget slot `id` (added with `pattern` and `group`).
    fn remove(&self, id: u64, pattern: &str, group: Option<&str>) {
        let mut table = self.lock();
        match group {
            Some(group) => drop(table.groups.leave(pattern, group, id)),
            None => drop(table.slots.remove(&id)),
        }
    }

    /// Serve one subscriber's stream, opened by `first` (a subscription
    /// request), until it unsubscribes or goes away.
    pub(crate) async fn serve(
        &self,
        mut send: quinn::SendStream,
        mut reader: EnvelopeReader,
        first: Envelope,
    ) {
        let pattern = first
            .headers
            .get(names::SUBSCRIBE)
            .unwrap_or_default()
            .to_owned();
        let group = first.headers.get(names::GROUP).map(str::to_owned);
        let valid = subject::validate_pattern(&pattern).and_then(|()| match &group {
            Some(g) => subject::validate_name("group", g),
            None => Ok(()),
        });
        if let Err(e) = valid {
            let _ = write_envelope(&mut send, &Envelope::error(first.id, &e)).await;
            let _ = send.finish();
            return;
        }
        let (tx, mut rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let id = self.add(pattern.clone(), group.as_deref(), tx);
        // In place from here on: confirm, so the subscriber can return.
        let welcome = Envelope::new(EnvelopeKind::Ack, first.id);
        if write_envelope(&mut send, &welcome).await.is_ok() {
            loop {
                tokio::select! {
                    env = rx.recv() => match env {
                        Some(env) => {
                            if write_batch(&mut send, env, &mut rx).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    // Anything from the subscriber, its end or a reset
                    // ends the subscription.
                    _ = reader.next() => break,
                }
            }
        }
        self.remove(id, &pattern, group.as_deref());
    }
}

/// Envelopes written to a subscriber's stream in one write at most.
const WRITE_BATCH: usize = 64;

/// Write `first` and whatever else is already queued (up to
/// [`WRITE_BATCH`]) in one write: a publisher faster than the network then
/// pays quinn's per-write cost (a lock on the connection, a wake of its
/// driver) once per batch rather than once per event.
async fn write_batch(
    send: &mut quinn::SendStream,
    first: Envelope,
    queue: &mut mpsc::Receiver<Envelope>,
) -> Result<()> {
    let mut chunks = Vec::new();
    frame_chunks(&first, &mut chunks)?;
    for _ in 1..WRITE_BATCH {
        match queue.try_recv() {
            Ok(env) => frame_chunks(&env, &mut chunks)?,
            Err(_) => break,
        }
    }
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(write_error)
}

/// The QUIC events plane. Build it with [`QuicEvents::connect`] (or through
/// the registry with a `quic://` URL) and wrap it in [`plane_core::Events`].
#[derive(Clone)]
pub struct QuicEvents {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for QuicEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicEvents")
            .field("local_addr", &self.local_addr().ok())
            .finish()
    }
}

struct Inner {
    /// The endpoint, connections and TLS material, shared with the request
    /// plane's code; this handle serves no endpoint instance on it.
    requests: QuicRequests,
    registration: Mutex<Option<Registration>>,
    capabilities: EventsCapabilities,
}

impl Drop for Inner {
    fn drop(&mut self) {
        plane_peer::events::deregister_publisher(
            self.registration
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl QuicEvents {
    /// Bind a QUIC endpoint as `config` says and register it in `discovery`
    /// as an events publisher.
    ///
    /// # Errors
    /// As [`QuicRequests::connect`]; discovery errors.
    pub async fn connect(config: QuicConfig, discovery: Discovery) -> Result<Self> {
        QuicEvents::over(QuicRequests::connect(config, discovery)?).await
    }

    /// Publish and subscribe on the endpoint of `requests` (registered in
    /// its discovery as an events publisher), so one process binds one QUIC
    /// endpoint for both planes.
    ///
    /// # Errors
    /// Discovery errors.
    pub async fn over(requests: QuicRequests) -> Result<Self> {
        let config = &requests.links().node.config;
        let mut capabilities = EventsCapabilities::default();
        capabilities.wildcards = true;
        // Each publisher picks one member per group (see the module docs).
        capabilities.groups = true;
        // One queue and one stream per subscriber, fed in publish order.
        capabilities.ordered_per_publisher = true;
        capabilities.max_payload = config.max_payload;
        let record = requests
            .links()
            .node
            .record(EVENTS_ENDPOINT, InstanceId::random())?;
        let registration = requests.directory().discovery().register(record).await?;
        Ok(QuicEvents {
            inner: Arc::new(Inner {
                requests,
                registration: Mutex::new(Some(registration)),
                capabilities,
            }),
        })
    }

    /// The address the endpoint is bound to.
    ///
    /// # Errors
    /// `Connection` if the socket is gone.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr> {
        self.inner.requests.links().local_addr()
    }

    fn node(&self) -> &Arc<Node> {
        &self.inner.requests.links().node
    }
}

impl EventsBackend for QuicEvents {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &EventsCapabilities {
        &self.inner.capabilities
    }

    async fn publish(&self, event: Event) -> Result<()> {
        self.node().subscribers.publish(&event);
        Ok(())
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        let node = self.node().clone();
        let discovery = self.inner.requests.directory().discovery().clone();
        // Watch before listing, so no publisher appearing meanwhile is missed.
        let watch = discovery.watch(EVENTS_ENDPOINT).await?;
        let buffer = EventBuffer::new(options.capacity);
        let interest = Interest {
            pattern: options.pattern,
            group: options.group,
        };
        let publishers = discovery.list(EVENTS_ENDPOINT).await?;
        let joined = futures_util::future::join_all(
            publishers
                .into_iter()
                .map(|p| join(node.clone(), p, interest.clone(), buffer.clone())),
        )
        .await;
        let readers: HashMap<InstanceId, AbortOnDrop> = joined.into_iter().flatten().collect();
        let task = tokio::spawn(follow(node, watch, interest, buffer.clone(), readers));
        Ok(Box::new(BufferedSubscription::new(
            buffer,
            AbortOnDrop(task),
        )))
    }
}

/// What a subscription asks every publisher for.
#[derive(Clone)]
struct Interest {
    pattern: String,
    /// The worker group joined, if any: each publisher then hands each
    /// matching event to one member of the group.
    group: Option<String>,
}

/// Subscribe at `publisher` and start reading its events into `buffer`.
/// `None` (logged) when it cannot be reached or does not confirm in time: at
/// most once, a stale record must not fail the subscription.
async fn join(
    node: Arc<Node>,
    publisher: Instance,
    interest: Interest,
    buffer: EventBuffer,
) -> Option<(InstanceId, AbortOnDrop)> {
    let timeout = node.config.connect_timeout;
    let id = publisher.id;
    let limits = node.limits;
    let attempt = async {
        let (conn, mut send, recv) = node.open(&publisher).await?;
        let mut headers = Headers::new().with(names::SUBSCRIBE, interest.pattern.clone());
        if let Some(group) = &interest.group {
            headers.insert(names::GROUP, group.clone());
        }
        let request =
            Envelope::new(EnvelopeKind::Request, RequestId::new_v7()).with_headers(headers);
        write_envelope(&mut send, &request).await?;
        let mut reader = EnvelopeReader::new(recv, limits);
        match reader.next().await {
            Ok(Some(env)) if env.kind == EnvelopeKind::Ack => Ok((conn, send, reader)),
            Ok(Some(env)) if env.kind == EnvelopeKind::Error => Err(env.to_error()),
            _ => Err(refusal(&conn).unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Connection,
                    "the publisher did not confirm the subscription",
                )
            })),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok((conn, send, reader))) => {
            let task = tokio::spawn(read_events(conn, send, reader, interest.pattern, buffer));
            Some((id, AbortOnDrop(task)))
        }
        Ok(Err(e)) => {
            tracing::debug!(publisher = %id, error = %e, "cannot subscribe at an events publisher");
            None
        }
        Err(_) => {
            tracing::debug!(publisher = %id, "an events publisher did not confirm in {timeout:?}");
            None
        }
    }
}

/// Drain one publisher's stream into the subscription's buffer. Holding
/// `send` keeps the subscription at the publisher; dropping it (when this
/// task ends or is aborted) unsubscribes.
async fn read_events(
    _conn: quinn::Connection,
    _send: quinn::SendStream,
    mut reader: EnvelopeReader,
    pattern: String,
    buffer: EventBuffer,
) {
    loop {
        let env = match reader.next().await {
            Ok(Some(env)) => env,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "malformed event stream; unsubscribing");
                return;
            }
        };
        match decode_event(env) {
            Ok((event, dropped)) => {
                buffer.dropped(dropped);
                if subject::matches(&pattern, &event.subject) {
                    buffer.offer(event);
                }
            }
            Err(e) => tracing::debug!(error = %e, "malformed event ignored"),
        }
    }
}

/// Follow discovery: subscribe at publishers that appear (or whose stream
/// ended), drop the streams of publishers that left.
async fn follow(
    node: Arc<Node>,
    mut watch: plane_core::discovery::DiscoveryWatch,
    interest: Interest,
    buffer: EventBuffer,
    mut readers: HashMap<InstanceId, AbortOnDrop>,
) {
    // Retry publishers whose stream ended while they are still registered.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut known: HashMap<InstanceId, Instance> = HashMap::new();
    loop {
        tokio::select! {
            change = watch.next() => match change {
                Some(DiscoveryEvent::Added(instance)) => {
                    known.insert(instance.id, instance.clone());
                    let stale = readers.get(&instance.id).is_none_or(|r| r.0.is_finished());
                    if stale {
                        if let Some((id, r)) = join(node.clone(), instance, interest.clone(), buffer.clone()).await {
                            readers.insert(id, r);
                        }
                    }
                }
                Some(DiscoveryEvent::Removed(id)) => {
                    known.remove(&id);
                    readers.remove(&id);
                }
                None => return,
            },
            _ = tick.tick() => {
                let ended: Vec<Instance> = known
                    .values()
                    .filter(|i| readers.get(&i.id).is_none_or(|r| r.0.is_finished()))
                    .cloned()
                    .collect();
                for instance in ended {
                    if let Some((id, r)) = join(node.clone(), instance, interest.clone(), buffer.clone()).await {
                        readers.insert(id, r);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plane_core::events::{Origin, PublisherId};
    use plane_core::Message;

    fn event(subject: &str, sequence: u64) -> Event {
        Event {
            subject: subject.to_owned(),
            message: Message::from(format!("{sequence}")),
            origin: Some(Origin {
                publisher: PublisherId(1),
                sequence,
            }),
        }
    }

    #[tokio::test]
    async fn a_full_subscriber_queue_drops_and_the_next_event_says_how_many() {
        let subscribers = Subscribers::default();
        let (tx, mut rx) = mpsc::channel(1);
        subscribers.add("s.*".to_owned(), None, tx);
        for seq in 1..=3 {
            subscribers.publish(&event("s.a", seq));
        }
        // Not matching: neither queued nor counted as dropped.
        subscribers.publish(&event("other", 4));
        let (first, dropped) = decode_event(rx.recv().await.unwrap()).unwrap();
        assert_eq!((first.origin.unwrap().sequence, dropped), (1, 0));
        subscribers.publish(&event("s.b", 5));
        let (next, dropped) = decode_event(rx.recv().await.unwrap()).unwrap();
        assert_eq!((next.origin.unwrap().sequence, dropped), (5, 2));
    }

    #[tokio::test]
    async fn a_subscriber_that_went_away_is_forgotten() {
        let subscribers = Subscribers::default();
        let (tx, rx) = mpsc::channel(1);
        subscribers.add(">".to_owned(), None, tx);
        drop(rx);
        subscribers.publish(&event("s.a", 1));
        assert!(subscribers.lock().slots.is_empty());
    }

    fn sequences(rx: &mut mpsc::Receiver<Envelope>) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|env| {
                let (e, dropped) = decode_event(env).unwrap();
                (e.origin.unwrap().sequence, dropped)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_group_member_that_is_full_or_gone_is_passed_over() {
        let subscribers = Subscribers::default();
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(8);
        let (tx3, rx3) = mpsc::channel(8);
        subscribers.add("s.*".to_owned(), Some("w"), tx1);
        subscribers.add("s.*".to_owned(), Some("w"), tx2);
        subscribers.add("s.*".to_owned(), Some("w"), tx3);
        // Another group (same name, other pattern) and a broadcast
        // subscriber get every event.
        let (other, mut other_rx) = mpsc::channel(8);
        subscribers.add("s.a".to_owned(), Some("w"), other);
        let (all, mut all_rx) = mpsc::channel(8);
        subscribers.add(">".to_owned(), None, all);
        drop(rx3);
        for seq in 1..=4 {
            subscribers.publish(&event("s.a", seq));
        }
        // 1 takes event 1 and is then full; 2 takes the rest; 3 is gone.
        assert_eq!(sequences(&mut rx1), vec![(1, 0)]);
        assert_eq!(sequences(&mut rx2), vec![(2, 0), (3, 0), (4, 0)]);
        assert_eq!(subscribers.lock().groups.members(), 3);
        let every: Vec<(u64, u64)> = (1..=4).map(|s| (s, 0)).collect();
        assert_eq!(sequences(&mut other_rx), every);
        assert_eq!(sequences(&mut all_rx), every);
    }

    #[tokio::test]
    async fn a_group_whose_members_are_all_full_drops_at_the_member_whose_turn_it_was() {
        let subscribers = Subscribers::default();
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(1);
        subscribers.add(">".to_owned(), Some("w"), tx1);
        subscribers.add(">".to_owned(), Some("w"), tx2);
        for seq in 1..=3 {
            subscribers.publish(&event("s.a", seq));
        }
        // Event 3 found both full: dropped at member 1, whose turn it was.
        assert_eq!(sequences(&mut rx1), vec![(1, 0)]);
        assert_eq!(sequences(&mut rx2), vec![(2, 0)]);
        subscribers.publish(&event("s.a", 4));
        subscribers.publish(&event("s.a", 5));
        assert_eq!(sequences(&mut rx2), vec![(4, 0)]);
        assert_eq!(sequences(&mut rx1), vec![(5, 1)]);
        subscribers.remove(1, ">", Some("w"));
        subscribers.remove(2, ">", Some("w"));
        assert_eq!(subscribers.lock().groups.members(), 0);
    }
}
