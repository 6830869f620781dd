//! The objects plane: large blobs, streamed both ways.
//!
//! Objects live in buckets and are written and read as streams of [`Bytes`]
//! chunks, so an object can be far larger than memory. An object becomes
//! visible only once its upload completed: a failed, aborted or dropped upload
//! leaves nothing behind, and a concurrent reader sees either the old object
//! or the new one, never a mix.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub use crate::capabilities::ObjectsCapabilities;
use crate::error::{Error, ErrorKind, Result};
use crate::health::ConnectionState;
use crate::subject::validate_name;

/// A stream of object bytes.
pub type ByteStream = BoxStream<'static, Result<Bytes>>;

/// User metadata stored with an object.
#[non_exhaustive]
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectMeta {
    /// Media type.
    pub content_type: Option<String>,
    /// Free-form string pairs.
    pub attributes: BTreeMap<String, String>,
}

impl ObjectMeta {
    /// Set the media type.
    pub fn content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = Some(content_type.into());
        self
    }

    /// Add an attribute.
    pub fn attribute(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.attributes.insert(name.into(), value.into());
        self
    }

    /// Whether nothing is set.
    pub fn is_empty(&self) -> bool {
        self.content_type.is_none() && self.attributes.is_empty()
    }
}

/// What is known about a stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object name within its bucket.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// `sha256=` followed by the lower-case hex SHA-256 of the content.
    pub digest: String,
    /// When the object was completed, by the backend's clock.
    pub modified: SystemTime,
    /// User metadata.
    pub meta: ObjectMeta,
}

/// Incremental SHA-256 in plane's digest format, for backends and tests.
#[derive(Clone, Default)]
pub struct Digester {
    hasher: Sha256,
    size: u64,
}

impl Digester {
    /// A fresh digester.
    pub fn new() -> Self {
        Digester::default()
    }

    /// Feed a chunk.
    pub fn update(&mut self, chunk: &[u8]) {
        self.hasher.update(chunk);
        self.size += chunk.len() as u64;
    }

    /// Bytes fed so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The digest string, `sha256=<hex>`.
    pub fn finish(self) -> String {
        let hash = self.hasher.finalize();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256=");
        for b in hash {
            out.push_str(&format!("{b:02x}"));
        }
        out
    }

    /// The digest of a whole buffer.
    pub fn of(data: &[u8]) -> String {
        let mut d = Digester::new();
        d.update(data);
        d.finish()
    }
}

/// Validate an object name: 1 to 1024 bytes of UTF-8, no control
/// characters, no empty path segment, no `.` or `..` segment. Unicode, spaces
/// and `%` are fine; backends encode names as their storage requires.
pub fn validate_object_name(name: &str) -> Result<()> {
    let bad = |why: &str| {
        let shown: String = name.chars().take(64).collect();
        Err(Error::new(
            ErrorKind::InvalidArgument,
            format!("invalid object name `{shown}`: {why}"),
        ))
    };
    if name.is_empty() || name.len() > 1024 {
        return bad("must be 1 to 1024 bytes");
    }
    if name.chars().any(char::is_control) {
        return bad("control characters are not allowed");
    }
    if name
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return bad("empty, `.` and `..` path segments are not allowed");
    }
    Ok(())
}

/// A stored object being read.
pub struct ObjectReader {
    /// What is stored.
    pub info: ObjectInfo,
    /// The content, in chunks.
    pub stream: ByteStream,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader")
            .field("info", &self.info)
            .finish()
    }
}

impl ObjectReader {
    /// Read the whole content into memory (for small objects).
    pub async fn bytes(mut self) -> Result<Bytes> {
        let mut out =
            BytesMut::with_capacity(usize::try_from(self.info.size).unwrap_or(0).min(1 << 26));
        while let Some(chunk) = self.stream.next().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(out.freeze())
    }
}

/// What a backend implements for one bucket. Names are validated before
/// these are called.
pub trait ObjectBucketBackend: Send + Sync + 'static {
    /// Store `data` as `name`, replacing any previous object atomically.
    ///
    /// # Behavior
    /// MUST NOT make any part of the object visible before `data` ended
    /// successfully. If `data` yields an error, or this future is dropped, the
    /// previous object (or absence) MUST remain.
    fn put(
        &self,
        name: &str,
        meta: ObjectMeta,
        data: ByteStream,
    ) -> impl Future<Output = Result<ObjectInfo>> + Send;
    /// Read `name`. `NotFound` if absent.
    fn get(&self, name: &str) -> impl Future<Output = Result<ObjectReader>> + Send;
    /// Describe `name`. `NotFound` if absent.
    fn head(&self, name: &str) -> impl Future<Output = Result<ObjectInfo>> + Send;
    /// Delete `name`. `NotFound` if absent.
    fn delete(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
    /// Objects whose names start with `prefix`, sorted by name.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<ObjectInfo>>> + Send;
}

