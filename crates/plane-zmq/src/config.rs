//! The configuration of the ZeroMQ planes: one struct, read from a
//! `zmq+tcp://` or `zmq+ipc://` URL (keys in `docs/zmq.md`) or built in
//! code, checked by one [`ZmqConfig::validate`] either way.

use std::time::Duration;

use plane_core::discovery::DiscoveryConfig;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use plane_peer as peer;
use url::Url;

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
        q.set("max_payload", &mut c.max_payload)?;
        q.set("hwm", &mut c.hwm)?;
        q.set("events_hwm", &mut c.events_hwm)?;
        c.set_timings(c.timings().read(&mut q)?);
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
        if self.max_payload == 0 || self.hwm <= 0 || self.events_hwm <= 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload, hwm and events_hwm must be positive",
            ));
        }
        self.timings().check()
    }

    /// The call timings, as the brokerless layer reads and checks them.
    fn timings(&self) -> peer::Timings {
        peer::Timings {
            heartbeat: self.heartbeat,
            idle_timeout: self.idle_timeout,
            connect_timeout: self.connect_timeout,
        }
    }

    fn set_timings(&mut self, t: peer::Timings) {
        self.heartbeat = t.heartbeat;
        self.idle_timeout = t.idle_timeout;
        self.connect_timeout = t.connect_timeout;
    }
}
