//! The kv plane on a shared directory.
//!
//! Each bucket is a directory `<root>/.plane-kv/<bucket>/` holding a `state`
//! file (every key's retained history, the bucket-wide revision counter and a
//! bounded log of recent changes) and a `lock` file. Writers serialise on the
//! lock file with [`std::fs::File::lock`] (an exclusive `flock` on Unix) and
//! replace `state` by writing a temporary file and renaming it, so a
//! compare-and-swap is atomic between threads *and* processes; readers never
//! lock. See the crate documentation for the filesystems this is safe on.
//!
//! Time to live is an expiry time stored with each value and checked on every
//! read, so an expired value is never returned even if nobody is watching.
//! Expired values are turned into [`Op::Expire`] markers (with their own
//! revision) by the next writer, or by a watcher's poll, whichever comes
//! first; watchers therefore see expiry within one poll interval.
//!
//! Watches poll the state file (a `stat`, and a read only when it changed)
//! every `poll_ms` milliseconds and replay the change log from their last
//! revision; a watcher that fell further behind than the log reaches gets a
//! fresh snapshot and a new `CaughtUp` marker.

mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::mpsc;

use plane_core::kv::{
    BucketConfig, DeleteOptions, DynKvBucketBackend, Entry, Expect, KvBackend, KvBucketBackend,
    KvCapabilities, Op, PutOptions, WatchEvent, WatchFrom, WatchOptions, WatchTransport,
};
use plane_core::subject::matches;
use plane_core::Kv;
use plane_core::{Error, ErrorKind, Result};
use url::Url;

use self::state::{BucketFiles, State, StoredConfig};

/// Events buffered per watch before the poller waits for the consumer.
const WATCH_BUFFER: usize = 256;
/// A poll re-reads the state file at least this often even when its stamp
/// looks unchanged, in case a filesystem reuses inode numbers within its
/// timestamp granularity.
const FORCED_READ_EVERY: u32 = 20;

/// Configuration of the directory kv.
#[derive(Debug, Clone)]
pub(crate) struct DirKvConfig {
    pub(crate) root: PathBuf,
    pub(crate) poll: Duration,
    pub(crate) fsync: bool,
    pub(crate) max_value: usize,
}

/// The kv backend on a shared directory.
#[derive(Debug)]
pub struct DirKv {
    config: Arc<DirKvConfig>,
    caps: KvCapabilities,
}

impl DirKv {
    pub(crate) fn new(config: DirKvConfig) -> Self {
        let mut caps = KvCapabilities::default();
        caps.history = true;
        caps.watch = true;
        caps.watch_from_revision = true;
        caps.bucket_ttl = true;
        caps.key_ttl = true;
        caps.expiry_events = true;
        caps.max_value = config.max_value;
        DirKv {
            config: Arc::new(config),
            caps,
        }
    }

    fn files(&self, bucket: &str) -> BucketFiles {
        BucketFiles::new(self.config.root.join(bucket), self.config.fsync)
    }

    fn handle(&self, files: BucketFiles) -> Arc<dyn DynKvBucketBackend> {
        Arc::new(DirKvBucket {
            files,
            poll: self.config.poll,
        })
    }
}

/// Run blocking filesystem work off the async threads. Dropping the caller's
/// future does not interrupt it: a write that started completes (or fails)
/// as a whole, and the lock is released when it ends.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::new(ErrorKind::Other, "kv file task failed").with_source(e))?
}

impl KvBackend for DirKv {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &KvCapabilities {
        &self.caps
    }

    async fn create_bucket(&self, config: BucketConfig) -> Result<Arc<dyn DynKvBucketBackend>> {
        let files = self.files(&config.name);
        let stored = StoredConfig {
            history: config.history,
            max_age: config.max_age,
        };
        let f = files.clone();
        blocking(move || f.create(stored).map(drop)).await?;
        Ok(self.handle(files))
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        let files = self.files(name);
        let f = files.clone();
        if !blocking(move || Ok(f.exists())).await? {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!("no kv bucket `{name}`"),
            ));
        }
        Ok(self.handle(files))
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        let files = self.files(name);
        let root = self.config.root.clone();
        let name = name.to_owned();
        blocking(move || {
            if !files.exists() {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no kv bucket `{name}`"),
                ));
            }
            // One rename makes the bucket disappear for every process at
            // once; the tree is removed afterwards.
            let trash = root.join(format!(".trash-{}", uuid::Uuid::now_v7().simple()));
            std::fs::rename(&files.dir, &trash)
                .and_then(|()| std::fs::remove_dir_all(&trash))
                .map_err(|e| Error::new(ErrorKind::Other, "cannot remove kv bucket").with_source(e))
        })
        .await
    }
}

