//! The in-memory kv plane.
//!
//! # Model
//!
//! A hub holds buckets by name. Each bucket keeps, under one mutex, a
//! bucket-wide revision counter, the retained entries of every key (at most
//! `history` of them, markers included) and its watchers, so every
//! compare-and-swap is checked and applied atomically.
//!
//! * Delete and purge of a key that was never written (or is not live) still
//!   write a marker with a new revision, as NATS KV does; the marker is
//!   reported to watchers. Only a delete with `expect_revision` refuses
//!   (`RevisionMismatch`) when the key is not live at that revision.
//! * Markers stay retained like any other entry, so `history` and
//!   [`WatchFrom::Revision`] can report them.
//!
//! # Time to live
//!
//! A put's per-key `ttl` wins over the bucket's `max_age`; either makes the
//! value expire that long after its last write. On expiry the key stops being
//! live and an [`Op::Expire`] marker with a fresh revision is recorded and sent
//! to watchers. A timer task per bucket (spawned on demand, holding only a
//! `Weak` reference, ending when no deadline is pending or the bucket is gone)
//! makes expiry observable even if nobody touches the bucket; every operation
//! also applies due expiries first, so no reader ever sees a value past its
//! deadline because the timer has not run yet.
//!
//! # Watchers
//!
//! Each watcher has a bounded channel of [`WATCH_CAPACITY`] events. The
//! initial snapshot (or replay from a revision) is handed to the watcher
//! directly rather than through the channel, so a large bucket never blocks
//! the watch from starting. Writers never wait for a watcher: when a
//! watcher's channel is full it is marked *lagged* and skipped from then on.
//! Once its consumer has drained the channel, the watcher is resynchronised
//! with a fresh snapshot of the live keys matching its filter followed by
//! [`WatchEvent::CaughtUp`], and receives live changes again. Changes in
//! between (including deletions) are therefore never dropped silently: the
//! consumer sees the new state and a second caught-up marker, which tells it
//! to reconcile. Dropping a [`Watch`](plane_core::kv::Watch) unregisters the
//! watcher.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::MemConfig;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::kv::*;
use plane_core::subject::matches;

/// Events a watcher may have queued before it is marked lagged and
/// resynchronised.
pub const WATCH_CAPACITY: usize = 256;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a bucket half-written
    // (every mutation is completed before anything that may panic), so the
    // state is still consistent and usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The buckets of one hub.
#[derive(Default)]
pub(crate) struct KvHub {
    buckets: Mutex<HashMap<String, Arc<BucketShared>>>,
}

/// The in-memory kv backend.
pub struct MemKv {
    caps: KvCapabilities,
    hub: Arc<KvHub>,
}

impl MemKv {
    pub(crate) fn new(hub: Arc<KvHub>, config: &MemConfig) -> Self {
        // Everything the kv plane can do; only the value limit is configured.
        let mut caps = KvCapabilities::default();
        caps.history = true;
        caps.watch = true;
        caps.watch_from_revision = true;
        caps.bucket_ttl = true;
        caps.key_ttl = true;
        caps.expiry_events = true;
        caps.max_value = config.max_value;
        MemKv { caps, hub }
    }
}

impl KvBackend for MemKv {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn capabilities(&self) -> &KvCapabilities {
        &self.caps
    }

    async fn create_bucket(&self, config: BucketConfig) -> Result<Arc<dyn DynKvBucketBackend>> {
        let mut buckets = lock(&self.hub.buckets);
        let shared = buckets
            .entry(config.name.clone())
            .or_insert_with(|| Arc::new(BucketShared::new(config)))
            .clone();
        Ok(Arc::new(MemBucket { shared }))
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        let shared = lock(&self.hub.buckets)
            .get(name)
            .cloned()
            .ok_or_else(|| no_bucket(name))?;
        Ok(Arc::new(MemBucket { shared }))
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        let shared = lock(&self.hub.buckets)
            .remove(name)
            .ok_or_else(|| no_bucket(name))?;
        let mut st = lock(&shared.state);
        st.deleted = true;
        st.keys.clear();
        st.deadlines.clear();
        // Dropping the senders ends every watch once it has drained.
        st.watchers.clear();
        drop(st);
        shared.timer.notify_one();
        Ok(())
    }
}

