//! Work queue handle behaviour that needs a backend, over the in-memory one.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plane_core::queue::*;
use plane_core::{Error, ErrorKind, Result};
use plane_mem::{Hub, MemConfig};

async fn queue(name: &str) -> WorkQueue {
    Hub::new()
        .queues(&MemConfig::default())
        .create_queue(QueueConfig::new(name).ack_wait(Duration::from_millis(200)))
        .await
        .unwrap()
}

async fn until(cond: impl Fn() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("condition within 5 s");
}

#[tokio::test]
async fn a_drained_worker_finishes_jobs_in_process_and_takes_no_more() {
    let q = queue("drain").await;
    for body in ["a", "b", "c"] {
        q.enqueue(body).await.unwrap();
    }
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let worker = q
        .run_worker(2, move |_job| {
            s.fetch_add(1, Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(())
            }
        })
        .unwrap();
    until(|| started.load(Ordering::SeqCst) == 2).await;
    assert_eq!(worker.drain(Duration::from_secs(5)).await, 0);
    assert_eq!(started.load(Ordering::SeqCst), 2, "no job after the drain");
    assert_eq!(q.depth().await.unwrap(), 1, "both finished jobs were acked");
    let left = q.receive(Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(left.body().to_bytes(), "c");
    assert_eq!(left.attempt, 1, "the third job was never taken");
    left.ack().await.unwrap();
}

#[tokio::test]
async fn jobs_unfinished_at_the_end_of_the_grace_come_back() {
    let q = queue("stuck").await;
    q.enqueue("forever").await.unwrap();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let worker = q
        .run_worker(1, move |_job| {
            s.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<()>>()
        })
        .unwrap();
    until(|| started.load(Ordering::SeqCst) == 1).await;
    assert_eq!(worker.drain(Duration::from_millis(20)).await, 1);
    let again = q.receive(Duration::from_secs(5)).await.unwrap().unwrap();
    assert_eq!(again.attempt, 2, "redelivered after its ack wait");
    again.ack().await.unwrap();
    assert!(q.run_worker(0, |_job| async { Ok(()) }).is_err());
}

#[tokio::test]
async fn failed_jobs_are_handed_back() {
    let q = queue("fails").await;
    q.enqueue("x").await.unwrap();
    let attempts = Arc::new(std::sync::Mutex::new(Vec::new()));
    let a = attempts.clone();
    let worker = q
        .run_worker(1, move |job| {
            a.lock().unwrap().push(job.attempt);
            let fail = job.attempt == 1;
            async move {
                if fail {
                    Err(Error::new(ErrorKind::Other, "first try fails"))
                } else {
                    Ok(())
                }
            }
        })
        .unwrap();
    until(|| attempts.lock().unwrap().len() == 2).await;
    assert_eq!(worker.drain(Duration::from_secs(5)).await, 0);
    assert_eq!(*attempts.lock().unwrap(), vec![1, 2]);
    assert_eq!(q.depth().await.unwrap(), 0);
}
