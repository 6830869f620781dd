//! plane's configuration: the URL of each plane and the client and server
//! policies, by default and per endpoint, from a TOML or YAML file and
//! `PLANE_…` environment variables, layered defaults < file < environment <
//! code. One walker reads the tree either syntax gives, so the keys, their
//! checks and their errors are the same in both.
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
//!     timeout_ms = 500
//!     [server.endpoints."images.upload"]
//!     max_request_bytes = 8388608
//!     "#,
//!     "inline",
//! )?;
//! assert_eq!(config.url_for(plane::session::Plane::Kv), "mem://gateway");
//! let ms = std::time::Duration::from_millis;
//! assert_eq!(config.client.timeout_for("payments.charge"), Some(ms(500)));
//! assert_eq!(config.client.timeout_for("search"), Some(ms(2000)));
//! assert_eq!(
//!     config.serve_options_for("images.upload").max_request_bytes,
//!     Some(8 * 1024 * 1024)
//! );
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
/// The environment variable holding endpoint tables of `[client.endpoints]`,
/// as TOML (`"payments.charge" = { timeout_ms = 500 }`): endpoint names
/// carry dots, which variable names cannot.
pub const CLIENT_ENDPOINTS_ENV: &str = "PLANE_CLIENT_ENDPOINTS";
/// The environment variable holding endpoint tables of `[server.endpoints]`,
/// as TOML, like [`CLIENT_ENDPOINTS_ENV`].
pub const SERVER_ENDPOINTS_ENV: &str = "PLANE_SERVER_ENDPOINTS";

/// The keys of `[client]` that an endpoint's table takes too.
const CALL_KEYS: &[&str] = &[
    "timeout_ms",
    "max_request_bytes",
    "on_error",
    "max_attempts",
    "initial_backoff_ms",
    "max_backoff_ms",
    "multiplier",
    "max_elapsed_ms",
];
/// The keys of `[client]` that belong to the handle as a whole: its
/// in-flight limit is one budget shared by every endpoint.
const HANDLE_KEYS: &[&str] = &["max_in_flight", "overflow", "max_waiting"];
/// The keys of `[server]`, which an endpoint's table takes too.
const SERVE_KEYS: &[&str] = &[
    "max_in_flight",
    "max_request_bytes",
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
    ("deadline_ms", "timeout_ms"),
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
    ("max_payload", "max_request_bytes"),
    ("max_body_bytes", "max_request_bytes"),
    ("max_request_size", "max_request_bytes"),
    ("max_body_size", "max_request_bytes"),
    ("body_limit", "max_request_bytes"),
    ("endpoint", "endpoints"),
];

/// How a layer's values come and how its errors name a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layer {
    /// Typed values under key paths (`client.timeout_ms`): a file, or a
    /// variable whose value is TOML.
    Tree,
    /// Text values, each named by its variable (`PLANE_CLIENT_TIMEOUT_MS`).
    Env,
    /// Text values of a URL's query, each named by its key (`timeout_ms`).
    Url,
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

/// One endpoint's table under `[client.endpoints]`: what it sets over
/// `[client]`. Each `None` is `[client]`'s value, whichever layer set that,
/// so a variable for `[client]` reaches every endpoint that does not set
/// the key itself.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ClientEndpoint {
    /// `timeout_ms`: the deadline of the endpoint's calls.
    pub timeout: Option<Duration>,
    /// `max_request_bytes`: the largest request body its calls may send.
    pub max_request_bytes: Option<usize>,
    /// `on_error`.
    pub on_error: Option<OnError>,
    /// `max_attempts`.
    pub max_attempts: Option<u32>,
    /// `initial_backoff_ms`.
    pub initial_backoff: Option<Duration>,
    /// `max_backoff_ms`.
    pub max_backoff: Option<Duration>,
    /// `multiplier`.
    pub multiplier: Option<f64>,
    /// `max_elapsed_ms`.
    pub max_elapsed: Option<Duration>,
}

impl ClientEndpoint {
    /// Whether any retry or on-error key is set.
    fn sets_policy(&self) -> bool {
        self.on_error.is_some()
            || self.max_attempts.is_some()
            || self.initial_backoff.is_some()
            || self.max_backoff.is_some()
            || self.multiplier.is_some()
            || self.max_elapsed.is_some()
    }

