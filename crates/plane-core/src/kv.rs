//! The key-value plane: buckets of revisioned keys with real compare-and-swap.
//!
//! Every write gets a revision that is strictly greater than every earlier
//! revision in the bucket (not necessarily one more). A write with an
//! [`Expect`] other than `Any` is a real compare-and-swap: when the
//! expectation fails, nothing changes and the error is `RevisionMismatch`
//! (or `AlreadyExists` for create-if-absent, `NotFound` for update of a
//! missing key).
//!
//! A watch first delivers a snapshot (the latest entry of each matching key,
//! or history from a revision), then a [`WatchEvent::CaughtUp`] marker, then
//! live changes. A watcher that falls behind is resynchronised with a fresh
//! snapshot rather than silently losing changes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_core::Stream;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

pub use crate::capabilities::KvCapabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::health::ConnectionState;
use crate::subject::{validate_key, validate_key_filter, validate_name};

/// What a history or watch entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Op {
    /// A value was written.
    Put,
    /// The key was deleted (a delete marker; history before it is kept).
    Delete,
    /// The key was purged (history collapsed to this marker).
    Purge,
    /// The key's time to live ran out.
    Expire,
}

/// One revision of one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key.
    pub key: String,
    /// The value; empty for delete, purge and expire markers.
    pub value: Bytes,
    /// The bucket-wide revision of this write.
    pub revision: u64,
    /// What happened.
    pub op: Op,
    /// When it happened, by the backend's clock.
    pub created: SystemTime,
}

/// What a write expects to find, making it a compare-and-swap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Expect {
    /// Unconditional.
    #[default]
    Any,
    /// The key has no live value (never written, deleted, purged or expired).
    Absent,
    /// The key's latest revision is exactly this one and it is live.
    Revision(u64),
}

/// Options of a write.
#[non_exhaustive]
#[derive(Debug, Clone, Default)]
pub struct PutOptions {
    /// Compare-and-swap expectation.
    pub expect: Expect,
    /// Per-key time to live (needs `key_ttl`).
    pub ttl: Option<Duration>,
}

impl PutOptions {
    /// Set the expectation.
    pub fn expect(mut self, expect: Expect) -> Self {
        self.expect = expect;
        self
    }

    /// Set the time to live.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

/// Options of a delete.
#[non_exhaustive]
#[derive(Debug, Clone, Default)]
pub struct DeleteOptions {
    /// Delete only if the latest revision is exactly this one.
    pub expect_revision: Option<u64>,
    /// Purge: drop the key's history and leave one purge marker.
    pub purge: bool,
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchFrom {
    /// The latest entry of every matching live key, then live changes.
    #[default]
    Snapshot,
    /// Only changes after the watch started.
    New,
    /// Every retained entry with revision at least this, then live changes.
    Revision(u64),
}

/// What a watch delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// An entry (snapshot or live).
    Entry(Entry),
    /// The snapshot is complete; what follows is live. Sent once per
    /// (re)synchronisation.
    CaughtUp,
}

/// Options of a watch.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// Key pattern (`*` one token, `>` the rest). `>` watches everything.
    pub filter: String,
    /// Where to start.
    pub from: WatchFrom,
}

impl WatchOptions {
    /// Watch keys matching `filter` from a snapshot.
    pub fn new(filter: impl Into<String>) -> Self {
        WatchOptions {
            filter: filter.into(),
            from: WatchFrom::Snapshot,
        }
    }

    /// Set where the watch starts.
    pub fn from(mut self, from: WatchFrom) -> Self {
        self.from = from;
        self
    }
}

/// Configuration of a bucket.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketConfig {
    /// Bucket name (`[A-Za-z0-9_-]`, 1 to 64).
    pub name: String,
    /// Revisions kept per key, 1 to 64. Default 1.
    pub history: u8,
    /// Entries expire this long after their last write (needs `bucket_ttl`).
    pub max_age: Option<Duration>,
}

impl BucketConfig {
    /// A bucket named `name` keeping one revision per key, no TTL.
    pub fn new(name: impl Into<String>) -> Self {
        BucketConfig {
            name: name.into(),
            history: 1,
            max_age: None,
        }
    }

    /// Set [`history`](BucketConfig::history).
    pub fn history(mut self, history: u8) -> Self {
        self.history = history;
        self
    }

