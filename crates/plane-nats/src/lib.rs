//! plane-nats: every plane on NATS.
//!
//! | plane | built on |
//! |---|---|
//! | request | core NATS request/reply, queue groups |
//! | events | core NATS publish/subscribe (at most once); JetStream streams and durable pull consumers (at least once) |
//! | kv | JetStream key-value buckets |
//! | objects | the JetStream object store |
//! | queue | JetStream work-queue and interest streams with durable pull consumers |
//!
#![doc = include_str!("../../../docs/nats.md")]
//!
//! # Example
//!
//! ```no_run
//! use plane_core::request::{unary_fn, Request};
//!
//! # async fn demo() -> plane_core::Result<()> {
//! let mut registry = plane_mem::registry();
//! plane_nats::register(&mut registry);
//! let requests = registry.requests("nats://127.0.0.1:4222").await?;
//! let _server = requests
//!     .serve("echo", unary_fn(|req: Request| async move { Ok(req.message) }))
//!     .await?;
//! let reply = requests.call("echo", "hi").await?;
//! assert_eq!(reply.to_bytes(), "hi");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod ack;
pub mod config;
mod error;
pub mod events;
#[doc(hidden)]
pub mod fuzzing;
mod inbox;
pub mod kv;
pub mod mapping;
mod namespace;
pub mod objects;
pub mod queue;
pub mod request;
#[cfg(feature = "testkit")]
pub mod testkit;

use futures_util::future::BoxFuture;
use plane_core::registry::{Connector, Registry};
use plane_core::session::{Session, SessionBackend};
use plane_core::{Error, ErrorKind, Events, Kv, Objects, Queues, Requests, Result};
use url::Url;

use crate::namespace::Namespace;

pub use config::NatsConfig;
pub use events::NatsEvents;
pub use kv::NatsKv;
pub use objects::NatsObjects;
pub use queue::NatsQueues;
pub use request::NatsRequests;

/// The backend name used in errors and reports.
pub const NAME: &str = "nats";

/// The server's payload limit less the header reserve.
pub(crate) fn max_payload(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(request::HEADER_RESERVE)
}