fn no_bucket(name: &str) -> Error {
    crate::error::missing("kv bucket", name)
}

/// One key's retained entries.
#[derive(Default)]
struct KeyState {
    /// Oldest first; never longer than the bucket's `history`.
    entries: VecDeque<Entry>,
    /// When the live value expires; `None` when not live or without TTL.
    expires_at: Option<Instant>,
}

impl KeyState {
    fn live(&self) -> Option<&Entry> {
        self.entries.back().filter(|e| e.op == Op::Put)
    }
}

struct WatcherSlot {
    id: u64,
    filter: String,
    tx: mpsc::Sender<Result<WatchEvent>>,
    lagged: Arc<AtomicBool>,
}

struct State {
    deleted: bool,
    revision: u64,
    keys: HashMap<String, KeyState>,
    /// Pending expiries, earliest first; exactly one per key with `expires_at`.
    deadlines: BTreeSet<(Instant, String)>,
    watchers: Vec<WatcherSlot>,
    next_watcher: u64,
    /// Generation of the running timer task, if one runs.
    timer: Option<u64>,
    next_timer: u64,
}

struct BucketShared {
    config: BucketConfig,
    state: Mutex<State>,
    /// Wakes the timer task: a new deadline, a deleted bucket, or the bucket
    /// being dropped.
    timer: Arc<Notify>,
}

impl Drop for BucketShared {
    fn drop(&mut self) {
        // Lets a sleeping timer task notice that the bucket is gone.
        self.timer.notify_one();
    }
}

impl BucketShared {
    fn new(config: BucketConfig) -> Self {
        BucketShared {
            config,
            state: Mutex::new(State {
                deleted: false,
                revision: 0,
                keys: HashMap::new(),
                deadlines: BTreeSet::new(),
                watchers: Vec::new(),
                next_watcher: 0,
                timer: None,
                next_timer: 0,
            }),
            timer: Arc::new(Notify::new()),
        }
    }

    /// Lock the state with due expiries applied; `NotFound` once deleted.
    fn locked(&self) -> Result<MutexGuard<'_, State>> {
        let mut st = lock(&self.state);
        if st.deleted {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("bucket `{}` was deleted", self.config.name),
            ));
        }
        self.expire_due(&mut st, Instant::now());
        Ok(st)
    }

    fn expire_due(&self, st: &mut State, now: Instant) {
        while let Some((at, _)) = st.deadlines.first() {
            if *at > now {
                break;
            }
            let Some((_, key)) = st.deadlines.pop_first() else {
                break;
            };
            if let Some(ks) = st.keys.get_mut(&key) {
                ks.expires_at = None;
            }
            self.record(st, &key, Op::Expire, Bytes::new(), None, false);
        }
    }

    /// Append an entry to `key` with a fresh revision, keep the deadline index
    /// in step, and tell the watchers. Returns the revision.
    fn record(
        &self,
        st: &mut State,
        key: &str,
        op: Op,
        value: Bytes,
        expires_at: Option<Instant>,
        purge: bool,
    ) -> u64 {
        st.revision += 1;
        let entry = Entry {
            key: key.to_owned(),
            value,
            revision: st.revision,
            op,
            created: SystemTime::now(),
        };
        let history = usize::from(self.config.history.max(1));
        let ks = st.keys.entry(key.to_owned()).or_default();
        let old_deadline = ks.expires_at.take();
        if purge {
            ks.entries.clear();
        }
        ks.entries.push_back(entry.clone());
        while ks.entries.len() > history {
            ks.entries.pop_front();
        }
        ks.expires_at = expires_at;
        if let Some(at) = old_deadline {
            st.deadlines.remove(&(at, key.to_owned()));
        }
        if let Some(at) = expires_at {
            st.deadlines.insert((at, key.to_owned()));
        }
        notify_watchers(st, &entry);
        entry.revision
    }

    /// Make sure a timer task runs while deadlines are pending.
    fn ensure_timer(self: &Arc<Self>, st: &mut State) {
        if st.deadlines.is_empty() {
            return;
        }
        if st.timer.is_some() {
            // The running task re-reads the earliest deadline when woken.
            self.timer.notify_one();
            return;
        }
        let generation = st.next_timer;
        st.next_timer += 1;
        st.timer = Some(generation);
        tokio::spawn(expiry_timer(
            Arc::downgrade(self),
            self.timer.clone(),
            generation,
        ));
    }
}

