//! The queue plane on JetStream.
//!
//! Queue `Q` is the stream `QUEUE_Q` over the subject `plane.queue.Q` (in a
//! namespace `N`: `QUEUE_N__Q` over `N.plane.queue.Q`, as `docs/nats.md`
//! describes):
//! work-queue retention and one durable pull consumer `worker` in
//! [`QueueMode::WorkQueue`]; interest retention and one durable pull consumer
//! per named consumer in [`QueueMode::Broadcast`]. The queue's plane
//! configuration is kept in the stream's metadata, so `open_queue` needs
//! nothing else. A job's id is its stream sequence.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_nats::Client;
use futures_util::StreamExt;
use plane_core::ack::AckHandle;
use plane_core::message::names;
use plane_core::queue::{
    DynQueueBackend, Job, QueueBackend, QueueCapabilities, QueueConfig, QueueMode, QueuesBackend,
};
use plane_core::{Error, ErrorKind, Message, Result};

use crate::ack::{DeadLetter, JsAcker, Original};
use crate::mapping;
use crate::namespace::Namespace;

const WORKER: &str = "worker";
const META_MODE: &str = "plane-queue-mode";
const META_CONSUMERS: &str = "plane-queue-consumers";
const META_DEAD_LETTER: &str = "plane-queue-dead-letter";
const META_MAX_DELIVER: &str = "plane-queue-max-deliver";
const META_ACK_WAIT: &str = "plane-queue-ack-wait-ms";

/// The queue plane over JetStream.
pub struct NatsQueues {
    js: jetstream::Context,
    prefix: String,
    /// Replicas of what this plane creates on the server.
    replicas: usize,
    namespace: Namespace,
    caps: QueueCapabilities,
    /// Set when the connection ran out of reconnect attempts.
    gave_up: crate::GaveUp,
}

impl NatsQueues {
    /// The queue plane on `client`, with queue subjects under `prefix` (all
    /// of its tokens: a namespace's too).
    pub fn new(client: Client, prefix: &str) -> Self {
        let mut caps = QueueCapabilities::default();
        caps.broadcast = true;
        caps.nack_delay = true;
        caps.extend = true;
        caps.dead_letter = true;
        caps.purge = true;
        caps.depth = true;
        caps.max_payload = crate::max_payload(&client);
        let replicas = crate::config::auto_replicas(&client.server_info(), 0);
        NatsQueues {
            js: jetstream::new(client),
            prefix: prefix.to_owned(),
            replicas,
            namespace: Namespace::default(),
            caps,
            gave_up: crate::GaveUp::default(),
        }
    }

    /// Create queues with `replicas` copies (1 to 5; more than 1 needs a
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

    /// Name the queues' streams inside `namespace` (their subjects already
    /// are, by `prefix`).
    pub(crate) fn in_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    fn subject(&self, queue: &str) -> String {
        format!("{}.queue.{queue}", self.prefix)
    }

    fn stream(&self, queue: &str) -> String {
        format!("QUEUE_{}", self.namespace.name(queue))
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn DynQueueBackend>> {
        let mut stream = self
            .js
            .get_stream(self.stream(name))
            .await
            .map_err(|e| crate::error::js("open queue", e))?;
        let meta = stream
            .info()
            .await
            .map_err(|e| crate::error::js("open queue", e))?
            .config
            .metadata
            .clone();
        let consumer_names: Vec<String> = match meta.get(META_MODE).map(String::as_str) {
            Some("broadcast") => meta
                .get(META_CONSUMERS)
                .map(|c| c.split(',').map(str::to_owned).collect())
                .unwrap_or_default(),
            _ => vec![WORKER.to_owned()],
        };
        let broadcast = meta.get(META_MODE).map(String::as_str) == Some("broadcast");
        let mut consumers = HashMap::new();
        for c in consumer_names {
            let consumer: consumer::PullConsumer = stream
                .get_consumer(&c)
                .await
                .map_err(|e| crate::error::js("open queue consumer", e))?;
            consumers.insert(c, consumer);
        }
        let ack_wait = meta
            .get(META_ACK_WAIT)
            .and_then(|v| v.parse().ok())
            .map(Duration::from_millis)
            .unwrap_or(Duration::from_secs(30));
        Ok(Arc::new(NatsQueue {
            js: self.js.clone(),
            stream,
            subject: self.subject(name),
            broadcast,
            consumers,
            ack_wait,
            max_deliver: meta.get(META_MAX_DELIVER).and_then(|v| v.parse().ok()),
            dead_letter: meta.get(META_DEAD_LETTER).map(|q| DeadLetter {
                js: self.js.clone(),
                subject: self.subject(q),
                durable: true,
                source: (names::DEAD_LETTER_QUEUE, Some(name.to_owned())),
            }),
            nack_delay: self.caps.nack_delay,
        }))
    }

    /// Report `Down` once the connection behind `gave_up` stopped
    /// reconnecting.
    pub(crate) fn reporting(mut self, gave_up: crate::GaveUp) -> Self {
        self.gave_up = gave_up;
        self
    }
}

impl QueuesBackend for NatsQueues {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &QueueCapabilities {
        &self.caps
    }

    fn connection_state(&self) -> plane_core::health::ConnectionState {
        crate::state(&self.js.client(), &self.gave_up)
    }

