//! The kv plane on JetStream key-value buckets.
//!
//! A bucket `B` is the JetStream stream `KV_B` over `$KV.B.>`, exactly as
//! every NATS client lays it out, so plain NATS kv clients read and write the
//! same keys. Writes carry `Nats-Expected-Last-Subject-Sequence` for a real
//! compare-and-swap: the server refuses a stale revision and stores nothing.
//! Revisions are stream sequences.
//!
//! Buckets are created with limit markers, which lets a write carry a
//! per-key time to live (`Nats-TTL`, whole seconds, rounded up) and makes the
//! server leave a marker (`Nats-Marker-Reason: MaxAge`) when a key expires;
//! watchers see it as [`Op::Expire`].

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{Client, HeaderMap};
use bytes::Bytes;
use futures_util::StreamExt;
use plane_core::kv::{
    BucketConfig, DeleteOptions, DynKvBucketBackend, Entry, Expect, KvBackend, KvBucketBackend,
    KvCapabilities, Op, PutOptions, WatchEvent, WatchFrom, WatchOptions, WatchTransport,
};
use plane_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;

use crate::namespace::Namespace;

/// How long the server keeps the marker it leaves when a key expires.
const MARKER_TTL: Duration = Duration::from_secs(1);

/// The kv plane over JetStream.
pub struct NatsKv {
    js: jetstream::Context,
    caps: KvCapabilities,
    /// Replicas of what this plane creates on the server.
    replicas: usize,
    namespace: Namespace,
    gave_up: crate::GaveUp,
}

impl NatsKv {
    /// The kv plane on `client`.
    pub fn new(client: Client) -> Self {
        let mut caps = KvCapabilities::default();
        caps.history = true;
        caps.watch = true;
        caps.watch_from_revision = true;
        caps.bucket_ttl = true;
        caps.key_ttl = true;
        caps.expiry_events = true;
        caps.max_value = crate::max_payload(&client);
        let replicas = crate::config::auto_replicas(&client.server_info(), 0);
        NatsKv {
            js: jetstream::new(client),
            caps,
            replicas,
            namespace: Namespace::default(),
            gave_up: crate::GaveUp::default(),
        }
    }

    /// Create buckets with `replicas` copies (1 to 5; more than 1 needs a
    /// JetStream cluster). By default, the count `replicas=auto` gives on
    /// the server the client is connected to (see
    /// [`NatsConfig::replicas_on`](crate::NatsConfig::replicas_on)).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Wait `timeout` for JetStream's answers (publish acknowledgements,
    /// stream and consumer requests) instead of async-nats's 5 s.
    pub fn with_jetstream_timeout(mut self, timeout: Duration) -> Self {
        self.js.set_timeout(timeout);
        self
    }

    /// Report `Down` once the connection behind `gave_up` stopped
    /// reconnecting.
    pub(crate) fn reporting(mut self, gave_up: crate::GaveUp) -> Self {
        self.gave_up = gave_up;
        self
    }

    /// Name buckets inside `namespace`.
    pub(crate) fn in_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        let name = self.namespace.name(name);
        let stream = self
            .js
            .get_stream(format!("KV_{name}"))
            .await
            .map_err(|e| crate::error::js("open bucket", e))?;
        Ok(Arc::new(NatsBucket {
            js: self.js.clone(),
            stream,
            prefix: format!("$KV.{name}."),
        }))
    }
}

impl KvBackend for NatsKv {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &KvCapabilities {
        &self.caps
    }

    fn connection_state(&self) -> plane_core::health::ConnectionState {
        crate::state(&self.js.client(), &self.gave_up)
    }

