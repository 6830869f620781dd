//! In-memory queue plane.
//!
//! # Model
//!
//! A queue keeps one *copy* of every job per consumer: a single anonymous
//! consumer in work-queue mode, one per named consumer in broadcast mode. A
//! copy is either *ready* (deliverable from an instant on) or *in flight*
//! (held by one delivery until a deadline). Receiving takes the earliest ready
//! copy and stamps it with a fresh delivery token; acks, nacks and extensions
//! carry that token and only act while the copy is still held by it.
//!
//! Time is handled lazily: every operation first moves expired deliveries
//! back to ready (or to the dead-letter queue), exactly as an eager timer
//! would have, and a waiting `receive` sleeps until the earliest instant at
//! which something could become deliverable. The one effect that must happen
//! even when nobody touches the queue is dead-lettering into *another* queue
//! on expiry, so a queue with both `max_deliver` and `dead_letter` runs one
//! small reaper task that sleeps until the earliest deadline. It holds only a
//! `Weak` reference and a watch receiver, and ends when the queue is deleted
//! or dropped.
//!
//! # Decisions
//!
//! - **Stale settlements.** An ack, nack or extend whose delivery expired *and*
//!   was handed out again (or whose job was purged, dead-lettered or deleted
//!   meanwhile) changes nothing and fails with
//!   [`ErrorKind::AlreadyAcked`]: the job is no longer held by that delivery.
//!   A delivery that expired but was not yet handed out again is still its
//!   holder, so a late ack or extend succeeds.
//! - **Dead letters.** A copy that has been delivered `max_deliver` times and
//!   is nacked or expires again is removed; it is enqueued on the configured
//!   dead-letter queue with its headers plus [`names::DEAD_LETTER_QUEUE`] (the
//!   original queue's name) and [`names::DEAD_LETTER_DELIVERIES`] (the number
//!   of deliveries). Without a dead-letter queue, or if that queue does not
//!   exist (any more), the job is dropped and a warning is logged. In
//!   broadcast mode each consumer's copy is dead-lettered on its own.
//! - **Purge** removes every stored job, in flight or not, as NATS does; a
//!   later settlement of a purged delivery fails as stale.
//! - **Depth** counts jobs stored and not yet acknowledged by every consumer,
//!   including those in flight.
//! - A deleted queue fails every operation of handles and jobs still held,
//!   with `NotFound`, and wakes its waiting receivers.
//!
//! Stored jobs are bounded by process memory only, like the rest of `mem://`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::MemConfig;
use plane_core::ack::{AckHandle, Acker};
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::message::names;
use plane_core::message::Message;
use plane_core::queue::*;

/// All queues of one hub, by name.
#[derive(Default)]
pub(crate) struct QueueHub {
    queues: Mutex<HashMap<String, Arc<MemQueue>>>,
}

impl QueueHub {
    fn queues(&self) -> MutexGuard<'_, HashMap<String, Arc<MemQueue>>> {
        // Only single inserts and removes happen under this lock, so a poisoned
        // map is still consistent.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The in-memory queue backend. Declares every queue capability.
pub struct MemQueues {
    caps: QueueCapabilities,
    hub: Arc<QueueHub>,
}

impl MemQueues {
    pub(crate) fn new(hub: Arc<QueueHub>, config: &MemConfig) -> Self {
        let mut caps = QueueCapabilities::default();
        caps.broadcast = true;
        caps.nack_delay = true;
        caps.extend = true;
        caps.dead_letter = true;
        caps.purge = true;
        caps.depth = true;
        caps.max_payload = config.max_payload;
        MemQueues { caps, hub }
    }
}

impl QueuesBackend for MemQueues {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn capabilities(&self) -> &QueueCapabilities {
        &self.caps
    }