/// Deliver `entry` to every matching watcher without ever waiting.
fn notify_watchers(st: &mut State, entry: &Entry) {
    st.watchers.retain(|w| {
        if !matches(&w.filter, &entry.key) || w.lagged.load(Ordering::Acquire) {
            return true;
        }
        match w.tx.try_send(Ok(WatchEvent::Entry(entry.clone()))) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Resynchronised by its consumer once drained; see module docs.
                w.lagged.store(true, Ordering::Release);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    });
}

/// Clears the bucket's timer slot if the task ends without doing so itself
/// (for example because its runtime shut down), so the next write with a
/// deadline starts a new one.
struct TimerGuard {
    bucket: Weak<BucketShared>,
    generation: u64,
}

impl Drop for TimerGuard {
    fn drop(&mut self) {
        if let Some(shared) = self.bucket.upgrade() {
            let mut st = lock(&shared.state);
            if st.timer == Some(self.generation) {
                st.timer = None;
            }
        }
    }
}

async fn expiry_timer(bucket: Weak<BucketShared>, wake: Arc<Notify>, generation: u64) {
    let _guard = TimerGuard {
        bucket: bucket.clone(),
        generation,
    };
    loop {
        let next = {
            let Some(shared) = bucket.upgrade() else {
                return;
            };
            let mut st = lock(&shared.state);
            if st.deleted {
                st.timer = None;
                return;
            }
            shared.expire_due(&mut st, Instant::now());
            match st.deadlines.first() {
                Some((at, _)) => *at,
                None => {
                    // Decided under the lock, so a concurrent write either
                    // saw this task running before or sees the slot free now.
                    st.timer = None;
                    return;
                }
            }
        };
        // Sleep without holding the bucket: it may be dropped meanwhile, and
        // its `Drop` wakes us to notice.
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = wake.notified() => {}
        }
    }
}

/// One open bucket.
struct MemBucket {
    shared: Arc<BucketShared>,
}

