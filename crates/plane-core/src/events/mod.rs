//! The events plane: publish to subjects, subscribe with wildcards.
//!
//! Two modes:
//! - **at-most-once** ([`Events::publish`], [`Events::subscribe`]): broadcast to
//!   every subscriber, or to one member per worker group; a slow subscriber
//!   loses events *visibly* (an `Overloaded` item says how many) and its memory
//!   stays bounded.
//! - **durable at-least-once** ([`Events::create_stream`],
//!   [`Events::publish_durable`], [`Events::consume`]): a stream stores the
//!   events of its subjects; a named consumer receives them until it acks, with
//!   ack wait, nack (optionally delayed), redelivery, and dead-lettering after
//!   `max_deliver` attempts. Consumers sharing a name share the work.
//!
//! Every event published through plane carries an [`Origin`]: the publisher's
//! id and a sequence number that grows by one per event of that publisher, so
//! consumers detect gaps and drop duplicates.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::ack::AckHandle;
pub use crate::capabilities::EventsCapabilities;
use crate::error::{Error, ErrorKind, Result};
pub use crate::health::ConnectionState;
pub use crate::ids::PublisherId;
use crate::message::names;
use crate::message::{Body, Message};
use crate::metrics::{self as m, Labels};
use crate::policy::RetryPolicy;
use crate::subject::{validate_name, validate_pattern, validate_subject};
use crate::trace::TraceContext;

pub mod buffer;
pub mod groups;

/// Who published an event, and its place in that publisher's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Origin {
    /// The publisher.
    pub publisher: PublisherId,
    /// 1 for the publisher's first event, then one more per event.
    pub sequence: u64,
}

/// One event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The concrete subject it was published to.
    pub subject: String,
    /// Headers and body.
    pub message: Message,
    /// Publisher and sequence; `None` only for events published by a non-plane
    /// client directly on the transport.
    pub origin: Option<Origin>,
}

/// Options of an at-most-once subscription.
#[non_exhaustive]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubscribeOptions {
    /// Subject pattern (`*` one token, `>` the rest).
    pub pattern: String,
    /// Worker group: each event goes to one member of the group.
    pub group: Option<String>,
    /// Events buffered for this subscriber before newer ones are dropped (and
    /// the drop is reported). Default [`DEFAULT_CAPACITY`](Self::DEFAULT_CAPACITY).
    pub capacity: usize,
    /// Bytes buffered for this subscriber before newer events are dropped
    /// (and the drop is reported, as for `capacity`): each event is charged
    /// [`buffer::cost`] (payload plus [`buffer::EVENT_OVERHEAD`]). Whichever
    /// of `capacity` and `max_bytes` is reached first bounds the buffer. An
    /// event larger than `max_bytes` on its own is delivered when nothing
    /// else is buffered, and dropped and reported otherwise. Default
    /// [`DEFAULT_MAX_BYTES`](Self::DEFAULT_MAX_BYTES).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: usize,
}

fn default_max_bytes() -> usize {
    SubscribeOptions::DEFAULT_MAX_BYTES
}

impl SubscribeOptions {
    /// The default [`capacity`](Self::capacity): 4096 events.
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// The default [`max_bytes`](Self::max_bytes): 64 MiB. Chosen so that
    /// the count bound still decides for ordinary events (4096 events of up
    /// to 16 KiB fit), while a subscriber of large events holds at most
    /// 64 MiB (1024 events of 64 KiB) instead of 4096 times their size.
    pub const DEFAULT_MAX_BYTES: usize = 64 * 1024 * 1024;

    /// Subscribe to `pattern` as a broadcast subscriber.
    pub fn new(pattern: impl Into<String>) -> Self {
        SubscribeOptions {
            pattern: pattern.into(),
            group: None,
            capacity: Self::DEFAULT_CAPACITY,
            max_bytes: Self::DEFAULT_MAX_BYTES,
        }
    }