struct DirKvBucket {
    files: BucketFiles,
    poll: Duration,
}

impl DirKvBucket {
    async fn read(&self) -> Result<State> {
        let f = self.files.clone();
        blocking(move || f.read()).await
    }

    async fn update<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State, SystemTime) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let files = self.files.clone();
        blocking(move || files.update(f)).await
    }
}

impl KvBucketBackend for DirKvBucket {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        let state = self.read().await?;
        Ok(state.live(key, SystemTime::now()).map(|r| r.entry()))
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<u64> {
        let key = key.to_owned();
        self.update(move |state, now| {
            match options.expect {
                Expect::Any => {}
                Expect::Absent => {
                    if state.live(&key, now).is_some() {
                        return Err(Error::new(
                            ErrorKind::AlreadyExists,
                            format!("key `{key}` exists"),
                        ));
                    }
                }
                Expect::Revision(expected) => match state.live(&key, now) {
                    None => {
                        return Err(Error::new(
                            ErrorKind::NotFound,
                            format!("key `{key}` does not exist"),
                        ))
                    }
                    Some(r) if r.revision != expected => {
                        return Err(Error::new(
                            ErrorKind::RevisionMismatch,
                            format!("key `{key}` is at revision {}, not {expected}", r.revision),
                        ))
                    }
                    Some(_) => {}
                },
            }
            let ttl = options.ttl.or(state.config.max_age);
            let expires = ttl.map(|t| now + t);
            Ok(state.append(&key, value, Op::Put, now, expires))
        })
        .await
    }

    async fn delete(&self, key: &str, options: DeleteOptions) -> Result<u64> {
        let key = key.to_owned();
        self.update(move |state, now| {
            if let Some(expected) = options.expect_revision {
                let actual = state.latest(&key).map(|r| r.revision);
                if actual != Some(expected) {
                    return Err(Error::new(
                        ErrorKind::RevisionMismatch,
                        format!(
                            "key `{key}` is at revision {}, not {expected}",
                            actual.map_or_else(|| "none".to_owned(), |r| r.to_string())
                        ),
                    ));
                }
            }
            let op = if options.purge { Op::Purge } else { Op::Delete };
            Ok(state.append(&key, Bytes::new(), op, now, None))
        })
        .await
    }

    async fn keys(&self, filter: &str) -> Result<Vec<String>> {
        let state = self.read().await?;
        let now = SystemTime::now();
        Ok(state
            .keys
            .iter()
            .filter(|(k, h)| matches(filter, k) && h.last().is_some_and(|r| r.live(now)))
            .map(|(k, _)| k.clone())
            .collect())
    }

    async fn history(&self, key: &str) -> Result<Vec<Entry>> {
        let state = self.read().await?;
        match state.keys.get(key) {
            Some(h) if !h.is_empty() => Ok(h.iter().map(|r| r.entry()).collect()),
            _ => Err(Error::new(
                ErrorKind::NotFound,
                "key has no retained history",
            )),
        }
    }

    async fn watch(&self, options: WatchOptions) -> Result<Box<dyn WatchTransport>> {
        // The first read happens here, so a missing bucket fails the call.
        let state = self.read().await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let poller = Poller {
            files: self.files.clone(),
            filter: options.filter,
            poll: self.poll,
            tx,
        };
        let task = tokio::spawn(poller.run(state, options.from));
        Ok(Box::new(DirWatch {
            rx,
            task: task.abort_handle(),
        }))
    }
}

struct DirWatch {
    rx: mpsc::Receiver<Result<WatchEvent>>,
    task: tokio::task::AbortHandle,
}

impl WatchTransport for DirWatch {
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent>>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for DirWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The background half of a watch: polls the state file and feeds the
/// channel. It ends when the watch is dropped (the channel closes, and the
/// task is aborted) or the bucket is deleted.
struct Poller {
    files: BucketFiles,
    filter: String,
    poll: Duration,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

/// Why the poller stops.
struct Stop;

impl Poller {
    async fn send(&self, event: Result<WatchEvent>) -> std::result::Result<(), Stop> {
        self.tx.send(event).await.map_err(|_| Stop)
    }

