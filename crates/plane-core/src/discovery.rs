//! Discovery: find the instances that serve an endpoint, on any kv backend.
//!
//! # Design
//!
//! Discovery is built only from the [`kv::Bucket`](crate::kv::Bucket) API
//! and the backend's declared [`KvCapabilities`](crate::kv::KvCapabilities), so it runs unchanged on the
//! in-memory backend, NATS KV, or a kv on a shared directory.
//!
//! * **Records.** Each instance is one JSON-encoded [`Instance`] stored under
//!   the key `{endpoint}.{id}` (the id in 16 lower-case hex digits) in one
//!   bucket, [`DiscoveryConfig::bucket`].
//! * **Leases.** A record lives for [`DiscoveryConfig::lease`] after its last
//!   write. When the backend declares `bucket_ttl`, the bucket is created
//!   with `max_age = lease`; otherwise, when it declares `key_ttl`, every write
//!   carries `ttl = lease`; a backend with neither is refused with
//!   `Unsupported`. Every process sharing a bucket must use the same lease: a
//!   bucket that already exists is opened as it is.
//! * **Renewal.** [`Discovery::register`] writes the record and spawns a task
//!   that rewrites it every `lease / 3` with a compare-and-swap on the
//!   revision it last wrote. If the record vanished (the lease ran out during
//!   a network blip, an operator deleted it) or was changed by someone else,
//!   the task registers again with an unconditional write rather than failing,
//!   counts it in [`Registration::reregistrations`] and logs a warning.
//!   Transient errors are retried with a short, bounded backoff. The task
//!   ends on [`Registration::deregister`] (which also deletes the record) or
//!   when the [`Registration`] is dropped (the record then expires with its
//!   lease).
//! * **Watching.** [`Discovery::watch`] yields [`DiscoveryEvent::Added`] for
//!   every current instance, then changes. With the `watch` capability it
//!   follows a kv watch: a put is `Added` (only when the instance is new or its
//!   record changed), a delete, purge or expiry is `Removed`. Whenever the kv
//!   watch reports [`WatchEvent::CaughtUp`] after a (re)synchronisation,
//!   instances missing from the new snapshot are reported `Removed`. On top of
//!   that, every [`DiscoveryConfig::resync`] the watch re-lists the endpoint
//!   and reports the differences: that catches expiries on backends that do
//!   not report them and anything a broken watch missed, so no peer stays
//!   silenced (or phantom) for longer than one resync period. A kv watch that
//!   ends or fails is re-established with bounded backoff; the discovery watch
//!   itself never ends on its own. Without the `watch` capability, discovery
//!   watches by re-listing every resync period only.
//!
//! ```
//! use std::time::Duration;
//!
//! use futures_util::StreamExt;
//! use plane_core::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, Instance};
//! use plane_core::request::InstanceId;
//! use plane_core::Registry;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! let kv = plane_mem::registry().kv("mem://discovery-doc").await?;
//! let discovery = Discovery::open(&kv, DiscoveryConfig::default().lease(Duration::from_secs(5))).await?;
//!
//! let me = Instance::new("billing", InstanceId::random(), "10.0.0.7:4222").with_metadata("zone", "eu-1");
//! let registration = discovery.register(me.clone()).await?;
//! assert_eq!(discovery.list("billing").await?, vec![me.clone()]);
//!
//! let mut watch = discovery.watch("billing").await?;
//! assert_eq!(watch.next().await, Some(DiscoveryEvent::Added(me.clone())));
//!
//! registration.deregister().await?;
//! assert_eq!(watch.next().await, Some(DiscoveryEvent::Removed(me.id)));
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind, Result};
use crate::ids::InstanceId;
use crate::kv::{Bucket, BucketConfig, Entry, Expect, Kv, Op, PutOptions, Watch, WatchEvent};
use crate::subject::validate_endpoint;

/// Shortest wait before retrying a failed kv operation in a background task.
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait before retrying a failed kv operation in a background task.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Discovery events a watch buffers for a slow consumer. When it is full the
/// watch task waits, its kv watch lags and is resynchronised, so nothing is
/// lost and memory stays bounded.
const WATCH_BUFFER: usize = 64;