    /// `policy` with the retry and on-error keys set here over it.
    fn over(&self, mut policy: CallPolicy) -> CallPolicy {
        let r = &mut policy.retry;
        if let Some(v) = self.on_error {
            policy.on_error = v;
        }
        if let Some(v) = self.max_attempts {
            r.max_attempts = v;
        }
        if let Some(v) = self.initial_backoff {
            r.initial_backoff = v;
        }
        if let Some(v) = self.max_backoff {
            r.max_backoff = v;
        }
        if let Some(v) = self.multiplier {
            r.multiplier = v;
        }
        if let Some(v) = self.max_elapsed {
            r.max_elapsed = Some(v);
        }
        policy
    }

    /// Every key `other` sets, over this one's.
    fn merge(&mut self, other: &ClientEndpoint) {
        *self = ClientEndpoint {
            timeout: other.timeout.or(self.timeout),
            max_request_bytes: other.max_request_bytes.or(self.max_request_bytes),
            on_error: other.on_error.or(self.on_error),
            max_attempts: other.max_attempts.or(self.max_attempts),
            initial_backoff: other.initial_backoff.or(self.initial_backoff),
            max_backoff: other.max_backoff.or(self.max_backoff),
            multiplier: other.multiplier.or(self.multiplier),
            max_elapsed: other.max_elapsed.or(self.max_elapsed),
        };
    }
}

/// How calls are made, by default and per endpoint.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Each call's deadline (each attempt's, with retries); the handle's
    /// default (30 s) when `None`.
    pub timeout: Option<Duration>,
    /// The largest request body a call may send; only the backend's limit
    /// when `None`.
    pub max_request_bytes: Option<usize>,
    /// Retries and what to do on error.
    pub policy: CallPolicy,
    /// Per-endpoint tables, each over the settings above (see
    /// [`policy_for`](ClientConfig::policy_for) and the other `…_for`).
    pub endpoints: BTreeMap<String, ClientEndpoint>,
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

    /// The retry and on-error policy of `endpoint`'s calls: `policy` with
    /// what the endpoint's table sets over it.
    pub fn policy_for(&self, endpoint: &str) -> CallPolicy {
        match self.endpoints.get(endpoint) {
            Some(e) => e.over(self.policy.clone()),
            None => self.policy.clone(),
        }
    }

    /// The deadline of `endpoint`'s calls: its table's, else `timeout`.
    pub fn timeout_for(&self, endpoint: &str) -> Option<Duration> {
        self.endpoints
            .get(endpoint)
            .and_then(|e| e.timeout)
            .or(self.timeout)
    }

    /// The largest request body of `endpoint`'s calls: its table's, else
    /// `max_request_bytes`.
    pub fn max_request_bytes_for(&self, endpoint: &str) -> Option<usize> {
        self.endpoints
            .get(endpoint)
            .and_then(|e| e.max_request_bytes)
            .or(self.max_request_bytes)
    }

    /// The keys of `[client]` that endpoints share, as `set` gives them.
    fn set(&mut self, set: &ClientEndpoint) {
        self.policy = set.over(self.policy.clone());
        if set.timeout.is_some() {
            self.timeout = set.timeout;
        }
        if set.max_request_bytes.is_some() {
            self.max_request_bytes = set.max_request_bytes;
        }
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: None,
            max_request_bytes: None,
            policy: CallPolicy::default(),
            endpoints: BTreeMap::new(),
            max_in_flight: None,
            overflow: Overflow::Reject,
            max_waiting: 0,
        }
    }
}

/// One endpoint's table under `[server.endpoints]`: what it sets over
/// `[server]`; each `None` is `[server]`'s value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerEndpoint {
    /// `max_in_flight`.
    pub max_in_flight: Option<usize>,
    /// `max_request_bytes`.
    pub max_request_bytes: Option<usize>,
    /// `idempotency_window_ms`.
    pub idempotency_window: Option<Duration>,
    /// `idempotency_max_entries`.
    pub idempotency_max_entries: Option<usize>,
}