    /// Join worker group `group`.
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// Set the buffer capacity, in events.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Set the buffer's byte bound (see [`max_bytes`](Self::max_bytes)).
    ///
    /// ```
    /// # use plane_core::events::SubscribeOptions;
    /// // Hold at most 8 MiB of events for this subscriber.
    /// let options = SubscribeOptions::new("telemetry.>").max_bytes(8 << 20);
    /// assert_eq!(options.max_bytes, 8 << 20);
    /// ```
    pub fn max_bytes(mut self, max_bytes: usize) -> Self {
        self.max_bytes = max_bytes;
        self
    }
}

/// A durable stream: which subjects it stores and for how long.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamConfig {
    /// Stream name (`[A-Za-z0-9_-]`, 1 to 64).
    pub name: String,
    /// Subject patterns captured by the stream.
    pub subjects: Vec<String>,
    /// Events older than this are discarded. `None` keeps them.
    pub max_age: Option<Duration>,
    /// Window in which a repeated message id is recognised as a duplicate.
    /// Default 2 minutes.
    pub duplicate_window: Duration,
}

impl StreamConfig {
    /// A stream named `name` capturing `subjects`.
    pub fn new(
        name: impl Into<String>,
        subjects: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        StreamConfig {
            name: name.into(),
            subjects: subjects.into_iter().map(Into::into).collect(),
            max_age: None,
            duplicate_window: Duration::from_secs(120),
        }
    }

    /// Set [`max_age`](StreamConfig::max_age).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Set [`duplicate_window`](StreamConfig::duplicate_window).
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }
}

/// Where a new durable consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum DeliverPolicy {
    /// Every event the stream still holds (replay).
    #[default]
    All,
    /// Only events published after the consumer was created.
    New,
}

/// A durable consumer of a stream.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsumerConfig {
    /// The stream consumed.
    pub stream: String,
    /// Durable consumer name; subscribers with the same name share the work,
    /// consumers with different names each get every event.
    pub name: String,
    /// Only events whose subject matches this pattern.
    pub filter: Option<String>,
    /// Where a new consumer starts. Ignored when the consumer already exists.
    pub deliver: DeliverPolicy,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    /// Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries before an event is dead-lettered (or, without a dead-letter
    /// subject, dropped). `None` retries forever.
    pub max_deliver: Option<u32>,
    /// Unacknowledged deliveries outstanding at once; further events wait.
    /// Default 1000.
    pub max_in_flight: usize,
    /// Subject dead-lettered events are published to.
    pub dead_letter: Option<String>,
}

impl ConsumerConfig {
    /// Consumer `name` of `stream` with defaults.
    pub fn new(stream: impl Into<String>, name: impl Into<String>) -> Self {
        ConsumerConfig {
            stream: stream.into(),
            name: name.into(),
            filter: None,
            deliver: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            max_in_flight: 1000,
            dead_letter: None,
        }
    }

    /// Set [`filter`](ConsumerConfig::filter).
    pub fn filter(mut self, pattern: impl Into<String>) -> Self {
        self.filter = Some(pattern.into());
        self
    }

    /// Set [`deliver`](ConsumerConfig::deliver).
    pub fn deliver(mut self, deliver: DeliverPolicy) -> Self {
        self.deliver = deliver;
        self
    }

    /// Set [`ack_wait`](ConsumerConfig::ack_wait).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Set [`max_deliver`](ConsumerConfig::max_deliver).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Set [`max_in_flight`](ConsumerConfig::max_in_flight).
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n;
        self
    }

    /// Set [`dead_letter`](ConsumerConfig::dead_letter).
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.dead_letter = Some(subject.into());
        self
    }
}

/// What the stream says about a durable publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored the event.
    pub stream: String,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// The message id was seen within the duplicate window; nothing was stored.
    pub duplicate: bool,
}

