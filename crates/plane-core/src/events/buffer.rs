//! The bounded buffer behind every at-most-once subscription, for the
//! backends that buffer for their subscribers themselves (the in-memory hub,
//! the brokerless transports' readers).
//!
//! The sender [`offer`](EventBuffer::offer)s what arrives and never waits;
//! when the subscription's bound is reached the event is dropped and
//! counted, and the reader later sees one `Overloaded` item at the point of
//! the gap.
//!
//! The bound is two limits, whichever is reached first: a number of events
//! ([`SubscribeOptions::capacity`]) and a number of bytes
//! ([`SubscribeOptions::max_bytes`]). An event is charged its
//! [`cost`]: [`Message::payload_len`](crate::message::Message::payload_len)
//! (body and headers) plus [`EVENT_OVERHEAD`]. A count alone does not bound
//! memory: 4096 events of 64 KiB are 256 MiB.
//!
//! An event whose cost alone exceeds the byte bound is buffered only when no
//! other event is, so that it is delivered to a reader that keeps up instead
//! of never; when other events are buffered it is dropped and reported like
//! any other drop. Memory therefore stays within the byte bound, or within
//! one event when a single event is larger than it (and a single event is
//! already bounded by the backend's payload limit).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, ErrorKind, Result};
use crate::events::{Event, SubscribeOptions};

/// Bytes charged for each buffered event on top of its payload: the `Event`
/// itself, its subject and header allocations and its slot in the queue,
/// rounded up. A fixed figure rather than a measurement, so accounting is
/// deterministic, and large enough that a flood of empty events is still
/// bounded by the byte limit ([`SubscribeOptions::DEFAULT_MAX_BYTES`] /
/// 256 = 262,144 empty events, above the default count bound).
pub const EVENT_OVERHEAD: usize = 256;

/// The bytes `event` is charged against a subscription's
/// [`max_bytes`](SubscribeOptions::max_bytes): its payload (body and
/// headers) plus [`EVENT_OVERHEAD`]. Backends that keep their own
/// per-subscription queue charge events the same way.
pub fn cost(event: &Event) -> usize {
    event.message.payload_len().saturating_add(EVENT_OVERHEAD)
}

fn overloaded(n: u64) -> Error {
    Error::new(ErrorKind::Overloaded, format!("{n} events dropped"))
}

/// A buffered item: an event with its [`cost`], or a gap. A `Dropped`
/// marker is only queued right before an accepted event, so markers never
/// outnumber events and the buffer stays bounded by twice the capacity.
enum Item {
    Event(Event, usize),
    Dropped(u64),
}

#[derive(Default)]
struct State {
    items: VecDeque<Item>,
    /// Events in `items` (markers excluded); never more than the capacity.
    events: usize,
    /// The summed [`cost`] of the events in `items`; never more than the
    /// byte bound, except for one event larger than the bound on its own.
    bytes: usize,
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
    max_bytes: usize,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer")
            .field("capacity", &self.capacity)
            .field("max_bytes", &self.max_bytes)
            .finish_non_exhaustive()
    }
}

