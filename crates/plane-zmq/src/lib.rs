//! plane-zmq: plane's brokerless request and events planes over ZeroMQ
//! (libzmq).
//!
//! Callers talk straight to the process serving an endpoint: a server binds
//! one ROUTER socket for every endpoint instance it serves and registers its
//! address in the [discovery](plane_core::discovery) plane, on any kv
//! backend; callers list and watch it, balance calls across instances and
//! send them on one DEALER per peer process. See [`request`] for the
//! protocol, liveness and backpressure.
//!
//! Events go straight from publisher to subscriber too: each events handle
//! binds an XPUB socket registered in discovery under the reserved endpoint
//! [`events::EVENTS_ENDPOINT`] (`plane-events`), and each subscription
//! connects a SUB socket to every publisher. At-most-once only: wildcards,
//! worker groups (each publisher picks one member) and per-publisher order,
//! no durable streams. See [`events`].
//!
//! libzmq is built from source by `zmq-sys` (a C++ compiler is needed, no
//! system package). Unix only (the socket is driven through its `ZMQ_FD`).
//!
#![doc = include_str!("../../../docs/zmq.md")]
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> plane_core::Result<()> {
//! use plane_core::request::{unary_fn, Request};
//!
//! let mut registry = plane_mem::registry();
//! plane_zmq::register(&mut registry);
//! let requests = registry
//!     .requests("zmq+tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fdev")
//!     .await?;
//! let _server = requests
//!     .serve("echo", unary_fn(|req: Request| async move { Ok(req.message) }))
//!     .await?;
//! assert_eq!(requests.call("echo", "hi").await?.to_bytes(), "hi");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod events;
pub mod request;
mod socket;

use std::time::Duration;

use futures_util::future::BoxFuture;
use plane_core::discovery::{Discovery, DiscoveryConfig};
use plane_core::registry::{QueryParams, Registry};
use plane_core::{Error, ErrorKind, Events, Requests, Result};
use plane_peer as peer;
use url::Url;

pub use events::ZmqEvents;
pub use request::ZmqRequests;

/// The backend name used in errors and reports.
pub const NAME: &str = "zmq";

/// Configuration of a ZeroMQ plane, usually read from a `zmq+tcp://` URL.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct ZmqConfig {
    /// ZeroMQ address the ROUTER binds (`tcp://127.0.0.1:0`, `ipc:///tmp/x`).
    pub bind: String,
    /// Address published in discovery; `None` publishes the bound address.
    pub advertise: Option<String>,
    /// ZeroMQ address the events plane's XPUB binds; `None` binds the
    /// ROUTER's host on a free port (or the ROUTER's socket path plus
    /// `.events`).
    pub events_bind: Option<String>,
    /// Address of the XPUB published in discovery; `None` publishes the
    /// bound address.
    pub events_advertise: Option<String>,
    /// kv URL of the discovery plane.
    pub discovery: String,
    /// Discovery bucket and lease.
    pub discovery_config: DiscoveryConfig,
    /// Largest request or reply payload.
    pub max_payload: usize,
    /// High-water mark of every socket, in messages.
    pub hwm: i32,
    /// High-water mark of the events plane's sockets, in events: how many
    /// events a publisher queues per subscribing socket (and a subscription
    /// socket holds) before ZeroMQ drops. Higher than [`hwm`](Self::hwm) so
    /// that a burst is not lost while libzmq's I/O thread catches up.
    pub events_hwm: i32,
    /// Interval of the server's per-call heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a call is `Disconnected`.
    pub idle_timeout: Duration,
    /// Longest wait for a connection to a peer.
    pub connect_timeout: Duration,
}

