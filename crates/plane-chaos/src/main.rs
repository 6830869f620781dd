//! `plane-chaos`: plane's fault runs against a three-node NATS JetStream
//! cluster (`cargo xtask chaos`; docs/reliability.md).
//!
//! ```text
//! plane-chaos run [--runs N] [--fault KIND]... [--hold SECS] [--drain SECS] [--lossy] [--out DIR]
//! plane-chaos check FILE...
//! plane-chaos consume --url URL --stream NAME --queue NAME --process N [--lossy]
//! plane-chaos peer --url URL --endpoint NAME [--for-secs N]
//! ```
//!
//! `run` builds the server image if it is missing (never pulls), starts the
//! cluster on a docker network of its own, and for each fault kind (all by
//! default) and each run (20 by default) sets up fresh names, starts the
//! workload, injects the fault, heals it, waits for the cluster and for
//! every role to succeed again, drains the consumers, and checks the
//! history. Histories and a summary go to `--out` (`target/chaos`). It exits
//! non-zero when any run breaks a rule or cannot be run. Every wait is
//! bounded, so a run ends by itself; the cluster is removed on exit.
//! `check` re-checks written histories; `consume` is the consumer process
//! `run` starts (and kills); `peer` is the serving peer the brokerless fault
//! tests start in a network namespace (and cut off, and kill).

mod check;
mod faults;
mod history;
mod peer;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use check::{check, Verdict};
use faults::Fault;
use history::{History, Record};
use peer::PeerArgs;
use plane_nats::testkit::NatsCluster;
use workload::{ConsumeArgs, ConsumerProcess, Names, Roles};

/// How long the workload runs before the fault.
const WARM: Duration = Duration::from_secs(2);
/// How long every node stays down in a restart of all of them.
const POWER_OFF: Duration = Duration::from_secs(3);
/// The longest a healed cluster may take to answer on every node, and every
/// role to succeed again; past it the run fails.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);
/// How long the workload goes on once every role has succeeded again.
const AFTER: Duration = Duration::from_secs(2);
/// The longest one run may take, whatever happens.
const RUN_LIMIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
struct RunArgs {
    runs: usize,
    faults: Vec<Fault>,
    hold: Duration,
    drain: Duration,
    lossy: bool,
    out: PathBuf,
}

fn usage() -> String {
    "usage: plane-chaos run [--runs N] [--fault KIND]... [--hold SECS] [--drain SECS] [--lossy] [--out DIR]\n       plane-chaos check FILE...\n       plane-chaos consume --url URL --stream NAME --queue NAME --process N [--lossy]\n       plane-chaos peer --url URL --endpoint NAME [--for-secs N]".into()
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).and_then(|a| runtime.block_on(run(a))),
        Some("check") => check_files(&args[1..]),
        Some("consume") => parse_consume(&args[1..]).and_then(|a| {
            runtime
                .block_on(workload::consume(a))
                .map(|()| true)
                .map_err(|e| e.to_string())
        }),
        Some("peer") => parse_peer(&args[1..]).and_then(|a| {
            runtime
                .block_on(peer::serve(a))
                .map(|()| true)
                .map_err(|e| e.to_string())
        }),
        _ => Err(usage()),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("plane-chaos: {e}");
            ExitCode::from(2)
        }
    }
}

fn value<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<&'a String, String> {
    it.next()
        .ok_or_else(|| format!("{flag} needs a value\n{}", usage()))
}

fn number<'a>(it: &mut impl Iterator<Item = &'a String>, flag: &str) -> Result<u64, String> {
    let v = value(it, flag)?;
    v.parse()
        .map_err(|_| format!("{flag} needs a whole number, got `{v}`"))
}

