//! Scenario drivers shared by every backend.
//!
//! A backend hands each driver a pair of operations, plane and raw, built
//! the same way (boxed futures on both sides, so the boxing costs the same).
//! The drivers alternate plane and raw rounds — plane first on even rounds,
//! raw first on odd ones — so machine noise lands on both.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

use crate::report::{Better, Row};
use crate::Result;

/// One call, one acked publish: anything measured one at a time or in flight.
pub type Unary = Arc<dyn Fn() -> BoxFuture<'static, Result<()>> + Send + Sync>;
/// One server-streamed call of `n` chunks; returns the chunks received.
pub type Streamed = Arc<dyn Fn(u32) -> BoxFuture<'static, Result<u64>> + Send + Sync>;
/// A fresh subscriber and publisher for one pub/sub round.
pub type PubSubFactory = Arc<dyn Fn() -> BoxFuture<'static, Result<PubSub>> + Send + Sync>;
/// Store an object under a name.
pub type Put = Arc<dyn Fn(String, Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync>;
/// Read an object back, streaming; returns its size.
pub type Get = Arc<dyn Fn(String) -> BoxFuture<'static, Result<u64>> + Send + Sync>;

/// Iteration counts of one run.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    /// Interleaved rounds per scenario (each round runs plane and raw once).
    pub rounds: u32,
    /// Calls before measuring latency, per side.
    pub warmup: u32,
    /// Calls per latency round.
    pub latency_calls: u32,
    /// Calls per paced (1 kHz) round.
    pub paced_calls: u32,
    /// Calls per unary throughput round.
    pub throughput_calls: u32,
    /// Streamed calls per round.
    pub stream_calls: u32,
    /// Chunks per streamed call.
    pub stream_chunks: u32,
    /// Messages per pub/sub round for 64 B, 1 KiB, 64 KiB.
    pub pubsub_msgs: [u64; 3],
    /// Acked publishes per durable round.
    pub durable_publishes: u32,
    /// Object size in bytes.
    pub object_bytes: usize,
    /// Put/get rounds.
    pub object_rounds: u32,
}

impl Params {
    /// The quick (CI smoke) run: every code path, few iterations.
    pub fn quick() -> Self {
        Params {
            rounds: 2,
            warmup: 100,
            latency_calls: 400,
            paced_calls: 100,
            throughput_calls: 2_000,
            stream_calls: 2,
            stream_chunks: 2_000,
            pubsub_msgs: [10_000, 5_000, 500],
            durable_publishes: 1_000,
            object_bytes: 8 << 20,
            object_rounds: 1,
        }
    }

    /// The full run the docs quote.
    pub fn full() -> Self {
        Params {
            rounds: 6,
            warmup: 2_000,
            latency_calls: 4_000,
            paced_calls: 500,
            throughput_calls: 20_000,
            stream_calls: 5,
            stream_chunks: 20_000,
            pubsub_msgs: [100_000, 50_000, 4_000],
            durable_publishes: 10_000,
            object_bytes: 64 << 20,
            object_rounds: 3,
        }
    }
}

/// The payload sizes of the pub/sub scenario.
pub const PUBSUB_SIZES: [usize; 3] = [64, 1024, 64 * 1024];
/// In-flight window of throughput scenarios.
pub const IN_FLIGHT: usize = 64;
/// Payload of unary and streamed calls.
pub const SMALL: usize = 64;

/// Plane and (optionally) raw side of a scenario.
pub struct Pair<T> {
    /// The plane side.
    pub plane: T,
    /// The raw client side; `None` where there is no raw client (mem).
    pub raw: Option<T>,
}

/// Run `round(op)` for plane and raw, alternating which goes first, and
/// collect each side's round results.
async fn interleave<T, R, F, Fut>(pair: &Pair<T>, rounds: u32, round: F) -> Result<PerSide<Vec<R>>>
where
    T: Clone,
    F: Fn(T) -> Fut,
    Fut: std::future::Future<Output = Result<R>>,
{
    let mut out = PerSide {
        plane: Vec::new(),
        raw: Vec::new(),
    };
    for r in 0..rounds {
        let raw_first = r % 2 == 1;
        if raw_first {
            if let Some(raw) = &pair.raw {
                out.raw.push(round(raw.clone()).await?);
            }
        }
        out.plane.push(round(pair.plane.clone()).await?);
        if !raw_first {
            if let Some(raw) = &pair.raw {
                out.raw.push(round(raw.clone()).await?);
            }
        }
    }
    Ok(out)
}

/// Round results of plane and raw.
struct PerSide<T> {
    plane: T,
    raw: T,
}

fn histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn merge(rounds: &[Histogram<u64>]) -> Result<Histogram<u64>> {
    let mut all = histogram()?;
    for h in rounds {
        all.add(h)?;
    }
    Ok(all)
}