impl ServerEndpoint {
    /// `options` with what is set here over it.
    fn over(&self, mut options: ServeOptions) -> ServeOptions {
        if let Some(v) = self.max_in_flight {
            options.max_in_flight = v;
        }
        if let Some(v) = self.max_request_bytes {
            options.max_request_bytes = Some(v);
        }
        if let Some(v) = self.idempotency_window {
            options.idempotency_window = v;
        }
        if let Some(v) = self.idempotency_max_entries {
            options.idempotency_max_entries = v;
        }
        options
    }

    /// Every key `other` sets, over this one's.
    fn merge(&mut self, other: &ServerEndpoint) {
        *self = ServerEndpoint {
            max_in_flight: other.max_in_flight.or(self.max_in_flight),
            max_request_bytes: other.max_request_bytes.or(self.max_request_bytes),
            idempotency_window: other.idempotency_window.or(self.idempotency_window),
            idempotency_max_entries: other
                .idempotency_max_entries
                .or(self.idempotency_max_entries),
        };
    }
}

/// How endpoints are served.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Options of every [`Requests::serve`], unless its endpoint has a table.
    pub options: ServeOptions,
    /// Per-endpoint tables, each over `options` (see
    /// [`Config::serve_options_for`]).
    pub endpoints: BTreeMap<String, ServerEndpoint>,
}

