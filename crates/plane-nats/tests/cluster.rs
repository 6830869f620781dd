//! plane on a three-node JetStream cluster (containers on a docker network
//! the test makes): what plane creates is replicated by default, and
//! killing the node that leads a stream interrupts durable publishing only
//! for the leader election, losing no acknowledged event.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plane_core::events::{ConsumerConfig, StreamConfig};
use plane_core::kv::BucketConfig;
use plane_core::queue::QueueConfig;
use plane_core::{ErrorKind, Registry};
use plane_nats::testkit::{NatsCluster, NatsServer};

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

/// Replicas of the JetStream stream `name`, read by a plain client.
async fn replicas_of(js: &async_nats::jetstream::Context, name: &str) -> usize {
    js.get_stream(name)
        .await
        .unwrap_or_else(|e| panic!("stream {name}: {e}"))
        .info()
        .await
        .expect("stream info")
        .config
        .num_replicas
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_plane_creates_on_a_cluster_has_three_replicas_by_default() {
    let cluster = NatsCluster::start(3).await.expect("cluster");
    let session = registry().connect(&cluster.url()).await.expect("session");
    session
        .events()
        .await
        .expect("events")
        .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
        .await
        .expect("stream");
    session
        .kv()
        .await
        .expect("kv")
        .create_bucket(BucketConfig::new("cfg"))
        .await
        .expect("bucket");
    session
        .objects()
        .await
        .expect("objects")
        .create_bucket("blobs")
        .await
        .expect("object bucket");
    session
        .queues()
        .await
        .expect("queues")
        .create_queue(QueueConfig::new("jobs"))
        .await
        .expect("queue");

    let plain = async_nats::connect(cluster.nodes()[0].url())
        .await
        .expect("plain client");
    let js = async_nats::jetstream::new(plain);
    for name in ["ORDERS", "KV_cfg", "OBJ_blobs", "QUEUE_jobs"] {
        assert_eq!(replicas_of(&js, name).await, 3, "{name}");
    }

    // Asked for one copy, one copy, even on a cluster.
    let single = registry()
        .events(&format!("{}&replicas=1", cluster.url()))
        .await
        .expect("events with one replica");
    single
        .create_stream(StreamConfig::new("SCRATCH", ["scratch.>"]))
        .await
        .expect("stream");
    assert_eq!(replicas_of(&js, "SCRATCH").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_a_standalone_server_are_refused_at_connect() {
    let server = NatsServer::start().await.expect("server");
    let e = registry()
        .connect(&format!("{}?replicas=3", server.url()))
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
    assert!(e.message().contains("is standalone"), "{e}");
    // The default on a standalone server is one replica, and works.
    let events = registry().events(&server.url()).await.expect("events");
    events
        .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
        .await
        .expect("stream on a standalone server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_swap_conflicts_on_a_cluster_are_revision_mismatches() {
    // Found by the chaos runs: a replicated bucket refuses a stale revision
    // with a server error code of its own (10164), which came out `Other`.
    let cluster = NatsCluster::start(3).await.expect("cluster");
    let kv = registry().kv(&cluster.url()).await.expect("kv");
    let bucket = kv
        .create_bucket(BucketConfig::new("counters"))
        .await
        .expect("bucket");
    let first = bucket.put("n", "0").await.expect("put");
    bucket.update("n", "1", first).await.expect("update");
    // The revision `first` is stale now: a conflict, and nothing changes.
    let e = bucket.update("n", "2", first).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::RevisionMismatch, "{e}");
    assert_eq!(
        &bucket.get("n").await.expect("get").expect("entry").value[..],
        b"1"
    );
    // Racing writers: every refusal is a conflict, and the counter equals
    // the increments acknowledged.
    let mut writers = Vec::new();
    for _ in 0..2 {
        let bucket = kv.open_bucket("counters").await.expect("open");
        writers.push(tokio::spawn(async move {
            let (mut acked, mut refusals) = (0u64, Vec::new());
            for _ in 0..50 {
                let entry = bucket.get("n").await.expect("get").expect("entry");
                let n: u64 = std::str::from_utf8(&entry.value).unwrap().parse().unwrap();
                match bucket
                    .update("n", (n + 1).to_string(), entry.revision)
                    .await
                {
                    Ok(_) => acked += 1,
                    Err(e) => refusals.push(e.kind()),
                }
            }
            (acked, refusals)
        }));
    }
    let mut acked = 0;
    for w in writers {
        let (a, refusals) = w.await.expect("writer");
        acked += a;
        assert!(
            refusals.iter().all(|k| *k == ErrorKind::RevisionMismatch),
            "{refusals:?}"
        );
    }
    let value = bucket.get("n").await.expect("get").expect("entry").value;
    assert_eq!(
        std::str::from_utf8(&value).unwrap(),
        (1 + acked).to_string()
    );
}

/// One durable publish and what became of it.
#[derive(Debug)]
struct Outcome {
    seq: u64,
    at: Instant,
    result: Result<(), ErrorKind>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_stream_leader_interrupts_publishing_only_for_an_election() {
    let cluster = NatsCluster::start(3).await.expect("cluster");
    // A publish sent to the leader as it dies is never answered; it waits
    // out the JetStream timeout, which bounds the stall beyond the election.
    let events = registry()
        .events(&format!("{}&jetstream_timeout_ms=1000", cluster.url()))
        .await
        .expect("events");
    events
        .create_stream(StreamConfig::new("ORDERS", ["orders.>"]))
        .await
        .expect("stream");
    let plain = async_nats::connect(cluster.nodes()[0].url())
        .await
        .expect("plain client");
    let js = async_nats::jetstream::new(plain);
    let leader = js
        .get_stream("ORDERS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .cluster
        .clone()
        .and_then(|c| c.leader)
        .expect("the stream has a leader");
    let victim = cluster.index_of(&leader).expect("leader is one of ours");

    // Publish one event after another, each with its id, for the whole
    // run; note each outcome and when it came.
    let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
    let publisher = {
        let events = events.clone();
        tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for seq in 0u64.. {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                let id = seq.to_string();
                let result = events
                    .publish_durable("orders.placed", id.clone(), Some(&id))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.kind());
                if result.is_err() {
                    // Not a busy loop while the stream has no leader.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                outcomes.push(Outcome {
                    seq,
                    at: Instant::now(),
                    result,
                });
            }
            outcomes
        })
    };

    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    cluster.kill(victim).await.expect("kill the leader");
    // Long enough for an election and a client failover, with the node
    // still down.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restarted_at = Instant::now();
    cluster.start_node(victim).await.expect("restart the node");
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(()).expect("publisher running");
    let outcomes = publisher.await.expect("publisher");

    let acked: BTreeSet<u64> = outcomes
        .iter()
        .filter(|o| o.result.is_ok())
        .map(|o| o.seq)
        .collect();
    let published = outcomes.len() as u64;
    let acked_before = outcomes
        .iter()
        .filter(|o| o.result.is_ok() && o.at < killed_at)
        .count();
    let acked_while_down = outcomes
        .iter()
        .filter(|o| o.result.is_ok() && o.at > killed_at && o.at < restarted_at)
        .count();
    // The interruption: the longest wait between two acknowledgements from
    // the kill until the node came back.
    let mut ack_times: Vec<Instant> = outcomes
        .iter()
        .filter(|o| o.result.is_ok() && o.at < restarted_at)
        .map(|o| o.at)
        .collect();
    ack_times.push(restarted_at);
    let interruption = ack_times
        .windows(2)
        .filter(|w| w[1] > killed_at)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let mut refusals: HashMap<ErrorKind, usize> = HashMap::new();
    for o in &outcomes {
        if let Err(kind) = o.result {
            *refusals.entry(kind).or_default() += 1;
        }
    }
    assert!(acked_before > 0, "nothing was acknowledged before the kill");
    assert!(
        acked_while_down > 0,
        "no durable publish was acknowledged while the old leader n{victim} was down \
         ({published} tried, {} acknowledged; refusals {refusals:?})",
        acked.len()
    );
    // While the stream elects a leader its publishes are refused as
    // retryable; a `NotFound` would tell the application the stream is gone.
    for kind in refusals.keys() {
        assert!(
            kind.is_retryable(),
            "a publish during the election was refused {kind:?}: {refusals:?}"
        );
    }
    // The measurement the issue asks for, printed for the closing note and
    // the docs; the assertions above are the properties (publishing resumed
    // while the node was still down, and was refused only as retryable).
    println!(
        "leader n{victim} killed: longest wait between acknowledgements {interruption:?}; \
         {} of {published} publishes acknowledged ({acked_while_down} while it was down), \
         refusals {refusals:?}",
        acked.len()
    );

    // Every acknowledged event is in the stream, read back by a consumer;
    // nothing is there that was never published.
    let mut consumer = events
        .consume(ConsumerConfig::new("ORDERS", "audit"))
        .await
        .expect("consumer");
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !acked.is_subset(&seen) && Instant::now() < deadline {
        let Ok(Some(d)) = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await
        else {
            continue;
        };
        let d = d.expect("delivery");
        let seq: u64 = String::from_utf8(d.event.body().to_bytes().to_vec())
            .expect("utf-8")
            .parse()
            .expect("a sequence number");
        assert!(seq < published, "delivered {seq}, never published");
        seen.insert(seq);
        d.ack().await.expect("ack");
    }
    let lost: Vec<u64> = acked.difference(&seen).copied().take(20).collect();
    assert!(
        lost.is_empty(),
        "acknowledged events lost: {lost:?} (of {})",
        acked.len()
    );
}