impl KvBucketBackend for MemBucket {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let st = self.shared.locked()?;
        Ok(st.keys.get(key).and_then(KeyState::live).cloned())
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<u64> {
        let shared = &self.shared;
        let mut st = shared.locked()?;
        let live = st
            .keys
            .get(key)
            .and_then(KeyState::live)
            .map(|e| e.revision);
        match (options.expect, live) {
            (Expect::Any, _) | (Expect::Absent, None) => {}
            (Expect::Absent, Some(rev)) => {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("key `{key}` exists at revision {rev}"),
                ))
            }
            (Expect::Revision(want), None) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("key `{key}` has no live value (expected revision {want})"),
                ))
            }
            (Expect::Revision(want), Some(rev)) if want != rev => {
                return Err(Error::new(
                    ErrorKind::RevisionMismatch,
                    format!("key `{key}` is at revision {rev}, expected {want}"),
                ))
            }
            (Expect::Revision(_), Some(_)) => {}
        }
        let expires_at = options
            .ttl
            .or(shared.config.max_age)
            .map(|ttl| Instant::now() + ttl);
        let revision = shared.record(&mut st, key, Op::Put, value, expires_at, false);
        shared.ensure_timer(&mut st);
        Ok(revision)
    }

    async fn delete(&self, key: &str, options: DeleteOptions) -> Result<u64> {
        let shared = &self.shared;
        let mut st = shared.locked()?;
        if let Some(want) = options.expect_revision {
            let live = st
                .keys
                .get(key)
                .and_then(KeyState::live)
                .map(|e| e.revision);
            if live != Some(want) {
                return Err(Error::new(
                    ErrorKind::RevisionMismatch,
                    match live {
                        Some(rev) => format!("key `{key}` is at revision {rev}, expected {want}"),
                        None => format!("key `{key}` has no live value (expected revision {want})"),
                    },
                ));
            }
        }
        let op = if options.purge { Op::Purge } else { Op::Delete };
        Ok(shared.record(&mut st, key, op, Bytes::new(), None, options.purge))
    }

    async fn keys(&self, filter: &str) -> Result<Vec<String>> {
        let st = self.shared.locked()?;
        let mut keys: Vec<String> = st
            .keys
            .iter()
            .filter(|(k, ks)| ks.live().is_some() && matches(filter, k))
            .map(|(k, _)| k.clone())
            .collect();
        keys.sort_unstable();
        Ok(keys)
    }

    async fn history(&self, key: &str) -> Result<Vec<Entry>> {
        let st = self.shared.locked()?;
        match st.keys.get(key) {
            Some(ks) if !ks.entries.is_empty() => Ok(ks.entries.iter().cloned().collect()),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                format!("key `{key}` has no history"),
            )),
        }
    }

    async fn watch(&self, options: WatchOptions) -> Result<Box<dyn WatchTransport>> {
        let mut st = self.shared.locked()?;
        let mut initial: Vec<Entry> = match options.from {
            WatchFrom::Snapshot => snapshot(&st, &options.filter),
            WatchFrom::New => Vec::new(),
            WatchFrom::Revision(from) => st
                .keys
                .iter()
                .filter(|(k, _)| matches(&options.filter, k))
                .flat_map(|(_, ks)| ks.entries.iter().filter(|e| e.revision >= from))
                .cloned()
                .collect(),
        };
        initial.sort_unstable_by_key(|e| e.revision);
        let mut pending: VecDeque<WatchEvent> =
            initial.into_iter().map(WatchEvent::Entry).collect();
        pending.push_back(WatchEvent::CaughtUp);

        let (tx, rx) = mpsc::channel(WATCH_CAPACITY);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = st.next_watcher;
        st.next_watcher += 1;
        // Registered under the same lock as the snapshot: no change can fall
        // between the two.
        st.watchers.push(WatcherSlot {
            id,
            filter: options.filter.clone(),
            tx,
            lagged: lagged.clone(),
        });
        Ok(Box::new(MemWatch {
            bucket: Arc::downgrade(&self.shared),
            id,
            filter: options.filter,
            pending,
            rx,
            lagged,
        }))
    }
}

/// The latest entry of every live key matching `filter`, by revision.
fn snapshot(st: &State, filter: &str) -> Vec<Entry> {
    let mut entries: Vec<Entry> = st
        .keys
        .iter()
        .filter(|(k, _)| matches(filter, k))
        .filter_map(|(_, ks)| ks.live().cloned())
        .collect();
    entries.sort_unstable_by_key(|e| e.revision);
    entries
}

struct MemWatch {
    bucket: Weak<BucketShared>,
    id: u64,
    filter: String,
    /// Snapshot events not yet delivered, handed over outside the channel.
    pending: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<Result<WatchEvent>>,
    lagged: Arc<AtomicBool>,
}

impl MemWatch {
    /// Refill `pending` with a fresh snapshot and clear the lagged mark, both
    /// under the bucket lock. The channel is empty here and writers skip a
    /// lagged watcher, so nothing older than the snapshot can follow it.
    fn resync(&mut self) -> bool {
        let Some(shared) = self.bucket.upgrade() else {
            return false;
        };
        let Ok(st) = shared.locked() else {
            return false;
        };
        tracing::debug!(
            bucket = %shared.config.name,
            filter = %self.filter,
            "kv watcher fell behind; resynchronising with a snapshot"
        );
        self.pending = snapshot(&st, &self.filter)
            .into_iter()
            .map(WatchEvent::Entry)
            .collect();
        self.pending.push_back(WatchEvent::CaughtUp);
        self.lagged.store(false, Ordering::Release);
        true
    }
}

