//! Interoperability with a plain NATS client in another language: nats-py
//! calls a plane endpoint, serves one a plane caller uses, receives a plane
//! event and publishes one a plane subscriber receives.
//!
//! nats-py is installed from PyPI into the target directory on first use.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::request::{unary_fn, Request};
use plane_nats::testkit::NatsServer;

const NATS_PY: &str = "nats-py==2.16.0";

/// A directory on `PYTHONPATH` that has nats-py.
fn nats_py() -> PathBuf {
    let dir = plane_conformance::report_dir().join("../python-nats-py");
    if dir.join("nats").is_dir() {
        return dir;
    }
    // Install next to the final place, then rename: concurrent runs never see
    // a half-installed package.
    let staging = dir.with_extension(format!("tmp{}", std::process::id()));
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ])
        .arg("--target")
        .arg(&staging)
        .arg(NATS_PY)
        .status()
        .expect("python3 is needed for the nats-py interop test");
    assert!(status.success(), "pip install {NATS_PY} failed");
    if std::fs::rename(&staging, &dir).is_err() {
        // Another run won the race.
        let _ = std::fs::remove_dir_all(&staging);
    }
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_py_interoperates() {
    let pythonpath = tokio::task::spawn_blocking(nats_py).await.expect("install");
    let server = NatsServer::start().await.expect("server");
    let mut registry = plane_mem::registry();
    plane_nats::register(&mut registry);
    let requests = registry.requests(&server.url()).await.expect("requests");
    let events = registry.events(&server.url()).await.expect("events");
    let _echo = requests
        .serve(
            "echo",
            unary_fn(|r: Request| async move {
                let mut out = b"echo:".to_vec();
                out.extend_from_slice(&r.body().to_bytes());
                Ok(out)
            }),
        )
        .await
        .expect("serve");
    let mut from_python = events.subscribe("frompython.>").await.expect("subscribe");

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/interop.py");
    let mut child = Command::new("python3")
        .arg(script)
        .arg(server.url())
        .env("PYTHONPATH", &pythonpath)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, mut lines) = tokio::sync::mpsc::channel::<String>(16);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.blocking_send(line).is_err() {
                return;
            }
        }
    });
    let mut next_line = async || {
        tokio::time::timeout(Duration::from_secs(20), lines.recv())
            .await
            .expect("python answers in time")
            .expect("python is still running")
    };

    assert_eq!(next_line().await, "reply echo:from-python");
    assert_eq!(next_line().await, "ready");
    let upper = requests
        .call("pyupper", "hello")
        .await
        .expect("python serves");
    assert_eq!(upper.to_bytes(), "HELLO");
    events.publish("fromplane.a", "e1").await.expect("publish");
    assert_eq!(next_line().await, "event fromplane.a e1 1");
    let got = tokio::time::timeout(Duration::from_secs(10), from_python.next())
        .await
        .expect("python event in time")
        .expect("event")
        .expect("ok");
    assert_eq!(got.subject, "frompython.x");
    assert_eq!(got.body().to_bytes(), "py-event");

    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(b"done\n")
        .expect("tell python to stop");
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join")
        .expect("python exit");
    assert!(status.success());
}
