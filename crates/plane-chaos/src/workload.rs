//! The workload: what plane clients do against the cluster while faults
//! happen, each operation recorded in the [`History`] with its outcome.
//!
//! The coordinator process publishes durable events, enqueues jobs,
//! increments a kv counter by compare-and-swap from two clients, and calls
//! an endpoint it serves itself, each role on a session (so a connection)
//! of its own, so the roles are spread over the cluster's nodes. The
//! consuming side, a durable consumer and a queue worker that ack only after
//! reporting, runs in a separate OS process ([`consume`]) so that it can be
//! killed with SIGKILL in the middle of a message.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plane_core::events::{ConsumerConfig, StreamConfig};
use plane_core::kv::{Bucket, BucketConfig};
use plane_core::queue::{QueueConfig, WorkQueue};
use plane_core::request::{unary_fn, Call, Request};
use plane_core::{Error, ErrorKind, Events, Registry, Requests, Session};
use tokio::task::JoinHandle;

use crate::history::{from_jsonl, History, Outcome, Record};

/// How long a JetStream request (a durable publish, a kv write, an
/// enqueue) waits for its answer; passed to plane as `jetstream_timeout_ms`.
pub const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// A call's deadline.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Ack wait of the durable consumer and the queue: how soon a message
/// whose consumer died is delivered again.
pub const ACK_WAIT: Duration = Duration::from_secs(3);
/// The client settings every session of a run adds to the cluster URL. A
/// paused or cut-off server keeps its TCP connections open, so only the
/// client's pings notice it: 1 s pings, 2 outstanding, is 3 s to fail over
/// (with the default 60 s it would be three minutes).
pub const CLIENT_SETTINGS: &str =
    "jetstream_timeout_ms=2000&ping_interval_ms=1000&pings_outstanding=2";

/// A durable publish and an enqueue may take two JetStream round trips
/// (plane asks which stream captures the subject when a publish finds no
/// responder), a kv increment a read and a write: each is bounded by two
/// JetStream timeouts.
fn jetstream_bound_ms() -> u64 {
    2 * JETSTREAM_TIMEOUT.as_millis() as u64
}

/// The names one run uses, fresh per run so runs never see each other's
/// data.
#[derive(Debug, Clone)]
pub struct Names {
    /// The durable stream.
    pub stream: String,
    /// The subject published to.
    pub subject: String,
    /// The work queue.
    pub queue: String,
    /// The kv bucket holding the counter.
    pub bucket: String,
    /// The endpoint called.
    pub endpoint: String,
}

impl Names {
    /// The names for run `run` of fault `fault`.
    pub fn new(fault: &str, run: usize) -> Names {
        let tag = format!("{}_{run:02}", fault.replace('-', "_"));
        Names {
            stream: format!("chaos_{tag}"),
            subject: format!("chaos.{tag}.events"),
            queue: format!("chaos_{tag}_jobs"),
            bucket: format!("chaos_{tag}_kv"),
            endpoint: format!("chaos.{tag}.echo"),
        }
    }
}

/// The counter's key.
const COUNTER: &str = "counter";
/// The durable consumer's name.
const CONSUMER: &str = "audit";

/// A registry that knows the NATS backend.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