/// The whole configuration. Build it with [`Config::load`] (file and
/// environment), [`Config::from_toml`], [`Config::from_yaml`] or field by
/// field; code that sets something afterwards overrides all of them.
#[derive(Debug, Clone, Default, PartialEq)]
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

    /// Read a file: YAML if its name ends in `.yaml` or `.yml`, else TOML.
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
        let origin = path.display().to_string();
        let yaml = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"));
        if yaml {
            Config::from_yaml(&text, &origin)
        } else {
            Config::from_toml(&text, &origin)
        }
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
        Config::from_tree(&table, origin)
    }

    /// Parse YAML text with the keys and values of the TOML file (a
    /// mapping where TOML has a table); `origin` names it in errors.
    ///
    /// ```
    /// # fn main() -> plane::Result<()> {
    /// let config = plane::config::Config::from_yaml(
    ///     "client:\n  timeout_ms: 2000\n  endpoints:\n    payments.charge:\n      on_error: end\n",
    ///     "inline",
    /// )?;
    /// assert_eq!(
    ///     config.client.timeout_for("search"),
    ///     Some(std::time::Duration::from_millis(2000))
    /// );
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `InvalidConfig` for text that is no YAML, more than one document, a
    /// key with no value (YAML's null, which TOML has not), or an unknown
    /// or invalid key.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self> {
        let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("{origin}: not valid YAML: {e}"),
            )
        })?;
        let table = match docs.as_slice() {
            [] => toml::Table::new(),
            [doc] => match yaml_to_toml(doc, "", origin)? {
                toml::Value::Table(t) => t,
                _ => {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("{origin}: the document must be a mapping of keys"),
                    ))
                }
            },
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("{origin}: holds {} YAML documents, not one", docs.len()),
                ))
            }
        };
        Config::from_tree(&table, origin)
    }

    /// The one walker of a file's tree, whichever syntax it came in.
    fn from_tree(table: &toml::Table, origin: &str) -> Result<Self> {
        let mut config = Config::default();
        let at = Reader {
            origin,
            layer: Layer::Tree,
        };
        for (key, value) in table {
            match key.as_str() {
                "client" => at.client(value, &mut config.client)?,
                "server" => at.server(value, &mut config.server)?,
                k => match config.urls.slot(k) {
                    Some(slot) => *slot = Some(at.string(k, value)?),
                    None => return Err(at.unknown(k, TOP_KEYS)),
                },
            }
        }
        config.fold_url_keys(origin)?;
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
            if key == "client_endpoints" || key == "server_endpoints" {
                let tables = endpoint_tables(&name, &value)?;
                let origin = format!("environment (`{name}`)");
                let at = Reader {
                    origin: &origin,
                    layer: Layer::Tree,
                };
                if key == "client_endpoints" {
                    at.client_endpoints(&tables, &mut self.client)?;
                } else {
                    at.server_endpoints(&tables, &mut self.server)?;
                }
                continue;
            }
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
        self.fold_url_keys("environment")?;
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
    /// request limit and retry policy, each endpoint's table over them, and
    /// the in-flight limit. Set more on the handle it returns to override
    /// them in code (`with_endpoint_timeout` and the like for an endpoint
    /// with a table, since an endpoint's setting beats the handle's).
    ///
    /// # Errors
    /// `InvalidConfig` for an in-flight limit of 0.
    pub fn apply(&self, requests: Requests) -> Result<Requests> {
        let c = &self.client;
        let mut r = requests.with_policy(c.policy.clone());
        if c.timeout.is_some() {
            r = r.with_timeout(c.timeout);
        }
        if c.max_request_bytes.is_some() {
            r = r.with_max_request_bytes(c.max_request_bytes);
        }
        // An endpoint gets its own setting only for what its table names,
        // so code that later sets the handle's reaches the rest.
        for (endpoint, e) in &c.endpoints {
            if e.sets_policy() {
                r = r.with_endpoint_policy(endpoint.clone(), c.policy_for(endpoint));
            }
            if e.timeout.is_some() {
                r = r.with_endpoint_timeout(endpoint.clone(), e.timeout);
            }
            if e.max_request_bytes.is_some() {
                r = r.with_endpoint_max_request_bytes(endpoint.clone(), e.max_request_bytes);
            }
        }
        if let Some(limit) = c.in_flight_limit() {
            r = r.with_in_flight_limit(limit)?;
        }
        Ok(r)
    }

    /// The options to serve endpoints with (`[server]`), for an endpoint
    /// without a table of its own.
    pub fn serve_options(&self) -> ServeOptions {
        self.server.options.clone()
    }

    /// The options to serve `endpoint` with: `[server]`, and the
    /// endpoint's table over it.
    ///
    /// ```
    /// # fn main() -> plane::Result<()> {
    /// let config = plane::config::Config::from_toml(
    ///     "[server]\nmax_in_flight = 1024\n[server.endpoints.\"images.upload\"]\nmax_in_flight = 8\n",
    ///     "inline",
    /// )?;
    /// assert_eq!(config.serve_options_for("images.upload").max_in_flight, 8);
    /// assert_eq!(config.serve_options_for("search").max_in_flight, 1024);
    /// # Ok(()) }
    /// ```
    pub fn serve_options_for(&self, endpoint: &str) -> ServeOptions {
        let options = self.serve_options();
        match self.server.endpoints.get(endpoint) {
            Some(e) => e.over(options),
            None => options,
        }
    }

    /// Take the `[client]` keys out of the request URL and the shared `url`
    /// (`nats://h?timeout_ms=500&max_attempts=3`) as set by the layer the
    /// URL came from, so each plane's backend gets a URL of its own keys.
    fn fold_url_keys(&mut self, origin: &str) -> Result<()> {
        for key in ["url", "requests"] {
            let Some(url) = self.urls.slot(key).and_then(|u| u.take()) else {
                continue;
            };
            let url = self.take_url_keys(&url, &format!("{origin}, the `{key}` url"));
            *self.urls.slot(key).expect("a url key") = Some(url?);
        }
        Ok(())
    }

    /// `url` without its `[client]` query keys (`timeout_ms`,
    /// `max_attempts`, `max_in_flight`, … as docs/config.md lists), which
    /// are set on this configuration's client policy: for a URL given in
    /// code (a command-line flag) rather than through the file or the
    /// environment, whose URLs are read this way already. The rest of the
    /// URL is left byte for byte as it was.
    ///
    /// ```
    /// # fn main() -> plane::Result<()> {
    /// let mut config = plane::config::Config::default();
    /// let url = config.url_keys("nats://h:4222?timeout_ms=250&name=gw")?;
    /// assert_eq!(url, "nats://h:4222?name=gw");
    /// assert_eq!(config.client.timeout, Some(std::time::Duration::from_millis(250)));
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// `InvalidConfig` naming the key whose value is invalid.
    pub fn url_keys(&mut self, url: &str) -> Result<String> {
        let url = self.take_url_keys(url, "url")?;
        self.check("url")?;
        Ok(url)
    }

    fn take_url_keys(&mut self, url: &str, origin: &str) -> Result<String> {
        let (before, fragment) = match url.find('#') {
            Some(i) => url.split_at(i),
            None => (url, ""),
        };
        let Some((base, query)) = before.split_once('?') else {
            return Ok(url.to_owned());
        };
        let at = Reader {
            origin,
            layer: Layer::Url,
        };
        let mut rest = Vec::new();
        for pair in query.split('&') {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if CALL_KEYS.contains(&key) || HANDLE_KEYS.contains(&key) {
                at.client_key(
                    key,
                    &toml::Value::String(value.to_owned()),
                    &mut self.client,
                )?;
            } else {
                rest.push(pair);
            }
        }
        let query = rest.join("&");
        let sep = if query.is_empty() { "" } else { "?" };
        Ok(format!("{base}{sep}{query}{fragment}"))
    }

    /// What no single key can be checked for alone.
    fn check(&self, origin: &str) -> Result<()> {
        let c = &self.client;
        let waits = !matches!(c.overflow, Overflow::Reject) || c.max_waiting > 0;
        if waits && c.max_in_flight.is_none() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "{origin}: client.overflow and client.max_waiting need client.max_in_flight"
                ),
            ));
        }
        Ok(())
    }
}