    /// Set [`max_age`](BucketConfig::max_age).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }
}

/// A backend's watch.
pub trait WatchTransport: Send + 'static {
    /// Next watch event; `None` when closed.
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent>>>;
}

/// A watch: a stream of [`WatchEvent`]s. Dropping it stops watching.
pub struct Watch {
    transport: Box<dyn WatchTransport>,
}

impl Watch {
    /// Wrap a backend watch.
    pub fn new(transport: Box<dyn WatchTransport>) -> Self {
        Watch { transport }
    }
}

impl Stream for Watch {
    type Item = Result<WatchEvent>;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().transport.poll_watch(cx)
    }
}

/// What a backend implements for one bucket. Keys, filters and options are
/// validated against the capabilities before these are called.
pub trait KvBucketBackend: Send + Sync + 'static {
    /// The latest live entry of `key`, `None` if absent, deleted or expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>>> + Send;
    /// Write `value`; returns the new revision.
    ///
    /// # Behavior
    /// MUST be atomic with respect to `options.expect`: when it fails, the
    /// bucket is unchanged.
    ///
    /// # Errors
    /// `AlreadyExists` (expect absent, key live), `NotFound` (expect revision,
    /// key not live), `RevisionMismatch` (expect revision, other revision).
    fn put(
        &self,
        key: &str,
        value: Bytes,
        options: PutOptions,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Delete or purge `key`; returns the marker's revision.
    ///
    /// # Errors
    /// `RevisionMismatch` when `expect_revision` does not match (nothing changes).
    fn delete(&self, key: &str, options: DeleteOptions)
        -> impl Future<Output = Result<u64>> + Send;
    /// Live keys matching `filter`, sorted.
    fn keys(&self, filter: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Retained entries of `key`, oldest first, markers included.
    ///
    /// # Errors
    /// `NotFound` when nothing is retained for `key` (never written).
    fn history(&self, key: &str) -> impl Future<Output = Result<Vec<Entry>>> + Send;
    /// Watch keys matching the filter.
    fn watch(
        &self,
        options: WatchOptions,
    ) -> impl Future<Output = Result<Box<dyn WatchTransport>>> + Send;
}

/// Object-safe twin of [`KvBucketBackend`].
#[allow(missing_docs)]
pub trait DynKvBucketBackend: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>>>;
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'a, Result<u64>>;
    fn delete<'a>(&'a self, key: &'a str, options: DeleteOptions) -> BoxFuture<'a, Result<u64>>;
    fn keys<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Vec<String>>>;
    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Entry>>>;
    fn watch(&self, options: WatchOptions) -> BoxFuture<'_, Result<Box<dyn WatchTransport>>>;
}

impl<T: KvBucketBackend> DynKvBucketBackend for T {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Entry>>> {
        Box::pin(KvBucketBackend::get(self, key))
    }
    fn put<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        options: PutOptions,
    ) -> BoxFuture<'a, Result<u64>> {
        Box::pin(KvBucketBackend::put(self, key, value, options))
    }
    fn delete<'a>(&'a self, key: &'a str, options: DeleteOptions) -> BoxFuture<'a, Result<u64>> {
        Box::pin(KvBucketBackend::delete(self, key, options))
    }
    fn keys<'a>(&'a self, filter: &'a str) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(KvBucketBackend::keys(self, filter))
    }
    fn history<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<Entry>>> {
        Box::pin(KvBucketBackend::history(self, key))
    }
    fn watch(&self, options: WatchOptions) -> BoxFuture<'_, Result<Box<dyn WatchTransport>>> {
        Box::pin(KvBucketBackend::watch(self, options))
    }
}

