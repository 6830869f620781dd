//! The report: `target/bench/report.json` (format in `BENCH.md`),
//! `docs/bench.md` (tables and targets) and `docs/bench.svg` (the chart).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::Result;

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Better {
    /// Smaller is better (latency, drops).
    Lower,
    /// Larger is better (rates).
    Higher,
}

/// One measured metric, plane against raw.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Backend name.
    pub backend: String,
    /// Scenario name.
    pub scenario: String,
    /// Payload size in bytes, where the scenario has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload: Option<usize>,
    /// Metric name, unit included.
    pub metric: String,
    /// Through plane.
    pub plane: f64,
    /// The raw client; `None` where there is none.
    pub raw: Option<f64>,
    /// plane / raw.
    pub ratio: Option<f64>,
    /// Which direction is good.
    pub better: Better,
    /// `"control"` where `raw` is a control row (the raw client doing what
    /// plane's mapping does, e.g. carrying plane's headers); absent for the
    /// bare raw client.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// Smallest per-run ratio, where the ratio is the median of several runs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_min: Option<f64>,
    /// Largest per-run ratio.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_max: Option<f64>,
    /// How many runs the ratio is the median of.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
}

impl Row {
    /// A row; the ratio is computed when there is a non-zero raw value.
    pub fn new(
        backend: &str,
        scenario: &str,
        payload: Option<usize>,
        metric: &str,
        better: Better,
        plane: f64,
        raw: Option<f64>,
    ) -> Self {
        Row {
            backend: backend.to_owned(),
            scenario: scenario.to_owned(),
            payload,
            metric: metric.to_owned(),
            plane,
            raw,
            ratio: raw.filter(|r| *r > 0.0).map(|r| plane / r),
            better,
            baseline: None,
            ratio_min: None,
            ratio_max: None,
            runs: None,
        }
    }

    /// The ratio as the median of per-run ratios, with their min and max.
    /// Fewer than two runs leave the pooled ratio as it is.
    pub fn with_spread(mut self, mut ratios: Vec<f64>) -> Self {
        ratios.retain(|r| r.is_finite());
        if ratios.len() < 2 || self.raw.is_none() {
            return self;
        }
        ratios.sort_by(f64::total_cmp);
        let n = ratios.len();
        let median = if n % 2 == 1 {
            ratios[n / 2]
        } else {
            (ratios[n / 2 - 1] + ratios[n / 2]) / 2.0
        };
        self.ratio = Some(median);
        self.ratio_min = Some(ratios[0]);
        self.ratio_max = Some(ratios[n - 1]);
        self.runs = Some(n);
        self
    }

    /// Keep the pooled ratio, with the min and max of `ratios` (sub-runs of
    /// one run, such as the windows of a paced run) beside it.
    pub fn with_range(mut self, mut ratios: Vec<f64>) -> Self {
        ratios.retain(|r| r.is_finite());
        if ratios.len() < 2 || self.ratio.is_none() {
            return self;
        }
        ratios.sort_by(f64::total_cmp);
        self.ratio_min = ratios.first().copied();
        self.ratio_max = ratios.last().copied();
        self.runs = Some(ratios.len());
        self
    }

    /// Mark `raw` as the control row.
    pub fn against_control(mut self) -> Self {
        self.baseline = Some("control".to_owned());
        self
    }

    fn metric_label(&self) -> String {
        match &self.baseline {
            Some(b) => format!("{} (vs {b})", self.metric),
            None => self.metric.clone(),
        }
    }

    fn label(&self) -> String {
        match self.payload {
            Some(p) => format!("{} {} ({})", self.scenario, self.metric_label(), size(p)),
            None => format!("{} {}", self.scenario, self.metric_label()),
        }
    }
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Cores, memory and CPU model.
    pub machine: String,
    /// UTC date of the run.
    pub date: String,
    /// `quick` or `full`.
    pub mode: String,
    /// Every measured metric.
    pub results: Vec<Row>,
}

fn size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// "2 cores, 23 GiB RAM, `<model>`" from /proc.
pub fn machine() -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|l| l.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores, {mem_gib:.0} GiB RAM, {model}")
}

