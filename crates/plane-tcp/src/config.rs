//! The configuration of the TCP planes: one struct, read from a `tcp://`
//! URL (keys in `docs/tcp.md`) or built in code, checked by one
//! [`TcpConfig::validate`] either way.

use std::net::SocketAddr;
use std::time::Duration;

use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use plane_peer as peer;
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
            max_payload: 8 * 1024 * 1024,
            timings: peer::Timings {
                heartbeat: Duration::from_millis(500),
                idle_timeout: Duration::from_secs(3),
                connect_timeout: Duration::from_secs(3),
            },
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
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| Error::new(ErrorKind::InvalidConfig, "tcp url needs a host to bind"))?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("tcp url binds an IP address, not `{host}`"),
            )
        })?;
        let bind = SocketAddr::new(ip, url.port().unwrap_or(0));
        let mut q = QueryParams::new(url)?;
        let (discovery, discovery_config) = peer::discovery_query(&mut q, "tcp")?;
        let mut c = TcpConfig::new(bind, discovery);
        c.discovery_config = discovery_config;
        c.advertise = q.take_str("advertise");
        q.set("max_payload", &mut c.max_payload)?;
        c.timings = c.timings.read(&mut q)?;
        let mut tls = false;
        q.set("tls", &mut tls)?;
        let settings = TlsConfig::default().read(&mut q);
        c.tls = if tls {
            Some(settings)
        } else if settings.is_set() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "tcp: the TLS keys ({}) need `tls=true`",
                    TlsConfig::KEYS.join(", ")
                ),
            ));
        } else {
            None
        };
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
        if self.max_payload == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload must be positive",
            ));
        }
        self.timings.check()?;
        if self.discovery.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "tcp needs `discovery=<percent-encoded kv url>`",
            ));
        }
        Ok(())
    }
}