fn parse_run(args: &[String]) -> Result<RunArgs, String> {
    let mut a = RunArgs {
        runs: 20,
        faults: Vec::new(),
        hold: Duration::from_secs(12),
        drain: Duration::from_secs(30),
        lossy: false,
        out: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/chaos"),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--runs" => a.runs = number(&mut it, flag)? as usize,
            "--fault" => a.faults.push(Fault::parse(value(&mut it, flag)?)?),
            "--hold" => a.hold = Duration::from_secs(number(&mut it, flag)?),
            "--drain" => a.drain = Duration::from_secs(number(&mut it, flag)?),
            "--lossy" => a.lossy = true,
            "--out" => a.out = PathBuf::from(value(&mut it, flag)?),
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    if a.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if a.hold < Duration::from_secs(1) {
        return Err("--hold must be at least 1 second".into());
    }
    if a.faults.is_empty() {
        a.faults = faults::ALL.to_vec();
    }
    Ok(a)
}

fn parse_consume(args: &[String]) -> Result<ConsumeArgs, String> {
    let (mut url, mut stream, mut queue, mut process, mut lossy) = (None, None, None, 0, false);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--url" => url = Some(value(&mut it, flag)?.clone()),
            "--stream" => stream = Some(value(&mut it, flag)?.clone()),
            "--queue" => queue = Some(value(&mut it, flag)?.clone()),
            "--process" => process = number(&mut it, flag)? as u32,
            "--lossy" => lossy = true,
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("consume needs {flag}"));
    Ok(ConsumeArgs {
        url: need(url, "--url")?,
        stream: need(stream, "--stream")?,
        queue: need(queue, "--queue")?,
        process,
        lossy,
    })
}

fn parse_peer(args: &[String]) -> Result<PeerArgs, String> {
    let (mut url, mut endpoint, mut serve_for) = (None, None, Duration::from_secs(120));
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--url" => url = Some(value(&mut it, flag)?.clone()),
            "--endpoint" => endpoint = Some(value(&mut it, flag)?.clone()),
            "--for-secs" => serve_for = Duration::from_secs(number(&mut it, flag)?),
            other => return Err(format!("unknown argument `{other}`\n{}", usage())),
        }
    }
    let need = |v: Option<String>, flag: &str| v.ok_or_else(|| format!("peer needs {flag}"));
    Ok(PeerArgs {
        url: need(url, "--url")?,
        endpoint: need(endpoint, "--endpoint")?,
        serve_for,
    })
}

fn check_files(files: &[String]) -> Result<bool, String> {
    if files.is_empty() {
        return Err(usage());
    }
    let mut all_hold = true;
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let records = history::from_jsonl(&text).map_err(|e| format!("{f}: {e}"))?;
        let verdict = check(&records);
        println!("{f}: {}", describe(&verdict));
        print_violations(&verdict);
        all_hold &= verdict.holds();
    }
    Ok(all_hold)
}

/// One run's result, for the summary.
struct RunResult {
    fault: Fault,
    run: usize,
    target: String,
    verdict: Result<Verdict, String>,
}

async fn run(args: RunArgs) -> Result<bool, String> {
    std::fs::create_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let started = Instant::now();
    eprintln!("plane-chaos: starting a three-node NATS cluster");
    let cluster = NatsCluster::start(3).await?;
    let url = format!("{}&{}", cluster.url(), workload::CLIENT_SETTINGS);
    let mut results = Vec::new();
    for &fault in &args.faults {
        for run in 0..args.runs {
            let names = Names::new(fault.name(), run);
            let mut target = String::from("-");
            let verdict = match tokio::time::timeout(
                RUN_LIMIT,
                one_run(&cluster, &url, fault, run, &names, &args, &mut target),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(format!("the run did not end within {RUN_LIMIT:?}")),
            };
            workload::tear_down(&url, &names).await;
            match &verdict {
                Ok(v) => {
                    println!("{} #{run:02} ({target}): {}", fault.name(), describe(v));
                    print_violations(v);
                }
                Err(e) => println!(
                    "{} #{run:02} ({target}): could not be run: {e}",
                    fault.name()
                ),
            }
            results.push(RunResult {
                fault,
                run,
                target,
                verdict,
            });
        }
    }
    let summary = summary_markdown(&results, &args, started.elapsed());
    println!("\n{summary}");
    let path = args.out.join("summary.md");
    std::fs::write(&path, &summary).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = args.out.join("summary.json");
    std::fs::write(&path, summary_json(&results))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(results
        .iter()
        .all(|r| r.verdict.as_ref().is_ok_and(Verdict::holds)))
}

