//! The work-queue plane: jobs processed once by some worker.
//!
//! Publishers [`enqueue`](WorkQueue::enqueue) jobs; workers
//! [`receive`](WorkQueue::receive) them and [`ack`](Job::ack) *after*
//! processing. A job not acked within the queue's ack wait (a crashed or stuck
//! worker) is delivered again; [`Job::extend`] buys a long job more time and
//! [`Job::nack`] hands it back, optionally after a delay. After `max_deliver`
//! attempts a job moves to the dead-letter queue, if one is configured.
//!
//! In [`QueueMode::WorkQueue`] each job goes to one worker; in
//! [`QueueMode::Broadcast`] every named consumer gets every job, and workers
//! sharing a consumer name compete for that consumer's copy.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::ack::AckHandle;
pub use crate::capabilities::QueueCapabilities;
use crate::error::{Error, ErrorKind, Result};
pub use crate::health::ConnectionState;
use crate::message::names;
use crate::message::{Body, Headers, Message};
use crate::metrics::{self as m, Labels};
use crate::subject::validate_name;
use crate::trace::TraceContext;

/// How jobs are distributed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum QueueMode {
    /// Each job to one worker.
    #[default]
    WorkQueue,
    /// Each job to every one of these named durable consumers.
    Broadcast {
        /// Consumer names.
        consumers: Vec<String>,
    },
}

/// Configuration of a queue.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueConfig {
    /// Queue name (`[A-Za-z0-9_-]`, 1 to 64).
    pub name: String,
    /// Distribution mode.
    pub mode: QueueMode,
    /// How long a received job may stay unacknowledged before it is
    /// delivered again. Default 30 s.
    pub ack_wait: Duration,
    /// Deliveries before a job is dead-lettered (or dropped without a
    /// dead-letter queue). `None` retries forever.
    pub max_deliver: Option<u32>,
    /// Name of the queue that receives dead-lettered jobs (it must exist).
    pub dead_letter: Option<String>,
}

impl QueueConfig {
    /// A work queue named `name` with defaults.
    pub fn new(name: impl Into<String>) -> Self {
        QueueConfig {
            name: name.into(),
            mode: QueueMode::WorkQueue,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            dead_letter: None,
        }
    }

    /// Broadcast to these named consumers.
    pub fn broadcast(mut self, consumers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.mode = QueueMode::Broadcast {
            consumers: consumers.into_iter().map(Into::into).collect(),
        };
        self
    }

    /// Set [`ack_wait`](QueueConfig::ack_wait).
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }

    /// Set [`max_deliver`](QueueConfig::max_deliver).
    pub fn max_deliver(mut self, n: u32) -> Self {
        self.max_deliver = Some(n);
        self
    }

    /// Set [`dead_letter`](QueueConfig::dead_letter).
    pub fn dead_letter(mut self, queue: impl Into<String>) -> Self {
        self.dead_letter = Some(queue.into());
        self
    }
}

/// One received job. Ack it after processing.
#[derive(Debug)]
pub struct Job {
    /// Queue-assigned id, stable across redeliveries.
    pub id: u64,
    /// Headers and body.
    pub message: Message,
    /// 1 for the first delivery, then one more per redelivery.
    pub attempt: u32,
    ack: AckHandle,
    /// Metric labels and receipt time, set by the handle that received it.
    observed: Option<(Labels, std::time::Instant)>,
}

impl Job {
    /// Build a job (for backends).
    pub fn new(id: u64, message: Message, attempt: u32, ack: AckHandle) -> Self {
        Job {
            id,
            message,
            attempt,
            ack,
            observed: None,
        }
    }

    fn observe(mut self, labels: &Labels) -> Self {
        labels.counter(m::QUEUE_RECEIVED).increment(1);
        if self.attempt > 1 {
            labels.counter(m::QUEUE_REDELIVERED).increment(1);
        }
        if self.message.headers.get(names::DEAD_LETTER_QUEUE).is_some() {
            labels.counter(m::QUEUE_DEAD_LETTERS).increment(1);
        }
        self.observed = Some((labels.clone(), std::time::Instant::now()));
        self
    }

    fn settled(&self, name: &'static str, result: &Result<()>) {
        if let (Some((labels, at)), Ok(())) = (&self.observed, result) {
            labels.counter(name).increment(1);
            labels
                .histogram(m::QUEUE_JOB_DURATION)
                .record(at.elapsed().as_secs_f64());
        }
    }

    /// The trace context the job was enqueued with, if any.
    pub fn trace_context(&self) -> Option<TraceContext> {
        TraceContext::from_headers(&self.message.headers)
    }

    /// The job's body.
    pub fn body(&self) -> &Body {
        &self.message.body
    }

    /// The job's headers.
    pub fn headers(&self) -> &Headers {
        &self.message.headers
    }

