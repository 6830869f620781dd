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
//! # URLs
//!
//! `nats://[user:password@]host[:port][?key=value&…]`; `tls://…` and
//! `nats+tls://…` are the same with TLS required. Query keys (unknown keys
//! are refused with `InvalidConfig`):
//!
//! | key | meaning |
//! |---|---|
//! | `servers` | more `host:port` addresses, comma-separated |
//! | `tls_required` | `true` to require TLS on a `nats://` URL |
//! | `tls_ca` | PEM file of CA certificates to trust |
//! | `tls_cert`, `tls_key` | PEM client certificate and key (mutual TLS) |
//! | `token` | authentication token |
//! | `user`, `password` | user and password (or in the URL's user info) |
//! | `nkey` | NKey seed |
//! | `creds` | credentials file (user JWT plus NKey seed) |
//! | `name` | client name shown in the server's monitoring |
//! | `connect_timeout_ms` | bound on the first connection, default 5000 |
//! | `heartbeat_ms` | request-plane heartbeat interval, default 1000 |
//! | `prefix` | first token of the subjects plane names, default `plane` |
//!
//! Wrong credentials fail with `Unauthorized`, an unreachable server with
//! `Connection` (within `connect_timeout_ms`).
//!
//! **Reconnects.** Once connected, a handle reconnects by itself for ever
//! (backing off up to one second between attempts) and resubscribes
//! everything; publishes made while disconnected are buffered by the client.
//! Calls keep their own deadlines, durable consumers and kv watches resume
//! where they were, and at-most-once events published while the connection
//! was down may be lost, as the mode says.
//!
//! # Subjects and headers (the wire protocol on NATS)
//!
//! Everything plane sends is a NATS message: plane's envelope is a few NATS
//! headers plus the raw body, so any NATS client can take part.
//!
//! **Request plane.** A call to endpoint `E` is published to `plane.req.E`
//! (all instances subscribe in queue group `plane.E`, so the broker picks
//! one) or, addressed to instance `I` (16 hex digits), to `plane.req.E.I`,
//! with the caller's inbox as reply subject (plane callers share one
//! wildcard inbox subscription per connection, one token per call). Call headers: the caller's own,
//! `plane-id` (UUID of the call), `plane-stream: 1` for streamed calls and
//! `plane-timeout-ms` (remaining budget). Each reply frame is one message to
//! the inbox with `plane-frame` set to `accepted` (prologue of a stream),
//! `data`, `last` (final reply plus end), `end`, `error` (with
//! `plane-error-code`, `plane-error-kind` and `plane-error-message`),
//! `heartbeat` (every `heartbeat_ms` while a plane caller's call is open) or
//! `abort` (the handler died before its end marker); `plane-ctl`, on every
//! frame that does not end the call, names the instance's control subject
//! `plane.ctl.E.I`. Stop, kill and flow-control
//! credit go there (or, before the instance is known, to `plane.ctl.E`) as
//! messages with `plane-frame: stop|kill|credit`, `plane-id` and
//! `plane-credit`. A caller that hears nothing for three heartbeats reports
//! `Disconnected`. Nobody serving an endpoint is NATS' no-responders status,
//! reported as `NoResponders` at once.
//!
//! So `nats req plane.req.echo hi` gets a unary handler's reply body, and a
//! plain NATS responder on `plane.req.echo` answers plane callers (its one
//! reply is the final reply).
//!
//! **Events.** An event's subject is the NATS subject; plane publishers add
//! `plane-publisher` (32 hex digits) and `plane-seq`. Worker groups are NATS
//! queue groups. Durable streams are JetStream streams of the same name over
//! the same subjects; durable consumers are JetStream durable pull consumers;
//! publish dedup uses `Nats-Msg-Id`. Dead-lettered events are published to
//! the dead-letter subject with `plane-dead-letter-subject` and
//! `plane-dead-letter-deliveries`.
//!
//! **Multipart bodies** travel as the concatenated parts plus a
//! `plane-parts` header listing their lengths.
//!
//! **Payload limit.** The request, event and queue planes declare the
//! server's `max_payload` minus [`request::HEADER_RESERVE`] bytes for the
//! headers plane adds; larger payloads fail with `PayloadTooLarge` before
//! anything is sent.
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
mod inbox;
pub mod kv;
pub mod mapping;
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
pub(crate) fn state(client: &async_nats::Client) -> plane_core::health::ConnectionState {
    use async_nats::connection::State;
    use plane_core::health::ConnectionState;
    match client.connection_state() {
        State::Connected => ConnectionState::Up,
        State::Pending => ConnectionState::Connecting,
        State::Disconnected => ConnectionState::Connecting,
    }
}

/// Wait until the server has processed everything this client sent so far.
///
/// `Client::flush` only empties the client's buffer; a subscription made
/// visible to *other* connections needs a round trip. A request to a subject
/// nobody serves is one: the server answers "no responders" only after it
/// handled the commands before it, in order.
pub(crate) async fn sync(client: &async_nats::Client) -> Result<()> {
    let probe = client.request(client.new_inbox(), bytes::Bytes::new());
    match tokio::time::timeout(std::time::Duration::from_secs(10), probe).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => Ok(()),
        Ok(Err(e)) => {
            Err(Error::new(ErrorKind::Connection, "nats round trip failed").with_source(e))
        }
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
}

impl NatsSession {
    async fn open(url: &Url) -> Result<Self> {
        let config = NatsConfig::from_url(url)?;
        let client = config.connect().await?;
        Ok(NatsSession { client, config })
    }
}

impl SessionBackend for NatsSession {
    fn name(&self) -> &'static str {
        NAME
    }

    fn requests(&self) -> BoxFuture<'_, Result<Requests>> {
        Box::pin(async move {
            Ok(Requests::new(NatsRequests::new(
                self.client.clone(),
                &self.config.prefix,
                self.config.heartbeat,
            )))
        })
    }

    fn events(&self) -> BoxFuture<'_, Result<Events>> {
        Box::pin(async move { Ok(Events::new(NatsEvents::new(self.client.clone()))) })
    }

    fn kv(&self) -> BoxFuture<'_, Result<Kv>> {
        Box::pin(async move { Ok(Kv::new(NatsKv::new(self.client.clone()))) })
    }

    fn objects(&self) -> BoxFuture<'_, Result<Objects>> {
        Box::pin(async move { Ok(Objects::new(NatsObjects::new(self.client.clone()))) })
    }

    fn queues(&self) -> BoxFuture<'_, Result<Queues>> {
        Box::pin(async move {
            Ok(Queues::new(NatsQueues::new(
                self.client.clone(),
                &self.config.prefix,
            )))
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
