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
//! libzmq is built from source by plane's own binding, `plane-zmq-sys`, with
//! CURVE on (libsodium built from source too; a C/C++ compiler and `make`
//! are needed, no system package). Unix only (the socket is driven through
//! its `ZMQ_FD`). Connections are in clear text unless CURVE keys are
//! configured: see the Security section below.
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

pub mod config;
mod curve;
mod error;
pub mod events;
pub mod request;
mod socket;

use futures_util::future::BoxFuture;
use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::Registry;
use plane_core::{Events, Result};
use plane_peer as peer;
use url::Url;

pub use config::{curve_keypair, CurveConfig, ZmqConfig};
pub use events::ZmqEvents;
pub use request::{ZmqLinks, ZmqRequests};

/// The backend name used in errors and reports.
pub const NAME: &str = "zmq";

/// The `zmq+tcp://` and `zmq+ipc://` transport: what [`peer::PeerConnector`] needs of this crate.
#[derive(Debug)]
pub struct Zmq;

impl peer::Transport for Zmq {
    const NAME: &'static str = NAME;
    const SCHEMES: &'static [&'static str] = &["zmq+tcp", "zmq+ipc"];
    type Config = ZmqConfig;
    type Links = request::ZmqLinks;

    fn config(url: &Url) -> Result<ZmqConfig> {
        ZmqConfig::from_url(url)
    }

    fn validate(config: &ZmqConfig) -> Result<()> {
        config.validate()
    }

    fn discovery(config: &ZmqConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn events(planes: &peer::PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>> {
        // Events have their own XPUB socket: the ROUTER is not needed.
        Box::pin(async move {
            let config = planes.config().clone();
            Ok(Events::new(
                ZmqEvents::connect(config, planes.discovery().await?).await?,
            ))
        })
    }
}

/// The `zmq+tcp://` and `zmq+ipc://` connector.
pub type ZmqConnector = peer::PeerConnector<Zmq>;

/// Add the `zmq+tcp://` and `zmq+ipc://` schemes to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(ZmqConnector::new());
}
