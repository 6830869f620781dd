//! Scenario drivers shared by every backend.
//!
//! A backend hands each driver a pair of operations, plane and raw, built
//! the same way (boxed futures on both sides, so the boxing costs the same).
//! The drivers alternate plane and raw rounds — plane first on even rounds,
//! raw first on odd ones — so machine noise lands on both.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{FuturesUnordered, StreamExt};
use hdrhistogram::Histogram;

use crate::alloc::Allocs;
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
    /// Interleaved rounds per scenario (each round runs plane and raw once);
    /// every ratio is the median of the per-round ratios.
    pub rounds: u32,
    /// Calls before measuring latency, per side.
    pub warmup: u32,
    /// Calls per latency round.
    pub latency_calls: u32,
    /// Calls per paced (1 kHz) round.
    pub paced_calls: u32,
    /// Calls per unary throughput round.
    pub throughput_calls: u32,
    /// Calls, one at a time, per allocation-counting round.
    pub alloc_calls: u32,
    /// Events, one at a time, per allocation-counting round.
    pub alloc_events: u32,
    /// Streamed calls per round.
    pub stream_calls: u32,
    /// Chunks per streamed call.
    pub stream_chunks: u32,
    /// Interleaved pub/sub rounds per payload size.
    pub pubsub_rounds: u32,
    /// Publishing before a pub/sub round's measured window.
    pub pubsub_warmup: Duration,
    /// A pub/sub round's measured window.
    pub pubsub_window: Duration,
    /// Acked publishes per durable round.
    pub durable_publishes: u32,
    /// Object size in bytes.
    pub object_bytes: usize,
    /// Put/get rounds.
    pub object_rounds: u32,
    /// Length of the paced service-level run, per side.
    pub slo_duration: Duration,
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
            alloc_calls: 200,
            alloc_events: 100,
            stream_calls: 2,
            stream_chunks: 2_000,
            pubsub_rounds: 1,
            pubsub_warmup: Duration::from_millis(100),
            pubsub_window: Duration::from_millis(250),
            durable_publishes: 1_000,
            object_bytes: 8 << 20,
            object_rounds: 1,
            slo_duration: Duration::from_secs(1),
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
            alloc_calls: 2_000,
            alloc_events: 1_000,
            stream_calls: 5,
            stream_chunks: 20_000,
            pubsub_rounds: 5,
            pubsub_warmup: Duration::from_millis(300),
            pubsub_window: Duration::from_secs(1),
            durable_publishes: 10_000,
            object_bytes: 64 << 20,
            object_rounds: 5,
            slo_duration: Duration::from_secs(10),
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
            let per_round = |v: &[Histogram<u64>]| -> Vec<f64> {
                v.iter().map(|h| h.value_at_quantile(*q) as f64).collect()
            };
            Row::new(
                backend,
                "unary_latency",
                Some(SMALL),
                metric,
                Better::Lower,
                plane.value_at_quantile(*q) as f64,
                raw.as_ref().map(|h| h.value_at_quantile(*q) as f64),
            )
            .with_spread(ratios(
                &per_round(&per_side.plane),
                &per_round(&per_side.raw),
            ))
        })
        .collect())
}

/// The broker's process id while a backend with a broker is measured; 0
/// when there is none (or it cannot be found).
static SERVER_PID: AtomicU32 = AtomicU32::new(0);

/// Count the CPU time of process `pid` (the broker, running on this
/// machine) in the rounds that follow, until called with `None`.
pub fn watch_server(pid: Option<u32>) {
    SERVER_PID.store(pid.unwrap_or(0), Ordering::Relaxed);
}

/// CPU time (user + system) of the bench process and of the watched
/// server, from `/proc`; `None` where it cannot be read (not Linux, or the
/// server runs out of sight). Whole-process figures: a brokerless backend's
/// server side runs inside the bench, so `own` covers both ends of the call.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    own: Option<Duration>,
    server: Option<Duration>,
}