/// The client's connection state as plane reports it.
/// Set once a client ran out of reconnect attempts: async-nats then stays
/// `Disconnected` without trying again, which plane reports as `Down`.
/// Shared by the planes of one connection. Cheap to clone.
#[derive(Clone, Default, Debug)]
pub(crate) struct GaveUp(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl GaveUp {
    fn set(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
    fn get(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}

pub(crate) fn state(
    client: &async_nats::Client,
    gave_up: &GaveUp,
) -> plane_core::health::ConnectionState {
    use async_nats::connection::State;
    use plane_core::health::ConnectionState;
    match client.connection_state() {
        State::Connected => ConnectionState::Up,
        State::Disconnected if gave_up.get() => ConnectionState::Down,
        State::Pending | State::Disconnected => ConnectionState::Connecting,
    }
}

/// Wait until the server has processed everything this client sent so far.
///
/// `Client::flush` only empties the client's buffer; a subscription made
/// visible to *other* connections needs a round trip, and async-nats offers
/// no ping. A message to a fresh inbox of this client's own is one: it comes
/// back only after the server handled the commands before it, in order. It
/// needs no permission beyond the inboxes requests need anyway, and no
/// JetStream. (A request to an unserved subject would not do: a subscriber
/// of `>`, this very subscription say, receives it, and nobody answers.)
pub(crate) async fn sync(client: &async_nats::Client) -> Result<()> {
    let probe = client.new_inbox();
    let mut echo = client
        .subscribe(probe.clone())
        .await
        .map_err(crate::error::subscribe)?;
    client
        .publish(probe, bytes::Bytes::new())
        .await
        .map_err(crate::error::publish)?;
    match tokio::time::timeout(
        std::time::Duration::from_secs(10),
        futures_util::StreamExt::next(&mut echo),
    )
    .await
    {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(Error::new(
            ErrorKind::Connection,
            "nats round trip failed: the connection closed",
        )),
        Err(_) => Err(Error::new(ErrorKind::Timeout, "nats round trip timed out")),
    }
}

/// The NATS connector: schemes `nats`, `tls` and `nats+tls`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsConnector;

/// One NATS connection and every plane over it: what
/// [`Registry::connect`](plane_core::Registry::connect) hands out for a
/// `nats://` URL. Each per-plane shortcut opens one of these too.
struct NatsSession {
    client: async_nats::Client,
    config: NatsConfig,
    namespace: Namespace,
    /// The first tokens of plane's own subjects: the namespace, then `prefix`.
    prefix: String,
    /// Replicas of the streams and buckets the planes create, resolved on
    /// connect (`replicas=auto` needs the server's view of its cluster).
    replicas: usize,
    gave_up: GaveUp,
}

impl NatsSession {
    async fn open(url: &Url) -> Result<Self> {
        let config = NatsConfig::from_url(url)?;
        let gave_up = GaveUp::default();
        let client = config.connect_reporting(gave_up.clone()).await?;
        let namespace = Namespace::new(config.namespace.as_deref())?;
        let prefix = namespace.subject(&config.prefix).into_owned();
        let replicas = config.replicas_on(&client.server_info())?;
        Ok(NatsSession {
            client,
            config,
            namespace,
            prefix,
            replicas,
            gave_up,
        })
    }
}

impl SessionBackend for NatsSession {
    fn name(&self) -> &'static str {
        NAME
    }

    fn requests(&self) -> BoxFuture<'_, Result<Requests>> {
        Box::pin(async move {
            Ok(Requests::new(
                NatsRequests::new(self.client.clone(), &self.prefix, self.config.heartbeat)
                    .reporting(self.gave_up.clone()),
            ))
        })
    }

    fn events(&self) -> BoxFuture<'_, Result<Events>> {
        Box::pin(async move {
            Ok(Events::new(
                NatsEvents::new(self.client.clone())
                    .with_replicas(self.replicas)
                    .with_jetstream_timeout(self.config.jetstream_timeout)
                    .in_namespace(self.namespace.clone())
                    .reporting(self.gave_up.clone()),
            ))
        })
    }

    fn kv(&self) -> BoxFuture<'_, Result<Kv>> {
        Box::pin(async move {
            Ok(Kv::new(
                NatsKv::new(self.client.clone())
                    .with_replicas(self.replicas)
                    .with_jetstream_timeout(self.config.jetstream_timeout)
                    .in_namespace(self.namespace.clone())
                    .reporting(self.gave_up.clone()),
            ))
        })
    }

    fn objects(&self) -> BoxFuture<'_, Result<Objects>> {
        Box::pin(async move {
            Ok(Objects::new(
                NatsObjects::new(self.client.clone())
                    .with_replicas(self.replicas)
                    .with_jetstream_timeout(self.config.jetstream_timeout)
                    .in_namespace(self.namespace.clone())
                    .reporting(self.gave_up.clone()),
            ))
        })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Queues>> {
        Box::pin(async move {
            Ok(Queues::new(
                NatsQueues::new(self.client.clone(), &self.prefix)
                    .with_replicas(self.replicas)
                    .with_jetstream_timeout(self.config.jetstream_timeout)
                    .in_namespace(self.namespace.clone())
                    .reporting(self.gave_up.clone()),
            ))
        })
    }
}

impl Connector for NatsConnector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schemes(&self) -> &'static [&'static str] {
        &["nats", "tls", "nats+tls"]
    }

    fn session<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Option<Session>>> {
        Box::pin(async move { Ok(Some(Session::new(NatsSession::open(url).await?))) })
    }

    // The per-plane methods open a session of one plane, so that a caller
    // holding the connector directly gets the same planes as the registry.
    fn requests<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Requests>> {
        Box::pin(async move { NatsSession::open(url).await?.requests().await })
    }

    fn events<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Events>> {
        Box::pin(async move { NatsSession::open(url).await?.events().await })
    }

    fn kv<'a>(&'a self, url: &'a Url, _registry: &'a Registry) -> BoxFuture<'a, Result<Kv>> {
        Box::pin(async move { NatsSession::open(url).await?.kv().await })
    }

    fn objects<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Objects>> {
        Box::pin(async move { NatsSession::open(url).await?.objects().await })
    }

    fn queues<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Queues>> {
        Box::pin(async move { NatsSession::open(url).await?.queues().await })
    }
}

/// Add `nats://`, `tls://` and `nats+tls://` to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(NatsConnector);
}
