//! plane's configuration: the URL of each plane and the client and server
//! policies, from a TOML file and `PLANE_…` environment variables, layered
//! defaults < file < environment < code.
//!
#![doc = include_str!("../../../docs/config.md")]
//!
//! # Example
//!
//! ```
//! # fn main() -> plane::Result<()> {
//! let config = plane::config::Config::from_toml(
//!     r#"
//!     url = "mem://gateway"
//!     [client]
//!     timeout_ms = 2000
//!     max_attempts = 3
//!     max_in_flight = 512
//!     overflow = "queue"
//!     max_waiting = 1024
//!     [client.endpoints."payments.charge"]
//!     on_error = "end"
//!     "#,
//!     "inline",
//! )?;
//! assert_eq!(config.url_for(plane::session::Plane::Kv), "mem://gateway");
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use crate::policy::{CallPolicy, InFlightLimit, OnError, Overflow};
use crate::request::ServeOptions;
use crate::session::Plane;
use crate::suggest::closest;
use crate::{Error, ErrorKind, Requests, Result};

/// The URL every plane falls back to when nothing names one.
pub const DEFAULT_URL: &str = "mem://plane";
/// The environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "PLANE_CONFIG";

/// The retry and on-error keys of `[client]` and of each endpoint's table.
const POLICY_KEYS: &[&str] = &[
    "on_error",
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "multiplier",
    "max_elapsed_ms",
];
/// The keys of `[client]` beside the policy keys.
const CLIENT_KEYS: &[&str] = &[
    "timeout_ms",
    "max_in_flight",
    "overflow",
    "max_waiting",
    "endpoints",
];
/// The keys of `[server]`.
const SERVER_KEYS: &[&str] = &[
    "max_in_flight",
    "idempotency_window_ms",
    "idempotency_max_entries",
];
/// The top-level keys.
const TOP_KEYS: &[&str] = &[
    "url", "requests", "events", "kv", "objects", "queue", "client", "server",
];
/// Names other tools give these keys, and plane's name for each.
const ALIASES: &[(&str, &str)] = &[
    ("servers", "url"),
    ("server_url", "url"),
    ("nats_url", "url"),
    ("request", "requests"),
    ("event", "events"),
    ("queues", "queue"),
    ("timeout", "timeout_ms"),
    ("request_timeout", "timeout_ms"),
    ("request_timeout_ms", "timeout_ms"),
    ("max_inflight", "max_in_flight"),
    ("inflight", "max_in_flight"),
    ("overflow_policy", "overflow"),
    ("retries", "max_attempts"),
    ("retry_max", "max_attempts"),
    ("max_retries", "max_attempts"),
    ("backoff_min_ms", "initial_backoff_ms"),
    ("backoff_max_ms", "max_backoff_ms"),
    ("onerror", "on_error"),
];

/// Where a value came from, for errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    File,
    Env,
}

/// The URLs of the planes; `url` is for every plane not named on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Urls {
    /// Every plane's URL unless its own is set.
    pub url: Option<String>,
    /// The request plane's.
    pub requests: Option<String>,
    /// The events plane's.
    pub events: Option<String>,
    /// The kv plane's (discovery runs on it).
    pub kv: Option<String>,
    /// The objects plane's.
    pub objects: Option<String>,
    /// The queue plane's.
    pub queue: Option<String>,
}

impl Urls {
    fn slot(&mut self, key: &str) -> Option<&mut Option<String>> {
        Some(match key {
            "url" => &mut self.url,
            "requests" => &mut self.requests,
            "events" => &mut self.events,
            "kv" => &mut self.kv,
            "objects" => &mut self.objects,
            "queue" => &mut self.queue,
            _ => return None,
        })
    }

    /// `plane`'s own URL, if set (not `url`).
    pub fn of(&self, plane: Plane) -> Option<&str> {
        match plane {
            Plane::Request => self.requests.as_deref(),
            Plane::Events => self.events.as_deref(),
            Plane::Kv => self.kv.as_deref(),
            Plane::Objects => self.objects.as_deref(),
            Plane::Queue => self.queue.as_deref(),
        }
    }
}