/// Today's UTC date (YYYY-MM-DD) from the system clock.
pub fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

impl Report {
    /// Write the JSON report, the markdown page and the chart.
    pub fn write(&self, json: &Path, docs: &Path) -> Result<()> {
        if let Some(dir) = json.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(json, serde_json::to_string_pretty(self)?)?;
        std::fs::create_dir_all(docs)?;
        std::fs::write(docs.join("bench.md"), self.markdown())?;
        std::fs::write(docs.join("bench.svg"), self.svg())?;
        Ok(())
    }

    fn find(
        &self,
        backend: &str,
        scenario: &str,
        metric: &str,
        payload: Option<usize>,
    ) -> Option<&Row> {
        self.results.iter().find(|r| {
            r.backend == backend
                && r.baseline.is_none()
                && r.scenario == scenario
                && r.metric == metric
                && (payload.is_none() || r.payload == payload)
        })
    }

    fn backends(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &self.results {
            if !out.contains(&r.backend.as_str()) {
                out.push(&r.backend);
            }
        }
        out
    }

    /// The issue's targets, each checked against this run's numbers.
    fn targets(&self) -> Vec<(String, Option<bool>, String)> {
        let mut out = Vec::new();
        let ratio = |b: &str, s: &str, m: &str, p: Option<usize>| {
            self.find(b, s, m, p).and_then(|r| r.ratio)
        };
        let mut check = |what: String, value: Option<f64>, ok: &dyn Fn(f64) -> bool| {
            let (met, shown) = match value {
                Some(v) => (Some(ok(v)), format!("{v:.3}")),
                None => (None, "not measured".to_owned()),
            };
            out.push((what, met, shown));
        };
        for (b, p50) in [
            ("nats", 1.10),
            ("quic", 1.10),
            ("zmq", 1.05),
            ("tcp", 1.10),
            ("http", 1.10),
        ] {
            check(
                format!("{b}: unary p50 plane/raw ≤ {p50:.2}"),
                ratio(b, "unary_latency", "p50_us", None),
                &|v| v <= p50,
            );
            check(
                format!("{b}: unary p99 plane/raw ≤ 1.20"),
                ratio(b, "unary_latency", "p99_us", None),
                &|v| v <= 1.20,
            );
            check(
                format!("{b}: unary throughput (64 in flight) plane/raw ≥ 0.90"),
                ratio(b, "unary_throughput", "calls_per_s", None),
                &|v| v >= 0.90,
            );
        }
        for b in ["nats", "quic", "zmq", "tcp"] {
            check(
                format!("{b}: pub/sub 64 B plane/raw ≥ 0.90"),
                ratio(b, "pubsub_throughput", "msgs_per_s", Some(64)),
                &|v| v >= 0.90,
            );
            check(
                format!("{b}: pub/sub 64 KiB plane/raw ≥ 0.95"),
                ratio(b, "pubsub_throughput", "msgs_per_s", Some(64 * 1024)),
                &|v| v >= 0.95,
            );
        }
        for b in ["nats", "quic", "zmq", "tcp", "http"] {
            let plane = |m: &str| self.find(b, "paced_slo", m, None).map(|r| r.plane);
            let (achieved, errors, skipped) = (
                plane("achieved_per_s"),
                plane("errors"),
                plane("not_issued"),
            );
            let ok_rest = achieved.is_some_and(|a| a >= 0.99 * 30_000.0)
                && errors == Some(0.0)
                && skipped == Some(0.0);
            check(
                format!(
                    "{b}: plugin gateway service level, plane p99 (µs) ≤ 8000 at 30k calls/s offered \
                     (achieved ≥ 99%, no errors, none left unissued{})",
                    achieved.map_or(String::new(), |a| format!("; achieved {a:.0}/s"))
                ),
                plane("p99_us"),
                &|v| v <= 8000.0 && ok_rest,
            );
        }
        let nats_p50 = self
            .find("nats", "unary_latency", "p50_us", None)
            .map(|r| r.plane);
        for b in ["quic", "zmq", "tcp", "http"] {
            let mine = self
                .find(b, "unary_latency", "p50_us", None)
                .map(|r| r.plane);
            let v = mine.zip(nats_p50).map(|(m, n)| m / n);
            check(
                format!("{b}: brokerless unary p50 below NATS request/reply p50 (plane {b} / plane nats < 1)"),
                v,
                &|v| v < 1.0,
            );
        }
        out
    }

