//! A 64 MiB (plus odd bytes) object streamed through put and get with
//! bounded memory. This binary holds this one test only, so the process's
//! peak resident set (`VmHWM`) measures this upload and nothing else.

use std::time::Instant;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use plane_core::objects::{Digester, ObjectMeta};
use plane_core::Registry;

const SIZE: u64 = 64 * 1024 * 1024 + 12_345;
const CHUNK: usize = 64 * 1024;

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Deterministic content, generated chunk by chunk so the source itself
/// never holds the object.
fn chunk(index: u64, len: usize) -> Bytes {
    let mut state = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_object_streams_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::new();
    plane_fs_objstore::register(&mut registry);
    let url = format!("file://{}", dir.path().display());
    let objects = registry.objects(&url).await.unwrap();
    let bucket = objects.create_bucket("large").await.unwrap();
    // Warm up the runtime and allocator so the baseline includes them.
    bucket.put("warmup", "x").await.unwrap();
    let before = peak_rss_kib();

    let mut expected = Digester::new();
    let chunks = SIZE.div_ceil(CHUNK as u64);
    let source = stream::iter(0..chunks).map(move |i| {
        let len = if i == chunks - 1 {
            (SIZE - i * CHUNK as u64) as usize
        } else {
            CHUNK
        };
        Ok(chunk(i, len))
    });
    for i in 0..chunks {
        let len = if i == chunks - 1 {
            (SIZE - i * CHUNK as u64) as usize
        } else {
            CHUNK
        };
        expected.update(&chunk(i, len));
    }
    let expected = expected.finish();

    let started = Instant::now();
    let info = bucket
        .put_stream("big.bin", ObjectMeta::default(), source.boxed())
        .await
        .unwrap();
    let put_time = started.elapsed();
    assert_eq!(info.size, SIZE);
    assert_eq!(info.digest, expected);

    let started = Instant::now();
    let mut reader = bucket.get("big.bin").await.unwrap();
    assert_eq!(reader.info.size, SIZE);
    let mut got = Digester::new();
    while let Some(part) = reader.stream.next().await {
        got.update(&part.unwrap());
    }
    let get_time = started.elapsed();
    assert_eq!(got.size(), SIZE);
    assert_eq!(got.finish(), expected);

    if let (Some(before), Some(after)) = (before, peak_rss_kib()) {
        let growth_mib = (after.saturating_sub(before)) as f64 / 1024.0;
        eprintln!(
            "large object: {SIZE} bytes, put {put_time:?}, get {get_time:?}, \
             peak RSS {before} KiB -> {after} KiB (growth {growth_mib:.1} MiB)"
        );
        // Default buffering is chunk_size × (upload_concurrency + 1) = 15 MiB;
        // allow allocator slack but stay far below the object's 64 MiB.
        assert!(
            growth_mib < 32.0,
            "peak RSS grew by {growth_mib:.1} MiB for a {SIZE}-byte object"
        );
    }
    objects.delete_bucket("large").await.unwrap();
}
