//! Connection options, read from a `nats://` URL.

use std::path::PathBuf;
use std::time::Duration;

use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use url::Url;

/// How to reach and authenticate to a NATS server, from the URL.
///
/// Every field is a URL query key of the same name (durations in
/// milliseconds with an `_ms` suffix); unknown keys are refused with
/// `InvalidConfig`. User and password may also be given as the URL's user
/// info (`nats://user:pass@host:4222`). A secret (`token`, `password`,
/// `nkey`) may instead be read from a file (`token_file=PATH`, …) or an
/// environment variable (`token_env=NAME`, …) when the URL is read, so it
/// need not be written in the URL.
///
/// `Debug` never prints the token, password or nkey seed: it shows whether
/// each is set.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server addresses, `host:port`. The URL's host first, then `servers`.
    pub servers: Vec<String>,
    /// Require TLS (schemes `tls` and `nats+tls`, or `tls_required=true`).
    pub tls_required: bool,
    /// PEM file of CA certificates to trust (`tls_ca`).
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (`tls_cert`, needs `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the client certificate (`tls_key`).
    pub tls_key: Option<PathBuf>,
    /// Authentication token (`token`).
    pub token: Option<String>,
    /// User name (URL user info or `user`).
    pub user: Option<String>,
    /// Password (URL user info or `password`).
    pub password: Option<String>,
    /// NKey seed (`nkey`).
    pub nkey: Option<String>,
    /// Credentials file with a user JWT and NKey seed (`creds`).
    pub creds: Option<PathBuf>,
    /// Client name shown by the server's monitoring (`name`).
    pub name: Option<String>,
    /// Bound on establishing the first connection (`connect_timeout_ms`). Default 5 s.
    pub connect_timeout: Duration,
    /// Interval of a streaming handler's heartbeats (`heartbeat_ms`). A caller
    /// that hears nothing for three intervals reports `Disconnected`. Default 1 s.
    pub heartbeat: Duration,
    /// First token of the subjects of plane's own traffic: calls, control,
    /// queues (`prefix`). Default `plane`.
    pub prefix: String,
    /// Put in front of everything plane names on the server, event subjects,
    /// streams, buckets and inboxes included (`namespace`, dot-separated
    /// tokens of `[A-Za-z0-9-]`, like `nylon.dev`), so environments sharing
    /// a server never see each other. Default none.
    pub namespace: Option<String>,
    /// Reconnect attempts after the connection is lost before the client
    /// gives up for good and its planes report `Down` (`reconnect_attempts`,
    /// a number or `forever`; 0 never reconnects). Default: forever.
    pub reconnect_attempts: Option<u32>,
    /// Longest wait between reconnect attempts (`reconnect_wait_ms`); the
    /// waits grow by 100 ms per attempt up to it. Default 1 s.
    pub reconnect_wait: Duration,
    /// Interval of the client's keep-alive pings (`ping_interval_ms`).
    /// Default 60 s.
    pub ping_interval: Duration,
    /// Pings left unanswered before the connection counts as lost and is
    /// replaced (`pings_outstanding`). Default 2. A silent server is thus
    /// noticed after `(pings_outstanding + 1) × ping_interval`.
    pub pings_outstanding: u32,
    /// Copies JetStream keeps of every stream, kv bucket, object bucket and
    /// queue plane creates (`replicas`, 1 to 5, or `auto`). `None` is
    /// `auto`: 3 on a JetStream cluster of three or more servers, else 1
    /// (see [`NatsConfig::replicas_on`]). A count above 1 needs a cluster:
    /// asked of a standalone server it is `InvalidConfig` when a session
    /// connects (`Registry::connect` and the per-plane shortcuts). Only
    /// applies when plane creates the stream; one that exists keeps its own.
    pub replicas: Option<usize>,
    /// Wait for a JetStream answer: a durable publish's acknowledgement and
    /// every stream, bucket and queue request (`jetstream_timeout_ms`).
    /// Default 5 s. A publish whose stream leader died unanswered waits this
    /// long before it is `Timeout`, so on a cluster it bounds how long a
    /// publisher stalls on a node failure beyond the election itself.
    pub jetstream_timeout: Duration,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A secret shows as set or not, never as its value: configs end up
        // in logs and panic messages.
        let secret = |s: &Option<String>| s.as_ref().map(|_| "<redacted>");
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("tls_required", &self.tls_required)
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("token", &secret(&self.token))
            .field("user", &self.user)
            .field("password", &secret(&self.password))
            .field("nkey", &secret(&self.nkey))
            .field("creds", &self.creds)
            .field("name", &self.name)
            .field("connect_timeout", &self.connect_timeout)
            .field("heartbeat", &self.heartbeat)
            .field("prefix", &self.prefix)
            .field("namespace", &self.namespace)
            .field("reconnect_attempts", &self.reconnect_attempts)
            .field("reconnect_wait", &self.reconnect_wait)
            .field("ping_interval", &self.ping_interval)
            .field("pings_outstanding", &self.pings_outstanding)
            .field("replicas", &self.replicas)
            .field("jetstream_timeout", &self.jetstream_timeout)
            .finish()
    }
}

/// Messages the async-nats client queues per subscription before it drops
/// (its default is 65,536, which at 64 KiB messages is 4 GiB per
/// subscription). Every plane reader drains its subscription without waiting
/// on the application (the events forwarder into the subscriber's buffer,
/// bounded in events and bytes; the reply router; the servers' dispatch), so
/// this queue only holds what arrives while a reader task waits for a
/// thread: 4096 messages, 256 MiB at 64 KiB and far less at the sizes events
/// and calls usually have.
pub(crate) const SUBSCRIPTION_CAPACITY: usize = 4096;

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            servers: vec!["127.0.0.1:4222".to_owned()],
            tls_required: false,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            token: None,
            user: None,
            password: None,
            nkey: None,
            creds: None,
            name: None,
            connect_timeout: Duration::from_secs(5),
            heartbeat: Duration::from_secs(1),
            prefix: "plane".to_owned(),
            namespace: None,
            reconnect_attempts: None,
            reconnect_wait: Duration::from_secs(1),
            ping_interval: Duration::from_secs(60),
            pings_outstanding: 2,
            replicas: None,
            jetstream_timeout: Duration::from_secs(5),
        }
    }
}

/// The secret `key` from one of its sources: inline (`key`, or `inline` for
/// the URL's user info), a file (`key_file`, trailing whitespace trimmed) or
/// an environment variable (`key_env`). More than one is `InvalidConfig`, as
/// is a file or variable that cannot be read; the error never shows the
/// secret.
fn secret(q: &mut QueryParams, key: &str, inline: Option<String>) -> Result<Option<String>> {
    let given = q.take_str(key).or(inline);
    let file = q.take_str(&format!("{key}_file"));
    let env = q.take_str(&format!("{key}_env"));
    let sources = [given.is_some(), file.is_some(), env.is_some()];
    if sources.iter().filter(|s| **s).count() > 1 {
        return Err(invalid(format!(
            "give {key} one way: inline, {key}_file or {key}_env"
        )));
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid(format!("cannot read {key}_file `{path}`: {e}")).with_source(e))?;
        let value = text.trim_end().to_owned();
        if value.is_empty() {
            return Err(invalid(format!("{key}_file `{path}` is empty")));
        }
        return Ok(Some(value));
    }
    if let Some(name) = env {
        return match std::env::var(&name) {
            Ok(v) if !v.is_empty() => Ok(Some(v)),
            Ok(_) => Err(invalid(format!("{key}_env: `{name}` is empty"))),
            Err(_) => Err(invalid(format!("{key}_env: `{name}` is not set"))),
        };
    }
    Ok(given)
}

/// The most replicas JetStream keeps of a stream.
const MAX_REPLICAS: usize = 5;

/// `replicas=auto` on the server `info` describes, with `given` servers in
/// the URL (see [`NatsConfig::replicas_on`]).
pub(crate) fn auto_replicas(info: &async_nats::ServerInfo, given: usize) -> usize {
    if info.cluster.is_none() {
        return 1;
    }
    if info.connect_urls.len().max(given) >= 3 {
        3
    } else {
        1
    }
}

/// What async-nats allows unanswered before it drops a connection; fixed in
/// the client, so plane paces the client's pings to honour
/// `pings_outstanding` (see [`NatsConfig::client_ping_interval`]).
const CLIENT_PINGS_OUTSTANDING: u32 = 2;

/// The wait before reconnect attempt `attempt`: 100 ms more per attempt,
/// at most `cap`.
fn reconnect_delay(attempt: usize, cap: Duration) -> Duration {
    let grown =
        Duration::from_millis(100).saturating_mul(u32::try_from(attempt).unwrap_or(u32::MAX));
    grown.min(cap)
}

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, msg.into())
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl NatsConfig {
    /// Read the configuration from a `nats://`, `tls://` or `nats+tls://` URL.
    pub fn from_url(url: &Url) -> Result<Self> {
        let d = NatsConfig::default();
        let tls_scheme = match url.scheme() {
            "nats" => false,
            "tls" | "nats+tls" => true,
            other => return Err(invalid(format!("not a nats url scheme: `{other}`"))),
        };
        if !url.path().is_empty() && url.path() != "/" {
            return Err(invalid(format!(
                "nats urls take no path, got `{}`",
                url.path()
            )));
        }
        let host = url.host_str().unwrap_or("127.0.0.1");
        let port = url.port().unwrap_or(4222);
        let mut servers = vec![format!("{host}:{port}")];
        let mut q = QueryParams::new(url)?;
        // What other NATS clients and configuration blocks call these keys.
        q.alias("credentials", "creds")
            .alias("credentials_file", "creds")
            .alias("creds_file", "creds")
            .alias("user_credentials", "creds")
            .alias("tls", "tls_required")
            .alias("ca", "tls_ca")
            .alias("root_ca", "tls_ca")
            .alias("cert", "tls_cert")
            .alias("key", "tls_key")
            .alias("nkey_seed", "nkey")
            .alias("seed_file", "nkey_file")
            .alias("username", "user")
            .alias("pass", "password")
            .alias("auth_token", "token")
            .alias("max_reconnects", "reconnect_attempts")
            .alias("max_reconnect_attempts", "reconnect_attempts")
            .alias("reconnect_delay_ms", "reconnect_wait_ms")
            .alias("reconnect_time_wait", "reconnect_wait_ms")
            .alias("max_pings_out", "pings_outstanding")
            .alias("max_pings_outstanding", "pings_outstanding")
            .alias("ping_interval", "ping_interval_ms")
            .alias("timeout", "connect_timeout_ms")
            .alias("subject_prefix", "namespace")
            .alias("client_name", "name")
            .alias("num_replicas", "replicas")
            .alias("replication_factor", "replicas");
        if let Some(more) = q.take_str("servers") {
            servers.extend(more.split(',').filter(|s| !s.is_empty()).map(str::to_owned));
        }
        let user_info = (!url.username().is_empty()).then(|| percent_decode(url.username()));
        let pass_info = url.password().map(percent_decode);
        let token = secret(&mut q, "token", None)?;
        let password = secret(&mut q, "password", pass_info)?;
        let nkey = secret(&mut q, "nkey", None)?;
        let config = NatsConfig {
            servers,
            tls_required: tls_scheme || q.take("tls_required")?.unwrap_or(false),
            tls_ca: q.take_str("tls_ca").map(PathBuf::from),
            tls_cert: q.take_str("tls_cert").map(PathBuf::from),
            tls_key: q.take_str("tls_key").map(PathBuf::from),
            token,
            user: q.take_str("user").or(user_info),
            password,
            nkey,
            creds: q.take_str("creds").map(PathBuf::from),
            name: q.take_str("name"),
            connect_timeout: q
                .take_millis("connect_timeout_ms")?
                .unwrap_or(d.connect_timeout),
            heartbeat: q.take_millis("heartbeat_ms")?.unwrap_or(d.heartbeat),
            prefix: q.take_str("prefix").unwrap_or(d.prefix),
            namespace: q.take_str("namespace").or(d.namespace),
            reconnect_attempts: match q.take_str("reconnect_attempts").as_deref() {
                None => d.reconnect_attempts,
                Some("forever") => None,
                Some(n) => Some(n.parse::<u32>().map_err(|_| {
                    invalid(format!(
                        "reconnect_attempts must be a number or `forever`, got `{n}`"
                    ))
                })?),
            },
            reconnect_wait: q
                .take_millis("reconnect_wait_ms")?
                .unwrap_or(d.reconnect_wait),
            ping_interval: q
                .take_millis("ping_interval_ms")?
                .unwrap_or(d.ping_interval),
            pings_outstanding: q.take("pings_outstanding")?.unwrap_or(d.pings_outstanding),
            replicas: match q.take_str("replicas").as_deref() {
                None | Some("auto") => None,
                Some(n) => Some(n.parse::<usize>().map_err(|_| {
                    invalid(format!("replicas must be 1 to 5 or `auto`, got `{n}`"))
                })?),
            },
            jetstream_timeout: q
                .take_millis("jetstream_timeout_ms")?
                .unwrap_or(d.jetstream_timeout),
        };
        q.finish()?;
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration however it was built: [`from_url`](Self::from_url)
    /// and [`connect`](Self::connect) call this, so a config built in code is
    /// held to the same rules as one read from a URL.
    ///
    /// # Errors
    /// `InvalidConfig` naming the settings that conflict or are out of range.
    pub fn validate(&self) -> Result<()> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls_cert and tls_key must be given together"));
        }
        if self.user.is_some() != self.password.is_some() {
            return Err(invalid("user and password must be given together"));
        }
        let methods = [
            self.token.is_some(),
            self.user.is_some(),
            self.nkey.is_some(),
            self.creds.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            return Err(invalid(
                "choose one of token, user/password, nkey and creds",
            ));
        }
        if self.heartbeat.is_zero()
            || self.connect_timeout.is_zero()
            || self.reconnect_wait.is_zero()
            || self.ping_interval.is_zero()
            || self.pings_outstanding == 0
            || self.jetstream_timeout.is_zero()
        {
            return Err(invalid(
                "heartbeat_ms, connect_timeout_ms, reconnect_wait_ms, ping_interval_ms, pings_outstanding and jetstream_timeout_ms must be positive",
            ));
        }
        if self.prefix.contains('.') {
            return Err(invalid(format!(
                "prefix `{}` must be one token; a multi-token namespace for everything plane names is the `namespace` key",
                self.prefix
            )));
        }
        plane_core::subject::validate_name("prefix", &self.prefix)
            .map_err(|e| invalid(e.message().to_owned()))?;
        if let Some(ns) = &self.namespace {
            crate::namespace::validate(ns)?;
        }
        if let Some(n) = self.replicas {
            if !(1..=MAX_REPLICAS).contains(&n) {
                return Err(invalid(format!(
                    "replicas must be 1 to {MAX_REPLICAS} (JetStream's limit) or `auto`, got {n}"
                )));
            }
        }
        Ok(())
    }

    /// The replica count for what plane creates on the server `info`
    /// describes (the one this client connected to).
    ///
    /// `auto` counts the servers the client knows of: those the server
    /// advertises (its cluster's client URLs) or, if more, those in the
    /// URL. Three or more give 3, so a stream survives the loss of any one
    /// node and keeps accepting writes while a majority is up. Fewer give 1:
    /// a two-replica stream needs both nodes for a quorum, so it would stop
    /// when either stopped, and a standalone server cannot replicate at all.
    ///
    /// # Errors
    /// `InvalidConfig` when a count above 1 is asked of a server that is
    /// not in a cluster, naming the server: JetStream would refuse every
    /// create later, each with a less helpful message.
    pub fn replicas_on(&self, info: &async_nats::ServerInfo) -> Result<usize> {
        let clustered = info.cluster.is_some();
        match self.replicas {
            Some(n) if n > 1 && !clustered => Err(invalid(format!(
                "replicas={n} needs a JetStream cluster, but server `{}` is standalone; use replicas=1 or auto",
                info.server_name
            ))),
            Some(n) => Ok(n),
            None => Ok(auto_replicas(info, self.servers.len())),
        }
    }

    /// The ping interval given to async-nats, which drops a connection once
    /// two pings are unanswered at its next ping (fixed in async-nats):
    /// chosen so that it does so after `(pings_outstanding + 1) ×
    /// ping_interval`, as `ping_interval` and `pings_outstanding` promise.
    /// (The client pings more or less often than `ping_interval`; when it
    /// notices a silent server does not change.)
    pub fn client_ping_interval(&self) -> Duration {
        (self.ping_interval * (self.pings_outstanding + 1)) / (CLIENT_PINGS_OUTSTANDING + 1)
    }

    /// Connect with these options.
    ///
    /// # Errors
    /// `Unauthorized` when the server refuses the credentials, `Connection`
    /// when no server could be reached within `connect_timeout`,
    /// `InvalidConfig` for a configuration [`validate`](Self::validate)
    /// refuses, or unreadable credential or certificate files.
    pub async fn connect(&self) -> Result<async_nats::Client> {
        self.connect_reporting(crate::GaveUp::default()).await
    }

    /// [`connect`](Self::connect), recording in `gave_up` when the client
    /// stops reconnecting.
    pub(crate) async fn connect_reporting(
        &self,
        gave_up: crate::GaveUp,
    ) -> Result<async_nats::Client> {
        self.validate()?;
        let cap = self.reconnect_wait;
        let mut opts = async_nats::ConnectOptions::new()
            .connection_timeout(self.connect_timeout)
            // Quickly at first: a restarted broker is back within a second,
            // and waiting calls have their own deadlines.
            .reconnect_delay_callback(move |attempt| reconnect_delay(attempt, cap))
            // The client counts its first connection as an attempt too.
            .max_reconnects(self.reconnect_attempts.map(|n| n as usize + 1))
            .ping_interval(self.client_ping_interval())
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .event_callback(move |event| {
                let gave_up = gave_up.clone();
                async move {
                    match event {
                        async_nats::Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                            tracing::warn!(
                                "nats: reconnect attempts exhausted; the connection is down"
                            );
                            gave_up.set();
                        }
                        // The client dropped messages of a subscription
                        // whose channel was full; say so rather than lose
                        // them unseen (events subscribers also see the gap
                        // in the publisher's sequence).
                        async_nats::Event::SlowConsumer(sid) => {
                            tracing::warn!(
                                sid,
                                "nats: a subscription fell {SUBSCRIPTION_CAPACITY} messages \
                                 behind; the client dropped messages"
                            );
                        }
                        _ => {}
                    }
                }
            })
            .require_tls(self.tls_required);
        if let Some(name) = &self.name {
            opts = opts.name(name);
        }
        if let Some(inbox) =
            crate::namespace::Namespace::new(self.namespace.as_deref())?.inbox_prefix()
        {
            opts = opts.custom_inbox_prefix(inbox);
        }
        if let Some(ca) = &self.tls_ca {
            opts = opts.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            opts = opts.add_client_certificate(cert.clone(), key.clone());
        }
        if let Some(token) = &self.token {
            opts = opts.token(token.clone());
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(seed) = &self.nkey {
            opts = opts.nkey(seed.clone());
        }
        if let Some(creds) = &self.creds {
            // Read here rather than by async-nats, so that a missing file and
            // a malformed one are told apart; neither message quotes the file.
            let text = std::fs::read_to_string(creds).map_err(|e| {
                invalid(format!("cannot read creds file `{}`: {e}", creds.display())).with_source(e)
            })?;
            opts = opts.credentials(&text).map_err(|e| {
                invalid(format!(
                    "creds file `{}` is not a credentials file: {e}",
                    creds.display()
                ))
                .with_source(e)
            })?;
        }
        let scheme = if self.tls_required { "tls" } else { "nats" };
        let addrs: Vec<async_nats::ServerAddr> = self
            .servers
            .iter()
            .map(|s| {
                format!("{scheme}://{s}")
                    .parse::<async_nats::ServerAddr>()
                    .map_err(|e| invalid(format!("invalid server address `{s}`")).with_source(e))
            })
            .collect::<Result<_>>()?;
        // The client's own timeout covers one attempt per server; this bounds
        // the whole connect, so an unreachable cluster fails fast.
        let budget = self.connect_timeout * (addrs.len() as u32 + 1);
        match tokio::time::timeout(budget, opts.connect(addrs)).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(crate::error::connect(e)),
            Err(_) => Err(Error::new(
                ErrorKind::Connection,
                format!("no nats server reachable within {budget:?}"),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_config_built_in_code_is_validated_on_connect() {
        let c = NatsConfig {
            heartbeat: Duration::ZERO,
            ..NatsConfig::default()
        };
        let e = c.connect().await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.message().contains("heartbeat_ms"), "{e}");
    }

    #[test]
    fn debug_never_prints_secrets() {
        // One of each secret at once (validation allows only one kind; Debug
        // must hide all of them however the config was built).
        let mut c = parse("nats://alice:s3cr3t-pw@h:4222").unwrap();
        c.token = Some("t0k3n-x".into());
        c.nkey = Some("SUAKSEED-y".into());
        let shown = format!("{c:?}");
        for secret in ["s3cr3t-pw", "t0k3n-x", "SUAKSEED-y"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
        assert!(shown.contains("alice"), "the user is not a secret: {shown}");
        assert_eq!(shown.matches("<redacted>").count(), 3, "{shown}");
    }

    fn parse(s: &str) -> Result<NatsConfig> {
        NatsConfig::from_url(&Url::parse(s).expect("url"))
    }

    #[test]
    fn reads_keys_and_user_info() {
        let c = parse("nats://al%20ice:s3cr%2Ft@h:5222?servers=b:1,c:2&heartbeat_ms=250&name=x")
            .expect("valid");
        assert_eq!(c.servers, vec!["h:5222", "b:1", "c:2"]);
        assert_eq!(c.user.as_deref(), Some("al ice"));
        assert_eq!(c.password.as_deref(), Some("s3cr/t"));
        assert_eq!(c.heartbeat, Duration::from_millis(250));
        assert!(!c.tls_required);
        assert!(parse("tls://h").expect("tls").tls_required);
        assert!(parse("nats+tls://h").expect("tls").tls_required);
    }

    #[test]
    fn refuses_unknown_and_conflicting_keys() {
        for bad in [
            "nats://h?tokn=x",
            "nats://h?token=a&nkey=b",
            "nats://h?tls_cert=/a",
            "nats://h/path",
            "nats://h?heartbeat_ms=0",
            "nats://h?prefix=a.b",
            "nats://h?reconnect_attempts=lots",
            "nats://h?ping_interval_ms=0",
            "nats://h?pings_outstanding=0",
            "nats://h?replicas=0",
            "nats://h?jetstream_timeout_ms=0",
            "nats://h?replicas=6",
            "nats://h?replicas=three",
        ] {
            assert_eq!(
                parse(bad).map(|_| ()).unwrap_err().kind(),
                ErrorKind::InvalidConfig,
                "{bad}"
            );
        }
    }

    #[test]
    fn replicas_follow_the_cluster_unless_given() {
        let standalone = async_nats::ServerInfo {
            server_name: "solo".into(),
            ..Default::default()
        };
        let cluster = |urls: usize| async_nats::ServerInfo {
            cluster: Some("c".into()),
            connect_urls: (0..urls).map(|i| format!("10.0.0.{i}:4222")).collect(),
            ..Default::default()
        };
        let auto = parse("nats://h?replicas=auto").expect("auto");
        assert_eq!(auto.replicas, None);
        assert_eq!(auto.replicas_on(&standalone).unwrap(), 1);
        assert_eq!(auto.replicas_on(&cluster(3)).unwrap(), 3);
        assert_eq!(auto.replicas_on(&cluster(5)).unwrap(), 3);
        // Two nodes: a two-replica stream would stop with either node.
        assert_eq!(auto.replicas_on(&cluster(2)).unwrap(), 1);
        // A server that advertises nobody, with the cluster named in the URL.
        let listed = parse("nats://a:4222?servers=b:4222,c:4222").expect("three");
        assert_eq!(listed.replicas_on(&cluster(0)).unwrap(), 3);
        assert_eq!(listed.replicas_on(&standalone).unwrap(), 1);

        let five = parse("nats://h?num_replicas=5").map(|_| ()).unwrap_err();
        assert!(five.message().contains("did you mean `replicas`"), "{five}");
        let given = parse("nats://h?replicas=5").expect("five");
        assert_eq!(given.replicas_on(&cluster(5)).unwrap(), 5);
        let e = parse("nats://h?replicas=3")
            .unwrap()
            .replicas_on(&standalone)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert!(e.message().contains("`solo` is standalone"), "{e}");
        assert_eq!(
            parse("nats://h?replicas=1")
                .unwrap()
                .replicas_on(&standalone)
                .unwrap(),
            1
        );
    }

    #[test]
    fn other_clients_names_for_keys_get_a_hint() {
        // As a plan written for another NATS client spells it.
        let e = parse("nats://h:4222?tls=true&credentials=/etc/app.creds&max_reconnects=5")
            .map(|_| ())
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        for hint in [
            "`tls` (did you mean `tls_required`?)",
            "`credentials` (did you mean `creds`?)",
            "`max_reconnects` (did you mean `reconnect_attempts`?)",
        ] {
            assert!(e.message().contains(hint), "{hint} in: {e}");
        }
        let e = parse("nats://h/path").map(|_| ()).unwrap_err();
        assert!(e.message().contains("no path"), "{e}");
    }

    #[test]
    fn reads_connection_options() {
        let c = parse("nats://h?reconnect_attempts=3&reconnect_wait_ms=250&ping_interval_ms=2000&pings_outstanding=5")
            .expect("valid");
        assert_eq!(c.reconnect_attempts, Some(3));
        assert_eq!(c.reconnect_wait, Duration::from_millis(250));
        assert_eq!(c.ping_interval, Duration::from_secs(2));
        assert_eq!(c.pings_outstanding, 5);
        // Six intervals of 2 s until a silent server is noticed; the client
        // drops a connection at its third unanswered ping.
        assert_eq!(c.client_ping_interval() * 3, Duration::from_secs(12));
        assert_eq!(
            parse("nats://h?reconnect_attempts=forever")
                .unwrap()
                .reconnect_attempts,
            None
        );
        assert_eq!(parse("nats://h").unwrap().reconnect_attempts, None);
        assert_eq!(
            reconnect_delay(1, c.reconnect_wait),
            Duration::from_millis(100)
        );
        assert_eq!(
            reconnect_delay(9, c.reconnect_wait),
            Duration::from_millis(250)
        );
    }

    #[test]
    fn secrets_come_from_files_and_environment_variables() {
        let dir = std::env::temp_dir().join(format!("plane-nats-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "t0k3n-from-file\n").unwrap();
        let c = parse(&format!("nats://h?token_file={}", file.display())).expect("token_file");
        assert_eq!(c.token.as_deref(), Some("t0k3n-from-file"));
        // PATH is set wherever tests run; it stands in for a secret here.
        let path = std::env::var("PATH").expect("PATH");
        let c = parse("nats://h?user=u&password_env=PATH").expect("password_env");
        assert_eq!(c.password.as_deref(), Some(path.as_str()));
        for bad in [
            format!("nats://h?token=a&token_file={}", file.display()),
            "nats://u:p@h?password_env=PATH".to_owned(),
            "nats://h?nkey_file=/nonexistent/seed".to_owned(),
            "nats://h?nkey_env=PLANE_SURELY_UNSET_VARIABLE_4711".to_owned(),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad}");
            assert!(!e.to_string().contains("t0k3n"), "{e}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