/// Configuration of [`Discovery`].
///
/// ```
/// use std::time::Duration;
/// use plane_core::discovery::DiscoveryConfig;
///
/// let config = DiscoveryConfig::default()
///     .bucket("my_discovery")
///     .lease(Duration::from_secs(6))
///     .resync(Duration::from_secs(20));
/// assert_eq!(config.lease, Duration::from_secs(6));
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryConfig {
    /// The kv bucket holding the records. Default `plane_discovery`.
    pub bucket: String,
    /// How long a record outlives its last renewal. Default 10 s.
    pub lease: Duration,
    /// How often a watch re-lists to catch what its kv watch missed. Default 30 s.
    pub resync: Duration,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            bucket: "plane_discovery".to_owned(),
            lease: Duration::from_secs(10),
            resync: Duration::from_secs(30),
        }
    }
}

impl DiscoveryConfig {
    /// Set [`bucket`](DiscoveryConfig::bucket).
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = bucket.into();
        self
    }

    /// Set [`lease`](DiscoveryConfig::lease).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Set [`resync`](DiscoveryConfig::resync).
    pub fn resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }
}

/// One instance serving an endpoint, as registered.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// The endpoint served (see [`validate_endpoint`]).
    pub endpoint: String,
    /// The instance's id, unique per endpoint.
    #[serde(with = "instance_id_hex")]
    pub id: InstanceId,
    /// How to reach it, in the transport's own notation.
    pub address: String,
    /// Free-form labels (zone, version, weight ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance of `endpoint` reachable at `address`, without metadata.
    pub fn new(endpoint: impl Into<String>, id: InstanceId, address: impl Into<String>) -> Self {
        Instance {
            endpoint: endpoint.into(),
            id,
            address: address.into(),
            metadata: BTreeMap::new(),
        }
    }

    /// Add one metadata label.
    pub fn with_metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The kv key of this instance's record: `{endpoint}.{id}`.
    pub fn key(&self) -> String {
        record_key(&self.endpoint, self.id)
    }
}

fn record_key(endpoint: &str, id: InstanceId) -> String {
    format!("{endpoint}.{id}")
}

mod instance_id_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::ids::InstanceId;

    pub fn serialize<S: Serializer>(id: &InstanceId, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<InstanceId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A change in an endpoint's set of instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// An instance appeared, or its record changed (the new record).
    Added(Instance),
    /// An instance went away (deregistered, deleted or its lease expired).
    Removed(InstanceId),
}

/// How records get their lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeaseMode {
    /// The bucket's `max_age` is the lease.
    Bucket,
    /// Every write carries `ttl = lease`.
    Key,
}

/// Registers instances and watches endpoints over one kv bucket. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Discovery {
    bucket: Bucket,
    config: DiscoveryConfig,
    mode: LeaseMode,
}

