//! plane's developer tasks: `cargo xtask <command>`.
//!
//! - `test`: the whole test suite, conformance included (the README's test command).
//! - `conformance [--backend NAME]...`: run the conformance suite against
//!   backends, write `target/conformance/<backend>.json`, render `docs/conformance.md`.
//! - `matrix`: only render `docs/conformance.md` from existing reports.
//! - `bench [--quick] [--only BACKEND]...`: every backend against its raw client
//!   (`crates/plane-bench`, release build), writing `target/bench/report.json`,
//!   `docs/bench.md` and `docs/bench.svg` (`--only` measures some backends and writes
//!   nothing).
//! - `fuzz [--time SECS] [--runs N] [TARGET]...`: the libFuzzer targets of
//!   `fuzz/` on the stable toolchain, each bounded, failing on a crash
//!   (`fuzz/README.md`).
//! - `chaos [--runs N] [--fault KIND]... [--hold SECS]`: fault runs against a
//!   three-node NATS cluster in docker, each history checked
//!   (`crates/plane-chaos`, docs/reliability.md); 20 runs of every fault
//!   kind by default, writing `target/chaos/`.
//!
//! Kept to the standard library plus serde_json so that it compiles quickly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use serde::Deserialize;

/// Backends the conformance suite knows how to run, with the cargo test that
/// runs each one.
const BACKENDS: &[(&str, &str, &str)] = &[
    // (name, package, integration test)
    ("mem", "plane-conformance", "mem"),
    ("nats", "plane-nats", "conformance"),
    ("fs", "plane-fs-objstore", "conformance"),
    ("quic", "plane-quic", "conformance"),
    ("zmq", "plane-zmq", "conformance"),
    ("tcp", "plane-tcp", "conformance"),
    ("http", "plane-http", "conformance"),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("conformance") => conformance(&args[1..]),
        Some("matrix") => render_matrix(),
        Some("bench") => bench(&args[1..]),
        Some("fuzz") => fuzz(&args[1..]),
        Some("chaos") => chaos(&args[1..]),
        _ => Err(format!(
            "usage: cargo xtask <test | conformance [--backend NAME]... | matrix | bench [--quick] [--only BACKEND]... | fuzz [--time SECS] [--runs N] [TARGET]... | chaos [--runs N] [--fault KIND]... [--hold SECS]>\nbackends: {}",
            BACKENDS.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn run(mut cmd: Command) -> Result<(), String> {
    eprintln!("xtask: running {cmd:?}");
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{cmd:?} failed with {status}"))
    }
}

fn has_nextest() -> bool {
    cargo()
        .args(["nextest", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The whole suite: every unit, integration and doc test of the workspace,
/// which includes each backend's conformance run, then the matrix.
fn test(args: &[String]) -> Result<(), String> {
    if !args.is_empty() {
        return Err(format!("test takes no arguments, got {args:?}"));
    }
    if has_nextest() {
        let mut c = cargo();
        c.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        run(c)?;
        // nextest does not run doc tests.
        let mut c = cargo();
        c.args(["test", "--workspace", "--doc"]);
        run(c)?;
    } else {
        let mut c = cargo();
        c.args(["test", "--workspace", "--no-fail-fast"]);
        run(c)?;
    }
    render_matrix()
}

/// The benchmark binary does the work (and the writing); this only builds
/// and runs it in release mode.
fn bench(args: &[String]) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "--release", "-p", "plane-bench", "--"]);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => c.arg(a),
            "--only" => c.arg(a).arg(it.next().ok_or("--only needs a backend")?),
            other => return Err(format!("unknown argument `{other}`")),
        };
    }
    run(c)
}

/// `chaos`: build the fault runner (a dev build, sharing the tests'
/// artifacts) and run it; its arguments pass through, checked by it. The
/// histories and `summary.md` go to `target/chaos/`.
fn chaos(args: &[String]) -> Result<(), String> {
    let mut c = cargo();
    c.args(["run", "-p", "plane-chaos", "--", "run", "--out"])
        .arg(target_dir().join("chaos"))
        .args(args);
    run(c)
}

