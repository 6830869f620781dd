//! The configuration of the fs planes: one struct read from a URL's query
//! (keys in `docs/fs.md`, the crate docs), checked by one
//! [`FsConfig::validate`], and the cloud stores built from a URL.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};

use crate::error::config_err;

/// Configuration from a URL's query (the keys are in the crate docs).
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
    pub(crate) fn take(q: &mut QueryParams) -> Result<Self> {
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
        config.validate()?;
        Ok(config)
    }

    /// Check the configuration however it was built: reading a URL calls
    /// this, and so does every plane built from a configuration.
    ///
    /// # Errors
    /// `InvalidConfig` naming the settings that must be positive.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_size == 0
            || self.upload_concurrency == 0
            || self.max_value == 0
            || self.max_object_size == 0
            || self.poll.is_zero()
        {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "chunk_size, upload_concurrency, max_object_size, max_value and poll_ms must be positive",
            ));
        }
        Ok(())
    }

    /// Read the configuration of a `file://` URL (no other keys allowed).
    pub fn from_url(url: &Url) -> Result<Self> {
        let mut q = QueryParams::new(url)?;
        let config = FsConfig::take(&mut q)?;
        q.finish()?;
        Ok(config)
    }
}

/// The root directory of a `file://` URL, created if missing.
pub(crate) fn local_root(url: &Url) -> Result<PathBuf> {
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

pub(crate) mod cloud {
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

    pub(crate) fn store(
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
