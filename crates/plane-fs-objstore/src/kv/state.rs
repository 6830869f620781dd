//! A kv bucket's state file and the locked read-check-write around it.
//!
//! The whole bucket is one file, `state`, replaced atomically: a writer takes
//! the bucket's lock file (`File::lock`, an exclusive `flock` on Unix), reads
//! the state, checks its expectation, writes the new state to a temporary file
//! in the same directory, flushes it and renames it over `state`. Readers need
//! no lock: a rename replaces the file as a whole, so they see the old state
//! or the new one. Between processes the lock serialises writers, which makes
//! every compare-and-swap real.
//!
//! One file per bucket suits what this kv is for (configuration, discovery
//! records, small coordination state: hundreds or thousands of small keys);
//! every write rewrites the bucket, so it is not a database.

use crate::error::io_err;
use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind as IoKind, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use plane_core::kv::{Entry, Op};
use plane_core::{Error, ErrorKind, Result};

/// Format tag at the start of every state file, followed by the version.
const MAGIC: &[u8; 8] = b"planekv\0";
const VERSION: u8 = 1;

/// The change log keeps at most this many entries...
const LOG_MAX_ENTRIES: usize = 1024;
/// ...holding at most this many value bytes. A watcher further behind than
/// the log reaches is resynchronised with a fresh snapshot.
const LOG_MAX_BYTES: usize = 4 * 1024 * 1024;

/// One revision of one key, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Rec {
    pub(crate) key: String,
    pub(crate) value: Bytes,
    pub(crate) revision: u64,
    pub(crate) op: Op,
    pub(crate) created: SystemTime,
    /// When a live value stops being live.
    pub(crate) expires: Option<SystemTime>,
}

impl Rec {
    pub(crate) fn entry(&self) -> Entry {
        Entry {
            key: self.key.clone(),
            value: self.value.clone(),
            revision: self.revision,
            op: self.op,
            created: self.created,
        }
    }

    /// A live value at `now`: a put that has not expired.
    pub(crate) fn live(&self, now: SystemTime) -> bool {
        self.op == Op::Put && self.expires.is_none_or(|t| t > now)
    }
}

/// A bucket's configuration, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredConfig {
    pub(crate) history: u8,
    pub(crate) max_age: Option<Duration>,
}

/// Everything a bucket holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct State {
    pub(crate) config: StoredConfig,
    /// The last revision assigned in this bucket.
    pub(crate) revision: u64,
    /// Retained records per key, oldest first, markers included.
    pub(crate) keys: BTreeMap<String, Vec<Rec>>,
    /// The most recent changes, oldest first, one per revision: what watchers
    /// replay between two polls.
    pub(crate) log: VecDeque<Rec>,
}

impl State {
    pub(crate) fn new(config: StoredConfig) -> Self {
        State {
            config,
            revision: 0,
            keys: BTreeMap::new(),
            log: VecDeque::new(),
        }
    }

    /// The latest record of `key`.
    pub(crate) fn latest(&self, key: &str) -> Option<&Rec> {
        self.keys.get(key).and_then(|h| h.last())
    }

    /// The latest record of `key` if it is a live value.
    pub(crate) fn live(&self, key: &str, now: SystemTime) -> Option<&Rec> {
        self.latest(key).filter(|r| r.live(now))
    }

    /// The earliest time a live value will expire, if any will.
    pub(crate) fn next_expiry(&self) -> Option<SystemTime> {
        self.keys
            .values()
            .filter_map(|h| h.last())
            .filter(|r| r.op == Op::Put)
            .filter_map(|r| r.expires)
            .min()
    }

    /// Append a record for `key` with the next revision; returns it.
    pub(crate) fn append(
        &mut self,
        key: &str,
        value: Bytes,
        op: Op,
        now: SystemTime,
        expires: Option<SystemTime>,
    ) -> u64 {
        self.revision += 1;
        let rec = Rec {
            key: key.to_owned(),
            value,
            revision: self.revision,
            op,
            created: now,
            expires,
        };
        let history = self.keys.entry(key.to_owned()).or_default();
        if op == Op::Purge {
            history.clear();
        }
        history.push(rec.clone());
        let keep = usize::from(self.config.history.max(1));
        if history.len() > keep {
            let excess = history.len() - keep;
            history.drain(..excess);
        }
        self.log.push_back(rec);
        let mut bytes: usize = self.log.iter().map(|r| r.value.len()).sum();
        while self.log.len() > LOG_MAX_ENTRIES || (bytes > LOG_MAX_BYTES && self.log.len() > 1) {
            if let Some(old) = self.log.pop_front() {
                bytes -= old.value.len();
            }
        }
        self.revision
    }

