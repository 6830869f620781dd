//! plane-core: the transport-neutral heart of plane.
//!
//! Applications code against five planes plus discovery, each a cheap,
//! cloneable handle over a backend chosen at run time by URL:
//!
//! | plane | handle | backend trait |
//! |---|---|---|
//! | request/reply | [`Requests`] | [`request::RequestBackend`] |
//! | events | [`Events`] | [`events::EventsBackend`] |
//! | key-value | [`Kv`] → [`kv::Bucket`] | [`kv::KvBackend`], [`kv::KvBucketBackend`] |
//! | objects | [`Objects`] → [`objects::ObjectBucket`] | [`objects::ObjectsBackend`], [`objects::ObjectBucketBackend`] |
//! | work queues | [`Queues`] → [`queue::WorkQueue`] | [`queue::QueuesBackend`], [`queue::QueueBackend`] |
//! | discovery | [`discovery::Discovery`] | built on any kv bucket |
//!
//! Every backend trait has an object-safe `Dyn…` twin with a blanket
//! implementation; handles hold `Arc<dyn Dyn…>`, so no backend type appears in
//! this crate's API. [`Registry`] maps URL schemes to backends; no backend is
//! built in: the in-memory reference backend is the `plane-mem` crate
//! (`mem://`), and the `plane` facade registers every compiled-in backend.
//!
//! ```
//! use plane_core::{request::unary_fn, Registry};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! let registry = plane_mem::registry();
//! let requests = registry.requests("mem://doc").await?;
//! let _server = requests
//!     .serve("echo", unary_fn(|req: plane_core::request::Request| async move { Ok(req.message) }))
//!     .await?;
//! let reply = requests.call("echo", "hi").await?;
//! assert_eq!(reply.to_bytes(), "hi");
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod ack;
pub mod capabilities;
pub mod discovery;
pub mod error;
pub mod events;
pub mod health;
pub mod ids;
pub mod kv;
pub mod message;
pub mod metrics;
pub mod objects;
pub mod offload;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod request;
pub mod session;
pub mod subject;
pub mod suggest;
pub mod trace;
pub mod wire;

pub use error::{Error, ErrorKind, Result};
pub use events::Events;
pub use kv::Kv;
pub use message::{Body, Headers, Message};
pub use objects::Objects;
pub use queue::Queues;
pub use registry::Registry;
pub use request::Requests;
pub use session::Session;

/// Compile-time proof that every backend trait's twin is object safe.
#[allow(dead_code, clippy::too_many_arguments)]
fn _object_safety(
    _: &dyn request::DynRequestBackend,
    _: &dyn events::DynEventsBackend,
    _: &dyn kv::DynKvBackend,
    _: &dyn kv::DynKvBucketBackend,
    _: &dyn objects::DynObjectsBackend,
    _: &dyn objects::DynObjectBucketBackend,
    _: &dyn queue::DynQueuesBackend,
    _: &dyn queue::DynQueueBackend,
    _: &dyn registry::Connector,
) {
}