    /// Done: remove the job. A second ack or nack fails with `AlreadyAcked`.
    pub async fn ack(&self) -> Result<()> {
        let r = self.ack.ack().await;
        self.settled(m::QUEUE_ACKED, &r);
        r
    }

    /// Hand the job back, to be delivered again after `delay` if given.
    pub async fn nack(&self, delay: Option<Duration>) -> Result<()> {
        let r = self.ack.nack(delay).await;
        self.settled(m::QUEUE_NACKED, &r);
        r
    }

    /// Still working: restart the ack wait.
    pub async fn extend(&self) -> Result<()> {
        self.ack.extend().await
    }
}

/// What a backend implements for one queue.
pub trait QueueBackend: Send + Sync + 'static {
    /// Append a job; returns its id.
    fn enqueue(&self, message: Message) -> impl Future<Output = Result<u64>> + Send;
    /// The next job for `consumer` (`None` in work-queue mode), waiting up to
    /// `wait`; `Ok(None)` when none arrived in time.
    ///
    /// # Errors
    /// `NotFound` for a consumer name the queue does not broadcast to.
    fn receive(
        &self,
        consumer: Option<&str>,
        wait: Duration,
    ) -> impl Future<Output = Result<Option<Job>>> + Send;
    /// Remove every pending job; returns how many.
    fn purge(&self) -> impl Future<Output = Result<u64>> + Send;
    /// Jobs stored and not yet acknowledged (by every consumer, in broadcast
    /// mode), including those being processed.
    fn depth(&self) -> impl Future<Output = Result<u64>> + Send;
}

/// Object-safe twin of [`QueueBackend`].
#[allow(missing_docs)]
pub trait DynQueueBackend: Send + Sync + 'static {
    fn enqueue(&self, message: Message) -> BoxFuture<'_, Result<u64>>;
    fn receive<'a>(
        &'a self,
        consumer: Option<&'a str>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<Job>>>;
    fn purge(&self) -> BoxFuture<'_, Result<u64>>;
    fn depth(&self) -> BoxFuture<'_, Result<u64>>;
}

impl<T: QueueBackend> DynQueueBackend for T {
    fn enqueue(&self, message: Message) -> BoxFuture<'_, Result<u64>> {
        Box::pin(QueueBackend::enqueue(self, message))
    }
    fn receive<'a>(
        &'a self,
        consumer: Option<&'a str>,
        wait: Duration,
    ) -> BoxFuture<'a, Result<Option<Job>>> {
        Box::pin(QueueBackend::receive(self, consumer, wait))
    }
    fn purge(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(QueueBackend::purge(self))
    }
    fn depth(&self) -> BoxFuture<'_, Result<u64>> {
        Box::pin(QueueBackend::depth(self))
    }
}

/// What a backend implements for the queue plane: queue management.
pub trait QueuesBackend: Send + Sync + 'static {
    /// Backend name.
    fn name(&self) -> &'static str;
    /// Declared capabilities.
    fn capabilities(&self) -> &QueueCapabilities;
    /// The transport's connection state, for health checks. Cheap, no I/O.
    /// Defaults to `Up` (right for backends without a connection).
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Up
    }
    /// Create a queue, or open an existing one of that name as it is.
    fn create_queue(
        &self,
        config: QueueConfig,
    ) -> impl Future<Output = Result<Arc<dyn DynQueueBackend>>> + Send;
    /// Open an existing queue. `NotFound` if absent.
    fn open_queue(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<dyn DynQueueBackend>>> + Send;
    /// Delete a queue and its jobs. `NotFound` if absent.
    fn delete_queue(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Object-safe twin of [`QueuesBackend`].
#[allow(missing_docs)]
pub trait DynQueuesBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> &QueueCapabilities;
    fn connection_state(&self) -> ConnectionState;
    fn create_queue(&self, config: QueueConfig) -> BoxFuture<'_, Result<Arc<dyn DynQueueBackend>>>;
    fn open_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn DynQueueBackend>>>;
    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
}

impl<T: QueuesBackend> DynQueuesBackend for T {
    fn name(&self) -> &'static str {
        QueuesBackend::name(self)
    }
    fn capabilities(&self) -> &QueueCapabilities {
        QueuesBackend::capabilities(self)
    }
    fn connection_state(&self) -> ConnectionState {
        QueuesBackend::connection_state(self)
    }
    fn create_queue(&self, config: QueueConfig) -> BoxFuture<'_, Result<Arc<dyn DynQueueBackend>>> {
        Box::pin(QueuesBackend::create_queue(self, config))
    }
    fn open_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Arc<dyn DynQueueBackend>>> {
        Box::pin(QueuesBackend::open_queue(self, name))
    }
    fn delete_queue<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(QueuesBackend::delete_queue(self, name))
    }
}

