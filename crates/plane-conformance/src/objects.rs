//! Conformance cases of the objects section.
//!
//! Every case works in its own bucket (`cx.name`) and deletes it afterwards,
//! whatever the outcome. Content is generated deterministically so that
//! expected sizes and digests are known without keeping large objects in
//! memory on the test side.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use plane_core::objects::{ByteStream, Digester, ObjectBucket, ObjectMeta};
use plane_core::{Error, ErrorKind, Objects, Result};

use crate::{case, check, check_eq, check_kind, skip, within, Case, CaseResult, Ctx, Verdict};

/// The objects cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("objects", put_get_head_roundtrip),
        case!("objects", get_missing_not_found),
        case!("objects", empty_object),
        case!("objects", large_streamed_object),
        case!("objects", overwrite_replaces),
        case!("objects", delete_then_absent),
        case!("objects", list_prefix),
        case!("objects", path_edge_cases),
        case!("objects", metadata_roundtrip),
        case!("objects", aborted_upload_invisible),
        case!("objects", writer_crash_no_partial_object),
        case!("objects", concurrent_writers_no_torn_object),
        case!("objects", typed_put_get),
        case!("objects", unsupported_ops_refused),
    ]
}

/// Bound on any single "this should happen now" wait, generous enough for a
/// networked store on a slow machine.
const WAIT: Duration = Duration::from_secs(10);

/// A fresh bucket for one case: the plane, the bucket name and its handle.
async fn bucket<'a>(cx: &Ctx<'a>) -> Result<(&'a Objects, String, ObjectBucket), Verdict> {
    let objects = cx.objects()?;
    let name = cx.name("objects");
    let bucket = objects.create_bucket(&name).await?;
    Ok((objects, name, bucket))
}

/// Delete the case's bucket whatever the case's outcome; a failed case keeps
/// its own verdict, a failed delete fails an otherwise passing case.
async fn cleanup(result: CaseResult, objects: &Objects, bucket: &str) -> CaseResult {
    let deleted = objects.delete_bucket(bucket).await;
    result?;
    deleted.map_err(Verdict::from)
}

/// A stream over `chunks`, in order.
fn chunked(chunks: Vec<Bytes>) -> ByteStream {
    stream::iter(chunks.into_iter().map(Ok)).boxed()
}

/// `len` deterministic pseudo-random bytes for `seed` (xorshift64), cheap
/// enough to generate tens of MiB in a debug build.
fn pseudo_random(seed: u64, len: usize) -> Bytes {
    // Never zero: xorshift would stay at zero forever.
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = vec![0u8; len];
    for word in out.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        word.copy_from_slice(&x.to_le_bytes()[..word.len()]);
    }
    Bytes::from(out)
}

/// Read an object fully, chunk by chunk, returning its size and digest.
async fn read_digest(bucket: &ObjectBucket, name: &str) -> Result<(u64, String)> {
    let mut reader = bucket.get(name).await?;
    let mut digester = Digester::new();
    while let Some(chunk) = reader.stream.next().await {
        digester.update(&chunk?);
    }
    Ok((digester.size(), digester.finish()))
}

