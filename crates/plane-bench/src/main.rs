//! plane's benchmark: every backend against its raw client, interleaved in
//! one run. `cargo xtask bench [--quick]` runs it; see `../shared/BENCH.md`
//! for the method and the report format.
//!
//! Writes `<target>/bench/report.json`, `docs/bench.md` and `docs/bench.svg`.
#![deny(unsafe_code)]
#![deny(missing_docs)]

#[allow(unsafe_code)]
mod alloc;
mod drive;
mod fs;
mod http;
mod mem;
mod nats;
mod plane_ops;
mod quic;
mod report;
mod tcp;
mod zmq;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use drive::Params;

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

use report::{Report, Row};

/// Errors of the harness: anything that stops a scenario.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
/// Result of the harness.
pub type Result<T> = std::result::Result<T, Error>;

/// Prints one line of progress to stderr.
pub fn progress(what: impl std::fmt::Display) {
    eprintln!("bench: {what}");
}

/// Run `scenario` and print its rows as they come.
pub async fn step(
    rows: &mut Vec<Row>,
    name: &str,
    scenario: impl std::future::Future<Output = Result<Vec<Row>>>,
) -> Result<()> {
    let started = Instant::now();
    let got = scenario.await.map_err(|e| format!("{name}: {e}"))?;
    for r in &got {
        progress(format_args!(
            "  {:<5} {:<18} {:<16} {:>8} plane {:>12.1}  raw {:>12}  ratio {}",
            r.backend,
            r.scenario,
            match &r.baseline {
                Some(b) => format!("{} vs {b}", r.metric),
                None => r.metric.clone(),
            },
            r.payload.map_or(String::new(), |p| p.to_string()),
            r.plane,
            r.raw.map_or("-".to_owned(), |v| format!("{v:.1}")),
            r.ratio.map_or("-".to_owned(), |v| format!("{v:.3}")),
        ));
    }
    progress(format_args!("  {name} done in {:.1?}", started.elapsed()));
    rows.extend(got);
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The backends, in the order a run measures them.
const BACKENDS: [&str; 7] = ["mem", "fs", "quic", "zmq", "tcp", "http", "nats"];

async fn run(quick: bool, only: &[String]) -> Result<()> {
    let p = if quick {
        Params::quick()
    } else {
        Params::full()
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let wanted = |b: &str| only.is_empty() || only.iter().any(|o| o == b);
    if wanted("mem") {
        progress("mem (plane only)");
        mem::run(&mut rows, &p).await?;
    }
    if wanted("fs") {
        progress("fs (object_store LocalFileSystem)");
        fs::run(&mut rows, &p).await?;
    }
    if wanted("quic") {
        progress("quic (quinn)");
        quic::run(&mut rows, &p).await?;
    }
    if wanted("zmq") {
        progress("zmq (libzmq DEALER/ROUTER)");
        zmq::run(&mut rows, &p).await?;
    }
    if wanted("tcp") {
        progress("tcp (tokio TCP, length-prefixed)");
        tcp::run(&mut rows, &p).await?;
    }
    if wanted("http") {
        progress("http (hyper HTTP/2, prior knowledge)");
        http::run(&mut rows, &p).await?;
    }
    if wanted("nats") {
        progress("nats (starting nats-server in a container)");
        nats::run(&mut rows, &p).await?;
    }
    if !only.is_empty() {
        // A partial run would leave the report and the docs without the
        // other backends' rows: it is for looking at, not for quoting.
        progress(format_args!(
            "partial run ({}): report and docs not written, in {:.1?}",
            only.join(", "),
            started.elapsed()
        ));
        return Ok(());
    }
    let report = Report {
        machine: report::machine(),
        date: report::today(),
        mode: if quick { "quick" } else { "full" }.to_owned(),
        results: rows,
    };
    let json = target_dir().join("bench").join("report.json");
    let docs = workspace_root().join("docs");
    report.write(&json, &docs)?;
    progress(format_args!(
        "wrote {}, {} and {} in {:.1?}",
        json.display(),
        docs.join("bench.md").display(),
        docs.join("bench.svg").display(),
        started.elapsed()
    ));
    Ok(())
}

fn main() -> ExitCode {
    let mut quick = false;
    let mut only = Vec::new();
    let usage = format!(
        "usage: plane-bench [--quick] [--only BACKEND]...\nbackends: {}",
        BACKENDS.join(", ")
    );
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => match args.next() {
                Some(b) if BACKENDS.contains(&b.as_str()) => only.push(b),
                Some(b) => {
                    eprintln!("{usage}\nunknown backend `{b}`");
                    return ExitCode::FAILURE;
                }
                None => {
                    eprintln!("{usage}\n--only needs a backend");
                    return ExitCode::FAILURE;
                }
            },
            other => {
                eprintln!("{usage}\nunknown argument `{other}`");
                return ExitCode::FAILURE;
            }
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(quick, &only)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::FAILURE
        }
    }
}
