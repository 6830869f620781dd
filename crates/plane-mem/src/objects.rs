//! In-memory objects plane.
//!
//! An object is the list of [`Bytes`] chunks its upload produced, kept as they
//! arrived (no re-copying into one buffer) behind an `Arc`. An upload collects
//! its chunks privately and swaps the finished object into the bucket under
//! the bucket's lock only once the stream ended without error, so a failed or
//! dropped upload changes nothing, and a reader holds its own `Arc` to the
//! object it opened: a concurrent overwrite or delete never affects a read in
//! progress.
//!
//! Everything lives in process memory, so "objects far larger than memory"
//! does not hold here; the streaming contract is the same as on a real store.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};

use super::MemConfig;
use plane_core::error::{Error, ErrorKind, Result};
use plane_core::objects::*;

/// All object buckets of one hub, by name.
#[derive(Default)]
pub(crate) struct ObjectHub {
    buckets: Mutex<HashMap<String, Arc<MemBucket>>>,
}

impl ObjectHub {
    fn buckets(&self) -> MutexGuard<'_, HashMap<String, Arc<MemBucket>>> {
        // The map is only ever mutated by single inserts and removes, so a
        // panic elsewhere cannot leave it inconsistent; keep serving.
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The in-memory objects backend.
///
/// Declares metadata and listing; objects are unbounded in size (bounded by
/// process memory only).
pub struct MemObjects {
    caps: ObjectsCapabilities,
    hub: Arc<ObjectHub>,
}

impl MemObjects {
    pub(crate) fn new(hub: Arc<ObjectHub>, _config: &MemConfig) -> Self {
        let mut caps = ObjectsCapabilities::default();
        caps.metadata = true;
        caps.list = true;
        caps.max_object_size = u64::MAX;
        MemObjects { caps, hub }
    }
}

impl ObjectsBackend for MemObjects {
    fn name(&self) -> &'static str {
        super::NAME
    }

    fn capabilities(&self) -> &ObjectsCapabilities {
        &self.caps
    }

    async fn create_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        let bucket = self
            .hub
            .buckets()
            .entry(name.to_owned())
            .or_default()
            .clone();
        Ok(bucket)
    }

    async fn open_bucket(&self, name: &str) -> Result<Arc<dyn DynObjectBucketBackend>> {
        match self.hub.buckets().get(name) {
            Some(bucket) => Ok(bucket.clone()),
            None => Err(no_bucket(name)),
        }
    }

    async fn delete_bucket(&self, name: &str) -> Result<()> {
        let bucket = self
            .hub
            .buckets()
            .remove(name)
            .ok_or_else(|| no_bucket(name))?;
        // Handles to the deleted bucket may still be held; they must not keep
        // working against storage nobody can reach by name any more.
        bucket.deleted.store(true, Ordering::Release);
        bucket.objects().clear();
        Ok(())
    }
}

fn no_bucket(name: &str) -> Error {
    crate::error::missing("object bucket", name)
}

fn no_object(name: &str) -> Error {
    crate::error::missing("object", name)
}

/// One complete object. Immutable once stored; an overwrite stores a new one.
struct Stored {
    info: ObjectInfo,
    chunks: Vec<Bytes>,
}

/// One bucket: completed objects by name.
#[derive(Default)]
struct MemBucket {
    objects: Mutex<BTreeMap<String, Arc<Stored>>>,
    deleted: AtomicBool,
}

impl MemBucket {
    fn objects(&self) -> MutexGuard<'_, BTreeMap<String, Arc<Stored>>> {
        // Single inserts and removes only: a poisoned lock holds a consistent map.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The map, unless the bucket was deleted under this handle.
    fn live(&self) -> Result<MutexGuard<'_, BTreeMap<String, Arc<Stored>>>> {
        let objects = self.objects();
        // Checked under the lock so a put cannot land after `delete_bucket`
        // cleared the map.
        if self.deleted.load(Ordering::Acquire) {
            return Err(Error::new(ErrorKind::NotFound, "object bucket was deleted"));
        }
        Ok(objects)
    }

    fn lookup(&self, name: &str) -> Result<Arc<Stored>> {
        self.live()?
            .get(name)
            .cloned()
            .ok_or_else(|| no_object(name))
    }
}