    /// Turn values whose time ran out into `Expire` markers, and drop
    /// records older than the bucket's `max_age`. Returns whether anything
    /// changed.
    pub(crate) fn expire(&mut self, now: SystemTime) -> bool {
        let due: Vec<String> = self
            .keys
            .iter()
            .filter_map(|(k, h)| h.last().map(|r| (k, r)))
            .filter(|(_, r)| r.op == Op::Put && r.expires.is_some_and(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut changed = !due.is_empty();
        for key in due {
            self.append(&key, Bytes::new(), Op::Expire, now, None);
        }
        if let Some(max_age) = self.config.max_age {
            // Markers and superseded values age out like values do, so a
            // bucket with a TTL does not grow with every key ever written.
            if let Some(cutoff) = now.checked_sub(max_age) {
                let before = self.keys.len();
                for history in self.keys.values_mut() {
                    let old = history
                        .iter()
                        .take_while(|r| r.created <= cutoff && !r.live(now))
                        .count();
                    if old > 0 {
                        history.drain(..old);
                        changed = true;
                    }
                }
                self.keys.retain(|_, h| !h.is_empty());
                changed |= self.keys.len() != before;
            }
        }
        changed
    }
}

/// The files of one bucket.
#[derive(Debug, Clone)]
pub(crate) struct BucketFiles {
    pub(crate) dir: PathBuf,
    pub(crate) fsync: bool,
}

/// What identifies one version of the state file cheaply, to skip re-reading
/// an unchanged file while polling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    ino: u64,
    len: u64,
    modified: Option<SystemTime>,
}

impl BucketFiles {
    pub(crate) fn new(dir: PathBuf, fsync: bool) -> Self {
        BucketFiles { dir, fsync }
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn missing(&self) -> Error {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        Error::new(ErrorKind::NotFound, format!("no kv bucket `{name}`"))
    }

    /// Whether the bucket exists.
    pub(crate) fn exists(&self) -> bool {
        self.state_path().is_file()
    }

    /// The state file's stamp; `NotFound` when the bucket is gone.
    pub(crate) fn stamp(&self) -> Result<Stamp> {
        let meta = std::fs::metadata(self.state_path()).map_err(|e| {
            if e.kind() == IoKind::NotFound {
                self.missing()
            } else {
                io_err("cannot stat kv state", e)
            }
        })?;
        #[cfg(unix)]
        let ino = std::os::unix::fs::MetadataExt::ino(&meta);
        #[cfg(not(unix))]
        let ino = 0;
        Ok(Stamp {
            ino,
            len: meta.len(),
            modified: meta.modified().ok(),
        })
    }

    /// Read the current state without locking.
    pub(crate) fn read(&self) -> Result<State> {
        let bytes = std::fs::read(self.state_path()).map_err(|e| {
            if e.kind() == IoKind::NotFound {
                self.missing()
            } else {
                io_err("cannot read kv state", e)
            }
        })?;
        decode(&bytes)
    }

    fn write(&self, state: &State) -> Result<()> {
        let bytes = encode(state)?;
        let tmp = self.dir.join(format!(
            "state.tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            f.write_all(&bytes)?;
            if self.fsync {
                f.sync_data()?;
            }
            drop(f);
            std::fs::rename(&tmp, self.state_path())?;
            if self.fsync {
                // The rename itself is durable only once the directory is.
                File::open(&self.dir)?.sync_all()?;
            }
            Ok(())
        })();
        result.map_err(|e: std::io::Error| {
            let _ = std::fs::remove_file(&tmp);
            if e.kind() == IoKind::NotFound {
                self.missing()
            } else {
                io_err("cannot write kv state", e)
            }
        })
    }

    /// Take the bucket's lock (blocking until it is free).
    fn lock(&self) -> Result<File> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join("lock"))
            .map_err(|e| {
                if e.kind() == IoKind::NotFound {
                    self.missing()
                } else {
                    io_err("cannot open kv lock file", e)
                }
            })?;
        file.lock()
            .map_err(|e| io_err("cannot lock kv bucket", e))?;
        Ok(file)
    }

