//! The brokerless request runtime ([`PeerRequests`]) between two handles,
//! over the smallest transport there is: channels in one process. What these
//! tests check is the runtime's own — credit, idle limit, kill, refusal —
//! with no socket to blame, and the transport below shows how little a
//! transport has to write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use plane_core::discovery::{DiscoveryConfig, Instance};
use plane_core::request::{handler_fn, unary_fn, Call, InstanceId, Request, Responder};
use plane_core::wire::{Envelope, EnvelopeKind};
use plane_core::{Error, ErrorKind, Events, Requests, Result};
use plane_peer::{
    CallLink, Control, Endpoints, LinkSettings, PeerPlanes, PeerRequests, ReplyWriter,
    RequestLinks, ServedCall, Transport, WINDOW,
};
use tokio::sync::mpsc;
use url::Url;

/// Channels in one process: a listener is its routing table, found by name.
struct Loop;

#[derive(Clone)]
struct LoopConfig {
    /// The listener's name, unique per test.
    name: String,
    discovery: String,
    discovery_config: DiscoveryConfig,
    /// Replies are dropped on the floor, as by a server that hangs.
    silent: bool,
    idle_limit: Option<Duration>,
    /// Data envelopes the server wrote, counted by the transport.
    data_sent: Arc<AtomicUsize>,
}

fn listeners() -> &'static Mutex<HashMap<String, Endpoints>> {
    static L: OnceLock<Mutex<HashMap<String, Endpoints>>> = OnceLock::new();
    L.get_or_init(Default::default)
}

impl Transport for Loop {
    const NAME: &'static str = "loop";
    const SCHEMES: &'static [&'static str] = &["loop"];
    type Config = LoopConfig;
    type Links = LoopLinks;

    fn config(_url: &Url) -> Result<LoopConfig> {
        Err(Error::new(ErrorKind::Unsupported, "built in code only"))
    }

    fn validate(config: &LoopConfig) -> Result<()> {
        if config.name.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "a listener needs a name",
            ));
        }
        Ok(())
    }

    fn discovery(config: &LoopConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn events(_planes: &PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>> {
        Box::pin(async { Err(Error::new(ErrorKind::Unsupported, "no events on loop")) })
    }
}

struct LoopLinks {
    config: LoopConfig,
}

impl RequestLinks for LoopLinks {
    type Transport = Loop;
    type Link = LoopLink;

    fn bind(config: LoopConfig, endpoints: Endpoints) -> Result<Self> {
        listeners()
            .lock()
            .unwrap()
            .insert(config.name.clone(), endpoints);
        Ok(LoopLinks { config })
    }

    fn settings(&self) -> LinkSettings {
        LinkSettings {
            max_payload: 1 << 20,
            connect_timeout: Duration::from_secs(1),
            idle_limit: self.config.idle_limit,
        }
    }

    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        Ok(Instance::new(endpoint, instance, self.config.name.clone()))
    }

    async fn open(&self, instance: &Instance, request: Envelope) -> Result<LoopLink> {
        let endpoints = listeners()
            .lock()
            .unwrap()
            .get(&instance.address)
            .cloned()
            .ok_or_else(|| Error::new(ErrorKind::Connection, "no such listener"))?;
        let (reply_tx, reply_rx) = mpsc::unbounded_channel();
        let (control_tx, control_rx) = mpsc::unbounded_channel();
        // The serving side of the call, as a transport's reader task runs it.
        tokio::spawn(serve(
            endpoints,
            request,
            LoopWriter {
                tx: reply_tx,
                silent: self.config.silent,
                data_sent: self.config.data_sent.clone(),
            },
            control_rx,
        ));
        Ok(LoopLink {
            replies: reply_rx,
            control: control_tx,
        })
    }
}

async fn serve(
    endpoints: Endpoints,
    request: Envelope,
    writer: LoopWriter,
    mut control: mpsc::UnboundedReceiver<Envelope>,
) {
    let id = request.id;
    // The connection stays open while the caller holds its link, whatever
    // the handler does with its writer.
    let _connection = writer.tx.clone();
    let (call, incoming) = match ServedCall::accept(&endpoints, request) {
        Ok(accepted) => accepted,
        Err(e) => {
            let _ = writer.tx.send(Envelope::error(id, &e));
            return;
        }
    };
    call.start(incoming, writer);
    while let Some(env) = control.recv().await {
        match call.control(env) {
            Ok(Control::Continue) => {}
            Ok(Control::Killed) | Err(_) => break,
        }
    }
    // The caller went away or killed the call.
    call.kill();
}

struct LoopWriter {
    tx: mpsc::UnboundedSender<Envelope>,
    silent: bool,
    data_sent: Arc<AtomicUsize>,
}

impl ReplyWriter for LoopWriter {
    fn write(&self, env: Envelope, _last: bool) -> BoxFuture<'_, Result<()>> {
        if env.kind == EnvelopeKind::Data {
            self.data_sent.fetch_add(1, Ordering::SeqCst);
        }
        let sent = self.silent || self.tx.send(env).is_ok();
        Box::pin(async move {
            sent.then_some(())
                .ok_or_else(|| Error::new(ErrorKind::Disconnected, "caller gone"))
        })
    }

    fn abandon(&mut self) {
        if !self.silent {
            let _ = self.tx.send(Envelope::error(
                Default::default(),
                &plane_peer::abandoned(),
            ));
        }
    }
}