/// The queue plane handle: opens queues. Cheap to clone.
#[derive(Clone)]
pub struct Queues {
    backend: Arc<dyn DynQueuesBackend>,
}

impl std::fmt::Debug for Queues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queues")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Queues {
    /// Wrap a backend.
    pub fn new(backend: impl QueuesBackend) -> Self {
        Queues::from_dyn(Arc::new(backend))
    }

    /// Wrap an already shared backend.
    pub fn from_dyn(backend: Arc<dyn DynQueuesBackend>) -> Self {
        Queues { backend }
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &QueueCapabilities {
        self.backend.capabilities()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// The backend's connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.backend.connection_state()
    }

    /// Create a queue (or open an existing one of that name as it is).
    pub async fn create_queue(&self, config: QueueConfig) -> Result<WorkQueue> {
        let op = "queue.create";
        validate_name("queue", &config.name).map_err(|e| e.with_op(op))?;
        let caps = self.capabilities();
        if let QueueMode::Broadcast { consumers } = &config.mode {
            if !caps.broadcast {
                return Err(Error::unsupported("broadcast").with_op(op));
            }
            if consumers.is_empty() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "broadcast needs at least one consumer",
                )
                .with_op(op));
            }
            for c in consumers {
                validate_name("consumer", c).map_err(|e| e.with_op(op))?;
            }
        }
        if let Some(dl) = &config.dead_letter {
            if !caps.dead_letter {
                return Err(Error::unsupported("dead_letter").with_op(op));
            }
            validate_name("queue", dl).map_err(|e| e.with_op(op))?;
        }
        if config.ack_wait.is_zero() || config.max_deliver == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "ack_wait and max_deliver must be positive",
            )
            .with_op(op));
        }
        let name = config.name.clone();
        let inner = self
            .backend
            .create_queue(config)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.handle(&name, inner))
    }

    /// Open an existing queue.
    pub async fn open_queue(&self, name: &str) -> Result<WorkQueue> {
        let op = "queue.open";
        validate_name("queue", name).map_err(|e| e.with_op(op))?;
        let inner = self
            .backend
            .open_queue(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.handle(name, inner))
    }

    /// Delete a queue and its jobs.
    pub async fn delete_queue(&self, name: &str) -> Result<()> {
        let op = "queue.delete";
        validate_name("queue", name).map_err(|e| e.with_op(op))?;
        self.backend
            .delete_queue(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))
    }

    fn handle(&self, name: &str, inner: Arc<dyn DynQueueBackend>) -> WorkQueue {
        WorkQueue {
            labels: Labels::new()
                .with("backend", self.backend.name())
                .with("queue", name.to_owned()),
            name: name.into(),
            inner,
            queues: self.clone(),
        }
    }
}

/// One queue. Cheap to clone.
#[derive(Clone)]
pub struct WorkQueue {
    labels: Labels,
    name: Arc<str>,
    inner: Arc<dyn DynQueueBackend>,
    queues: Queues,
}

impl std::fmt::Debug for WorkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkQueue")
            .field("name", &self.name)
            .field("backend", &self.queues.backend_name())
            .finish()
    }
}

impl WorkQueue {
    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fail(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.with_op(op).with_backend(self.queues.backend_name())
    }

    /// Append a job; returns its id. Within a trace context
    /// ([`TraceContext::current`]) the job carries it.
    pub async fn enqueue(&self, message: impl Into<Message>) -> Result<u64> {
        let result = self.enqueue_inner(message.into()).await;
        self.labels
            .counter_with(m::QUEUE_ENQUEUED, "outcome", m::outcome(&result))
            .increment(1);
        result
    }

    async fn enqueue_inner(&self, mut message: Message) -> Result<u64> {
        let max = self.queues.capabilities().max_payload;
        let len = message.payload_len();
        if len > max {
            return Err(Error::new(
                ErrorKind::PayloadTooLarge,
                format!("job of {len} bytes exceeds the limit of {max}"),
            )
            .with_op("queue.enqueue"));
        }
        // Checked first: plane's trace headers must not make a job of
        // exactly the limit fail (backends leave room for control headers).
        TraceContext::outgoing(&mut message.headers, false);
        self.inner
            .enqueue(message)
            .await
            .map_err(self.fail("queue.enqueue"))
    }

    /// The next job, waiting up to `wait`; `Ok(None)` if none arrived in time.
    pub async fn receive(&self, wait: Duration) -> Result<Option<Job>> {
        let job = self
            .inner
            .receive(None, wait)
            .await
            .map_err(self.fail("queue.receive"))?;
        Ok(job.map(|j| j.observe(&self.labels)))
    }

