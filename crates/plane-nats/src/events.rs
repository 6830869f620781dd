//! The events plane: core NATS publish/subscribe for at-most-once, JetStream
//! streams and durable pull consumers for at-least-once.
//!
//! An event's subject is the NATS subject itself (behind the namespace, if
//! one is set), so plain NATS clients publish events plane subscribers
//! receive and subscribe to plane events.
//! The origin travels in the `plane-publisher` and `plane-seq` headers.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_nats::jetstream::context::GetStreamByNameErrorKind;
use async_nats::jetstream::{self, consumer, stream};
use async_nats::{Client, HeaderMap};
use futures_util::{FutureExt, StreamExt};
use plane_core::ack::AckHandle;
use plane_core::events::{
    buffer, ConsumerConfig, DeliverPolicy, Delivery, DeliveryTransport, Event, EventsBackend,
    EventsCapabilities, Origin, PublishAck, StreamConfig, SubscribeOptions, SubscriptionTransport,
};
use plane_core::message::names;
use plane_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;

use crate::ack::{DeadLetter, JsAcker, Original};
use crate::mapping;
use crate::namespace::Namespace;

/// The events plane over NATS and JetStream.
pub struct NatsEvents {
    client: Client,
    js: jetstream::Context,
    caps: EventsCapabilities,
    /// Replicas of what this plane creates on the server.
    replicas: usize,
    namespace: Namespace,
    /// Set when the connection ran out of reconnect attempts.
    gave_up: crate::GaveUp,
}

impl NatsEvents {
    /// The events plane on `client`.
    pub fn new(client: Client) -> Self {
        let mut caps = EventsCapabilities::default();
        caps.wildcards = true;
        caps.groups = true;
        caps.ordered_per_publisher = true;
        caps.durable = true;
        caps.nack_delay = true;
        caps.dead_letter = true;
        caps.dedup = true;
        caps.replay = true;
        caps.max_payload = crate::max_payload(&client);
        let replicas = crate::config::auto_replicas(&client.server_info(), 0);
        NatsEvents {
            js: jetstream::new(client.clone()),
            client,
            caps,
            replicas,
            namespace: Namespace::default(),
            gave_up: crate::GaveUp::default(),
        }
    }

    /// Create durable streams with `replicas` copies (1 to 5; more than 1 needs a
    /// JetStream cluster). By default, the count `replicas=auto` gives on
    /// the server the client is connected to (see
    /// [`NatsConfig::replicas_on`](crate::NatsConfig::replicas_on)).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Wait `timeout` for JetStream's answers (publish acknowledgements,
    /// stream and consumer requests) instead of async-nats's 5 s.
    pub fn with_jetstream_timeout(mut self, timeout: Duration) -> Self {
        self.js.set_timeout(timeout);
        self
    }

    /// Why a durable publish to `subject` went unanswered. JetStream
    /// answers "no responders" both when no stream captures the subject and
    /// when the stream exists but has no leader (an election after its
    /// leader died, or too few replicas up for a quorum). The meta leader
    /// knows which: the first is `NotFound`, the second `NoResponders`,
    /// retryable, because the stream will answer again once it has a leader.
    async fn unanswered_publish(&self, subject: &async_nats::Subject) -> Error {
        let lookup = tokio::time::timeout(
            Duration::from_secs(2),
            self.js.stream_by_subject(subject.as_str()),
        )
        .await;
        match lookup {
            Ok(Ok(stream)) => Error::new(
                ErrorKind::NoResponders,
                format!(
                    "stream `{}` captures the subject but has no leader right now (an election, or too few of its replicas up); retry",
                    self.namespace.local_name(&stream)
                ),
            ),
            Ok(Err(e)) if e.kind() == GetStreamByNameErrorKind::NotFound => {
                Error::new(ErrorKind::NotFound, "no stream captures the subject")
            }
            // Not even the meta leader answers: the cluster itself is
            // between leaders, so the stream's existence is unknown.
            Ok(Err(_)) | Err(_) => Error::new(
                ErrorKind::NoResponders,
                "JetStream did not answer the publish nor the stream lookup (the cluster has no meta leader right now); retry",
            ),
        }
    }

    /// Name subjects and streams inside `namespace`.
    pub(crate) fn in_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    /// Report `Down` once the connection behind `gave_up` stopped
    /// reconnecting.
    pub(crate) fn reporting(mut self, gave_up: crate::GaveUp) -> Self {
        self.gave_up = gave_up;
        self
    }
}