/// How calls are made, by default and per endpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Each call's deadline (each attempt's, with retries); the handle's
    /// default (30 s) when `None`.
    pub timeout: Option<Duration>,
    /// Retries and what to do on error.
    pub policy: CallPolicy,
    /// Per-endpoint policies, each starting from `policy`.
    pub endpoints: BTreeMap<String, CallPolicy>,
    /// Calls in flight at once; no bound when `None`.
    pub max_in_flight: Option<usize>,
    /// What happens to a call beyond `max_in_flight` (the count inside is
    /// not used: `max_waiting` is).
    pub overflow: Overflow,
    /// Calls that may wait for a slot under `Queue` and `Shed`.
    pub max_waiting: usize,
}

impl ClientConfig {
    /// The in-flight limit these settings describe, if any.
    pub fn in_flight_limit(&self) -> Option<InFlightLimit> {
        let max_waiting = self.max_waiting;
        self.max_in_flight.map(|max_in_flight| InFlightLimit {
            max_in_flight,
            overflow: match self.overflow {
                Overflow::Reject => Overflow::Reject,
                Overflow::Queue { .. } => Overflow::Queue { max_waiting },
                Overflow::Shed { .. } => Overflow::Shed { max_waiting },
            },
        })
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: None,
            policy: CallPolicy::default(),
            endpoints: BTreeMap::new(),
            max_in_flight: None,
            overflow: Overflow::Reject,
            max_waiting: 0,
        }
    }
}

/// How endpoints are served.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Options of every [`Requests::serve`].
    pub options: ServeOptions,
}

/// The whole configuration. Build it with [`Config::load`] (file and
/// environment), [`Config::from_toml`] or field by field; code that sets
/// something afterwards overrides both.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct Config {
    /// The planes' URLs.
    pub urls: Urls,
    /// Client policies.
    pub client: ClientConfig,
    /// Server options.
    pub server: ServerConfig,
}

impl Config {
    /// The file named by `PLANE_CONFIG` (if set), then the environment's
    /// `PLANE_…` variables over it.
    ///
    /// # Errors
    /// `InvalidConfig` for a file that cannot be read or parsed, and for an
    /// unknown or invalid key in the file or the environment, naming it.
    pub fn load() -> Result<Self> {
        let path = std::env::var_os(CONFIG_ENV);
        Config::load_from(path.as_deref().map(Path::new), std::env::vars())
    }

    /// `file` (if given), then the variables `env` over it: what
    /// [`load`](Config::load) does with the process's own, for tests and
    /// for programs that take the file from a flag.
    ///
    /// # Errors
    /// As [`load`](Config::load).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self> {
        let mut config = match file {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        config.apply_env(env)?;
        Ok(config)
    }

