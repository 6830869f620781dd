//! The bounded buffer behind every at-most-once subscription, for the
//! backends that buffer for their subscribers themselves (the in-memory hub,
//! the brokerless transports' readers).
//!
//! The sender [`offer`](EventBuffer::offer)s what arrives and never waits;
//! when the subscription's capacity is reached the event is dropped and
//! counted, and the reader later sees one `Overloaded` item at the point of
//! the gap. Memory stays bounded by the capacity.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::error::{Error, ErrorKind, Result};
use crate::events::Event;

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

    /// Whether one more event fits; when it does not, the drop is counted
    /// if `count_drop`. A pending drop count becomes a marker in front of
    /// the event about to be queued.
    fn admit(&self, s: &mut State, count_drop: bool) -> bool {
        if s.closed || s.ended {
            return false;
        }
        if s.events >= self.capacity {
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
            if !self.admit(&mut s, true) {
                return false;
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

    /// Buffer a copy of `event` if there is room (nothing is cloned when
    /// there is none); when full, count the drop only if `count_drop` (a
    /// worker group counts it once, at the member whose turn it was). The
    /// reader's waker is pushed onto `wake` rather than woken here, so a
    /// caller holding a lock of its own wakes readers after releasing it.
    pub fn offer_deferred(&self, event: &Event, count_drop: bool, wake: &mut Vec<Waker>) -> bool {
        let mut s = self.lock();
        if !self.admit(&mut s, count_drop) {
            return false;
        }
        s.items.push_back(Item::Event(event.clone()));
        s.events += 1;
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