/// One durable delivery; acknowledge it after processing.
#[derive(Debug)]
pub struct Delivery {
    /// The event.
    pub event: Event,
    /// 1 for the first delivery, then one more per redelivery.
    pub attempt: u32,
    /// The event's sequence in its stream.
    pub stream_sequence: u64,
    ack: AckHandle,
}

impl Delivery {
    /// Build a delivery (for backends).
    pub fn new(event: Event, attempt: u32, stream_sequence: u64, ack: AckHandle) -> Self {
        Delivery {
            event,
            attempt,
            stream_sequence,
            ack,
        }
    }

    /// Acknowledge: processed, never redeliver.
    pub async fn ack(&self) -> Result<()> {
        self.ack.ack().await
    }

    /// Redeliver, after `delay` if given.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        self.ack.nack(delay).await
    }

    /// Still working: reset the ack wait.
    pub async fn extend(&self) -> Result<()> {
        self.ack.extend().await
    }
}

/// A backend's at-most-once subscription.
pub trait SubscriptionTransport: Send + 'static {
    /// Next event; `Err(Overloaded)` reports dropped events; `None` when closed.
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>>;
    /// Unsubscribe. Idempotent.
    fn close(&mut self);
}

/// A backend's durable consumer subscription.
pub trait DeliveryTransport: Send + 'static {
    /// Next delivery; `None` when closed.
    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>>;
    /// Stop receiving; unacknowledged deliveries are redelivered after their
    /// ack wait. Idempotent.
    fn close(&mut self);
}

/// An at-most-once subscription: a stream of events.
pub struct Subscription {
    transport: Box<dyn SubscriptionTransport>,
    closed: bool,
    /// Events already received when [`drain`](Subscription::drain) was
    /// called, still to be yielded.
    drained: std::collections::VecDeque<Result<Event>>,
    labels: Option<ModeLabels>,
}

impl Subscription {
    /// Wrap a backend subscription.
    pub fn new(transport: Box<dyn SubscriptionTransport>) -> Self {
        Subscription {
            transport,
            closed: false,
            drained: std::collections::VecDeque::new(),
            labels: None,
        }
    }

    /// Stop receiving new events but keep the ones already received: the
    /// subscription unsubscribes now, and the stream yields what was buffered
    /// for it, then ends. Memory stays bounded by the subscription's capacity.
    pub fn drain(&mut self) {
        if self.closed {
            return;
        }
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(item)) = self.transport.poll_event(&mut cx) {
            self.drained.push_back(item);
        }
        self.close();
    }

    /// Unsubscribe; the stream then ends. Idempotent, and other subscriptions
    /// are unaffected.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.transport.close();
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Event>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let item = if this.closed {
            this.drained.pop_front()
        } else {
            match this.transport.poll_event(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(item) => item,
            }
        };
        if let Some(labels) = &this.labels {
            match &item {
                Some(Ok(event)) => received(labels, event),
                Some(Err(e)) if e.kind() == ErrorKind::Overloaded => {
                    labels.base.counter(m::EVENTS_DROPPED).increment(1);
                }
                _ => {}
            }
        }
        Poll::Ready(item)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// The label sets of one delivery mode of an events handle: `backend`,
/// and `backend` plus `mode`.
#[derive(Clone, Debug)]
struct ModeLabels {
    base: Labels,
    mode: Labels,
}

impl ModeLabels {
    fn new(backend: &'static str, mode: &'static str) -> Self {
        let base = Labels::new().with("backend", backend);
        ModeLabels {
            mode: base.clone().with("mode", mode),
            base,
        }
    }
}

/// Count one received event.
fn received(labels: &ModeLabels, event: &Event) {
    labels.mode.counter(m::EVENTS_RECEIVED).increment(1);
    labels
        .mode
        .counter(m::EVENTS_BYTES_RECEIVED)
        .increment(event.message.payload_len() as u64);
    if event
        .message
        .headers
        .get(names::DEAD_LETTER_SUBJECT)
        .is_some()
    {
        labels.base.counter(m::EVENTS_DEAD_LETTERS).increment(1);
    }
}

