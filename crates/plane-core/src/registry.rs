//! Run-time choice of transport: a URL scheme picks the backend.
//!
//! A backend crate exports a [`Connector`] and a `register` function that adds
//! it to a [`Registry`]. Applications build every plane from a URL, so the
//! same binary runs on any backend by changing configuration only:
//!
//! ```
//! # async fn demo() -> plane_core::Result<()> {
//! let registry = plane_mem::registry();
//! let kv = registry.kv("mem://demo").await?;
//! let bucket = kv.create_bucket(plane_core::kv::BucketConfig::new("config")).await?;
//! bucket.put("greeting", "hello").await?;
//! # Ok(()) }
//! ```
//!
//! Unknown schemes fail fast with `InvalidConfig`, listing the known ones.
//! Nothing is enabled implicitly: a backend is used only when its scheme is named.

use std::collections::{BTreeMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use url::Url;

use crate::error::{Error, ErrorKind, Result};
use crate::events::Events;
use crate::kv::Kv;
use crate::objects::Objects;
use crate::queue::Queues;
use crate::request::Requests;
use crate::session::{not_served, Plane, Session, SessionBackend};

/// A backend factory. Each method builds one plane from a URL whose scheme is
/// one of [`schemes`](Connector::schemes); planes a backend does not serve keep
/// the default, which refuses with `Unsupported`.
///
/// The registry is passed along so that a backend composed of other planes
/// (a brokerless request plane whose peers are found through a discovery kv
/// named by a URL in its query) can build them by URL too.
pub trait Connector: Send + Sync + 'static {
    /// Backend name (`"mem"`, `"nats"`).
    fn name(&self) -> &'static str;
    /// URL schemes this backend answers to.
    fn schemes(&self) -> &'static [&'static str];
    /// Open a [`Session`] whose planes share one connection.
    ///
    /// `Ok(None)`, the default, says the backend has no connection to share
    /// (or shares it already, as `mem://` does by hub name): the registry
    /// then builds each plane on first use with the per-plane methods below.
    fn session<'a>(
        &'a self,
        url: &'a Url,
        registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Option<Session>>> {
        let _ = (url, registry);
        Box::pin(async { Ok(None) })
    }
    /// Build the request plane.
    fn requests<'a>(
        &'a self,
        url: &'a Url,
        registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Requests>> {
        let _ = (url, registry);
        Box::pin(async move { Err(not_served(self.name(), Plane::Request)) })
    }
    /// Build the events plane.
    fn events<'a>(&'a self, url: &'a Url, registry: &'a Registry) -> BoxFuture<'a, Result<Events>> {
        let _ = (url, registry);
        Box::pin(async move { Err(not_served(self.name(), Plane::Events)) })
    }
    /// Build the kv plane.
    fn kv<'a>(&'a self, url: &'a Url, registry: &'a Registry) -> BoxFuture<'a, Result<Kv>> {
        let _ = (url, registry);
        Box::pin(async move { Err(not_served(self.name(), Plane::Kv)) })
    }
    /// Build the objects plane.
    fn objects<'a>(
        &'a self,
        url: &'a Url,
        registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Objects>> {
        let _ = (url, registry);
        Box::pin(async move { Err(not_served(self.name(), Plane::Objects)) })
    }
    /// Build the queue plane.
    fn queues<'a>(&'a self, url: &'a Url, registry: &'a Registry) -> BoxFuture<'a, Result<Queues>> {
        let _ = (url, registry);
        Box::pin(async move { Err(not_served(self.name(), Plane::Queue)) })
    }
}

/// Maps URL schemes to backends.
#[derive(Clone, Default)]
pub struct Registry {
    connectors: Vec<Arc<dyn Connector>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("schemes", &self.schemes())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// Add a backend. A later registration of the same scheme wins, so an
    /// application can replace a default.
    pub fn register(&mut self, connector: impl Connector) -> &mut Self {
        self.connectors.insert(0, Arc::new(connector));
        self
    }