    /// Read a TOML file.
    ///
    /// # Errors
    /// `InvalidConfig` for a file that cannot be read or parsed, or an
    /// unknown or invalid key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot read the config file {}: {e}", path.display()),
            )
        })?;
        Config::from_toml(&text, &path.display().to_string())
    }

    /// Parse TOML text; `origin` names it in errors (a path, `inline`).
    ///
    /// # Errors
    /// `InvalidConfig` for text that is no TOML, or an unknown or invalid
    /// key.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self> {
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{origin}: not valid TOML: {}", e.message()),
            )
        })?;
        let mut config = Config::default();
        let mut at = Reader {
            origin,
            layer: Layer::File,
        };
        for (key, value) in &table {
            match key.as_str() {
                "client" => at.client(value, &mut config.client)?,
                "server" => at.server(value, &mut config.server)?,
                k => match config.urls.slot(k) {
                    Some(slot) => *slot = Some(at.string(k, value)?),
                    None => return Err(at.unknown(k, TOP_KEYS)),
                },
            }
        }
        config.check(origin)?;
        Ok(config)
    }

    /// Apply the `PLANE_…` variables among `env` (see `docs/config.md`).
    /// Variables under `PLANE_CLIENT_` and `PLANE_SERVER_` must be known
    /// keys; other `PLANE_` variables are left alone (a program may keep its
    /// own there) unless they nearly spell a key plane knows.
    ///
    /// # Errors
    /// `InvalidConfig` naming the variable that is unknown or invalid.
    pub fn apply_env(&mut self, env: impl IntoIterator<Item = (String, String)>) -> Result<()> {
        let at = Reader {
            origin: "environment",
            layer: Layer::Env,
        };
        let known = env_names();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("PLANE_") else {
                continue;
            };
            if name == CONFIG_ENV {
                continue;
            }
            let key = rest.to_ascii_lowercase();
            if let Some(url_key) = key.strip_suffix("_url").or((key == "url").then_some("url")) {
                match self.urls.slot(url_key) {
                    Some(slot) => {
                        *slot = Some(value);
                        continue;
                    }
                    None => return Err(at.unknown_env(&name, &known)),
                }
            }
            if let Some(k) = key.strip_prefix("client_") {
                at.client_key(k, &toml::Value::String(value), &mut self.client)?;
                continue;
            }
            if let Some(k) = key.strip_prefix("server_") {
                at.server_key(k, &toml::Value::String(value), &mut self.server)?;
                continue;
            }
            if let Some(near) = closest(&name, known.iter().map(String::as_str)) {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("environment: unknown variable `{name}`; did you mean `{near}`?"),
                ));
            }
        }
        self.check("environment")
    }

    /// The URL of `plane`: its own, else `url`, else [`DEFAULT_URL`].
    pub fn url_for(&self, plane: Plane) -> &str {
        self.urls
            .of(plane)
            .or(self.urls.url.as_deref())
            .unwrap_or(DEFAULT_URL)
    }

    /// `requests` with this configuration's client policies: its timeout,
    /// default and per-endpoint policies and in-flight limit. Set more on
    /// the handle it returns to override them in code.
    ///
    /// # Errors
    /// `InvalidConfig` for an in-flight limit of 0.
    pub fn apply(&self, requests: Requests) -> Result<Requests> {
        let c = &self.client;
        let mut r = requests.with_policy(c.policy.clone());
        if c.timeout.is_some() {
            r = r.with_timeout(c.timeout);
        }
        for (endpoint, policy) in &c.endpoints {
            r = r.with_endpoint_policy(endpoint.clone(), policy.clone());
        }
        if let Some(limit) = c.in_flight_limit() {
            r = r.with_in_flight_limit(limit)?;
        }
        Ok(r)
    }

    /// The options to serve endpoints with.
    pub fn serve_options(&self) -> ServeOptions {
        self.server.options.clone()
    }

    fn check(&self, origin: &str) -> Result<()> {
        let c = &self.client;
        if c.max_in_flight == Some(0) {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{origin}: client.max_in_flight must be at least 1"),
            ));
        }
        let waits = !matches!(c.overflow, Overflow::Reject) || c.max_waiting > 0;
        if waits && c.max_in_flight.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{origin}: client.overflow and client.max_waiting need client.max_in_flight"
                ),
            ));
        }
        if self.server.options.max_in_flight == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("{origin}: server.max_in_flight must be at least 1"),
            ));
        }
        Ok(())
    }
}

/// Every environment variable plane reads, for "did you mean".
fn env_names() -> Vec<String> {
    let mut v: Vec<String> = TOP_KEYS[..6]
        .iter()
        .map(|k| {
            if *k == "url" {
                "PLANE_URL".to_owned()
            } else {
                format!("PLANE_{}_URL", k.to_ascii_uppercase())
            }
        })
        .collect();
    for k in POLICY_KEYS.iter().chain(CLIENT_KEYS) {
        if *k != "endpoints" {
            v.push(format!("PLANE_CLIENT_{}", k.to_ascii_uppercase()));
        }
    }
    for k in SERVER_KEYS {
        v.push(format!("PLANE_SERVER_{}", k.to_ascii_uppercase()));
    }
    v.push(CONFIG_ENV.to_owned());
    v
}

/// Reads values of one layer, naming `origin` in its errors.
struct Reader<'a> {
    origin: &'a str,
    layer: Layer,
}

