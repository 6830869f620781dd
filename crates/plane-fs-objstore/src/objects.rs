//! The objects plane over any [`ObjectStore`].
//!
//! # How an object is stored
//!
//! An upload streams into a fresh, immutable content blob `<bucket>/d/<id>`
//! through object_store's multipart upload, hashing as it goes. Only once the
//! blob is complete is the object's manifest `<bucket>/m/<encoded name>.o`
//! written, in one atomic put: a small JSON document holding the name, the
//! blob id, size, SHA-256 digest, completion time and user metadata. The
//! manifest *is* the object's visibility: until it is written nothing can
//! be seen, and replacing it swaps content and metadata together.
//!
//! This design answers the requirements that a plain "file plus sidecar" pair
//! cannot:
//!
//! - **visible only when complete**: a failed, dropped or killed upload leaves
//!   at most an unreferenced blob (or object_store's own staging file), never
//!   a manifest;
//! - **no torn objects**: two concurrent writers each write their own blob and
//!   then race on the manifest; the manifest put is atomic (a rename on a
//!   filesystem, a single PUT on a cloud store), so the last complete writer
//!   wins with its own content, size, digest and metadata;
//! - **metadata everywhere**: object_store's attributes are not kept by the
//!   local filesystem store, so metadata lives in the manifest on every store.
//!
//! A replaced or deleted object's blob is removed after its manifest is gone.
//! A reader that loses that race (it read the old manifest just before the
//! blob went) re-reads the manifest and follows the new one. Blobs orphaned
//! by a crash between blob and manifest, or by two writers replacing the same
//! object at the same instant, are invisible and are removed by
//! [`FsObjects::sweep`].

use crate::error::store_err;
use object_store::ObjectStoreScheme;
use plane_core::registry::QueryParams;
use plane_core::Objects;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};
use url::Url;

use bytes::Bytes;
use futures_util::stream::{Stream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};

use plane_core::objects::{
    ByteStream, Digester, DynObjectBucketBackend, ObjectBucketBackend, ObjectInfo, ObjectMeta,
    ObjectReader, ObjectsBackend, ObjectsCapabilities,
};
use plane_core::{Error, ErrorKind, Result};

use crate::layout;

/// How many times a read follows a manifest whose blob was replaced under it.
const READ_ATTEMPTS: usize = 5;
/// Manifests fetched concurrently while listing.
const LIST_CONCURRENCY: usize = 16;
/// Manifest format version.
const MANIFEST_VERSION: u32 = 1;

/// What a manifest records.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    name: String,
    blob: String,
    size: u64,
    digest: String,
    modified: SystemTime,
    meta: ObjectMeta,
}

impl Manifest {
    fn info(&self) -> ObjectInfo {
        ObjectInfo {
            name: self.name.clone(),
            size: self.size,
            digest: self.digest.clone(),
            modified: self.modified,
            meta: self.meta.clone(),
        }
    }
}

/// Tuning of uploads, from the URL query (see the crate docs).
#[derive(Debug, Clone)]
pub(crate) struct UploadConfig {
    pub(crate) chunk_size: usize,
    pub(crate) concurrency: usize,
}

struct Shared {
    store: Arc<dyn ObjectStore>,
    upload: UploadConfig,
    /// The root directory when the store is the local filesystem: deleting a
    /// bucket then removes its directory tree in one rename.
    local_root: Option<std::path::PathBuf>,
}

/// The objects backend over an object_store [`ObjectStore`]. Cheap to clone:
/// keep a clone to call [`sweep`](FsObjects::sweep) beside the [`Objects`]
/// handle made from it.
#[derive(Clone)]
pub struct FsObjects {
    shared: Arc<Shared>,
    caps: ObjectsCapabilities,
}

impl std::fmt::Debug for FsObjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsObjects")
            .field("store", &self.shared.store.to_string())
            .finish()
    }
}

