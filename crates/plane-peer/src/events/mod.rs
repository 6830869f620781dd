//! The brokerless events plane, written once: [`PeerEvents`] over a
//! transport's links (see `plane.rs`), the publisher's subscriber table
//! ([`Subscribers`], `publisher.rs`), how an [`Event`] travels as a wire
//! [`Envelope`], and the bounded buffer behind every at-most-once
//! subscription.
//!
//! # Envelope mapping (events plane)
//!
//! | what | kind | headers | body |
//! |---|---|---|---|
//! | event | `data` | the event's headers, plus [`names::SUBJECT`], [`names::PUBLISHER`], [`names::SEQUENCE`] and, when the sender dropped events for this subscriber just before, [`names::DROPPED`] | the event body |
//! | drop notice ([`drop_notice`]) | `data` | [`names::DROPPED`] only: drops no event followed | empty |
//!
//! The request id is the subscription's (its `request` envelope's), so a
//! transport that multiplexes links by id routes events like replies. The
//! mapping removes the `plane-` headers
//! it adds before the subscriber sees the event.
//!
//! # Buffer
//!
//! A transport's reader task [`offer`](EventBuffer::offer)s what arrives to
//! the subscription's [`EventBuffer`] (plane-core's, the one the in-memory
//! backend uses too) and never waits; [`BufferedSubscription`] reads it.
//!
//! # Worker groups
//!
//! Without a broker, the choice of a group member is made by the publisher.
//! That choice is sound because every event originates at exactly one
//! publisher and every subscription — group member or not — subscribes at
//! every publisher listed in discovery: each publisher knows all members of
//! each group, and hands each event to exactly one of them.
//! [`plane_core::events::groups::Groups`] is that choice.

mod plane;
mod publisher;

pub use plane::{PeerEvents, EVENTS_ENDPOINT};
pub use publisher::{EventWriter, Subscribers, SUBSCRIBER_QUEUE};

use std::task::{Context, Poll};

use plane_core::discovery::Registration;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::events::buffer::EventBuffer;
use plane_core::events::{Event, Origin, PublisherId, SubscriptionTransport};
use plane_core::message::names;
use plane_core::message::{Headers, Message};
use plane_core::wire::{Envelope, EnvelopeKind, RequestId};

/// Withdraw an events publisher's discovery record, when it had one, in the
/// background: called from `Drop`, which cannot wait. Removing the record
/// now rather than when its lease runs out stops subscribers dialling a
/// publisher that is gone.
pub fn deregister_publisher(registration: Option<Registration>) {
    if let (Some(r), Ok(rt)) = (registration, tokio::runtime::Handle::try_current()) {
        rt.spawn(async move {
            if let Err(e) = r.deregister().await {
                tracing::debug!(error = %e, "cannot deregister an events publisher");
            }
        });
    }
}

/// The envelope of `event`; `dropped` events were lost just before it.
pub fn event_envelope(event: &Event, dropped: u64) -> Envelope {
    let mut headers = event.message.headers.clone();
    headers.insert(names::SUBJECT, event.subject.clone());
    if let Some(o) = event.origin {
        headers.insert(names::PUBLISHER, o.publisher.to_string());
        headers.insert(names::SEQUENCE, o.sequence.to_string());
    }
    if dropped > 0 {
        headers.insert(names::DROPPED, dropped.to_string());
    }
    Envelope::new(EnvelopeKind::Data, RequestId::default())
        .with_headers(headers)
        .with_body(event.message.body.clone())
}

/// A notice that `dropped` events were lost for a subscriber and no event
/// got through after them to carry the count (a burst ended while the
/// subscriber's queue was full). It is an event envelope with a drop count
/// and no subject, which a subscriber predating notices ignores as
/// malformed rather than taking for an event.
pub fn drop_notice(dropped: u64) -> Envelope {
    let mut headers = Headers::new();
    headers.insert(names::DROPPED, dropped.to_string());
    Envelope::new(EnvelopeKind::Data, RequestId::default()).with_headers(headers)
}

/// The event an envelope carries (none in a [`drop_notice`]), and how many
/// events were dropped before it. The `plane-` headers of the mapping are
/// removed.
///
/// # Errors
/// `Decode` for an envelope of another kind, without a subject (other than
/// a drop notice), or with an invalid origin or drop count.
pub fn decode_event(env: Envelope) -> Result<(Option<Event>, u64)> {
    let bad = |what: &str| Error::new(ErrorKind::Decode, format!("event envelope: {what}"));
    if env.kind != EnvelopeKind::Data {
        return Err(bad("not a data frame"));
    }
    let mut headers = env.headers;
    let dropped = match headers.remove(names::DROPPED) {
        Some(n) => n.parse().map_err(|_| bad("invalid drop count"))?,
        None => 0,
    };
    let Some(subject) = headers.remove(names::SUBJECT) else {
        return match dropped {
            0 => Err(bad("no subject")),
            n => Ok((None, n)),
        };
    };
    let publisher = headers.remove(names::PUBLISHER);
    let sequence = headers.remove(names::SEQUENCE);
    let origin = match (publisher, sequence) {
        (Some(p), Some(s)) => Some(Origin {
            publisher: p.parse::<PublisherId>()?,
            sequence: s.parse().map_err(|_| bad("invalid sequence"))?,
        }),
        (None, None) => None,
        _ => return Err(bad("half an origin")),
    };
    let event = Event {
        subject,
        message: Message::new(headers, env.body),
        origin,
    };
    Ok((Some(event), dropped))
}

/// Aborts its task when dropped: the `guard` of a [`BufferedSubscription`]
/// whose transport is read by tasks.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A subscription reading an [`EventBuffer`]; closing it closes the buffer
/// and drops `guard` (whatever keeps the transport's reader alive, such as
/// the handle of its task).
pub struct BufferedSubscription<G: Send + 'static> {
    buffer: EventBuffer,
    guard: Option<G>,
}

impl<G: Send + 'static> BufferedSubscription<G> {
    /// A subscription over `buffer`, holding `guard` until closed.
    pub fn new(buffer: EventBuffer, guard: G) -> Self {
        BufferedSubscription {
            buffer,
            guard: Some(guard),
        }
    }
}

impl<G: Send + 'static> SubscriptionTransport for BufferedSubscription<G> {
    fn poll_event(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        self.buffer.poll(cx)
    }

    fn close(&mut self) {
        self.buffer.close();
        self.guard.take();
    }
}

impl<G: Send + 'static> Drop for BufferedSubscription<G> {
    fn drop(&mut self) {
        SubscriptionTransport::close(self);
    }
}

/// An event from publisher 1 with body `sequence`, for this crate's tests.
#[cfg(test)]
pub(crate) fn test_event(subject: &str, sequence: u64) -> Event {
    Event {
        subject: subject.to_owned(),
        message: Message::from(format!("{sequence}")),
        origin: Some(Origin {
            publisher: PublisherId(1),
            sequence,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_round_trip_through_envelopes() {
        let mut e = test_event("a.b", 3);
        e.message.headers.insert("x", "1");
        let (back, dropped) = decode_event(event_envelope(&e, 2)).unwrap();
        assert_eq!(back, Some(e));
        assert_eq!(dropped, 2);
        let (none, dropped) = decode_event(drop_notice(7)).unwrap();
        assert_eq!((none, dropped), (None, 7));
        // Neither a subject nor a drop count: not an event.
        let env = Envelope::new(EnvelopeKind::Data, RequestId::default());
        assert_eq!(decode_event(env).unwrap_err().kind(), ErrorKind::Decode);
    }
}
