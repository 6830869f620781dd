//! Faults between two TCP plane processes, injected by a relay on the
//! path: a connection that goes silent (its packets lost, as when a peer's
//! host vanishes or a middlebox drops the flow) ends its calls
//! `Disconnected` within the idle limit, never hangs them, and is replaced:
//! the next call does not wait out the limit on it again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plane_core::request::{handler_fn, unary_fn, Call, Request, Responder};
use plane_core::{ErrorKind, Requests};
use plane_tcp::{TcpConfig, TcpRequests};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Forwards every connection to a target; `silence` makes the connections
/// open at that moment drop whatever they carry from then on (new ones
/// flow normally).
#[derive(Clone, Default)]
struct Relay {
    open: Arc<Mutex<Vec<Arc<AtomicBool>>>>,
}

impl Relay {
    fn silence(&self) {
        for dropping in self.open.lock().unwrap().iter() {
            dropping.store(true, Ordering::SeqCst);
        }
    }

    fn start(&self, listener: TcpListener, target: std::net::SocketAddr) {
        let open = self.open.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(target).await else {
                    continue;
                };
                let dropping = Arc::new(AtomicBool::new(false));
                open.lock().unwrap().push(dropping.clone());
                let (ir, iw) = inbound.into_split();
                let (or, ow) = outbound.into_split();
                tokio::spawn(pipe(ir, ow, dropping.clone()));
                tokio::spawn(pipe(or, iw, dropping));
            }
        });
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    dropping: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !dropping.load(Ordering::SeqCst) && to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

fn config(hub: &str) -> TcpConfig {
    let mut c = TcpConfig::new("127.0.0.1:0".parse().unwrap(), hub);
    c.timings.heartbeat = Duration::from_millis(100);
    c.timings.idle_timeout = Duration::from_millis(600);
    c
}

async fn node(config: TcpConfig) -> (TcpRequests, Requests) {
    let registry = plane_mem::registry();
    let discovery = plane_peer::discovery_of::<plane_tcp::Tcp>(&config, &registry)
        .await
        .unwrap();
    let backend = TcpRequests::connect(config, discovery).unwrap();
    (backend.clone(), Requests::new(backend))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_ends_its_calls_and_is_replaced() {
    let hub = format!("mem://tcp-faults-{:016x}", rand::random::<u64>());
    // The server advertises the relay, so callers reach it through it.
    let relay_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut server_config = config(&hub);
    server_config.advertise = Some(relay_listener.local_addr().unwrap().to_string());
    let (server_backend, server) = node(server_config).await;
    let relay = Relay::default();
    relay.start(relay_listener, server_backend.links().local_addr());

    let _ticks = server
        .serve(
            "ticks",
            handler_fn(|_req: Request, responder: Responder| async move {
                for i in 0..1000u32 {
                    responder.send(i.to_string()).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let (_caller_backend, caller) = node(config(&hub)).await;

    let mut ticks = caller
        .stream(Call::new("ticks", "").timeout(Duration::from_secs(30)))
        .await
        .unwrap();
    for _ in 0..3 {
        ticks
            .next()
            .await
            .expect("a tick")
            .expect("a tick, not an error");
    }
    relay.silence();
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ticks.next().await {
                Some(Ok(_)) => continue, // what was in flight before the silence
                Some(Err(e)) => return Some(e),
                None => return None,
            }
        }
    })
    .await
    .expect("the stream must not hang on a silent connection");
    let e = ended.expect("an error, not a clean end");
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    let noticed = started.elapsed();
    assert!(
        noticed < Duration::from_secs(3),
        "noticed after {noticed:?}, idle limit 600 ms"
    );

    // The next call goes over a new connection: on the dead one it would
    // wait out the idle limit and fail `Disconnected` too.
    let reply = tokio::time::timeout(Duration::from_secs(10), caller.call("echo", "again"))
        .await
        .expect("no hang")
        .expect("a fresh connection answers");
    assert_eq!(reply.to_bytes(), "again");
}