/// `fuzz [--time SECS] [--runs N] [TARGET]...`: build `fuzz/` (a workspace
/// of its own) with libFuzzer's coverage instrumentation on the stable
/// toolchain, then run each target (all by default) for at most `--time`
/// seconds (60 by default) and, if given, `--runs` inputs. Fails on a crash,
/// which libFuzzer saves under `fuzz/artifacts/TARGET/`. The build goes to
/// `$PLANE_FUZZ_TARGET_DIR`, else `target/fuzz`, so its flags never
/// invalidate the workspace's own build. See `fuzz/README.md`.
fn fuzz(args: &[String]) -> Result<(), String> {
    const TARGETS: &[&str] = &["decode", "nats_headers", "http_mapping", "peer_envelopes"];
    // What cargo-fuzz passes, less its nightly-only `-Zsanitizer=address`.
    // `--target` below keeps the flags off build scripts and proc macros.
    const RUSTFLAGS: &[&str] = &[
        "--cfg fuzzing",
        "-Cpasses=sancov-module",
        "-Cllvm-args=-sanitizer-coverage-level=4",
        "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
        "-Cllvm-args=-sanitizer-coverage-pc-table",
        "-Cllvm-args=-sanitizer-coverage-trace-compares",
        "-Cdebug-assertions",
        "-Coverflow-checks",
    ];
    let (mut time, mut runs, mut targets) = (60u64, None::<u64>, Vec::new());
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut number = |flag: &str| {
            it.next()
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| format!("{flag} needs a whole number"))
        };
        match a.as_str() {
            "--time" => time = number("--time")?,
            "--runs" => runs = Some(number("--runs")?),
            t if TARGETS.contains(&t) => targets.push(t),
            other => {
                return Err(format!(
                    "unknown argument `{other}`; usage: fuzz [--time SECS] [--runs N] [TARGET]...; targets: {}",
                    TARGETS.join(", ")
                ))
            }
        }
    }
    if targets.is_empty() {
        targets = TARGETS.to_vec();
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("-vV")
        .output()
        .map_err(|e| format!("cannot run {rustc}: {e}"))?;
    let host = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .ok_or("rustc -vV names no host")?;
    let dir = std::env::var_os("PLANE_FUZZ_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("fuzz"));
    let fuzz_dir = root().join("fuzz");
    let mut c = cargo();
    c.current_dir(&fuzz_dir)
        .env("RUSTFLAGS", RUSTFLAGS.join(" "))
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            &host,
            "--target-dir",
        ])
        .arg(&dir);
    for t in &targets {
        c.args(["--bin", t]);
    }
    run(c)?;
    for t in targets {
        let corpus = fuzz_dir.join("corpus").join(t);
        let artifacts = fuzz_dir.join("artifacts").join(t);
        for d in [&corpus, &artifacts] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let mut c = Command::new(dir.join(&host).join("release").join(t));
        c.arg(&corpus)
            .arg(format!("-max_total_time={time}"))
            .arg(format!("-artifact_prefix={}/", artifacts.display()))
            .arg("-print_final_stats=1");
        if let Some(n) = runs {
            c.arg(format!("-runs={n}"));
        }
        run(c).map_err(|e| {
            format!(
                "fuzz target {t}: {e}; a crash is under {}",
                artifacts.display()
            )
        })?;
    }
    Ok(())
}

fn conformance(args: &[String]) -> Result<(), String> {
    let mut selected = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--backend" => {
                let name = it.next().ok_or("--backend needs a name")?;
                let b = BACKENDS.iter().find(|b| b.0 == name).ok_or_else(|| {
                    format!(
                        "unknown backend `{name}`; known: {}",
                        BACKENDS.iter().map(|b| b.0).collect::<Vec<_>>().join(", ")
                    )
                })?;
                selected.push(*b);
            }
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if selected.is_empty() {
        selected = BACKENDS.to_vec();
    }
    let mut failed = Vec::new();
    for (name, package, test) in selected {
        let mut c = cargo();
        c.args(["test", "-p", package, "--test", test, "--", "--nocapture"]);
        if let Err(e) = run(c) {
            eprintln!("xtask: conformance for {name} failed: {e}");
            failed.push(name);
        }
    }
    render_matrix()?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!("conformance failed for: {}", failed.join(", ")))
    }
}