    async fn create_queue(&self, config: QueueConfig) -> Result<Arc<dyn DynQueueBackend>> {
        let mut queues = self.hub.queues();
        if let Some(queue) = queues.get(&config.name) {
            return Ok(Arc::new(QueueHandle(queue.clone())));
        }
        let needs_reaper = config.max_deliver.is_some() && config.dead_letter.is_some();
        let (reaper, wake) = if needs_reaper {
            let (tx, rx) = watch::channel(());
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let queue = Arc::new(MemQueue::new(config, Arc::downgrade(&self.hub), reaper));
        if let Some(wake) = wake {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(reap(Arc::downgrade(&queue), wake))),
                // Without a runtime to time it, expiry still happens lazily,
                // on the queue's next operation.
                Err(_) => tracing::warn!(
                    queue = %queue.config.name,
                    "no tokio runtime: expired jobs are dead-lettered on the queue's next operation"
                ),
            }
        }
        queues.insert(queue.config.name.clone(), queue.clone());
        Ok(Arc::new(QueueHandle(queue)))
    }

    async fn open_queue(&self, name: &str) -> Result<Arc<dyn DynQueueBackend>> {
        match self.hub.queues().get(name) {
            Some(queue) => Ok(Arc::new(QueueHandle(queue.clone()))),
            None => Err(no_queue(name)),
        }
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        let queue = self
            .hub
            .queues()
            .remove(name)
            .ok_or_else(|| no_queue(name))?;
        {
            let mut state = queue.state();
            state.deleted = true;
            for consumer in &mut state.consumers {
                *consumer = Consumer::new(consumer.name.clone());
            }
            state.pending.clear();
        }
        queue.notify.notify_waiters();
        queue.wake_reaper();
        Ok(())
    }
}

fn no_queue(name: &str) -> Error {
    crate::error::missing("queue", name)
}

fn deleted() -> Error {
    Error::new(ErrorKind::NotFound, "queue was deleted")
}

/// One queue.
struct MemQueue {
    config: QueueConfig,
    /// To find the dead-letter queue by name when a job is dead-lettered.
    hub: Weak<QueueHub>,
    state: Mutex<State>,
    /// Woken whenever a copy may have become deliverable earlier than waiting
    /// receivers planned for (enqueue, nack, delete).
    notify: Notify,
    /// Tells the reaper task (if any) that a deadline was set or the queue was
    /// deleted. Dropping it with the queue ends the task.
    reaper: Option<watch::Sender<()>>,
}

struct State {
    deleted: bool,
    next_id: u64,
    next_token: u64,
    /// One in work-queue mode (named `""`), one per name in broadcast mode.
    consumers: Vec<Consumer>,
    /// Job id → consumers whose copy is still stored; `depth` is its size.
    pending: HashMap<u64, usize>,
}

/// One consumer's copies.
struct Consumer {
    name: String,
    copies: HashMap<u64, Copy>,
    /// `(deliverable from, id)` of every ready copy.
    ready: BTreeSet<(Instant, u64)>,
    /// `(deadline, id)` of every copy in flight.
    in_flight: BTreeSet<(Instant, u64)>,
}

struct Copy {
    message: Message,
    /// Deliveries so far.
    deliveries: u32,
    /// Token of the latest delivery; only it may settle or extend the copy.
    token: u64,
    status: Status,
}

#[derive(Clone, Copy)]
enum Status {
    Ready(Instant),
    InFlight(Instant),
}

/// The outcome of one attempt to receive.
enum Take {
    /// A delivery, now in flight.
    Job(Job),
    /// Nothing deliverable; something may become deliverable at this instant
    /// (`None`: only an enqueue, nack or delete can change that).
    Wait(Option<Instant>),
}

/// A job leaving the queue for the dead-letter queue.
struct DeadLetter {
    message: Message,
    deliveries: u32,
}

impl Consumer {
    fn new(name: String) -> Self {
        Consumer {
            name,
            copies: HashMap::new(),
            ready: BTreeSet::new(),
            in_flight: BTreeSet::new(),
        }
    }

    /// Take `id` out of whichever index its status puts it in.
    fn unindex(&mut self, id: u64, status: Status) {
        match status {
            Status::Ready(at) => self.ready.remove(&(at, id)),
            Status::InFlight(deadline) => self.in_flight.remove(&(deadline, id)),
        };
    }