    async fn create_queue(&self, config: QueueConfig) -> Result<Arc<dyn DynQueueBackend>> {
        match self.open(&config.name).await {
            Ok(q) => return Ok(q),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let mut metadata = HashMap::new();
        let (retention, consumers) = match &config.mode {
            QueueMode::WorkQueue => {
                metadata.insert(META_MODE.to_owned(), "work".to_owned());
                (stream::RetentionPolicy::WorkQueue, vec![WORKER.to_owned()])
            }
            QueueMode::Broadcast { consumers } => {
                metadata.insert(META_MODE.to_owned(), "broadcast".to_owned());
                metadata.insert(META_CONSUMERS.to_owned(), consumers.join(","));
                (stream::RetentionPolicy::Interest, consumers.clone())
            }
        };
        if let Some(dl) = &config.dead_letter {
            metadata.insert(META_DEAD_LETTER.to_owned(), dl.clone());
        }
        if let Some(n) = config.max_deliver {
            metadata.insert(META_MAX_DELIVER.to_owned(), n.to_string());
        }
        metadata.insert(
            META_ACK_WAIT.to_owned(),
            config.ack_wait.as_millis().to_string(),
        );
        let stream = self
            .js
            .get_or_create_stream(stream::Config {
                name: self.stream(&config.name),
                subjects: vec![self.subject(&config.name)],
                retention,
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                metadata,
                ..Default::default()
            })
            .await
            .map_err(|e| crate::error::js("create queue", e))?;
        for c in consumers {
            let _: consumer::PullConsumer = stream
                .get_or_create_consumer(
                    &c,
                    consumer::pull::Config {
                        durable_name: Some(c.clone()),
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: config.ack_wait,
                        max_deliver: config.max_deliver.map_or(-1, i64::from),
                        ..Default::default()
                    },
                )
                .await
                .map_err(|e| crate::error::js("create queue consumer", e))?;
        }
        self.open(&config.name).await
    }

    async fn open_queue(&self, name: &str) -> Result<Arc<dyn DynQueueBackend>> {
        self.open(name).await
    }

    async fn delete_queue(&self, name: &str) -> Result<()> {
        self.js
            .delete_stream(self.stream(name))
            .await
            .map_err(|e| crate::error::js("delete queue", e))?;
        Ok(())
    }
}

struct NatsQueue {
    js: jetstream::Context,
    stream: stream::Stream,
    subject: String,
    broadcast: bool,
    consumers: HashMap<String, consumer::PullConsumer>,
    ack_wait: Duration,
    max_deliver: Option<u32>,
    dead_letter: Option<DeadLetter>,
    nack_delay: bool,
}

impl NatsQueue {
    fn job_of(&self, msg: jetstream::Message) -> Result<Job> {
        let (stream, seq, attempt) = {
            let info = msg.info().map_err(|e| {
                Error::new(ErrorKind::Decode, "malformed jetstream delivery").with_source(e)
            })?;
            (
                info.stream.to_owned(),
                info.stream_sequence,
                info.delivered.max(1) as u32,
            )
        };
        let (msg, acker) = msg.split();
        let message: Message = mapping::decode(msg.headers.as_ref(), msg.payload.clone(), &[])?;
        let last = self.max_deliver.is_some_and(|max| attempt >= max);
        let dl = match &self.dead_letter {
            Some(dl) if last => Some((
                dl.clone(),
                Original {
                    subject: msg.subject.to_string(),
                    headers: msg.headers.clone(),
                    payload: msg.payload.clone(),
                    stream,
                    stream_sequence: seq,
                    attempt,
                },
            )),
            _ => None,
        };
        let acker = JsAcker::new(acker, self.ack_wait, dl);
        Ok(Job::new(
            seq,
            message,
            attempt,
            AckHandle::new(Box::new(acker), self.nack_delay, true),
        ))
    }
}

impl QueueBackend for NatsQueue {
    async fn enqueue(&self, message: Message) -> Result<u64> {
        let (headers, payload) = mapping::encode(&message, &[]);
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, payload)
            .await
            .map_err(crate::error::js_publish)?
            .await
            .map_err(crate::error::js_publish)?;
        Ok(ack.sequence)
    }

    async fn receive(&self, consumer: Option<&str>, wait: Duration) -> Result<Option<Job>> {
        let name = match (consumer, self.broadcast) {
            (None, false) => WORKER,
            (Some(c), true) => c,
            (None, true) => {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "a broadcast queue is received from as a named consumer",
                ))
            }
            (Some(c), false) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("work queue has no consumer `{c}`"),
                ))
            }
        };
        let consumer = self
            .consumers
            .get(name)
            .ok_or_else(|| Error::new(ErrorKind::NotFound, format!("no consumer `{name}`")))?;
        // The server holds the pull open for `wait` (at least a millisecond,
        // its smallest expiry) and answers with one job or nothing.
        let expires = wait.max(Duration::from_millis(1));
        let fetch = async {
            let mut batch = if wait.is_zero() {
                consumer
                    .fetch()
                    .max_messages(1)
                    .messages()
                    .await
                    .map_err(|e| crate::error::js("queue receive", e))?
            } else {
                consumer
                    .batch()
                    .max_messages(1)
                    .expires(expires)
                    .messages()
                    .await
                    .map_err(|e| crate::error::js("queue receive", e))?
            };
            match batch.next().await {
                None => Ok(None),
                Some(Ok(msg)) => self.job_of(msg).map(Some),
                Some(Err(e)) => Err(crate::error::pull("queue receive", e)),
            }
        };
        // Bounded even if the server's expiry notice is lost in a reconnect.
        match tokio::time::timeout(expires + Duration::from_secs(2), fetch).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }

    async fn purge(&self) -> Result<u64> {
        let r = self
            .stream
            .purge()
            .await
            .map_err(|e| crate::error::js("queue purge", e))?;
        Ok(r.purged)
    }

    async fn depth(&self) -> Result<u64> {
        let info = self
            .stream
            .get_info()
            .await
            .map_err(|e| crate::error::js("queue depth", e))?;
        Ok(info.state.messages)
    }
}
