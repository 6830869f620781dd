//! plane: one API for request/reply, events, key-value, objects, work queues
//! and discovery, over whichever transport a URL names.
//!
//! This facade re-exports [`plane_core`] and builds a [`Registry`] with every
//! backend compiled in. Backends are cargo features; the in-memory reference
//! backend (`mem://`) is always present.
//!
//! [`config`] reads each plane's URL and the client and server policies from
//! a TOML file and `PLANE_…` environment variables (`docs/config.md`).
//!
//! Optional extras, also features (not default): `observe` re-exports
//! `plane-observe` as `plane::observe` (a Prometheus `/metrics` and
//! `/healthz` endpoint), and `tower` adds `plane::tower`, an adapter between
//! plane's request plane and `tower::Service`.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane::Result<()> {
//! let registry = plane::registry();
//! let queues = registry.queues("mem://facade-doc").await?;
//! let jobs = queues.create_queue(plane::queue::QueueConfig::new("resize")).await?;
//! jobs.enqueue("image-42").await?;
//! let job = jobs.receive(std::time::Duration::from_secs(1)).await?.expect("a job");
//! job.ack().await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use plane_core::*;
/// The in-memory reference backend (`mem://`), always compiled in.
pub use plane_mem as mem;

/// A registry with every backend compiled into this build.
///
/// | feature | schemes |
/// |---|---|
/// | (always) | `mem://` |
/// | `nats` (default) | `nats://`, `tls://`, `nats+tls://` |
/// | `fs` (default) | `file://`; `s3://`, `gs://`, `az://`, `https://` with `fs-aws`, `fs-gcp`, `fs-azure`, `fs-http` |
/// | `quic` (default) | `quic://` |
/// | `zmq` (default) | `zmq+tcp://`, `zmq+ipc://` |
/// | `tcp` (default) | `tcp://` |
/// | `http` (default) | `h2c://`, `h2://` |
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = plane_mem::registry();
    #[cfg(feature = "nats")]
    plane_nats::register(&mut registry);
    #[cfg(feature = "fs")]
    plane_fs_objstore::register(&mut registry);
    #[cfg(feature = "quic")]
    plane_quic::register(&mut registry);
    #[cfg(feature = "zmq")]
    plane_zmq::register(&mut registry);
    #[cfg(feature = "tcp")]
    plane_tcp::register(&mut registry);
    #[cfg(feature = "http")]
    plane_http::register(&mut registry);
    registry
}

pub mod config;
#[cfg(feature = "tower")]
pub mod tower;

#[cfg(feature = "fs")]
pub use plane_fs_objstore as fs;
#[cfg(feature = "http")]
pub use plane_http as http;
#[cfg(feature = "nats")]
pub use plane_nats as nats;
#[cfg(feature = "observe")]
pub use plane_observe as observe;
#[cfg(feature = "quic")]
pub use plane_quic as quic;
#[cfg(feature = "tcp")]
pub use plane_tcp as tcp;
#[cfg(feature = "zmq")]
pub use plane_zmq as zmq;