    fn set_status(&mut self, id: u64, status: Status) {
        let Some(copy) = self.copies.get_mut(&id) else {
            return;
        };
        let old = std::mem::replace(&mut copy.status, status);
        self.unindex(id, old);
        match status {
            Status::Ready(at) => self.ready.insert((at, id)),
            Status::InFlight(deadline) => self.in_flight.insert((deadline, id)),
        };
    }

    fn remove(&mut self, id: u64) -> Option<Copy> {
        let copy = self.copies.remove(&id)?;
        self.unindex(id, copy.status);
        Some(copy)
    }
}

impl State {
    /// Drop one consumer's copy of `id` and account for it in `pending`.
    fn remove_copy(&mut self, consumer: usize, id: u64) -> Option<Copy> {
        let copy = self.consumers[consumer].remove(id)?;
        if let Some(left) = self.pending.get_mut(&id) {
            *left -= 1;
            if *left == 0 {
                self.pending.remove(&id);
            }
        }
        Some(copy)
    }

    /// Hand a copy back: ready from `at`, or out to the dead letters when it
    /// has used up its deliveries.
    fn release(
        &mut self,
        config: &QueueConfig,
        consumer: usize,
        id: u64,
        at: Instant,
        dead: &mut Vec<DeadLetter>,
    ) {
        let Some(copy) = self.consumers[consumer].copies.get(&id) else {
            return;
        };
        if config.max_deliver.is_some_and(|max| copy.deliveries >= max) {
            if let Some(copy) = self.remove_copy(consumer, id) {
                dead.push(DeadLetter {
                    message: copy.message,
                    deliveries: copy.deliveries,
                });
            }
        } else {
            self.consumers[consumer].set_status(id, Status::Ready(at));
        }
    }

    /// Expire every delivery whose deadline passed, as a timer would have.
    fn expire(&mut self, config: &QueueConfig, now: Instant, dead: &mut Vec<DeadLetter>) {
        for c in 0..self.consumers.len() {
            while let Some(&(deadline, id)) = self.consumers[c].in_flight.first() {
                if deadline > now {
                    break;
                }
                // Ready from the deadline, not from now, so the lazy
                // expiry orders copies exactly as an eager one would.
                self.release(config, c, id, deadline, dead);
            }
        }
    }

    fn consumer_index(&self, mode: &QueueMode, consumer: Option<&str>) -> Result<usize> {
        match (mode, consumer) {
            (QueueMode::WorkQueue, None) => Ok(0),
            (QueueMode::WorkQueue, Some(_)) => Err(Error::new(
                ErrorKind::InvalidArgument,
                "a work queue has no named consumers; receive without a consumer name",
            )),
            (QueueMode::Broadcast { .. }, None) => Err(Error::new(
                ErrorKind::InvalidArgument,
                "a broadcast queue needs a consumer name to receive",
            )),
            (QueueMode::Broadcast { .. }, Some(name)) => self
                .consumers
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotFound,
                        format!("the queue does not broadcast to consumer `{name}`"),
                    )
                }),
        }
    }
}

impl MemQueue {
    fn new(config: QueueConfig, hub: Weak<QueueHub>, reaper: Option<watch::Sender<()>>) -> Self {
        let consumers = match &config.mode {
            QueueMode::WorkQueue => vec![Consumer::new(String::new())],
            QueueMode::Broadcast { consumers } => {
                // A name listed twice is still one consumer.
                let mut names: Vec<&String> = Vec::new();
                for name in consumers {
                    if !names.contains(&name) {
                        names.push(name);
                    }
                }
                names.into_iter().cloned().map(Consumer::new).collect()
            }
        };
        MemQueue {
            config,
            hub,
            state: Mutex::new(State {
                deleted: false,
                next_id: 1,
                next_token: 1,
                consumers,
                pending: HashMap::new(),
            }),
            notify: Notify::new(),
            reaper,
        }
    }

    fn wake_reaper(&self) {
        if let Some(reaper) = &self.reaper {
            reaper.send_replace(());
        }
    }

