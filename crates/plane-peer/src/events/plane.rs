//! The brokerless events plane written once: [`PeerEvents`] over the
//! request plane's links ([`RequestLinks`]).
//!
//! Each events handle publishes on its request plane's listener, registered
//! in discovery as an instance of the reserved endpoint [`EVENTS_ENDPOINT`].
//! A subscription opens one link to every publisher listed there (with
//! [`RequestLinks::open`], as a call would) and follows the discovery watch
//! to subscribe at publishers that appear and forget ones that leave.
//!
//! The subscriber's first envelope is a `request` carrying the pattern in
//! [`names::SUBSCRIBE`] (and, for a worker-group member, the group in
//! [`names::GROUP`]); it keeps its side open, and ending it unsubscribes.
//! The publisher answers `ack` once the subscription is in place —
//! `subscribe` returns only after every publisher known at that moment
//! answered (or the transport's connect timeout passed), so nothing
//! published after it returns is missed for want of a subscription — then
//! every matching event ([`event_envelope`]). Patterns are matched by the
//! publisher and checked again by the subscriber. A reader task per
//! publisher drains the link into the subscription's bounded buffer,
//! dropping and counting when it is full.

use std::collections::HashMap;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::discovery::{DiscoveryEvent, DiscoveryWatch, Instance, Registration};
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::events::buffer::EventBuffer;
use plane_core::events::{
    Event, EventsBackend, EventsCapabilities, SubscribeOptions, SubscriptionTransport,
};
use plane_core::message::names;
use plane_core::request::InstanceId;
use plane_core::subject;
use plane_core::wire::{Envelope, EnvelopeKind, RequestId};
use plane_core::Headers;

use super::{decode_event, deregister_publisher, AbortOnDrop, BufferedSubscription};
use crate::{CallLink, PeerRequests, RequestLinks, Transport};
use plane_core::discovery::Discovery;

/// The discovery endpoint under which publishers register.
pub const EVENTS_ENDPOINT: &str = "plane-events";

/// The brokerless events plane over the transport `L`. Cheap to clone.
pub struct PeerEvents<L> {
    inner: Arc<Inner<L>>,
}

struct Inner<L> {
    /// The listener, links and discovery, shared with the request plane;
    /// the events handle serves no endpoint instance of its own on it.
    requests: PeerRequests<L>,
    registration: Mutex<Option<Registration>>,
    capabilities: EventsCapabilities,
}

impl<L> Drop for Inner<L> {
    fn drop(&mut self) {
        deregister_publisher(
            self.registration
                .get_mut()
                .unwrap_or_else(|p| p.into_inner())
                .take(),
        );
    }
}

impl<L> Clone for PeerEvents<L> {
    fn clone(&self) -> Self {
        PeerEvents {
            inner: self.inner.clone(),
        }
    }
}

impl<L: RequestLinks> std::fmt::Debug for PeerEvents<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerEvents")
            .field("backend", &L::Transport::NAME)
            .finish_non_exhaustive()
    }
}

impl<L: RequestLinks> PeerEvents<L> {
    /// Bind the transport as `config` says and register it in `discovery`
    /// as an events publisher.
    ///
    /// # Errors
    /// As [`PeerRequests::connect`]; discovery errors.
    pub async fn connect(config: crate::Config<L>, discovery: Discovery) -> Result<Self> {
        PeerEvents::over(PeerRequests::connect(config, discovery)?).await
    }

    /// Publish and subscribe on the listener of `requests`, registered in
    /// its discovery as an events publisher: one process binds one
    /// listener for both planes.
    ///
    /// # Errors
    /// Discovery errors.
    pub async fn over(requests: PeerRequests<L>) -> Result<Self> {
        let links = requests.links();
        let mut capabilities = EventsCapabilities::default();
        capabilities.wildcards = true;
        // Each publisher picks one member per group.
        capabilities.groups = true;
        // One queue and one link per subscriber, fed in publish order.
        capabilities.ordered_per_publisher = true;
        capabilities.max_payload = links.settings().max_payload;
        let record = links.record(EVENTS_ENDPOINT, InstanceId::random())?;
        let registration = requests.directory().discovery().register(record).await?;
        Ok(PeerEvents {
            inner: Arc::new(Inner {
                requests,
                registration: Mutex::new(Some(registration)),
                capabilities,
            }),
        })
    }

    /// The request plane whose listener this handle publishes on.
    pub fn requests(&self) -> &PeerRequests<L> {
        &self.inner.requests
    }
}