impl Discovery {
    /// Create (or open) the discovery bucket on `kv`.
    ///
    /// # Errors
    /// `InvalidConfig` for a zero lease or resync period, `InvalidArgument`
    /// for a bad bucket name, `Unsupported` when the backend declares neither
    /// `bucket_ttl` nor `key_ttl`, or whatever creating the bucket fails with.
    pub async fn open(kv: &Kv, config: DiscoveryConfig) -> Result<Discovery> {
        let op = "discovery.open";
        if config.lease.is_zero() || config.resync.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "discovery lease and resync must be positive",
            )
            .with_op(op));
        }
        let caps = kv.capabilities();
        let (mode, bucket_config) = if caps.bucket_ttl {
            (
                LeaseMode::Bucket,
                BucketConfig::new(config.bucket.clone()).max_age(config.lease),
            )
        } else if caps.key_ttl {
            (LeaseMode::Key, BucketConfig::new(config.bucket.clone()))
        } else {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "discovery needs a kv backend declaring `bucket_ttl` or `key_ttl` for leases",
            )
            .with_op(op)
            .with_backend(kv.backend_name()));
        };
        let bucket = kv.create_bucket(bucket_config).await?;
        Ok(Discovery {
            bucket,
            config,
            mode,
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// The bucket holding the records.
    pub fn bucket(&self) -> &Bucket {
        &self.bucket
    }

    fn write_options(&self) -> PutOptions {
        match self.mode {
            LeaseMode::Bucket => PutOptions::default(),
            LeaseMode::Key => PutOptions::default().ttl(self.config.lease),
        }
    }

    /// Register `instance` and keep its lease renewed until the returned
    /// [`Registration`] is deregistered or dropped.
    ///
    /// An existing record with the same endpoint and id is replaced.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad endpoint name, or whatever the first write
    /// fails with (later renewal failures are retried in the background).
    pub async fn register(&self, instance: Instance) -> Result<Registration> {
        let op = "discovery.register";
        validate_endpoint(&instance.endpoint).map_err(|e| e.with_op(op))?;
        let value = serde_json::to_vec(&instance).map_err(|e| {
            Error::new(ErrorKind::Other, "cannot encode instance record")
                .with_source(e)
                .with_op(op)
        })?;
        let key = instance.key();
        let revision = self
            .bucket
            .put_opts(&key, value.clone(), self.write_options())
            .await?;
        let reregistrations = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = oneshot::channel();
        let renewer = Renewer {
            bucket: self.bucket.clone(),
            key,
            value: value.into(),
            options: self.write_options(),
            period: (self.config.lease / 3).max(Duration::from_millis(1)),
            revision,
            reregistrations: reregistrations.clone(),
        };
        let task = tokio::spawn(renewer.run(stopped));
        Ok(Registration {
            instance,
            bucket: self.bucket.clone(),
            stop: Some(stop),
            task: Some(task),
            reregistrations,
        })
    }

    /// The instances currently registered for `endpoint`, by id.
    ///
    /// Records that cannot be decoded are skipped (and logged).
    pub async fn list(&self, endpoint: &str) -> Result<Vec<Instance>> {
        validate_endpoint(endpoint).map_err(|e| e.with_op("discovery.list"))?;
        Ok(list(&self.bucket, endpoint).await?.into_values().collect())
    }

    /// Watch `endpoint`: first `Added` for every current instance, then
    /// changes. See the [module documentation](self) for how changes are
    /// found and how the watch survives failures.
    ///
    /// # Errors
    /// `InvalidArgument` for a bad endpoint name, or whatever opening the
    /// first kv watch (or, without the `watch` capability, the first listing)
    /// fails with.
    pub async fn watch(&self, endpoint: &str) -> Result<DiscoveryWatch> {
        validate_endpoint(endpoint).map_err(|e| e.with_op("discovery.watch"))?;
        let (kv_watch, initial) = if self.bucket.capabilities().watch {
            (Some(self.bucket.watch(&filter(endpoint)).await?), None)
        } else {
            (None, Some(list(&self.bucket, endpoint).await?))
        };
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let watcher = Watcher {
            bucket: self.bucket.clone(),
            endpoint: endpoint.to_owned(),
            resync: self.config.resync,
            tx,
            known: BTreeMap::new(),
            kv_watch,
            snapshot: Some(BTreeSet::new()),
        };
        let task = tokio::spawn(watcher.run(initial));
        Ok(DiscoveryWatch { rx, task })
    }
}

fn filter(endpoint: &str) -> String {
    format!("{endpoint}.*")
}

/// The id part of a record key of `endpoint`, if it is one.
fn parse_key(endpoint: &str, key: &str) -> Option<InstanceId> {
    let id = key.strip_prefix(endpoint)?.strip_prefix('.')?;
    id.parse().ok()
}

/// Decode a record, checking it belongs where it is stored.
fn decode(endpoint: &str, entry: &Entry) -> Option<Instance> {
    let id = parse_key(endpoint, &entry.key)?;
    match serde_json::from_slice::<Instance>(&entry.value) {
        Ok(instance) if instance.id == id && instance.endpoint == endpoint => Some(instance),
        Ok(_) => {
            tracing::warn!(key = %entry.key, "discovery record does not match its key; ignored");
            None
        }
        Err(e) => {
            tracing::warn!(key = %entry.key, error = %e, "undecodable discovery record; ignored");
            None
        }
    }
}

async fn list(bucket: &Bucket, endpoint: &str) -> Result<BTreeMap<InstanceId, Instance>> {
    let mut out = BTreeMap::new();
    for key in bucket.keys(&filter(endpoint)).await? {
        // A record can expire between `keys` and `get`; it is simply gone.
        if let Some(entry) = bucket.get(&key).await? {
            if let Some(instance) = decode(endpoint, &entry) {
                out.insert(instance.id, instance);
            }
        }
    }
    Ok(out)
}

/// A registered instance whose lease is being renewed.
///
/// Dropping it stops renewal; the record then expires with its lease. Call
/// [`deregister`](Registration::deregister) to remove it at once.
pub struct Registration {
    instance: Instance,
    bucket: Bucket,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    reregistrations: Arc<AtomicU64>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("instance", &self.instance)
            .field("reregistrations", &self.reregistrations())
            .finish()
    }
}

