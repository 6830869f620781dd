//! The objects plane on the JetStream object store.
//!
//! Objects are written and read in chunks (128 KiB by default), never whole:
//! an upload publishes chunks under a fresh id and the object becomes visible
//! only when its metadata record is written after the last chunk, replacing
//! the previous version atomically. An aborted upload leaves its chunks
//! unreferenced (invisible; reclaimed when the bucket is deleted).
//!
//! The store's `SHA-256=<base64url>` digest is reported in plane's
//! `sha256=<hex>` form. The content type is kept as the `Content-Type` header
//! of the object's metadata, attributes as its metadata map.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, object_store, stream};
use async_nats::{Client, HeaderMap};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use plane_core::objects::{
    ByteStream, DynObjectBucketBackend, ObjectBucketBackend, ObjectInfo, ObjectMeta, ObjectReader,
    ObjectsBackend, ObjectsCapabilities,
};
use plane_core::{Error, ErrorKind, Result};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::namespace::Namespace;

/// Size of the chunks read back from the store.
const READ_CHUNK: usize = 128 * 1024;

/// The objects plane over the JetStream object store.
pub struct NatsObjects {
    js: jetstream::Context,
    caps: ObjectsCapabilities,
    /// Replicas of what this plane creates on the server.
    replicas: usize,
    namespace: Namespace,
    gave_up: crate::GaveUp,
}

impl NatsObjects {
    /// The objects plane on `client`.
    pub fn new(client: Client) -> Self {
        let mut caps = ObjectsCapabilities::default();
        caps.metadata = true;
        caps.list = true;
        let replicas = crate::config::auto_replicas(&client.server_info(), 0);
        NatsObjects {
            js: jetstream::new(client),
            caps,
            replicas,
            namespace: Namespace::default(),
            gave_up: crate::GaveUp::default(),
        }
    }

    /// Create object buckets with `replicas` copies (1 to 5; more than 1 needs a
    /// JetStream cluster). By default, the count `replicas=auto` gives on
    /// the server the client is connected to (see
    /// [`NatsConfig::replicas_on`](crate::NatsConfig::replicas_on)).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas;
        self
    }

    /// Wait `timeout` for JetStream's answers (publish acknowledgements,
    /// stream and consumer requests) instead of async-nats's 5 s.
    pub fn with_jetstream_timeout(mut self, timeout: Duration) -> Self {
        self.js.set_timeout(timeout);
        self
    }

    /// Report `Down` once the connection behind `gave_up` stopped
    /// reconnecting.
    pub(crate) fn reporting(mut self, gave_up: crate::GaveUp) -> Self {
        self.gave_up = gave_up;
        self
    }

    /// Name buckets inside `namespace`.
    pub(crate) fn in_namespace(mut self, namespace: Namespace) -> Self {
        self.namespace = namespace;
        self
    }

    async fn open(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        let store = self
            .js
            .get_object_store(self.namespace.name(name))
            .await
            .map_err(|e| crate::error::js("open object bucket", e))?;
        Ok(Arc::new(NatsObjectBucket { store }))
    }
}

impl ObjectsBackend for NatsObjects {
    fn name(&self) -> &'static str {
        crate::NAME
    }

    fn capabilities(&self) -> &ObjectsCapabilities {
        &self.caps
    }

    fn connection_state(&self) -> plane_core::health::ConnectionState {
        crate::state(&self.js.client(), &self.gave_up)
    }

    async fn create_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        match self.open(name).await {
            Ok(b) => return Ok(b),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if let Err(e) = self
            .js
            .create_object_store(object_store::Config {
                bucket: self.namespace.name(name).into_owned(),
                storage: stream::StorageType::File,
                num_replicas: self.replicas,
                ..Default::default()
            })
            .await
        {
            if !e.to_string().contains("already") {
                return Err(crate::error::js("create object bucket", e));
            }
        }
        self.open(name).await
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        self.open(name).await
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        self.js
            .delete_object_store(self.namespace.name(name))
            .await
            .map_err(|e| crate::error::js("delete object bucket", e))?;
        Ok(())
    }
}

struct NatsObjectBucket {
    store: object_store::ObjectStore,
}

fn not_found(name: &str) -> Error {
    Error::new(ErrorKind::NotFound, format!("no object `{name}`"))
}

/// `SHA-256=<base64url>` as `sha256=<hex>`.
fn digest_of(nats: Option<&str>) -> String {
    let Some(b64) = nats.and_then(|d| d.strip_prefix("SHA-256=")) else {
        return String::new();
    };
    let mut bits = 0u32;
    let mut nbits = 0;
    let mut out = String::from("sha256=");
    for c in b64.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => continue, // padding
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push_str(&format!("{:02x}", (bits >> nbits) & 0xff));
        }
    }
    out
}