impl<L: RequestLinks> EventsBackend for PeerEvents<L> {
    fn name(&self) -> &'static str {
        L::Transport::NAME
    }

    fn capabilities(&self) -> &EventsCapabilities {
        &self.inner.capabilities
    }

    async fn publish(&self, event: Event) -> Result<()> {
        self.inner
            .requests
            .endpoints()
            .subscribers()
            .publish(&event);
        Ok(())
    }

    async fn subscribe(&self, options: SubscribeOptions) -> Result<Box<dyn SubscriptionTransport>> {
        let requests = self.inner.requests.clone();
        let discovery = requests.directory().discovery().clone();
        // Watch before listing, so no publisher appearing meanwhile is missed.
        let watch = discovery.watch(EVENTS_ENDPOINT).await?;
        let buffer = EventBuffer::for_options(&options);
        let interest = Interest {
            pattern: options.pattern,
            group: options.group,
        };
        let publishers = discovery.list(EVENTS_ENDPOINT).await?;
        let joined = futures_util::future::join_all(
            publishers
                .into_iter()
                .map(|p| join(&requests, p, &interest, &buffer)),
        )
        .await;
        let readers: HashMap<InstanceId, AbortOnDrop> = joined.into_iter().flatten().collect();
        let task = tokio::spawn(follow(requests, watch, interest, buffer.clone(), readers));
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

/// The next envelope of `link`.
async fn next<K: CallLink>(link: &mut K) -> Option<Result<Envelope>> {
    poll_fn(|cx| link.poll_envelope(cx)).await
}

/// Subscribe at `publisher` and start reading its events into `buffer`.
/// `None` (logged) when it cannot be reached or does not confirm in time: at
/// most once, a stale record must not fail the subscription.
async fn join<L: RequestLinks>(
    requests: &PeerRequests<L>,
    publisher: Instance,
    interest: &Interest,
    buffer: &EventBuffer,
) -> Option<(InstanceId, AbortOnDrop)> {
    let timeout = requests.links().settings().connect_timeout;
    let id = publisher.id;
    let attempt = async {
        let mut headers = Headers::new().with(names::SUBSCRIBE, interest.pattern.clone());
        if let Some(group) = &interest.group {
            headers.insert(names::GROUP, group.clone());
        }
        let request =
            Envelope::new(EnvelopeKind::Request, RequestId::new_v7()).with_headers(headers);
        let mut link = requests.links().open(&publisher, request).await?;
        match next(&mut link).await {
            Some(Ok(env)) if env.kind == EnvelopeKind::Ack => Ok(link),
            Some(Ok(env)) if env.kind == EnvelopeKind::Error => Err(env.to_error()),
            Some(Err(e)) => Err(e),
            _ => Err(Error::new(
                ErrorKind::Connection,
                "the publisher did not confirm the subscription",
            )),
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(link)) => {
            let task = tokio::spawn(read_events(link, interest.pattern.clone(), buffer.clone()));
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

/// Drain one publisher's link into the subscription's buffer. Holding the
/// link keeps the subscription at the publisher; dropping it (when this
/// task ends or is aborted) unsubscribes.
async fn read_events<K: CallLink>(mut link: K, pattern: String, buffer: EventBuffer) {
    loop {
        let env = match next(&mut link).await {
            Some(Ok(env)) => env,
            None => return,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "event link failed; unsubscribing");
                return;
            }
        };
        match decode_event(env) {
            Ok((event, dropped)) => {
                buffer.dropped(dropped);
                // Nothing to offer from a drop notice, or for an event the
                // publisher should not have sent.
                if let Some(event) = event.filter(|e| subject::matches(&pattern, &e.subject)) {
                    buffer.offer(event);
                }
            }
            Err(e) => tracing::debug!(error = %e, "malformed event ignored"),
        }
    }
}

/// Follow discovery: subscribe at publishers that appear (or whose link
/// ended), drop the links of publishers that left.
async fn follow<L: RequestLinks>(
    requests: PeerRequests<L>,
    mut watch: DiscoveryWatch,
    interest: Interest,
    buffer: EventBuffer,
    mut readers: HashMap<InstanceId, AbortOnDrop>,
) {
    // Retry publishers whose link ended while they are still registered.
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut known: HashMap<InstanceId, Instance> = HashMap::new();
    loop {
        tokio::select! {
            change = watch.next() => match change {
                Some(DiscoveryEvent::Added(instance)) => {
                    known.insert(instance.id, instance.clone());
                    let stale = readers.get(&instance.id).is_none_or(|r| r.0.is_finished());
                    if stale {
                        if let Some((id, r)) = join(&requests, instance, &interest, &buffer).await {
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
                    if let Some((id, r)) = join(&requests, instance, &interest, &buffer).await {
                        readers.insert(id, r);
                    }
                }
            }
        }
    }
}
