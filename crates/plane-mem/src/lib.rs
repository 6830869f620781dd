//! The in-memory reference backend, `mem://`.
//!
//! Every plane with its full semantics, inside one process. It is the
//! reference the conformance suite holds other backends to, and the embedded
//! default for development and tests: no server to install.
//!
#![doc = include_str!("../../../docs/mem.md")]
//!
//! # Example
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

pub mod config;
mod error;
mod events;
mod kv;
mod objects;
mod queue;
mod request;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use futures_util::future::BoxFuture;
use url::Url;

pub use self::config::MemConfig;
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
use plane_core::registry::{Connector, Registry};
use plane_core::request::Requests;

/// The backend name used in errors and reports.
pub const NAME: &str = "mem";

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
