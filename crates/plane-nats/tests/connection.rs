//! The connection options a NATS user expects: keep-alive pings that notice
//! a frozen server, and a reconnect budget after which the planes report
//! `Down` instead of trying for ever. Each checked against a handle with the
//! defaults, which must behave otherwise in the same situation.

use std::process::Command;
use std::time::{Duration, Instant};

use plane_core::health::ConnectionState;
use plane_core::{Registry, Requests};
use plane_nats::testkit::NatsServer;

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_nats::register(&mut r);
    r
}

async fn requests(url: &str) -> Requests {
    registry().requests(url).await.expect("requests")
}

/// Wait until `requests` reports `want`, failing after `limit`.
async fn until_state(requests: &Requests, want: ConnectionState, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let now = requests.connection_state();
        if now == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still {now:?} after {limit:?}, waiting for {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn docker(args: &[&str]) {
    let status = Command::new("docker").args(args).status().expect("docker");
    assert!(status.success(), "docker {args:?} failed");
}

/// Unpauses the container when dropped, so a failed assertion does not leave
/// it frozen for the server's own drop.
struct Paused<'a>(&'a str);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        let _ = Command::new("docker").args(["unpause", self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_notice_a_frozen_server() {
    let server = NatsServer::start().await.expect("server");
    let quick = requests(&format!(
        "{}?ping_interval_ms=300&pings_outstanding=2",
        server.url()
    ))
    .await;
    let default = requests(&server.url()).await;
    assert_eq!(quick.connection_state(), ConnectionState::Up);
    assert_eq!(default.connection_state(), ConnectionState::Up);

    // Frozen, not gone: the TCP connection stays open and silent.
    docker(&["pause", server.id()]);
    let paused = Paused(server.id());
    // Three unanswered 300 ms intervals, and some slack for the scheduler.
    let noticed = until_state(&quick, ConnectionState::Connecting, Duration::from_secs(5)).await;
    assert_eq!(
        default.connection_state(),
        ConnectionState::Up,
        "with the default 60 s pings nothing is noticed yet ({noticed:?} in)"
    );
    drop(paused);
    until_state(&quick, ConnectionState::Up, Duration::from_secs(15)).await;
    assert_eq!(
        quick.call("nobody_here", "x").await.unwrap_err().kind(),
        plane_core::ErrorKind::NoResponders
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gives_up_after_its_reconnect_attempts_and_reports_down() {
    let server = NatsServer::start().await.expect("server");
    let limited = requests(&format!(
        "{}?reconnect_attempts=2&reconnect_wait_ms=100",
        server.url()
    ))
    .await;
    let forever = requests(&server.url()).await;
    assert_eq!(limited.connection_state(), ConnectionState::Up);
    // The container is removed: every reconnect attempt is refused.
    drop(server);
    until_state(&limited, ConnectionState::Down, Duration::from_secs(15)).await;
    assert_eq!(
        forever.connection_state(),
        ConnectionState::Connecting,
        "a client reconnecting for ever is never Down"
    );
    // Down stays down: nothing more is attempted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(limited.connection_state(), ConnectionState::Down);
}

/// `/healthz` over every plane of one session, as a real HTTP client reads
/// it: the line of each plane, and the status.
async fn healthz(addr: std::net::SocketAddr) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("observe endpoint");
    s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).await.expect("answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status line");
    let body = answer
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

/// Every plane of the session in a `Health`, named by plane.
async fn every_plane(session: &plane_core::Session) -> plane_observe::Health {
    let requests = session.requests().await.expect("requests");
    let events = session.events().await.expect("events");
    let kv = session.kv().await.expect("kv");
    let objects = session.objects().await.expect("objects");
    let queues = session.queues().await.expect("queues");
    plane_observe::Health::new()
        .check("request", move || requests.connection_state())
        .check("events", move || events.connection_state())
        .check("kv", move || kv.connection_state())
        .check("objects", move || objects.connection_state())
        .check("queue", move || queues.connection_state())
}

async fn until_health(addr: std::net::SocketAddr, status: u16, state: &str) -> String {
    let started = Instant::now();
    loop {
        let (now, body) = healthz(addr).await;
        let all = body.lines().count() == 5 && body.lines().all(|l| l.ends_with(state));
        if now == status && all {
            return body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "/healthz still {now} {body:?}, waiting for {status} and every plane {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_covers_every_plane_up_reconnecting_and_down() {
    let server = NatsServer::start().await.expect("server");
    let metrics = plane_observe::PrometheusRecorder::new().handle();
    // Quick pings notice the frozen server; two reconnect attempts give up
    // once it is gone.
    let frozen = registry()
        .connect(&format!(
            "{}?ping_interval_ms=300&pings_outstanding=2",
            server.url()
        ))
        .await
        .expect("session");
    let limited = registry()
        .connect(&format!(
            "{}?reconnect_attempts=2&reconnect_wait_ms=100",
            server.url()
        ))
        .await
        .expect("session");
    let watching = plane_observe::serve("127.0.0.1:0", metrics.clone(), every_plane(&frozen).await)
        .await
        .expect("observe");
    let giving_up = plane_observe::serve("127.0.0.1:0", metrics, every_plane(&limited).await)
        .await
        .expect("observe");
    let body = until_health(watching.local_addr(), 200, "up").await;
    for plane in ["request", "events", "kv", "objects", "queue"] {
        assert!(body.contains(&format!("{plane} up")), "{body}");
    }
    until_health(giving_up.local_addr(), 200, "up").await;

    docker(&["pause", server.id()]);
    let paused = Paused(server.id());
    until_health(watching.local_addr(), 503, "connecting").await;
    drop(paused);
    until_health(watching.local_addr(), 200, "up").await;

    drop(server);
    until_health(giving_up.local_addr(), 503, "down").await;
}
