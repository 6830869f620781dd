//! Scrape `/metrics` and `/healthz` over HTTP after driving the planes.
//!
//! One test per binary: the recorder is process-wide.

use std::time::Duration;

use plane_core::message::names;
use plane_core::metrics as m;
use plane_core::policy::{CallPolicy, RetryPolicy};
use plane_core::request::{unary_fn, Call, Request};
use plane_core::{Error, ErrorKind};
use plane_observe::{Health, PrometheusRecorder};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_exposes_the_documented_names() {
    let metrics = PrometheusRecorder::new().install().unwrap();
    let registry = plane_mem::registry();
    let requests = registry
        .requests("mem://observe")
        .await
        .unwrap()
        .with_policy(CallPolicy::retry(
            RetryPolicy::exponential(2).initial_backoff(Duration::from_millis(1)),
        ));
    let _server = requests
        .serve(
            "echo",
            unary_fn(|req: Request| async move {
                match req.body().to_bytes().as_ref() {
                    b"busy" => Err(Error::from(ErrorKind::Overloaded)),
                    b"slow" => {
                        tokio::time::sleep(Duration::from_secs(5)).await;
                        Ok(req.message)
                    }
                    _ => Ok(req.message),
                }
            }),
        )
        .await
        .unwrap();
    requests.call("echo", "hi").await.unwrap();
    let keyed = || Call::new("echo", "once").header(names::IDEMPOTENCY_KEY, "k");
    requests.call_with(keyed()).await.unwrap();
    requests.call_with(keyed()).await.unwrap();
    assert!(requests.call("echo", "busy").await.is_err());
    let slow = Call::new("echo", "slow").timeout(Duration::from_millis(20));
    assert_eq!(
        requests.call_with(slow).await.unwrap_err().kind(),
        ErrorKind::Timeout
    );

    let health = Health::new().check("requests", {
        let requests = requests.clone();
        move || requests.connection_state()
    });
    let server = plane_observe::serve("127.0.0.1:0", metrics, health)
        .await
        .unwrap();

    let (status, body) = get(server.local_addr(), "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    for name in [
        m::CLIENT_REQUESTS,
        m::CLIENT_ERRORS,
        m::CLIENT_RETRIES,
        m::CLIENT_TIMEOUTS,
        m::CLIENT_IN_FLIGHT,
        m::CLIENT_BYTES_SENT,
        m::CLIENT_BYTES_RECEIVED,
        m::SERVER_REQUESTS,
        m::SERVER_ERRORS,
        m::SERVER_REPLAYS,
        m::SERVER_IN_FLIGHT,
        m::SERVER_BYTES_RECEIVED,
        m::SERVER_BYTES_SENT,
    ] {
        assert!(
            body.contains(&format!("# TYPE {name} ")),
            "{name} missing from:\n{body}"
        );
    }
    for name in [m::CLIENT_DURATION, m::SERVER_DURATION] {
        assert!(body.contains(&format!("# TYPE {name} histogram")), "{name}");
        assert!(body.contains(&format!("{name}_bucket{{")), "{name} buckets");
        assert!(body.contains(&format!("{name}_count{{")), "{name} count");
    }
    assert!(body.contains(&format!("# HELP {} ", m::CLIENT_REQUESTS)));
    assert!(
        body.contains(&format!(
            "{}{{endpoint=\"echo\",backend=\"mem\",outcome=\"ok\"}}",
            m::CLIENT_REQUESTS
        )),
        "labelled series:\n{body}"
    );
    assert!(body.contains(&format!(
        "{}{{endpoint=\"echo\",backend=\"mem\"}} 1",
        m::SERVER_REPLAYS
    )));

    let (status, body) = get(server.local_addr(), "/healthz").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "requests up\n");
    let (status, _) = get(server.local_addr(), "/nope").await;
    assert_eq!(status, "HTTP/1.1 404 Not Found");
}
