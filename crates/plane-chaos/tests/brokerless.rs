//! Brokerless faults (#17 item 5, `docs/reliability.md`), on every
//! brokerless backend: quic, zmq, tcp and http.
//!
//! The serving peer is a process of its own (`plane-chaos peer`) inside a
//! network namespace this test makes, joined to the test's namespace by a
//! veth pair. Caller and peer find each other through discovery on a shared
//! directory, which stays reachable to both whatever happens to the
//! network, so a cut is between caller and server only. Each test:
//! 1. cuts the peer off (iptables drops everything in its namespace) while
//!    a stream is flowing: the stream ends `Disconnected` within the idle
//!    limit, calls made during the cut end with a retryable typed error
//!    within their deadline, and calls succeed again after the heal;
//! 2. kills the peer with SIGKILL mid-stream: the stream ends
//!    `Disconnected` within the idle limit;
//! 3. leaves the dead peer's record to expire: it leaves discovery within
//!    its lease, and a call is then refused `NoResponders`.
//!
//! It needs root (network namespaces, iptables), as CI has.

use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use plane::discovery::{Discovery, DiscoveryConfig};
use plane::request::Call;
use plane::{ErrorKind, Requests};

/// Discovery lease of every process of a test.
const LEASE: Duration = Duration::from_millis(1500);
/// The server's heartbeat interval and the caller's idle limit.
const HEARTBEAT: Duration = Duration::from_millis(200);
const IDLE: Duration = Duration::from_millis(1000);
/// Deadline of a unary call.
const CALL_TIMEOUT: Duration = Duration::from_millis(1000);
/// How far past its bound an outcome may come: scheduling on a loaded
/// 2-core machine, and a watcher's poll of the shared directory.
const SLACK: Duration = Duration::from_millis(2000);
/// The longest a healed path may take to carry calls again.
const RECOVERY: Duration = Duration::from_secs(10);