    /// The reaper's turn: expire what is due and return the next deadline, or
    /// `None` once the queue is deleted.
    fn reap(&self) -> Option<Option<Instant>> {
        let mut dead = Vec::new();
        let next = {
            let mut state = self.state();
            if state.deleted {
                return None;
            }
            state.expire(&self.config, Instant::now(), &mut dead);
            state
                .consumers
                .iter()
                .filter_map(|c| c.in_flight.first().map(|&(deadline, _)| deadline))
                .min()
        };
        self.dead_letter(dead);
        Some(next)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every mutation keeps the indexes consistent before it can panic
        // (there is no user code under this lock), so recover from poison.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Store `message` for every consumer; never blocks and never awaits.
    fn push(&self, message: Message) -> Result<u64> {
        let id = {
            let mut state = self.state();
            if state.deleted {
                return Err(deleted());
            }
            let id = state.next_id;
            state.next_id += 1;
            let now = Instant::now();
            let count = state.consumers.len();
            for consumer in &mut state.consumers {
                consumer.copies.insert(
                    id,
                    Copy {
                        message: message.clone(),
                        deliveries: 0,
                        token: 0,
                        status: Status::Ready(now),
                    },
                );
                consumer.ready.insert((now, id));
            }
            state.pending.insert(id, count);
            id
        };
        self.notify.notify_waiters();
        Ok(id)
    }

    /// Send dead letters on, outside this queue's lock (the dead-letter queue
    /// may be this very queue).
    fn dead_letter(&self, dead: Vec<DeadLetter>) {
        for DeadLetter {
            mut message,
            deliveries,
        } in dead
        {
            let target = self.config.dead_letter.as_deref();
            let queue = target.and_then(|name| self.hub.upgrade()?.queues().get(name).cloned());
            let Some(queue) = queue else {
                match target {
                    Some(name) => tracing::warn!(
                        queue = %self.config.name,
                        dead_letter = name,
                        deliveries,
                        "dead-letter queue does not exist; dropping job"
                    ),
                    None => tracing::debug!(
                        queue = %self.config.name,
                        deliveries,
                        "job used up its deliveries; dropping it (no dead-letter queue)"
                    ),
                }
                continue;
            };
            message
                .headers
                .insert(names::DEAD_LETTER_QUEUE, self.config.name.as_str());
            message
                .headers
                .insert(names::DEAD_LETTER_DELIVERIES, deliveries.to_string());
            if let Err(e) = queue.push(message) {
                tracing::warn!(
                    queue = %self.config.name,
                    error = %e,
                    "dead-letter queue went away; dropping job"
                );
            }
        }
    }

    /// One attempt to take a copy for `consumer`.
    fn try_take(
        self: &Arc<Self>,
        consumer: usize,
        now: Instant,
        dead: &mut Vec<DeadLetter>,
    ) -> Result<Take> {
        let mut state = self.state();
        if state.deleted {
            return Err(deleted());
        }
        state.expire(&self.config, now, dead);
        let token = state.next_token;
        let c = &mut state.consumers[consumer];
        let next = match c.ready.first() {
            Some(&(at, id)) if at <= now => id,
            first => {
                let ready_at = first.map(|&(at, _)| at);
                let expires_at = c.in_flight.first().map(|&(deadline, _)| deadline);
                let wake = match (ready_at, expires_at) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                return Ok(Take::Wait(wake));
            }
        };
        c.set_status(next, Status::InFlight(now + self.config.ack_wait));
        let Some(copy) = c.copies.get_mut(&next) else {
            // Unreachable while the indexes agree with `copies`; waiting for
            // the next event is the harmless answer if they ever did not.
            return Ok(Take::Wait(None));
        };
        copy.deliveries = copy.deliveries.saturating_add(1);
        copy.token = token;
        let (message, attempt) = (copy.message.clone(), copy.deliveries);
        state.next_token += 1;
        drop(state);
        self.wake_reaper();
        let acker = MemAcker {
            queue: self.clone(),
            consumer,
            id: next,
            token,
        };
        Ok(Take::Job(Job::new(
            next,
            message,
            attempt,
            AckHandle::new(Box::new(acker), true, true),
        )))
    }

    /// Run `f` on the copy held by delivery `token`, after expiring deadlines.
    fn settle(
        &self,
        consumer: usize,
        id: u64,
        token: u64,
        f: impl FnOnce(&mut State, &QueueConfig, Instant, &mut Vec<DeadLetter>),
    ) -> Result<()> {
        let mut dead = Vec::new();
        let result = {
            let mut state = self.state();
            if state.deleted {
                return Err(deleted());
            }
            let now = Instant::now();
            state.expire(&self.config, now, &mut dead);
            match state.consumers[consumer].copies.get(&id) {
                Some(copy) if copy.token == token => {
                    f(&mut state, &self.config, now, &mut dead);
                    Ok(())
                }
                Some(_) => Err(Error::new(
                    ErrorKind::AlreadyAcked,
                    "delivery expired and was handed out again",
                )),
                None => Err(Error::new(
                    ErrorKind::AlreadyAcked,
                    "job is no longer held by this delivery (expired and settled elsewhere, purged or dead-lettered)",
                )),
            }
        };
        self.dead_letter(dead);
        result
    }
}

/// What [`WorkQueue`] handles hold: the shared queue.
struct QueueHandle(Arc<MemQueue>);

impl QueueBackend for QueueHandle {
    async fn enqueue(&self, message: Message) -> Result<u64> {
        self.0.push(message)
    }