impl Registration {
    /// The registered instance.
    pub fn instance(&self) -> &Instance {
        &self.instance
    }

    /// How often the record had to be written again from scratch because it
    /// had vanished or been changed underneath (lease lost, deleted by an
    /// operator).
    pub fn reregistrations(&self) -> u64 {
        self.reregistrations.load(Ordering::Relaxed)
    }

    /// Stop renewing and delete the record.
    ///
    /// Renewal is stopped (and any renewal in progress awaited) before the
    /// delete, so the record cannot be written again afterwards.
    pub async fn deregister(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            // The task may already have ended; then there is nothing to stop.
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // A renewal task never panics by design; if it did, the record
            // is deleted below all the same.
            let _ = task.await;
        }
        self.bucket
            .delete(&self.instance.key())
            .await
            .map(|_| ())
            .map_err(|e| e.with_op("discovery.deregister"))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        // Dropping the stop sender ends the renewal task at its next wait.
        self.stop.take();
    }
}

struct Renewer {
    bucket: Bucket,
    key: String,
    value: bytes::Bytes,
    options: PutOptions,
    period: Duration,
    revision: u64,
    reregistrations: Arc<AtomicU64>,
}

impl Renewer {
    async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        // Renewals are paced from the start of the previous write, not its
        // end: a slow write (a loaded server) must not stretch the gap
        // between two writes towards the lease.
        let mut wait = self.period;
        let mut next = Instant::now() + wait;
        loop {
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep_until(next) => {}
            }
            let started = Instant::now();
            wait = match self.renew().await {
                Ok(()) => {
                    next = started + self.period;
                    self.period
                }
                Err(e) => {
                    let retry = next_backoff(wait, self.period);
                    next = Instant::now() + retry;
                    tracing::warn!(
                        key = %self.key,
                        error = %e,
                        retry_in = ?retry,
                        "discovery lease renewal failed; retrying"
                    );
                    retry
                }
            };
        }
    }

    async fn renew(&mut self) -> Result<()> {
        let cas = self.options.clone().expect(Expect::Revision(self.revision));
        match self
            .bucket
            .put_opts(&self.key, self.value.clone(), cas)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::RevisionMismatch) => {
                let revision = self
                    .bucket
                    .put_opts(&self.key, self.value.clone(), self.options.clone())
                    .await?;
                self.revision = revision;
                self.reregistrations.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    key = %self.key,
                    reason = %e,
                    "discovery record vanished or changed underneath; registered again"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The wait after a failure: short at first, doubling, never above `cap`.
fn next_backoff(previous: Duration, cap: Duration) -> Duration {
    let cap = cap.clamp(MIN_BACKOFF, MAX_BACKOFF);
    if previous >= cap {
        // The previous wait was a regular period: start backing off afresh.
        MIN_BACKOFF.min(cap)
    } else {
        (previous * 2).clamp(MIN_BACKOFF, cap)
    }
}

/// A stream of [`DiscoveryEvent`]s for one endpoint. It does not end on its
/// own; dropping it stops its background task.
pub struct DiscoveryWatch {
    rx: mpsc::Receiver<DiscoveryEvent>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DiscoveryWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoveryWatch").finish_non_exhaustive()
    }
}

impl Stream for DiscoveryWatch {
    type Item = DiscoveryEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DiscoveryEvent>> {
        self.get_mut().rx.poll_recv(cx)
    }
}

impl Drop for DiscoveryWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The receiver went away; the watch task ends.
struct Gone;

struct Watcher {
    bucket: Bucket,
    endpoint: String,
    resync: Duration,
    tx: mpsc::Sender<DiscoveryEvent>,
    /// What the consumer has been told exists.
    known: BTreeMap<InstanceId, Instance>,
    kv_watch: Option<Watch>,
    /// Ids seen in the current kv watch's initial snapshot, until its first
    /// caught-up marker.
    snapshot: Option<BTreeSet<InstanceId>>,
}