fn headers_of(event: &Event) -> (HeaderMap, bytes::Bytes) {
    let (publisher, seq) = match &event.origin {
        Some(o) => (o.publisher.to_string(), o.sequence.to_string()),
        None => (String::new(), String::new()),
    };
    let extra: Vec<(&str, &str)> = if event.origin.is_some() {
        vec![
            (names::PUBLISHER, publisher.as_str()),
            (names::SEQUENCE, seq.as_str()),
        ]
    } else {
        Vec::new()
    };
    mapping::encode(&event.message, &extra)
}

/// An event from a NATS message: origin from the plane headers when a plane
/// publisher sent it, none for plain clients.
pub(crate) fn event_of(
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: bytes::Bytes,
) -> Result<Event> {
    let origin = match (
        mapping::get(headers, names::PUBLISHER),
        mapping::get(headers, names::SEQUENCE),
    ) {
        (Some(p), Some(s)) => Some(Origin {
            publisher: p.parse()?,
            sequence: s
                .parse()
                .map_err(|_| Error::new(ErrorKind::Decode, "malformed plane-seq header"))?,
        }),
        _ => None,
    };
    let message = mapping::decode(headers, payload, &[names::PUBLISHER, names::SEQUENCE])?;
    Ok(Event {
        subject: subject.to_owned(),
        message,
        origin,
    })
}

impl EventsBackend for NatsEvents {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &EventsCapabilities {
        &self.caps
    }

    fn connection_state(&self) -> plane_core::health::ConnectionState {
        crate::state(&self.client, &self.gave_up)
    }

    async fn publish(&self, event: Event) -> Result<()> {
        let (headers, payload) = headers_of(&event);
        let subject = self.namespace.owned_subject(event.subject);
        self.client
            .publish_with_headers(subject, headers, payload)
            .await
            .map_err(crate::error::publish)
    }