fn info_of(i: &object_store::ObjectInfo) -> ObjectInfo {
    let content_type = i.headers.as_ref().and_then(|h| {
        h.get("Content-Type")
            .map(|v| v.as_str().to_owned())
            .or_else(|| {
                h.get("Content-Type%v")
                    .map(|v| crate::mapping::unescape(v.as_str()))
            })
    });
    let attributes: BTreeMap<String, String> = i
        .metadata
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut meta = ObjectMeta::default();
    meta.content_type = content_type;
    meta.attributes = attributes;
    ObjectInfo {
        name: i.name.clone(),
        size: i.size as u64,
        digest: digest_of(i.digest.as_deref()),
        modified: i
            .modified
            .map(SystemTime::from)
            .unwrap_or(SystemTime::UNIX_EPOCH),
        meta,
    }
}

/// A plane byte stream as the `AsyncRead` the object store consumes. The
/// stream's own error is kept aside so the upload fails with its kind.
struct StreamRead {
    stream: ByteStream,
    chunk: Bytes,
    error: Arc<Mutex<Option<Error>>>,
}

impl AsyncRead for StreamRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        while self.chunk.is_empty() {
            match self.stream.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Ready(Some(Ok(chunk))) => self.chunk = chunk,
                Poll::Ready(Some(Err(e))) => {
                    let io = std::io::Error::other(e.message().to_owned());
                    *self.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return Poll::Ready(Err(io));
                }
            }
        }
        let n = self.chunk.len().min(buf.remaining());
        let part = self.chunk.split_to(n);
        buf.put_slice(&part);
        Poll::Ready(Ok(()))
    }
}

impl ObjectBucketBackend for NatsObjectBucket {
    async fn put(&self, name: &str, meta: ObjectMeta, data: ByteStream) -> Result<ObjectInfo> {
        let headers = meta.content_type.as_ref().map(|ct| {
            let mut h = HeaderMap::new();
            crate::mapping::insert(&mut h, "Content-Type", ct);
            h
        });
        let metadata = object_store::ObjectMetadata {
            name: name.to_owned(),
            metadata: meta.attributes.into_iter().collect::<HashMap<_, _>>(),
            headers,
            ..Default::default()
        };
        let error = Arc::new(Mutex::new(None));
        let mut reader = StreamRead {
            stream: data,
            chunk: Bytes::new(),
            error: error.clone(),
        };
        match self.store.put(metadata, &mut reader).await {
            Ok(info) => Ok(info_of(&info)),
            Err(e) => {
                if let Some(source) = error.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    return Err(source);
                }
                Err(crate::error::js("object put", e))
            }
        }
    }

    async fn get(&self, name: &str) -> Result<ObjectReader> {
        let object = match self.store.get(name).await {
            Ok(o) => o,
            Err(e) if matches!(e.kind(), object_store::GetErrorKind::NotFound) => {
                return Err(not_found(name))
            }
            Err(e) => return Err(crate::error::js("object get", e)),
        };
        let info = info_of(&object.info);
        let stream = futures_util::stream::unfold(Some(object), |object| async move {
            let mut object = object?;
            let mut buf = BytesMut::with_capacity(READ_CHUNK);
            match object.read_buf(&mut buf).await {
                Ok(0) => None,
                Ok(_) => Some((Ok(buf.freeze()), Some(object))),
                Err(e) => Some((
                    Err(Error::new(ErrorKind::Disconnected, "object read failed").with_source(e)),
                    None,
                )),
            }
        });
        Ok(ObjectReader {
            info,
            stream: Box::pin(stream) as Pin<Box<dyn Stream<Item = Result<Bytes>> + Send>>,
        })
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        match self.store.info(name).await {
            Ok(i) if !i.deleted => Ok(info_of(&i)),
            Ok(_) => Err(not_found(name)),
            Err(e) if matches!(e.kind(), object_store::InfoErrorKind::NotFound) => {
                Err(not_found(name))
            }
            Err(e) => Err(crate::error::js("object head", e)),
        }
    }

    async fn delete(&self, name: &str) -> Result<()> {
        // The store's delete also succeeds on a deleted object; plane says NotFound.
        ObjectBucketBackend::head(self, name).await?;
        match self.store.delete(name).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.kind(), object_store::DeleteErrorKind::NotFound) => {
                Err(not_found(name))
            }
            Err(e) => Err(crate::error::js("object delete", e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut list = self
            .store
            .list()
            .await
            .map_err(|e| crate::error::js("object list", e))?;
        let mut out = Vec::new();
        while let Some(item) = list.next().await {
            let i = item.map_err(|e| crate::error::js("object list", e))?;
            if !i.deleted && i.name.starts_with(prefix) {
                out.push(info_of(&i));
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_converts_base64url_to_hex() {
        // SHA-256 of "abc".
        let nats = "SHA-256=ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0=";
        assert_eq!(
            digest_of(Some(nats)),
            "sha256=ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(digest_of(None), "");
    }
}
