//! plane-quic: plane's brokerless request and events planes over QUIC
//! (quinn + rustls).
//!
//! Callers talk straight to the process serving an endpoint: servers register
//! their address (and certificate fingerprint) in the
//! [discovery](plane_core::discovery) plane, on any kv backend; callers list
//! and watch it, balance calls across instances and open one QUIC stream per
//! call on a connection shared by all calls between two processes. See
//! [`request`] for the protocol and [`tls`] for certificates.
//!
//! Events go straight from publisher to subscriber too: an events handle
//! publishes on a QUIC endpoint registered in discovery under the reserved
//! endpoint [`events::EVENTS_ENDPOINT`] (`plane-events`), and each
//! subscription opens one stream to every publisher. At-most-once only:
//! wildcards, worker groups (each publisher picks one member) and
//! per-publisher order, no durable streams.
//! See [`events`]. The planes of one session (`Registry::connect`) share one
//! endpoint; [`QuicEvents::connect`] on its own binds one of its own.
//!
#![doc = include_str!("../../../docs/quic.md")]
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> plane_core::Result<()> {
//! use plane_core::request::{unary_fn, Request};
//!
//! let mut registry = plane_mem::registry();
//! plane_quic::register(&mut registry);
//! let requests = registry
//!     .requests("quic://127.0.0.1:0?discovery=mem%3A%2F%2Fdev")
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
pub mod tls;

use futures_util::future::BoxFuture;
use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::Registry;
use plane_core::{Events, Result};
use plane_peer as peer;
use url::Url;

pub use config::QuicConfig;
pub use events::QuicEvents;
pub use request::{QuicLinks, QuicRequests};

/// The backend name used in errors and reports.
pub const NAME: &str = "quic";

/// The `quic://` transport: what [`peer::PeerConnector`] needs of this crate.
#[derive(Debug)]
pub struct Quic;

impl peer::Transport for Quic {
    const NAME: &'static str = NAME;
    const SCHEMES: &'static [&'static str] = &["quic"];
    type Config = QuicConfig;
    type Links = request::QuicLinks;

    fn config(url: &Url) -> Result<QuicConfig> {
        QuicConfig::from_url(url)
    }

    fn validate(config: &QuicConfig) -> Result<()> {
        config.validate()
    }

    fn discovery(config: &QuicConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn events(planes: &peer::PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>> {
        // On the session's one endpoint, shared with its request plane.
        Box::pin(async move {
            Ok(Events::new(
                QuicEvents::over(planes.requests().await?).await?,
            ))
        })
    }
}

/// The `quic://` connector.
pub type QuicConnector = peer::PeerConnector<Quic>;

/// Add the `quic://` scheme to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(QuicConnector::new());
}