    /// Every scheme known, sorted.
    pub fn schemes(&self) -> Vec<&'static str> {
        let mut s: Vec<&'static str> = self
            .connectors
            .iter()
            .flat_map(|c| c.schemes().iter().copied())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        s.sort_unstable();
        s
    }

    /// Parse `url` and find its backend.
    pub fn resolve(&self, url: &str) -> Result<(Arc<dyn Connector>, Url)> {
        let parsed = Url::parse(url).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("invalid url `{}`", redacted(url)),
            )
            .with_source(e)
        })?;
        let scheme = parsed.scheme();
        let connector = self
            .connectors
            .iter()
            .find(|c| c.schemes().contains(&scheme))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!(
                        "unknown scheme `{scheme}`; known schemes: {}",
                        self.schemes().join(", ")
                    ),
                )
            })?;
        Ok((connector.clone(), parsed))
    }

    /// Open a session on `url`: every plane its backend serves, built on
    /// first use, over one connection where the backend has one to share.
    ///
    /// # Errors
    /// `InvalidConfig` for an unparsable URL or an unknown scheme; whatever
    /// the backend's connect fails with.
    pub async fn connect(&self, url: &str) -> Result<Session> {
        let (connector, parsed) = self.resolve(url)?;
        if let Some(session) = connector.session(&parsed, self).await? {
            return Ok(session);
        }
        Ok(Session::new(PerPlane {
            connector,
            url: parsed,
            registry: self.clone(),
        }))
    }

    /// Build the request plane from `url`: a session of its own, one plane
    /// taken from it.
    pub async fn requests(&self, url: &str) -> Result<Requests> {
        self.connect(url).await?.requests().await
    }

    /// Build the events plane from `url` (a session of its own).
    pub async fn events(&self, url: &str) -> Result<Events> {
        self.connect(url).await?.events().await
    }

    /// Build the kv plane from `url` (a session of its own).
    pub async fn kv(&self, url: &str) -> Result<Kv> {
        self.connect(url).await?.kv().await
    }

    /// Build the objects plane from `url` (a session of its own).
    pub async fn objects(&self, url: &str) -> Result<Objects> {
        self.connect(url).await?.objects().await
    }

    /// Build the queue plane from `url` (a session of its own).
    pub async fn queues(&self, url: &str) -> Result<Queues> {
        self.connect(url).await?.queues().await
    }
}

/// The session of a backend without a connection to share: each plane is
/// built by the connector's per-plane method, from the same URL.
struct PerPlane {
    connector: Arc<dyn Connector>,
    url: Url,
    registry: Registry,
}

impl SessionBackend for PerPlane {
    fn name(&self) -> &'static str {
        self.connector.name()
    }
    fn requests(&self) -> BoxFuture<'_, Result<Requests>> {
        self.connector.requests(&self.url, &self.registry)
    }
    fn events(&self) -> BoxFuture<'_, Result<Events>> {
        self.connector.events(&self.url, &self.registry)
    }
    fn kv(&self) -> BoxFuture<'_, Result<Kv>> {
        self.connector.kv(&self.url, &self.registry)
    }
    fn objects(&self) -> BoxFuture<'_, Result<Objects>> {
        self.connector.objects(&self.url, &self.registry)
    }
    fn queues(&self) -> BoxFuture<'_, Result<Queues>> {
        self.connector.queues(&self.url, &self.registry)
    }
}

/// A URL's query parameters, consumed by name so that a misspelt or unknown
/// key is an error rather than silently ignored.
///
/// Keys are the names of the configuration struct's fields; durations are
/// written in milliseconds with an `_ms` suffix.
#[derive(Debug)]
pub struct QueryParams {
    params: BTreeMap<String, String>,
    /// Every key the backend asked for, present or not: what an unknown
    /// key's error lists.
    asked: std::collections::BTreeSet<String>,
    /// Names other clients use for a key, and the key: `credentials` for
    /// `creds`, say. Named in an unknown key's error.
    aliases: Vec<(&'static str, &'static str)>,
}