/// A durable consumer subscription: a stream of deliveries to acknowledge.
pub struct DurableSubscription {
    transport: Box<dyn DeliveryTransport>,
    closed: bool,
    labels: Option<ModeLabels>,
}

impl DurableSubscription {
    /// Wrap a backend consumer subscription.
    pub fn new(transport: Box<dyn DeliveryTransport>) -> Self {
        DurableSubscription {
            transport,
            closed: false,
            labels: None,
        }
    }

    /// Stop receiving. Idempotent; unacknowledged deliveries come back to
    /// another subscriber of the same consumer after their ack wait.
    pub fn close(&mut self) {
        if !self.closed {
            self.closed = true;
            self.transport.close();
        }
    }
}

impl Stream for DurableSubscription {
    type Item = Result<Delivery>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.closed {
            return Poll::Ready(None);
        }
        let item = this.transport.poll_delivery(cx);
        if let (Some(labels), Poll::Ready(Some(Ok(delivery)))) = (&this.labels, &item) {
            received(labels, &delivery.event);
            if delivery.attempt > 1 {
                labels.base.counter(m::EVENTS_REDELIVERED).increment(1);
            }
        }
        item
    }
}

impl Drop for DurableSubscription {
    fn drop(&mut self) {
        self.close();
    }
}

/// What a backend implements for the events plane.
pub trait EventsBackend: Send + Sync + 'static {
    /// Backend name.
    fn name(&self) -> &'static str;
    /// Declared capabilities.
    fn capabilities(&self) -> &EventsCapabilities;
    /// The transport's connection state, for health checks. Cheap, no I/O.
    /// Defaults to `Up` (right for backends without a connection).
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Up
    }
    /// Publish at most once. The subject is valid and the origin set.
    fn publish(&self, event: Event) -> impl Future<Output = Result<()>> + Send;
    /// Wait until every event published so far left this process (reached
    /// the broker, or the peers' connections). Defaults to done at once,
    /// right for backends whose publish returns only once it has.
    fn flush(&self) -> impl Future<Output = Result<()>> + Send {
        async { Ok(()) }
    }
    /// Subscribe at most once. Options are validated against the capabilities.
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<Box<dyn SubscriptionTransport>>> + Send;
    // The durable methods default to `Unsupported`, for backends that do not
    // declare `durable` (the handle refuses before calling them anyway).

    /// Create a durable stream, or leave an existing one of that name as is.
    fn create_stream(&self, config: StreamConfig) -> impl Future<Output = Result<()>> + Send {
        let _ = config;
        async { Err(Error::unsupported("durable")) }
    }
    /// Delete a stream and its consumers. `NotFound` if absent.
    fn delete_stream(&self, name: &str) -> impl Future<Output = Result<()>> + Send {
        let _ = name;
        async { Err(Error::unsupported("durable")) }
    }
    /// Publish into the stream capturing the subject and wait for it to be stored.
    /// `NotFound` if no stream captures it.
    fn publish_durable(
        &self,
        event: Event,
        msg_id: Option<String>,
    ) -> impl Future<Output = Result<PublishAck>> + Send {
        let _ = (event, msg_id);
        async { Err(Error::unsupported("durable")) }
    }
    /// Bind to (creating if needed) a durable consumer.
    fn consume(
        &self,
        config: ConsumerConfig,
    ) -> impl Future<Output = Result<Box<dyn DeliveryTransport>>> + Send {
        let _ = config;
        async { Err(Error::unsupported("durable")) }
    }
}

/// Object-safe twin of [`EventsBackend`].
#[allow(missing_docs)]
pub trait DynEventsBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> &EventsCapabilities;
    fn connection_state(&self) -> ConnectionState;
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<()>>;
    fn flush(&self) -> BoxFuture<'_, Result<()>>;
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn SubscriptionTransport>>>;
    fn create_stream(&self, config: StreamConfig) -> BoxFuture<'_, Result<()>>;
    fn delete_stream<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    fn publish_durable(
        &self,
        event: Event,
        msg_id: Option<String>,
    ) -> BoxFuture<'_, Result<PublishAck>>;
    fn consume(&self, config: ConsumerConfig) -> BoxFuture<'_, Result<Box<dyn DeliveryTransport>>>;
}