    async fn receive(&self, consumer: Option<&str>, wait: Duration) -> Result<Option<Job>> {
        let queue = &self.0;
        let consumer = {
            let state = queue.state();
            if state.deleted {
                return Err(deleted());
            }
            state.consumer_index(&queue.config.mode, consumer)?
        };
        let until = Instant::now() + wait;
        loop {
            // Registered before looking at the state, so a job stored between
            // the look and the sleep still wakes us.
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let now = Instant::now();
            let mut dead = Vec::new();
            // Taking a job and returning it happen with no await in between,
            // so dropping this future can never lose or hold a job.
            let taken = queue.try_take(consumer, now, &mut dead);
            queue.dead_letter(dead);
            let wake = match taken? {
                Take::Job(job) => return Ok(Some(job)),
                Take::Wait(wake) => wake,
            };
            if now >= until {
                return Ok(None);
            }
            let wake = wake.map_or(until, |w| w.min(until));
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    async fn purge(&self) -> Result<u64> {
        let mut state = self.0.state();
        if state.deleted {
            return Err(deleted());
        }
        let purged = state.pending.len() as u64;
        state.pending.clear();
        for consumer in &mut state.consumers {
            *consumer = Consumer::new(std::mem::take(&mut consumer.name));
        }
        Ok(purged)
    }

    async fn depth(&self) -> Result<u64> {
        let mut dead = Vec::new();
        let depth = {
            let mut state = self.0.state();
            if state.deleted {
                return Err(deleted());
            }
            state.expire(&self.0.config, Instant::now(), &mut dead);
            state.pending.len() as u64
        };
        self.0.dead_letter(dead);
        Ok(depth)
    }
}

/// Expires deliveries of a queue with a dead-letter queue on time, so a job
/// reaches the dead-letter queue even if nobody touches its own queue again.
async fn reap(queue: Weak<MemQueue>, mut wake: watch::Receiver<()>) {
    let mut next: Option<Instant> = None;
    loop {
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = sleep => {}
        }
        // Upgraded only for this turn, so the task never keeps the queue alive.
        let Some(queue) = queue.upgrade() else {
            return;
        };
        match queue.reap() {
            Some(deadline) => next = deadline,
            None => return,
        }
    }
}

/// Settles one delivery of one consumer's copy.
struct MemAcker {
    queue: Arc<MemQueue>,
    consumer: usize,
    id: u64,
    token: u64,
}

impl Acker for MemAcker {
    fn ack(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.queue
                .settle(self.consumer, self.id, self.token, |state, _, _, _| {
                    state.remove_copy(self.consumer, self.id);
                })
        })
    }