async fn put_get_head_roundtrip(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let data = pseudo_random(1, 100_003);
        let parts = vec![data.slice(..1), data.slice(1..65_536), data.slice(65_536..)];
        let info = bucket
            .put_stream("model.bin", ObjectMeta::default(), chunked(parts))
            .await?;
        check_eq!(info.name, "model.bin");
        check_eq!(info.size, data.len() as u64);
        check_eq!(info.digest, Digester::of(&data));

        let reader = bucket.get("model.bin").await?;
        check_eq!(reader.info.name, "model.bin");
        check_eq!(reader.info.size, info.size);
        check_eq!(reader.info.digest, info.digest);
        let read = reader.bytes().await?;
        check!(
            read == data,
            "read back {} bytes that differ from what was put",
            read.len()
        );

        let head = bucket.head("model.bin").await?;
        check_eq!(head.name, "model.bin");
        check_eq!(head.size, info.size);
        check_eq!(head.digest, info.digest);
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn get_missing_not_found(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        check_kind!(bucket.get("absent").await, ErrorKind::NotFound);
        check_kind!(bucket.head("absent").await, ErrorKind::NotFound);
        check_kind!(bucket.get("dir/absent").await, ErrorKind::NotFound);
        check_kind!(
            objects.open_bucket(&cx.name("no_such_bucket")).await,
            ErrorKind::NotFound
        );
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn empty_object(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let empty_digest = Digester::of(b"");
        let info = bucket.put("empty", Bytes::new()).await?;
        check_eq!(info.size, 0);
        check_eq!(info.digest, empty_digest);
        // A stream that yields no chunk at all is an empty object too.
        let info = bucket
            .put_stream("no-chunks", ObjectMeta::default(), chunked(Vec::new()))
            .await?;
        check_eq!(info.size, 0);
        check_eq!(info.digest, empty_digest);
        for name in ["empty", "no-chunks"] {
            let head = bucket.head(name).await?;
            check_eq!(head.size, 0, "head of {name}");
            check_eq!(head.digest, empty_digest, "head of {name}");
            let read = bucket.get_bytes(name).await?;
            check!(read.is_empty(), "{name} read back {} bytes", read.len());
        }
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn large_streamed_object(cx: &Ctx<'_>) -> CaseResult {
    // 64 MiB plus an odd tail, in odd-sized chunks, so no size is a multiple
    // of a power of two a backend might chunk by.
    const TOTAL: u64 = 64 * 1024 * 1024 + 12_345;
    const CHUNK: u64 = 1_000_003;
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        // Generated lazily chunk by chunk; only the running digest is kept.
        let sent = Arc::new(Mutex::new(Digester::new()));
        let generator = {
            let sent = sent.clone();
            stream::unfold(0u64, move |offset| {
                let sent = sent.clone();
                async move {
                    if offset >= TOTAL {
                        return None;
                    }
                    let len = CHUNK.min(TOTAL - offset);
                    let chunk = pseudo_random(offset, len as usize);
                    sent.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .update(&chunk);
                    Some((Ok::<_, Error>(chunk), offset + len))
                }
            })
            .boxed()
        };
        let info = within(
            Duration::from_secs(45),
            "a 64 MiB upload",
            bucket.put_stream("large.bin", ObjectMeta::default(), generator),
        )
        .await??;
        let sent = std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner()));
        check_eq!(sent.size(), TOTAL, "the generator's own byte count");
        let expected = sent.finish();
        check_eq!(info.size, TOTAL);
        check_eq!(info.digest, expected);

        let head = bucket.head("large.bin").await?;
        check_eq!(head.size, TOTAL);
        check_eq!(head.digest, expected);

        let (size, digest) = within(
            Duration::from_secs(45),
            "reading back a 64 MiB object",
            read_digest(&bucket, "large.bin"),
        )
        .await??;
        check_eq!(size, TOTAL);
        check_eq!(digest, expected);
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn overwrite_replaces(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        bucket.put("doc", "the first, longer version").await?;
        let second = Bytes::from_static(b"second");
        let info = bucket.put("doc", second.clone()).await?;
        check_eq!(info.size, second.len() as u64);
        check_eq!(info.digest, Digester::of(&second));
        check_eq!(bucket.get_bytes("doc").await?, second);
        let head = bucket.head("doc").await?;
        check_eq!(head.size, second.len() as u64);
        check_eq!(head.digest, Digester::of(&second));
        if objects.capabilities().list {
            let listed = bucket.list("doc").await?;
            check_eq!(listed.len(), 1, "an overwritten object is listed once");
            check_eq!(listed[0].digest, Digester::of(&second));
        }
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn delete_then_absent(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        bucket.put("doomed", "bytes").await?;
        bucket.put("kept", "bytes").await?;
        bucket.delete("doomed").await?;
        check_kind!(bucket.get("doomed").await, ErrorKind::NotFound);
        check_kind!(bucket.head("doomed").await, ErrorKind::NotFound);
        check_kind!(bucket.delete("doomed").await, ErrorKind::NotFound);
        check_kind!(bucket.delete("never-was").await, ErrorKind::NotFound);
        check_eq!(bucket.get_bytes("kept").await?, "bytes");
        if objects.capabilities().list {
            let names: Vec<String> = bucket.list("").await?.into_iter().map(|i| i.name).collect();
            check_eq!(names, ["kept"]);
        }
        Ok(())
    }
    .await;
    let result = cleanup(result, objects, &bucket_name).await;
    // The bucket itself is gone now, and deleting it again says so.
    result?;
    check_kind!(
        objects.delete_bucket(&bucket_name).await,
        ErrorKind::NotFound
    );
    check_kind!(objects.open_bucket(&bucket_name).await, ErrorKind::NotFound);
    Ok(())
}

async fn list_prefix(cx: &Ctx<'_>) -> CaseResult {
    let objects = cx.objects()?;
    if !objects.capabilities().list {
        skip!("backend does not declare `list`");
    }
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let names = ["dir/b", "dir/a", "dir/sub/c", "dirx", "other"];
        for (i, name) in names.iter().enumerate() {
            bucket.put(name, vec![b'x'; i + 1]).await?;
        }
        let listed = |prefix: &'static str| {
            let bucket = bucket.clone();
            async move {
                bucket
                    .list(prefix)
                    .await
                    .map(|v| v.into_iter().map(|i| (i.name, i.size)).collect::<Vec<_>>())
            }
        };
        let s = |n: &str, size: u64| (n.to_owned(), size);
        check_eq!(
            listed("dir/").await?,
            [s("dir/a", 2), s("dir/b", 1), s("dir/sub/c", 3)]
        );
        check_eq!(
            listed("dir").await?,
            [
                s("dir/a", 2),
                s("dir/b", 1),
                s("dir/sub/c", 3),
                s("dirx", 4)
            ]
        );
        check_eq!(listed("dir/sub/").await?, [s("dir/sub/c", 3)]);
        check_eq!(
            listed("").await?,
            [
                s("dir/a", 2),
                s("dir/b", 1),
                s("dir/sub/c", 3),
                s("dirx", 4),
                s("other", 5)
            ]
        );
        check_eq!(listed("nothing/").await?, Vec::<(String, u64)>::new());
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn path_edge_cases(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        // Pairs like "a b" / "a%20b" / "a+b" must stay distinct objects: a
        // backend that percent- or form-decodes names would merge them.
        let names = [
            "héllo wörld.txt",
            "日本語/ファイル",
            "emoji 🚀",
            "with space",
            "a b",
            "a%20b",
            "a+b",
            "100%",
            "%",
            "a/b/c",
            "a/b/c.d/e f",
            "semi;colon,comma=eq&amp?q#frag",
        ];
        for name in names {
            let info = bucket.put(name, Bytes::from(name.to_owned())).await?;
            check_eq!(info.name, name);
        }
        for name in names {
            check_eq!(
                bucket.get_bytes(name).await?,
                name.as_bytes(),
                "content of `{name}`"
            );
            check_eq!(bucket.head(name).await?.name, name);
        }
        if objects.capabilities().list {
            let mut expected: Vec<&str> = names.to_vec();
            expected.sort_unstable();
            let listed: Vec<String> = bucket.list("").await?.into_iter().map(|i| i.name).collect();
            check_eq!(listed, expected);
            let nested: Vec<String> = bucket
                .list("a/b/")
                .await?
                .into_iter()
                .map(|i| i.name)
                .collect();
            check_eq!(nested, ["a/b/c", "a/b/c.d/e f"]);
        }
        for bad in [
            "",
            "a//b",
            "../x",
            "a/../b",
            "./x",
            "/lead",
            "trail/",
            "bell\u{7}",
        ] {
            check_kind!(bucket.put(bad, "x").await, ErrorKind::InvalidArgument);
            check_kind!(bucket.get(bad).await, ErrorKind::InvalidArgument);
        }
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn metadata_roundtrip(cx: &Ctx<'_>) -> CaseResult {
    let objects = cx.objects()?;
    if !objects.capabilities().metadata {
        skip!("backend does not declare `metadata`");
    }
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let meta = ObjectMeta::default()
            .content_type("text/plain; charset=utf-8")
            .attribute("owner", "team-a")
            .attribute("ünïcode", "välue with spaces = and ; too");
        let data = Bytes::from_static(b"annotated");
        let info = bucket
            .put_stream("annotated", meta.clone(), chunked(vec![data]))
            .await?;
        check_eq!(info.meta, meta);
        check_eq!(bucket.head("annotated").await?.meta, meta);
        check_eq!(bucket.get("annotated").await?.info.meta, meta);
        if objects.capabilities().list {
            let listed = bucket.list("annotated").await?;
            check_eq!(listed.len(), 1);
            check_eq!(listed[0].meta, meta);
        }
        // An overwrite replaces the metadata along with the content.
        bucket.put("annotated", "plain").await?;
        let head = bucket.head("annotated").await?;
        check!(
            head.meta.is_empty(),
            "metadata survived an overwrite: {:?}",
            head.meta
        );
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

/// A stream yielding `chunks`, then failing.
fn failing_after(chunks: Vec<Bytes>) -> ByteStream {
    stream::iter(chunks.into_iter().map(Ok))
        .chain(stream::once(async {
            Err(Error::new(ErrorKind::Other, "upload aborted by the test"))
        }))
        .boxed()
}

async fn aborted_upload_invisible(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let parts = vec![pseudo_random(2, 70_000), pseudo_random(3, 70_000)];
        check_kind!(
            bucket
                .put_stream("fresh", ObjectMeta::default(), failing_after(parts.clone()))
                .await,
            ErrorKind::Other
        );
        check_kind!(bucket.head("fresh").await, ErrorKind::NotFound);
        check_kind!(bucket.get("fresh").await, ErrorKind::NotFound);

        let old = Bytes::from_static(b"the complete old version");
        bucket.put("existing", old.clone()).await?;
        check_kind!(
            bucket
                .put_stream("existing", ObjectMeta::default(), failing_after(parts))
                .await,
            ErrorKind::Other
        );
        check_eq!(bucket.get_bytes("existing").await?, old);
        let head = bucket.head("existing").await?;
        check_eq!(head.size, old.len() as u64);
        check_eq!(head.digest, Digester::of(&old));
        if objects.capabilities().list {
            let names: Vec<String> = bucket.list("").await?.into_iter().map(|i| i.name).collect();
            check_eq!(names, ["existing"]);
        }
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

/// Start a put of `name` whose stream yields two chunks and then stalls, and
/// return once the backend has consumed both (it asked for a third).
async fn stalled_put(bucket: &ObjectBucket, name: &str, tasks: &mut JoinSet<()>) -> CaseResult {
    let (reached, stalled) = tokio::sync::oneshot::channel::<()>();
    let data = stream::iter([Ok(pseudo_random(4, 100_000)), Ok(pseudo_random(5, 100_000))])
        .chain(stream::once(async move {
            let _ = reached.send(());
            std::future::pending::<Result<Bytes>>().await
        }))
        .boxed();
    let bucket = bucket.clone();
    let name = name.to_owned();
    tasks.spawn(async move {
        let _ = bucket.put_stream(&name, ObjectMeta::default(), data).await;
    });
    within(WAIT, "the backend to consume the first chunks", stalled)
        .await?
        .map_err(|_| Verdict::Fail("the put finished before its stream stalled".into()))
}

async fn writer_crash_no_partial_object(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let mut writers = JoinSet::new();
        stalled_put(&bucket, "fresh", &mut writers).await?;
        check_kind!(bucket.head("fresh").await, ErrorKind::NotFound);

        let old = Bytes::from_static(b"the complete old version");
        bucket.put("existing", old.clone()).await?;
        stalled_put(&bucket, "existing", &mut writers).await?;
        check_eq!(bucket.get_bytes("existing").await?, old);

        // The writers crash: their puts are dropped mid-stream.
        writers.abort_all();
        while writers.join_next().await.is_some() {}

        check_kind!(bucket.head("fresh").await, ErrorKind::NotFound);
        check_kind!(bucket.get("fresh").await, ErrorKind::NotFound);
        check_eq!(bucket.get_bytes("existing").await?, old);
        check_eq!(bucket.head("existing").await?.digest, Digester::of(&old));
        if objects.capabilities().list {
            let names: Vec<String> = bucket.list("").await?.into_iter().map(|i| i.name).collect();
            check_eq!(names, ["existing"]);
        }
        // Nothing the crashed writers held blocks the next writer.
        bucket.put("fresh", "after the crash").await?;
        check_eq!(bucket.get_bytes("fresh").await?, "after the crash");
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn concurrent_writers_no_torn_object(cx: &Ctx<'_>) -> CaseResult {
    const WRITERS: u64 = 4;
    const CHUNKS: u64 = 16;
    const CHUNK: usize = 64 * 1024 + 7;
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let chunk = |w: u64, i: u64| pseudo_random(1000 * (w + 1) + i, CHUNK);
        let mut expected = HashSet::new();
        for w in 0..WRITERS {
            let mut d = Digester::new();
            for i in 0..CHUNKS {
                d.update(&chunk(w, i));
            }
            expected.insert((d.size(), d.finish()));
        }

        let mut writers = JoinSet::new();
        for w in 0..WRITERS {
            let bucket = bucket.clone();
            // Yield between chunks so that the uploads interleave.
            let data = stream::iter(0..CHUNKS)
                .then(move |i| async move {
                    tokio::task::yield_now().await;
                    Ok(chunk(w, i))
                })
                .boxed();
            writers.spawn(async move {
                bucket
                    .put_stream("contended", ObjectMeta::default(), data)
                    .await
            });
        }
        // Meanwhile a reader must only ever see nothing or one whole version.
        let mut reads = 0;
        while !writers.is_empty() && reads < 50 {
            reads += 1;
            match read_digest(&bucket, "contended").await {
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
                Ok(seen) => check!(
                    expected.contains(&seen),
                    "a reader saw a torn object {seen:?}"
                ),
            }
            tokio::task::yield_now().await;
            if let Some(joined) = writers.try_join_next() {
                let info =
                    joined.map_err(|e| Verdict::Fail(format!("writer task failed: {e}")))??;
                check!(
                    expected.contains(&(info.size, info.digest.clone())),
                    "a put reported {info:?}"
                );
            }
        }
        while let Some(joined) = within(WAIT, "the concurrent writers", writers.join_next()).await?
        {
            let info = joined.map_err(|e| Verdict::Fail(format!("writer task failed: {e}")))??;
            check!(
                expected.contains(&(info.size, info.digest.clone())),
                "a put reported {info:?}"
            );
        }

        let seen = read_digest(&bucket, "contended").await?;
        check!(
            expected.contains(&seen),
            "the stored object is torn: {seen:?}"
        );
        let head = bucket.head("contended").await?;
        check_eq!(
            (head.size, head.digest),
            seen,
            "head describes the stored content"
        );
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

/// A value with the shapes serde users put in artifacts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Manifest {
    name: String,
    version: u32,
    layers: Vec<u64>,
    scale: f64,
    labels: BTreeMap<String, String>,
    parent: Option<String>,
}

async fn typed_put_get(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let manifest = Manifest {
            name: "encoder ünïcode".into(),
            version: 7,
            layers: vec![1, 2, u64::MAX],
            scale: 0.125,
            labels: [("stage".to_owned(), "prod".to_owned())].into(),
            parent: None,
        };
        let info = bucket.put_json("manifest.json", &manifest).await?;
        check!(info.size > 0);
        let back: Manifest = bucket.get_json("manifest.json").await?;
        check_eq!(back, manifest);
        if objects.capabilities().metadata {
            let head = bucket.head("manifest.json").await?;
            check_eq!(head.meta.content_type.as_deref(), Some("application/json"));
        }
        bucket
            .put("not-json", &b"\xff\x00 definitely not json"[..])
            .await?;
        check_kind!(
            bucket.get_json::<Manifest>("not-json").await,
            ErrorKind::Decode
        );
        bucket.put("wrong-shape", "[1, 2, 3]").await?;
        check_kind!(
            bucket.get_json::<Manifest>("wrong-shape").await,
            ErrorKind::Decode
        );
        check_kind!(
            bucket.get_json::<Manifest>("absent.json").await,
            ErrorKind::NotFound
        );
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}

async fn unsupported_ops_refused(cx: &Ctx<'_>) -> CaseResult {
    let (objects, bucket_name, bucket) = bucket(cx).await?;
    let result = async {
        let caps = objects.capabilities().clone();

        let meta = ObjectMeta::default().content_type("text/plain");
        let put = bucket
            .put_stream("with-meta", meta, chunked(vec![Bytes::from_static(b"x")]))
            .await;
        if caps.metadata {
            check!(
                put.is_ok(),
                "metadata is declared but a put with it failed: {put:?}"
            );
        } else {
            check_kind!(put, ErrorKind::Unsupported);
            check_kind!(bucket.head("with-meta").await, ErrorKind::NotFound);
        }
        // put_json adapts to the capability instead of failing.
        bucket.put_json("typed", &[1, 2, 3]).await?;

        let list = bucket.list("").await;
        if caps.list {
            check!(list.is_ok(), "list is declared but failed: {list:?}");
        } else {
            check_kind!(list, ErrorKind::Unsupported);
        }
        Ok(())
    }
    .await;
    cleanup(result, objects, &bucket_name).await
}