impl Reader<'_> {
    /// What `path` (`client.timeout_ms`) is called in this layer: the key
    /// in a file, the variable (`PLANE_CLIENT_TIMEOUT_MS`) in the
    /// environment.
    fn name(&self, path: &str) -> String {
        match self.layer {
            Layer::File => path.to_owned(),
            Layer::Env => format!("PLANE_{}", path.replace('.', "_").to_ascii_uppercase()),
        }
    }

    fn invalid(&self, key: &str, what: &str) -> Error {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{}: `{}` {what}", self.origin, self.name(key)),
        )
    }

    /// `path` is no key; `known` are the keys where it stands.
    fn unknown(&self, path: &str, known: &[&str]) -> Error {
        let (parent, key) = match path.rsplit_once('.') {
            Some((parent, key)) => (Some(parent), key),
            None => (None, path),
        };
        let hint = ALIASES
            .iter()
            .find(|(alias, _)| *alias == key)
            .map(|(_, ours)| *ours)
            .filter(|ours| known.contains(ours))
            .or_else(|| closest(key, known.iter().copied()))
            // In a file the key as written in its table; in the
            // environment the whole variable.
            .map(|h| match self.layer {
                Layer::File => h.to_owned(),
                Layer::Env => self.name(&parent.map_or(h.to_owned(), |p| format!("{p}.{h}"))),
            });
        let what = match self.layer {
            Layer::File => "key",
            Layer::Env => "variable",
        };
        let mut msg = format!("{}: unknown {what} `{}`", self.origin, self.name(path));
        match (hint, self.layer) {
            (Some(h), _) => msg.push_str(&format!("; did you mean `{h}`?")),
            (None, Layer::File) => msg.push_str(&format!("; known keys: {}", known.join(", "))),
            (None, Layer::Env) => {
                msg.push_str(&format!("; plane reads {}", env_names().join(", ")))
            }
        }
        Error::new(ErrorKind::InvalidConfig, msg)
    }

    fn unknown_env(&self, name: &str, known: &[String]) -> Error {
        let mut msg = format!("environment: unknown variable `{name}`");
        match closest(name, known.iter().map(String::as_str)) {
            Some(near) => msg.push_str(&format!("; did you mean `{near}`?")),
            None => msg.push_str(&format!("; plane reads {}", known.join(", "))),
        }
        Error::new(ErrorKind::InvalidConfig, msg)
    }

    fn string(&self, key: &str, v: &toml::Value) -> Result<String> {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.invalid(key, "must be a string"))
    }

    /// A whole number; from the environment, its text.
    fn number(&self, key: &str, v: &toml::Value) -> Result<u64> {
        let n = match (v, self.layer) {
            (toml::Value::Integer(i), _) => u64::try_from(*i).ok(),
            (toml::Value::String(s), Layer::Env) => s.trim().parse().ok(),
            _ => None,
        };
        n.ok_or_else(|| self.invalid(key, "must be a whole number ≥ 0"))
    }

    fn float(&self, key: &str, v: &toml::Value) -> Result<f64> {
        let n = match (v, self.layer) {
            (toml::Value::Float(f), _) => Some(*f),
            (toml::Value::Integer(i), _) => Some(*i as f64),
            (toml::Value::String(s), Layer::Env) => s.trim().parse().ok(),
            _ => None,
        };
        n.filter(|f| f.is_finite())
            .ok_or_else(|| self.invalid(key, "must be a number"))
    }

    fn millis(&self, key: &str, v: &toml::Value) -> Result<Duration> {
        self.number(key, v).map(Duration::from_millis)
    }

    fn usize(&self, key: &str, v: &toml::Value) -> Result<usize> {
        usize::try_from(self.number(key, v)?).map_err(|_| self.invalid(key, "is too large"))
    }

    fn table<'v>(&self, key: &str, v: &'v toml::Value) -> Result<&'v toml::Table> {
        v.as_table()
            .ok_or_else(|| self.invalid(key, "must be a table"))
    }

    /// One retry or on-error key into `policy`; `false` if `key` is none.
    fn policy_key(
        &self,
        path: &str,
        key: &str,
        v: &toml::Value,
        policy: &mut CallPolicy,
    ) -> Result<bool> {
        let r = &mut policy.retry;
        match key {
            "on_error" => {
                policy.on_error = match self.string(path, v)?.as_str() {
                    "retry" => OnError::Retry,
                    "end" => OnError::End,
                    "continue" | "best_effort" => OnError::Continue,
                    other => {
                        return Err(self.invalid(
                            path,
                            &format!("is `retry`, `end` or `continue`, not `{other}`"),
                        ))
                    }
                }
            }
            "max_attempts" => {
                let n = self.number(path, v)?;
                r.max_attempts =
                    u32::try_from(n.max(1)).map_err(|_| self.invalid(path, "is too large"))?;
            }
            "initial_backoff_ms" => r.initial_backoff = self.millis(path, v)?,
            "max_backoff_ms" => r.max_backoff = self.millis(path, v)?,
            "multiplier" => {
                let m = self.float(path, v)?;
                if m < 1.0 {
                    return Err(self.invalid(path, "must be at least 1"));
                }
                r.multiplier = m;
            }
            "max_elapsed_ms" => r.max_elapsed = Some(self.millis(path, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn client(&mut self, v: &toml::Value, c: &mut ClientConfig) -> Result<()> {
        let table = self.table("client", v)?;
        // The default policy first, so every endpoint's starts from it
        // whatever order the file gives them in.
        for (key, value) in table.iter().filter(|(k, _)| *k != "endpoints") {
            self.client_key(key, value, c)?;
        }
        if let Some(endpoints) = table.get("endpoints") {
            for (endpoint, value) in self.table("client.endpoints", endpoints)? {
                let path = format!("client.endpoints.\"{endpoint}\"");
                let mut policy = c.policy.clone();
                for (key, value) in self.table(&path, value)? {
                    let p = format!("{path}.{key}");
                    if !self.policy_key(&p, key, value, &mut policy)? {
                        return Err(self.unknown(&p, POLICY_KEYS));
                    }
                }
                c.endpoints.insert(endpoint.clone(), policy);
            }
        }
        Ok(())
    }

    fn client_key(&self, key: &str, v: &toml::Value, c: &mut ClientConfig) -> Result<()> {
        let path = format!("client.{key}");
        if self.policy_key(&path, key, v, &mut c.policy)? {
            return Ok(());
        }
        match key {
            "timeout_ms" => c.timeout = Some(self.millis(&path, v)?),
            "max_in_flight" => c.max_in_flight = Some(self.usize(&path, v)?),
            "max_waiting" => c.max_waiting = self.usize(&path, v)?,
            "overflow" => {
                c.overflow = match self.string(&path, v)?.as_str() {
                    "reject" => Overflow::Reject,
                    "queue" => Overflow::Queue { max_waiting: 0 },
                    "shed" => Overflow::Shed { max_waiting: 0 },
                    other => {
                        return Err(self.invalid(
                            &path,
                            &format!("is `reject`, `queue` or `shed`, not `{other}`"),
                        ))
                    }
                };
            }
            _ => {
                let known: Vec<&str> = CLIENT_KEYS.iter().chain(POLICY_KEYS).copied().collect();
                return Err(self.unknown(&path, &known));
            }
        }
        Ok(())
    }

    fn server(&mut self, v: &toml::Value, s: &mut ServerConfig) -> Result<()> {
        for (key, value) in self.table("server", v)? {
            self.server_key(key, value, s)?;
        }
        Ok(())
    }

    fn server_key(&self, key: &str, v: &toml::Value, s: &mut ServerConfig) -> Result<()> {
        let path = format!("server.{key}");
        let o = &mut s.options;
        match key {
            "max_in_flight" => o.max_in_flight = self.usize(&path, v)?,
            "idempotency_window_ms" => o.idempotency_window = self.millis(&path, v)?,
            "idempotency_max_entries" => o.idempotency_max_entries = self.usize(&path, v)?,
            _ => return Err(self.unknown(&path, SERVER_KEYS)),
        }
        Ok(())
    }
}