/// Object-safe twin of [`ObjectBucketBackend`].
#[allow(missing_docs)]
pub trait DynObjectBucketBackend: Send + Sync + 'static {
    fn put<'a>(
        &'a self,
        name: &'a str,
        meta: ObjectMeta,
        data: ByteStream,
    ) -> BoxFuture<'a, Result<ObjectInfo>>;
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectReader>>;
    fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectInfo>>;
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>>;
}

impl<T: ObjectBucketBackend> DynObjectBucketBackend for T {
    fn put<'a>(
        &'a self,
        name: &'a str,
        meta: ObjectMeta,
        data: ByteStream,
    ) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(ObjectBucketBackend::put(self, name, meta, data))
    }
    fn get<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectReader>> {
        Box::pin(ObjectBucketBackend::get(self, name))
    }
    fn head<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectInfo>> {
        Box::pin(ObjectBucketBackend::head(self, name))
    }
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(ObjectBucketBackend::delete(self, name))
    }
    fn list<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Result<Vec<ObjectInfo>>> {
        Box::pin(ObjectBucketBackend::list(self, prefix))
    }
}

/// What a backend implements for the objects plane: bucket management.
pub trait ObjectsBackend: Send + Sync + 'static {
    /// Backend name.
    fn name(&self) -> &'static str;
    /// Declared capabilities.
    fn capabilities(&self) -> &ObjectsCapabilities;
    /// The transport's connection state, for health checks. Cheap, no I/O.
    /// Defaults to `Up` (right for backends without a connection).
    fn connection_state(&self) -> ConnectionState {
        ConnectionState::Up
    }
    /// Create a bucket, or open an existing one.
    fn create_bucket(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<dyn DynObjectBucketBackend>>> + Send;
    /// Open an existing bucket. `NotFound` if absent.
    fn open_bucket(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Arc<dyn DynObjectBucketBackend>>> + Send;
    /// Delete a bucket and its objects. `NotFound` if absent.
    fn delete_bucket(&self, name: &str) -> impl Future<Output = Result<()>> + Send;
}

/// Object-safe twin of [`ObjectsBackend`].
#[allow(missing_docs)]
pub trait DynObjectsBackend: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn capabilities(&self) -> &ObjectsCapabilities;
    fn connection_state(&self) -> ConnectionState;
    fn create_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynObjectBucketBackend>>>;
    fn open_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynObjectBucketBackend>>>;
    fn delete_bucket<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>>;
}

impl<T: ObjectsBackend> DynObjectsBackend for T {
    fn name(&self) -> &'static str {
        ObjectsBackend::name(self)
    }
    fn capabilities(&self) -> &ObjectsCapabilities {
        ObjectsBackend::capabilities(self)
    }
    fn connection_state(&self) -> ConnectionState {
        ObjectsBackend::connection_state(self)
    }
    fn create_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynObjectBucketBackend>>> {
        Box::pin(ObjectsBackend::create_bucket(self, name))
    }
    fn open_bucket<'a>(
        &'a self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Arc<dyn DynObjectBucketBackend>>> {
        Box::pin(ObjectsBackend::open_bucket(self, name))
    }
    fn delete_bucket<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(ObjectsBackend::delete_bucket(self, name))
    }
}

/// The objects plane handle: opens buckets. Cheap to clone.
#[derive(Clone)]
pub struct Objects {
    backend: Arc<dyn DynObjectsBackend>,
}

impl std::fmt::Debug for Objects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Objects")
            .field("backend", &self.backend.name())
            .finish()
    }
}

impl Objects {
    /// Wrap a backend.
    pub fn new(backend: impl ObjectsBackend) -> Self {
        Objects::from_dyn(Arc::new(backend))
    }

    /// Wrap an already shared backend.
    pub fn from_dyn(backend: Arc<dyn DynObjectsBackend>) -> Self {
        Objects { backend }
    }

    /// The backend's declared capabilities.
    pub fn capabilities(&self) -> &ObjectsCapabilities {
        self.backend.capabilities()
    }

    /// The backend's connection state, for health checks.
    pub fn connection_state(&self) -> ConnectionState {
        self.backend.connection_state()
    }

    /// The backend's name.
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Create a bucket (or open an existing one).
    pub async fn create_bucket(&self, name: &str) -> Result<ObjectBucket> {
        let op = "objects.create_bucket";
        validate_name("bucket", name).map_err(|e| e.with_op(op))?;
        let inner = self
            .backend
            .create_bucket(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.handle(name, inner))
    }

