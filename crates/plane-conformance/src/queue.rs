//! Conformance cases of the queue section.
//!
//! Every case works on its own queues (`cx.name`) and deletes them
//! afterwards, whatever the outcome. Ack waits are short (300 ms to 1 s) so
//! redelivery cases stay fast; "eventually" waits are long (`WAIT`) so they
//! hold on a networked broker too. Timing is asserted only where the catalog
//! orders events in time, and then with slack.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::task::JoinSet;

use plane_core::message::names;
use plane_core::message::{Headers, Message};
use plane_core::queue::{Job, QueueConfig, WorkQueue};
use plane_core::{ErrorKind, Queues, Result};

use crate::{case, check, check_eq, check_kind, skip, within, Case, CaseResult, Ctx, Verdict};

/// The queue cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("queue", enqueue_dequeue_roundtrip),
        case!("queue", each_job_to_one_worker),
        case!("queue", receive_respects_deadline),
        case!("queue", unacked_redelivered_after_deadline),
        case!("queue", ack_prevents_redelivery),
        case!("queue", nack_requeues),
        case!("queue", double_ack_rejected),
        case!("queue", extend_ack_deadline),
        case!("queue", dead_letter_after_max_deliveries),
        case!("queue", worker_crash_mid_job_redelivered),
        case!("queue", broadcast_consumers_each_get_all),
        case!("queue", purge_and_depth),
        case!("queue", broker_restart_keeps_jobs),
        case!("queue", unsupported_ops_refused),
    ]
}

/// How long a receive may take for a job that should be there "now" or
/// "eventually" (after an ack wait or a delay). Receives return as soon as a
/// job arrives, so this only costs time when a case fails.
const WAIT: Duration = Duration::from_secs(5);

/// A short ack wait for the redelivery cases.
const SHORT_ACK_WAIT: Duration = Duration::from_millis(300);

/// Create the case's queue.
async fn queue<'a>(cx: &Ctx<'a>, config: QueueConfig) -> Result<(&'a Queues, WorkQueue), Verdict> {
    let queues = cx.queues()?;
    let queue = queues.create_queue(config).await?;
    Ok((queues, queue))
}

/// Delete the case's queues whatever the case's outcome; a failed case keeps
/// its own verdict, a failed delete fails an otherwise passing case.
async fn cleanup(result: CaseResult, queues: &Queues, names: &[&str]) -> CaseResult {
    let mut deleted = Ok(());
    for name in names {
        let outcome = queues.delete_queue(name).await;
        if deleted.is_ok() {
            deleted = outcome;
        }
    }
    result?;
    deleted.map_err(Verdict::from)
}

/// The next job, which must arrive within [`WAIT`].
async fn expect_job(queue: &WorkQueue, what: &str) -> Result<Job, Verdict> {
    match queue.receive(WAIT).await? {
        Some(job) => Ok(job),
        None => Err(Verdict::Fail(format!("no job within {WAIT:?}: {what}"))),
    }
}

/// Fail if a job arrives within `wait`.
async fn expect_none(queue: &WorkQueue, wait: Duration, what: &str) -> CaseResult {
    if let Some(job) = queue.receive(wait).await? {
        return Err(Verdict::Fail(format!(
            "job {} (attempt {}) arrived within {wait:?}: {what}",
            job.id, job.attempt
        )));
    }
    Ok(())
}

