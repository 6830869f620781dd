//! The configuration of the HTTP request plane: one struct, read from an
//! `h2c://` (cleartext) or `h2://` (TLS) URL (keys in `docs/http.md`) or
//! built in code, checked by one [`HttpConfig::validate`] either way.

use std::net::SocketAddr;

use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use plane_peer as peer;
use plane_peer::net;
use plane_peer::tls::TlsConfig;
use url::Url;

/// Configuration of an HTTP plane, usually read from an `h2c://` or `h2://`
/// URL.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address the listener binds.
    pub bind: SocketAddr,
    /// `host:port` published in discovery; `None` publishes the bound
    /// address (loopback if bound to every interface).
    pub advertise: Option<String>,
    /// kv URL of the discovery plane.
    pub discovery: String,
    /// Discovery bucket and lease.
    pub discovery_config: DiscoveryConfig,
    /// Largest request, reply or event payload; also the largest body an
    /// HTTP client may post.
    pub max_payload: usize,
    /// Heartbeat interval (per call between peers, and as an SSE comment to
    /// HTTP clients), idle timeout and connect timeout.
    pub timings: peer::Timings,
    /// TLS (the `h2://` scheme): identity and trust; `None` serves
    /// cleartext HTTP (`h2c://`).
    pub tls: Option<TlsConfig>,
}

impl HttpConfig {
    /// Bind `bind` and use the kv plane at `discovery`, in cleartext.
    pub fn new(bind: SocketAddr, discovery: impl Into<String>) -> Self {
        HttpConfig {
            bind,
            advertise: None,
            discovery: discovery.into(),
            discovery_config: DiscoveryConfig::default(),
            max_payload: net::MAX_PAYLOAD,
            timings: net::TIMINGS,
            tls: None,
        }
    }

    /// Read the configuration from an `h2c://HOST:PORT` or `h2://HOST:PORT`
    /// URL (see the crate docs).
    ///
    /// # Errors
    /// `InvalidConfig` for a missing or unparsable address, a missing
    /// `discovery`, TLS keys on `h2c://`, or an unknown or invalid query key.
    pub fn from_url(url: &Url) -> Result<Self> {
        let tls = match url.scheme() {
            "h2" => true,
            "h2c" => false,
            other => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("http: the scheme is `h2c` (cleartext) or `h2` (TLS), not `{other}`"),
                ))
            }
        };
        let bind = peer::bind_address(url, url.scheme())?;
        let mut q = QueryParams::new(url)?;
        let (discovery, discovery_config) = peer::discovery_query(&mut q, url.scheme())?;
        let mut c = HttpConfig::new(bind, discovery);
        c.discovery_config = discovery_config;
        c.tls = net::read_keys(
            &mut q,
            &mut c.advertise,
            &mut c.max_payload,
            &mut c.timings,
            tls,
            "the `h2://` scheme (h2c is cleartext)",
        )?;
        q.finish()?;
        c.validate()?;
        Ok(c)
    }

    /// Check the configuration however it was built: [`from_url`](Self::from_url)
    /// and the plane's `connect` call this.
    ///
    /// # Errors
    /// `InvalidConfig` naming the setting that is out of range.
    pub fn validate(&self) -> Result<()> {
        net::check("http", self.max_payload, &self.timings, &self.discovery)
    }
}