    async fn create_bucket(&self, config: BucketConfig) -> Result<Arc<dyn DynKvBucketBackend>> {
        match self.open(&config.name).await {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let created = self
            .js
            .create_key_value(kv::Config {
                bucket: self.namespace.name(&config.name).into_owned(),
                history: i64::from(config.history),
                max_age: config.max_age.unwrap_or_default(),
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                limit_markers: Some(MARKER_TTL),
                ..Default::default()
            })
            .await;
        if let Err(e) = created {
            // Lost a race with another creator: open what it made.
            if !e.to_string().contains("already") {
                return Err(crate::error::js("create bucket", e));
            }
        }
        self.open(&config.name).await
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynKvBucketBackend>> {
        self.open(name).await
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        self.js
            .delete_key_value(self.namespace.name(name))
            .await
            .map_err(|e| crate::error::js("delete bucket", e))?;
        Ok(())
    }
}

struct NatsBucket {
    js: jetstream::Context,
    stream: stream::Stream,
    /// `$KV.<bucket>.`
    prefix: String,
}

fn op_of(headers: Option<&HeaderMap>) -> Op {
    let get = |n: &str| {
        headers
            .and_then(|h| h.get(n))
            .map(|v| v.as_str().to_owned())
    };
    if let Some(reason) = get("Nats-Marker-Reason") {
        return match reason.as_str() {
            "Purge" => Op::Purge,
            "Remove" => Op::Delete,
            _ => Op::Expire,
        };
    }
    match get("KV-Operation").as_deref() {
        Some("DEL") => Op::Delete,
        Some("PURGE") => Op::Purge,
        _ => Op::Put,
    }
}

fn time_of(t: impl Into<SystemTime>) -> SystemTime {
    t.into()
}

impl NatsBucket {
    fn subject(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn entry(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: Bytes,
        revision: u64,
        created: SystemTime,
    ) -> Entry {
        let op = op_of(headers);
        Entry {
            key: subject
                .strip_prefix(&self.prefix)
                .unwrap_or(subject)
                .to_owned(),
            value: if op == Op::Put { payload } else { Bytes::new() },
            revision,
            op,
            created,
        }
    }

    /// The latest entry of `key`, markers included.
    async fn last(&self, key: &str) -> Result<Option<Entry>> {
        match self
            .stream
            .direct_get_last_for_subject(self.subject(key))
            .await
        {
            Ok(m) => Ok(Some(self.entry(
                m.subject.as_str(),
                Some(&m.headers),
                m.payload,
                m.sequence,
                time_of(m.time),
            ))),
            Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => {
                Ok(None)
            }
            Err(e) => Err(crate::error::js("kv get", e)),
        }
    }

    /// The entry at `revision`, if it is still stored.
    async fn at(&self, revision: u64) -> Result<Option<Entry>> {
        match self.stream.direct_get(revision).await {
            Ok(m) => Ok(Some(self.entry(
                m.subject.as_str(),
                Some(&m.headers),
                m.payload,
                m.sequence,
                time_of(m.time),
            ))),
            Err(e) if matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound) => {
                Ok(None)
            }
            Err(e) => Err(crate::error::js("kv get", e)),
        }
    }

    async fn write(&self, key: &str, headers: HeaderMap, value: Bytes) -> Result<u64> {
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, value)
            .await
            .map_err(crate::error::js_publish)?
            .await
            .map_err(crate::error::js_publish)?;
        Ok(ack.sequence)
    }

    /// Why a conditional write on `key` failed.
    async fn refusal(&self, key: &str) -> Error {
        match self.last(key).await {
            Ok(Some(e)) if e.op == Op::Put => Error::new(
                ErrorKind::RevisionMismatch,
                format!("key is at revision {}", e.revision),
            ),
            Ok(_) => Error::new(ErrorKind::NotFound, "key has no live value"),
            Err(e) => e,
        }
    }

    /// An ordered consumer over `filter` (a key pattern) from `deliver`,
    /// with the number of messages pending when it started.
    async fn ordered(
        &self,
        filter: &str,
        deliver: consumer::DeliverPolicy,
        headers_only: bool,
    ) -> Result<(consumer::pull::Ordered, u64)> {
        let mut consumer = self
            .stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: self.subject(filter),
                deliver_policy: deliver,
                headers_only,
                ..Default::default()
            })
            .await
            .map_err(|e| crate::error::js("kv consumer", e))?;
        let pending = consumer
            .info()
            .await
            .map_err(|e| crate::error::js("kv consumer", e))?
            .num_pending;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| crate::error::js("kv consumer", e))?;
        Ok((messages, pending))
    }

    /// Every entry over `filter` from `deliver` until caught up.
    async fn scan(
        &self,
        filter: &str,
        deliver: consumer::DeliverPolicy,
        headers_only: bool,
    ) -> Result<Vec<Entry>> {
        let (mut messages, pending) = self.ordered(filter, deliver, headers_only).await?;
        let mut out = Vec::new();
        if pending == 0 {
            return Ok(out);
        }
        let limit = Duration::from_secs(30);
        loop {
            let msg = tokio::time::timeout(limit, messages.next())
                .await
                .map_err(|_| Error::new(ErrorKind::Timeout, "kv scan stalled"))?
                .ok_or_else(|| Error::new(ErrorKind::Disconnected, "kv scan ended early"))?
                .map_err(|e| crate::error::js("kv scan", e))?;
            let (entry, left) = self.entry_of(&msg)?;
            out.push(entry);
            if left == 0 {
                return Ok(out);
            }
        }
    }

    fn entry_of(&self, msg: &jetstream::Message) -> Result<(Entry, u64)> {
        let info = msg
            .info()
            .map_err(|e| Error::new(ErrorKind::Decode, "malformed kv delivery").with_source(e))?;
        let entry = self.entry(
            msg.subject.as_str(),
            msg.headers.as_ref(),
            msg.payload.clone(),
            info.stream_sequence,
            time_of(info.published),
        );
        Ok((entry, info.pending))
    }
}