/// Latency quantile rows from per-round histograms.
fn quantile_rows(
    backend: &str,
    per_side: &PerSide<Vec<Histogram<u64>>>,
    metrics: &[(&str, f64)],
) -> Result<Vec<Row>> {
    let plane = merge(&per_side.plane)?;
    let raw = (!per_side.raw.is_empty())
        .then(|| merge(&per_side.raw))
        .transpose()?;
    Ok(metrics
        .iter()
        .map(|(metric, q)| {
            Row::new(
                backend,
                "unary_latency",
                Some(SMALL),
                metric,
                Better::Lower,
                plane.value_at_quantile(*q) as f64,
                raw.as_ref().map(|h| h.value_at_quantile(*q) as f64),
            )
        })
        .collect())
}

/// Sum of counts over sum of seconds, per side.
fn rate(rounds: &[(f64, Duration)]) -> Option<f64> {
    if rounds.is_empty() {
        return None;
    }
    let count: f64 = rounds.iter().map(|r| r.0).sum();
    let secs: f64 = rounds.iter().map(|r| r.1.as_secs_f64()).sum();
    Some(count / secs.max(1e-9))
}

/// A row of a rate metric (higher is better).
fn rate_row(
    backend: &str,
    scenario: &str,
    payload: Option<usize>,
    metric: &str,
    per_side: &PerSide<Vec<(f64, Duration)>>,
) -> Row {
    Row::new(
        backend,
        scenario,
        payload,
        metric,
        Better::Higher,
        rate(&per_side.plane).unwrap_or(0.0),
        rate(&per_side.raw),
    )
}

/// `unary_latency`: one call at a time; p50/p99/p99.9 after a warm-up, then
/// a paced 1 kHz run (p50/p99) to catch idle-wake costs.
pub async fn unary_latency(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    for op in [Some(&pair.plane), pair.raw.as_ref()].into_iter().flatten() {
        for _ in 0..p.warmup {
            op().await?;
        }
    }
    let back_to_back = interleave(pair, p.rounds, |op| async move {
        let mut h = histogram()?;
        for _ in 0..p.latency_calls {
            let t = Instant::now();
            op().await?;
            h.record(micros(t.elapsed()))?;
        }
        Ok(h)
    })
    .await?;
    let mut rows = quantile_rows(
        backend,
        &back_to_back,
        &[("p50_us", 0.5), ("p99_us", 0.99), ("p99.9_us", 0.999)],
    )?;
    let paced = interleave(pair, p.rounds, |op| async move {
        let mut h = histogram()?;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for _ in 0..p.paced_calls {
            tick.tick().await;
            let t = Instant::now();
            op().await?;
            h.record(micros(t.elapsed()))?;
        }
        Ok(h)
    })
    .await?;
    rows.extend(quantile_rows(
        backend,
        &paced,
        &[("paced_p50_us", 0.5), ("paced_p99_us", 0.99)],
    )?);
    Ok(rows)
}

/// `count` operations with [`IN_FLIGHT`] in flight; returns (count, elapsed).
async fn in_flight(op: Unary, count: u32) -> Result<(f64, Duration)> {
    let started = Instant::now();
    let mut pending = FuturesUnordered::new();
    let mut issued = 0;
    while issued < count && pending.len() < IN_FLIGHT {
        pending.push(op());
        issued += 1;
    }
    while let Some(done) = pending.next().await {
        done?;
        if issued < count {
            pending.push(op());
            issued += 1;
        }
    }
    Ok((f64::from(count), started.elapsed()))
}

/// `unary_throughput`: calls/s with [`IN_FLIGHT`] calls in flight.
pub async fn unary_throughput(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| in_flight(op, p.throughput_calls)).await?;
    Ok(vec![rate_row(
        backend,
        "unary_throughput",
        Some(SMALL),
        "calls_per_s",
        &r,
    )])
}

/// `durable_publish`: acked publishes/s with [`IN_FLIGHT`] in flight.
pub async fn durable_publish(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| in_flight(op, p.durable_publishes)).await?;
    Ok(vec![rate_row(
        backend,
        "durable_publish",
        Some(SMALL),
        "publishes_per_s",
        &r,
    )])
}

/// `stream_throughput`: server-streamed 64 B chunks/s, one call at a time.
pub async fn stream_throughput(
    backend: &str,
    pair: &Pair<Streamed>,
    p: &Params,
) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| async move {
        let started = Instant::now();
        let mut chunks = 0u64;
        for _ in 0..p.stream_calls {
            let got = op(p.stream_chunks).await?;
            if got != u64::from(p.stream_chunks) {
                return Err(
                    format!("a stream ended after {got} of {} chunks", p.stream_chunks).into(),
                );
            }
            chunks += got;
        }
        Ok((chunks as f64, started.elapsed()))
    })
    .await?;
    Ok(vec![rate_row(
        backend,
        "stream_throughput",
        Some(SMALL),
        "chunks_per_s",
        &r,
    )])
}