fn since(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Create the run's stream, queue and bucket (the counter at 0). Retried,
/// since the cluster may still be settling after the previous run's fault.
pub async fn set_up(url: &str, names: &Names) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let attempt = async {
            let session = registry().connect(url).await?;
            let events = session.events().await?;
            events
                .create_stream(StreamConfig::new(&names.stream, [names.subject.as_str()]))
                .await?;
            let queues = session.queues().await?;
            queues
                .create_queue(QueueConfig::new(&names.queue).ack_wait(ACK_WAIT))
                .await?;
            let bucket = session
                .kv()
                .await?
                .create_bucket(BucketConfig::new(&names.bucket))
                .await?;
            bucket.put(COUNTER, "0").await?;
            Ok::<(), Error>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(e) => {
                eprintln!("plane-chaos: setting up {} again: {e}", names.stream);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Remove the run's stream, queue and bucket (best effort: a failed
/// clean-up only leaves data no later run reads).
pub async fn tear_down(url: &str, names: &Names) {
    let Ok(session) = registry().connect(url).await else {
        return;
    };
    if let Ok(events) = session.events().await {
        let _ = events.delete_stream(&names.stream).await;
    }
    if let Ok(queues) = session.queues().await {
        let _ = queues.delete_queue(&names.queue).await;
    }
    if let Ok(kv) = session.kv().await {
        let _ = kv.delete_bucket(&names.bucket).await;
    }
}

/// The coordinator's roles, running until [`Roles::stop`].
pub struct Roles {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    // Keeps the endpoint served (and its session open) for the run.
    _server: plane_core::request::Server,
    _sessions: Vec<Session>,
}

impl Roles {
    /// Connect every role and start it.
    pub async fn start(url: &str, names: &Names, history: &History) -> Result<Roles, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sessions = Vec::new();
        let mut tasks = Vec::new();
        let server_session = registry().connect(url).await?;
        let server = server_session
            .requests()
            .await?
            .serve(
                &names.endpoint,
                unary_fn(|r: Request| async move { Ok(r.body().to_bytes()) }),
            )
            .await?;
        sessions.push(server_session);

        let session = registry().connect(url).await?;
        tasks.push(tokio::spawn(publisher(
            session.events().await?,
            names.clone(),
            history.clone(),
            stop.clone(),
        )));
        sessions.push(session);

        let session = registry().connect(url).await?;
        let queue = session.queues().await?.open_queue(&names.queue).await?;
        tasks.push(tokio::spawn(enqueuer(queue, history.clone(), stop.clone())));
        sessions.push(session);

        for _ in 0..2 {
            let session = registry().connect(url).await?;
            let bucket = session.kv().await?.open_bucket(&names.bucket).await?;
            tasks.push(tokio::spawn(incrementer(
                bucket,
                history.clone(),
                stop.clone(),
            )));
            sessions.push(session);
        }

        let session = registry().connect(url).await?;
        tasks.push(tokio::spawn(caller(
            session.requests().await?,
            names.endpoint.clone(),
            history.clone(),
            stop.clone(),
        )));
        sessions.push(session);

        Ok(Roles {
            stop,
            tasks,
            _server: server,
            _sessions: sessions,
        })
    }

    /// Stop every role after its current operation (each is bounded by its
    /// deadline) and wait for them.
    pub async fn stop(self) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// A short pause between operations, longer after a failure so a role does
/// not spin while the cluster has no leader.
async fn pace(ok: bool, every: Duration) {
    let wait = if ok { every } else { Duration::from_millis(50) };
    tokio::time::sleep(wait).await;
}

/// Run `op` on ids 0, 1, 2, … until `stop`, pacing by `every`, and record
/// each outcome with `record(id, outcome, t_ms, took_ms)`. An `op` that
/// returns `None` did nothing worth recording (a read that failed).
async fn repeat<F, Fut, T>(
    history: History,
    stop: Arc<AtomicBool>,
    every: Duration,
    mut op: F,
    record: fn(u64, T, u64, u64) -> Record,
) where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
    T: Done,
{
    let mut id = 0u64;
    while !stop.load(Ordering::Acquire) {
        let (t_ms, started) = (history.now(), Instant::now());
        let Some(done) = op(id).await else {
            pace(false, every).await;
            continue;
        };
        let ok = done.outcome().is_ok();
        history.push(record(id, done, t_ms, since(started)));
        id += 1;
        pace(ok, every).await;
    }
}

/// What one operation of a role came to: its outcome, and whatever else
/// its record keeps.
trait Done {
    fn outcome(&self) -> &Outcome;
}

impl Done for Outcome {
    fn outcome(&self) -> &Outcome {
        self
    }
}

/// An increment: the value and revision it read, and what its write did.
struct Incremented {
    outcome: Outcome,
    read: u64,
    read_revision: u64,
    wrote_revision: Option<u64>,
}

impl Done for Incremented {
    fn outcome(&self) -> &Outcome {
        &self.outcome
    }
}

/// Durable publishes of ids 0, 1, 2, …, each once (never retried: a retry
/// would be the application's duplicate, not the system's), each with its
/// id as the message id.
async fn publisher(events: Events, names: Names, history: History, stop: Arc<AtomicBool>) {
    let op = |id: u64| {
        let (events, subject) = (events.clone(), names.subject.clone());
        async move {
            let body = id.to_string();
            let result = events
                .publish_durable(&subject, body.clone(), Some(&body))
                .await;
            Some(Outcome::of(&result))
        }
    };
    repeat(
        history,
        stop,
        Duration::from_millis(10),
        op,
        |id, outcome, t_ms, took_ms| Record::Publish {
            id,
            outcome,
            t_ms,
            took_ms,
            bound_ms: jetstream_bound_ms(),
        },
    )
    .await;
}

/// Jobs whose body is their id.
async fn enqueuer(queue: WorkQueue, history: History, stop: Arc<AtomicBool>) {
    let op = |id: u64| {
        let queue = queue.clone();
        async move { Some(Outcome::of(&queue.enqueue(id.to_string()).await)) }
    };
    repeat(
        history,
        stop,
        Duration::from_millis(20),
        op,
        |id, outcome, t_ms, took_ms| Record::Enqueue {
            id,
            outcome,
            t_ms,
            took_ms,
            bound_ms: jetstream_bound_ms(),
        },
    )
    .await;
}

/// Read the counter, write it plus one if its revision is unchanged. A
/// read that fails writes nothing and is not an increment.
async fn incrementer(bucket: Bucket, history: History, stop: Arc<AtomicBool>) {
    let op = |_| {
        let bucket = bucket.clone();
        async move {
            let entry = bucket.get(COUNTER).await.ok()??;
            let Some(n) = std::str::from_utf8(&entry.value)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            else {
                eprintln!("plane-chaos: the counter holds {:?}", entry.value);
                return None;
            };
            let result = bucket
                .update(COUNTER, (n + 1).to_string(), entry.revision)
                .await;
            Some(Incremented {
                outcome: Outcome::of(&result),
                read: n,
                read_revision: entry.revision,
                wrote_revision: result.ok(),
            })
        }
    };
    repeat(
        history,
        stop,
        Duration::from_millis(20),
        op,
        |_, done, t_ms, took_ms| Record::Increment {
            outcome: done.outcome,
            t_ms,
            took_ms,
            bound_ms: jetstream_bound_ms(),
            read: Some(done.read),
            read_revision: Some(done.read_revision),
            wrote_revision: done.wrote_revision,
        },
    )
    .await;
}

/// Calls whose reply must be their own body.
async fn caller(requests: Requests, endpoint: String, history: History, stop: Arc<AtomicBool>) {
    let op = |id: u64| {
        let (requests, endpoint) = (requests.clone(), endpoint.clone());
        async move {
            let body = id.to_string();
            let result = requests
                .call_with(Call::new(&endpoint, body.clone()).timeout(CALL_TIMEOUT))
                .await;
            Some(match &result {
                Ok(reply) if reply.body.to_bytes() == body.as_bytes() => Outcome::Ok,
                Ok(_) => Outcome::Refused {
                    kind: "Mismatch".into(),
                },
                Err(e) => Outcome::of_error(e.kind()),
            })
        }
    };
    repeat(
        history,
        stop,
        Duration::from_millis(20),
        op,
        |id, outcome, t_ms, took_ms| Record::Call {
            id,
            outcome,
            t_ms,
            took_ms,
            bound_ms: CALL_TIMEOUT.as_millis() as u64,
        },
    )
    .await;
}

/// Read the counter once the run is over (retried while the cluster
/// recovers): through plane, and from the stream's leader, with async-nats
/// on `server` (one server's address), since plane's `get` is a direct
/// get, which any replica may answer.
pub async fn read_counter(url: &str, server: &str, names: &Names, history: &History) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let plane_read = retried(deadline, "reading the counter", || {
        counter_through_plane(url, names)
    })
    .await;
    let leader_read = retried(deadline, "reading the counter at the leader", || {
        counter_at_leader(server, names)
    })
    .await;
    history.push(Record::Counter {
        value: plane_read.map(|(v, _)| v),
        t_ms: history.now(),
        revision: plane_read.map(|(_, r)| r),
        leader_value: leader_read.map(|(v, _)| v),
        leader_revision: leader_read.map(|(_, r)| r),
    });
}

/// `read` until it succeeds or `deadline` passes (then `None`, said on
/// standard error).
async fn retried<F, Fut, T>(deadline: Instant, what: &str, mut read: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    loop {
        match read().await {
            Ok(v) => return Some(v),
            Err(e) if Instant::now() > deadline => {
                eprintln!("plane-chaos: {what}: {e}");
                return None;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

fn counter_value(value: &[u8]) -> Result<u64, Error> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| Error::new(ErrorKind::Decode, "the counter is not a number"))
}

/// The counter's value and revision, as plane's kv `get` reads it.
async fn counter_through_plane(url: &str, names: &Names) -> Result<(u64, u64), Error> {
    let session = registry().connect(url).await?;
    let bucket = session.kv().await?.open_bucket(&names.bucket).await?;
    let entry = bucket
        .get(COUNTER)
        .await?
        .ok_or_else(|| Error::new(ErrorKind::NotFound, "the counter is gone"))?;
    Ok((counter_value(&entry.value)?, entry.revision))
}

/// The counter's value and revision at the bucket stream's leader: not a
/// direct get, which any replica may answer, but the stream's own message
/// get.
async fn counter_at_leader(server: &str, names: &Names) -> Result<(u64, u64), Error> {
    let other = |e: &dyn std::fmt::Display| Error::new(ErrorKind::Other, e.to_string());
    let client = async_nats::connect(server).await.map_err(|e| other(&e))?;
    let stream = async_nats::jetstream::new(client)
        .get_stream(format!("KV_{}", names.bucket))
        .await
        .map_err(|e| other(&e))?;
    let m = stream
        .get_last_raw_message_by_subject(&format!("$KV.{}.{COUNTER}", names.bucket))
        .await
        .map_err(|e| other(&e))?;
    Ok((counter_value(&m.payload)?, m.sequence))
}

/// The consumer process (`plane-chaos consume`), seen from the coordinator.
pub struct ConsumerProcess {
    child: Child,
    reader: std::thread::JoinHandle<()>,
}

impl ConsumerProcess {
    /// Start `plane-chaos consume` number `process`; what it reports goes
    /// into `history`, stamped by the coordinator's clock; its stderr to
    /// `log`.
    pub fn spawn(
        url: &str,
        names: &Names,
        process: u32,
        lossy: bool,
        history: &History,
        log: &Path,
    ) -> Result<ConsumerProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut command = Command::new(exe);
        command
            .args(["consume", "--url", url, "--stream", &names.stream])
            .args(["--queue", &names.queue, "--process", &process.to_string()])
            .stdout(Stdio::piped())
            .stderr(log);
        if lossy {
            command.arg("--lossy");
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("starting the consumer process: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let history = history.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                match from_jsonl(&line) {
                    Ok(records) => {
                        for r in records {
                            history.push(r.at(history.now()));
                        }
                    }
                    Err(e) => eprintln!("plane-chaos: the consumer printed {line:?}: {e}"),
                }
            }
        });
        Ok(ConsumerProcess { child, reader })
    }

    /// SIGKILL: no ack, no goodbye. Everything it reported before dying is
    /// in the history once this returns.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.reader.join();
    }
}