struct LoopLink {
    replies: mpsc::UnboundedReceiver<Envelope>,
    control: mpsc::UnboundedSender<Envelope>,
}

impl CallLink for LoopLink {
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>> {
        self.replies.poll_recv(cx).map(|e| e.map(Ok))
    }

    fn control(&mut self, env: Envelope) -> bool {
        self.control.send(env).is_ok()
    }

    fn kill(&mut self) {
        let _ = self
            .control
            .send(Envelope::new(EnvelopeKind::Kill, Default::default()));
        self.replies.close();
    }
}

/// One server handle and one caller handle on the loop transport, sharing a
/// discovery kv.
async fn pair(
    name: &str,
    silent: bool,
    idle_limit: Option<Duration>,
) -> (Requests, Requests, Arc<AtomicUsize>) {
    let registry = plane_mem::registry();
    let hub = format!("mem://peer-calls-{name}-{:x}", std::process::id());
    let data_sent = Arc::new(AtomicUsize::new(0));
    let config = |n: &str| LoopConfig {
        name: format!("{name}-{n}"),
        discovery: hub.clone(),
        discovery_config: DiscoveryConfig::default(),
        silent,
        idle_limit,
        data_sent: data_sent.clone(),
    };
    let discovery = plane_peer::discovery_of::<Loop>(&config("server"), &registry)
        .await
        .unwrap();
    let server = PeerRequests::<LoopLinks>::connect(config("server"), discovery.clone()).unwrap();
    let caller = PeerRequests::<LoopLinks>::connect(config("caller"), discovery).unwrap();
    (Requests::new(server), Requests::new(caller), data_sent)
}

#[tokio::test]
async fn unary_and_streamed_calls_cross_the_shared_runtime() {
    let (server, caller, _) = pair("basic", false, None).await;
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let _count = server
        .serve(
            "count",
            handler_fn(|_r: Request, out: Responder| async move {
                for i in 0..3u8 {
                    out.send(vec![i]).await?;
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    assert_eq!(caller.call("echo", "hi").await.unwrap().to_bytes(), "hi");
    let mut replies = caller.stream(Call::new("count", "")).await.unwrap();
    let mut got = Vec::new();
    while let Some(r) = replies.next_reply().await {
        got.push(r.unwrap().body.to_bytes()[0]);
    }
    assert_eq!(got, vec![0, 1, 2]);
    let e = caller.call("nobody", "").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NoResponders);
}

#[tokio::test]
async fn a_stalled_reader_holds_the_handler_within_one_window() {
    let (server, caller, data_sent) = pair("window", false, None).await;
    let total = 4 * WINDOW as usize;
    let _flood = server
        .serve(
            "flood",
            handler_fn(move |_r: Request, out: Responder| async move {
                for i in 0..total as u32 {
                    out.send(i.to_be_bytes().to_vec()).await?;
                }
                Ok(())
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("flood", "")).await.unwrap();
    assert!(replies.next_reply().await.unwrap().is_ok());
    // The transport buffers without bound; only the credit holds the handler.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ahead = data_sent.load(Ordering::SeqCst);
    assert!(
        ahead <= WINDOW as usize + 1,
        "{ahead} data envelopes sent to a reader that took one (window {WINDOW})"
    );
    let mut next = 1u32;
    while let Some(r) = replies.next_reply().await {
        let body = r.unwrap().body.to_bytes();
        assert_eq!(u32::from_be_bytes(body[..4].try_into().unwrap()), next);
        next += 1;
    }
    assert_eq!(next as usize, total, "every frame arrives, in order");
}

#[tokio::test]
async fn a_silent_server_ends_the_call_disconnected_after_its_idle_limit() {
    let idle = Duration::from_millis(300);
    let (server, caller, _) = pair("silent", true, Some(idle)).await;
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .unwrap();
    let started = Instant::now();
    let e = caller
        .call_with(Call::new("echo", "x").timeout(Duration::from_secs(20)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Disconnected, "{e}");
    let waited = started.elapsed();
    assert!(
        waited >= idle && waited < Duration::from_secs(10),
        "given up by its idle limit, not its deadline: {waited:?}"
    );
}

#[tokio::test]
async fn a_killed_call_kills_its_handler() {
    let (server, caller, _) = pair("kill", false, None).await;
    let (dropped_tx, mut dropped_rx) = mpsc::unbounded_channel::<()>();
    struct Guard(mpsc::UnboundedSender<()>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }
    let _forever = server
        .serve(
            "forever",
            handler_fn(move |_r: Request, out: Responder| {
                let guard = Guard(dropped_tx.clone());
                async move {
                    let _guard = guard;
                    out.send("started").await?;
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }),
        )
        .await
        .unwrap();
    let mut replies = caller.stream(Call::new("forever", "")).await.unwrap();
    assert!(replies.next_reply().await.unwrap().is_ok());
    replies.kill();
    tokio::time::timeout(Duration::from_secs(5), dropped_rx.recv())
        .await
        .expect("the handler is dropped once the caller kills the call")
        .unwrap();
}
