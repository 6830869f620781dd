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
    /// socket holds) before ZeroMQ drops. Default 10,000.
    ///
    /// libzmq counts messages only (there is no byte high-water mark), so
    /// this bounds memory only together with the event size: per
    /// subscription the worst case is about twice `events_hwm` events (the
    /// publisher's queue and the subscriber's), 1.2 GiB at 64 KiB events,
    /// on top of the subscription's own buffer, which is bounded in bytes
    /// ([`SubscribeOptions::max_bytes`]). It stays high because what a full
    /// high-water mark drops is lost silently: at 1000 the conformance
    /// case of four publishers bursting 250 events each into one
    /// subscriber lost events. Deployments with large events lower it
    /// (`events_hwm` in the URL).
    ///
    /// [`SubscribeOptions::max_bytes`]: plane_core::events::SubscribeOptions::max_bytes
    pub events_hwm: i32,
    /// Interval of the server's per-call heartbeats.
    pub heartbeat: Duration,
    /// Silence after which a call is `Disconnected`.
    pub idle_timeout: Duration,
    /// Longest wait for a connection to a peer.
    pub connect_timeout: Duration,
    /// CURVE encryption and authentication of every connection (request
    /// plane and events); `None` sends everything in the clear. See the
    /// Security section of `docs/zmq.md`.
    pub curve: Option<CurveConfig>,
}

/// CURVE keys, Z85-encoded (40 characters each). One **server keypair per
/// deployment**: every plane-zmq handle both serves (ROUTER, XPUB) and calls
/// (DEALER, SUB), so every process holds the server secret, and callers
/// check that the peer they reach holds it too. Each process may also have
/// its own client keypair, which serving peers check against
/// [`allowed_clients`](Self::allowed_clients) if that is set.
///
/// `Debug` never shows a secret key.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct CurveConfig {
    /// Secret key of the deployment's server keypair (its public key is
    /// derived from it).
    pub server_secret: String,
    /// This process's own client secret key; `None` uses a fresh keypair for
    /// each connecting socket (enough when any client holding the server
    /// key may connect).
    pub client_secret: Option<String>,
    /// Client public keys allowed to connect; `None` allows any client that
    /// completes the handshake, that is any holder of the server public key.
    pub allowed_clients: Option<Vec<String>>,
}

impl std::fmt::Debug for CurveConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CurveConfig")
            .field("server_secret", &"***")
            .field("client_secret", &self.client_secret.as_ref().map(|_| "***"))
            .field("allowed_clients", &self.allowed_clients)
            .finish()
    }
}

impl CurveConfig {
    /// CURVE with the deployment's server secret key `server_secret`, a
    /// fresh client keypair per socket and no allow-list.
    pub fn new(server_secret: impl Into<String>) -> Self {
        CurveConfig {
            server_secret: server_secret.into(),
            client_secret: None,
            allowed_clients: None,
        }
    }

    /// Use `secret` as this process's client secret key.
    #[must_use]
    pub fn with_client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// Allow only these client public keys to connect.
    #[must_use]
    pub fn with_allowed_clients(mut self, keys: impl IntoIterator<Item = String>) -> Self {
        self.allowed_clients = Some(keys.into_iter().collect());
        self
    }

    /// The public key of the deployment's server keypair.
    ///
    /// # Errors
    /// `InvalidConfig` if the server secret is not a Z85 key.
    pub fn server_public(&self) -> Result<String> {
        public_of("curve server secret", &self.server_secret)
    }

    /// This process's client public key, if it has a fixed client keypair.
    ///
    /// # Errors
    /// `InvalidConfig` if the client secret is not a Z85 key.
    pub fn client_public(&self) -> Result<Option<String>> {
        self.client_secret
            .as_deref()
            .map(|s| public_of("curve client secret", s))
            .transpose()
    }