    async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| Error::new(ErrorKind::Connection, "nats flush failed").with_source(e))
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        let pattern = self.namespace.subject(&options.pattern).into_owned();
        let mut sub = match &options.group {
            Some(group) => self.client.queue_subscribe(pattern, group.clone()).await,
            None => self.client.subscribe(pattern).await,
        }
        .map_err(crate::error::subscribe)?;
        // Publishers on other connections must reach the subscription as
        // soon as this returns.
        crate::sync(&self.client).await?;
        let (tx, rx) = mpsc::channel(options.capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = dropped.clone();
        // The channel bounds the count; `held` bounds the bytes, charged as
        // the shared `EventBuffer` charges them (`buffer::cost`).
        let held = Arc::new(AtomicUsize::new(0));
        let charged = held.clone();
        let max_bytes = options.max_bytes;
        let namespace = self.namespace.clone();
        // Forward into a buffer of the subscriber's capacity and byte bound,
        // counting what does not fit, so a slow subscriber loses events
        // visibly and its memory stays bounded. The client's own channel per
        // subscription stays small (`SUBSCRIPTION_CAPACITY`), since this
        // task drains it without waiting.
        tokio::spawn(async move {
            loop {
                let first = tokio::select! {
                    msg = sub.next() => msg,
                    _ = tx.closed() => return,
                };
                let Some(first) = first else { return };
                // Take the whole backlog the client holds at once: events
                // that arrived while the buffer was full are dropped now,
                // not trickled in as the reader frees slots.
                let mut next = Some(first);
                while let Some(msg) = next {
                    let event = event_of(
                        namespace.local_subject(msg.subject.as_str()),
                        msg.headers.as_ref(),
                        msg.payload,
                    );
                    let cost = event.as_ref().map_or(0, buffer::cost);
                    // Charged before it is sent, so the reader never takes
                    // back more than was charged. Only this task adds, so
                    // the check cannot admit past the bound. An event larger
                    // than the bound on its own passes when nothing else is
                    // held, as in `EventBuffer`.
                    let before = charged.fetch_add(cost, Ordering::AcqRel);
                    if before > 0 && before.saturating_add(cost) > max_bytes {
                        charged.fetch_sub(cost, Ordering::AcqRel);
                        counter.fetch_add(1, Ordering::Relaxed);
                    } else {
                        match tx.try_send(event) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                charged.fetch_sub(cost, Ordering::AcqRel);
                                counter.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        }
                    }
                    next = sub.next().now_or_never().flatten();
                }
            }
        });
        Ok(Box::new(Subscription { rx, dropped, held }))
    }

    async fn create_stream(&self, config: StreamConfig) -> Result<()> {
        self.js
            .get_or_create_stream(stream::Config {
                name: self.namespace.name(&config.name).into_owned(),
                subjects: config
                    .subjects
                    .iter()
                    .map(|s| self.namespace.subject(s).into_owned())
                    .collect(),
                max_age: config.max_age.unwrap_or_default(),
                duplicate_window: config.duplicate_window,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| crate::error::js("create stream", e))?;
        Ok(())
    }

    async fn delete_stream(&self, name: &str) -> Result<()> {
        self.js
            .delete_stream(self.namespace.name(name))
            .await
            .map_err(|e| crate::error::js("delete stream", e))?;
        Ok(())
    }

    async fn publish_durable(&self, event: Event, msg_id: Option<String>) -> Result<PublishAck> {
        let (mut headers, payload) = headers_of(&event);
        if let Some(id) = &msg_id {
            headers.insert("Nats-Msg-Id", id.as_str());
        }
        // Kept (a reference count, not a copy) to tell a missing stream from
        // a leaderless one if JetStream does not answer.
        let subject = async_nats::Subject::from(self.namespace.owned_subject(event.subject));
        let outcome = self
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(crate::error::js_publish)?
            .await;
        let ack = match outcome {
            Ok(ack) => ack,
            Err(e) => {
                let e = crate::error::js_publish(e);
                return Err(if e.kind() == ErrorKind::NotFound {
                    self.unanswered_publish(&subject).await
                } else {
                    e
                });
            }
        };
        Ok(PublishAck {
            stream: self.namespace.local_name(&ack.stream).to_owned(),
            sequence: ack.sequence,
            duplicate: ack.duplicate,
        })
    }

    async fn consume(&self, config: ConsumerConfig) -> Result<Box<dyn DeliveryTransport>> {
        let stream = self
            .js
            .get_stream(self.namespace.name(&config.stream))
            .await
            .map_err(|e| crate::error::js("open stream", e))?;
        let consumer: consumer::PullConsumer = stream
            .get_or_create_consumer(
                &config.name,
                consumer::pull::Config {
                    durable_name: Some(config.name.clone()),
                    filter_subject: config
                        .filter
                        .as_deref()
                        .map(|f| self.namespace.subject(f).into_owned())
                        .unwrap_or_default(),
                    deliver_policy: match config.deliver {
                        DeliverPolicy::All => consumer::DeliverPolicy::All,
                        DeliverPolicy::New => consumer::DeliverPolicy::New,
                    },
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_deliver: config.max_deliver.map_or(-1, i64::from),
                    max_ack_pending: config.max_in_flight.min(i64::MAX as usize) as i64,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| crate::error::js("create consumer", e))?;
        let dead_letter = config.dead_letter.as_deref().map(|subject| DeadLetter {
            js: self.js.clone(),
            subject: self.namespace.subject(subject).into_owned(),
            durable: false,
            source: (names::DEAD_LETTER_SUBJECT, None),
        });
        let (tx, rx) = mpsc::channel(config.max_in_flight.clamp(1, 256));
        tokio::spawn(pump(
            self.client.clone(),
            consumer,
            tx,
            Pumped {
                config,
                dead_letter,
                nack_delay: self.caps.nack_delay,
                namespace: self.namespace.clone(),
            },
        ));
        Ok(Box::new(Consumer { rx }))
    }
}

/// How long one pull request stays open at the server. A closed
/// subscription lingers at most this long, handing back (nak) what its last
/// pull still brings instead of leaving it to the ack wait.
const PULL_EXPIRES: Duration = Duration::from_secs(5);

/// Pull from `consumer` into `tx` until the subscription is closed, one
/// bounded pull request after another; re-pull at once after a reconnect (a
/// broker restart forgets pull requests, and waiting for the client library
/// to miss heartbeats would take many seconds).
async fn pump(
    client: Client,
    consumer: consumer::PullConsumer,
    tx: mpsc::Sender<Result<Delivery>>,
    how: Pumped,
) {
    let batch_size = how.config.max_in_flight.clamp(1, 256);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    'outer: loop {
        let batch = tokio::select! {
            b = consumer
                .batch()
                .max_messages(batch_size)
                .expires(PULL_EXPIRES)
                .messages() => b,
            _ = tx.closed() => return,
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(error = %e, "pull consumer unavailable, retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    _ = tx.closed() => return,
                }
            }
        };
        let mut closing = false;
        let mut was_down = false;
        loop {
            let next = tokio::select! {
                n = batch.next() => n,
                _ = tick.tick() => {
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    if up && was_down {
                        if closing {
                            return;
                        }
                        continue 'outer;
                    }
                    was_down = !up;
                    continue;
                }
                _ = tx.closed(), if !closing => {
                    closing = true;
                    continue;
                }
            };
            match next {
                None if closing => return,
                None => continue 'outer,
                Some(Err(e)) => tracing::debug!(error = %e, "pull consumer error"),
                Some(Ok(msg)) if closing => hand_back(msg).await,
                Some(Ok(msg)) => {
                    let delivery = delivery_of(msg, &how);
                    if let Err(mpsc::error::SendError(Ok(d))) = tx.send(delivery).await {
                        closing = true;
                        let _ = d.nack(None).await;
                    }
                }
            }
        }
    }
}