/// A host for the peer: a network namespace with one veth link to the
/// test's namespace, on subnet 10.213.`index`.0/30. Removed on drop.
struct Host {
    ns: String,
    /// The peer's address, `.2`.
    addr: Ipv4Addr,
    /// The test's end of the link, `.1`.
    caller: Ipv4Addr,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Host {
    fn new(index: u8) -> Host {
        let ns = format!("plane-bf{index}");
        let (outer, inner) = (format!("plbf{index}o"), format!("plbf{index}i"));
        // A namespace of the same name is one an earlier run of this test
        // left behind when it was killed: ours to remove.
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&["netns", "add", &ns]);
        let host = Host {
            ns: ns.clone(),
            addr: Ipv4Addr::new(10, 213, index, 2),
            caller: Ipv4Addr::new(10, 213, index, 1),
        };
        ip(&[
            "link", "add", &outer, "type", "veth", "peer", "name", &inner,
        ]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&["addr", "add", &format!("{}/30", host.caller), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let addr = format!("{}/30", host.addr);
        for args in [
            vec!["addr", "add", addr.as_str(), "dev", inner.as_str()],
            vec!["link", "set", inner.as_str(), "up"],
            vec!["link", "set", "lo", "up"],
        ] {
            let mut all = vec!["netns", "exec", ns.as_str(), "ip"];
            all.extend(args);
            ip(&all);
        }
        host
    }

    fn iptables(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "iptables"])
            .args(args)
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Drop every packet in and out: the peer's host is unreachable, its
    /// connections go silent (no reset, no FIN).
    fn cut(&self) {
        self.iptables(&["-A", "INPUT", "-j", "DROP"]);
        self.iptables(&["-A", "OUTPUT", "-j", "DROP"]);
    }

    fn heal(&self) {
        self.iptables(&["-F"]);
    }

    /// Start the serving peer inside the namespace and wait until it is
    /// listed in discovery.
    fn start_peer(&self, url: &str, endpoint: &str) -> Child {
        // `ip netns exec` executes the command in its own process, so the
        // child's pid is the peer's and a kill reaches it.
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_plane-chaos")])
            .args(["peer", "--url", url, "--endpoint", endpoint])
            .args(["--for-secs", "120"])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the peer");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the peer's output");
        assert_eq!(line.trim(), "ready", "the peer did not start");
        child
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Removing the namespace removes its end of the veth pair, and with
        // it the other end.
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

/// A backend's URL on `addr`, with the test's timings and discovery in
/// `dir`.
fn url(backend: &str, addr: Ipv4Addr, dir: &std::path::Path) -> String {
    let discovery = format!("file://{}?poll_ms=50", dir.display())
        .replace('%', "%25")
        .replace(':', "%3A")
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('=', "%3D");
    let scheme = match backend {
        "zmq" => "zmq+tcp",
        "http" => "h2c",
        other => other,
    };
    let liveness = match backend {
        // QUIC's liveness is the connection's own idle timeout (keep-alives
        // every third of it), not per-call heartbeats.
        "quic" => format!("idle_timeout_ms={}", IDLE.as_millis()),
        _ => format!(
            "heartbeat_ms={}&idle_timeout_ms={}",
            HEARTBEAT.as_millis(),
            IDLE.as_millis()
        ),
    };
    format!(
        "{scheme}://{addr}:0?discovery={discovery}&lease_ms={}&{liveness}&connect_timeout_ms=1000",
        LEASE.as_millis()
    )
}

/// Kinds that say "this call failed, try again", as a cut-off or dead
/// server may produce.
fn retryable(kind: ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::Timeout
            | ErrorKind::Disconnected
            | ErrorKind::Connection
            | ErrorKind::NoResponders
    )
}

/// Start a ticking stream and read two of its replies.
async fn flowing_stream(requests: &Requests, endpoint: &str) -> plane::request::Replies {
    let mut replies = requests
        .stream(Call::new(format!("{endpoint}.ticks"), "tick"))
        .await
        .expect("stream admitted");
    for _ in 0..2 {
        let reply = replies.next_reply().await.expect("a reply").expect("ok");
        assert_eq!(&reply.body.to_bytes()[..], b"tick");
    }
    replies
}

/// How the stream ended once its server went: the error and how long it
/// took from `since`.
async fn stream_end(mut replies: plane::request::Replies, since: Instant) -> (ErrorKind, Duration) {
    let bound = IDLE + SLACK + Duration::from_secs(2);
    let end = tokio::time::timeout(bound, async {
        loop {
            match replies.next_reply().await {
                // Replies already on their way when the fault struck.
                Some(Ok(_)) => continue,
                Some(Err(e)) => return e.kind(),
                None => panic!("the stream ended cleanly, though its server was gone"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream hung for {bound:?} after its server went"));
    (end, since.elapsed())
}

/// A unary call and how long it took.
async fn timed_call(requests: &Requests, endpoint: &str) -> (Result<(), ErrorKind>, Duration) {
    let started = Instant::now();
    let call = Call::new(endpoint, "ping").timeout(CALL_TIMEOUT);
    let outcome = match requests.call_with(call).await {
        Ok(reply) => {
            assert_eq!(&reply.body.to_bytes()[..], b"ping");
            Ok(())
        }
        Err(e) => Err(e.kind()),
    };
    (outcome, started.elapsed())
}

/// Call until a call succeeds; how long that took.
async fn until_served(requests: &Requests, endpoint: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (outcome, _) = timed_call(requests, endpoint).await;
        match outcome {
            Ok(()) => return started.elapsed(),
            Err(kind) => {
                assert!(retryable(kind), "a call failed with {kind:?}");
                assert!(
                    started.elapsed() < limit,
                    "no call succeeded within {limit:?} (last: {kind:?})"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn faults(backend: &str, index: u8) {
    let dir = tempfile::tempdir().expect("discovery directory");
    let host = Host::new(index);
    let endpoint = format!("bf.{backend}.echo");
    let peer_url = url(backend, host.addr, dir.path());
    // The caller binds its end of the link: a QUIC endpoint's one socket
    // sends every datagram, and one bound to loopback reaches nothing else.
    let caller_url = url(backend, host.caller, dir.path());
    let session = plane::registry()
        .connect(&caller_url)
        .await
        .expect("caller session");
    let requests = session.requests().await.expect("requests");
    let mut peer = host.start_peer(&peer_url, &endpoint);
    until_served(&requests, &endpoint, RECOVERY).await;

    // 1. A cut while a stream flows, and calls during it.
    let stream = flowing_stream(&requests, &endpoint).await;
    let cut_at = Instant::now();
    host.cut();
    let (kind, took) = stream_end(stream, cut_at).await;
    assert_eq!(
        kind,
        ErrorKind::Disconnected,
        "{backend}: stream end on a cut"
    );
    assert!(
        took <= IDLE + SLACK,
        "{backend}: stream ended {took:?} after the cut"
    );
    println!("{backend}: cut: stream Disconnected after {took:?}");
    for _ in 0..3 {
        let (outcome, took) = timed_call(&requests, &endpoint).await;
        let kind = outcome.expect_err("a call across a cut succeeded");
        assert!(
            retryable(kind),
            "{backend}: a call during the cut: {kind:?}"
        );
        assert!(
            took <= CALL_TIMEOUT + SLACK,
            "{backend}: a call during the cut took {took:?}"
        );
        println!("{backend}: cut: call {kind:?} after {took:?}");
    }
    host.heal();
    let back = until_served(&requests, &endpoint, RECOVERY).await;
    println!("{backend}: healed: calls succeed again after {back:?}");

    // 2. A kill mid-stream.
    let stream = flowing_stream(&requests, &endpoint).await;
    let killed_at = Instant::now();
    peer.kill().expect("kill the peer");
    peer.wait().expect("reap the peer");
    let (kind, took) = stream_end(stream, killed_at).await;
    assert_eq!(
        kind,
        ErrorKind::Disconnected,
        "{backend}: stream end on a kill"
    );
    assert!(
        took <= IDLE + SLACK,
        "{backend}: stream ended {took:?} after the kill"
    );
    println!("{backend}: kill: stream Disconnected after {took:?}");

    // 3. The dead peer leaves discovery within its lease, and calls are
    // then refused rather than sent to it.
    let kv = plane::registry()
        .kv(&format!("file://{}?poll_ms=50", dir.path().display()))
        .await
        .expect("discovery kv");
    let discovery = Discovery::open(&kv, DiscoveryConfig::default().lease(LEASE))
        .await
        .expect("discovery");
    let gone = loop {
        let listed = discovery.list(&endpoint).await.expect("list");
        if listed.is_empty() {
            break killed_at.elapsed();
        }
        assert!(
            killed_at.elapsed() <= LEASE + SLACK,
            "{backend}: the dead peer is still listed {:?} after the kill",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{backend}: kill: left discovery after {gone:?}");
    let refused = loop {
        let (outcome, _) = timed_call(&requests, &endpoint).await;
        match outcome {
            Err(ErrorKind::NoResponders) => break killed_at.elapsed(),
            Err(kind) if retryable(kind) => {}
            other => panic!("{backend}: a call to the dead peer: {other:?}"),
        }
        assert!(
            killed_at.elapsed() <= LEASE + 2 * SLACK,
            "{backend}: calls still go to the dead peer {:?} after the kill",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("{backend}: kill: calls refused NoResponders after {refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_peer_cut_off_killed_and_expired() {
    faults("quic", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zmq_peer_cut_off_killed_and_expired() {
    faults("zmq", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_peer_cut_off_killed_and_expired() {
    faults("tcp", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_peer_cut_off_killed_and_expired() {
    faults("http", 4).await;
}