impl QueryParams {
    /// Collect `url`'s query. A repeated key is `InvalidConfig`.
    pub fn new(url: &Url) -> Result<Self> {
        let mut params = BTreeMap::new();
        for (k, v) in url.query_pairs() {
            if params.insert(k.to_string(), v.to_string()).is_some() {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    format!("url query key `{k}` is repeated"),
                ));
            }
        }
        Ok(QueryParams {
            params,
            asked: Default::default(),
            aliases: Vec::new(),
        })
    }

    /// Take `key` as a string.
    pub fn take_str(&mut self, key: &str) -> Option<String> {
        self.asked.insert(key.to_owned());
        self.params.remove(key)
    }

    /// Take `key` and parse it.
    pub fn take<T: FromStr>(&mut self, key: &str) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.take_str(key) {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| {
                Error::new(
                    ErrorKind::InvalidConfig,
                    format!("url query key `{key}`: invalid value `{v}`: {e}"),
                )
            }),
        }
    }

    /// Take `key` (in milliseconds) as a duration.
    pub fn take_millis(&mut self, key: &str) -> Result<Option<std::time::Duration>> {
        Ok(self.take::<u64>(key)?.map(std::time::Duration::from_millis))
    }

    /// Take `key` into `field` when present, leaving the default otherwise:
    /// one line per key in a backend's `from_url`.
    ///
    /// # Errors
    /// `InvalidConfig` when the value does not parse.
    pub fn set<T: FromStr>(&mut self, key: &str, field: &mut T) -> Result<()>
    where
        T::Err: std::fmt::Display,
    {
        if let Some(v) = self.take(key)? {
            *field = v;
        }
        Ok(())
    }

    /// [`set`](QueryParams::set) for a duration given in milliseconds.
    ///
    /// # Errors
    /// `InvalidConfig` when the value is not a whole number.
    pub fn set_millis(&mut self, key: &str, field: &mut std::time::Duration) -> Result<()> {
        if let Some(v) = self.take_millis(key)? {
            *field = v;
        }
        Ok(())
    }

    /// Name `key` in the error of an unknown `common`: what other clients
    /// or configuration formats call it (`credentials` for `creds`), too far
    /// from it for a "did you mean" by spelling.
    pub fn alias(&mut self, common: &'static str, key: &'static str) -> &mut Self {
        self.aliases.push((common, key));
        self
    }

    /// Fail with `InvalidConfig` if any key was not taken, naming each with
    /// a "did you mean" for a known alias or a near miss, and listing the
    /// keys the backend read.
    pub fn finish(self) -> Result<()> {
        if self.params.is_empty() {
            return Ok(());
        }
        let known: Vec<&str> = self.asked.iter().map(String::as_str).collect();
        let unknown: Vec<String> = self
            .params
            .keys()
            .map(|k| {
                let alias = self
                    .aliases
                    .iter()
                    .find(|(common, _)| common.eq_ignore_ascii_case(k))
                    .map(|(_, key)| *key);
                match alias.or_else(|| crate::suggest::closest(k, known.iter().copied())) {
                    Some(near) => format!("`{k}` (did you mean `{near}`?)"),
                    None => format!("`{k}`"),
                }
            })
            .collect();
        Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "unknown url query key{} {}; the keys this url takes: {}",
                if unknown.len() == 1 { "" } else { "s" },
                unknown.join(", "),
                known.join(", ")
            ),
        ))
    }
}

/// Query keys whose values are secrets wherever they appear.
const SECRET_KEYS: &[&str] = &["password", "token", "nkey", "secret"];

/// What stands in for a secret in printed URLs.
const HIDDEN: &str = "***";