async fn one_run(
    cluster: &NatsCluster,
    url: &str,
    fault: Fault,
    run: usize,
    names: &Names,
    args: &RunArgs,
    target: &mut String,
) -> Result<Verdict, String> {
    let history = History::new();
    let stem = format!("{}-{run:02}", fault.name());
    workload::set_up(url, names)
        .await
        .map_err(|e| format!("set-up: {e}"))?;
    let log = args.out.join(format!("{stem}.consumer.log"));
    let _ = std::fs::remove_file(&log);
    let mut process = 0;
    let mut consumer = ConsumerProcess::spawn(url, names, process, args.lossy, &history, &log)?;
    let roles = Roles::start(url, names, &history)
        .await
        .map_err(|e| format!("starting the workload: {e}"))?;
    tokio::time::sleep(WARM).await;

    // The stream's leader in even runs, the nodes in turn in odd ones.
    let at_leader = run.is_multiple_of(2);
    let node = if !fault.hits_one_node() {
        0
    } else if at_leader {
        faults::leader_of(cluster, &names.stream).await?
    } else {
        (run / 2) % cluster.nodes().len()
    };
    *target = match fault {
        Fault::None => "-".into(),
        Fault::RestartAll => "all nodes".into(),
        Fault::ConsumerKill => "consumer process".into(),
        _ if at_leader => format!("n{node}, the stream leader"),
        _ => format!("n{node}"),
    };
    history.push(Record::Fault {
        kind: fault.name().into(),
        target: target.clone(),
        quorum_kept: fault.keeps_quorum(),
        t_ms: history.now(),
    });
    faults::inject(fault, cluster, node).await?;
    match fault {
        Fault::ConsumerKill => {
            for _ in 0..2 {
                consumer.kill();
                process += 1;
                consumer = ConsumerProcess::spawn(url, names, process, args.lossy, &history, &log)?;
                tokio::time::sleep(args.hold / 2).await;
            }
        }
        Fault::RestartAll => tokio::time::sleep(POWER_OFF).await,
        _ => tokio::time::sleep(args.hold).await,
    }
    faults::heal(fault, cluster, node).await?;
    history.push(Record::Heal {
        t_ms: history.now(),
    });
    cluster.wait_healthy(RECOVERY_LIMIT).await?;
    let healthy = history.now();
    history.push(Record::Healthy { t_ms: healthy });
    // Let the workload go on until every role has succeeded again (the
    // checker flags a role that never did), then a little longer.
    let deadline = Instant::now() + RECOVERY_LIMIT;
    while !every_role_succeeded_since(&history.snapshot(), healthy) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(AFTER).await;
    roles.stop().await;

    // Drain: until the consumers report every acknowledged event and job.
    let deadline = Instant::now() + args.drain;
    while !drained(&history.snapshot()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let server = format!("127.0.0.1:{}", cluster.nodes()[0].port());
    workload::read_counter(url, &server, names, &history).await;
    consumer.kill();

    let records = history.snapshot();
    let path = args.out.join(format!("{stem}.jsonl"));
    std::fs::write(&path, history::to_jsonl(&records))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(check(&records))
}

fn every_role_succeeded_since(records: &[Record], t: u64) -> bool {
    let ok_after =
        |want: fn(&Record) -> bool| records.iter().any(|r| want(r) && r.t_ms() > t && is_ok(r));
    ok_after(|r| matches!(r, Record::Publish { .. }))
        && ok_after(|r| matches!(r, Record::Enqueue { .. }))
        && ok_after(|r| matches!(r, Record::Increment { .. }))
        && ok_after(|r| matches!(r, Record::Call { .. }))
}

fn is_ok(r: &Record) -> bool {
    match r {
        Record::Publish { outcome, .. }
        | Record::Enqueue { outcome, .. }
        | Record::Increment { outcome, .. }
        | Record::Call { outcome, .. } => outcome.is_ok(),
        _ => false,
    }
}

/// Every acknowledged event delivered and every acknowledged job processed.
fn drained(records: &[Record]) -> bool {
    let v = check(records);
    v.lost == 0 && v.jobs_lost == 0
}

fn describe(v: &Verdict) -> String {
    let recovery = v
        .longest_recovery_ms
        .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
        .unwrap_or_else(|| "-".into());
    format!(
        "events {} acked / {} unknown / {} refused, {} lost, {} redelivered; \
         jobs {} acked, {} lost, {} redone; {} taken on a later attempt; increments {} acked / {} unknown, counter {}; \
         calls {} ok / {} failed; publishing stood still {recovery}; {}",
        v.publishes.ok,
        v.publishes.unknown,
        v.publishes.refused,
        v.lost,
        v.duplicated,
        v.jobs.ok,
        v.jobs_lost,
        v.jobs_duplicated,
        v.retried,
        v.increments.ok,
        v.increments.unknown,
        v.counter
            .map(|c| c.to_string())
            .unwrap_or_else(|| "unread".into()),
        v.calls.ok,
        v.calls.tried - v.calls.ok,
        if v.holds() {
            "holds".to_owned()
        } else {
            format!("{} VIOLATIONS", v.violations.len())
        }
    )
}

fn print_violations(v: &Verdict) {
    for violation in v.violations.iter().take(20) {
        println!("  VIOLATION: {}", violation.rule);
        for r in violation.evidence.iter().take(5) {
            println!(
                "    {}",
                serde_json::to_string(r).expect("a record serialises")
            );
        }
    }
    if v.violations.len() > 20 {
        println!("  … and {} more", v.violations.len() - 20);
    }
}

fn summary_markdown(results: &[RunResult], args: &RunArgs, took: Duration) -> String {
    let mut md = String::from(
        "| fault | runs | events acked | lost | redelivered | jobs acked | lost | redone | later attempts | increments acked (unknown) | counter off | calls ok / failed | longest stand-still | violations | runs not run |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for &fault in &args.faults {
        let of_fault: Vec<&RunResult> = results.iter().filter(|r| r.fault == fault).collect();
        let done: Vec<&Verdict> = of_fault
            .iter()
            .filter_map(|r| r.verdict.as_ref().ok())
            .collect();
        let sum = |f: fn(&Verdict) -> u64| done.iter().map(|v| f(v)).sum::<u64>();
        let counter_off = done
            .iter()
            .filter(|v| {
                v.counter.is_none_or(|c| {
                    c < v.increments.ok || c > v.increments.ok + v.increments.unknown
                })
            })
            .count();
        let longest = done
            .iter()
            .filter_map(|v| v.longest_recovery_ms)
            .max()
            .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "-".into());
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} ({}) | {} | {} / {} | {} | {} | {} |\n",
            fault.name(),
            done.len(),
            sum(|v| v.publishes.ok),
            sum(|v| v.lost),
            sum(|v| v.duplicated),
            sum(|v| v.jobs.ok),
            sum(|v| v.jobs_lost),
            sum(|v| v.jobs_duplicated),
            sum(|v| v.retried),
            sum(|v| v.increments.ok),
            sum(|v| v.increments.unknown),
            counter_off,
            sum(|v| v.calls.ok),
            sum(|v| v.calls.tried - v.calls.ok),
            longest,
            done.iter().map(|v| v.violations.len()).sum::<usize>(),
            of_fault.len() - done.len(),
        ));
    }
    md.push_str(&format!(
        "\n{} runs of {} fault kinds, hold {} s, in {:.0} min.\n",
        results.len(),
        args.faults.len(),
        args.hold.as_secs(),
        took.as_secs_f64() / 60.0
    ));
    md
}

fn summary_json(results: &[RunResult]) -> String {
    let runs: Vec<serde_json::Value> = results
        .iter()
        .map(|r| match &r.verdict {
            Ok(v) => serde_json::json!({
                "fault": r.fault.name(),
                "run": r.run,
                "target": r.target,
                "acked": v.publishes.ok,
                "lost": v.lost,
                "redelivered": v.duplicated,
                "jobs_acked": v.jobs.ok,
                "jobs_lost": v.jobs_lost,
                "jobs_redone": v.jobs_duplicated,
                "later_attempts": v.retried,
                "increments_acked": v.increments.ok,
                "increments_unknown": v.increments.unknown,
                "counter": v.counter,
                "calls_ok": v.calls.ok,
                "calls_failed": v.calls.tried - v.calls.ok,
                "longest_stand_still_ms": v.longest_recovery_ms,
                "violations": v.violations.iter().map(|x| x.rule).collect::<Vec<_>>(),
            }),
            Err(e) => serde_json::json!({
                "fault": r.fault.name(),
                "run": r.run,
                "target": r.target,
                "error": e,
            }),
        })
        .collect();
    serde_json::to_string_pretty(&serde_json::json!({ "runs": runs })).expect("json")
}
