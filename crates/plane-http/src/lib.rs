//! plane-http: plane's brokerless request plane over HTTP/2, on hyper.
//!
//! Between plane processes it works as every brokerless transport does:
//! servers register their address in the [discovery](plane_core::discovery)
//! plane, on any kv backend; callers list and watch it, balance calls across
//! instances and multiplex every call to one process on one pooled HTTP/2
//! connection, a stream per call (see [`request`]). Cleartext on `h2c://`,
//! TLS 1.3 on `h2://` (certificate pinning or a CA, optional mutual TLS) —
//! schemes of their own, so `https://` stays the object store's.
//!
//! The same listener speaks to any HTTP client, HTTP/1.1 or HTTP/2: `POST`
//! a body to `/{endpoint}` and the reply is the response body; ask for
//! `text/event-stream` and a streamed call's replies come as server-sent
//! events ending in an `end` event ([`public`]). Only the request plane:
//! the events plane is refused with `Unsupported` (run events on another
//! backend).
//!
#![doc = include_str!("../../../docs/http.md")]
//!
//! # Example
//!
//! ```no_run
//! # async fn demo() -> plane_core::Result<()> {
//! use plane_core::request::{unary_fn, Request};
//!
//! let mut registry = plane_mem::registry();
//! plane_http::register(&mut registry);
//! let requests = registry
//!     .requests("h2c://127.0.0.1:0?discovery=mem%3A%2F%2Fdev")
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
#[doc(hidden)]
pub mod fuzzing;
pub mod public;
pub mod request;
pub mod server;

use futures_util::future::BoxFuture;
use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::Registry;
use plane_core::{Error, ErrorKind, Events, Result};
use plane_peer as peer;
use url::Url;

pub use config::HttpConfig;
pub use error::status_of;
pub use request::{HttpLinks, HttpRequests};

/// The backend name used in errors and reports.
pub const NAME: &str = "http";

/// The `h2c://` and `h2://` transport: what [`peer::PeerConnector`] needs
/// of this crate.
#[derive(Debug)]
pub struct Http;

impl peer::Transport for Http {
    const NAME: &'static str = NAME;
    const SCHEMES: &'static [&'static str] = &["h2c", "h2"];
    type Config = HttpConfig;
    type Links = HttpLinks;

    fn config(url: &Url) -> Result<HttpConfig> {
        HttpConfig::from_url(url)
    }

    fn validate(config: &HttpConfig) -> Result<()> {
        config.validate()
    }

    fn discovery(config: &HttpConfig) -> (&str, &DiscoveryConfig) {
        (&config.discovery, &config.discovery_config)
    }

    fn events(_planes: &peer::PeerPlanes<Self>) -> BoxFuture<'_, Result<Events>> {
        Box::pin(async {
            Err(Error::new(
                ErrorKind::Unsupported,
                "http serves the request plane only; run events on another backend (tcp, quic, zmq, nats)",
            ))
        })
    }
}

/// The `h2c://` and `h2://` connector.
pub type HttpConnector = peer::PeerConnector<Http>;

/// Add the `h2c://` and `h2://` schemes to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(HttpConnector::new());
}
