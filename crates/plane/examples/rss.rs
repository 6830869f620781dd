//! Peak memory of a subscriber while its own process publishes `N` events
//! of `S` bytes to it as fast as it can: with `--reader stopped` (the
//! default) the subscription is not read until publishing is over, then
//! read to the end; with `--reader flood` it is read all along, as fast as
//! the subscriber can, so the figure is what the buffers hold under a
//! flood.
//!
//! ```text
//! cargo run --example rss                                  # mem, zmq, quic, tcp; a table
//! cargo run --example rss -- --reader flood --size 64
//! cargo run --example rss -- --nats nats://127.0.0.1:4222  # and nats
//! cargo run --example rss -- --events 20000 --size 65536 --max-bytes 1000000000000
//! cargo run --example rss -- --one URL                     # one run (what the table runs)
//! ```
//!
//! Each run is a process of its own, since the figure is the process's peak
//! resident set (`VmHWM` in `/proc/self/status`, Linux only). A run also
//! reads the subscription once publishing is over and counts what was
//! delivered and what was reported dropped (`Overloaded`); what neither
//! accounts for was lost without a report (on ZeroMQ, at a socket's
//! high-water mark). `--max-bytes` sets the subscription's byte bound (a
//! huge one shows the bound by count alone, as before there was a byte
//! bound); `--capacity` its count bound. Nothing here asserts a figure:
//! memory depends on the allocator and the machine.

use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;

use plane::events::SubscribeOptions;
use plane::ErrorKind;

#[derive(Clone, Copy, PartialEq)]
enum Reader {
    Stopped,
    Flood,
}

struct Args {
    reader: Reader,
    events: usize,
    size: usize,
    capacity: usize,
    max_bytes: usize,
    nats: Option<String>,
    one: Option<String>,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        reader: Reader::Stopped,
        events: 20_000,
        size: 64 * 1024,
        capacity: SubscribeOptions::DEFAULT_CAPACITY,
        max_bytes: SubscribeOptions::DEFAULT_MAX_BYTES,
        nats: None,
        one: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("`{flag}` needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--events" => a.events = number()?,
            "--size" => a.size = number()?,
            "--capacity" => a.capacity = number()?,
            "--max-bytes" => a.max_bytes = number()?,
            "--reader" => {
                a.reader = match value.as_str() {
                    "stopped" => Reader::Stopped,
                    "flood" => Reader::Flood,
                    other => return Err(format!("--reader is stopped or flood, not `{other}`")),
                }
            }
            "--nats" => a.nats = Some(value),
            "--one" => a.one = Some(value),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

/// A field of `/proc/self/status` in KiB.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// One run: prints `peak_kib delivered reported_dropped publish_ms`.
async fn one(url: &str, a: &Args) -> plane::Result<()> {
    let events = plane::registry().events(url).await?;
    let subject = format!("rss.{:016x}", rand_token());
    let options = SubscribeOptions::new(subject.clone())
        .capacity(a.capacity)
        .max_bytes(a.max_bytes);
    let sub = events.subscribe_with(options).await?;
    let baseline = status_kib("VmRSS").unwrap_or(0);
    // Under a flood the subscription is read while the events come.
    let (reading, sub) = match a.reader {
        Reader::Flood => (Some(tokio::spawn(read_to_end(sub))), None),
        Reader::Stopped => (None, Some(sub)),
    };
    let started = Instant::now();
    for i in 0..a.events {
        // A payload of its own per event, as real events are: a shared one
        // would hide what a buffer that keeps it holds.
        let body = Bytes::from(vec![i as u8; a.size]);
        events.publish(&subject, body).await?;
    }
    events.flush().await?;
    let publish = started.elapsed();
    // Let the transports' readers take in what is still on the way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = || status_kib("VmHWM").unwrap_or(0);
    let (peak, (delivered, dropped)) = match (reading, sub) {
        (Some(reading), _) => {
            let counts = reading.await.expect("the reader")?;
            (peak(), counts)
        }
        // The peak is taken before the stopped subscriber reads, so reading
        // adds nothing to it.
        (None, Some(sub)) => (peak(), read_to_end(sub).await?),
        (None, None) => unreachable!("a run either reads along or afterwards"),
    };
    println!(
        "{peak} {baseline} {delivered} {dropped} {}",
        publish.as_millis()
    );
    Ok(())
}

/// Read `sub` until it is quiet for 2 s: what was delivered, and what was
/// reported dropped (`Overloaded`, whose message starts with the count).
async fn read_to_end(mut sub: plane::events::Subscription) -> plane::Result<(u64, u64)> {
    let (mut delivered, mut dropped) = (0u64, 0u64);
    while let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(2), sub.next()).await {
        match item {
            Ok(_) => delivered += 1,
            Err(e) if e.kind() == ErrorKind::Overloaded => {
                dropped += e
                    .message()
                    .split(' ')
                    .next()
                    .and_then(|n| n.parse::<u64>().ok())
                    .unwrap_or(0);
            }
            Err(e) => return Err(e),
        }
    }
    Ok((delivered, dropped))
}

fn rand_token() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    t ^ u64::from(std::process::id()) << 32
}

fn main() -> ExitCode {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("rss: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(url) = &a.one {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        return match rt.block_on(one(url, &a)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("rss: {url}: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let hub = format!("mem://rss-{:x}", rand_token());
    let discovery = hub.replace(':', "%3A").replace('/', "%2F");
    let mut runs = vec![
        ("mem", format!("{hub}-events")),
        (
            "zmq",
            format!("zmq+tcp://127.0.0.1:0?discovery={discovery}"),
        ),
        ("quic", format!("quic://127.0.0.1:0?discovery={discovery}")),
        ("tcp", format!("tcp://127.0.0.1:0?discovery={discovery}")),
    ];
    if let Some(nats) = &a.nats {
        runs.insert(1, ("nats", nats.clone()));
    }
    let reader = match a.reader {
        Reader::Stopped => "stopped",
        Reader::Flood => "flood",
    };
    println!(
        "{} events of {} bytes, reader {reader}, capacity {}, max_bytes {}",
        a.events, a.size, a.capacity, a.max_bytes
    );
    println!("| backend | peak RSS (MiB) | RSS before publishing (MiB) | delivered | reported dropped | lost unreported | publish (ms) |");
    println!("|---|---|---|---|---|---|---|");
    let me = std::env::current_exe().expect("the example's path");
    for (name, url) in runs {
        let out = Command::new(&me)
            .args(["--one", &url])
            .args(["--events", &a.events.to_string()])
            .args(["--size", &a.size.to_string()])
            .args(["--capacity", &a.capacity.to_string()])
            .args(["--max-bytes", &a.max_bytes.to_string()])
            .args(["--reader", reader])
            .output()
            .expect("a run");
        let text = String::from_utf8_lossy(&out.stdout);
        let f: Vec<u64> = text
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if !out.status.success() || f.len() != 5 {
            println!(
                "| {name} | failed: {} | | | | | |",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            continue;
        }
        let lost = (a.events as u64).saturating_sub(f[2] + f[3]);
        println!(
            "| {name} | {:.0} | {:.0} | {} | {} | {lost} | {} |",
            f[0] as f64 / 1024.0,
            f[1] as f64 / 1024.0,
            f[2],
            f[3],
            f[4]
        );
    }
    ExitCode::SUCCESS
}