fn ttl_header(ttl: Duration) -> String {
    // The server counts message TTLs in whole seconds (at least one): round up
    // so a key never expires early.
    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
    format!("{}s", secs.max(1))
}

impl KvBucketBackend for NatsBucket {
    async fn get(&self, key: &str) -> Result<Option<Entry>> {
        Ok(self.last(key).await?.filter(|e| e.op == Op::Put))
    }

    async fn put(&self, key: &str, value: Bytes, options: PutOptions) -> Result<u64> {
        let mut headers = HeaderMap::new();
        if let Some(ttl) = options.ttl {
            headers.insert("Nats-TTL", ttl_header(ttl));
        }
        const EXPECT: &str = "Nats-Expected-Last-Subject-Sequence";
        match options.expect {
            Expect::Any => self.write(key, headers, value).await,
            Expect::Absent => {
                let mut expected = 0u64;
                // A deleted, purged or expired key is absent too: retry the
                // create against its marker (a few times if markers race).
                for _ in 0..5 {
                    let mut h = headers.clone();
                    h.insert(EXPECT, expected.to_string());
                    match self.write(key, h, value.clone()).await {
                        Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                            match self.last(key).await? {
                                Some(last) if last.op != Op::Put => expected = last.revision,
                                _ => {
                                    return Err(Error::new(
                                        ErrorKind::AlreadyExists,
                                        "key already has a value",
                                    ))
                                }
                            }
                        }
                        other => return other,
                    }
                }
                Err(Error::new(ErrorKind::AlreadyExists, "key keeps changing"))
            }
            Expect::Revision(revision) => {
                // A revision that is a marker would pass the server's check,
                // but a deleted key has nothing to update. Revisions never
                // change, so this check cannot race.
                if let Some(at) = self.at(revision).await? {
                    if at.key == key && at.op != Op::Put {
                        return Err(self.refusal(key).await);
                    }
                }
                headers.insert(EXPECT, revision.to_string());
                match self.write(key, headers, value).await {
                    Err(e) if e.kind() == ErrorKind::RevisionMismatch => {
                        Err(self.refusal(key).await)
                    }
                    other => other,
                }
            }
        }
    }

    async fn delete(&self, key: &str, options: DeleteOptions) -> Result<u64> {
        let mut headers = HeaderMap::new();
        if options.purge {
            headers.insert("KV-Operation", "PURGE");
            headers.insert("Nats-Rollup", "sub");
        } else {
            headers.insert("KV-Operation", "DEL");
        }
        if let Some(r) = options.expect_revision {
            headers.insert("Nats-Expected-Last-Subject-Sequence", r.to_string());
        }
        self.write(key, headers, Bytes::new()).await
    }

    async fn keys(&self, filter: &str) -> Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .scan(filter, consumer::DeliverPolicy::LastPerSubject, true)
            .await?
            .into_iter()
            .filter(|e| e.op == Op::Put)
            .map(|e| e.key)
            .collect();
        keys.sort();
        keys.dedup();
        Ok(keys)
    }

    async fn history(&self, key: &str) -> Result<Vec<Entry>> {
        let entries = self.scan(key, consumer::DeliverPolicy::All, false).await?;
        if entries.is_empty() {
            return Err(Error::new(ErrorKind::NotFound, "key has no history"));
        }
        Ok(entries)
    }

    async fn watch(&self, options: WatchOptions) -> Result<Box<dyn WatchTransport>> {
        let (deliver, snapshot, last) = match options.from {
            WatchFrom::Snapshot => (consumer::DeliverPolicy::LastPerSubject, true, None),
            WatchFrom::New => {
                // Remember where "new" began, so a resumed watch starts there.
                let info = self
                    .stream
                    .get_info()
                    .await
                    .map_err(|e| crate::error::js("kv watch", e))?;
                (
                    consumer::DeliverPolicy::New,
                    false,
                    Some(info.state.last_sequence),
                )
            }
            WatchFrom::Revision(r) => (
                consumer::DeliverPolicy::ByStartSequence {
                    start_sequence: r.max(1),
                },
                false,
                Some(r.saturating_sub(1)),
            ),
        };
        let (messages, pending) = self.ordered(&options.filter, deliver, false).await?;
        let (tx, rx) = mpsc::channel(256);
        let bucket = NatsBucket {
            js: self.js.clone(),
            stream: self.stream.clone(),
            prefix: self.prefix.clone(),
        };
        let pump = WatchPump {
            bucket,
            filter: options.filter,
            deliver,
            snapshot,
            last,
            tx,
        };
        tokio::spawn(pump.run(messages, pending));
        Ok(Box::new(Watcher { rx }))
    }
}

