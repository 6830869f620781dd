//! The checker is tested on a real run: a consumer that acks one event
//! without reporting it (`--lossy`) must fail the run, with that one event
//! as the loss and nothing else broken.

use std::process::Command;

#[test]
fn a_consumer_that_drops_one_acknowledged_event_fails_the_run() {
    let out = tempfile::tempdir().expect("temp dir");
    let run = Command::new(env!("CARGO_BIN_EXE_plane-chaos"))
        .args(["run", "--fault", "none", "--runs", "1", "--hold", "2"])
        .args(["--drain", "8", "--lossy", "--out"])
        .arg(out.path())
        .output()
        .expect("plane-chaos runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    // 1 is "a rule was broken"; 2 would be "could not run".
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("VIOLATION: an acknowledged publish was never delivered"),
        "{stdout}"
    );
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.path().join("summary.json")).expect("summary.json"),
    )
    .expect("summary is JSON");
    let runs = summary["runs"].as_array().expect("runs");
    assert_eq!(runs.len(), 1, "{summary}");
    assert_eq!(runs[0]["lost"], 1, "{summary}");
    assert_eq!(
        runs[0]["violations"],
        serde_json::json!(["an acknowledged publish was never delivered"]),
        "{summary}"
    );
    // The history it was judged on is kept, and re-checking it agrees.
    let history = out.path().join("none-00.jsonl");
    let recheck = Command::new(env!("CARGO_BIN_EXE_plane-chaos"))
        .arg("check")
        .arg(&history)
        .output()
        .expect("plane-chaos check runs");
    assert_eq!(recheck.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&recheck.stdout).contains("1 lost"));
}
