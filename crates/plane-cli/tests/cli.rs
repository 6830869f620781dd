//! Every `plane` subcommand on mem (in-process, where one hub is shared by
//! name) and on a real NATS server, and two OS processes of the binary
//! talking through NATS.

use std::io::{BufRead, BufReader, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plane::ErrorKind;
use plane_nats::testkit::NatsServer;

/// What a command printed, shared with the task running it.
#[derive(Clone, Default)]
struct Out(Arc<Mutex<Vec<u8>>>);

impl Write for Out {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Wait until the output holds `what`.
    async fn wait_for(&self, what: &str) {
        tokio::time::timeout(Duration::from_secs(20), async {
            while !self.text().contains(what) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no `{what}` in: {}", self.text()));
    }
}

fn args(url: &str, words: &[&str]) -> Vec<String> {
    ["--url", url]
        .iter()
        .chain(words)
        .map(|s| (*s).to_owned())
        .collect()
}

/// Run one command to its end; what it printed.
async fn plane(url: &str, words: &[&str]) -> plane::Result<String> {
    let mut out = Out::default();
    plane_cli::run(&args(url, words), &mut out).await?;
    Ok(out.text())
}

/// Start a command that waits (serve, sub, watch, work) in a task.
fn start(url: &str, words: &[&str]) -> (Out, tokio::task::JoinHandle<plane::Result<()>>) {
    let out = Out::default();
    let mut writer = out.clone();
    let args = args(url, words);
    let task = tokio::spawn(async move { plane_cli::run(&args, &mut writer).await });
    (out, task)
}

async fn finished(task: tokio::task::JoinHandle<plane::Result<()>>, out: &Out) {
    tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the command ends by its --count; it printed: {}",
                out.text()
            )
        })
        .expect("the task")
        .expect("the command succeeds");
}

fn unique() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 0xffff_ffff
    )
}

