//! plane-fs-objstore: the objects plane on a shared filesystem or a cloud
//! object store through [`object_store`], and a kv plane on a shared
//! directory, so a brokerless deployment needs no server for large payloads
//! or for discovery.
//!
#![doc = include_str!("../../../docs/fs.md")]
//!
//! # Example
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> plane_core::Result<()> {
//! # let dir = tempfile::tempdir().expect("temp dir");
//! let mut registry = plane_core::Registry::new();
//! plane_fs_objstore::register(&mut registry);
//! let url = format!("file://{}", dir.path().display());
//!
//! let objects = registry.objects(&url).await?;
//! let models = objects.create_bucket("models").await?;
//! models.put("resnet/weights.bin", vec![0u8; 1024]).await?;
//! assert_eq!(models.head("resnet/weights.bin").await?.size, 1024);
//!
//! let kv = registry.kv(&url).await?;
//! let config = kv
//!     .create_bucket(plane_core::kv::BucketConfig::new("config"))
//!     .await?;
//! let rev = config.create("leader", "node-a").await?;
//! config.update("leader", "node-b", rev).await?;
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod config;
mod error;
pub mod kv;
mod layout;
pub mod objects;

use std::sync::OnceLock;

use futures_util::future::BoxFuture;
use url::Url;

use plane_core::registry::{Connector, Registry};
use plane_core::{Kv, Objects, Result};

pub use config::FsConfig;
pub use kv::{kv, DirKv};
pub use objects::{objects, FsObjects};

/// The backend name used in errors and reports.
pub const NAME: &str = "fs";

/// The connector for `file://` and, by feature, the cloud schemes.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsConnector;

fn schemes() -> &'static [&'static str] {
    static SCHEMES: OnceLock<Vec<&'static str>> = OnceLock::new();
    SCHEMES.get_or_init(|| {
        let mut s = vec!["file"];
        if cfg!(feature = "aws") {
            s.extend(["s3", "s3a"]);
        }
        if cfg!(feature = "gcp") {
            s.push("gs");
        }
        if cfg!(feature = "azure") {
            s.extend(["az", "azure", "abfs", "abfss", "adl"]);
        }
        if cfg!(feature = "http") {
            s.extend(["http", "https"]);
        }
        s
    })
}

impl Connector for FsConnector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn schemes(&self) -> &'static [&'static str] {
        schemes()
    }

    fn kv<'a>(&'a self, url: &'a Url, _registry: &'a Registry) -> BoxFuture<'a, Result<Kv>> {
        Box::pin(kv(url))
    }

    fn objects<'a>(
        &'a self,
        url: &'a Url,
        _registry: &'a Registry,
    ) -> BoxFuture<'a, Result<Objects>> {
        Box::pin(objects(url))
    }
}

/// Add `file://` (and the cloud schemes of the enabled features) to `registry`.
pub fn register(registry: &mut Registry) {
    registry.register(FsConnector);
}
