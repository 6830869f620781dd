//! plane-fs-objstore: the objects plane on a shared filesystem or a cloud
//! object store through [`object_store`], and a kv plane on a shared
//! directory, so a brokerless deployment needs no server for large payloads
//! or for discovery.
//!
//! # URLs
//!
//! | URL | objects | kv | cargo feature |
//! |---|---|---|---|
//! | `file:///srv/plane` | buckets under `/srv/plane/<bucket>/` | buckets under `/srv/plane/.plane-kv/<bucket>/` | always |
//! | `s3://bucket/prefix` (also `s3a`) | Amazon S3 and compatible stores | refused (`Unsupported`) | `aws` |
//! | `gs://bucket/prefix` | Google Cloud Storage | refused | `gcp` |
//! | `az://container/prefix` (also `azure`, `abfs`, `abfss`, `adl`) | Azure Blob Storage | refused | `azure` |
//! | `http://host/prefix`, `https://…` | a WebDAV-style HTTP server | refused | `http` |
//!
//! The URL is parsed by object_store itself ([`object_store::ObjectStoreScheme`]
//! and [`object_store::parse_url_opts`]); its path is the root prefix inside the
//! store. For `file://` the root directory is created if missing. The kv plane
//! needs a real directory with working file locks, so it is served only for
//! `file://`.
//!
//! ## Query keys
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `chunk_size` | multipart upload part size in bytes (≥ 5 MiB for S3) | 5 MiB |
//! | `upload_concurrency` | parts uploaded at once; memory per upload ≈ `chunk_size × (upload_concurrency + 1)` | 2 |
//! | `max_object_size` | largest object in bytes | unbounded |
//! | `max_value` | largest kv value in bytes | 1 MiB |
//! | `poll_ms` | kv watch polling interval | 100 |
//! | `fsync` | flush files (and, for kv, directories) before a write returns | `true` |
//! | `env` | cloud schemes only: also read the store's configuration keys from the process environment (`AWS_REGION`, …) | `false` |
//!
//! Any other key of a cloud URL must be one of that store's configuration keys
//! (for example `aws_region`, `aws_endpoint`, `google_service_account`,
//! `azure_storage_account_name`) and is handed to object_store's builder;
//! an unknown key is refused with `InvalidConfig` rather than ignored.
//! Credentials are never picked up from the environment unless `env=true` is
//! given.
//!
//! # Guarantees
//!
//! Objects: an object becomes visible only once its upload completed; a
//! failed, dropped or killed upload leaves nothing visible, and concurrent
//! writers of one name never produce a torn object (see [`mod@objects`] for the
//! manifest-and-blob layout that makes this hold on every store). Content is
//! hashed with SHA-256 while streaming, stored in the manifest, and verified
//! again while reading. Uploads stream through object_store's multipart upload
//! with bounded buffering, so memory does not grow with object size.
//!
//! Kv: compare-and-swap is atomic between threads and between processes
//! sharing the directory (see [`mod@kv`]).
//!
//! # Filesystems the kv plane is safe on
//!
//! The kv relies on two things from the filesystem: `rename` atomically
//! replaces a file, and `flock` (what [`std::fs::File::lock`] uses on Unix) is
//! an exclusive lock between every process that uses the directory.
//!
//! - **Safe:** local filesystems (ext4, xfs, btrfs, zfs, tmpfs, APFS, NTFS),
//!   shared between processes on one host, including containers that
//!   bind-mount the same host directory.
//! - **NFS:** only NFSv4 (or v3 with a working `lockd`) on Linux ≥ 2.6.12,
//!   where the client maps `flock` to byte-range locks the server enforces.
//!   Mounts with `nolock` or `local_lock=all` make the lock local to one
//!   client and CAS is then **not** safe between hosts. Attribute caching can
//!   delay what watchers and readers on another host see (`actimeo`).
//! - **Not safe:** SMB/CIFS without byte-range lock support, FUSE filesystems
//!   that ignore locks (many cloud-bucket mounts such as s3fs), and any
//!   filesystem without atomic rename. Use a broker-backed kv there.
//!
//! The objects plane needs only atomic rename from a local or network
//! filesystem (and nothing from a cloud store), so it is safe on NFS as well.
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

pub mod kv;
mod layout;
pub mod objects;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use object_store::ObjectStoreScheme;
use url::Url;