/// What a backend implements for the kv plane: bucket management.
pub trait KvBackend: Send + Sync + 'static {
    /// Backend name.
    fn name(&self) -> &'static str;
    /// Declared capabilities.
    fn capabilities(&self) -> &KvCapabilities;
    /// The transport's connection state, for health checks. Cheap, no I/O.
    /// Defaults to `Up` (right for backends without a connection).
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Up
    }
    /// Create a bucket, or open an existing one of that name as it is.
    fn create_bucket(
        &self,
        config: BucketConfig,
    ) -> impl Future<Output = Result<Arc<dyn DynKvBucketBackend>>> + Send;
    /// Open an existing bucket. `NotFound` if absent.
    fn open_bucket(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<dyn DynKvBucketBackend>>> + Send;
    /// Delete a bucket and everything in it. `NotFound` if absent.
    fn delete_bucket(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Object-safe twin of [`KvBackend`].
#[allow(missing_docs)]
pub trait DynKvBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> &KvCapabilities;
    fn connection_state(&self) -> ConnectionState;
    fn create_bucket(
        &self,
        config: BucketConfig,
    ) -> BoxFuture<'_, Result<Arc<dyn DynKvBucketBackend>>>;
    fn open_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynKvBucketBackend>>>;
    fn delete_bucket<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
}

impl<T: KvBackend> DynKvBackend for T {
    fn name(&self) -> &'static str {
        KvBackend::name(self)
    }
    fn capabilities(&self) -> &KvCapabilities {
        KvBackend::capabilities(self)
    }
    fn connection_state(&self) -> ConnectionState {
        KvBackend::connection_state(self)
    }
    fn create_bucket(
        &self,
        config: BucketConfig,
    ) -> BoxFuture<'_, Result<Arc<dyn DynKvBucketBackend>>> {
        Box::pin(KvBackend::create_bucket(self, config))
    }
    fn open_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynKvBucketBackend>>> {
        Box::pin(KvBackend::open_bucket(self, name))
    }
    fn delete_bucket<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(KvBackend::delete_bucket(self, name))
    }
}

/// The kv plane handle: opens buckets. Cheap to clone.
#[derive(Clone)]
pub struct Kv {
    backend: Arc<dyn DynKvBackend>,
}

impl std::fmt::Debug for Kv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kv")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Kv {
    /// Wrap a backend.
    pub fn new(backend: impl KvBackend) -> Self {
        Kv::from_dyn(Arc::new(backend))
    }

    /// Wrap an already shared backend.
    pub fn from_dyn(backend: Arc<dyn DynKvBackend>) -> Self {
        Kv { backend }
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &KvCapabilities {
        self.backend.capabilities()
    }

    /// The backend's connection state, for health checks.
    pub fn connection_state(&self) -> ConnectionState {
        self.backend.connection_state()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Create a bucket (or open an existing one of that name as it is).
    pub async fn create_bucket(&self, config: BucketConfig) -> Result<Bucket> {
        let op = "kv.create_bucket";
        validate_name("bucket", &config.name).map_err(|e| e.with_op(op))?;
        if config.history == 0 || config.history > 64 {
            return Err(
                Error::new(ErrorKind::InvalidConfig, "history must be 1 to 64").with_op(op),
            );
        }
        let caps = self.capabilities();
        if config.history > 1 && !caps.history {
            return Err(Error::unsupported("history").with_op(op));
        }
        if config.max_age.is_some() && !caps.bucket_ttl {
            return Err(Error::unsupported("bucket_ttl").with_op(op));
        }
        let name = config.name.clone();
        let inner = self
            .backend
            .create_bucket(config)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.bucket_handle(name, inner))
    }

    /// Open an existing bucket.
    pub async fn open_bucket(&self, name: &str) -> Result<Bucket> {
        let op = "kv.open_bucket";
        validate_name("bucket", name).map_err(|e| e.with_op(op))?;
        let inner = self
            .backend
            .open_bucket(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.bucket_handle(name.to_owned(), inner))
    }

    /// Delete a bucket.
    pub async fn delete_bucket(&self, name: &str) -> Result<()> {
        let op = "kv.delete_bucket";
        validate_name("bucket", name).map_err(|e| e.with_op(op))?;
        self.backend
            .delete_bucket(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))
    }

    fn bucket_handle(&self, name: String, inner: Arc<dyn DynKvBucketBackend>) -> Bucket {
        Bucket {
            name: name.into(),
            inner,
            kv: self.clone(),
        }
    }
}

/// One bucket. Cheap to clone.
#[derive(Clone)]
pub struct Bucket {
    name: Arc<str>,
    inner: Arc<dyn DynKvBucketBackend>,
    kv: Kv,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket")
            .field("name", &self.name)
            .field("backend", &self.kv.backend_name())
            .finish()
    }
}

