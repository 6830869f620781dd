//! Objects on the local filesystem: plane's `file://` backend against
//! object_store's `LocalFileSystem` used directly.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, WriteMultipart};

use crate::drive::{self, Get, Pair, Params, Put};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// plane-fs-objstore's default multipart part size, used by the raw side too.
const CHUNK: usize = 5 << 20;
/// plane-fs-objstore's default parts in flight, used by the raw side too.
const UPLOAD_CONCURRENCY: usize = 2;

/// Run the object scenario on `file://`.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let plane_root = dir.path().join("plane");
    let raw_root = dir.path().join("raw");
    std::fs::create_dir_all(&raw_root)?;
    // LocalFileSystem does not fsync; neither does plane here, so both sides
    // write with the same durability.
    let url = format!("file://{}?fsync=false", plane_root.display());
    let objects = plane::registry().objects(&url).await?;
    let bucket = objects.create_bucket("bench").await?;
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(&raw_root)?);
    let pair = Pair {
        plane: plane_ops::plane_objects(&bucket),
        raw: Some(raw_objects(store)),
    };
    step(
        rows,
        "fs object_put_get",
        drive::object_put_get("fs", &pair, p),
    )
    .await?;
    objects.delete_bucket("bench").await?;
    Ok(())
}

/// A streaming multipart upload with the same part size as plane, and a
/// streaming read.
fn raw_objects(store: Arc<dyn ObjectStore>) -> (Put, Get) {
    let s = store.clone();
    let put: Put = Arc::new(move |name, data: Bytes| {
        let s = s.clone();
        Box::pin(async move {
            let upload = s.put_multipart(&StorePath::from(name)).await?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
            // Bounded like plane's upload: at most UPLOAD_CONCURRENCY parts
            // in flight.
            let mut at = 0;
            while at < data.len() {
                let end = (at + CHUNK).min(data.len());
                writer.wait_for_capacity(UPLOAD_CONCURRENCY).await?;
                writer.put(data.slice(at..end));
                at = end;
            }
            writer.finish().await?;
            Ok(())
        })
    });
    let get: Get = Arc::new(move |name| {
        let s = store.clone();
        Box::pin(async move {
            let mut stream = s.get(&StorePath::from(name)).await?.into_stream();
            let mut size = 0u64;
            while let Some(chunk) = stream.next().await {
                size += chunk?.len() as u64;
            }
            Ok(size)
        })
    });
    (put, get)
}