impl WatchTransport for MemWatch {
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent>>> {
        if let Some(ev) = self.pending.pop_front() {
            return Poll::Ready(Some(Ok(ev)));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(ev) => Poll::Ready(ev),
            // `Pending` may only mean the task's cooperative budget ran out,
            // so make sure the channel really is drained before resyncing.
            Poll::Pending if self.lagged.load(Ordering::Acquire) => match self.rx.try_recv() {
                Ok(ev) => Poll::Ready(Some(ev)),
                Err(mpsc::error::TryRecvError::Disconnected) => Poll::Ready(None),
                Err(mpsc::error::TryRecvError::Empty) if self.resync() => {
                    Poll::Ready(self.pending.pop_front().map(Ok))
                }
                Err(mpsc::error::TryRecvError::Empty) => Poll::Ready(None),
            },
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for MemWatch {
    fn drop(&mut self) {
        if let Some(shared) = self.bucket.upgrade() {
            lock(&shared.state).watchers.retain(|w| w.id != self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::StreamExt;

    use super::*;
    use crate::Hub;
    use plane_core::kv::{Bucket, Kv};

    async fn bucket(config: BucketConfig) -> (Kv, Bucket) {
        let kv = Hub::new().kv(&MemConfig::default());
        let b = kv.create_bucket(config).await.expect("bucket");
        (kv, b)
    }

    async fn next(w: &mut Watch) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(5), w.next())
            .await
            .expect("watch event in time")
            .expect("watch open")
            .expect("watch event")
    }

    #[tokio::test]
    async fn cas_semantics() {
        let (_kv, b) = bucket(BucketConfig::new("b")).await;
        let r1 = b.create("k", "1").await.unwrap();
        assert_eq!(
            b.create("k", "x").await.unwrap_err().kind(),
            ErrorKind::AlreadyExists
        );
        assert_eq!(
            b.update("k", "x", r1 + 7).await.unwrap_err().kind(),
            ErrorKind::RevisionMismatch
        );
        assert_eq!(
            b.update("nope", "x", r1).await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        let r2 = b.update("k", "2", r1).await.unwrap();
        assert!(r2 > r1);
        assert_eq!(b.get("k").await.unwrap().unwrap().value, "2");
        assert_eq!(
            b.delete_if("k", r1).await.unwrap_err().kind(),
            ErrorKind::RevisionMismatch
        );
        b.delete_if("k", r2).await.unwrap();
        assert!(b.get("k").await.unwrap().is_none());
        b.create("k", "3").await.unwrap();
    }

    #[tokio::test]
    async fn history_and_purge() {
        let (_kv, b) = bucket(BucketConfig::new("b").history(3)).await;
        for v in ["1", "2", "3", "4"] {
            b.put("k", v).await.unwrap();
        }
        let h = b.history("k").await.unwrap();
        assert_eq!(h.len(), 3);
        assert_eq!(h[0].value, "2");
        b.purge("k").await.unwrap();
        let h = b.history("k").await.unwrap();
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].op, Op::Purge);
        assert_eq!(
            b.history("never").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // A delete of a never-written key writes a marker.
        b.delete("ghost").await.unwrap();
        assert_eq!(b.history("ghost").await.unwrap()[0].op, Op::Delete);
        assert!(b.keys(">").await.unwrap().is_empty());
    }

    // Paused time: deadlines are exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn expiry_is_reported_without_readers() {
        let (_kv, b) = bucket(BucketConfig::new("b")).await;
        let mut w = b
            .watch_with(WatchOptions::new(">").from(WatchFrom::New))
            .await
            .unwrap();
        assert_eq!(next(&mut w).await, WatchEvent::CaughtUp);
        b.put_opts(
            "k",
            "v",
            PutOptions::default().ttl(Duration::from_millis(50)),
        )
        .await
        .unwrap();
        let WatchEvent::Entry(put) = next(&mut w).await else {
            panic!("expected the put")
        };
        assert_eq!(put.op, Op::Put);
        let WatchEvent::Entry(exp) = next(&mut w).await else {
            panic!("expected the expiry")
        };
        assert_eq!((exp.op, exp.key.as_str()), (Op::Expire, "k"));
        assert!(exp.revision > put.revision);
        assert!(b.get("k").await.unwrap().is_none());
    }

    // Paused time: deadlines are exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn rewrite_moves_the_deadline() {
        let (_kv, b) = bucket(BucketConfig::new("b").max_age(Duration::from_millis(300))).await;
        b.put("k", "1").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        b.put("k", "2").await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(b.get("k").await.unwrap().unwrap().value, "2");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(b.get("k").await.unwrap().is_none());
    }

    #[tokio::test]
    async fn lagging_watcher_is_resynchronised() {
        let (_kv, b) = bucket(BucketConfig::new("b")).await;
        b.put("gone", "x").await.unwrap();
        let mut w = b.watch(">").await.unwrap();
        assert!(matches!(next(&mut w).await, WatchEvent::Entry(e) if e.key == "gone"));
        assert_eq!(next(&mut w).await, WatchEvent::CaughtUp);
        // Overflow the channel without reading.
        for i in 0..WATCH_CAPACITY + 10 {
            b.put(&format!("k{}", i % 20), i.to_string()).await.unwrap();
        }
        b.delete("gone").await.unwrap();
        // The queued events come first, then a snapshot and a second marker.
        let mut drained = 0;
        while let WatchEvent::Entry(_) = next(&mut w).await {
            drained += 1;
        }
        assert_eq!(drained, WATCH_CAPACITY + 20);
        assert_eq!(b.keys(">").await.unwrap().len(), 20);
        // Live again afterwards.
        b.put("after", "1").await.unwrap();
        assert!(matches!(next(&mut w).await, WatchEvent::Entry(e) if e.key == "after"));
    }

    #[tokio::test]
    async fn watch_from_revision_and_drop_unregisters() {
        let hub = Arc::new(KvHub::default());
        let kv = Kv::new(MemKv::new(hub.clone(), &MemConfig::default()));
        let b = kv
            .create_bucket(BucketConfig::new("b").history(5))
            .await
            .unwrap();
        let watchers = || {
            let shared = lock(&hub.buckets).get("b").cloned().expect("bucket");
            let n = lock(&shared.state).watchers.len();
            n
        };
        let r1 = b.put("a.x", "1").await.unwrap();
        b.put("b.x", "2").await.unwrap();
        b.delete("a.x").await.unwrap();
        let mut w = b
            .watch_with(WatchOptions::new("a.>").from(WatchFrom::Revision(r1)))
            .await
            .unwrap();
        assert!(matches!(next(&mut w).await, WatchEvent::Entry(e) if e.op == Op::Put));
        assert!(matches!(next(&mut w).await, WatchEvent::Entry(e) if e.op == Op::Delete));
        assert_eq!(next(&mut w).await, WatchEvent::CaughtUp);
        assert_eq!(watchers(), 1);
        drop(w);
        assert_eq!(watchers(), 0);
        let mut w = b.watch(">").await.unwrap();
        kv.delete_bucket("b").await.unwrap();
        assert_eq!(b.get("a.x").await.unwrap_err().kind(), ErrorKind::NotFound);
        assert_eq!(
            kv.open_bucket("b").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // The watch drains its snapshot, then ends.
        assert!(matches!(next(&mut w).await, WatchEvent::Entry(_)));
        assert_eq!(next(&mut w).await, WatchEvent::CaughtUp);
        assert!(w.next().await.is_none());
    }
}
