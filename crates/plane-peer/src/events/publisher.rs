//! The publisher's side of the brokerless events plane: the subscribers
//! connected to one process's listener, and what each event is offered to.
//!
//! A publisher never waits for subscribers: it offers each event to each
//! matching subscriber's queue of [`SUBSCRIBER_QUEUE`] envelopes, drained
//! into the subscriber's link by one task per subscriber. A full queue (the
//! subscriber or the network is slower than the publisher) drops the event
//! and counts it; the count travels with the next event that gets through,
//! in [`names::DROPPED`], or, when the queue drains with no event after the
//! drops (a burst that ended while the queue was full), in a
//! [`drop_notice`] of its own, so no drop goes unreported.
//!
//! Worker groups are chosen here ([`Groups`]): a group is (group name,
//! pattern); members take turns in the order they subscribed at this
//! publisher. A member whose queue is full is skipped for the next one;
//! only when every member is full is the event dropped, counted at the
//! member whose turn it was. A member whose link ended is forgotten.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use plane_core::error::Result;
use plane_core::events::groups::{Groups, Offered};
use plane_core::events::Event;
use plane_core::message::names;
use plane_core::subject;
use plane_core::wire::{Envelope, EnvelopeKind, RequestId};
use tokio::sync::mpsc;

use super::{drop_notice, event_envelope};

/// Envelopes queued per subscriber at a publisher before events are dropped.
pub const SUBSCRIBER_QUEUE: usize = 1024;
/// Envelopes handed to a subscriber's writer at once at most.
const WRITE_BATCH: usize = 64;

/// How a transport writes one subscriber's link.
pub trait EventWriter: Send + 'static {
    /// Write `envs` in order; one write where the transport can, so a
    /// publisher faster than the network pays the transport's per-write
    /// cost once per batch rather than once per event.
    fn write(&mut self, envs: &[Envelope]) -> impl Future<Output = Result<()>> + Send;
    /// End the link cleanly (after a refusal).
    fn finish(&mut self);
}

/// The subscribers connected to one process's listener. Cheap to clone.
#[derive(Clone, Default)]
pub struct Subscribers {
    inner: Arc<Mutex<SubscriberTable>>,
}