    fn markdown(&self) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# Benchmark: every backend against its raw client\n");
        let _ = writeln!(
            md,
            "Generated by `cargo xtask bench{}` (`crates/plane-bench`); do not edit by hand. \
             Method: `../shared/BENCH.md` — plane and raw rounds alternate in one run, so the \
             ratio (plane / raw) holds even on a noisy machine.\n",
            if self.mode == "quick" { " --quick" } else { "" }
        );
        let _ = writeln!(md, "- machine: {}", self.machine);
        let _ = writeln!(md, "- date: {}", self.date);
        let _ = writeln!(md, "- mode: {}", self.mode);
        if self.mode == "quick" {
            let _ = writeln!(
                md,
                "\n> **This is a quick run** (few iterations, 8 MiB objects): a smoke test of the \
                 harness, not numbers to quote. Run `cargo xtask bench` for the full run."
            );
        }
        let _ = writeln!(
            md,
            "\n![plane / raw ratio per backend and scenario](bench.svg)\n"
        );
        let _ = writeln!(md, "## Targets\n");
        let _ = writeln!(md, "Checked against this run's numbers.\n");
        let _ = writeln!(md, "| target | value | met |\n|---|---|---|");
        for (what, met, shown) in self.targets() {
            let met = match met {
                Some(true) => "yes",
                Some(false) => "**no**",
                None => "—",
            };
            let _ = writeln!(md, "| {what} | {shown} | {met} |");
        }
        for backend in self.backends() {
            let _ = writeln!(md, "\n## {backend}\n");
            let _ = writeln!(
                md,
                "| scenario | metric | payload | plane | raw | ratio | better |"
            );
            let _ = writeln!(md, "|---|---|---|---|---|---|---|");
            for r in self.results.iter().filter(|r| r.backend == backend) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    r.scenario,
                    r.metric_label(),
                    r.payload.map_or("—".to_owned(), size),
                    num(r.plane),
                    r.raw.map_or("—".to_owned(), num),
                    ratio_cell(r),
                    match r.better {
                        Better::Lower => "lower",
                        Better::Higher => "higher",
                    }
                );
            }
        }
        md.push_str(NOTES);
        md
    }

    /// Grouped bars of plane/raw per backend and scenario, with a 1.0 line.
    /// Drops are left out (a count, not a cost). A bar is green where plane
    /// is ahead of raw in the metric's good direction, orange where behind.
    fn svg(&self) -> String {
        let bars: Vec<(&Row, f64)> = self
            .results
            .iter()
            .filter(|r| {
                r.metric != "drops" && r.metric != "not_issued" && !r.metric.starts_with("errors")
            })
            .filter_map(|r| r.ratio.map(|v| (r, v)))
            .collect();
        let backends: Vec<&str> = {
            let mut b: Vec<&str> = Vec::new();
            for (r, _) in &bars {
                if !b.contains(&r.backend.as_str()) {
                    b.push(&r.backend);
                }
            }
            b
        };
        let row_h = 16.0;
        let group_gap = 26.0;
        let left = 330.0;
        let width = 900.0;
        let plot_w = width - left - 60.0;
        let max = bars.iter().map(|b| b.1).fold(1.5_f64, f64::max).min(4.0);
        let x = |v: f64| left + plot_w * (v.min(max) / max);
        let height = 50.0 + bars.len() as f64 * row_h + backends.len() as f64 * group_gap + 30.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
        );
        let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="10" y="18" font-size="14" font-weight="bold">plane / raw per backend and scenario ({} run, {})</text>"#,
            self.mode, self.date
        );
        let _ = writeln!(
            s,
            r##"<text x="10" y="34" fill="#555">bar = plane / raw; latencies and CPU: lower is better, rates: higher is better; green = plane ahead, orange = plane behind; bars are cut at {max:.1}</text>"##
        );
        let mut y = 50.0;
        for backend in &backends {
            y += group_gap;
            let _ = writeln!(
                s,
                r#"<text x="10" y="{:.1}" font-size="13" font-weight="bold">{backend}</text>"#,
                y - 8.0
            );
            for (r, v) in bars.iter().filter(|b| b.0.backend == *backend) {
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
                    left - 6.0,
                    y + 11.0,
                    xml(&r.label())
                );
                let _ = writeln!(
                    s,
                    r#"<rect x="{left:.1}" y="{:.1}" width="{:.1}" height="{:.1}" fill="{}"/>"#,
                    y + 2.0,
                    (x(*v) - left).max(1.0),
                    row_h - 4.0,
                    if ahead(r.better, *v) {
                        "#59a14f"
                    } else {
                        "#f28e2b"
                    }
                );
                let _ = writeln!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}">{v:.2}</text>"#,
                    x(*v) + 4.0,
                    y + 11.0
                );
                y += row_h;
            }
        }
        let one = x(1.0);
        let _ = writeln!(
            s,
            r##"<line x1="{one:.1}" y1="44" x2="{one:.1}" y2="{:.1}" stroke="#d00" stroke-dasharray="4 3"/>"##,
            y + 4.0
        );
        let _ = writeln!(
            s,
            r##"<text x="{one:.1}" y="{:.1}" text-anchor="middle" fill="#d00">1.0</text>"##,
            y + 18.0
        );
        s.push_str("</svg>\n");
        s
    }
}