impl<T: EventsBackend> DynEventsBackend for T {
    fn name(&self) -> &'static str {
        EventsBackend::name(self)
    }
    fn capabilities(&self) -> &EventsCapabilities {
        EventsBackend::capabilities(self)
    }
    fn connection_state(&self) -> ConnectionState {
        EventsBackend::connection_state(self)
    }
    fn publish(&self, event: Event) -> BoxFuture<'_, Result<()>> {
        Box::pin(EventsBackend::publish(self, event))
    }
    fn flush(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(EventsBackend::flush(self))
    }
    fn subscribe(
        &self,
        options: SubscribeOptions,
    ) -> BoxFuture<'_, Result<Box<dyn SubscriptionTransport>>> {
        Box::pin(EventsBackend::subscribe(self, options))
    }
    fn create_stream(&self, config: StreamConfig) -> BoxFuture<'_, Result<()>> {
        Box::pin(EventsBackend::create_stream(self, config))
    }
    fn delete_stream<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(EventsBackend::delete_stream(self, name))
    }
    fn publish_durable(
        &self,
        event: Event,
        msg_id: Option<String>,
    ) -> BoxFuture<'_, Result<PublishAck>> {
        Box::pin(EventsBackend::publish_durable(self, event, msg_id))
    }
    fn consume(&self, config: ConsumerConfig) -> BoxFuture<'_, Result<Box<dyn DeliveryTransport>>> {
        Box::pin(EventsBackend::consume(self, config))
    }
}

struct PublisherState {
    id: PublisherId,
    sequence: AtomicU64,
}

impl PublisherState {
    fn fresh() -> Arc<Self> {
        Arc::new(PublisherState {
            id: PublisherId::new(),
            sequence: AtomicU64::new(0),
        })
    }