/// Give a delivery nobody will process back to the consumer at once.
async fn hand_back(msg: jetstream::Message) {
    if let Err(e) = msg.ack_with(jetstream::AckKind::Nak(None)).await {
        tracing::debug!(error = %e, "handing back a delivery failed");
    }
}

/// What a consumer's pump needs to turn messages into deliveries.
struct Pumped {
    config: ConsumerConfig,
    dead_letter: Option<DeadLetter>,
    nack_delay: bool,
    namespace: Namespace,
}

fn delivery_of(msg: jetstream::Message, how: &Pumped) -> Result<Delivery> {
    let Pumped {
        config,
        dead_letter,
        nack_delay,
        namespace,
    } = how;
    let (stream, seq, attempt) = {
        let info = msg.info().map_err(|e| {
            Error::new(ErrorKind::Decode, "malformed jetstream delivery").with_source(e)
        })?;
        (
            info.stream.to_owned(),
            info.stream_sequence,
            info.delivered.max(1) as u32,
        )
    };
    let (msg, acker) = msg.split();
    let subject = namespace.local_subject(msg.subject.as_str());
    let event = event_of(subject, msg.headers.as_ref(), msg.payload.clone())?;
    let last = config.max_deliver.is_some_and(|max| attempt >= max);
    let dl = match dead_letter {
        Some(dl) if last => Some((
            dl.clone(),
            Original {
                subject: subject.to_owned(),
                headers: msg.headers.clone(),
                payload: msg.payload.clone(),
                stream,
                stream_sequence: seq,
                attempt,
            },
        )),
        _ => None,
    };
    let acker = JsAcker::new(acker, config.ack_wait, dl);
    Ok(Delivery::new(
        event,
        attempt,
        seq,
        AckHandle::new(Box::new(acker), *nack_delay, true),
    ))
}

struct Subscription {
    rx: mpsc::Receiver<Result<Event>>,
    dropped: Arc<AtomicU64>,
    /// The summed `buffer::cost` of the events in `rx`.
    held: Arc<AtomicUsize>,
}

impl SubscriptionTransport for Subscription {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            return Poll::Ready(Some(Err(Error::new(
                ErrorKind::Overloaded,
                format!("{dropped} events dropped: the subscriber fell behind"),
            ))));
        }
        let next = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(event))) = &next {
            self.held.fetch_sub(buffer::cost(event), Ordering::AcqRel);
        }
        next
    }

    fn close(&mut self) {
        self.rx.close();
    }
}

struct Consumer {
    rx: mpsc::Receiver<Result<Delivery>>,
}

impl DeliveryTransport for Consumer {
    fn poll_delivery(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Delivery>>> {
        self.rx.poll_recv(cx)
    }

    fn close(&mut self) {
        // Deliveries already buffered were never handed out: hand them back
        // so another subscriber gets them now, not after the ack wait.
        self.rx.close();
        while let Ok(d) = self.rx.try_recv() {
            if let (Ok(d), Ok(rt)) = (d, tokio::runtime::Handle::try_current()) {
                rt.spawn(async move {
                    let _ = d.nack(None).await;
                });
            }
        }
    }
}
