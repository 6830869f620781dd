//! The shared layer of the brokerless events planes: how an [`Event`]
//! travels as a wire [`Envelope`], and the bounded buffer behind every
//! at-most-once subscription.
//!
//! # Envelope mapping (events plane)
//!
//! | what | kind | headers | body |
//! |---|---|---|---|
//! | event | `data` | the event's headers, plus [`names::SUBJECT`], [`names::PUBLISHER`], [`names::SEQUENCE`] and, when the sender dropped events for this subscriber just before, [`names::DROPPED`] | the event body |
//!
//! The request id is unused (zero). The mapping removes the `plane-` headers
//! it adds before the subscriber sees the event.
//!
//! # Buffer
//!
//! [`EventBuffer`] is what the in-memory backend does for its subscribers, for a
//! transport's reader task: the reader [`offer`](EventBuffer::offer)s what
//! arrives and never waits; when the subscription's capacity is reached the
//! event is dropped and counted, and the reader of the subscription later
//! sees one `Overloaded` item at the point of the gap.
//!
//! # Worker groups
//!
//! Without a broker, the choice of a group member is made by the publisher.
//! That choice is sound because every event originates at exactly one
//! publisher and every subscription — group member or not — subscribes at
//! every publisher listed in discovery: each publisher knows all members of
//! each group, and hands each event to exactly one of them.
//! [`plane_core::events::groups::Groups`] is that choice.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use plane_core::discovery::Registration;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::events::{Event, Origin, PublisherId, SubscriptionTransport};
use plane_core::message::names;
use plane_core::message::Message;
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

/// The event an envelope carries, and how many events were dropped before
/// it. The `plane-` headers of the mapping are removed.
///
/// # Errors
/// `Decode` for an envelope of another kind, without a subject, or with an
/// invalid origin or drop count.
pub fn decode_event(env: Envelope) -> Result<(Event, u64)> {
    let bad = |what: &str| Error::new(ErrorKind::Decode, format!("event envelope: {what}"));
    if env.kind != EnvelopeKind::Data {
        return Err(bad("not a data frame"));
    }
    let mut headers = env.headers;
    let subject = headers
        .remove(names::SUBJECT)
        .ok_or_else(|| bad("no subject"))?;
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
    let dropped = match headers.remove(names::DROPPED) {
        Some(n) => n.parse().map_err(|_| bad("invalid drop count"))?,
        None => 0,
    };
    let event = Event {
        subject,
        message: Message::new(headers, env.body),
        origin,
    };
    Ok((event, dropped))
}

fn overloaded(n: u64) -> Error {
    Error::new(ErrorKind::Overloaded, format!("{n} events dropped"))
}

/// A buffered item. A `Dropped` marker is only queued right before an
/// accepted event, so markers never outnumber events and the buffer stays
/// bounded by twice the capacity.
enum Item {
    Event(Event),
    Dropped(u64),
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Events in `items` (markers excluded); never more than the capacity.
    events: usize,
    /// Events dropped since the last marker was queued.
    dropped: u64,
    /// No more events will be offered (the transport ended).
    ended: bool,
    /// The subscriber closed: nothing more is yielded.
    closed: bool,
    waker: Option<Waker>,
}

/// The bounded buffer between a transport's reader and one at-most-once
/// subscription. Cheap to clone; clones share the buffer.
#[derive(Clone)]
pub struct EventBuffer {
    capacity: usize,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl EventBuffer {
    /// A buffer holding at most `capacity` events (at least one).
    pub fn new(capacity: usize) -> Self {
        EventBuffer {
            capacity: capacity.max(1),
            state: Arc::default(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Count `n` events lost elsewhere (by the sender, or the transport) at
    /// this point of the stream.
    pub fn dropped(&self, n: u64) {
        if n > 0 {
            self.lock().dropped += n;
        }
    }

    /// Buffer `event` if there is room, else drop and count it. Never waits.
    /// Returns whether it was buffered.
    pub fn offer(&self, event: Event) -> bool {
        let waker = {
            let mut s = self.lock();
            if s.closed || s.ended {
                return false;
            }
            if s.events >= self.capacity {
                s.dropped += 1;
                return false;
            }
            if s.dropped > 0 {
                let n = std::mem::take(&mut s.dropped);
                s.items.push_back(Item::Dropped(n));
            }
            s.items.push_back(Item::Event(event));
            s.events += 1;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// No more events will come: the subscription yields what is buffered,
    /// then ends.
    pub fn end(&self) {
        let waker = {
            let mut s = self.lock();
            s.ended = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the subscriber closed the subscription; the reader then stops.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The next item: an event, one `Overloaded` error per gap, or `None`
    /// once closed or ended and empty.
    pub fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<Result<Event>>> {
        let mut s = self.lock();
        if s.closed {
            return Poll::Ready(None);
        }
        match s.items.pop_front() {
            Some(Item::Event(e)) => {
                s.events -= 1;
                Poll::Ready(Some(Ok(e)))
            }
            Some(Item::Dropped(n)) => Poll::Ready(Some(Err(overloaded(n)))),
            // Drops after everything buffered: report them now that the
            // reader has caught up.
            None if s.dropped > 0 => {
                let n = std::mem::take(&mut s.dropped);
                Poll::Ready(Some(Err(overloaded(n))))
            }
            None if s.ended => Poll::Ready(None),
            None => {
                match &mut s.waker {
                    Some(w) => w.clone_from(cx.waker()),
                    slot => *slot = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
        }
    }

    /// Close and free the buffer. Idempotent.
    pub fn close(&self) {
        let waker = {
            let mut s = self.lock();
            s.closed = true;
            s.items.clear();
            s.events = 0;
            s.dropped = 0;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use plane_core::message::Headers;

    fn event(i: u64) -> Event {
        Event {
            subject: "a.b".into(),
            message: Message::new(Headers::new().with("x", "1"), format!("{i}")),
            origin: Some(Origin {
                publisher: PublisherId(7),
                sequence: i,
            }),
        }
    }

    #[test]
    fn events_round_trip_through_envelopes() {
        let e = event(3);
        let (back, dropped) = decode_event(event_envelope(&e, 2)).unwrap();
        assert_eq!(back, e);
        assert_eq!(dropped, 2);
        let env = Envelope::new(EnvelopeKind::Data, RequestId::default());
        assert_eq!(decode_event(env).unwrap_err().kind(), ErrorKind::Decode);
    }

    #[test]
    fn a_full_buffer_drops_and_reports_once_per_gap() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let b = EventBuffer::new(2);
        assert!(b.offer(event(1)));
        assert!(b.offer(event(2)));
        assert!(!b.offer(event(3)));
        assert!(!b.offer(event(4)));
        let mut got = Vec::new();
        while let Poll::Ready(Some(item)) = b.poll(&mut cx) {
            got.push(
                item.map(|e| e.origin.map(|o| o.sequence))
                    .map_err(|e| e.kind()),
            );
        }
        assert_eq!(
            got,
            vec![Ok(Some(1)), Ok(Some(2)), Err(ErrorKind::Overloaded)]
        );
        assert!(b.offer(event(5)));
        b.end();
        assert!(matches!(b.poll(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(b.poll(&mut cx), Poll::Ready(None)));
    }
}