use plane_core::registry::{Connector, QueryParams, Registry};
use plane_core::{Error, ErrorKind, Kv, Objects, Result};

pub use kv::DirKv;
pub use objects::FsObjects;

/// The backend name used in errors and reports.
pub const NAME: &str = "fs";

/// Configuration from a URL's query (see the crate docs for the keys).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// Multipart upload part size in bytes.
    pub chunk_size: usize,
    /// Parts of one upload in flight at once.
    pub upload_concurrency: usize,
    /// Largest object in bytes.
    pub max_object_size: u64,
    /// Largest kv value in bytes.
    pub max_value: usize,
    /// Kv watch polling interval.
    pub poll: Duration,
    /// Flush writes to stable storage before they return.
    pub fsync: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig {
            chunk_size: 5 * 1024 * 1024,
            upload_concurrency: 2,
            max_object_size: u64::MAX,
            max_value: 1024 * 1024,
            poll: Duration::from_millis(100),
            fsync: true,
        }
    }
}

impl FsConfig {
    /// Take this crate's keys from `q`, leaving any others.
    fn take(q: &mut QueryParams) -> Result<Self> {
        let d = FsConfig::default();
        let config = FsConfig {
            chunk_size: q.take("chunk_size")?.unwrap_or(d.chunk_size),
            upload_concurrency: q
                .take("upload_concurrency")?
                .unwrap_or(d.upload_concurrency),
            max_object_size: q.take("max_object_size")?.unwrap_or(d.max_object_size),
            max_value: q.take("max_value")?.unwrap_or(d.max_value),
            poll: q.take_millis("poll_ms")?.unwrap_or(d.poll),
            fsync: q.take("fsync")?.unwrap_or(d.fsync),
        };
        if config.chunk_size == 0
            || config.upload_concurrency == 0
            || config.max_value == 0
            || config.max_object_size == 0
            || config.poll.is_zero()
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "chunk_size, upload_concurrency, max_object_size, max_value and poll_ms must be positive",
            ));
        }
        Ok(config)
    }

    /// Read the configuration of a `file://` URL (no other keys allowed).
    pub fn from_url(url: &Url) -> Result<Self> {
        let mut q = QueryParams::new(url)?;
        let config = FsConfig::take(&mut q)?;
        q.finish()?;
        Ok(config)
    }
}

fn config_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, msg.into())
}

/// The root directory of a `file://` URL, created if missing.
fn local_root(url: &Url) -> Result<PathBuf> {
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(config_err(format!(
            "file urls take no host, got `{url}`; use file:///absolute/path"
        )));
    }
    let root = url
        .to_file_path()
        .map_err(|()| config_err(format!("`{url}` is not a local directory")))?;
    std::fs::create_dir_all(&root).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!("cannot create root directory `{}`", root.display()),
        )
        .with_source(e)
    })?;
    Ok(root)
}

/// Build the objects plane for `url`.
pub async fn objects(url: &Url) -> Result<Objects> {
    Ok(Objects::new(FsObjects::from_url(url).await?))
}

impl FsObjects {
    /// The objects backend for `url`, for callers that want
    /// [`sweep`](FsObjects::sweep) as well as the plane
    /// (`Objects::new(backend.clone())`).
    pub async fn from_url(url: &Url) -> Result<FsObjects> {
        let (scheme, _) = ObjectStoreScheme::parse(url).map_err(|e| {
            config_err(format!("unsupported object store url `{url}`")).with_source(e)
        })?;
        let mut q = QueryParams::new(url)?;
        let config = FsConfig::take(&mut q)?;
        let upload = objects::UploadConfig {
            chunk_size: config.chunk_size,
            concurrency: config.upload_concurrency,
        };
        if scheme == ObjectStoreScheme::Local {
            q.finish()?;
            let root = local_root(url)?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(objects::store_err)?
                .with_automatic_cleanup(true)
                .with_fsync(config.fsync);
            return Ok(FsObjects::new(
                Arc::new(store),
                upload,
                config.max_object_size,
                Some(root),
            ));
        }
        let store = cloud::store(url, &scheme, q)?;
        Ok(FsObjects::new(store, upload, config.max_object_size, None))
    }
}