impl std::fmt::Debug for Subscribers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let table = self.lock();
        f.debug_struct("Subscribers")
            .field("subscribers", &table.slots.len())
            .field("group_members", &table.groups.members())
            .finish()
    }
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
    /// The subscription's request id, which every event to it carries, so
    /// that a transport multiplexing links by id routes it.
    subscription: RequestId,
    pattern: String,
    tx: mpsc::Sender<Envelope>,
    /// Events dropped for this subscriber and not yet reported, shared
    /// with its writer, which reports what is left once the queue drains.
    dropped: Arc<AtomicU64>,
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
            let dropped = self.dropped.swap(0, Ordering::AcqRel);
            let mut env = event_envelope(event, dropped);
            env.id = self.subscription;
            match self.tx.try_send(env) {
                Ok(()) => return Offered::Taken,
                Err(mpsc::error::TrySendError::Closed(_)) => return Offered::Gone,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped.fetch_add(dropped, Ordering::AcqRel);
                }
            }
        }
        if last_resort {
            self.dropped.fetch_add(1, Ordering::AcqRel);
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
    pub fn publish(&self, event: &Event) {
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

    /// Add subscription `subscription` (a member of `group` if given)
    /// whose events go to `tx`; returns its slot and its count of
    /// unreported drops.
    fn add(
        &self,
        subscription: RequestId,
        pattern: String,
        group: Option<&str>,
        tx: mpsc::Sender<Envelope>,
    ) -> (u64, Arc<AtomicU64>) {
        let mut table = self.lock();
        table.next += 1;
        let id = table.next;
        let dropped = Arc::new(AtomicU64::new(0));
        let slot = Slot {
            subscription,
            pattern,
            tx,
            dropped: dropped.clone(),
        };
        match group {
            Some(group) => {
                let pattern = slot.pattern.clone();
                table.groups.join(&pattern, group, id, slot);
            }
            None => drop(table.slots.insert(id, slot)),
        }
        (id, dropped)
    }

    /// Forget slot `id` (added with `pattern` and `group`).
    fn remove(&self, id: u64, pattern: &str, group: Option<&str>) {
        let mut table = self.lock();
        match group {
            Some(group) => drop(table.groups.leave(pattern, group, id)),
            None => drop(table.slots.remove(&id)),
        }
    }

    /// Serve one subscriber whose link opened with `first` (a request
    /// carrying [`names::SUBSCRIBE`]) until it unsubscribes or goes away,
    /// which `gone` tells (anything more from the subscriber, its end, a
    /// reset: the link's reading side).
    pub async fn serve(
        &self,
        first: Envelope,
        mut writer: impl EventWriter,
        gone: impl Future<Output = ()> + Send,
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
            if writer.write(&[Envelope::error(first.id, &e)]).await.is_ok() {
                writer.finish();
            }
            return;
        }
        let (tx, mut rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let (id, dropped) = self.add(first.id, pattern.clone(), group.as_deref(), tx);
        // In place from here on: confirm, so the subscriber can return.
        let welcome = Envelope::new(EnvelopeKind::Ack, first.id);
        if writer.write(&[welcome]).await.is_ok() {
            tokio::pin!(gone);
            let mut batch = Vec::with_capacity(WRITE_BATCH);
            loop {
                tokio::select! {
                    n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                        if n == 0 || writer.write(&batch).await.is_err() {
                            break;
                        }
                        batch.clear();
                        // Drops happen only while the queue is full, so
                        // once it is empty no event is left to carry them.
                        if rx.is_empty() {
                            let n = dropped.swap(0, Ordering::AcqRel);
                            if n > 0 {
                                let mut notice = drop_notice(n);
                                notice.id = first.id;
                                if writer.write(&[notice]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    () = &mut gone => break,
                }
            }
        }
        self.remove(id, &pattern, group.as_deref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{decode_event, test_event as event};

    #[tokio::test]
    async fn a_full_subscriber_queue_drops_and_the_next_event_says_how_many() {
        let subscribers = Subscribers::default();
        let (tx, mut rx) = mpsc::channel(1);
        let subscription = RequestId::new_v7();
        subscribers.add(subscription, "s.*".to_owned(), None, tx);
        for seq in 1..=3 {
            subscribers.publish(&event("s.a", seq));
        }
        // Not matching: neither queued nor counted as dropped.
        subscribers.publish(&event("other", 4));
        let env = rx.recv().await.unwrap();
        assert_eq!(env.id, subscription, "events carry the subscription's id");
        let (first, dropped) = decode_event(env).unwrap();
        assert_eq!((first.unwrap().origin.unwrap().sequence, dropped), (1, 0));
        subscribers.publish(&event("s.b", 5));
        let (next, dropped) = decode_event(rx.recv().await.unwrap()).unwrap();
        assert_eq!((next.unwrap().origin.unwrap().sequence, dropped), (5, 2));
    }

    #[tokio::test]
    async fn a_subscriber_that_went_away_is_forgotten() {
        let subscribers = Subscribers::default();
        let (tx, rx) = mpsc::channel(1);
        subscribers.add(RequestId::default(), ">".to_owned(), None, tx);
        drop(rx);
        subscribers.publish(&event("s.a", 1));
        assert!(subscribers.lock().slots.is_empty());
    }

    fn sequences(rx: &mut mpsc::Receiver<Envelope>) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| rx.try_recv().ok())
            .map(|env| {
                let (e, dropped) = decode_event(env).unwrap();
                (e.unwrap().origin.unwrap().sequence, dropped)
            })
            .collect()
    }

    #[tokio::test]
    async fn a_group_member_that_is_full_or_gone_is_passed_over() {
        let subscribers = Subscribers::default();
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(8);
        let (tx3, rx3) = mpsc::channel(8);
        subscribers.add(RequestId::default(), "s.*".to_owned(), Some("w"), tx1);
        subscribers.add(RequestId::default(), "s.*".to_owned(), Some("w"), tx2);
        subscribers.add(RequestId::default(), "s.*".to_owned(), Some("w"), tx3);
        // Another group (same name, other pattern) and a broadcast
        // subscriber get every event.
        let (other, mut other_rx) = mpsc::channel(8);
        subscribers.add(RequestId::default(), "s.a".to_owned(), Some("w"), other);
        let (all, mut all_rx) = mpsc::channel(8);
        subscribers.add(RequestId::default(), ">".to_owned(), None, all);
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
        subscribers.add(RequestId::default(), ">".to_owned(), Some("w"), tx1);
        subscribers.add(RequestId::default(), ">".to_owned(), Some("w"), tx2);
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

    /// Lets each write through only when the test allows it.
    struct Gated {
        out: Arc<Mutex<Vec<Envelope>>>,
        gate: Arc<tokio::sync::Semaphore>,
    }

    impl EventWriter for Gated {
        fn write(&mut self, envs: &[Envelope]) -> impl Future<Output = Result<()>> + Send {
            let (out, gate, envs) = (self.out.clone(), self.gate.clone(), envs.to_vec());
            async move {
                gate.acquire().await.expect("gate").forget();
                out.lock().unwrap().extend(envs);
                Ok(())
            }
        }

        fn finish(&mut self) {}
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn drops_at_the_end_of_a_burst_are_reported_in_a_notice() {
        let subscribers = Subscribers::default();
        let out = Arc::new(Mutex::new(Vec::new()));
        // One write allowed: the welcome. The link then stalls.
        let gate = Arc::new(tokio::sync::Semaphore::new(1));
        let writer = Gated {
            out: out.clone(),
            gate: gate.clone(),
        };
        let mut headers = plane_core::message::Headers::new();
        headers.insert(names::SUBSCRIBE, ">");
        let first = Envelope::new(EnvelopeKind::Request, RequestId::new_v7()).with_headers(headers);
        let serving = subscribers.clone();
        let server = tokio::spawn(async move {
            serving
                .serve(first, writer, std::future::pending::<()>())
                .await;
        });
        while out.lock().unwrap().is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // A burst past the queue: the last events find it full, and no
        // event comes after them to carry their count.
        let burst = (SUBSCRIBER_QUEUE + WRITE_BATCH + 500) as u64;
        for seq in 1..=burst {
            subscribers.publish(&event("s.a", seq));
        }
        gate.add_permits(10_000);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let (delivered, dropped, last_is_notice) = loop {
            let envs = out.lock().unwrap()[1..].to_vec();
            let (mut delivered, mut dropped) = (0u64, 0u64);
            let mut last_is_notice = false;
            for env in envs {
                let (e, d) = decode_event(env).unwrap();
                dropped += d;
                last_is_notice = e.is_none();
                delivered += u64::from(e.is_some());
            }
            if delivered + dropped == burst || std::time::Instant::now() > deadline {
                break (delivered, dropped, last_is_notice);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        };
        assert_eq!(
            delivered + dropped,
            burst,
            "{delivered} delivered, {dropped} reported dropped"
        );
        assert!(dropped >= 500, "{dropped}");
        assert!(last_is_notice, "the tail's drops came in a notice");
        server.abort();
    }
}
