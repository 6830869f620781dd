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
    let mut rows = vec![Row::new(
        backend,
        scenario,
        payload,
        metric,
        Better::Higher,
        rate(&per_side.plane).unwrap_or(0.0),
        rate(&per_side.raw),
    )];
    let cpu_metrics: [(String, CpuOf); 2] = [
        (cpu.to_owned(), |c| c.own),
        (format!("server_{cpu}"), |c| c.server),
    ];
    for (name, which) in cpu_metrics {
        if let Some(plane) = cpu_per_op(&per_side.plane, which) {
            rows.push(Row::new(
                backend,
                scenario,
                payload,
                &name,
                Better::Lower,
                plane,
                cpu_per_op(&per_side.raw, which),
            ));
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
                let (started, cpu) = (Instant::now(), Cpu::now());
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
                // The rate is up to the last arrival; the CPU includes the
                // quiet wait, which costs next to nothing.
                let sample = Sample {
                    count: seen as f64,
                    elapsed: ps.counter.last().saturating_duration_since(started),
                    cpu: Cpu::now().since(cpu),
                };
                Ok((sample, count - seen.min(count)))
            }
        })
        .await?;
        let split = |v: &Vec<(Sample, u64)>| -> (Vec<Sample>, f64) {
            (
                v.iter().map(|x| x.0).collect(),
                v.iter().map(|x| x.1 as f64).sum(),
            )
        };
        let (plane, plane_drops) = split(&r.plane);
        let (raw, raw_drops) = split(&r.raw);
        let has_raw = !r.raw.is_empty();
        rows.extend(rate_rows(
            backend,
            "pubsub_throughput",
            Some(size),
            ("msgs_per_s", "cpu_us_per_msg"),
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