impl ObjectBucketBackend for MemBucket {
    async fn put(&self, name: &str, meta: ObjectMeta, mut data: ByteStream) -> Result<ObjectInfo> {
        // Collect privately; nothing is visible until the swap below. An
        // error returns early and a dropped future simply discards `chunks`.
        let mut digester = Digester::new();
        let mut chunks = Vec::new();
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            if chunk.is_empty() {
                continue;
            }
            digester.update(&chunk);
            chunks.push(chunk);
        }
        let info = ObjectInfo {
            name: name.to_owned(),
            size: digester.size(),
            digest: digester.finish(),
            modified: SystemTime::now(),
            meta,
        };
        let stored = Arc::new(Stored {
            info: info.clone(),
            chunks,
        });
        self.live()?.insert(name.to_owned(), stored);
        Ok(info)
    }

    async fn get(&self, name: &str) -> Result<ObjectReader> {
        let stored = self.lookup(name)?;
        let info = stored.info.clone();
        // The stream owns its own `Arc` to this version of the object, so an
        // overwrite or delete while it is read does not affect it.
        let count = stored.chunks.len();
        let stream = stream::iter(0..count)
            .map(move |i| Ok(stored.chunks[i].clone()))
            .boxed();
        Ok(ObjectReader { info, stream })
    }

    async fn head(&self, name: &str) -> Result<ObjectInfo> {
        Ok(self.lookup(name)?.info.clone())
    }

    async fn delete(&self, name: &str) -> Result<()> {
        self.live()?
            .remove(name)
            .map(drop)
            .ok_or_else(|| no_object(name))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        // Names sharing a prefix are contiguous in the sorted map.
        Ok(self
            .live()?
            .range::<str, _>((
                std::ops::Bound::Included(prefix),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(name, _)| name.starts_with(prefix))
            .map(|(_, stored)| stored.info.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Hub;
    use futures_util::stream::BoxStream;

    fn chunks(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes>> {
        let v: Vec<Result<Bytes>> = parts.iter().map(|p| Ok(Bytes::from_static(p))).collect();
        stream::iter(v).boxed()
    }

    #[tokio::test]
    async fn put_get_overwrite_and_list() {
        let objects = Hub::new().objects(&MemConfig::default());
        let b = objects.create_bucket("b").await.unwrap();
        let info = b
            .put_stream("a/x", ObjectMeta::default(), chunks(&[b"he", b"", b"llo"]))
            .await
            .unwrap();
        assert_eq!(info.size, 5);
        assert_eq!(info.digest, Digester::of(b"hello"));

        let reader = b.get("a/x").await.unwrap();
        b.put("a/x", "new").await.unwrap();
        // The reader opened before the overwrite still sees the old version.
        assert_eq!(reader.bytes().await.unwrap(), "hello");
        assert_eq!(b.get_bytes("a/x").await.unwrap(), "new");

        b.put("a/y", "y").await.unwrap();
        b.put("b", "b").await.unwrap();
        let names: Vec<_> = b
            .list("a/")
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.name)
            .collect();
        assert_eq!(names, ["a/x", "a/y"]);
        assert_eq!(b.list("").await.unwrap().len(), 3);
    }

    #[tokio::test]
    async fn failed_put_keeps_previous_object() {
        let objects = Hub::new().objects(&MemConfig::default());
        let b = objects.create_bucket("b").await.unwrap();
        b.put("x", "old").await.unwrap();
        let failing = stream::iter(vec![
            Ok(Bytes::from_static(b"partial")),
            Err(Error::new(ErrorKind::Other, "boom")),
        ])
        .boxed();
        let err = b
            .put_stream("x", ObjectMeta::default(), failing)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Other);
        assert_eq!(b.get_bytes("x").await.unwrap(), "old");
    }

    #[tokio::test]
    async fn deleted_bucket_handles_fail() {
        let objects = Hub::new().objects(&MemConfig::default());
        let b = objects.create_bucket("b").await.unwrap();
        b.put("x", "1").await.unwrap();
        objects.delete_bucket("b").await.unwrap();
        assert_eq!(
            objects.open_bucket("b").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(
            b.put("x", "2").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
        assert_eq!(b.head("x").await.unwrap_err().kind(), ErrorKind::NotFound);
        // A bucket re-created under the same name starts empty.
        let again = objects.create_bucket("b").await.unwrap();
        assert_eq!(
            again.head("x").await.unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
