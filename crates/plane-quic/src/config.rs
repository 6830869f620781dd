//! The configuration of the QUIC planes: one struct, read from a `quic://`
//! URL (keys in `docs/quic.md`) or built in code, checked by one
//! [`QuicConfig::validate`] either way.

use std::net::SocketAddr;
use std::time::Duration;

use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use plane_peer as peer;
use url::Url;

use crate::tls::TlsConfig;

/// Configuration of a QUIC plane, usually read from a `quic://` URL.
#[non_exhaustive]
#[derive(Debug, Clone)]
pub struct QuicConfig {
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Address published in discovery; `None` publishes the bound address.
    pub advertise: Option<String>,
    /// kv URL of the discovery plane.
    pub discovery: String,
    /// Discovery bucket and lease.
    pub discovery_config: DiscoveryConfig,
    /// Identity and trust (QUIC always runs TLS).
    pub tls: TlsConfig,
    /// Largest request or reply payload.
    pub max_payload: usize,
    /// Silence after which a connection is lost.
    pub idle_timeout: Duration,
    /// Longest wait for a handshake.
    pub connect_timeout: Duration,
    /// Concurrent streams (calls) a peer may open on one connection.
    pub max_streams: u32,
    /// Bytes a call's receiver accepts ahead of its reader (QUIC stream
    /// flow-control window): how far a handler runs ahead of a stalled
    /// caller, and the throughput cap of one call per round trip.
    pub stream_window: u32,
}

impl QuicConfig {
    /// Bind `bind` and use the kv plane at `discovery` for discovery.
    pub fn new(bind: SocketAddr, discovery: impl Into<String>) -> Self {
        QuicConfig {
            bind,
            advertise: None,
            discovery: discovery.into(),
            discovery_config: DiscoveryConfig::default(),
            tls: TlsConfig::default(),
            max_payload: 8 * 1024 * 1024,
            idle_timeout: Duration::from_secs(6),
            connect_timeout: Duration::from_secs(3),
            max_streams: 4096,
            stream_window: 64 * 1024,
        }
    }

    /// Read the configuration from a `quic://` URL (see the crate docs).
    ///
    /// # Errors
    /// `InvalidConfig` for a missing host or port, a missing `discovery`, or
    /// an unknown or invalid query key.
    pub fn from_url(url: &Url) -> Result<Self> {
        let bind = peer::bind_address(url, "quic")?;
        let mut q = QueryParams::new(url)?;
        let (discovery, discovery_config) = peer::discovery_query(&mut q, "quic")?;
        let mut c = QuicConfig::new(bind, discovery);
        c.discovery_config = discovery_config;
        c.advertise = q.take_str("advertise");
        c.tls = c.tls.read(&mut q);
        q.set("max_payload", &mut c.max_payload)?;
        q.set_millis("idle_timeout_ms", &mut c.idle_timeout)?;
        q.set_millis("connect_timeout_ms", &mut c.connect_timeout)?;
        q.set("stream_window", &mut c.stream_window)?;
        q.finish()?;
        c.validate()?;
        Ok(c)
    }

    /// Check the configuration however it was built: [`from_url`](Self::from_url)
    /// and the planes' `connect` call this, so a config built in code is held
    /// to the same rules as one read from a URL.
    ///
    /// # Errors
    /// `InvalidConfig` naming the setting that is out of range.
    pub fn validate(&self) -> Result<()> {
        if self.max_payload == 0
            || self.idle_timeout.is_zero()
            || self.connect_timeout.is_zero()
            || self.stream_window == 0
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload, idle_timeout_ms, connect_timeout_ms and stream_window must be positive",
            ));
        }
        Ok(())
    }
}