/// What a subscriber counted, shared with its receiving task.
#[derive(Debug)]
pub struct Counter {
    origin: Instant,
    count: AtomicU64,
    last_ns: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Counter {
            origin: Instant::now(),
            count: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
        })
    }

    /// Count one received message.
    pub fn hit(&self) {
        let ns = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }

    fn last(&self) -> Instant {
        self.origin + Duration::from_nanos(self.last_ns.load(Ordering::Relaxed))
    }
}

/// One pub/sub round's subscriber (already subscribed) and publisher.
pub struct PubSub {
    /// Publish one message to the round's subject.
    pub publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync>,
    /// Messages the subscriber received.
    pub counter: Arc<Counter>,
    /// Ends the subscriber's task when the round is over.
    pub task: tokio::task::JoinHandle<()>,
}

impl PubSub {
    /// A round publishing with `publish` and counting, in a task, whatever
    /// `messages` yields that `counts` accepts.
    pub fn new<S, T>(
        publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync>,
        mut messages: S,
        counts: fn(&T) -> bool,
    ) -> Self
    where
        S: futures_util::Stream<Item = T> + Send + Unpin + 'static,
        T: Send + 'static,
    {
        let counter = Counter::new();
        let c = counter.clone();
        let task = tokio::spawn(async move {
            while let Some(m) = messages.next().await {
                if counts(&m) {
                    c.hit();
                }
            }
        });
        PubSub {
            publish,
            counter,
            task,
        }
    }
}

impl Drop for PubSub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `pubsub_throughput`: messages/s counted at the receiver for each payload
/// size, with the messages that never arrived reported as drops.
pub async fn pubsub_throughput(
    backend: &str,
    pair: &Pair<PubSubFactory>,
    p: &Params,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (size, count) in PUBSUB_SIZES.into_iter().zip(p.pubsub_msgs) {
        let payload = Bytes::from(vec![0x5a; size]);
        let r = interleave(pair, p.rounds, |factory| {
            let payload = payload.clone();
            async move {
                let ps = factory().await?;
                let started = Instant::now();
                for _ in 0..count {
                    (ps.publish)(payload.clone()).await?;
                }
                // Wait for the receiver to catch up: until everything arrived
                // or nothing more has for a while (the rest was dropped).
                let mut seen = ps.counter.count();
                let mut quiet_since = Instant::now();
                while seen < count && quiet_since.elapsed() < Duration::from_millis(500) {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    let now = ps.counter.count();
                    if now != seen {
                        seen = now;
                        quiet_since = Instant::now();
                    }
                }
                let elapsed = ps.counter.last().saturating_duration_since(started);
                Ok((seen as f64, elapsed, count - seen.min(count)))
            }
        })
        .await?;
        let split = |v: &Vec<(f64, Duration, u64)>| -> (Vec<(f64, Duration)>, f64) {
            (
                v.iter().map(|x| (x.0, x.1)).collect(),
                v.iter().map(|x| x.2 as f64).sum(),
            )
        };
        let (plane, plane_drops) = split(&r.plane);
        let (raw, raw_drops) = split(&r.raw);
        let has_raw = !r.raw.is_empty();
        rows.push(rate_row(
            backend,
            "pubsub_throughput",
            Some(size),
            "msgs_per_s",
            &PerSide { plane, raw },
        ));
        rows.push(Row::new(
            backend,
            "pubsub_throughput",
            Some(size),
            "drops",
            Better::Lower,
            plane_drops,
            has_raw.then_some(raw_drops),
        ));
    }
    Ok(rows)
}

/// One put/get round: (MB, time) of the put, then of the get.
type PutGetRound = ((f64, Duration), (f64, Duration));

/// `object_put_get`: MB/s storing and reading back one object.
pub async fn object_put_get(
    backend: &str,
    pair: &Pair<(Put, Get)>,
    p: &Params,
) -> Result<Vec<Row>> {
    let data = Bytes::from(
        (0..p.object_bytes)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let size = p.object_bytes;
    let r = interleave(pair, p.object_rounds, |(put, get): (Put, Get)| {
        let data = data.clone();
        async move {
            let name = format!("bench-{size}");
            let t = Instant::now();
            put(name.clone(), data).await?;
            let put_time = t.elapsed();
            let t = Instant::now();
            let got = get(name).await?;
            let get_time = t.elapsed();
            if got != size as u64 {
                return Err(format!("read back {got} of {size} bytes").into());
            }
            Ok(((size as f64 / 1e6, put_time), (size as f64 / 1e6, get_time)))
        }
    })
    .await?;
    let pick = |v: &Vec<PutGetRound>, get: bool| {
        v.iter()
            .map(|x| if get { x.1 } else { x.0 })
            .collect::<Vec<_>>()
    };
    Ok(vec![
        rate_row(
            backend,
            "object_put_get",
            Some(size),
            "put_mb_per_s",
            &PerSide {
                plane: pick(&r.plane, false),
                raw: pick(&r.raw, false),
            },
        ),
        rate_row(
            backend,
            "object_put_get",
            Some(size),
            "get_mb_per_s",
            &PerSide {
                plane: pick(&r.plane, true),
                raw: pick(&r.raw, true),
            },
        ),
    ])
}