impl Watcher {
    async fn run(mut self, initial: Option<BTreeMap<InstanceId, Instance>>) {
        if let Some(current) = initial {
            if self.reconcile(current).await.is_err() {
                return;
            }
        }
        let mut resync = tokio::time::interval_at(Instant::now() + self.resync, self.resync);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut backoff = MIN_BACKOFF;
        let mut reopen_at: Option<Instant> = None;
        loop {
            let step = tokio::select! {
                _ = self.tx.closed() => return,
                _ = resync.tick() => self.relist().await,
                _ = sleep_until_opt(reopen_at) => {
                    match self.bucket.watch(&filter(&self.endpoint)).await {
                        Ok(w) => {
                            self.kv_watch = Some(w);
                            self.snapshot = Some(BTreeSet::new());
                            reopen_at = None;
                            backoff = MIN_BACKOFF;
                        }
                        Err(e) => {
                            tracing::warn!(endpoint = %self.endpoint, error = %e, retry_in = ?backoff, "discovery cannot re-open its kv watch");
                            reopen_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                    Ok(())
                }
                ev = next_opt(&mut self.kv_watch) => match ev {
                    Some(Ok(WatchEvent::Entry(entry))) => self.apply(entry).await,
                    Some(Ok(WatchEvent::CaughtUp)) => self.caught_up().await,
                    other => {
                        match other {
                            Some(Err(e)) => tracing::warn!(endpoint = %self.endpoint, error = %e, "discovery kv watch failed; re-opening"),
                            _ => tracing::warn!(endpoint = %self.endpoint, "discovery kv watch ended; re-opening"),
                        }
                        self.kv_watch = None;
                        reopen_at = Some(Instant::now() + backoff);
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        Ok(())
                    }
                },
            };
            if step.is_err() {
                return;
            }
        }
    }

    async fn emit(&mut self, event: DiscoveryEvent) -> Result<(), Gone> {
        // `&mut self`, not `&self`: a shared borrow held across the await
        // would need the watcher (and its kv watch) to be `Sync`.
        self.tx.send(event).await.map_err(|_| Gone)
    }

    async fn apply(&mut self, entry: Entry) -> Result<(), Gone> {
        let Some(id) = parse_key(&self.endpoint, &entry.key) else {
            return Ok(());
        };
        match entry.op {
            Op::Put => {
                let Some(instance) = decode(&self.endpoint, &entry) else {
                    return Ok(());
                };
                if let Some(seen) = self.snapshot.as_mut() {
                    seen.insert(id);
                }
                if self.known.get(&id) != Some(&instance) {
                    self.known.insert(id, instance.clone());
                    self.emit(DiscoveryEvent::Added(instance)).await?;
                }
            }
            Op::Delete | Op::Purge | Op::Expire => {
                if let Some(seen) = self.snapshot.as_mut() {
                    seen.remove(&id);
                }
                if self.known.remove(&id).is_some() {
                    self.emit(DiscoveryEvent::Removed(id)).await?;
                }
            }
        }
        Ok(())
    }

    async fn caught_up(&mut self) -> Result<(), Gone> {
        match self.snapshot.take() {
            // The first marker of a fresh kv watch: its snapshot is the whole
            // current state, so whatever it did not mention is gone.
            Some(seen) => {
                let gone: Vec<InstanceId> = self
                    .known
                    .keys()
                    .filter(|id| !seen.contains(id))
                    .copied()
                    .collect();
                for id in gone {
                    self.known.remove(&id);
                    self.emit(DiscoveryEvent::Removed(id)).await?;
                }
                Ok(())
            }
            // A later marker follows a resynchronisation whose snapshot we
            // cannot tell apart from live changes: re-list instead.
            None => self.relist().await,
        }
    }

    async fn relist(&mut self) -> Result<(), Gone> {
        match list(&self.bucket, &self.endpoint).await {
            Ok(current) => self.reconcile(current).await,
            Err(e) => {
                tracing::warn!(endpoint = %self.endpoint, error = %e, "discovery resync failed; will retry");
                Ok(())
            }
        }
    }

    /// Report the differences between what the consumer knows and `current`.
    async fn reconcile(&mut self, current: BTreeMap<InstanceId, Instance>) -> Result<(), Gone> {
        let gone: Vec<InstanceId> = self
            .known
            .keys()
            .filter(|id| !current.contains_key(id))
            .copied()
            .collect();
        for id in gone {
            self.known.remove(&id);
            self.emit(DiscoveryEvent::Removed(id)).await?;
        }
        for (id, instance) in current {
            if self.known.get(&id) != Some(&instance) {
                self.known.insert(id, instance.clone());
                self.emit(DiscoveryEvent::Added(instance)).await?;
            }
        }
        Ok(())
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_opt(watch: &mut Option<Watch>) -> Option<Result<WatchEvent>> {
    match watch {
        Some(w) => w.next().await,
        None => std::future::pending().await,
    }
}