    /// The next job for broadcast consumer `consumer`, waiting up to `wait`.
    pub async fn receive_as(&self, consumer: &str, wait: Duration) -> Result<Option<Job>> {
        validate_name("consumer", consumer).map_err(self.fail("queue.receive"))?;
        let job = self
            .inner
            .receive(Some(consumer), wait)
            .await
            .map_err(self.fail("queue.receive"))?;
        Ok(job.map(|j| j.observe(&self.labels)))
    }

    /// Process jobs with `handler`, up to `concurrency` at once, until the
    /// returned [`Worker`] is drained or dropped. A job is acked when its
    /// handler returns `Ok` and nacked (for redelivery) when it returns `Err`;
    /// a handler may settle the job itself instead (the worker then ignores
    /// `AlreadyAcked`). Each job runs in a `plane.job` span, within the trace
    /// context it was enqueued with.
    ///
    /// # Errors
    /// `InvalidConfig` when `concurrency` is 0.
    pub fn run_worker<F, Fut>(&self, concurrency: usize, handler: F) -> Result<Worker>
    where
        F: Fn(Arc<Job>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        if concurrency == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "concurrency must be at least 1",
            ));
        }
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(worker_loop(
            self.clone(),
            concurrency,
            Arc::new(handler),
            stopped,
        ));
        Ok(Worker {
            stop,
            task: Some(task),
        })
    }

    /// Remove every pending job; returns how many.
    pub async fn purge(&self) -> Result<u64> {
        if !self.queues.capabilities().purge {
            return Err(Error::unsupported("purge").with_op("queue.purge"));
        }
        self.inner.purge().await.map_err(self.fail("queue.purge"))
    }

    /// Jobs not yet acknowledged, including those in process.
    pub async fn depth(&self) -> Result<u64> {
        if !self.queues.capabilities().depth {
            return Err(Error::unsupported("depth").with_op("queue.depth"));
        }
        self.inner.depth().await.map_err(self.fail("queue.depth"))
    }
}

/// How long one receive waits before the worker loop looks again; it also
/// stops waiting at once when the worker is drained.
const WORKER_POLL: Duration = Duration::from_secs(1);

async fn worker_loop<F, Fut>(
    queue: WorkQueue,
    concurrency: usize,
    handler: Arc<F>,
    mut stopped: watch::Receiver<bool>,
) -> JoinSet<()>
where
    F: Fn(Arc<Job>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut jobs = JoinSet::new();
    loop {
        while jobs.try_join_next().is_some() {}
        // Take a slot before receiving, so no job waits unprocessed (and
        // burns its ack wait) while every slot is busy.
        let slot = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return jobs,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => return jobs,
            },
        };
        let received = tokio::select! {
            biased;
            _ = stopped.wait_for(|s| *s) => return jobs,
            r = queue.receive(WORKER_POLL) => r,
        };
        let job = match received {
            Ok(Some(job)) => Arc::new(job),
            Ok(None) => continue,
            Err(e) if e.is_retryable() => {
                tracing::warn!(queue = queue.name(), error = %e, "worker receive failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(queue = queue.name(), error = %e, "worker stops receiving");
                return jobs;
            }
        };
        let span = tracing::info_span!(
            "plane.job",
            queue = queue.name(),
            job = job.id,
            attempt = job.attempt,
            trace_id = job.trace_context().map(|t| t.trace_id()),
        );
        let handler = handler.clone();
        let run = async move {
            let _slot = slot;
            let outcome = match job.trace_context() {
                Some(ctx) => ctx.child().scope(handler(job.clone())).await,
                None => handler(job.clone()).await,
            };
            let settled = match outcome {
                Ok(()) => job.ack().await,
                Err(e) => {
                    tracing::debug!(error = %e, "job failed; handing it back");
                    job.nack(None).await
                }
            };
            match settled {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyAcked => {}
                Err(e) => tracing::warn!(error = %e, "could not settle a job"),
            }
        };
        jobs.spawn(tracing::Instrument::instrument(run, span));
    }
}

/// A running queue worker (see [`WorkQueue::run_worker`]). Dropping it stops
/// receiving and aborts jobs in process, as a crashed worker would: their
/// jobs are not acked and come back after the ack wait.
#[derive(Debug)]
pub struct Worker {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<JoinSet<()>>>,
}

impl Worker {
    /// Stop receiving, let jobs in process finish (and be settled) for up
    /// to `grace`, then abort the rest, whose jobs are not acked and so are
    /// delivered again after their ack wait. Returns how many were aborted.
    pub async fn drain(mut self, grace: Duration) -> usize {
        let _ = self.stop.send(true);
        let Some(task) = self.task.take() else {
            return 0;
        };
        let mut jobs = match task.await {
            Ok(jobs) => jobs,
            Err(_) => return 0,
        };
        let _ =
            tokio::time::timeout(grace, async { while jobs.join_next().await.is_some() {} }).await;
        let left = jobs.len();
        jobs.shutdown().await;
        left
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Aborting the loop drops its job set, which aborts every job.
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