    fn next(&self) -> Origin {
        Origin {
            publisher: self.id,
            sequence: self.sequence.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// The events plane handle. Cheap to clone; clones share one publisher id
/// and sequence. Use [`Events::publisher`] for an independent sequence (one
/// per subject, say, so that subscribers filtering by subject see no
/// artificial gaps).
#[derive(Clone)]
pub struct Events {
    backend: Arc<dyn DynEventsBackend>,
    publisher: Arc<PublisherState>,
    retry: RetryPolicy,
    /// At most once, durable.
    labels: Arc<[ModeLabels; 2]>,
}

impl std::fmt::Debug for Events {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Events")
            .field("backend", &self.backend.name())
            .field("publisher", &self.publisher.id)
            .finish()
    }
}

impl Events {
    /// Wrap a backend.
    pub fn new(backend: impl EventsBackend) -> Self {
        Events::from_dyn(Arc::new(backend))
    }

    /// Wrap an already shared backend.
    pub fn from_dyn(backend: Arc<dyn DynEventsBackend>) -> Self {
        let name = backend.name();
        Events {
            backend,
            publisher: PublisherState::fresh(),
            retry: RetryPolicy::none(),
            labels: Arc::new([
                ModeLabels::new(name, "at_most_once"),
                ModeLabels::new(name, "durable"),
            ]),
        }
    }

    /// A handle whose publishes are retried under `retry` (none unless set).
    ///
    /// A retried at-most-once publish re-sends the same event — same publisher
    /// id and sequence — so subscribers recognise a duplicate. A retried
    /// durable publish reuses its message id (one is generated when the caller
    /// gave none and the backend declares `dedup`), so the stream's duplicate
    /// window stores it once.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The backend's connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.backend.connection_state()
    }

    fn labels(&self, durable: bool) -> &ModeLabels {
        &self.labels[usize::from(durable)]
    }

    fn published<T>(&self, durable: bool, result: &Result<T>, len: usize) {
        let labels = &self.labels(durable).mode;
        labels.counter(m::EVENTS_BYTES_SENT).increment(len as u64);
        labels
            .counter_with(m::EVENTS_PUBLISHED, "outcome", m::outcome(result))
            .increment(1);
    }

    fn on_retry(&self, durable: bool, error: &Error, retry: u32) {
        self.labels(durable)
            .mode
            .counter(m::EVENTS_RETRIES)
            .increment(1);
        tracing::debug!(error = %error, retry, "retrying publish");
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &EventsCapabilities {
        self.backend.capabilities()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// This handle's publisher id.
    pub fn publisher_id(&self) -> PublisherId {
        self.publisher.id
    }

    /// A handle with a new publisher id and its own sequence, sharing the backend.
    pub fn publisher(&self) -> Events {
        Events {
            backend: self.backend.clone(),
            publisher: PublisherState::fresh(),
            retry: self.retry.clone(),
            labels: self.labels.clone(),
        }
    }

    fn event(&self, subject: &str, mut message: Message, op: &'static str) -> Result<Event> {
        validate_subject(subject).map_err(|e| e.with_op(op))?;
        let len = message.payload_len();
        let max = self.capabilities().max_payload;
        if len > max {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!("event of {len} bytes exceeds the limit of {max}"),
            )
            .with_op(op)
            .with_backend(self.backend.name()));
        }
        // Only within a trace: a fresh trace per event would be noise. Added
        // after the limit check, like every plane control header.
        TraceContext::outgoing(&mut message.headers, false);
        Ok(Event {
            subject: subject.to_owned(),
            message,
            origin: Some(self.publisher.next()),
        })
    }

    /// Publish at most once. Within a trace context
    /// ([`TraceContext::current`]) the event carries it.
    pub async fn publish(&self, subject: &str, message: impl Into<Message>) -> Result<()> {
        let op = "events.publish";
        let event = self.event(subject, message.into(), op)?;
        let len = event.message.payload_len();
        self.retry
            .run(
                |_| async {
                    let r = self.backend.publish(event.clone()).await;
                    self.published(false, &r, len);
                    r.map_err(|e| e.with_op(op).with_backend(self.backend.name()))
                },
                |e, n| self.on_retry(false, e, n),
            )
            .await
    }

    /// Wait until every event this handle's backend published so far left
    /// this process: publish is at most once and may return while the event
    /// is still buffered (NATS), so a program about to exit flushes first.
    ///
    /// # Errors
    /// `Connection` when the transport cannot confirm it.
    pub async fn flush(&self) -> Result<()> {
        self.backend
            .flush()
            .await
            .map_err(|e| e.with_op("events.flush").with_backend(self.backend.name()))
    }

    /// Subscribe at most once to `pattern`, as a broadcast subscriber.
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription> {
        self.subscribe_with(SubscribeOptions::new(pattern)).await
    }

    /// Subscribe at most once with options (worker group, capacity, byte
    /// bound).
    pub async fn subscribe_with(&self, options: SubscribeOptions) -> Result<Subscription> {
        let op = "events.subscribe";
        validate_pattern(&options.pattern).map_err(|e| e.with_op(op))?;
        let caps = self.capabilities();
        let wild = options.pattern.split('.').any(|t| t == "*" || t == ">");
        if wild && !caps.wildcards {
            return Err(Error::unsupported("wildcards").with_op(op));
        }
        if let Some(group) = &options.group {
            if !caps.groups {
                return Err(Error::unsupported("groups").with_op(op));
            }
            validate_name("group", group).map_err(|e| e.with_op(op))?;
        }
        if options.capacity == 0 {
            return Err(
                Error::new(ErrorKind::InvalidConfig, "capacity must be at least 1").with_op(op),
            );
        }
        if options.max_bytes == 0 {
            return Err(
                Error::new(ErrorKind::InvalidConfig, "max_bytes must be at least 1").with_op(op),
            );
        }
        let t = self
            .backend
            .subscribe(options)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        let mut sub = Subscription::new(t);
        sub.labels = Some(self.labels(false).clone());
        Ok(sub)
    }

    fn require_durable(&self, op: &'static str) -> Result<()> {
        if self.capabilities().durable {
            Ok(())
        } else {
            Err(Error::unsupported("durable").with_op(op))
        }
    }

    /// Create a durable stream (or open an existing one of that name).
    pub async fn create_stream(&self, config: StreamConfig) -> Result<()> {
        let op = "events.create_stream";
        self.require_durable(op)?;
        validate_name("stream", &config.name).map_err(|e| e.with_op(op))?;
        if config.subjects.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a stream needs at least one subject",
            )
            .with_op(op));
        }
        for s in &config.subjects {
            validate_pattern(s).map_err(|e| e.with_op(op))?;
        }
        self.backend
            .create_stream(config)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))
    }

    /// Delete a durable stream.
    pub async fn delete_stream(&self, name: &str) -> Result<()> {
        let op = "events.delete_stream";
        self.require_durable(op)?;
        validate_name("stream", name).map_err(|e| e.with_op(op))?;
        self.backend
            .delete_stream(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))
    }

    /// Publish durably: returns once the stream stored the event. With a
    /// `msg_id`, a repeat within the stream's duplicate window is not stored
    /// again (`PublishAck::duplicate`).
    pub async fn publish_durable(
        &self,
        subject: &str,
        message: impl Into<Message>,
        msg_id: Option<&str>,
    ) -> Result<PublishAck> {
        let op = "events.publish_durable";
        self.require_durable(op)?;
        if msg_id.is_some() && !self.capabilities().dedup {
            return Err(Error::unsupported("dedup").with_op(op));
        }
        let event = self.event(subject, message.into(), op)?;
        let len = event.message.payload_len();
        // Every attempt carries the same id, so a retry after a lost ack is
        // recognised by the stream's duplicate window.
        let msg_id = match msg_id {
            Some(id) => Some(id.to_owned()),
            None if self.retry.retries() && self.capabilities().dedup => {
                Some(uuid::Uuid::now_v7().simple().to_string())
            }
            None => None,
        };
        self.retry
            .run(
                |_| async {
                    let r = self
                        .backend
                        .publish_durable(event.clone(), msg_id.clone())
                        .await;
                    self.published(true, &r, len);
                    r.map_err(|e| e.with_op(op).with_backend(self.backend.name()))
                },
                |e, n| self.on_retry(true, e, n),
            )
            .await
    }

    /// Consume a stream through a durable consumer.
    pub async fn consume(&self, config: ConsumerConfig) -> Result<DurableSubscription> {
        let op = "events.consume";
        self.require_durable(op)?;
        let caps = self.capabilities();
        validate_name("stream", &config.stream).map_err(|e| e.with_op(op))?;
        validate_name("consumer", &config.name).map_err(|e| e.with_op(op))?;
        if let Some(f) = &config.filter {
            validate_pattern(f).map_err(|e| e.with_op(op))?;
        }
        if let Some(dl) = &config.dead_letter {
            if !caps.dead_letter {
                return Err(Error::unsupported("dead_letter").with_op(op));
            }
            validate_subject(dl).map_err(|e| e.with_op(op))?;
        }
        if config.max_in_flight == 0 || config.max_deliver == Some(0) || config.ack_wait.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_in_flight, max_deliver and ack_wait must be positive",
            )
            .with_op(op));
        }
        let t = self
            .backend
            .consume(config)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        let mut sub = DurableSubscription::new(t);
        sub.labels = Some(self.labels(true).clone());
        Ok(sub)
    }
}

/// Convenience: an event's body.
impl Event {
    /// The event body.
    pub fn body(&self) -> &Body {
        &self.message.body
    }
}