impl FsObjects {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        upload: UploadConfig,
        max_object_size: u64,
        local_root: Option<std::path::PathBuf>,
    ) -> Self {
        let mut caps = ObjectsCapabilities::default();
        caps.metadata = true;
        caps.list = true;
        caps.max_object_size = max_object_size;
        FsObjects {
            shared: Arc::new(Shared {
                store,
                upload,
                local_root,
            }),
            caps,
        }
    }

    /// Remove content blobs of `bucket` that no manifest references and that
    /// are older than `grace`; returns how many were removed.
    ///
    /// Such blobs are left by a process that died between finishing an upload
    /// and writing its manifest, or by two writers replacing the same object
    /// at the same instant. They are never visible; this only reclaims space.
    /// `grace` must exceed the longest upload still in progress, since an
    /// upload's blob is unreferenced until its manifest is written.
    ///
    /// On the local filesystem this also removes object_store's staging files
    /// (`<file>#<n>`) of uploads whose process was killed, once they have not
    /// been written to for `grace`.
    pub async fn sweep(&self, bucket: &str, grace: Duration) -> Result<usize> {
        let mut removed = 0;
        if let Some(root) = &self.shared.local_root {
            let dir = root.join(bucket);
            removed += tokio::task::spawn_blocking(move || sweep_staging(&dir, grace))
                .await
                .map_err(|e| Error::new(ErrorKind::Other, "sweep task failed").with_source(e))?;
        }
        let store = &self.shared.store;
        let mut referenced = std::collections::HashSet::new();
        let mut manifests = store.list(Some(&layout::manifests(bucket)));
        while let Some(meta) = manifests.next().await {
            let meta = meta.map_err(store_err)?;
            if layout::name_of_manifest(bucket, &meta.location).is_none() {
                continue;
            }
            match read_manifest_at(store.as_ref(), &meta.location).await {
                Ok(m) => {
                    referenced.insert(m.blob);
                }
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let cutoff = SystemTime::now()
            .checked_sub(grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let prefix = layout::blobs(bucket);
        let mut blobs = store.list(Some(&prefix));
        while let Some(meta) = blobs.next().await {
            let meta = meta.map_err(store_err)?;
            let Some(id) = meta.location.filename() else {
                continue;
            };
            if referenced.contains(id) || SystemTime::from(meta.last_modified) > cutoff {
                continue;
            }
            match store.delete(&meta.location).await {
                Ok(()) => removed += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(e)),
            }
        }
        Ok(removed)
    }
}

/// Remove staging files (`name#digits`) under `dir` not modified for `grace`.
fn sweep_staging(dir: &std::path::Path, grace: Duration) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = entry.metadata() else {
            continue;
        };
        if meta.is_dir() {
            removed += sweep_staging(&path, grace);
            continue;
        }
        let name = entry.file_name();
        let staging = name
            .to_str()
            .and_then(|n| n.rsplit_once('#'))
            .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        let idle = meta
            .modified()
            .ok()
            .and_then(|m| m.elapsed().ok())
            .is_some_and(|age| age >= grace);
        if staging && idle && std::fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    removed
}

async fn read_manifest_at(store: &dyn ObjectStore, path: &Path) -> Result<Manifest> {
    let bytes = store
        .get(path)
        .await
        .map_err(store_err)?
        .bytes()
        .await
        .map_err(store_err)?;
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| {
        Error::new(
            ErrorKind::Decode,
            format!("object manifest `{path}` is malformed"),
        )
        .with_source(e)
    })?;
    if m.version != MANIFEST_VERSION {
        return Err(Error::new(
            ErrorKind::Decode,
            format!("object manifest `{path}` has unknown version {}", m.version),
        ));
    }
    Ok(m)
}

impl ObjectsBackend for FsObjects {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &ObjectsCapabilities {
        &self.caps
    }

    async fn create_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        let store = &self.shared.store;
        let marker = layout::marker(name);
        // Create, not overwrite: an existing bucket is opened as it is.
        let opts = object_store::PutOptions::from(object_store::PutMode::Create);
        match store
            .put_opts(&marker, PutPayload::from_static(b"{\"version\":1}\n"), opts)
            .await
        {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => {}
            // Stores without conditional puts: an overwrite of the marker is
            // harmless, it carries no state.
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                store
                    .put(&marker, PutPayload::from_static(b"{\"version\":1}\n"))
                    .await
                    .map_err(store_err)?;
            }
            Err(e) => return Err(store_err(e)),
        }
        Ok(self.bucket(name))
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        self.shared
            .store
            .head(&layout::marker(name))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    Error::new(ErrorKind::NotFound, format!("no object bucket `{name}`"))
                }
                e => store_err(e),
            })?;
        Ok(self.bucket(name))
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        let store = &self.shared.store;
        store
            .delete(&layout::marker(name))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    Error::new(ErrorKind::NotFound, format!("no object bucket `{name}`"))
                }
                e => store_err(e),
            })?;
        if let Some(root) = &self.shared.local_root {
            // One rename takes the whole tree out of sight, then it is removed
            // at leisure; a crash in between leaves only a hidden directory.
            let dir = root.join(name);
            let trash = root.join(format!(".plane-trash-{}", uuid::Uuid::now_v7().simple()));
            return tokio::task::spawn_blocking(move || match std::fs::rename(&dir, &trash) {
                Ok(()) => std::fs::remove_dir_all(&trash),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            })
            .await
            .map_err(|e| Error::new(ErrorKind::Other, "bucket removal task failed").with_source(e))?
            .map_err(|e| Error::new(ErrorKind::Other, "cannot remove bucket").with_source(e));
        }
        let all = store
            .list(Some(&layout::bucket_prefix(name)))
            .map_ok(|m| m.location)
            .boxed();
        store
            .delete_stream(all)
            .try_collect::<Vec<_>>()
            .await
            .map_err(store_err)?;
        Ok(())
    }
}

