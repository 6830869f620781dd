//! The in-memory reference backend, `mem://`.
//!
//! Every plane with its full semantics, inside one process. It is the
//! reference the conformance suite holds other backends to, and the embedded
//! default for development and tests: no server to install.
//!
//! # URLs
//!
//! `mem://` or `mem://NAME`. Handles built from URLs with the same name share
//! one in-process hub, so a caller and a server built separately find each
//! other; different names are isolated from each other.
//!
//! | query key | meaning | default |
//! |---|---|---|
//! | `max_payload` | largest request, reply, event or job payload in bytes | 8 MiB |
//! | `max_value` | largest kv value in bytes | 1 MiB |
//!
//! Unknown keys are refused with `InvalidConfig`.
//!
//! ```
//! use plane_core::request::{unary_fn, Request};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! let registry = plane_mem::registry();
//! let requests = registry.requests("mem://doc").await?;
//! let _server = requests
//!     .serve("echo", unary_fn(|req: Request| async move { Ok(req.message) }))
//!     .await?;
//! let reply = requests.call("echo", "hi").await?;
//! assert_eq!(reply.to_bytes(), "hi");
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod events;
mod kv;
mod objects;
mod queue;
mod request;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use url::Url;

pub use self::events::MemEvents;
pub use self::kv::MemKv;
pub use self::objects::MemObjects;
pub use self::queue::MemQueues;
pub use self::request::MemRequests;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::events::Events;
use plane_core::kv::Kv;
use plane_core::objects::Objects;
use plane_core::queue::Queues;
use plane_core::registry::{Connector, QueryParams, Registry};
use plane_core::request::Requests;

/// The backend name used in errors and reports.
pub const NAME: &str = "mem";

/// Configuration of an in-memory hub's handles, from the URL query.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemConfig {
    /// Largest request, reply, event or job payload (body plus headers).
    pub max_payload: usize,
    /// Largest kv value.
    pub max_value: usize,
}

impl Default for MemConfig {
    fn default() -> Self {
        MemConfig {
            max_payload: 8 * 1024 * 1024,
            max_value: 1024 * 1024,
        }
    }
}

impl MemConfig {
    /// Read the configuration from a `mem://` URL's query.
    pub fn from_url(url: &Url) -> Result<Self> {
        let mut q = QueryParams::new(url)?;
        let d = MemConfig::default();
        let config = MemConfig {
            max_payload: q.take("max_payload")?.unwrap_or(d.max_payload),
            max_value: q.take("max_value")?.unwrap_or(d.max_value),
        };
        q.finish()?;
        if config.max_payload == 0 || config.max_value == 0 {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "max_payload and max_value must be positive",
            ));
        }
        Ok(config)
    }
}

/// One in-process hub: the shared state behind every plane of one name.
pub struct Hub {
    requests: Arc<request::RequestHub>,
    events: Arc<events::EventHub>,
    kv: Arc<kv::KvHub>,
    objects: Arc<objects::ObjectHub>,
    queues: Arc<queue::QueueHub>,
}

impl Hub {
    /// A new, isolated hub (not reachable by URL).
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub {
            requests: Arc::default(),
            events: Arc::default(),
            kv: Arc::default(),
            objects: Arc::default(),
            queues: Arc::default(),
        })
    }

    /// The hub named `name`, created on first use; lives as long as the process.
    pub fn named(name: &str) -> Arc<Hub> {
        static HUBS: OnceLock<Mutex<HashMap<String, Arc<Hub>>>> = OnceLock::new();
        HUBS.get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(name.to_owned())
            .or_insert_with(Hub::new)
            .clone()
    }

    /// The request plane on this hub.
    pub fn requests(&self, config: &MemConfig) -> Requests {
        Requests::new(self.requests_backend(config))
    }

    /// The request backend itself on this hub, for a wrapper that narrows
    /// or instruments it.
    pub fn requests_backend(&self, config: &MemConfig) -> MemRequests {
        MemRequests::new(self.requests.clone(), config)
    }

    /// The events plane on this hub.
    pub fn events(&self, config: &MemConfig) -> Events {
        Events::new(MemEvents::new(self.events.clone(), config))
    }

    /// The kv plane on this hub.
    pub fn kv(&self, config: &MemConfig) -> Kv {
        Kv::new(self.kv_backend(config))
    }

    /// The kv backend itself on this hub, for a wrapper that narrows or
    /// instruments it (tests of code built on any kv use this).
    pub fn kv_backend(&self, config: &MemConfig) -> MemKv {
        MemKv::new(self.kv.clone(), config)
    }

    /// The objects plane on this hub.
    pub fn objects(&self, config: &MemConfig) -> Objects {
        Objects::new(MemObjects::new(self.objects.clone(), config))
    }

    /// The queue plane on this hub.
    pub fn queues(&self, config: &MemConfig) -> Queues {
        Queues::new(MemQueues::new(self.queues.clone(), config))
    }
}

fn hub_for(url: &Url) -> Result<(Arc<Hub>, MemConfig)> {
    if !url.path().is_empty() && url.path() != "/" {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "mem urls take no path, got `{}`; use mem://NAME",
                url.path()
            ),
        ));
    }
    let name = url.host_str().unwrap_or("");
    let name = if name.is_empty() { "default" } else { name };
    Ok((Hub::named(name), MemConfig::from_url(url)?))
}

/// The `mem://` connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct MemConnector;

impl Connector for MemConnector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["mem"]
    }

    fn requests<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Requests>> {
        Box::pin(async move {
            let (hub, config) = hub_for(url)?;
            Ok(hub.requests(&config))
        })
    }

    fn events<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Events>> {
        Box::pin(async move {
            let (hub, config) = hub_for(url)?;
            Ok(hub.events(&config))
        })
    }

    fn kv<'a>(&'a self, url: &'a Url, _registry: &'a Registry) -> BoxFuture<'a, Result<Kv>> {
        Box::pin(async move {
            let (hub, config) = hub_for(url)?;
            Ok(hub.kv(&config))
        })
    }

    fn objects<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Objects>> {
        Box::pin(async move {
            let (hub, config) = hub_for(url)?;
            Ok(hub.objects(&config))
        })
    }

    fn queues<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Queues>> {
        Box::pin(async move {
            let (hub, config) = hub_for(url)?;
            Ok(hub.queues(&config))
        })
    }
}

/// Add `mem://` to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(MemConnector);
}

/// A registry that knows only `mem://`: the embedded default for examples
/// and tests. The facade's `plane::registry()` adds every compiled-in backend.
pub fn registry() -> Registry {
    let mut r = Registry::new();
    register(&mut r);
    r
}