/// What `plane-chaos consume` is asked to do.
#[derive(Debug, Clone)]
pub struct ConsumeArgs {
    /// The cluster URL.
    pub url: String,
    /// The stream to consume durably.
    pub stream: String,
    /// The queue to work on.
    pub queue: String,
    /// This process's number (in its reports).
    pub process: u32,
    /// Ack one delivery without reporting it: the lossy consumer the
    /// checker must catch.
    pub lossy: bool,
}

/// Print one record as a line of JSON; the line is flushed before the
/// message is acked, so what the coordinator reads was processed.
fn report(record: &Record) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "{}",
        serde_json::to_string(record).expect("a record serialises")
    );
    let _ = out.flush();
}

fn id_of(body: &[u8]) -> Option<u64> {
    std::str::from_utf8(body).ok()?.parse().ok()
}

/// The consumer process: a durable consumer and a queue worker, each
/// reporting a message before acking it, until killed.
pub async fn consume(args: ConsumeArgs) -> Result<(), Error> {
    let session = registry().connect(&args.url).await?;
    let events = session.events().await?;
    let queues = session.queues().await?;
    let events_task = {
        let args = args.clone();
        tokio::spawn(async move {
            let mut dropped = false;
            loop {
                let config = ConsumerConfig::new(&args.stream, CONSUMER).ack_wait(ACK_WAIT);
                match events.consume(config).await {
                    Ok(mut deliveries) => {
                        while let Some(item) = deliveries.next().await {
                            let d = match item {
                                Ok(d) => d,
                                Err(e) => {
                                    eprintln!("consumer {}: {e}", args.process);
                                    continue;
                                }
                            };
                            let Some(id) = id_of(&d.event.body().to_bytes()) else {
                                eprintln!("consumer {}: a body that is no id", args.process);
                                continue;
                            };
                            if args.lossy && !dropped && id >= 20 && d.attempt == 1 {
                                // Acked, never reported: lost on purpose.
                                dropped = true;
                                eprintln!(
                                    "consumer {}: dropping event {id} on purpose",
                                    args.process
                                );
                            } else {
                                report(&Record::Deliver {
                                    id,
                                    stream_seq: d.stream_sequence,
                                    attempt: d.attempt,
                                    process: args.process,
                                    t_ms: 0,
                                });
                            }
                            if let Err(e) = d.ack().await {
                                eprintln!("consumer {}: ack of {id}: {e}", args.process);
                            }
                        }
                    }
                    Err(e) => eprintln!("consumer {}: {e}", args.process),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    let queue = loop {
        match queues.open_queue(&args.queue).await {
            Ok(q) => break q,
            Err(e) => {
                eprintln!("worker {}: {e}", args.process);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    loop {
        match queue.receive(Duration::from_secs(1)).await {
            Ok(Some(job)) => {
                // The work: long enough that a kill usually lands mid-job.
                tokio::time::sleep(Duration::from_millis(20)).await;
                let Some(id) = id_of(&job.body().to_bytes()) else {
                    eprintln!("worker {}: a job that is no id", args.process);
                    continue;
                };
                report(&Record::Process {
                    id,
                    attempt: job.attempt,
                    process: args.process,
                    t_ms: 0,
                });
                if let Err(e) = job.ack().await {
                    eprintln!("worker {}: ack of job {id}: {e}", args.process);
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("worker {}: {e}", args.process);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        if events_task.is_finished() {
            return Err(Error::new(ErrorKind::Other, "the consumer task ended"));
        }
    }
}
