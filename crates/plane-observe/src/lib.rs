//! plane-observe: a small, dependency-light Prometheus exporter for plane.
//!
//! plane-core emits its metrics (names in [`plane_core::metrics`] and
//! `docs/metrics.md`) through the `metrics` facade and installs nothing. This
//! crate offers:
//!
//! - [`PrometheusRecorder`]: a `metrics` recorder keeping counters, gauges and
//!   histograms (fixed buckets) in memory, rendered in the Prometheus text
//!   exposition format (0.0.4);
//! - [`Health`]: named connection-state checks over plane handles;
//! - [`serve`]: an HTTP endpoint on a tokio `TcpListener` answering
//!   `GET /metrics` and `GET /healthz` (200 when every check is up, else 503),
//!   with one line per check.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let metrics = plane_observe::PrometheusRecorder::new().install().expect("no other recorder");
//! let requests = plane_mem::registry().requests("mem://app").await.expect("mem");
//! let health = plane_observe::Health::new().check("requests", move || requests.connection_state());
//! let server = plane_observe::serve("127.0.0.1:9464", metrics, health).await?;
//! println!("scrape http://{}/metrics", server.local_addr());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use plane_core::health::ConnectionState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, ToSocketAddrs};
use tokio::task::JoinHandle;

/// Upper bounds of histogram buckets, in the metric's unit (seconds for
/// plane's durations): Prometheus' defaults, which suit request latencies.
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

struct Buckets {
    /// Cumulative counts are computed when rendering; these are per bucket,
    /// with one extra for `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_bits: AtomicU64::new(0f64.to_bits()),
            count: AtomicU64::new(0),
        }
    }
}

impl HistogramFn for Buckets {
    fn record(&self, value: f64) {
        let i = BUCKETS
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(BUCKETS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        // An f64 sum in an atomic: retry the add until no other writer raced.
        let mut cur = self.sum_bits.load(Ordering::Relaxed);
        loop {
            let next = (f64::from_bits(cur) + value).to_bits();
            match self.sum_bits.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[derive(Default)]
struct Store {
    counters: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<Key, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<Key, Arc<Buckets>>>,
    help: Mutex<HashMap<String, String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A `metrics` recorder that keeps values in memory for Prometheus scrapes.
/// Metric series are created on first use and kept for the process lifetime
/// (their number is bounded by the label values plane uses: endpoints,
/// backends, queues, error kinds).
#[derive(Clone, Default)]
pub struct PrometheusRecorder {
    store: Arc<Store>,
}

impl std::fmt::Debug for PrometheusRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrometheusRecorder").finish_non_exhaustive()
    }
}

/// A handle to an installed recorder's values.
#[derive(Clone)]
pub struct Metrics {
    store: Arc<Store>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl PrometheusRecorder {
    /// An empty recorder.
    pub fn new() -> Self {
        PrometheusRecorder::default()
    }

    /// A handle that renders this recorder's values.
    pub fn handle(&self) -> Metrics {
        Metrics {
            store: self.store.clone(),
        }
    }

    /// Install as the process-wide recorder and describe plane's metrics.
    ///
    /// # Errors
    /// When another recorder is already installed.
    pub fn install(self) -> Result<Metrics, metrics::SetRecorderError<PrometheusRecorder>> {
        let handle = self.handle();
        metrics::set_global_recorder(self)?;
        plane_core::metrics::describe();
        Ok(handle)
    }
}

impl Recorder for PrometheusRecorder {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        lock(&self.store.help).insert(key.as_str().to_owned(), description.into_owned());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        lock(&self.store.help).insert(key.as_str().to_owned(), description.into_owned());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, description: SharedString) {
        lock(&self.store.help).insert(key.as_str().to_owned(), description.into_owned());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(
            lock(&self.store.counters)
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(
            lock(&self.store.gauges)
                .entry(key.clone())
                .or_insert_with(|| Arc::new(AtomicU64::new(0f64.to_bits())))
                .clone(),
        )
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(
            lock(&self.store.histograms)
                .entry(key.clone())
                .or_default()
                .clone(),
        )
    }
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// `{a="1",b="2"}` (with `extra` appended), or nothing without labels.
fn labels(key: &Key, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = key
        .labels()
        .map(|l| format!("{}=\"{}\"", l.key(), escape(l.value())))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{}\"", escape(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{v}")
    }
}

impl Metrics {
    /// Every series in the Prometheus text exposition format, grouped by name.
    pub fn render(&self) -> String {
        let help = lock(&self.store.help).clone();
        let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
        fn family<'a>(
            families: &'a mut BTreeMap<String, (&'static str, Vec<String>)>,
            name: &str,
            kind: &'static str,
        ) -> &'a mut Vec<String> {
            &mut families
                .entry(name.to_owned())
                .or_insert_with(|| (kind, Vec::new()))
                .1
        }
        for (key, v) in lock(&self.store.counters).iter() {
            let line = format!(
                "{}{} {}",
                key.name(),
                labels(key, None),
                v.load(Ordering::Relaxed)
            );
            family(&mut families, key.name(), "counter").push(line);
        }
        for (key, v) in lock(&self.store.gauges).iter() {
            let line = format!(
                "{}{} {}",
                key.name(),
                labels(key, None),
                number(f64::from_bits(v.load(Ordering::Relaxed)))
            );
            family(&mut families, key.name(), "gauge").push(line);
        }
        for (key, h) in lock(&self.store.histograms).iter() {
            let lines = family(&mut families, key.name(), "histogram");
            let mut cumulative = 0;
            for (i, bound) in BUCKETS
                .iter()
                .map(|b| number(*b))
                .chain(["+Inf".to_owned()])
                .enumerate()
            {
                cumulative += h.counts[i].load(Ordering::Relaxed);
                lines.push(format!(
                    "{}_bucket{} {cumulative}",
                    key.name(),
                    labels(key, Some(("le", &bound)))
                ));
            }
            lines.push(format!(
                "{}_sum{} {}",
                key.name(),
                labels(key, None),
                number(f64::from_bits(h.sum_bits.load(Ordering::Relaxed)))
            ));
            lines.push(format!(
                "{}_count{} {}",
                key.name(),
                labels(key, None),
                h.count.load(Ordering::Relaxed)
            ));
        }
        let mut out = String::new();
        for (name, (kind, mut lines)) in families {
            if let Some(h) = help.get(&name) {
                let _ = writeln!(out, "# HELP {name} {}", h.replace('\n', " "));
            }
            let _ = writeln!(out, "# TYPE {name} {kind}");
            lines.sort();
            for l in lines {
                out.push_str(&l);
                out.push('\n');
            }
        }
        out
    }
}

type Check = Box<dyn Fn() -> ConnectionState + Send + Sync>;

/// Named connection-state checks for `/healthz`.
#[derive(Default)]
pub struct Health {
    checks: Vec<(String, Check)>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.checks.iter().map(|(n, _)| n))
            .finish()
    }
}

