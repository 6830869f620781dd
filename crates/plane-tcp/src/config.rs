//! The configuration of the TCP planes: one struct, read from a `tcp://`
//! URL (keys in `docs/tcp.md`) or built in code, checked by one
//! [`TcpConfig::validate`] either way.

use std::net::SocketAddr;

use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::QueryParams;
use plane_core::Result;
use plane_peer as peer;
use plane_peer::net;
use plane_peer::tls::TlsConfig;
use url::Url;

/// Configuration of a TCP plane, usually read from a `tcp://` URL.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct TcpConfig {
    /// Address the listener binds.
    pub bind: SocketAddr,
    /// `host:port` published in discovery; `None` publishes the bound
    /// address (loopback if bound to every interface).
    pub advertise: Option<String>,
    /// kv URL of the discovery plane.
    pub discovery: String,
    /// Discovery bucket and lease.
    pub discovery_config: DiscoveryConfig,
    /// Largest request, reply or event payload.
    pub max_payload: usize,
    /// Heartbeat interval, idle timeout (a peer whose host vanished leaves
    /// a TCP connection that says nothing) and connect timeout.
    pub timings: peer::Timings,
    /// TLS (`tls=true`): identity and trust; `None` runs plain TCP.
    pub tls: Option<TlsConfig>,
}

impl TcpConfig {
    /// Bind `bind` and use the kv plane at `discovery`.
    pub fn new(bind: SocketAddr, discovery: impl Into<String>) -> Self {
        TcpConfig {
            bind,
            advertise: None,
            discovery: discovery.into(),
            discovery_config: DiscoveryConfig::default(),
            max_payload: net::MAX_PAYLOAD,
            timings: net::TIMINGS,
            tls: None,
        }
    }

    /// Read the configuration from a `tcp://HOST:PORT` URL (see the crate
    /// docs).
    ///
    /// # Errors
    /// `InvalidConfig` for a missing or unparsable address, a missing
    /// `discovery`, or an unknown or invalid query key.
    pub fn from_url(url: &Url) -> Result<Self> {
        let bind = peer::bind_address(url, "tcp")?;
        let mut q = QueryParams::new(url)?;
        let (discovery, discovery_config) = peer::discovery_query(&mut q, "tcp")?;
        let mut c = TcpConfig::new(bind, discovery);
        c.discovery_config = discovery_config;
        let mut tls = false;
        q.set("tls", &mut tls)?;
        c.tls = net::read_keys(
            &mut q,
            &mut c.advertise,
            &mut c.max_payload,
            &mut c.timings,
            tls,
            "`tls=true`",
        )?;
        q.finish()?;
        c.validate()?;
        Ok(c)
    }

    /// Check the configuration however it was built: [`from_url`](Self::from_url)
    /// and the planes' `connect` call this.
    ///
    /// # Errors
    /// `InvalidConfig` naming the setting that is out of range.
    pub fn validate(&self) -> Result<()> {
        net::check("tcp", self.max_payload, &self.timings, &self.discovery)
    }
}