#[derive(Deserialize)]
struct Report {
    backend: String,
    provider: String,
    server: Option<String>,
    cases: Vec<CaseReport>,
}

#[derive(Deserialize)]
struct CaseReport {
    plane: String,
    case: String,
    status: String,
    reason: Option<String>,
}

/// Render every report under `target/conformance` into `docs/conformance.md`.
fn render_matrix() -> Result<(), String> {
    let dir = target_dir().join("conformance");
    let mut reports = Vec::new();
    let entries =
        std::fs::read_dir(&dir).map_err(|e| format!("no reports in {}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "json") {
            let text =
                std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            let report: Report =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            reports.push(report);
        }
    }
    if reports.is_empty() {
        return Err(format!("no reports in {}", dir.display()));
    }
    reports.sort_by(|a, b| a.backend.cmp(&b.backend));
    let out = root().join("docs/conformance.md");
    std::fs::write(&out, matrix_markdown(&reports))
        .map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!("xtask: wrote {}", out.display());
    Ok(())
}

fn matrix_markdown(reports: &[Report]) -> String {
    // Rows in catalog order as the first report lists them, then any others.
    let mut rows: Vec<(String, String)> = Vec::new();
    for r in reports {
        for c in &r.cases {
            let key = (c.plane.clone(), c.case.clone());
            if !rows.contains(&key) {
                rows.push(key);
            }
        }
    }
    let mut cells: BTreeMap<(String, String, String), (&str, Option<&str>)> = BTreeMap::new();
    for r in reports {
        for c in &r.cases {
            cells.insert(
                (r.backend.clone(), c.plane.clone(), c.case.clone()),
                (c.status.as_str(), c.reason.as_deref()),
            );
        }
    }
    let mut md = String::new();
    md.push_str("# Conformance matrix\n\n");
    md.push_str("Generated by `cargo xtask conformance` from `target/conformance/*.json`; do not edit by hand.\n");
    md.push_str("Each cell is one case of the shared suite (`crates/plane-conformance`) run against one backend.\n");
    md.push_str("A skip always has a reason (listed below the table).\n\n");
    md.push_str(
        "| backend | provider | server | pass | fail | skip |\n|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let count = |s: &str| r.cases.iter().filter(|c| c.status == s).count();
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            r.backend,
            r.provider,
            r.server.as_deref().unwrap_or("-"),
            count("pass"),
            count("fail"),
            count("skip")
        ));
    }
    md.push_str("\n| plane | case |");
    for r in reports {
        md.push_str(&format!(" {} |", r.backend));
    }
    md.push_str("\n|---|---|");
    for _ in reports {
        md.push_str("---|");
    }
    md.push('\n');
    let mut notes: Vec<String> = Vec::new();
    for (plane, case) in &rows {
        md.push_str(&format!("| {plane} | {case} |"));
        for r in reports {
            let cell = match cells.get(&(r.backend.clone(), plane.clone(), case.clone())) {
                None => "—".to_owned(),
                Some(("pass", _)) => "pass".to_owned(),
                Some((status, reason)) => {
                    // One footnote per distinct (backend, reason): a backend that
                    // does not serve a plane skips all its cases for one reason.
                    let reason = reason.unwrap_or("no reason given").replace('|', "\\|");
                    let note = format!("{}: {reason}", r.backend);
                    let n = match notes.iter().position(|x| *x == note) {
                        Some(i) => i + 1,
                        None => {
                            notes.push(note);
                            notes.len()
                        }
                    };
                    format!("{status} [{n}]")
                }
            };
            md.push_str(&format!(" {cell} |"));
        }
        md.push('\n');
    }
    if !notes.is_empty() {
        md.push_str("\n## Reasons\n\n");
        for (i, n) in notes.iter().enumerate() {
            md.push_str(&format!("{}. {n}\n", i + 1));
        }
    }
    md
}