    /// Create the bucket with `config` unless it exists; returns its state.
    pub(crate) fn create(&self, config: StoredConfig) -> Result<State> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| io_err("cannot create kv bucket directory", e))?;
        let _lock = self.lock()?;
        match self.read() {
            Ok(state) => Ok(state),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                let state = State::new(config);
                self.write(&state)?;
                Ok(state)
            }
            Err(e) => Err(e),
        }
    }

    /// Read-check-write under the bucket's lock. `f` mutates the state and
    /// returns its result; it must leave the state untouched when it fails.
    /// The state is written back when `f` changed it, or when expiry did.
    pub(crate) fn update<T>(
        &self,
        f: impl FnOnce(&mut State, SystemTime) -> Result<T>,
    ) -> Result<T> {
        let _lock = self.lock()?;
        let mut state = self.read()?;
        let now = SystemTime::now();
        let expired = state.expire(now);
        let before = state.revision;
        let out = f(&mut state, now);
        // Expiry markers that were due are written even when the expectation
        // failed: they record what had already happened.
        if expired || state.revision != before {
            self.write(&state)?;
        }
        out
    }
}

fn encode(state: &State) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    postcard::to_extend(state, out)
        .map_err(|e| Error::new(ErrorKind::Other, "cannot encode kv state").with_source(e))
}

fn decode(bytes: &[u8]) -> Result<State> {
    let body = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| Error::new(ErrorKind::Decode, "not a plane kv state file"))?;
    match body.split_first() {
        Some((&VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| {
            Error::new(ErrorKind::Decode, "kv state file is malformed").with_source(e)
        }),
        Some((v, _)) => Err(Error::new(
            ErrorKind::Decode,
            format!("kv state file has unknown version {v}"),
        )),
        None => Err(Error::new(ErrorKind::Decode, "kv state file is truncated")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(history: u8) -> StoredConfig {
        StoredConfig {
            history,
            max_age: None,
        }
    }

    #[test]
    fn encode_round_trip_and_refuse_garbage() {
        let mut s = State::new(cfg(3));
        let now = SystemTime::now();
        s.append("a", Bytes::from_static(b"1"), Op::Put, now, None);
        s.append("a", Bytes::new(), Op::Delete, now, None);
        let back = decode(&encode(&s).unwrap()).unwrap();
        assert_eq!(back.revision, 2);
        assert_eq!(back.keys["a"].len(), 2);
        assert_eq!(decode(b"nonsense").unwrap_err().kind(), ErrorKind::Decode);
        let mut bad = encode(&s).unwrap();
        bad[MAGIC.len()] = 99;
        assert_eq!(decode(&bad).unwrap_err().kind(), ErrorKind::Decode);
        bad.truncate(MAGIC.len());
        assert_eq!(decode(&bad).unwrap_err().kind(), ErrorKind::Decode);
    }

    #[test]
    fn history_and_log_are_bounded() {
        let mut s = State::new(cfg(2));
        let now = SystemTime::now();
        for i in 0..(LOG_MAX_ENTRIES + 10) {
            s.append("k", Bytes::from(i.to_string()), Op::Put, now, None);
        }
        assert_eq!(s.keys["k"].len(), 2);
        assert_eq!(s.log.len(), LOG_MAX_ENTRIES);
        assert_eq!(s.log.back().map(|r| r.revision), Some(s.revision));
        let big = Bytes::from(vec![0u8; LOG_MAX_BYTES / 2 + 1]);
        for _ in 0..3 {
            s.append("big", big.clone(), Op::Put, now, None);
        }
        assert!(s.log.iter().map(|r| r.value.len()).sum::<usize>() <= LOG_MAX_BYTES);
    }

    #[test]
    fn expiry_writes_markers_once() {
        let mut s = State::new(cfg(5));
        let now = SystemTime::now();
        let soon = now + Duration::from_millis(10);
        s.append("k", Bytes::from_static(b"v"), Op::Put, now, Some(soon));
        assert!(s.live("k", now).is_some());
        assert!(!s.expire(now));
        let later = now + Duration::from_millis(20);
        assert!(s.live("k", later).is_none());
        assert!(s.expire(later));
        assert_eq!(s.latest("k").map(|r| r.op), Some(Op::Expire));
        assert!(!s.expire(later));
    }
}