/// The value of `PLANE_CLIENT_ENDPOINTS` or `PLANE_SERVER_ENDPOINTS`, as
/// the tree of `[client.endpoints]` or `[server.endpoints]`.
fn endpoint_tables(name: &str, value: &str) -> Result<toml::Value> {
    value
        .parse::<toml::Table>()
        .map(toml::Value::Table)
        .map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "environment: `{name}` is not valid TOML ({}); it holds endpoint tables such as `\"payments.charge\" = {{ timeout_ms = 500 }}`",
                    e.message().trim_end()
                ),
            )
        })
}

/// A YAML node as the TOML value the walker reads; `path` names it in
/// errors.
fn yaml_to_toml(node: &yaml_rust2::Yaml, path: &str, origin: &str) -> Result<toml::Value> {
    use yaml_rust2::Yaml;
    let invalid = |what: &str| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("{origin}: `{path}` {what}"),
        )
    };
    Ok(match node {
        Yaml::String(s) => toml::Value::String(s.clone()),
        Yaml::Integer(i) => toml::Value::Integer(*i),
        Yaml::Boolean(b) => toml::Value::Boolean(*b),
        Yaml::Real(_) => match node.as_f64() {
            Some(f) => toml::Value::Float(f),
            None => return Err(invalid("is not a number")),
        },
        Yaml::Array(items) => toml::Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| yaml_to_toml(item, &format!("{path}[{i}]"), origin))
                .collect::<Result<_>>()?,
        ),
        Yaml::Hash(map) => {
            let mut table = toml::Table::new();
            for (key, value) in map {
                let Yaml::String(key) = key else {
                    return Err(invalid(&format!("has a key that is not a string: {key:?}")));
                };
                // Paths as the TOML walker writes them, so that an error
                // names a YAML key the way it names a TOML one.
                let child = match path {
                    "" => key.clone(),
                    "client.endpoints" | "server.endpoints" => format!("{path}.\"{key}\""),
                    _ => format!("{path}.{key}"),
                };
                table.insert(key.clone(), yaml_to_toml(value, &child, origin)?);
            }
            toml::Value::Table(table)
        }
        Yaml::Null => return Err(invalid("has no value")),
        Yaml::Alias(_) | Yaml::BadValue => return Err(invalid("is not a value plane reads")),
    })
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
    for k in CALL_KEYS.iter().chain(HANDLE_KEYS) {
        v.push(format!("PLANE_CLIENT_{}", k.to_ascii_uppercase()));
    }
    v.push(CLIENT_ENDPOINTS_ENV.to_owned());
    for k in SERVE_KEYS {
        v.push(format!("PLANE_SERVER_{}", k.to_ascii_uppercase()));
    }
    v.push(SERVER_ENDPOINTS_ENV.to_owned());
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
    /// in a tree, the variable (`PLANE_CLIENT_TIMEOUT_MS`) in the
    /// environment.
    fn name(&self, path: &str) -> String {
        match self.layer {
            Layer::Tree => path.to_owned(),
            Layer::Env => format!("PLANE_{}", path.replace('.', "_").to_ascii_uppercase()),
            Layer::Url => path.rsplit('.').next().unwrap_or(path).to_owned(),
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
            // In a tree the key as written in its table; in the
            // environment the whole variable.
            .map(|h| match self.layer {
                Layer::Tree | Layer::Url => h.to_owned(),
                Layer::Env => self.name(&parent.map_or(h.to_owned(), |p| format!("{p}.{h}"))),
            });
        let what = match self.layer {
            Layer::Tree | Layer::Url => "key",
            Layer::Env => "variable",
        };
        let mut msg = format!("{}: unknown {what} `{}`", self.origin, self.name(path));
        match (hint, self.layer) {
            (Some(h), _) => msg.push_str(&format!("; did you mean `{h}`?")),
            (None, Layer::Tree | Layer::Url) => {
                msg.push_str(&format!("; known keys: {}", known.join(", ")))
            }
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
            (toml::Value::String(s), Layer::Env | Layer::Url) => s.trim().parse().ok(),
            _ => None,
        };
        n.ok_or_else(|| self.invalid(key, "must be a whole number ≥ 0"))
    }

    fn float(&self, key: &str, v: &toml::Value) -> Result<f64> {
        let n = match (v, self.layer) {
            (toml::Value::Float(f), _) => Some(*f),
            (toml::Value::Integer(i), _) => Some(*i as f64),
            (toml::Value::String(s), Layer::Env | Layer::Url) => s.trim().parse().ok(),
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

    /// A count or size where 0 would refuse everything: never what was
    /// meant, so refused here rather than at the first call.
    fn positive(&self, key: &str, v: &toml::Value) -> Result<usize> {
        match self.usize(key, v)? {
            0 => Err(self.invalid(key, "must be at least 1")),
            n => Ok(n),
        }
    }

    fn table<'v>(&self, key: &str, v: &'v toml::Value) -> Result<&'v toml::Table> {
        v.as_table()
            .ok_or_else(|| self.invalid(key, "must be a table"))
    }

    /// One key of [`CALL_KEYS`] into `set`; `false` if `key` is none.
    fn call_key(
        &self,
        path: &str,
        key: &str,
        v: &toml::Value,
        set: &mut ClientEndpoint,
    ) -> Result<bool> {
        match key {
            // A zero deadline would fail every call at once.
            "timeout_ms" => {
                set.timeout = Some(Duration::from_millis(self.positive(path, v)? as u64))
            }
            "max_request_bytes" => set.max_request_bytes = Some(self.positive(path, v)?),
            "on_error" => {
                set.on_error = Some(match self.string(path, v)?.as_str() {
                    "retry" => OnError::Retry,
                    "end" => OnError::End,
                    "continue" | "best_effort" => OnError::Continue,
                    other => {
                        return Err(self.invalid(
                            path,
                            &format!("is `retry`, `end` or `continue`, not `{other}`"),
                        ))
                    }
                })
            }
            "max_attempts" => {
                let n = self.number(path, v)?;
                set.max_attempts =
                    Some(u32::try_from(n.max(1)).map_err(|_| self.invalid(path, "is too large"))?);
            }
            "initial_backoff_ms" => set.initial_backoff = Some(self.millis(path, v)?),
            "max_backoff_ms" => set.max_backoff = Some(self.millis(path, v)?),
            "multiplier" => {
                let m = self.float(path, v)?;
                if m < 1.0 {
                    return Err(self.invalid(path, "must be at least 1"));
                }
                set.multiplier = Some(m);
            }
            "max_elapsed_ms" => set.max_elapsed = Some(self.millis(path, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn client(&self, v: &toml::Value, c: &mut ClientConfig) -> Result<()> {
        for (key, value) in self.table("client", v)? {
            if key == "endpoints" {
                self.client_endpoints(value, c)?;
            } else {
                self.client_key(key, value, c)?;
            }
        }
        Ok(())
    }

    /// `[client.endpoints]` (or the variable holding it): each endpoint's
    /// keys over what earlier layers set for it, key by key.
    fn client_endpoints(&self, v: &toml::Value, c: &mut ClientConfig) -> Result<()> {
        for (endpoint, value) in self.table("client.endpoints", v)? {
            let path = format!("client.endpoints.\"{endpoint}\"");
            let mut set = ClientEndpoint::default();
            for (key, value) in self.table(&path, value)? {
                let p = format!("{path}.{key}");
                if self.call_key(&p, key, value, &mut set)? {
                    continue;
                }
                if HANDLE_KEYS.contains(&key.as_str()) {
                    return Err(self.invalid(
                        &p,
                        "is not per endpoint: the in-flight limit is the handle's, \
                         shared by every endpoint; set it in [client] (a server \
                         endpoint's table takes max_in_flight)",
                    ));
                }
                return Err(self.unknown(&p, CALL_KEYS));
            }
            c.endpoints.entry(endpoint.clone()).or_default().merge(&set);
        }
        Ok(())
    }

    fn client_key(&self, key: &str, v: &toml::Value, c: &mut ClientConfig) -> Result<()> {
        let path = format!("client.{key}");
        let mut set = ClientEndpoint::default();
        if self.call_key(&path, key, v, &mut set)? {
            c.set(&set);
            return Ok(());
        }
        match key {
            "max_in_flight" => c.max_in_flight = Some(self.positive(&path, v)?),
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
                let known: Vec<&str> = CALL_KEYS
                    .iter()
                    .chain(HANDLE_KEYS)
                    .chain(&["endpoints"])
                    .copied()
                    .collect();
                return Err(self.unknown(&path, &known));
            }
        }
        Ok(())
    }

    /// One key of [`SERVE_KEYS`] into `set`; `false` if `key` is none.
    fn serve_key(
        &self,
        path: &str,
        key: &str,
        v: &toml::Value,
        set: &mut ServerEndpoint,
    ) -> Result<bool> {
        match key {
            "max_in_flight" => set.max_in_flight = Some(self.positive(path, v)?),
            "max_request_bytes" => set.max_request_bytes = Some(self.positive(path, v)?),
            "idempotency_window_ms" => set.idempotency_window = Some(self.millis(path, v)?),
            "idempotency_max_entries" => set.idempotency_max_entries = Some(self.usize(path, v)?),
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn server(&self, v: &toml::Value, s: &mut ServerConfig) -> Result<()> {
        for (key, value) in self.table("server", v)? {
            if key == "endpoints" {
                self.server_endpoints(value, s)?;
            } else {
                self.server_key(key, value, s)?;
            }
        }
        Ok(())
    }

    /// `[server.endpoints]` (or the variable holding it), as
    /// [`client_endpoints`](Reader::client_endpoints).
    fn server_endpoints(&self, v: &toml::Value, s: &mut ServerConfig) -> Result<()> {
        for (endpoint, value) in self.table("server.endpoints", v)? {
            let path = format!("server.endpoints.\"{endpoint}\"");
            let mut set = ServerEndpoint::default();
            for (key, value) in self.table(&path, value)? {
                let p = format!("{path}.{key}");
                if !self.serve_key(&p, key, value, &mut set)? {
                    return Err(self.unknown(&p, SERVE_KEYS));
                }
            }
            s.endpoints.entry(endpoint.clone()).or_default().merge(&set);
        }
        Ok(())
    }

    fn server_key(&self, key: &str, v: &toml::Value, s: &mut ServerConfig) -> Result<()> {
        let path = format!("server.{key}");
        let mut set = ServerEndpoint::default();
        if self.serve_key(&path, key, v, &mut set)? {
            s.options = set.over(std::mem::take(&mut s.options));
            return Ok(());
        }
        let mut known = SERVE_KEYS.to_vec();
        known.push("endpoints");
        Err(self.unknown(&path, &known))
    }
}