/// Whether a plane/raw ratio means plane is at least as good as raw.
fn ahead(better: Better, ratio: f64) -> bool {
    match better {
        Better::Lower => ratio <= 1.0,
        Better::Higher => ratio >= 1.0,
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The ratio, with its min–max over the runs where it is a median.
fn ratio_cell(r: &Row) -> String {
    match (r.ratio, r.ratio_min, r.ratio_max) {
        (Some(v), Some(lo), Some(hi)) => format!("{v:.3} ({lo:.3}–{hi:.3})"),
        (Some(v), _, _) => format!("{v:.3}"),
        _ => "—".to_owned(),
    }
}

fn num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v > 0.0 && v < 0.01 {
        format!("{v:.4}")
    } else {
        format!("{v:.2}")
    }
}

/// What the numbers do not say by themselves.
const NOTES: &str = r#"
## How each pair is measured

- **Latency** is measured one call at a time with 64 B requests and replies, after a
  warm-up; `p*_us` come from an HDR histogram of every call. `paced_*` is the same
  call issued at 1 kHz, which exposes wake-up costs of idle connections. The plane
  echo handler returns the request's body, as the raw echo servers return only the
  payload; returning the whole request message would send its trace header back too.
- **Throughput** keeps 64 calls (or acked publishes) in flight on one connection,
  from one task, on both sides.
- **Streams** are one call at a time, each streaming 64 B chunks; the raw side writes
  length-prefixed chunks on the same transport (a NATS inbox, one QUIC bi-stream, one
  DEALER/ROUTER pair) and an end marker.
- **Ratios and their spread.** Every round runs plane and raw once, alternating which
  goes first. `plane` and `raw` pool all rounds (latency quantiles from one histogram
  of every call, rates as total count over total time); `ratio` is the **median of the
  per-round ratios**, shown with their min–max (`ratio_min`, `ratio_max` and `runs` in
  `report.json`), so it need not equal plane / raw exactly. The full run has 6 rounds
  per scenario (5 for pub/sub and objects); `--quick` has 1 or 2 and its spread says
  little. `paced_slo` is one run per side: its ratio is the whole run's, its min–max that of five
  equal windows of it (by scheduled time).
- **Pub/sub** is measured in steady state: a fresh subscriber and subject per round,
  the publisher publishing as fast as it accepts (yielding to the runtime every 64
  messages) for a warm-up (300 ms) and then a window (1 s; `--quick` 100 ms and
  250 ms); `msgs_per_s` is what the receiver counted in the window over its length.
  `delivered_fraction` is what arrived of all that was published in the round (after
  the publisher stops, the receiver is given until 200 ms pass without an arrival), so
  a publisher that drops is not rewarded; `drops` are messages published but never
  received, summed over rounds.
- **Allocations** (`allocs_per_call`, `alloc_bytes_per_call`, `allocs_per_msg`,
  `alloc_bytes_per_msg`) come from a counting global allocator in the bench binary
  (every allocation and reallocation of the process, any thread, with the bytes asked
  for): one call (or one 64 B event, published once the previous one arrived) at a
  time, after a warm-up, over 2,000 calls or 1,000 events per round (`--quick`: 200
  and 100), divided; the value is the median over rounds. Both ends are counted where
  both run in this process (mem, quic, zmq, tcp, http); on nats only the clients (the
  broker is another process). Background work in the same window (keep-alives,
  heartbeats) is counted too, which is why the figures are not whole numbers.
- **Control rows** (`vs control`, `"baseline": "control"` in `report.json`): on nats,
  raw async-nats carrying the headers plane sends. The bench reads them off the wire
  (a second client subscribed to `>` while plane makes one call) and has the raw
  caller send the request's headers and the raw echo reply with the reply's, same
  names and same value sizes; the progress output lists them. plane / raw minus
  plane / control is what the header mapping costs; plane / control is plane's own
  runtime.
- **`unary_await`** is `unary_throughput` against a handler that awaits once
  (`tokio::task::yield_now`) before replying, in plane's handler and in every raw
  echo server alike, so the path of a handler that does not finish at its first poll
  stays measured.
- **`paced_slo`** is the plugin gateway's service level: 64 B calls paced open-loop at
  30,000/s for 10 s (`--quick`: 1 s) by a generator thread, each spawned onto the
  runtime at its scheduled time whether or not earlier calls have finished (at most
  10,000 in flight; a call due beyond that is not issued and counted in `not_issued`),
  each with a 5 s timeout. Latency is counted from the call's **scheduled** time, so
  queueing behind slow calls is counted (no coordinated omission); the generator's
  own lateness (thread sleep granularity, tens of µs) is counted too.
  `achieved_per_s` is successful calls over the time from the first scheduled call to
  the last completion; `errors` by kind (`errors_<kind>`: plane's error kind, `raw`
  for a raw client's error, `timeout`, `unfinished`).
- **Objects** store then read back one object, streaming the read.
- **CPU** (`cpu_us_per_call`, `_per_chunk`, `_per_msg`, `_per_publish`, `_per_mb`) is
  the CPU time, user plus system, that the whole bench process used during a rate
  scenario's rounds of each side, divided by what the round counted. It is read from
  `/proc/self/stat`, whose clock ticks are 10 ms, so short rounds (`--quick`) give
  coarse figures. On quic and zmq the process holds both ends of every call and
  message; on nats only the clients, and `server_cpu_us_per_*` is the nats-server
  process's share, read from `/proc/<pid>/stat` of the container's process when the
  container runs on this machine.
- mem has no raw client: plane only, `raw` and `ratio` are `null`.
- zmq and quic have request and at-most-once event planes but no durable events or
  objects, so they have no durable or object rows. Their pub/sub pairs one plane
  events handle, publishing and subscribed to itself over loopback, with the raw
  equivalent: on zmq a PUB socket and a SUB socket with plane-zmq's events high-water
  mark (10,000), one non-blocking send per message; on quic a subscriber bi-stream to
  a publisher endpoint, the publisher offering each message to a bounded queue of
  plane-quic's size (1,024) that a task drains into the stream, length-prefixed, and
  dropping when it is full — the same never-wait publish plane-quic has.
- tcp: the raw client is tokio TCP with `TCP_NODELAY` and a 4-byte length before
  every message, one pooled connection per call in flight (so 64 connections at 64
  in flight); plane-tcp multiplexes every call on one connection. Raw pub/sub is one
  connection from a publisher task draining a bounded queue of plane-tcp's size
  (1,024), dropping when full.
- http: the raw client is hyper's HTTP/2 client and server used directly: one
  prior-knowledge connection carrying every call as a stream, `TCP_NODELAY`, the same
  flow-control windows as plane-http (1 MiB per stream, 16 MiB per connection). A unary
  call is a `POST` echoed back; a streamed one is answered with 64 B data frames.
  plane-http carries plane's envelopes in those bodies (credit and heartbeats in
  them too). No pub/sub: plane-http has no events plane.
- fs: plane is configured with `fsync=false`, because `LocalFileSystem` does not fsync
  either; plane still hashes every object (SHA-256) on the way in and verifies it on
  the way out, which the raw side does not.

## TCP_NODELAY

Checked for every socket plane owns on a hot path:

- NATS: async-nats 0.51 calls `set_nodelay(true)` on every TCP connection it opens
  (`connector.rs`), for plane and raw alike.
- ZeroMQ: libzmq 4.3.4 sets `TCP_NODELAY` itself on every TCP socket it connects or
  accepts (`tune_tcp_socket` in `tcp.cpp`).
- QUIC is UDP: nothing to set.
- The only TCP sockets plane opens itself are the `plane-observe` metrics endpoint
  (one response per request, no small-write chains) and the NATS test harness's
  readiness probe; neither is on a data path.

## Hot-path changes and what they bought

Found with `perf record --call-graph dwarf` on a driver that keeps 64 unary 64 B
calls in flight against an echo endpoint, then measured with the same driver before
and after (three alternating 2-second runs each, median, plane calls/s on this
2-core machine while other builds ran, so take the ratios, not the absolute values):

| change | why (from the profile) |
|---|---|
| plane-nats: one wildcard reply inbox per connection, one token per call | a `SUB`, an `UNSUB` and a round trip through the client's connection task per call |
| plane-nats: one heartbeat ticker per served endpoint instead of a timer task per call | a task spawn and a timer per unary call that almost always ended before its first heartbeat |
| plane-nats: `plane-ctl` only on frames that leave the call open | bytes and a header per final reply that nobody could use |
| plane-core: metric handles registered once per label set and cached | a label `Vec` clone, a key hash and a recorder lookup for each of ~10 metrics per call |
| plane-core: `RequestId::new_v7` from the thread's generator | a `getrandom` system call per id (two ids per call) |

| backend | before (calls/s) | after (calls/s) | change |
|---|---|---|---|
| mem | 85,140 | 126,743 | +49% |
| zmq | 25,323 | 42,801 | +69% |
| quic | 26,714 | 35,159 | +32% |
| nats | 16,091 | 23,287 | +45% |

The core changes (metrics, ids) help every backend; the NATS ones only NATS.

A second round, found once quic and zmq pub/sub were measured against their raw
clients and the CPU per operation was reported:

| change | why | measured (same driver; publish-flood for pub/sub) |
|---|---|---|
| plane-zmq: the DEALER and ROUTER loops send up to 64 queued messages per trip, and read the socket again after sending instead of waiting for `ZMQ_FD` | one trip around the loop per message; and a send can take in the notification that replies arrived, after which the loop slept until the next message or timer | unary calls/s, three alternating 2 s runs: median 27,882 → 32,976 (+18%) |
| plane-quic: a subscriber's queued events are written to its stream in one write (up to 64) | quinn takes the connection lock and wakes its driver per write | received msgs/s at 64 B: 61,537 (one run) → 104,278 and 125,498 (two runs), together with the next change |
| plane-quic: stream reads into an uninitialised buffer | every poll zeroed 16 KiB, most of them for a small frame or nothing | (included above; it is on every quic stream read) |

Tried and left out: the same batching in plane-zmq's events publisher made a
flooding publisher starve the subscriber on this 2-core machine (received msgs/s,
median of three 2 s runs: 107,510 without it, 48,999 with it), so it was reverted.

The first two rounds were measured on an earlier 2-core machine (AMD EPYC); the
third, below, on the machine this report names. It started from a profile of zmq
unary calls in which a fifth of the samples were in `malloc` and `free` (glibc's
arena lock included), and removes allocations per call. Medians of three
alternating 2 s runs of the unary driver (64 in flight):

| change | why | measured |
|---|---|---|
| plane-core: header names plane sets, or reads off the wire, are kept as `&'static str` | `traceparent`, `plane-timeout-ms`, `plane-endpoint`, `plane-instance` and the like were each a fresh `String`, on both sides of every call | mem 114,372 → 123,108 calls/s (+8%), zmq 70,163 → 74,572 (+6%), together with the next |
| plane-core: a unary or streamed call without retries is sent without a copy of itself | the retry loop cloned the whole call (endpoint, headers) for its first and only attempt | (included above; the streamed half came after these runs) |
| plane-quic, plane-zmq: the request envelope is built once per call and shared by the size check and the send | each call was copied twice, once only to check its size | quic 40,841 → 53,688 (+31%), zmq 68,840 → 79,136 (+15%): the build before this round against the build after all of it |
| plane-core: `traceparent` written digit by digit | `format!` with padded hex was ~1% of the samples, once per call without a trace | (included above) |

Echoing the body instead of the message (see "How each pair is measured") added zmq
74,317 → 77,792 calls/s and, oddly, took mem from 125,564 to 107,288: mem hands the
caller the very message the handler returned, so with a body echo the request's
headers are freed on the server's task instead of the caller's; that glibc's
allocator minds this is a guess, not measured. mem has no raw pair, so no ratio
moves with it.

## Noticed (not changed yet)

- Some ratios move a lot between runs on this machine. zmq pub/sub at 64 KiB: five
  `--only zmq` runs on 2026-11-30, three before the third round and two after it,
  gave 0.91, 0.76, 0.79 and 0.68, 0.73 (plane 24,900–28,600 msgs/s, raw
  31,300–38,800), and three full runs after it 0.68, 0.56 and 0.82; the third round
  did not touch the events path. Unary p99 in the same three full runs: nats 1.10,
  1.22, 1.18; quic 1.15, 1.20, 1.61; zmq 1.14, 0.49, 1.24. p50 and throughput held
  within a few hundredths (p50 nats 1.16–1.19, quic 1.27–1.32, zmq 1.18–1.26;
  throughput nats 0.38–0.41, quic 0.48–0.50, zmq 0.37–0.41). The tables above are
  the last of the three.

- plane-quic still copies each read into the frame decoder's buffer; quinn's
  `read_chunk` hands out `Bytes` that could be decoded without that copy.
- Per event, plane formats the publisher id (a UUID) and the sequence as header
  strings, and the subscriber parses them back; a binary origin field would save
  both (a wire change).
- plane-zmq's caller waits for the DEALER task to confirm that libzmq took the
  request (so a peer that cannot be reached fails the call with `Connection` and the
  directory can try another instance): one more task hop per call than the raw
  DEALER, whose caller only waits for the reply.
- plane-nats object reads allocate a fresh 128 KiB buffer per chunk (each chunk is
  handed out as `Bytes`, so some allocation is inherent); the raw side reuses one.
- Every plane call carries headers the raw call does not: `plane-id`,
  `plane-timeout-ms` and a `traceparent` (a fresh trace when the caller has none,
  by design). On NATS they are about 150 bytes per request that the server in the
  same 2-core machine must parse too (the `server_cpu_us_per_call` row shows what
  that costs it); async-nats hashes header names with SipHash.
- The server runtime spawns one task per admitted call (the raw echo servers answer
  inline); plane-quic spawns one more per incoming stream before it.
- Allocation is still the largest plane-side cost per call: the per-call task, a
  reply channel per call on zmq, nats and mem (tokio's channel allocates a block of
  32 slots), the envelope copy per connection attempt on zmq, the timeout and trace
  header values. plane leaves the global allocator to the application; with glibc's,
  frees on another thread than the allocation contend on its arena lock.
- plane-nats' at-most-once subscriptions pass every event through a forwarding task
  into the subscription's bounded buffer (that is how drops are counted per
  subscription); the raw subscriber reads the client's channel directly.
"#;