impl Cpu {
    fn now() -> Cpu {
        let pid = SERVER_PID.load(Ordering::Relaxed);
        Cpu {
            own: cpu_of("/proc/self/stat"),
            server: (pid != 0)
                .then(|| cpu_of(&format!("/proc/{pid}/stat")))
                .flatten(),
        }
    }

    /// CPU used since `start`.
    fn since(self, start: Cpu) -> Cpu {
        let delta =
            |a: Option<Duration>, b: Option<Duration>| a.zip(b).map(|(a, b)| a.saturating_sub(b));
        Cpu {
            own: delta(self.own, start.own),
            server: delta(self.server, start.server),
        }
    }
}

/// `utime + stime` of a `/proc/<pid>/stat` file. The fields after the
/// command name (which may hold spaces and parentheses) start at field 3;
/// utime and stime are fields 14 and 15, in `USER_HZ` ticks, which Linux
/// fixes at 100 per second for this interface.
fn cpu_of(path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(path).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

/// Which process's CPU time a row reports.
type CpuOf = fn(&Cpu) -> Option<Duration>;

/// One round of a rate scenario: how many operations (or MB), in how long,
/// for how much CPU.
#[derive(Debug, Clone, Copy)]
struct Sample {
    count: f64,
    elapsed: Duration,
    cpu: Cpu,
}

/// Run `work`, returning its count with the time and CPU it took.
async fn sample(work: impl std::future::Future<Output = Result<f64>>) -> Result<Sample> {
    let (started, cpu) = (Instant::now(), Cpu::now());
    let count = work.await?;
    Ok(Sample {
        count,
        elapsed: started.elapsed(),
        cpu: Cpu::now().since(cpu),
    })
}

/// Sum of counts over sum of seconds, per side.
fn rate(rounds: &[Sample]) -> Option<f64> {
    if rounds.is_empty() {
        return None;
    }
    let count: f64 = rounds.iter().map(|r| r.count).sum();
    let secs: f64 = rounds.iter().map(|r| r.elapsed.as_secs_f64()).sum();
    Some(count / secs.max(1e-9))
}

/// plane / raw of each round (rounds pair up in order), where raw is not 0.
pub fn ratios(plane: &[f64], raw: &[f64]) -> Vec<f64> {
    plane
        .iter()
        .zip(raw)
        .filter(|(_, r)| **r > 0.0)
        .map(|(p, r)| p / r)
        .collect()
}

/// Microseconds of CPU per counted operation, where every round's CPU was
/// read.
fn cpu_per_op(rounds: &[Sample], which: CpuOf) -> Option<f64> {
    let count: f64 = rounds.iter().map(|r| r.count).sum();
    let cpu: Option<Duration> = rounds.iter().map(|r| which(&r.cpu)).sum();
    (!rounds.is_empty() && count > 0.0)
        .then_some(())
        .and(cpu)
        .map(|c| c.as_secs_f64() * 1e6 / count)
}

/// The row of a rate metric (higher is better), followed by the CPU
/// microseconds per counted unit of the bench process (`cpu`, say
/// `cpu_us_per_call`) and, where a broker is watched, of the broker
/// (`server_` + `cpu`).
fn rate_rows(
    backend: &str,
    scenario: &str,
    payload: Option<usize>,
    (metric, cpu): (&str, &str),
    per_side: &PerSide<Vec<Sample>>,
) -> Vec<Row> {
    let each = |v: &[Sample], f: &dyn Fn(&[Sample]) -> Option<f64>| -> Vec<f64> {
        v.iter()
            .map(|s| f(std::slice::from_ref(s)).unwrap_or(f64::NAN))
            .collect()
    };
    let mut rows = vec![Row::new(
        backend,
        scenario,
        payload,
        metric,
        Better::Higher,
        rate(&per_side.plane).unwrap_or(0.0),
        rate(&per_side.raw),
    )
    .with_spread(ratios(
        &each(&per_side.plane, &rate),
        &each(&per_side.raw, &rate),
    ))];
    let cpu_metrics: [(String, CpuOf); 2] = [
        (cpu.to_owned(), |c| c.own),
        (format!("server_{cpu}"), |c| c.server),
    ];
    for (name, which) in cpu_metrics {
        if let Some(plane) = cpu_per_op(&per_side.plane, which) {
            rows.push(
                Row::new(
                    backend,
                    scenario,
                    payload,
                    &name,
                    Better::Lower,
                    plane,
                    cpu_per_op(&per_side.raw, which),
                )
                .with_spread(ratios(
                    &each(&per_side.plane, &|s| cpu_per_op(s, which)),
                    &each(&per_side.raw, &|s| cpu_per_op(s, which)),
                )),
            );
        }
    }
    rows
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

/// `count` operations with [`IN_FLIGHT`] in flight.
async fn in_flight(op: Unary, count: u32) -> Result<Sample> {
    sample(async {
        run_in_flight(op, count).await?;
        Ok(f64::from(count))
    })
    .await
}

async fn run_in_flight(op: Unary, count: u32) -> Result<()> {
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
    Ok(())
}

/// `unary_throughput`: calls/s with [`IN_FLIGHT`] calls in flight.
pub async fn unary_throughput(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| in_flight(op, p.throughput_calls)).await?;
    Ok(rate_rows(
        backend,
        "unary_throughput",
        Some(SMALL),
        ("calls_per_s", "cpu_us_per_call"),
        &r,
    ))
}

/// `durable_publish`: acked publishes/s with [`IN_FLIGHT`] in flight.
pub async fn durable_publish(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| in_flight(op, p.durable_publishes)).await?;
    Ok(rate_rows(
        backend,
        "durable_publish",
        Some(SMALL),
        ("publishes_per_s", "cpu_us_per_publish"),
        &r,
    ))
}

