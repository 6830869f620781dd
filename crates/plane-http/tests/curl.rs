//! The public HTTP mapping as `curl` sees it (`docs/http.md`): a unary
//! echo, a streamed reply read as server-sent events to its end event, a
//! graceful stop, an unknown endpoint answered with its status and error
//! kind, an oversized body refused, a deadline — over HTTP/1.1, h2c with
//! prior knowledge, and TLS. The tests need the `curl` command.

use std::path::PathBuf;
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use plane_conformance::pki;
use plane_core::request::{handler_fn, unary_fn, Request, Responder};
use plane_core::{Error, Requests};
use plane_http::{HttpConfig, HttpRequests};
use plane_peer::tls::TlsConfig;

const MAX_PAYLOAD: usize = 64 * 1024;

async fn node(tls: Option<TlsConfig>) -> (HttpRequests, Requests) {
    let registry = plane_mem::registry();
    let hub = format!("mem://http-curl-{:016x}", rand::random::<u64>());
    let mut config = HttpConfig::new("127.0.0.1:0".parse().unwrap(), hub);
    config.max_payload = MAX_PAYLOAD;
    config.tls = tls;
    let discovery = plane_peer::discovery_of::<plane_http::Http>(&config, &registry)
        .await
        .unwrap();
    let backend = HttpRequests::connect(config, discovery).unwrap();
    (backend.clone(), Requests::new(backend))
}

/// Serve what the tests call: `echo`, `count` (a stream of `n` lines, then
/// the end), `slow` (never answers in time) and `endless` (streams until it
/// is stopped, which it honours, or killed, which it reports in `killed`).
async fn serve(requests: &Requests, killed: Arc<AtomicBool>) -> Vec<plane_core::request::Server> {
    let echo = unary_fn(|r: Request| async move { Ok(r.message) });
    let count = handler_fn(|r: Request, out: Responder| async move {
        let n: u32 = String::from_utf8_lossy(&r.message.body.to_bytes())
            .trim()
            .parse()
            .unwrap_or(3);
        for i in 0..n {
            out.send(format!("token {i}")).await?;
        }
        // Not UTF-8: an SSE `binary` event.
        out.send(vec![0xffu8, 0x00, 0x01]).await?;
        Ok(())
    });
    let slow = unary_fn(|_r: Request| async move {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok("late")
    });
    let endless = handler_fn(move |r: Request, out: Responder| {
        let killed = killed.clone();
        async move {
            struct Flag(Arc<AtomicBool>, bool);
            impl Drop for Flag {
                fn drop(&mut self) {
                    if !self.1 {
                        self.0.store(true, Ordering::SeqCst);
                    }
                }
            }
            let mut flag = Flag(killed, false);
            let mut i = 0u64;
            while !r.stop_requested() {
                out.send(format!("tick {i}")).await?;
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            flag.1 = true;
            out.send("stopped").await?;
            Ok::<_, Error>(())
        }
    });
    vec![
        requests.serve("echo", echo).await.unwrap(),
        requests.serve("count", count).await.unwrap(),
        requests.serve("slow", slow).await.unwrap(),
        requests.serve("endless", endless).await.unwrap(),
    ]
}

/// Run curl with `args`, bounded in time.
async fn curl(args: Vec<String>) -> Output {
    eprintln!("curl {}", args.join(" "));
    tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["--silent", "--show-error", "--max-time", "20"])
            .args(&args)
            .output()
            .expect("the curl command (these tests need curl on PATH)")
    })
    .await
    .unwrap()
}

/// `curl -i` output split into status, lower-cased header lines and body.
fn parse(out: &Output) -> (u16, Vec<String>, String) {
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines.map(|l| l.to_ascii_lowercase()).collect();
    (status, headers, body.to_owned())
}

fn json_kind(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("a JSON error body");
    v["kind"].as_str().expect("a kind").to_owned()
}