/// Every subcommand against `url`, whose backend is `backend`.
async fn every_subcommand(url: &str, backend: &str) {
    let id = unique();

    let doctor = plane(url, &["doctor"]).await.unwrap();
    assert_eq!(doctor.lines().count(), 5, "{doctor}");
    for line in doctor.lines() {
        assert!(line.contains(&format!("backend {backend}, up")), "{line}");
    }

    // serve, then request and stream against it.
    let endpoint = format!("cli-echo-{id}");
    let (served, server) = start(url, &["serve", &endpoint, "--count", "2"]);
    served.wait_for("serving").await;
    assert_eq!(
        plane(url, &["request", &endpoint, "hello"]).await.unwrap(),
        "hello\n"
    );
    assert_eq!(
        plane(url, &["stream", &endpoint, "there"]).await.unwrap(),
        "there\n"
    );
    finished(server, &served).await;
    assert!(
        served.text().contains("served 2 call(s)"),
        "{}",
        served.text()
    );
    let e = plane(
        url,
        &[
            "request",
            &format!("cli-nobody-{id}"),
            "x",
            "--timeout-ms",
            "2000",
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders, "{e}");

    // sub with a wildcard, then pub.
    let (events, sub) = start(url, &["sub", &format!("cli.{id}.*"), "--count", "2"]);
    events.wait_for("subscribed").await;
    plane(url, &["pub", &format!("cli.{id}.a"), "one"])
        .await
        .unwrap();
    plane(url, &["pub", &format!("cli.{id}.b"), "two"])
        .await
        .unwrap();
    finished(sub, &events).await;
    let got = events.text();
    assert!(got.contains(&format!("cli.{id}.a one")), "{got}");
    assert!(got.contains(&format!("cli.{id}.b two")), "{got}");

    // kv put, get, watch.
    let bucket = format!("cli_{id}");
    assert!(plane(url, &["kv", "put", &bucket, "model", "v1"])
        .await
        .unwrap()
        .starts_with("revision "));
    assert_eq!(
        plane(url, &["kv", "get", &bucket, "model"]).await.unwrap(),
        "v1\n"
    );
    let (watched, watch) = start(url, &["kv", "watch", &bucket, "--count", "2"]);
    watched.wait_for("caught up").await;
    plane(url, &["kv", "put", &bucket, "model", "v2"])
        .await
        .unwrap();
    finished(watch, &watched).await;
    let got = watched.text();
    assert!(
        got.contains("model v1") && got.contains("model v2"),
        "{got}"
    );
    let e = plane(url, &["kv", "get", &bucket, "nope"])
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    // object put and get of a file larger than one progress step.
    let dir = std::env::temp_dir().join(format!("plane-cli-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..(9 << 20)).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(dir.join("in"), &data).unwrap();
    let objects = format!("cli_objects_{id}");
    let put = plane(
        url,
        &[
            "object",
            "put",
            &objects,
            "weights.bin",
            dir.join("in").to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert!(put.contains(&format!("{} bytes", data.len())), "{put}");
    plane(
        url,
        &[
            "object",
            "get",
            &objects,
            "weights.bin",
            dir.join("out").to_str().unwrap(),
        ],
    )
    .await
    .unwrap();
    assert!(
        std::fs::read(dir.join("out")).unwrap() == data,
        "the object reads back whole"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // queue enqueue, then work.
    let queue = format!("cli_jobs_{id}");
    plane(url, &["queue", "enqueue", &queue, "job-1"])
        .await
        .unwrap();
    plane(url, &["queue", "enqueue", &queue, "job-2"])
        .await
        .unwrap();
    let worked = plane(url, &["queue", "work", &queue, "--count", "2"])
        .await
        .unwrap();
    assert_eq!(worked, "job-1\njob-2\n");

    // bench.
    let bench = plane(url, &["bench", "--calls", "200"]).await.unwrap();
    assert!(
        bench.contains(&format!("{backend} on")) && bench.contains("calls/s"),
        "{bench}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_on_mem() {
    every_subcommand(&format!("mem://cli-{}", unique()), "mem").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subcommand_on_nats() {
    let server = NatsServer::start().await.expect("nats-server");
    every_subcommand(&server.url(), "nats").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_typed_errors() {
    let url = "mem://cli-mistakes";
    for words in [
        &["bogus"][..],
        &[],
        &["request"],
        &["kv", "get", "b"],
        &["kv", "frob", "b"],
        &["serve", "x", "--count", "many"],
        &["doctor", "extra"],
        &["request", "x", "--nope"],
    ] {
        let e = plane(url, words).await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{words:?}: {e}");
        assert!(
            e.message().contains("usage: plane"),
            "{words:?}: shows the usage"
        );
    }
    let e = plane_cli::run(
        &[
            "--config".into(),
            "/nonexistent/plane.toml".into(),
            "doctor".into(),
        ],
        &mut Out::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
}

/// Two OS processes of the binary: one serves, the other calls it, through
/// a real NATS server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_talk_through_nats() {
    let server = NatsServer::start().await.expect("nats-server");
    let url = server.url();
    let endpoint = format!("cli-process-{}", unique());
    let bin = env!("CARGO_BIN_EXE_plane");
    let mut serving = std::process::Command::new(bin)
        .args([
            "--url", &url, "serve", &endpoint, "--count", "1", "--for-ms", "30000",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the plane binary");
    let mut lines = BufReader::new(serving.stdout.take().unwrap()).lines();
    let first = tokio::task::spawn_blocking(move || {
        let first = lines.next();
        (first, lines)
    });
    let (first, mut lines) = tokio::time::timeout(Duration::from_secs(20), first)
        .await
        .expect("the server starts")
        .unwrap();
    assert!(first.unwrap().unwrap().starts_with("serving"));
    let call = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["--url", &url, "request", &endpoint, "from another process"])
            .output()
            .expect("the plane binary")
    })
    .await
    .unwrap();
    assert!(
        call.status.success(),
        "{}",
        String::from_utf8_lossy(&call.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&call.stdout),
        "from another process\n"
    );
    let status = tokio::task::spawn_blocking(move || serving.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success());
    let last = lines.next().unwrap().unwrap();
    assert!(last.starts_with("served 1 call(s)"), "{last}");
}