/// `stream_throughput`: server-streamed 64 B chunks/s, one call at a time.
pub async fn stream_throughput(
    backend: &str,
    pair: &Pair<Streamed>,
    p: &Params,
) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| {
        sample(async move {
            let mut chunks = 0u64;
            for _ in 0..p.stream_calls {
                let got = op(p.stream_chunks).await?;
                if got != u64::from(p.stream_chunks) {
                    return Err(format!(
                        "a stream ended after {got} of {} chunks",
                        p.stream_chunks
                    )
                    .into());
                }
                chunks += got;
            }
            Ok(chunks as f64)
        })
    })
    .await?;
    Ok(rate_rows(
        backend,
        "stream_throughput",
        Some(SMALL),
        ("chunks_per_s", "cpu_us_per_chunk"),
        &r,
    ))
}

/// What a subscriber counted, shared with its receiving task.
#[derive(Debug)]
pub struct Counter {
    count: AtomicU64,
}

impl Counter {
    /// A counter at zero.
    pub fn new() -> Arc<Self> {
        Arc::new(Counter {
            count: AtomicU64::new(0),
        })
    }

    /// Count one received message.
    pub fn hit(&self) {
        self.count.fetch_add(1, Ordering::Release);
    }

    fn count(&self) -> u64 {
        self.count.load(Ordering::Acquire)
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

/// One steady-state pub/sub round: the window's sample, and everything
/// published and received over the whole round.
struct PubSubRound {
    window: Sample,
    published: u64,
    received: u64,
}

/// Publish `payload` for `warmup + window`, yielding every 64 messages so a
/// publisher that never waits cannot hold a worker thread; count at the
/// receiver over the window; then stop and let the receiver catch up.
async fn pubsub_round(ps: PubSub, payload: Bytes, p: &Params) -> Result<PubSubRound> {
    let started = Instant::now();
    let window_at = started + p.pubsub_warmup;
    let end = window_at + p.pubsub_window;
    let mut published = 0u64;
    let mut window: Option<(u64, Instant, Cpu)> = None;
    let mut now = started;
    while now < end {
        for _ in 0..64 {
            (ps.publish)(payload.clone()).await?;
        }
        published += 64;
        now = Instant::now();
        if window.is_none() && now >= window_at {
            window = Some((ps.counter.count(), now, Cpu::now()));
        }
        tokio::task::yield_now().await;
    }
    let (from, at, cpu) = window.ok_or("the pub/sub window never started")?;
    let sample = Sample {
        count: ps.counter.count().saturating_sub(from) as f64,
        elapsed: now.saturating_duration_since(at),
        cpu: Cpu::now().since(cpu),
    };
    // Until everything arrived or nothing more has for a while (the rest
    // was dropped).
    let mut seen = ps.counter.count();
    let mut quiet_since = Instant::now();
    while seen < published && quiet_since.elapsed() < Duration::from_millis(200) {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let now = ps.counter.count();
        if now != seen {
            seen = now;
            quiet_since = Instant::now();
        }
    }
    Ok(PubSubRound {
        window: sample,
        published,
        received: seen.min(published),
    })
}

/// `pubsub_throughput`: messages/s counted at the receiver in steady state
/// (a window after a warm-up, the publisher publishing throughout), with the
/// fraction of what was published that arrived and the drops beside it;
/// then, at 64 B, heap allocations per event, one event at a time.
pub async fn pubsub_throughput(
    backend: &str,
    pair: &Pair<PubSubFactory>,
    p: &Params,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for size in PUBSUB_SIZES {
        let payload = Bytes::from(vec![0x5a; size]);
        let r = interleave(pair, p.pubsub_rounds, |factory| {
            let payload = payload.clone();
            async move { pubsub_round(factory().await?, payload, p).await }
        })
        .await?;
        let windows = |v: &[PubSubRound]| v.iter().map(|x| x.window).collect::<Vec<_>>();
        let delivered = |v: &[PubSubRound]| -> Vec<f64> {
            v.iter()
                .map(|x| x.received as f64 / (x.published as f64).max(1.0))
                .collect()
        };
        let total = |v: &[PubSubRound]| -> f64 {
            let published: u64 = v.iter().map(|x| x.published).sum();
            let received: u64 = v.iter().map(|x| x.received).sum();
            received as f64 / (published as f64).max(1.0)
        };
        let drops = |v: &[PubSubRound]| -> f64 {
            v.iter().map(|x| (x.published - x.received) as f64).sum()
        };
        let has_raw = !r.raw.is_empty();
        rows.extend(rate_rows(
            backend,
            "pubsub_throughput",
            Some(size),
            ("msgs_per_s", "cpu_us_per_msg"),
            &PerSide {
                plane: windows(&r.plane),
                raw: windows(&r.raw),
            },
        ));
        rows.push(
            Row::new(
                backend,
                "pubsub_throughput",
                Some(size),
                "delivered_fraction",
                Better::Higher,
                total(&r.plane),
                has_raw.then(|| total(&r.raw)),
            )
            .with_spread(ratios(&delivered(&r.plane), &delivered(&r.raw))),
        );
        rows.push(Row::new(
            backend,
            "pubsub_throughput",
            Some(size),
            "drops",
            Better::Lower,
            drops(&r.plane),
            has_raw.then(|| drops(&r.raw)),
        ));
    }
    rows.extend(event_allocs(backend, pair, p).await?);
    Ok(rows)
}

/// Heap allocations per 64 B event, both ends included (the whole
/// process): one event published at a time, the next once it arrived.
async fn event_allocs(backend: &str, pair: &Pair<PubSubFactory>, p: &Params) -> Result<Vec<Row>> {
    let payload = Bytes::from(vec![0x5a; SMALL]);
    let r = interleave(pair, p.rounds, |factory| {
        let payload = payload.clone();
        async move {
            let ps = factory().await?;
            let one = |payload: Bytes| {
                let ps = &ps;
                async move {
                    let before = ps.counter.count();
                    (ps.publish)(payload).await?;
                    let deadline = Instant::now() + Duration::from_secs(1);
                    while ps.counter.count() == before && Instant::now() < deadline {
                        tokio::task::yield_now().await;
                    }
                    Ok::<_, crate::Error>(())
                }
            };
            for _ in 0..p.alloc_events / 4 + 10 {
                one(payload.clone()).await?;
            }
            let (received, start) = (ps.counter.count(), Allocs::now());
            for _ in 0..p.alloc_events {
                one(payload.clone()).await?;
            }
            let used = Allocs::now().since(start);
            let got = ps.counter.count().saturating_sub(received).max(1) as f64;
            Ok((used.count as f64 / got, used.bytes as f64 / got))
        }
    })
    .await?;
    Ok(alloc_rows(
        backend,
        "pubsub_throughput",
        ("allocs_per_msg", "alloc_bytes_per_msg"),
        &r,
    ))
}

/// Allocation rows from per-round (allocations, bytes) per operation; the
/// values are medians over the rounds.
fn alloc_rows(
    backend: &str,
    scenario: &str,
    (count, bytes): (&str, &str),
    r: &PerSide<Vec<(f64, f64)>>,
) -> Vec<Row> {
    let has_raw = !r.raw.is_empty();
    let pick = |v: &[(f64, f64)], second: bool| -> Vec<f64> {
        v.iter().map(|x| if second { x.1 } else { x.0 }).collect()
    };
    [(count, false), (bytes, true)]
        .into_iter()
        .map(|(metric, second)| {
            let (plane, raw) = (pick(&r.plane, second), pick(&r.raw, second));
            Row::new(
                backend,
                scenario,
                Some(SMALL),
                metric,
                Better::Lower,
                median(&plane),
                has_raw.then(|| median(&raw)),
            )
            .with_spread(ratios(&plane, &raw))
        })
        .collect()
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Heap allocations per unary 64 B call, one call at a time after a
/// warm-up, both ends included where both run in this process (on nats the
/// broker's are not).
pub async fn unary_allocs(
    backend: &str,
    scenario: &str,
    pair: &Pair<Unary>,
    p: &Params,
) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| async move {
        for _ in 0..p.alloc_calls / 4 + 10 {
            op().await?;
        }
        let start = Allocs::now();
        for _ in 0..p.alloc_calls {
            op().await?;
        }
        let used = Allocs::now().since(start);
        let n = f64::from(p.alloc_calls);
        Ok((used.count as f64 / n, used.bytes as f64 / n))
    })
    .await?;
    Ok(alloc_rows(
        backend,
        scenario,
        ("allocs_per_call", "alloc_bytes_per_call"),
        &r,
    ))
}

/// `unary_await`: calls/s with [`IN_FLIGHT`] in flight to a handler that
/// awaits once before replying (on both sides), and its allocations.
pub async fn unary_await(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, p.rounds, |op| in_flight(op, p.throughput_calls)).await?;
    let mut rows = rate_rows(
        backend,
        "unary_await",
        Some(SMALL),
        ("calls_per_s", "cpu_us_per_call"),
        &r,
    );
    rows.extend(unary_allocs(backend, "unary_await", pair, p).await?);
    Ok(rows)
}