/// The events of an SSE body: (event name, data lines joined with `\n`).
fn events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = Some(n.to_owned());
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push(d);
                }
            }
            name.map(|n| (n, data.join("\n")))
        })
        .collect()
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// Every check, against `base` (`http://127.0.0.1:PORT`) with `extra` curl
/// flags picking the protocol.
async fn public_mapping(base: &str, extra: &[&str]) {
    let with = |args: &[&str]| {
        let mut v = s(extra);
        v.extend(s(args));
        v
    };

    // A unary echo: the body in, the body out, a request header passed on.
    let (status, _h, body) = parse(
        &curl(with(&[
            "-i",
            "--data-binary",
            "hello plane",
            &format!("{base}/echo"),
        ]))
        .await,
    );
    assert_eq!((status, body.as_str()), (200, "hello plane"));

    // A streamed reply as server-sent events, to its end event.
    let out = curl(with(&[
        "-i",
        "-N",
        "-H",
        "accept: text/event-stream",
        "--data-binary",
        "4",
        &format!("{base}/count"),
    ]))
    .await;
    let (status, headers, body) = parse(&out);
    assert_eq!(status, 200, "{body}");
    assert!(
        headers
            .iter()
            .any(|h| h.starts_with("content-type: text/event-stream")),
        "{headers:?}"
    );
    let got = events(&body);
    let expected: Vec<(String, String)> = (0..4)
        .map(|i| ("message".to_owned(), format!("token {i}")))
        .chain([
            ("binary".to_owned(), "/wAB".to_owned()),
            ("end".to_owned(), r#"{"messages":5}"#.to_owned()),
        ])
        .collect();
    assert_eq!(got, expected, "{body}");

    // An unknown endpoint: 404 and its kind.
    let (status, headers, body) =
        parse(&curl(with(&["-i", "--data-binary", "x", &format!("{base}/nope")])).await);
    assert_eq!(status, 404);
    assert_eq!(json_kind(&body), "no_responders");
    assert!(headers
        .iter()
        .any(|h| h.starts_with("content-type: application/json")));

    // An oversized body: 413 before it is read.
    let big = vec![b'x'; MAX_PAYLOAD + 1];
    let dir = std::env::temp_dir().join(format!("plane-curl-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let file: PathBuf = dir.join("big");
    std::fs::write(&file, &big).unwrap();
    let (status, _h, body) = parse(
        &curl(with(&[
            "-i",
            "--data-binary",
            &format!("@{}", file.display()),
            &format!("{base}/echo"),
        ]))
        .await,
    );
    assert_eq!(status, 413);
    assert_eq!(json_kind(&body), "payload_too_large");
    let _ = std::fs::remove_dir_all(&dir);

    // The deadline header: the server ends the handler and answers 504.
    let (status, _h, body) = parse(
        &curl(with(&[
            "-i",
            "-H",
            "plane-timeout-ms: 200",
            "-d",
            "",
            &format!("{base}/slow"),
        ]))
        .await,
    );
    assert_eq!(status, 504);
    assert_eq!(json_kind(&body), "timeout");
    // A malformed deadline, and another of plane's own headers: 400.
    let (status, _h, body) = parse(
        &curl(with(&[
            "-i",
            "-H",
            "plane-timeout-ms: soon",
            "-d",
            "",
            &format!("{base}/echo"),
        ]))
        .await,
    );
    assert_eq!(
        (status, json_kind(&body).as_str()),
        (400, "invalid_argument")
    );
    let (status, _h, body) = parse(
        &curl(with(&[
            "-i",
            "-H",
            "plane-endpoint: other",
            "-d",
            "",
            &format!("{base}/echo"),
        ]))
        .await,
    );
    assert_eq!(
        (status, json_kind(&body).as_str()),
        (400, "invalid_argument")
    );
    // Not a POST.
    let (status, headers, _b) = parse(&curl(with(&["-i", &format!("{base}/echo")])).await);
    assert_eq!(status, 405);
    assert!(headers.iter().any(|h| h == "allow: post"), "{headers:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http1_and_h2c() {
    let (backend, requests) = node(None).await;
    let _served = serve(&requests, Arc::default()).await;
    let base = format!("http://{}", backend.links().local_addr());
    public_mapping(&base, &["--http1.1"]).await;
    public_mapping(&base, &["--http2-prior-knowledge"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_tls_with_the_servers_ca() {
    let scratch = pki::Scratch::new();
    let ca = pki::Ca::new(&scratch, "http-ca");
    let (backend, requests) = node(Some(ca.issue(&scratch, "server"))).await;
    let _served = serve(&requests, Arc::default()).await;
    let port = backend.links().local_addr().port();
    let base = format!("https://{}:{port}", plane_peer::tls::DEFAULT_SERVER_NAME);
    let resolve = format!("{}:{port}:127.0.0.1", plane_peer::tls::DEFAULT_SERVER_NAME);
    let ca = ca.pem.display().to_string();
    // ALPN picks h2 by default and http/1.1 when asked.
    public_mapping(&base, &["--resolve", &resolve, "--cacert", &ca]).await;
    public_mapping(
        &base,
        &["--resolve", &resolve, "--cacert", &ca, "--http1.1"],
    )
    .await;
}

/// A graceful stop by the `plane-call` token, and a response closed
/// mid-stream killing its handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_stop_gracefully_or_die_with_their_response() {
    let (backend, requests) = node(None).await;
    let killed = Arc::new(AtomicBool::new(false));
    let _served = serve(&requests, killed.clone()).await;
    let base = format!("http://{}", backend.links().local_addr());

    // Stop: read the token from the head of a running stream, ask for the
    // stop, and the stream ends with the handler's last reply and `end`.
    let dir = std::env::temp_dir().join(format!("plane-curl-{:016x}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).unwrap();
    let head = dir.join("head");
    let stream = curl(s(&[
        "-N",
        "-D",
        &head.display().to_string(),
        "-H",
        "accept: text/event-stream",
        "-d",
        "",
        &format!("{base}/endless"),
    ]));
    let stream = tokio::spawn(stream);
    let token = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let text = std::fs::read_to_string(&head).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("plane-call:"))
            {
                return line.split(':').nth(1).unwrap().trim().to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stream's head with its plane-call token");
    assert_eq!(token.len(), 32, "{token}");
    let (status, _h, _b) = parse(
        &curl(s(&[
            "-i",
            "-X",
            "POST",
            &format!("{base}/.plane/v1/stop/{token}"),
        ]))
        .await,
    );
    assert_eq!(status, 204);
    let out = stream.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = events(&String::from_utf8_lossy(&out.stdout));
    assert!(got.len() >= 2, "{got:?}");
    let n = got.len();
    assert_eq!(
        got[n - 2],
        ("message".to_owned(), "stopped".to_owned()),
        "{got:?}"
    );
    assert_eq!(got[n - 1].0, "end", "{got:?}");
    assert!(got[..n - 2]
        .iter()
        .all(|(e, d)| e == "message" && d.starts_with("tick ")));
    assert!(
        !killed.load(Ordering::SeqCst),
        "a stopped handler was not killed"
    );
    // The token names nothing once the stream ended.
    let (status, _h, body) = parse(
        &curl(s(&[
            "-i",
            "-X",
            "POST",
            &format!("{base}/.plane/v1/stop/{token}"),
        ]))
        .await,
    );
    assert_eq!((status, json_kind(&body).as_str()), (404, "not_found"));

    // Closing the response kills the handler: curl gives up after a second.
    let out = curl(s(&[
        "-N",
        "--max-time",
        "1",
        "-H",
        "accept: text/event-stream",
        "-d",
        "",
        &format!("{base}/endless"),
    ]))
    .await;
    assert!(
        !out.status.success(),
        "curl timed out rather than saw an end"
    );
    let body = String::from_utf8_lossy(&out.stdout);
    assert!(
        !events(&body).iter().any(|(e, _)| e == "end"),
        "a cut-short stream has no end event: {body}"
    );
    tokio::time::timeout(Duration::from_secs(10), async {
        while !killed.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the handler killed once its response was closed");
    let _ = std::fs::remove_dir_all(&dir);

    // The server serves on.
    let (status, _h, body) = parse(&curl(s(&["-i", "-d", "after", &format!("{base}/echo")])).await);
    assert_eq!((status, body.as_str()), (200, "after"));
}