impl Bucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &KvCapabilities {
        self.kv.capabilities()
    }

    fn fail(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.with_op(op).with_backend(self.kv.backend_name())
    }

    /// The latest live value of `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Entry>> {
        validate_key(key).map_err(self.fail("kv.get"))?;
        self.inner.get(key).await.map_err(self.fail("kv.get"))
    }

    /// Write unconditionally; returns the new revision.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        self.put_opts(key, value, PutOptions::default()).await
    }

    /// Write only if `key` has no live value. `AlreadyExists` otherwise.
    pub async fn create(&self, key: &str, value: impl Into<Bytes>) -> Result<u64> {
        self.put_opts(key, value, PutOptions::default().expect(Expect::Absent))
            .await
    }

    /// Write only if `key`'s latest revision is `revision`: a compare-and-swap.
    /// `RevisionMismatch` (or `NotFound` for a missing key) otherwise, and
    /// nothing changes.
    pub async fn update(&self, key: &str, value: impl Into<Bytes>, revision: u64) -> Result<u64> {
        self.put_opts(
            key,
            value,
            PutOptions::default().expect(Expect::Revision(revision)),
        )
        .await
    }

    /// The general write.
    pub async fn put_opts(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        options: PutOptions,
    ) -> Result<u64> {
        let op = "kv.put";
        validate_key(key).map_err(self.fail(op))?;
        let value = value.into();
        let caps = self.capabilities();
        if options.ttl.is_some() && !caps.key_ttl {
            return Err(Error::unsupported("key_ttl").with_op(op));
        }
        if caps.max_value > 0 && value.len() > caps.max_value {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!(
                    "value of {} bytes exceeds the limit of {}",
                    value.len(),
                    caps.max_value
                ),
            )
            .with_op(op));
        }
        self.inner
            .put(key, value, options)
            .await
            .map_err(self.fail(op))
    }

    /// Delete `key` (leaving a delete marker in history).
    pub async fn delete(&self, key: &str) -> Result<u64> {
        self.delete_opts(key, DeleteOptions::default()).await
    }

    /// Delete `key` only if its latest revision is `revision`.
    pub async fn delete_if(&self, key: &str, revision: u64) -> Result<u64> {
        self.delete_opts(
            key,
            DeleteOptions {
                expect_revision: Some(revision),
                purge: false,
            },
        )
        .await
    }

    /// Purge `key`: its history collapses to one purge marker.
    pub async fn purge(&self, key: &str) -> Result<u64> {
        self.delete_opts(
            key,
            DeleteOptions {
                expect_revision: None,
                purge: true,
            },
        )
        .await
    }

    /// The general delete.
    pub async fn delete_opts(&self, key: &str, options: DeleteOptions) -> Result<u64> {
        validate_key(key).map_err(self.fail("kv.delete"))?;
        self.inner
            .delete(key, options)
            .await
            .map_err(self.fail("kv.delete"))
    }

    /// Live keys matching `filter` (`>` for all), sorted.
    pub async fn keys(&self, filter: &str) -> Result<Vec<String>> {
        validate_key_filter(filter).map_err(self.fail("kv.keys"))?;
        self.inner.keys(filter).await.map_err(self.fail("kv.keys"))
    }

    /// Retained revisions of `key`, oldest first, markers included.
    pub async fn history(&self, key: &str) -> Result<Vec<Entry>> {
        if !self.capabilities().history {
            return Err(Error::unsupported("history").with_op("kv.history"));
        }
        validate_key(key).map_err(self.fail("kv.history"))?;
        self.inner
            .history(key)
            .await
            .map_err(self.fail("kv.history"))
    }

    /// Watch keys matching `filter` from a snapshot.
    pub async fn watch(&self, filter: &str) -> Result<Watch> {
        self.watch_with(WatchOptions::new(filter)).await
    }

    /// Watch with options.
    pub async fn watch_with(&self, options: WatchOptions) -> Result<Watch> {
        let op = "kv.watch";
        let caps = self.capabilities();
        if !caps.watch {
            return Err(Error::unsupported("watch").with_op(op));
        }
        if matches!(options.from, WatchFrom::Revision(_)) && !caps.watch_from_revision {
            return Err(Error::unsupported("watch_from_revision").with_op(op));
        }
        validate_key_filter(&options.filter).map_err(self.fail(op))?;
        let t = self.inner.watch(options).await.map_err(self.fail(op))?;
        Ok(Watch::new(t))
    }
}