    fn validate(&self) -> Result<()> {
        if !plane_zmq_sys::has("curve") {
            return Err(invalid("this libzmq was built without CURVE"));
        }
        self.server_public()?;
        let own = self.client_public()?;
        if let Some(allowed) = &self.allowed_clients {
            for key in allowed {
                if !is_z85_key(key) {
                    return Err(invalid(format!(
                        "`{key}` in the CURVE allow-list is not a 40-character Z85 key"
                    )));
                }
            }
            // Every handle calls its peers as well as serving them: without
            // a listed key of its own it could reach none of them.
            match own {
                Some(own) if allowed.contains(&own) => {}
                Some(_) => {
                    return Err(invalid(
                        "this process's CURVE client key is not in the allow-list",
                    ))
                }
                None => {
                    return Err(invalid(
                        "a CURVE allow-list needs this process's own client secret \
                         (curve_secret_file or curve_secret_env)",
                    ))
                }
            }
        }
        Ok(())
    }

    /// Read the `curve_*` keys of a URL; `None` if there are none.
    fn from_query(q: &mut QueryParams) -> Result<Option<Self>> {
        let server_secret = secret(q, "curve_server_secret")?;
        let client_secret = secret(q, "curve_secret")?;
        let allowed = q.take_str("curve_allowed_clients_file");
        let Some(server_secret) = server_secret else {
            if client_secret.is_some() || allowed.is_some() {
                return Err(invalid(
                    "CURVE needs the deployment's server secret \
                     (curve_server_secret_file or curve_server_secret_env)",
                ));
            }
            return Ok(None);
        };
        let mut c = CurveConfig::new(server_secret);
        c.client_secret = client_secret;
        if let Some(path) = allowed {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(format!(
                    "cannot read curve_allowed_clients_file `{path}`: {e}"
                ))
                .with_source(e)
            })?;
            c.allowed_clients = Some(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned)
                    .collect(),
            );
        }
        Ok(Some(c))
    }
}

/// A fresh CURVE keypair, `(public, secret)`, Z85-encoded: for a
/// deployment's server keypair or a process's client keypair (write the
/// secret to the file named by `curve_server_secret_file` or
/// `curve_secret_file`, and the public key where peers read it).
///
/// # Errors
/// `Other` if libzmq cannot make one (it was built without CURVE).
pub fn curve_keypair() -> Result<(String, String)> {
    plane_zmq_sys::curve_keypair().map_err(|e| {
        Error::new(
            ErrorKind::Other,
            format!("cannot make a CURVE keypair: {e}"),
        )
    })
}

fn invalid(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, message.into())
}

/// 40 characters of ZeroMQ's Z85 alphabet: the text form of a CURVE key.
fn is_z85_key(key: &str) -> bool {
    const EXTRA: &[u8] = b".-:+=^!/*?&<>()[]{}@%$#";
    key.len() == 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || EXTRA.contains(&b))
}

/// The public key of the Z85 secret key `secret`; the error names `what`
/// and never shows the key.
fn public_of(what: &str, secret: &str) -> Result<String> {
    if !is_z85_key(secret) {
        return Err(invalid(format!("the {what} is not a 40-character Z85 key")));
    }
    plane_zmq_sys::curve_public(secret)
        .map_err(|e| invalid(format!("the {what} is not a valid CURVE key: {e}")))
}