/// The plugin gateway's offered load.
pub const SLO_RATE: u64 = 30_000;
/// Calls in flight beyond which a scheduled call is not issued (counted).
pub const SLO_CAP: u64 = 10_000;
/// A call not answered within this is an error of kind `timeout`.
const SLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Windows of a paced run whose ratios give the spread.
const SLO_WINDOWS: usize = 5;

/// What a paced run's calls recorded.
struct SloState {
    /// One histogram per window, of successful calls by scheduled time.
    windows: Vec<Histogram<u64>>,
    ok: Vec<u64>,
    errors: std::collections::BTreeMap<String, u64>,
    last_done: Option<Instant>,
}

/// One paced run's outcome.
struct SloRun {
    all: Histogram<u64>,
    windows: Vec<Histogram<u64>>,
    ok_per_window: Vec<u64>,
    window: Duration,
    achieved: f64,
    errors: std::collections::BTreeMap<String, u64>,
    not_issued: u64,
}

fn error_kind(e: &crate::Error) -> String {
    match e.downcast_ref::<plane::Error>() {
        Some(e) => e.kind().as_str().to_owned(),
        None => "raw".to_owned(),
    }
}

/// Calls issued open-loop at [`SLO_RATE`] for `duration` by a generator
/// thread (so issuing does not wait for the runtime), each call's latency
/// counted from its scheduled time, so a call issued late because of queueing
/// counts its wait.
async fn slo_run(op: Unary, duration: Duration) -> Result<SloRun> {
    let total = SLO_RATE * duration.as_secs_f64() as u64;
    let total = total.max(SLO_RATE / 10);
    let state = Arc::new(std::sync::Mutex::new(SloState {
        windows: (0..SLO_WINDOWS)
            .map(|_| histogram())
            .collect::<Result<_>>()?,
        ok: vec![0; SLO_WINDOWS],
        errors: Default::default(),
        last_done: None,
    }));
    let in_flight = Arc::new(AtomicU64::new(0));
    let handle = tokio::runtime::Handle::current();
    let start = Instant::now() + Duration::from_millis(20);
    let generator = {
        let (state, in_flight) = (state.clone(), in_flight.clone());
        std::thread::spawn(move || {
            let mut not_issued = 0u64;
            for i in 0..total {
                let scheduled = start + Duration::from_nanos(i * 1_000_000_000 / SLO_RATE);
                let now = Instant::now();
                if scheduled > now {
                    std::thread::sleep(scheduled - now);
                }
                if in_flight.load(Ordering::Relaxed) >= SLO_CAP {
                    not_issued += 1;
                    continue;
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let call = op();
                let (state, in_flight) = (state.clone(), in_flight.clone());
                let w = (i as usize * SLO_WINDOWS / total as usize).min(SLO_WINDOWS - 1);
                handle.spawn(async move {
                    let outcome = tokio::time::timeout(SLO_TIMEOUT, call).await;
                    let latency = micros(scheduled.elapsed());
                    {
                        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                        match outcome {
                            Ok(Ok(())) => {
                                let _ = s.windows[w].record(latency);
                                s.ok[w] += 1;
                            }
                            Ok(Err(e)) => *s.errors.entry(error_kind(&e)).or_default() += 1,
                            Err(_) => *s.errors.entry("timeout".to_owned()).or_default() += 1,
                        }
                        s.last_done = Some(Instant::now());
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            not_issued
        })
    };
    let not_issued = loop {
        if generator.is_finished() {
            break generator
                .join()
                .map_err(|_| "the paced generator panicked")?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let drain = Instant::now() + SLO_TIMEOUT + Duration::from_secs(1);
    while in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
    let unfinished = in_flight.load(Ordering::Relaxed);
    if unfinished > 0 {
        *s.errors.entry("unfinished".to_owned()).or_default() += unfinished;
    }
    let ok: u64 = s.ok.iter().sum();
    let secs = s
        .last_done
        .map_or(duration, |t| t.saturating_duration_since(start))
        .as_secs_f64()
        .max(1e-9);
    Ok(SloRun {
        all: merge(&s.windows)?,
        windows: std::mem::take(&mut s.windows),
        ok_per_window: s.ok.clone(),
        window: Duration::from_secs_f64(total as f64 / SLO_RATE as f64 / SLO_WINDOWS as f64),
        achieved: ok as f64 / secs,
        errors: std::mem::take(&mut s.errors),
        not_issued,
    })
}

/// `paced_slo`: the plugin gateway's service level, 64 B calls paced
/// open-loop at [`SLO_RATE`] for `p.slo_duration`, one run per side; each
/// ratio is the whole run's, with its min and max over the run's
/// [`SLO_WINDOWS`] windows (by scheduled time) beside it.
pub async fn paced_slo(backend: &str, pair: &Pair<Unary>, p: &Params) -> Result<Vec<Row>> {
    let r = interleave(pair, 1, |op| slo_run(op, p.slo_duration)).await?;
    let plane = &r.plane[0];
    let raw = r.raw.first();
    let row = |metric: &str, better: Better, f: &dyn Fn(&SloRun) -> f64| {
        Row::new(
            backend,
            "paced_slo",
            Some(SMALL),
            metric,
            better,
            f(plane),
            raw.map(f),
        )
    };
    let mut rows = Vec::new();
    let per_window_rate = |run: &SloRun| -> Vec<f64> {
        run.ok_per_window
            .iter()
            .map(|n| *n as f64 / run.window.as_secs_f64())
            .collect()
    };
    rows.push(
        row("achieved_per_s", Better::Higher, &|run| run.achieved).with_range(ratios(
            &per_window_rate(plane),
            &raw.map(per_window_rate).unwrap_or_default(),
        )),
    );
    for (metric, q) in [("p50_us", 0.5), ("p99_us", 0.99), ("p99.9_us", 0.999)] {
        let per_window = |run: &SloRun| -> Vec<f64> {
            run.windows
                .iter()
                .map(|h| {
                    if h.is_empty() {
                        f64::NAN
                    } else {
                        h.value_at_quantile(q) as f64
                    }
                })
                .collect()
        };
        rows.push(
            row(metric, Better::Lower, &|run| {
                run.all.value_at_quantile(q) as f64
            })
            .with_range(ratios(
                &per_window(plane),
                &raw.map(per_window).unwrap_or_default(),
            )),
        );
    }
    rows.push(row("errors", Better::Lower, &|run| {
        run.errors.values().sum::<u64>() as f64
    }));
    rows.push(row("not_issued", Better::Lower, &|run| {
        run.not_issued as f64
    }));
    let mut kinds: Vec<&String> = plane.errors.keys().collect();
    for k in raw.iter().flat_map(|r| r.errors.keys()) {
        if !kinds.contains(&k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        rows.push(row(&format!("errors_{kind}"), Better::Lower, &|run| {
            run.errors.get(kind).copied().unwrap_or(0) as f64
        }));
    }
    Ok(rows)
}

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
    let mb = size as f64 / 1e6;
    let r = interleave(pair, p.object_rounds, |(put, get): (Put, Get)| {
        let data = data.clone();
        async move {
            let name = format!("bench-{size}");
            let put = sample(async {
                put(name.clone(), data).await?;
                Ok(mb)
            })
            .await?;
            let get = sample(async {
                let got = get(name).await?;
                if got != size as u64 {
                    return Err(format!("read back {got} of {size} bytes").into());
                }
                Ok(mb)
            })
            .await?;
            Ok((put, get))
        }
    })
    .await?;
    let pick = |get: bool| PerSide {
        plane: r
            .plane
            .iter()
            .map(|x| if get { x.1 } else { x.0 })
            .collect(),
        raw: r.raw.iter().map(|x| if get { x.1 } else { x.0 }).collect(),
    };
    let mut rows = rate_rows(
        backend,
        "object_put_get",
        Some(size),
        ("put_mb_per_s", "put_cpu_us_per_mb"),
        &pick(false),
    );
    rows.extend(rate_rows(
        backend,
        "object_put_get",
        Some(size),
        ("get_mb_per_s", "get_cpu_us_per_mb"),
        &pick(true),
    ));
    Ok(rows)
}