    /// Open an existing bucket.
    pub async fn open_bucket(&self, name: &str) -> Result<ObjectBucket> {
        let op = "objects.open_bucket";
        validate_name("bucket", name).map_err(|e| e.with_op(op))?;
        let inner = self
            .backend
            .open_bucket(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))?;
        Ok(self.handle(name, inner))
    }

    /// Delete a bucket and its objects.
    pub async fn delete_bucket(&self, name: &str) -> Result<()> {
        let op = "objects.delete_bucket";
        validate_name("bucket", name).map_err(|e| e.with_op(op))?;
        self.backend
            .delete_bucket(name)
            .await
            .map_err(|e| e.with_op(op).with_backend(self.backend.name()))
    }

    fn handle(&self, name: &str, inner: Arc<dyn DynObjectBucketBackend>) -> ObjectBucket {
        ObjectBucket {
            name: name.into(),
            inner,
            objects: self.clone(),
        }
    }
}

/// One object bucket. Cheap to clone.
#[derive(Clone)]
pub struct ObjectBucket {
    name: Arc<str>,
    inner: Arc<dyn DynObjectBucketBackend>,
    objects: Objects,
}

impl std::fmt::Debug for ObjectBucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectBucket")
            .field("name", &self.name)
            .field("backend", &self.objects.backend_name())
            .finish()
    }
}

impl ObjectBucket {
    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn fail(&self, op: &'static str) -> impl Fn(Error) -> Error + '_ {
        move |e| e.with_op(op).with_backend(self.objects.backend_name())
    }

    /// Store a stream as `name`; visible only once the stream ended without error.
    ///
    /// The size limit is enforced while streaming: an object that grows past
    /// `max_object_size` fails with `PayloadTooLarge` and is not stored.
    pub async fn put_stream(
        &self,
        name: &str,
        meta: ObjectMeta,
        data: ByteStream,
    ) -> Result<ObjectInfo> {
        let op = "objects.put";
        validate_object_name(name).map_err(self.fail(op))?;
        let caps = self.objects.capabilities();
        if !meta.is_empty() && !caps.metadata {
            return Err(Error::unsupported("metadata").with_op(op));
        }
        let max = caps.max_object_size;
        let data = if max == u64::MAX {
            data
        } else {
            let mut seen = 0u64;
            data.map(move |chunk| {
                let chunk = chunk?;
                seen += chunk.len() as u64;
                if seen > max {
                    return Err(Error::new(
                        ErrorKind::PayloadTooLarge,
                        format!("object exceeds the limit of {max} bytes"),
                    ));
                }
                Ok(chunk)
            })
            .boxed()
        };
        self.inner
            .put(name, meta, data)
            .await
            .map_err(self.fail(op))
    }

    /// Store `data` as `name`.
    pub async fn put(&self, name: &str, data: impl Into<Bytes>) -> Result<ObjectInfo> {
        let data = data.into();
        self.put_stream(
            name,
            ObjectMeta::default(),
            stream::once(async move { Ok(data) }).boxed(),
        )
        .await
    }

    /// Store `value` serialised as JSON, with content type `application/json`
    /// when the backend keeps metadata.
    pub async fn put_json<T: Serialize + ?Sized>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<ObjectInfo> {
        let bytes = serde_json::to_vec(value).map_err(|e| {
            Error::new(ErrorKind::InvalidArgument, "value cannot be serialised").with_source(e)
        })?;
        let meta = if self.objects.capabilities().metadata {
            ObjectMeta::default().content_type("application/json")
        } else {
            ObjectMeta::default()
        };
        let data = Bytes::from(bytes);
        self.put_stream(name, meta, stream::once(async move { Ok(data) }).boxed())
            .await
    }

    /// Read `name` as a stream.
    pub async fn get(&self, name: &str) -> Result<ObjectReader> {
        validate_object_name(name).map_err(self.fail("objects.get"))?;
        self.inner.get(name).await.map_err(self.fail("objects.get"))
    }

    /// Read `name` fully into memory.
    pub async fn get_bytes(&self, name: &str) -> Result<Bytes> {
        self.get(name).await?.bytes().await
    }

    /// Read `name` and deserialise it from JSON.
    pub async fn get_json<T: DeserializeOwned>(&self, name: &str) -> Result<T> {
        let bytes = self.get_bytes(name).await?;
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::new(ErrorKind::Decode, "object is not the expected JSON").with_source(e)
        })
    }

    /// Describe `name`.
    pub async fn head(&self, name: &str) -> Result<ObjectInfo> {
        validate_object_name(name).map_err(self.fail("objects.head"))?;
        self.inner
            .head(name)
            .await
            .map_err(self.fail("objects.head"))
    }

    /// Delete `name`.
    pub async fn delete(&self, name: &str) -> Result<()> {
        validate_object_name(name).map_err(self.fail("objects.delete"))?;
        self.inner
            .delete(name)
            .await
            .map_err(self.fail("objects.delete"))
    }

    /// Objects whose names start with `prefix` (`""` for all), sorted by name.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        if !self.objects.capabilities().list {
            return Err(Error::unsupported("list").with_op("objects.list"));
        }
        self.inner
            .list(prefix)
            .await
            .map_err(self.fail("objects.list"))
    }
}