impl ZmqConfig {
    /// Bind `bind` (a ZeroMQ address) and use the kv plane at `discovery`.
    pub fn new(bind: impl Into<String>, discovery: impl Into<String>) -> Self {
        ZmqConfig {
            bind: bind.into(),
            advertise: None,
            events_bind: None,
            events_advertise: None,
            discovery: discovery.into(),
            discovery_config: DiscoveryConfig::default(),
            max_payload: 8 * 1024 * 1024,
            hwm: 1000,
            events_hwm: 10_000,
            heartbeat: Duration::from_millis(500),
            idle_timeout: Duration::from_secs(3),
            connect_timeout: Duration::from_secs(3),
        }
    }

    /// Read the configuration from a `zmq+tcp://` or `zmq+ipc://` URL (see
    /// the crate docs).
    ///
    /// # Errors
    /// `InvalidConfig` for a missing address or `discovery`, or an unknown or
    /// invalid query key.
    pub fn from_url(url: &Url) -> Result<Self> {
        let bind = match url.scheme() {
            "zmq+tcp" => {
                let host = url.host_str().ok_or_else(|| {
                    Error::new(ErrorKind::InvalidConfig, "zmq+tcp url needs a host to bind")
                })?;
                format!("tcp://{host}:{}", url.port().unwrap_or(0))
            }
            "zmq+ipc" => {
                if url.path().is_empty() || url.path() == "/" {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        "zmq+ipc url needs a socket path",
                    ));
                }
                format!("ipc://{}", url.path())
            }
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("`{other}` is not a zmq scheme"),
                ))
            }
        };
        let mut q = QueryParams::new(url)?;
        let (discovery, discovery_config) = peer::discovery_query(&mut q, "zmq")?;
        let mut c = ZmqConfig::new(bind, discovery);
        c.discovery_config = discovery_config;
        c.advertise = q.take_str("advertise");
        c.events_bind = q.take_str("events_bind");
        c.events_advertise = q.take_str("events_advertise");
        if let Some(m) = q.take("max_payload")? {
            c.max_payload = m;
        }
        if let Some(h) = q.take("hwm")? {
            c.hwm = h;
        }
        if let Some(h) = q.take("events_hwm")? {
            c.events_hwm = h;
        }
        if let Some(t) = q.take_millis("heartbeat_ms")? {
            c.heartbeat = t;
        }
        if let Some(t) = q.take_millis("idle_timeout_ms")? {
            c.idle_timeout = t;
        }
        if let Some(t) = q.take_millis("connect_timeout_ms")? {
            c.connect_timeout = t;
        }
        q.finish()?;
        if c.max_payload == 0
            || c.hwm <= 0
            || c.events_hwm <= 0
            || c.heartbeat.is_zero()
            || c.idle_timeout <= c.heartbeat
            || c.connect_timeout.is_zero()
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload, hwm, events_hwm, heartbeat_ms and connect_timeout_ms must be positive, \
                 and idle_timeout_ms longer than heartbeat_ms",
            ));
        }
        Ok(c)
    }
}

/// The `zmq+tcp://` and `zmq+ipc://` transport: what [`peer::PeerConnector`] needs of this crate.
#[derive(Debug)]
pub struct Zmq;

impl peer::Transport for Zmq {
    const NAME: &'static str = NAME;
    const SCHEMES: &'static [&'static str] = &["zmq+tcp", "zmq+ipc"];
    type Config = ZmqConfig;

    fn config(url: &Url) -> Result<ZmqConfig> {
        ZmqConfig::from_url(url)
    }

    fn discovery(config: &ZmqConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn requests(config: ZmqConfig, discovery: Discovery) -> BoxFuture<'static, Result<Requests>> {
        Box::pin(async move { Ok(Requests::new(ZmqRequests::connect(config, discovery)?)) })
    }

    fn events(config: ZmqConfig, discovery: Discovery) -> BoxFuture<'static, Result<Events>> {
        Box::pin(async move { Ok(Events::new(ZmqEvents::connect(config, discovery).await?)) })
    }
}

/// The `zmq+tcp://` and `zmq+ipc://` connector.
pub type ZmqConnector = peer::PeerConnector<Zmq>;

/// Add the `zmq+tcp://` and `zmq+ipc://` schemes to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(ZmqConnector::new());
}