impl FsObjects {
    fn bucket(&self, name: &str) -> Arc<dyn DynObjectBucketBackend> {
        Arc::new(FsObjectBucket {
            shared: self.shared.clone(),
            bucket: name.to_owned(),
        })
    }
}

struct FsObjectBucket {
    shared: Arc<Shared>,
    bucket: String,
}

/// Deletes a completed but not yet published blob if the put is abandoned
/// (an error, or the put future dropped) between the two steps.
struct BlobGuard {
    store: Arc<dyn ObjectStore>,
    path: Option<Path>,
}

impl BlobGuard {
    fn disarm(&mut self) {
        self.path = None;
    }
}

impl Drop for BlobGuard {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let store = self.store.clone();
                rt.spawn(async move {
                    let _ = store.delete(&path).await;
                });
            }
        }
    }
}

impl FsObjectBucket {
    fn store(&self) -> &dyn ObjectStore {
        self.shared.store.as_ref()
    }

    async fn manifest(&self, name: &str) -> Result<Manifest> {
        read_manifest_at(self.store(), &layout::manifest(&self.bucket, name))
            .await
            .map_err(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Error::new(ErrorKind::NotFound, format!("no object `{name}`"))
                } else {
                    e
                }
            })
    }

    async fn stream_blob(
        &self,
        m: Manifest,
    ) -> Result<std::result::Result<ObjectReader, Manifest>> {
        let path = layout::blob(&self.bucket, &m.blob);
        match self.store().get(&path).await {
            Ok(result) => {
                let stream = result.into_stream().map_err(store_err).boxed();
                Ok(Ok(ObjectReader {
                    info: m.info(),
                    stream: Verified::new(stream, m.size, m.digest).boxed(),
                }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(Err(m)),
            Err(e) => Err(store_err(e)),
        }
    }
}

impl ObjectBucketBackend for FsObjectBucket {
    async fn put(&self, name: &str, meta: ObjectMeta, mut data: ByteStream) -> Result<ObjectInfo> {
        let store = self.shared.store.clone();
        // A handle that outlived its bucket must not quietly recreate it.
        store
            .head(&layout::marker(&self.bucket))
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => Error::new(
                    ErrorKind::NotFound,
                    format!("no object bucket `{}`", self.bucket),
                ),
                e => store_err(e),
            })?;
        let id = uuid::Uuid::now_v7().simple().to_string();
        let blob = layout::blob(&self.bucket, &id);
        let upload = store.put_multipart(&blob).await.map_err(store_err)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, self.shared.upload.chunk_size);
        let mut digester = Digester::new();
        // Parts in flight are bounded, so memory is about
        // chunk_size × (concurrency + 1) whatever the object's size.
        let fed: Result<()> = async {
            while let Some(chunk) = data.next().await {
                let chunk = chunk?;
                digester.update(&chunk);
                writer
                    .wait_for_capacity(self.shared.upload.concurrency)
                    .await
                    .map_err(store_err)?;
                writer.put(chunk);
            }
            Ok(())
        }
        .await;
        if let Err(e) = fed {
            // Best effort: dropping the writer also discards a local upload.
            let _ = writer.abort().await;
            return Err(e);
        }
        writer.finish().await.map_err(store_err)?;
        let mut guard = BlobGuard {
            store: store.clone(),
            path: Some(blob),
        };

        let previous = match self.manifest(name).await {
            Ok(m) => Some(m.blob),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            // An unreadable old manifest is replaced; its blob is left to sweep.
            Err(e) if e.kind() == ErrorKind::Decode => None,
            Err(e) => return Err(e),
        };
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            name: name.to_owned(),
            blob: id,
            size: digester.size(),
            digest: digester.finish(),
            modified: SystemTime::now(),
            meta,
        };
        let json = serde_json::to_vec(&manifest).map_err(|e| {
            Error::new(ErrorKind::Other, "cannot encode object manifest").with_source(e)
        })?;
        store
            .put(
                &layout::manifest(&self.bucket, name),
                PutPayload::from(json),
            )
            .await
            .map_err(store_err)?;
        guard.disarm();
        if let Some(old) = previous.filter(|old| *old != manifest.blob) {
            // The old content is unreachable now; a reader still streaming it
            // from a local file keeps its open handle.
            let _ = store.delete(&layout::blob(&self.bucket, &old)).await;
        }
        Ok(manifest.info())
    }

    async fn get(&self, name: &str) -> Result<ObjectReader> {
        let mut last = None;
        for _ in 0..READ_ATTEMPTS {
            let m = self.manifest(name).await?;
            match self.stream_blob(m).await? {
                Ok(reader) => return Ok(reader),
                // Replaced between reading the manifest and opening the blob:
                // follow the new manifest.
                Err(stale) => last = Some(stale.blob),
            }
        }
        Err(Error::new(
            ErrorKind::Other,
            format!(
                "object `{name}` kept changing while being opened (last blob {})",
                last.unwrap_or_default()
            ),
        ))
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        Ok(self.manifest(name).await?.info())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let m = self.manifest(name).await?;
        match self
            .store()
            .delete(&layout::manifest(&self.bucket, name))
            .await
        {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("no object `{name}`"),
                ))
            }
            Err(e) => return Err(store_err(e)),
        }
        let _ = self
            .store()
            .delete(&layout::blob(&self.bucket, &m.blob))
            .await;
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = layout::list_prefix(&self.bucket, prefix);
        let store = self.shared.store.clone();
        let bucket = self.bucket.clone();
        let wanted: Vec<Path> = store
            .list(Some(&dir))
            .map_err(store_err)
            .try_filter_map(|meta| {
                let hit = layout::name_of_manifest(&bucket, &meta.location)
                    .filter(|name| name.starts_with(prefix))
                    .map(|_| meta.location);
                futures_util::future::ready(Ok(hit))
            })
            .try_collect()
            .await?;
        let mut found: BTreeMap<String, ObjectInfo> = BTreeMap::new();
        let mut reads = futures_util::stream::iter(wanted)
            .map(|path| {
                let store = store.clone();
                async move { read_manifest_at(store.as_ref(), &path).await }
            })
            .buffer_unordered(LIST_CONCURRENCY);
        while let Some(m) = reads.next().await {
            match m {
                Ok(m) => {
                    found.insert(m.name.clone(), m.info());
                }
                // Deleted between listing and reading.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(found.into_values().collect())
    }
}