impl EventBuffer {
    /// A buffer holding at most `capacity` events (at least one) and
    /// [`SubscribeOptions::DEFAULT_MAX_BYTES`] bytes.
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, SubscribeOptions::DEFAULT_MAX_BYTES)
    }

    /// A buffer holding at most `capacity` events and `max_bytes` bytes of
    /// [`cost`] (each at least one).
    pub fn bounded(capacity: usize, max_bytes: usize) -> Self {
        EventBuffer {
            capacity: capacity.max(1),
            max_bytes: max_bytes.max(1),
            state: Arc::default(),
        }
    }

    /// A buffer with the bounds `options` ask for (`capacity` and
    /// `max_bytes`).
    pub fn for_options(options: &SubscribeOptions) -> Self {
        Self::bounded(options.capacity, options.max_bytes)
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

    /// Whether one more event of `cost` bytes fits; when it does not, the
    /// drop is counted if `count_drop`. A pending drop count becomes a
    /// marker in front of the event about to be queued. An event larger
    /// than the byte bound fits only into a buffer holding no event.
    fn admit(&self, s: &mut State, cost: usize, count_drop: bool) -> bool {
        if s.closed || s.ended {
            return false;
        }
        let over_bytes = s.events > 0 && s.bytes.saturating_add(cost) > self.max_bytes;
        if s.events >= self.capacity || over_bytes {
            if count_drop {
                s.dropped += 1;
            }
            return false;
        }
        if s.dropped > 0 {
            let n = std::mem::take(&mut s.dropped);
            s.items.push_back(Item::Dropped(n));
        }
        true
    }

    /// Buffer `event` if there is room, else drop and count it. Never waits.
    /// Returns whether it was buffered.
    pub fn offer(&self, event: Event) -> bool {
        let waker = {
            let mut s = self.lock();
            let cost = cost(&event);
            if !self.admit(&mut s, cost, true) {
                return false;
            }
            s.items.push_back(Item::Event(event, cost));
            s.events += 1;
            s.bytes += cost;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// Buffer a copy of `event` if there is room (nothing is cloned when
    /// there is none); when full, count the drop only if `count_drop` (a
    /// worker group counts it once, at the member whose turn it was). The
    /// reader's waker is pushed onto `wake` rather than woken here, so a
    /// caller holding a lock of its own wakes readers after releasing it.
    pub fn offer_deferred(&self, event: &Event, count_drop: bool, wake: &mut Vec<Waker>) -> bool {
        let mut s = self.lock();
        let cost = cost(event);
        if !self.admit(&mut s, cost, count_drop) {
            return false;
        }
        s.items.push_back(Item::Event(event.clone(), cost));
        s.events += 1;
        s.bytes += cost;
        wake.extend(s.waker.take());
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
            Some(Item::Event(e, cost)) => {
                s.events -= 1;
                s.bytes -= cost;
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

    /// Close and free the buffer. Idempotent: returns whether it was open.
    pub fn close(&self) -> bool {
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return false;
            }
            s.closed = true;
            s.items.clear();
            s.events = 0;
            s.bytes = 0;
            s.dropped = 0;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Origin, PublisherId};
    use crate::message::{Headers, Message};

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

    /// An event of sequence `i` whose body is `len` bytes.
    fn sized(i: u64, len: usize) -> Event {
        Event {
            subject: "a.b".into(),
            message: Message::new(Headers::new(), vec![0u8; len]),
            origin: Some(Origin {
                publisher: PublisherId(7),
                sequence: i,
            }),
        }
    }

    /// (events, bytes) buffered.
    fn held(b: &EventBuffer) -> (usize, usize) {
        let s = b.lock();
        (s.events, s.bytes)
    }

    /// Everything ready: sequence numbers of events, dropped counts of gaps.
    fn drain(b: &EventBuffer) -> Vec<std::result::Result<u64, u64>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut got = Vec::new();
        while let Poll::Ready(Some(item)) = b.poll(&mut cx) {
            got.push(match item {
                Ok(e) => Ok(e.origin.map_or(0, |o| o.sequence)),
                Err(e) => {
                    assert_eq!(e.kind(), ErrorKind::Overloaded);
                    let n = e.message().split(' ').next().unwrap_or_default();
                    Err(n.parse().unwrap_or_else(|_| panic!("a count in {e}")))
                }
            });
        }
        got
    }

    #[test]
    fn cost_is_payload_plus_the_fixed_overhead() {
        assert_eq!(cost(&sized(1, 0)), EVENT_OVERHEAD);
        assert_eq!(cost(&sized(1, 1000)), 1000 + EVENT_OVERHEAD);
        let e = event(1);
        assert_eq!(cost(&e), e.message.payload_len() + EVENT_OVERHEAD);
        assert!(e.message.payload_len() > 1, "headers are counted too");
    }

    #[test]
    fn the_byte_bound_drops_and_reports_like_the_count_bound() {
        let one = cost(&sized(0, 1000));
        // Room for three events by bytes, a thousand by count.
        let b = EventBuffer::bounded(1000, 3 * one + one / 2);
        for i in 1..=3 {
            assert!(b.offer(sized(i, 1000)), "event {i} fits");
            assert_eq!(held(&b), (i as usize, i as usize * one));
        }
        assert!(!b.offer(sized(4, 1000)), "a fourth exceeds the bytes");
        assert!(!b.offer(sized(5, 1000)));
        assert_eq!(held(&b), (3, 3 * one), "drops change nothing held");
        // Bytes go down as events are taken, and room is made again.
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(b.poll(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert_eq!(held(&b), (2, 2 * one));
        assert!(
            !b.offer(sized(6, 2000)),
            "a larger event still does not fit"
        );
        assert!(b.offer(sized(7, 1000)));
        assert_eq!(held(&b), (3, 3 * one));
        assert_eq!(drain(&b), vec![Ok(2), Ok(3), Err(3), Ok(7)]);
        assert_eq!(held(&b), (0, 0));
    }

    #[test]
    fn the_count_bound_holds_whatever_the_bytes_allow() {
        let b = EventBuffer::bounded(2, usize::MAX);
        assert!(b.offer(sized(1, 0)));
        assert!(b.offer(sized(2, 0)));
        assert!(!b.offer(sized(3, 0)));
        assert_eq!(held(&b), (2, 2 * EVENT_OVERHEAD));
        assert_eq!(drain(&b), vec![Ok(1), Ok(2), Err(1)]);
    }

    #[test]
    fn an_event_larger_than_the_bound_is_delivered_alone_or_reported() {
        let b = EventBuffer::bounded(100, 4096);
        // Alone: delivered rather than never.
        assert!(b.offer(sized(1, 10_000)));
        assert_eq!(held(&b), (1, 10_000 + EVENT_OVERHEAD));
        assert!(!b.offer(sized(2, 10)), "nothing joins an oversized event");
        assert_eq!(drain(&b), vec![Ok(1), Err(1)]);
        // Behind another event: dropped and reported.
        assert!(b.offer(sized(3, 10)));
        let mut wake = Vec::new();
        assert!(!b.offer_deferred(&sized(4, 10_000), true, &mut wake));
        assert!(b.offer(sized(5, 10)));
        assert_eq!(drain(&b), vec![Ok(3), Err(1), Ok(5)]);
        assert_eq!(held(&b), (0, 0));
    }

    #[test]
    fn closing_frees_the_bytes() {
        let b = EventBuffer::bounded(10, 1 << 20);
        assert!(b.offer(sized(1, 500)));
        assert!(b.close());
        assert_eq!(held(&b), (0, 0));
        assert!(!b.offer(sized(2, 500)), "a closed buffer takes nothing");
    }

    #[test]
    fn new_and_for_options_use_the_options_bounds() {
        let b = EventBuffer::new(5);
        assert_eq!(
            (b.capacity, b.max_bytes),
            (5, SubscribeOptions::DEFAULT_MAX_BYTES)
        );
        let b = EventBuffer::for_options(&SubscribeOptions::new("a").capacity(3).max_bytes(99));
        assert_eq!((b.capacity, b.max_bytes), (3, 99));
    }

    #[test]
    fn deferred_offers_leave_waking_to_the_caller_and_count_drops_on_request() {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let b = EventBuffer::new(1);
        assert!(b.poll(&mut cx).is_pending(), "registers the reader's waker");
        let mut wake = Vec::new();
        assert!(b.offer_deferred(&event(1), false, &mut wake));
        assert_eq!(wake.len(), 1, "the reader's waker is handed back");
        assert!(!b.offer_deferred(&event(2), false, &mut wake), "full");
        assert!(
            !b.offer_deferred(&event(3), true, &mut wake),
            "full, counted"
        );
        assert!(matches!(b.poll(&mut cx), Poll::Ready(Some(Ok(_)))));
        let gap = match b.poll(&mut cx) {
            Poll::Ready(Some(Err(e))) => e,
            _ => panic!("one gap reported"),
        };
        assert_eq!(gap.kind(), ErrorKind::Overloaded);
        assert!(gap.message().starts_with("1 events"), "{gap}");
        assert!(b.close());
        assert!(!b.close(), "closing twice reports it was closed");
    }
}
