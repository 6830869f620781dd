//! plane-tcp: plane's brokerless request and events planes over raw TCP.
//!
//! Callers talk straight to the process serving an endpoint: servers
//! register their address in the [discovery](plane_core::discovery) plane,
//! on any kv backend; callers list and watch it, balance calls across
//! instances and multiplex every call to one process on one pooled
//! connection, each envelope length-delimited. See [`request`] for the
//! connection protocol and TLS, and [`events`] for publish/subscribe.
//! Plain by default (run it on a trusted network); `tls=true` runs every
//! connection under TLS 1.3 with certificate pinning or a CA, and optional
//! mutual TLS.
//!
#![doc = include_str!("../../../docs/tcp.md")]
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> plane_core::Result<()> {
//! use plane_core::request::{unary_fn, Request};
//!
//! let mut registry = plane_mem::registry();
//! plane_tcp::register(&mut registry);
//! let requests = registry
//!     .requests("tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fdev")
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
mod error;
pub mod events;
pub mod request;

use futures_util::future::BoxFuture;
use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::Registry;
use plane_core::{Events, Result};
use plane_peer as peer;
use url::Url;

pub use config::TcpConfig;
pub use events::TcpEvents;
pub use request::{TcpLinks, TcpRequests};

/// The backend name used in errors and reports.
pub const NAME: &str = "tcp";

/// The `tcp://` transport: what [`peer::PeerConnector`] needs of this crate.
#[derive(Debug)]
pub struct Tcp;

impl peer::Transport for Tcp {
    const NAME: &'static str = NAME;
    const SCHEMES: &'static [&'static str] = &["tcp"];
    type Config = TcpConfig;
    type Links = TcpLinks;

    fn config(url: &Url) -> Result<TcpConfig> {
        TcpConfig::from_url(url)
    }

    fn validate(config: &TcpConfig) -> Result<()> {
        config.validate()
    }

    fn discovery(config: &TcpConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn events(planes: &peer::PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>> {
        // On the session's one listener, shared with its request plane.
        Box::pin(async move {
            Ok(Events::new(
                TcpEvents::over(planes.requests().await?).await?,
            ))
        })
    }
}

/// The `tcp://` connector.
pub type TcpConnector = peer::PeerConnector<Tcp>;

/// Add the `tcp://` scheme to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(TcpConnector::new());
}