/// Passes content through, checking its size and digest at the end: a blob
/// that was damaged on disk fails the read instead of returning wrong bytes.
struct Verified {
    inner: ByteStream,
    digester: Option<Digester>,
    size: u64,
    digest: String,
}

impl Verified {
    fn new(inner: ByteStream, size: u64, digest: String) -> Self {
        Verified {
            inner,
            digester: Some(Digester::new()),
            size,
            digest,
        }
    }
}

impl Stream for Verified {
    type Item = Result<Bytes>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let Some(digester) = this.digester.as_mut() else {
            return Poll::Ready(None);
        };
        match this.inner.poll_next_unpin(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                digester.update(&chunk);
                if digester.size() > this.size {
                    this.digester = None;
                    return Poll::Ready(Some(Err(Error::new(
                        ErrorKind::Other,
                        "stored object is longer than its manifest says",
                    ))));
                }
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.digester = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                let Some(digester) = this.digester.take() else {
                    return Poll::Ready(None);
                };
                let (size, digest) = (digester.size(), digester.finish());
                if size != this.size || digest != this.digest {
                    return Poll::Ready(Some(Err(Error::new(
                        ErrorKind::Other,
                        format!(
                            "stored object does not match its manifest: {size} bytes {digest}, \
                             expected {} bytes {}",
                            this.size, this.digest
                        ),
                    ))));
                }
                Poll::Ready(None)
            }
        }
    }
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
            crate::error::config_err(format!("unsupported object store url `{url}`")).with_source(e)
        })?;
        let mut q = QueryParams::new(url)?;
        let config = crate::config::FsConfig::take(&mut q)?;
        let upload = UploadConfig {
            chunk_size: config.chunk_size,
            concurrency: config.upload_concurrency,
        };
        if scheme == ObjectStoreScheme::Local {
            q.finish()?;
            let root = crate::config::local_root(url)?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)
                .map_err(store_err)?
                .with_automatic_cleanup(true)
                .with_fsync(config.fsync);
            return Ok(FsObjects::new(
                Arc::new(store),
                upload,
                config.max_object_size,
                Some(root),
            ));
        }
        let store = crate::config::cloud::store(url, &scheme, q)?;
        Ok(FsObjects::new(store, upload, config.max_object_size, None))
    }
}
