//! plane: one API for request/reply, events, key-value, objects, work queues
//! and discovery, over whichever transport a URL names.
//!
//! This facade re-exports [`plane_core`] and builds a [`Registry`] with every
//! backend compiled in. Backends are cargo features; the in-memory reference
//! backend (`mem://`) is always present.
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

/// A registry with every backend compiled into this build.
///
/// | feature | schemes |
/// |---|---|
/// | (always) | `mem://` |
/// | `fs` (default) | `file://`; `s3://`, `gs://`, `az://`, `https://` with `fs-aws`, `fs-gcp`, `fs-azure`, `fs-http` |
pub fn registry() -> Registry {
    #[allow(unused_mut)]
    let mut registry = Registry::with_defaults();
    #[cfg(feature = "fs")]
    plane_fs_objstore::register(&mut registry);
    registry
}

#[cfg(feature = "fs")]
pub use plane_fs_objstore as fs;