/// Build the kv plane for `url` (`file://` only).
pub async fn kv(url: &Url) -> Result<Kv> {
    if url.scheme() != "file" {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "the kv plane of backend `{NAME}` needs a shared directory (file://), not `{}://`",
                url.scheme()
            ),
        ));
    }
    let config = FsConfig::from_url(url)?;
    let root = local_root(url)?.join(".plane-kv");
    std::fs::create_dir_all(&root).map_err(|e| {
        Error::new(ErrorKind::InvalidConfig, "cannot create the kv directory").with_source(e)
    })?;
    Ok(Kv::new(DirKv::new(kv::DirKvConfig {
        root,
        poll: config.poll,
        fsync: config.fsync,
        max_value: config.max_value,
    })))
}

mod cloud {
    //! Cloud stores, built by object_store from the URL and its options.

    use std::sync::Arc;

    use object_store::{ObjectStore, ObjectStoreScheme};
    use url::Url;

    use plane_core::registry::QueryParams;
    use plane_core::{Error, ErrorKind, Result};

    /// Whether `key` (lower-case) is a configuration key of `scheme`'s store.
    #[allow(unused_variables)]
    fn known_key(scheme: &ObjectStoreScheme, key: &str) -> bool {
        match scheme {
            #[cfg(feature = "aws")]
            ObjectStoreScheme::AmazonS3 => {
                key.parse::<object_store::aws::AmazonS3ConfigKey>().is_ok()
            }
            #[cfg(feature = "gcp")]
            ObjectStoreScheme::GoogleCloudStorage => {
                key.parse::<object_store::gcp::GoogleConfigKey>().is_ok()
            }
            #[cfg(feature = "azure")]
            ObjectStoreScheme::MicrosoftAzure => {
                key.parse::<object_store::azure::AzureConfigKey>().is_ok()
            }
            #[cfg(feature = "http")]
            ObjectStoreScheme::Http => key.parse::<object_store::ClientConfigKey>().is_ok(),
            _ => false,
        }
    }

    fn feature_of(scheme: &ObjectStoreScheme) -> &'static str {
        match scheme {
            ObjectStoreScheme::AmazonS3 => "aws",
            ObjectStoreScheme::GoogleCloudStorage => "gcp",
            ObjectStoreScheme::MicrosoftAzure => "azure",
            _ => "http",
        }
    }

    pub(super) fn store(
        url: &Url,
        scheme: &ObjectStoreScheme,
        mut q: QueryParams,
    ) -> Result<Arc<dyn ObjectStore>> {
        // Which arms are `true` depends on the enabled features, so this is not
        // the constant pattern `matches!` is meant for.
        #[allow(clippy::match_like_matches_macro)]
        let enabled = match scheme {
            ObjectStoreScheme::AmazonS3 => cfg!(feature = "aws"),
            ObjectStoreScheme::GoogleCloudStorage => cfg!(feature = "gcp"),
            ObjectStoreScheme::MicrosoftAzure => cfg!(feature = "azure"),
            ObjectStoreScheme::Http => cfg!(feature = "http"),
            _ => false,
        };
        if !enabled {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!(
                    "`{}://` needs plane-fs-objstore's `{}` feature",
                    url.scheme(),
                    feature_of(scheme)
                ),
            ));
        }
        let from_env: bool = q.take("env")?.unwrap_or(false);
        let mut options: Vec<(String, String)> = Vec::new();
        if from_env {
            options.extend(std::env::vars().filter_map(|(k, v)| {
                let k = k.to_ascii_lowercase();
                known_key(scheme, &k).then_some((k, v))
            }));
        }
        // Every remaining query key must be one the store understands:
        // object_store itself ignores unknown keys, which would hide typos.
        let mut bare = url.clone();
        bare.set_query(None);
        for (k, _) in url.query_pairs() {
            let key = k.to_ascii_lowercase();
            if let Some(v) = q.take_str(&k) {
                if !known_key(scheme, &key) {
                    return Err(Error::new(
                        ErrorKind::InvalidConfig,
                        format!("unknown url query key `{k}` for `{}://`", url.scheme()),
                    ));
                }
                options.push((key, v));
            }
        }
        q.finish()?;
        let (store, prefix) = object_store::parse_url_opts(&bare, options).map_err(|e| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("cannot build store for `{bare}`"),
            )
            .with_source(e)
        })?;
        let store: Arc<dyn ObjectStore> = if prefix.as_ref().is_empty() {
            Arc::from(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(store)
    }
}

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