async fn enqueue_dequeue_roundtrip(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let (queues, wq) = queue(cx, QueueConfig::new(&name)).await?;
    let result = async {
        let headers = Headers::new()
            .with("x-job-kind", "resize")
            .with("x-ünïcode", "välue with spaces");
        let body = Bytes::from_static(b"\x00\x01binary\xff body");
        let id = wq
            .enqueue(Message::new(headers.clone(), body.clone()))
            .await?;

        let job = expect_job(&wq, "the enqueued job").await?;
        check_eq!(job.id, id);
        check_eq!(job.attempt, 1);
        check_eq!(job.body().to_bytes(), body);
        for (name, value) in headers.iter() {
            check_eq!(job.headers().get(name), Some(value), "header `{name}`");
        }
        job.ack().await?;
        expect_none(&wq, Duration::from_millis(200), "only one job was enqueued").await
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn each_job_to_one_worker(cx: &Ctx<'_>) -> CaseResult {
    const WORKERS: usize = 4;
    const JOBS: u32 = 200;
    let name = cx.name("q");
    // Long enough that no job is redelivered while it is being acked, so
    // every acked job must have been handled exactly once.
    let config = QueueConfig::new(&name).ack_wait(Duration::from_secs(10));
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        let handled: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
        let acked = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for _ in 0..WORKERS {
            let (wq, handled, acked) = (wq.clone(), handled.clone(), acked.clone());
            workers.spawn(async move {
                while acked.load(Ordering::SeqCst) < JOBS as usize {
                    let Some(job) = wq.receive(Duration::from_millis(200)).await? else {
                        continue;
                    };
                    let n: u32 = std::str::from_utf8(&job.body().to_bytes())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(u32::MAX);
                    *handled
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .entry(n)
                        .or_default() += 1;
                    // Give the other workers a chance at the next job.
                    tokio::task::yield_now().await;
                    job.ack().await?;
                    acked.fetch_add(1, Ordering::SeqCst);
                }
                Ok::<_, plane_core::Error>(())
            });
        }
        for n in 0..JOBS {
            wq.enqueue(n.to_string()).await?;
        }
        while let Some(joined) = within(
            Duration::from_secs(30),
            "the workers to ack every job",
            workers.join_next(),
        )
        .await?
        {
            joined.map_err(|e| Verdict::Fail(format!("worker task failed: {e}")))??;
        }
        let handled = std::mem::take(&mut *handled.lock().unwrap_or_else(|p| p.into_inner()));
        check_eq!(handled.len(), JOBS as usize, "distinct jobs handled");
        for n in 0..JOBS {
            check_eq!(handled.get(&n), Some(&1), "times job {n} was handled");
        }
        expect_none(&wq, Duration::from_millis(500), "every job was acked").await?;
        if queues.capabilities().depth {
            check_eq!(wq.depth().await?, 0);
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn receive_respects_deadline(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let (queues, wq) = queue(cx, QueueConfig::new(&name)).await?;
    let result = async {
        let wait = Duration::from_millis(300);
        let start = Instant::now();
        let received = within(
            Duration::from_secs(5),
            "an empty receive to return",
            wq.receive(wait),
        )
        .await??;
        let took = start.elapsed();
        check!(received.is_none(), "an empty queue produced a job");
        check!(
            took >= wait - Duration::from_millis(30),
            "returned after {took:?}, before the {wait:?} wait"
        );
        check!(
            took < wait + Duration::from_secs(3),
            "returned only after {took:?} for a {wait:?} wait"
        );
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn unacked_redelivered_after_deadline(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let config = QueueConfig::new(&name).ack_wait(SHORT_ACK_WAIT);
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        let id = wq.enqueue("slow job").await?;
        // Held (not dropped) but never acked: a stuck worker.
        let first = expect_job(&wq, "the first delivery").await?;
        check_eq!((first.id, first.attempt), (id, 1));
        let second = expect_job(&wq, "the redelivery after the ack wait").await?;
        check_eq!(second.id, id);
        check_eq!(second.attempt, 2);
        check_eq!(second.body().to_bytes(), "slow job");
        second.ack().await?;
        drop(first);
        expect_none(&wq, SHORT_ACK_WAIT * 2, "the redelivery was acked").await
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn ack_prevents_redelivery(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let config = QueueConfig::new(&name).ack_wait(SHORT_ACK_WAIT);
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        wq.enqueue("once").await?;
        let job = expect_job(&wq, "the job").await?;
        job.ack().await?;
        expect_none(&wq, SHORT_ACK_WAIT * 2, "the job was acked").await?;
        if queues.capabilities().depth {
            check_eq!(wq.depth().await?, 0);
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn nack_requeues(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    // Long ack wait: a redelivery here can only come from the nack.
    let config = QueueConfig::new(&name).ack_wait(Duration::from_secs(30));
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        let id = wq.enqueue("retry me").await?;
        let job = expect_job(&wq, "the first delivery").await?;
        job.nack(None).await?;
        let job = expect_job(&wq, "the job after a nack").await?;
        check_eq!((job.id, job.attempt), (id, 2));
        check_eq!(job.body().to_bytes(), "retry me");

        if queues.capabilities().nack_delay {
            let delay = Duration::from_millis(500);
            let nacked = Instant::now();
            job.nack(Some(delay)).await?;
            let job = expect_job(&wq, "the job after a delayed nack").await?;
            let took = nacked.elapsed();
            check!(
                took >= delay - Duration::from_millis(50),
                "redelivered after {took:?}, before the {delay:?} delay"
            );
            check_eq!((job.id, job.attempt), (id, 3));
            job.ack().await?;
        } else {
            job.ack().await?;
        }
        expect_none(&wq, Duration::from_millis(300), "the job was acked").await
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn double_ack_rejected(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let (queues, wq) = queue(cx, QueueConfig::new(&name)).await?;
    let result = async {
        let extend = queues.capabilities().extend;
        wq.enqueue("acked").await?;
        let job = expect_job(&wq, "the job to ack").await?;
        job.ack().await?;
        check_kind!(job.ack().await, ErrorKind::AlreadyAcked);
        check_kind!(job.nack(None).await, ErrorKind::AlreadyAcked);
        if extend {
            check_kind!(job.extend().await, ErrorKind::AlreadyAcked);
        }

        let id = wq.enqueue("nacked").await?;
        let job = expect_job(&wq, "the job to nack").await?;
        job.nack(None).await?;
        check_kind!(job.ack().await, ErrorKind::AlreadyAcked);
        check_kind!(job.nack(None).await, ErrorKind::AlreadyAcked);
        if extend {
            check_kind!(job.extend().await, ErrorKind::AlreadyAcked);
        }
        // The rejected settlements changed nothing: the nack stands.
        let again = expect_job(&wq, "the nacked job").await?;
        check_eq!((again.id, again.attempt), (id, 2));
        again.ack().await?;
        expect_none(&wq, Duration::from_millis(300), "both jobs were acked").await
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn extend_ack_deadline(cx: &Ctx<'_>) -> CaseResult {
    let queues = cx.queues()?;
    if !queues.capabilities().extend {
        skip!("backend does not declare `extend`");
    }
    let ack_wait = Duration::from_millis(500);
    let name = cx.name("q");
    let (queues, wq) = queue(cx, QueueConfig::new(&name).ack_wait(ack_wait)).await?;
    let result = async {
        let id = wq.enqueue("long job").await?;
        let job = expect_job(&wq, "the long job").await?;
        // Work for well over two ack waits, extending every 100 ms, while a
        // competing worker waits for the job the whole time.
        let work = Duration::from_millis(1200);
        // In a JoinSet so that an early failure aborts the competitor.
        let mut competitor = JoinSet::new();
        {
            let wq = wq.clone();
            competitor.spawn(async move { wq.receive(work).await });
        }
        let start = Instant::now();
        while start.elapsed() < work {
            tokio::time::sleep(Duration::from_millis(100)).await;
            job.extend().await?;
        }
        job.ack().await?;
        let stolen = within(WAIT, "the competing receive", competitor.join_next())
            .await?
            .ok_or_else(|| Verdict::Fail("the competing receive vanished".into()))?
            .map_err(|e| Verdict::Fail(format!("competing receive task failed: {e}")))??;
        if let Some(stolen) = stolen {
            return Err(Verdict::Fail(format!(
                "an extended job was handed to another worker (job {}, attempt {}; ours was {id})",
                stolen.id, stolen.attempt
            )));
        }
        expect_none(&wq, ack_wait * 2, "the extended job was acked").await
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn dead_letter_after_max_deliveries(cx: &Ctx<'_>) -> CaseResult {
    let queues = cx.queues()?;
    if !queues.capabilities().dead_letter {
        skip!("backend does not declare `dead_letter`");
    }
    let dlq_name = cx.name("dlq");
    let name = cx.name("q");
    let dlq = queues.create_queue(QueueConfig::new(&dlq_name)).await?;
    let config = QueueConfig::new(&name)
        .ack_wait(SHORT_ACK_WAIT)
        .max_deliver(2)
        .dead_letter(&dlq_name);
    let result = async {
        let wq = queues.create_queue(config).await?;
        let headers = Headers::new().with("x-order", "42");
        wq.enqueue(Message::new(headers, "poison")).await?;

        // One delivery nacked, the last one left to time out: both count.
        let first = expect_job(&wq, "the first delivery").await?;
        check_eq!(first.attempt, 1);
        first.nack(None).await?;
        let second = expect_job(&wq, "the second delivery").await?;
        check_eq!(second.attempt, 2);

        let dead = expect_job(&dlq, "the job in the dead-letter queue").await?;
        check_eq!(dead.body().to_bytes(), "poison");
        check_eq!(dead.headers().get("x-order"), Some("42"));
        check_eq!(
            dead.headers().get(names::DEAD_LETTER_QUEUE),
            Some(name.as_str())
        );
        check_eq!(dead.headers().get(names::DEAD_LETTER_DELIVERIES), Some("2"));
        dead.ack().await?;
        drop(second);

        expect_none(&wq, SHORT_ACK_WAIT * 2, "the job was dead-lettered").await?;
        expect_none(
            &dlq,
            Duration::from_millis(200),
            "one job was dead-lettered",
        )
        .await?;
        if queues.capabilities().depth {
            check_eq!(wq.depth().await?, 0, "depth of the original queue");
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name, &dlq_name]).await
}

async fn worker_crash_mid_job_redelivered(cx: &Ctx<'_>) -> CaseResult {
    let name = cx.name("q");
    let config = QueueConfig::new(&name).ack_wait(SHORT_ACK_WAIT);
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        let id = wq.enqueue("crash test").await?;
        // A worker takes the job and dies mid-processing: its task is
        // aborted and the job dropped without ack or nack.
        let (took, taken) = tokio::sync::oneshot::channel();
        // In a JoinSet so that it is aborted even if the case fails early.
        let mut worker = JoinSet::new();
        {
            let wq = wq.clone();
            worker.spawn(async move {
                let job = wq.receive(WAIT).await;
                let _ = took.send(
                    job.as_ref()
                        .map(|j| j.as_ref().map(|j| j.id))
                        .map_err(|e| e.kind()),
                );
                std::future::pending::<()>().await;
                drop(job);
            });
        }
        let taken = within(WAIT, "the crashing worker to take the job", taken)
            .await?
            .map_err(|_| Verdict::Fail("the crashing worker ended early".into()))?;
        worker.abort_all();
        while worker.join_next().await.is_some() {}
        check_eq!(taken, Ok(Some(id)), "what the crashing worker received");

        let job = expect_job(&wq, "the job after its worker crashed").await?;
        check_eq!(job.id, id);
        check_eq!(job.attempt, 2);
        job.ack().await?;
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn broadcast_consumers_each_get_all(cx: &Ctx<'_>) -> CaseResult {
    const JOBS: u32 = 20;
    let queues = cx.queues()?;
    if !queues.capabilities().broadcast {
        skip!("backend does not declare `broadcast`");
    }
    let name = cx.name("q");
    let config = QueueConfig::new(&name)
        .broadcast(["indexer", "auditor"])
        .ack_wait(Duration::from_secs(10));
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        check_kind!(
            wq.receive_as("stranger", Duration::from_millis(100)).await,
            ErrorKind::NotFound
        );
        for n in 0..JOBS {
            wq.enqueue(n.to_string()).await?;
        }
        // Two workers share the indexer's copy; one worker is the auditor.
        let seen: Arc<Mutex<Vec<(&'static str, u32)>>> = Arc::default();
        let mut workers = JoinSet::new();
        for consumer in ["indexer", "indexer", "auditor"] {
            let (wq, seen) = (wq.clone(), seen.clone());
            workers.spawn(async move {
                let count = |seen: &Mutex<Vec<(&str, u32)>>| {
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .iter()
                        .filter(|(c, _)| *c == consumer)
                        .count()
                };
                while count(&seen) < JOBS as usize {
                    let Some(job) = wq.receive_as(consumer, Duration::from_millis(200)).await?
                    else {
                        continue;
                    };
                    let n = std::str::from_utf8(&job.body().to_bytes())
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(u32::MAX);
                    seen.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((consumer, n));
                    job.ack().await?;
                }
                Ok::<_, plane_core::Error>(())
            });
        }
        while let Some(joined) = within(
            Duration::from_secs(20),
            "every consumer to get every job",
            workers.join_next(),
        )
        .await?
        {
            joined.map_err(|e| Verdict::Fail(format!("worker task failed: {e}")))??;
        }
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|p| p.into_inner()));
        let all: BTreeSet<u32> = (0..JOBS).collect();
        for consumer in ["indexer", "auditor"] {
            let got: Vec<u32> = seen
                .iter()
                .filter(|(c, _)| *c == consumer)
                .map(|(_, n)| *n)
                .collect();
            let distinct: BTreeSet<u32> = got.iter().copied().collect();
            check_eq!(distinct, all, "jobs received by `{consumer}`");
            check_eq!(
                got.len(),
                JOBS as usize,
                "`{consumer}` got a job twice: {got:?}"
            );
        }
        if queues.capabilities().depth {
            check_eq!(wq.depth().await?, 0);
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn purge_and_depth(cx: &Ctx<'_>) -> CaseResult {
    let queues = cx.queues()?;
    let caps = queues.capabilities().clone();
    if !caps.purge && !caps.depth {
        skip!("backend declares neither `purge` nor `depth`");
    }
    let name = cx.name("q");
    let config = QueueConfig::new(&name).ack_wait(SHORT_ACK_WAIT);
    let (queues, wq) = queue(cx, config).await?;
    let result = async {
        if caps.depth {
            check_eq!(wq.depth().await?, 0, "depth of a new queue");
        }
        for n in 0..5 {
            wq.enqueue(format!("job {n}")).await?;
        }
        if caps.depth {
            check_eq!(wq.depth().await?, 5, "after 5 enqueues");
        }
        let done = expect_job(&wq, "a job to ack").await?;
        let in_flight = expect_job(&wq, "a job to hold").await?;
        if caps.depth {
            check_eq!(wq.depth().await?, 5, "jobs in flight still count");
        }
        done.ack().await?;
        if caps.depth {
            check_eq!(wq.depth().await?, 4, "after one ack");
        }
        if caps.purge {
            // Purge removes everything stored, the job in flight included.
            check_eq!(wq.purge().await?, 4, "jobs purged");
            if caps.depth {
                check_eq!(wq.depth().await?, 0, "after purge");
            }
            // Not even the purged job in flight comes back after its ack wait.
            expect_none(&wq, SHORT_ACK_WAIT * 2, "the queue was purged").await?;
            drop(in_flight);
            // The queue keeps working after a purge.
            wq.enqueue("after purge").await?;
            if caps.depth {
                check_eq!(wq.depth().await?, 1, "after purge and one enqueue");
            }
            let job = expect_job(&wq, "the job enqueued after the purge").await?;
            check_eq!(job.body().to_bytes(), "after purge");
            job.ack().await?;
        } else {
            in_flight.ack().await?;
            check_eq!(wq.depth().await?, 3, "after two acks");
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn broker_restart_keeps_jobs(cx: &Ctx<'_>) -> CaseResult {
    const JOBS: u32 = 3;
    let name = cx.name("q");
    let (queues, wq) = queue(cx, QueueConfig::new(&name)).await?;
    let result = async {
        for n in 0..JOBS {
            wq.enqueue(format!("job {n}")).await?;
        }
        cx.restart().await?;
        let mut got = BTreeSet::new();
        for _ in 0..JOBS {
            // Reconnecting may take a while after a restart.
            let Some(job) = wq.receive(Duration::from_secs(15)).await? else {
                break;
            };
            got.insert(String::from_utf8_lossy(&job.body().to_bytes()).into_owned());
            job.ack().await?;
        }
        let expected: BTreeSet<String> = (0..JOBS).map(|n| format!("job {n}")).collect();
        check_eq!(got, expected, "jobs received after the restart");
        Ok(())
    }
    .await;
    cleanup(result, queues, &[&name]).await
}

async fn unsupported_ops_refused(cx: &Ctx<'_>) -> CaseResult {
    let queues = cx.queues()?;
    let caps = queues.capabilities().clone();
    let name = cx.name("q");
    let broadcast_name = cx.name("bq");
    let dlq_name = cx.name("dlq");
    let dead_name = cx.name("dq");
    let (queues, wq) = queue(cx, QueueConfig::new(&name)).await?;
    let mut created = vec![name.as_str()];
    let result = async {
        let broadcast = queues
            .create_queue(QueueConfig::new(&broadcast_name).broadcast(["only"]))
            .await;
        if caps.broadcast {
            created.push(&broadcast_name);
            check!(
                broadcast.is_ok(),
                "broadcast is declared but refused: {broadcast:?}"
            );
        } else {
            check_kind!(broadcast, ErrorKind::Unsupported);
        }

        if caps.dead_letter {
            queues.create_queue(QueueConfig::new(&dlq_name)).await?;
            created.push(&dlq_name);
        }
        let dead = queues
            .create_queue(
                QueueConfig::new(&dead_name)
                    .max_deliver(1)
                    .dead_letter(&dlq_name),
            )
            .await;
        if caps.dead_letter {
            created.push(&dead_name);
            check!(
                dead.is_ok(),
                "dead_letter is declared but refused: {dead:?}"
            );
        } else {
            check_kind!(dead, ErrorKind::Unsupported);
        }

        wq.enqueue("probe").await?;
        let job = expect_job(&wq, "the probe job").await?;
        let extended = job.extend().await;
        if caps.extend {
            check!(
                extended.is_ok(),
                "extend is declared but failed: {extended:?}"
            );
        } else {
            check_kind!(extended, ErrorKind::Unsupported);
        }
        let nacked = job.nack(Some(Duration::from_millis(10))).await;
        if caps.nack_delay {
            check!(
                nacked.is_ok(),
                "nack_delay is declared but failed: {nacked:?}"
            );
            let job = expect_job(&wq, "the probe job after a delayed nack").await?;
            job.ack().await?;
        } else {
            check_kind!(nacked, ErrorKind::Unsupported);
            // The refused nack settled nothing.
            job.ack().await?;
        }

        let purged = wq.purge().await;
        if caps.purge {
            check!(purged.is_ok(), "purge is declared but failed: {purged:?}");
        } else {
            check_kind!(purged, ErrorKind::Unsupported);
        }
        let depth = wq.depth().await;
        if caps.depth {
            check!(depth.is_ok(), "depth is declared but failed: {depth:?}");
        } else {
            check_kind!(depth, ErrorKind::Unsupported);
        }
        Ok(())
    }
    .await;
    cleanup(result, queues, &created).await
}