    /// The latest live entry of every matching key, in revision order, then
    /// `CaughtUp`. Returns the revision the snapshot is at.
    async fn snapshot(&self, state: &State) -> std::result::Result<u64, Stop> {
        let now = SystemTime::now();
        let mut entries: Vec<Entry> = state
            .keys
            .iter()
            .filter(|(k, _)| matches(&self.filter, k))
            .filter_map(|(_, h)| h.last().filter(|r| r.live(now)).map(|r| r.entry()))
            .collect();
        entries.sort_by_key(|e| e.revision);
        for e in entries {
            self.send(Ok(WatchEvent::Entry(e))).await?;
        }
        self.send(Ok(WatchEvent::CaughtUp)).await?;
        Ok(state.revision)
    }

    async fn start(&self, state: &State, from: WatchFrom) -> std::result::Result<u64, Stop> {
        match from {
            WatchFrom::Snapshot => self.snapshot(state).await,
            WatchFrom::New => {
                self.send(Ok(WatchEvent::CaughtUp)).await?;
                Ok(state.revision)
            }
            WatchFrom::Revision(from) => {
                let mut entries: Vec<Entry> = state
                    .keys
                    .iter()
                    .filter(|(k, _)| matches(&self.filter, k))
                    .flat_map(|(_, h)| h.iter())
                    .filter(|r| r.revision >= from)
                    .map(|r| r.entry())
                    .collect();
                entries.sort_by_key(|e| e.revision);
                for e in entries {
                    self.send(Ok(WatchEvent::Entry(e))).await?;
                }
                self.send(Ok(WatchEvent::CaughtUp)).await?;
                Ok(state.revision)
            }
        }
    }

    async fn run(self, state: State, from: WatchFrom) {
        let _ = self.run_inner(state, from).await;
    }

    async fn run_inner(&self, state: State, from: WatchFrom) -> std::result::Result<(), Stop> {
        let mut cursor = self.start(&state, from).await?;
        let mut next_expiry = state.next_expiry();
        let mut stamp = None;
        let mut polls_since_read = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(self.poll) => {}
                _ = self.tx.closed() => return Err(Stop),
            }
            let files = self.files.clone();
            let now = SystemTime::now();
            let expiry_due = next_expiry.is_some_and(|t| t <= now);
            let seen = stamp;
            let force = polls_since_read >= FORCED_READ_EVERY;
            let read = blocking(move || {
                if expiry_due {
                    // Materialise the expiry as markers, under the lock, so
                    // every watcher sees the same revisions.
                    files.update(|_, _| Ok(()))?;
                }
                let current = files.stamp()?;
                if !expiry_due && !force && Some(current) == seen {
                    return Ok(None);
                }
                Ok(Some((current, files.read()?)))
            })
            .await;
            let state = match read {
                Ok(None) => {
                    polls_since_read += 1;
                    continue;
                }
                Ok(Some((current, state))) => {
                    stamp = Some(current);
                    polls_since_read = 0;
                    state
                }
                Err(e) => {
                    // The bucket was deleted, or its files became unreadable:
                    // report it and end the watch.
                    self.send(Err(e)).await?;
                    return Err(Stop);
                }
            };
            next_expiry = state.next_expiry();
            if state.revision == cursor {
                continue;
            }
            let covered = state.revision > cursor
                && state.log.front().is_some_and(|r| r.revision <= cursor + 1);
            if covered {
                for rec in state.log.iter().filter(|r| r.revision > cursor) {
                    if matches(&self.filter, &rec.key) {
                        self.send(Ok(WatchEvent::Entry(rec.entry()))).await?;
                    }
                }
                cursor = state.revision;
            } else {
                // Too far behind for the log, or the bucket was recreated:
                // start over from a snapshot.
                cursor = self.snapshot(&state).await?;
            }
        }
    }
}

/// Build the kv plane for `url` (`file://` only).
pub async fn kv(url: &Url) -> Result<Kv> {
    if url.scheme() != "file" {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the kv plane of backend `{}` needs a shared directory (file://), not `{}://`",
                crate::NAME,
                url.scheme()
            ),
        ));
    }
    let config = crate::config::FsConfig::from_url(url)?;
    let root = crate::config::local_root(url)?.join(".plane-kv");
    std::fs::create_dir_all(&root).map_err(|e| {
        Error::new(ErrorKind::InvalidConfig, "cannot create the kv directory").with_source(e)
    })?;
    Ok(Kv::new(DirKv::new(DirKvConfig {
        root,
        poll: config.poll,
        fsync: config.fsync,
        max_value: config.max_value,
    })))
}