    fn nack(&self, delay: Option<Duration>) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.queue.settle(
                self.consumer,
                self.id,
                self.token,
                |state, config, now, dead| {
                    let at = now + delay.unwrap_or_default();
                    state.release(config, self.consumer, self.id, at, dead);
                },
            )?;
            self.queue.notify.notify_waiters();
            Ok(())
        })
    }

    fn extend(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.queue.settle(
                self.consumer,
                self.id,
                self.token,
                |state, config, now, _| {
                    // Also revives a delivery that expired but was not handed
                    // out again: its holder is still the only one working on it.
                    state.consumers[self.consumer]
                        .set_status(self.id, Status::InFlight(now + config.ack_wait));
                },
            )?;
            self.queue.wake_reaper();
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hub;
    use plane_core::message::Headers;
    use plane_core::queue::Queues;

    const ACK_WAIT: Duration = Duration::from_secs(10);

    fn queues() -> Queues {
        Hub::new().queues(&MemConfig::default())
    }

    async fn work_queue(q: &Queues, name: &str) -> WorkQueue {
        q.create_queue(QueueConfig::new(name).ack_wait(ACK_WAIT))
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn roundtrip_ack_and_depth() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        let id = wq
            .enqueue(Message::new(Headers::new().with("k", "v"), "body"))
            .await
            .unwrap();
        assert_eq!(wq.depth().await.unwrap(), 1);
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!((job.id, job.attempt), (id, 1));
        assert_eq!(job.headers().get("k"), Some("v"));
        assert_eq!(job.body().to_bytes(), "body");
        // In flight still counts.
        assert_eq!(wq.depth().await.unwrap(), 1);
        job.ack().await.unwrap();
        assert_eq!(wq.depth().await.unwrap(), 0);
        tokio::time::advance(ACK_WAIT * 2).await;
        assert!(wq.receive(Duration::ZERO).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn expired_delivery_is_redelivered_and_stale_ack_refused() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        wq.enqueue("x").await.unwrap();
        let first = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert!(wq.receive(Duration::ZERO).await.unwrap().is_none());
        // Waiting receivers wake at the deadline without any other event.
        let second = wq.receive(ACK_WAIT * 2).await.unwrap().unwrap();
        assert_eq!((second.id, second.attempt), (first.id, 2));
        let stale = first.ack().await.unwrap_err();
        assert_eq!(stale.kind(), ErrorKind::AlreadyAcked);
        assert_eq!(wq.depth().await.unwrap(), 1);
        second.ack().await.unwrap();
        assert_eq!(wq.depth().await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn late_ack_before_redelivery_succeeds_and_extend_keeps_job() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        wq.enqueue("x").await.unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        tokio::time::advance(ACK_WAIT / 2).await;
        job.extend().await.unwrap();
        tokio::time::advance(ACK_WAIT * 3 / 4).await;
        assert!(wq.receive(Duration::ZERO).await.unwrap().is_none());
        tokio::time::advance(ACK_WAIT).await;
        // Expired, but nobody took it since: the holder may still ack.
        job.ack().await.unwrap();
        assert!(wq.receive(Duration::ZERO).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn nack_now_and_with_delay() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        wq.enqueue("x").await.unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        job.nack(None).await.unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(job.attempt, 2);
        let start = Instant::now();
        job.nack(Some(Duration::from_secs(3))).await.unwrap();
        assert!(wq.receive(Duration::from_secs(2)).await.unwrap().is_none());
        let job = wq.receive(Duration::from_secs(5)).await.unwrap().unwrap();
        assert!(start.elapsed() >= Duration::from_secs(3));
        assert_eq!(job.attempt, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn receive_wakes_on_enqueue_and_dropped_receive_holds_nothing() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        // A receive abandoned while waiting must leave no trace.
        let abandoned = tokio::time::timeout(Duration::from_secs(1), wq.receive(ACK_WAIT)).await;
        assert!(abandoned.is_err());
        let waiter = tokio::spawn({
            let wq = wq.clone();
            async move { wq.receive(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        let start = Instant::now();
        wq.enqueue("x").await.unwrap();
        let job = waiter.await.unwrap().unwrap().unwrap();
        assert!(start.elapsed() < Duration::from_secs(1));
        job.ack().await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn max_deliver_moves_job_to_dead_letter_queue() {
        let q = queues();
        let dlq = work_queue(&q, "dlq").await;
        let wq = q
            .create_queue(
                QueueConfig::new("w")
                    .ack_wait(ACK_WAIT)
                    .max_deliver(2)
                    .dead_letter("dlq"),
            )
            .await
            .unwrap();
        wq.enqueue(Message::new(Headers::new().with("k", "v"), "x"))
            .await
            .unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        job.nack(None).await.unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(job.attempt, 2);
        // The second delivery times out: that is the last one.
        tokio::time::advance(ACK_WAIT * 2).await;
        assert_eq!(wq.depth().await.unwrap(), 0);
        assert_eq!(job.ack().await.unwrap_err().kind(), ErrorKind::AlreadyAcked);
        let dead = dlq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(dead.headers().get("k"), Some("v"));
        assert_eq!(dead.headers().get(names::DEAD_LETTER_QUEUE), Some("w"));
        assert_eq!(dead.headers().get(names::DEAD_LETTER_DELIVERIES), Some("2"));
        assert_eq!(dead.body().to_bytes(), "x");
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_dead_letters_without_touching_the_queue() {
        let q = queues();
        let dlq = work_queue(&q, "dlq").await;
        let wq = q
            .create_queue(
                QueueConfig::new("w")
                    .ack_wait(ACK_WAIT)
                    .max_deliver(1)
                    .dead_letter("dlq"),
            )
            .await
            .unwrap();
        wq.enqueue("x").await.unwrap();
        let _held = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        let start = Instant::now();
        let dead = dlq.receive(ACK_WAIT * 2).await.unwrap().unwrap();
        assert!(start.elapsed() >= ACK_WAIT);
        assert_eq!(dead.headers().get(names::DEAD_LETTER_DELIVERIES), Some("1"));
    }

    #[tokio::test(start_paused = true)]
    async fn max_deliver_without_dead_letter_queue_drops() {
        let q = queues();
        let wq = q
            .create_queue(QueueConfig::new("w").ack_wait(ACK_WAIT).max_deliver(1))
            .await
            .unwrap();
        wq.enqueue("x").await.unwrap();
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        job.nack(None).await.unwrap();
        assert_eq!(wq.depth().await.unwrap(), 0);
        assert!(wq.receive(Duration::ZERO).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn broadcast_gives_each_consumer_a_copy() {
        let q = queues();
        let wq = q
            .create_queue(
                QueueConfig::new("b")
                    .ack_wait(ACK_WAIT)
                    .broadcast(["a", "b"]),
            )
            .await
            .unwrap();
        assert_eq!(
            wq.receive(Duration::ZERO).await.unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            wq.receive_as("c", Duration::ZERO).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        wq.enqueue("x").await.unwrap();
        let a = wq.receive_as("a", Duration::ZERO).await.unwrap().unwrap();
        assert!(wq.receive_as("a", Duration::ZERO).await.unwrap().is_none());
        a.ack().await.unwrap();
        // Not yet acknowledged by `b`.
        assert_eq!(wq.depth().await.unwrap(), 1);
        let b = wq.receive_as("b", Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(b.id, a.id);
        b.ack().await.unwrap();
        assert_eq!(wq.depth().await.unwrap(), 0);

        let plain = work_queue(&q, "p").await;
        assert_eq!(
            plain
                .receive_as("a", Duration::ZERO)
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::InvalidArgument
        );
    }

    #[tokio::test(start_paused = true)]
    async fn purge_removes_in_flight_too_and_delete_fails_handles() {
        let q = queues();
        let wq = work_queue(&q, "w").await;
        for _ in 0..3 {
            wq.enqueue("x").await.unwrap();
        }
        let job = wq.receive(Duration::ZERO).await.unwrap().unwrap();
        assert_eq!(wq.purge().await.unwrap(), 3);
        assert_eq!(wq.depth().await.unwrap(), 0);
        assert_eq!(job.ack().await.unwrap_err().kind(), ErrorKind::AlreadyAcked);

        let waiter = tokio::spawn({
            let wq = wq.clone();
            async move { wq.receive(Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        q.delete_queue("w").await.unwrap();
        let err = waiter.await.unwrap().unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert_eq!(
            wq.enqueue("x").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            q.open_queue("w").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