/// A secret key from a file (`KEY_file`, surrounding whitespace trimmed) or
/// an environment variable (`KEY_env`). Never inline in the URL: URLs end
/// up in logs and errors, and plane's redaction does not know these keys.
fn secret(q: &mut QueryParams, key: &str) -> Result<Option<String>> {
    if q.take_str(key).is_some() {
        return Err(invalid(format!(
            "give {key} as {key}_file or {key}_env, not inline in the url"
        )));
    }
    let file = q.take_str(&format!("{key}_file"));
    let env = q.take_str(&format!("{key}_env"));
    match (file, env) {
        (Some(_), Some(_)) => Err(invalid(format!(
            "give {key} one way: {key}_file or {key}_env"
        ))),
        (Some(path), None) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                invalid(format!("cannot read {key}_file `{path}`: {e}")).with_source(e)
            })?;
            let value = text.trim().to_owned();
            if value.is_empty() {
                return Err(invalid(format!("{key}_file `{path}` is empty")));
            }
            Ok(Some(value))
        }
        (None, Some(name)) => match std::env::var(&name) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            Ok(_) => Err(invalid(format!("{key}_env: `{name}` is empty"))),
            Err(_) => Err(invalid(format!("{key}_env: `{name}` is not set"))),
        },
        (None, None) => Ok(None),
    }
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
            curve: None,
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
        c.curve = CurveConfig::from_query(&mut q)?;
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
        if let Some(curve) = &self.curve {
            curve.validate()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<ZmqConfig> {
        ZmqConfig::from_url(&Url::parse(url).unwrap())
    }

    fn file(name: &str, text: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!(
            "plane-zmq-{name}-{}-{:x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::write(&path, text).unwrap();
        path
    }

    const BASE: &str = "zmq+tcp://127.0.0.1:0?discovery=mem%3A%2F%2Fdev";

    #[test]
    fn curve_keys_come_from_files_and_environment_variables() {
        let (server_public, server_secret) = curve_keypair().unwrap();
        let (client_public, client_secret) = curve_keypair().unwrap();
        assert!(parse(BASE).unwrap().curve.is_none(), "no keys, no CURVE");

        let server = file("server", &format!("{server_secret}\n"));
        let c = parse(&format!(
            "{BASE}&curve_server_secret_file={}",
            server.display()
        ))
        .unwrap();
        let curve = c.curve.expect("CURVE on");
        assert_eq!(curve.server_secret, server_secret);
        assert_eq!(curve.server_public().unwrap(), server_public);
        assert_eq!(curve.client_secret, None);

        let var = format!("PLANE_ZMQ_TEST_CLIENT_SECRET_{:x}", rand::random::<u64>());
        std::env::set_var(&var, &client_secret);
        let allowed = file("allowed", &format!("# clients\n{client_public}\n\n"));
        let c = parse(&format!(
            "{BASE}&curve_server_secret_file={}&curve_secret_env={var}&curve_allowed_clients_file={}",
            server.display(),
            allowed.display()
        ))
        .unwrap();
        let curve = c.curve.clone().unwrap();
        assert_eq!(curve.client_secret.as_deref(), Some(client_secret.as_str()));
        assert_eq!(curve.allowed_clients, Some(vec![client_public.clone()]));

        // Debug shows neither secret.
        let shown = format!("{curve:?} {c:?}");
        assert!(!shown.contains(&server_secret), "{shown}");
        assert!(!shown.contains(&client_secret), "{shown}");
        assert!(shown.contains(&client_public), "public keys may show");

        let refused = [
            // Secrets never inline in a URL.
            format!("{BASE}&curve_server_secret={server_secret}"),
            // A client key or allow-list without the server key.
            format!("{BASE}&curve_secret_env={var}"),
            // Two sources.
            format!(
                "{BASE}&curve_server_secret_file={}&curve_server_secret_env={var}",
                server.display()
            ),
            format!("{BASE}&curve_server_secret_file=/nonexistent/plane-key"),
            format!("{BASE}&curve_server_secret_env=PLANE_SURELY_UNSET_VARIABLE_4711"),
            // Not a key.
            format!(
                "{BASE}&curve_server_secret_file={}",
                file("short", "tooshort").display()
            ),
            // An allow-list without this process's own key on it.
            format!(
                "{BASE}&curve_server_secret_file={}&curve_allowed_clients_file={}",
                server.display(),
                allowed.display()
            ),
        ];
        for url in refused {
            let e = parse(&url).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url}: {e}");
            assert!(!e.to_string().contains(&server_secret), "{e}");
            assert!(!e.to_string().contains(&client_secret), "{e}");
        }
        std::env::remove_var(&var);
        let _ = std::fs::remove_file(server);
        let _ = std::fs::remove_file(allowed);
    }

    #[test]
    fn a_curve_config_built_in_code_is_validated() {
        let mut c = ZmqConfig::new("tcp://127.0.0.1:0", "mem://dev");
        c.curve = Some(CurveConfig::new("not a key"));
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::InvalidConfig);
        let (_, secret) = curve_keypair().unwrap();
        c.curve = Some(CurveConfig::new(secret.clone()).with_allowed_clients(["x".to_owned()]));
        assert_eq!(c.validate().unwrap_err().kind(), ErrorKind::InvalidConfig);
        c.curve = Some(CurveConfig::new(secret));
        c.validate().unwrap();
    }
}