impl Health {
    /// No checks (always healthy).
    pub fn new() -> Self {
        Health::default()
    }

    /// Add a check; typically a plane handle's `connection_state`.
    pub fn check(
        mut self,
        name: impl Into<String>,
        state: impl Fn() -> ConnectionState + Send + Sync + 'static,
    ) -> Self {
        self.checks.push((name.into(), Box::new(state)));
        self
    }

    /// Every check's state, in the order added.
    pub fn states(&self) -> Vec<(&str, ConnectionState)> {
        self.checks.iter().map(|(n, f)| (n.as_str(), f())).collect()
    }

    /// Whether every check is up, and one `name state` line per check.
    pub fn report(&self) -> (bool, String) {
        let mut ok = true;
        let mut body = String::new();
        for (name, state) in self.states() {
            ok &= state.is_up();
            let _ = writeln!(body, "{name} {state}");
        }
        (ok, body)
    }
}

/// A running `/metrics` + `/healthz` endpoint; stops when dropped.
#[derive(Debug)]
pub struct ObserveServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ObserveServer {
    /// The address it listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ObserveServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Largest request head read; scrapers send a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A connection that sends no complete request head within this is closed.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serve `GET /metrics` and `GET /healthz` on `addr` until the returned
/// server is dropped.
///
/// # Errors
/// When binding fails.
pub async fn serve(
    addr: impl ToSocketAddrs,
    metrics: Metrics,
    health: Health,
) -> std::io::Result<ObserveServer> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let state = Arc::new((metrics, health));
    let limit = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let state = state.clone();
            // Each connection task is short-lived (bounded by READ_TIMEOUT
            // and one response), so it need not outlive the server handle.
            tokio::spawn(async move {
                let _permit = permit;
                let _ = respond(stream, &state.0, &state.1).await;
            });
        }
    });
    Ok(ObserveServer { addr, task })
}

async fn respond(mut stream: TcpStream, metrics: &Metrics, health: &Health) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(READ_TIMEOUT, read).await.is_err() {
        return Ok(());
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET", "/healthz") => {
            let (ok, body) = health.report();
            let status = if ok {
                "200 OK"
            } else {
                "503 Service Unavailable"
            };
            (status, "text/plain; charset=utf-8", body)
        }
        ("GET", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".into(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}