/// `url` fit to print or log: the password of its user info and the values
/// of secret query keys (`password`, `token`, `nkey`, `secret`) replaced by
/// `***`, also inside URLs nested in query values (a `discovery` kv URL). A
/// string that does not parse as a URL has its user info hidden whole.
///
/// ```
/// use plane_core::registry::redacted;
/// assert_eq!(redacted("nats://alice:s3cret@h:4222?token=t"), "nats://alice:***@h:4222?token=***");
/// ```
pub fn redacted(url: &str) -> String {
    let Ok(mut parsed) = Url::parse(url) else {
        // Unparsable: hide whatever could be user info.
        return match (url.find("://"), url.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}{HIDDEN}{}", &url[..start + 3], &url[at..])
            }
            _ => url.to_owned(),
        };
    };
    if parsed.password().is_some() {
        // Setting a password only fails on URLs that cannot have one.
        let _ = parsed.set_password(Some(HIDDEN));
    }
    if parsed.query().is_some() {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if SECRET_KEYS.contains(&k.as_ref()) {
                    HIDDEN.to_owned()
                } else if v.contains("://") {
                    redacted(&v)
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_query_key_names_its_near_miss_and_the_keys_taken() {
        let url = Url::parse("x://h?lease_ms=5&bukcet=b&colour=red").unwrap();
        let mut q = QueryParams::new(&url).unwrap();
        assert_eq!(
            q.take_millis("lease_ms").unwrap(),
            Some(std::time::Duration::from_millis(5))
        );
        assert_eq!(q.take_str("bucket"), None);
        assert_eq!(q.take_str("discovery"), None);
        let e = q.finish().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        assert_eq!(
            e.message(),
            "unknown url query keys `bukcet` (did you mean `bucket`?), `colour`; \
             the keys this url takes: bucket, discovery, lease_ms"
        );
        let mut q = QueryParams::new(&Url::parse("x://h?a=1").unwrap()).unwrap();
        assert_eq!(q.take::<u32>("a").unwrap(), Some(1));
        q.finish().unwrap();
    }

    #[test]
    fn an_unknown_query_key_names_the_key_it_is_an_alias_of() {
        let url = Url::parse("x://h?Credentials=/a&tls=true").unwrap();
        let mut q = QueryParams::new(&url).unwrap();
        q.alias("credentials", "creds").alias("tls", "tls_required");
        assert_eq!(q.take_str("creds"), None);
        assert_eq!(q.take_str("tls_required"), None);
        assert_eq!(
            q.finish().unwrap_err().message(),
            "unknown url query keys `Credentials` (did you mean `creds`?), `tls` (did you mean \
             `tls_required`?); the keys this url takes: creds, tls_required"
        );
    }

    #[test]
    fn redacted_urls_keep_everything_but_secrets() {
        let nested = "quic://0.0.0.0:0?discovery=nats%3A%2F%2Fu%3Apw%40h%3A4222%3Fnkey%3DSUSEED";
        let shown = redacted(nested);
        assert!(
            !shown.contains("pw") && !shown.contains("SUSEED"),
            "{shown}"
        );
        assert!(shown.starts_with("quic://0.0.0.0:0?discovery="), "{shown}");
        assert_eq!(
            redacted("nats://alice:s3cret@h:4222?name=x&password=p"),
            "nats://alice:***@h:4222?name=x&password=***"
        );
        // Nothing secret: unchanged.
        assert_eq!(redacted("mem://dev"), "mem://dev");
        assert_eq!(redacted("nats://h:4222?name=x"), "nats://h:4222?name=x");
        // Unparsable, user info hidden all the same.
        assert_eq!(redacted("nats://al:pw@bad host"), "nats://***@bad host");
        let e = Registry::new()
            .resolve("nats://al:pw@bad host")
            .err()
            .expect("an unparsable url is refused");
        assert!(!e.to_string().contains("pw"), "{e}");
    }

    #[test]
    fn query_params_reject_unknown_and_bad_values() {
        let u = Url::parse("mem://x?max_payload=10&typo=1").unwrap();
        let mut q = QueryParams::new(&u).unwrap();
        assert_eq!(q.take::<usize>("max_payload").unwrap(), Some(10));
        assert_eq!(q.finish().unwrap_err().kind(), ErrorKind::InvalidConfig);
        let u = Url::parse("mem://x?max_payload=7&wait_ms=3").unwrap();
        let mut q = QueryParams::new(&u).unwrap();
        let (mut n, mut other, mut wait) = (1usize, 2usize, std::time::Duration::ZERO);
        q.set("max_payload", &mut n).unwrap();
        q.set("absent", &mut other).unwrap();
        q.set_millis("wait_ms", &mut wait).unwrap();
        assert_eq!(
            (n, other, wait),
            (7, 2, std::time::Duration::from_millis(3))
        );
        q.finish().unwrap();
        let u = Url::parse("mem://x?max_payload=ten").unwrap();
        let mut q = QueryParams::new(&u).unwrap();
        assert_eq!(
            q.take::<usize>("max_payload").unwrap_err().kind(),
            ErrorKind::InvalidConfig
        );
    }
}