/// Feeds one watch: entries, the caught-up marker, and a lossless resume
/// after the connection comes back (a broker restart loses the server's
/// ephemeral consumer; waiting for the client library to notice the silence
/// would take many seconds).
struct WatchPump {
    bucket: NatsBucket,
    filter: String,
    deliver: consumer::DeliverPolicy,
    snapshot: bool,
    /// Stream sequence of the last entry delivered (or where the watch began).
    last: Option<u64>,
    tx: mpsc::Sender<Result<WatchEvent>>,
}

impl WatchPump {
    async fn run(mut self, mut messages: consumer::pull::Ordered, pending: u64) {
        let client = self.bucket.js.client();
        let mut caught_up = pending == 0;
        if caught_up && self.tx.send(Ok(WatchEvent::CaughtUp)).await.is_err() {
            return;
        }
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        let mut was_down = false;
        loop {
            let next = tokio::select! {
                n = messages.next() => n,
                _ = tick.tick() => {
                    let up = client.connection_state() == async_nats::connection::State::Connected;
                    if up && was_down {
                        match self.resume().await {
                            Ok((m, p)) => {
                                messages = m;
                                if self.last.is_none() {
                                    // Nothing seen yet: a fresh snapshot, and
                                    // a fresh caught-up marker after it.
                                    caught_up = p == 0;
                                    if caught_up && self.tx.send(Ok(WatchEvent::CaughtUp)).await.is_err() {
                                        return;
                                    }
                                }
                                was_down = false;
                            }
                            Err(e) => tracing::debug!(error = %e, "kv watch resume failed, retrying"),
                        }
                    } else if !up {
                        was_down = true;
                    }
                    continue;
                }
                _ = self.tx.closed() => return,
            };
            let msg = match next {
                None => return,
                // The ordered consumer also recreates itself after errors.
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "kv watch error");
                    continue;
                }
                Some(Ok(msg)) => msg,
            };
            let (entry, left) = match self.bucket.entry_of(&msg) {
                Ok(v) => v,
                Err(e) => {
                    if self.tx.send(Err(e)).await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if self.last.is_some_and(|l| entry.revision <= l) {
                continue; // seen before a resume
            }
            self.last = Some(entry.revision);
            // The snapshot is the live keys' latest values; markers of keys
            // deleted before the watch started are not news.
            let skip = self.snapshot && !caught_up && entry.op != Op::Put;
            if !skip && self.tx.send(Ok(WatchEvent::Entry(entry))).await.is_err() {
                return;
            }
            if !caught_up && left == 0 {
                caught_up = true;
                if self.tx.send(Ok(WatchEvent::CaughtUp)).await.is_err() {
                    return;
                }
            }
        }
    }

    async fn resume(&self) -> Result<(consumer::pull::Ordered, u64)> {
        let deliver = match self.last {
            Some(l) => consumer::DeliverPolicy::ByStartSequence {
                start_sequence: l + 1,
            },
            None => self.deliver,
        };
        self.bucket.ordered(&self.filter, deliver, false).await
    }
}

struct Watcher {
    rx: mpsc::Receiver<Result<WatchEvent>>,
}

impl WatchTransport for Watcher {
    fn poll_watch(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<WatchEvent>>> {
        self.rx.poll_recv(cx)
    }
}
