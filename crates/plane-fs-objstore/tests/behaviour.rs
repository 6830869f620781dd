//! Behaviour specific to the filesystem backend: on-disk layout, name
//! encoding through a real listing, interrupted uploads, and the kv's
//! persistence across handles.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use plane_core::kv::{BucketConfig, Op, WatchEvent};
use plane_core::message::names;
use plane_core::objects::{Digester, ObjectMeta};
use plane_core::{Error, ErrorKind, Kv, Objects, Registry};

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_fs_objstore::register(&mut r);
    r
}

async fn planes(dir: &std::path::Path) -> (Objects, Kv) {
    let url = format!("file://{}?poll_ms=20&fsync=false", dir.display());
    let r = registry();
    (
        r.objects(&url).await.expect("objects"),
        r.kv(&url).await.expect("kv"),
    )
}

#[tokio::test]
async fn awkward_names_round_trip_through_list() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, _) = planes(dir.path()).await;
    let b = objects.create_bucket("names").await.unwrap();
    let names = [
        "plain",
        "with space.txt",
        "100%",
        "%41%42",
        "a#1",
        "ünï/cødé ✓",
        "dir/file",
        "dir",
        "dir/sub/deep",
        "tilde~and=equals",
    ];
    for (i, n) in names.iter().enumerate() {
        b.put(n, format!("v{i}")).await.unwrap();
    }
    let listed: Vec<String> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    let mut expected: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(listed, expected);
    for (i, n) in names.iter().enumerate() {
        assert_eq!(b.get_bytes(n).await.unwrap(), format!("v{i}"), "{n}");
    }
    let dir_listed: Vec<String> = b
        .list("dir")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(dir_listed, ["dir", "dir/file", "dir/sub/deep"]);
    let sub: Vec<String> = b
        .list("dir/s")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(sub, ["dir/sub/deep"]);
    assert!(b.list("nothing/").await.unwrap().is_empty());
    objects.delete_bucket("names").await.unwrap();
    assert_eq!(
        b.put("late", "x").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        b.get("plain").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert!(!dir.path().join("names").exists());
    assert_eq!(
        objects.open_bucket("names").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
}

#[tokio::test]
async fn metadata_digest_and_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, _) = planes(dir.path()).await;
    let b = objects.create_bucket("meta").await.unwrap();
    let meta = ObjectMeta::default()
        .content_type("text/plain")
        .attribute("owner", "me");
    let data = Bytes::from_static(b"hello world");
    let info = b
        .put_stream("x", meta.clone(), stream::iter([Ok(data.clone())]).boxed())
        .await
        .unwrap();
    assert_eq!(info.digest, Digester::of(&data));
    assert_eq!(b.head("x").await.unwrap().meta, meta);
    b.put("x", "second").await.unwrap();
    let head = b.head("x").await.unwrap();
    assert_eq!(head.size, 6);
    assert!(head.meta.is_empty());
    // The replaced blob is gone: one blob for one object.
    let blobs = std::fs::read_dir(dir.path().join("meta/d"))
        .unwrap()
        .count();
    assert_eq!(blobs, 1);
    b.delete("x").await.unwrap();
    assert_eq!(b.head("x").await.unwrap_err().kind(), ErrorKind::NotFound);
    assert_eq!(b.delete("x").await.unwrap_err().kind(), ErrorKind::NotFound);
    let blobs = std::fs::read_dir(dir.path().join("meta/d"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blobs, 0);
}

#[tokio::test]
async fn failed_and_dropped_uploads_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, _) = planes(dir.path()).await;
    let b = objects.create_bucket("abort").await.unwrap();
    b.put("keep", "old").await.unwrap();
    let failing = stream::iter([
        Ok(Bytes::from(vec![1u8; 6 << 20])),
        Err(Error::new(ErrorKind::Other, "source broke")),
    ])
    .boxed();
    let err = b
        .put_stream("keep", ObjectMeta::default(), failing)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Other);
    assert_eq!(b.get_bytes("keep").await.unwrap(), "old");
    // A put whose future is dropped mid-stream.
    let endless = stream::unfold((), |()| async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        Some((Ok(Bytes::from(vec![2u8; 1 << 20])), ()))
    })
    .boxed();
    let dropped = tokio::time::timeout(
        Duration::from_millis(200),
        b.put_stream("fresh", ObjectMeta::default(), endless),
    )
    .await;
    assert!(dropped.is_err(), "the endless put cannot finish");
    assert_eq!(
        b.head("fresh").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let names: Vec<String> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["keep"]);
    // Staging files are removed in the background once the upload is dropped.
    let mut leftovers = usize::MAX;
    for _ in 0..100 {
        leftovers = std::fs::read_dir(dir.path().join("abort/d"))
            .unwrap()
            .count();
        if leftovers == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(leftovers, 1, "only the kept object's blob remains");
}

#[tokio::test]
async fn kv_state_is_shared_between_handles_and_watch_sees_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let (_, kv1) = planes(dir.path()).await;
    let (_, kv2) = planes(dir.path()).await;
    let a = kv1
        .create_bucket(BucketConfig::new("shared").history(5))
        .await
        .unwrap();
    let b = kv2.open_bucket("shared").await.unwrap();
    let r1 = a.create("k", "1").await.unwrap();
    assert_eq!(
        b.create("k", "x").await.unwrap_err().kind(),
        ErrorKind::AlreadyExists
    );
    let r2 = b.update("k", "2", r1).await.unwrap();
    assert!(r2 > r1);
    assert_eq!(
        a.update("k", "3", r1).await.unwrap_err().kind(),
        ErrorKind::RevisionMismatch
    );
    assert_eq!(a.get("k").await.unwrap().unwrap().value, "2");

    let mut watch = b.watch(">").await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Entry(ref e) if e.value == "2"));
    assert_eq!(watch.next().await.unwrap().unwrap(), WatchEvent::CaughtUp);
    a.put_opts(
        "ttl",
        "v",
        plane_core::kv::PutOptions::default().ttl(Duration::from_millis(150)),
    )
    .await
    .unwrap();
    let mut ops = Vec::new();
    while ops.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(5), watch.next())
            .await
            .expect("watch event in time")
            .unwrap()
            .unwrap();
        if let WatchEvent::Entry(e) = ev {
            assert_eq!(e.key, "ttl");
            ops.push(e.op);
        }
    }
    assert_eq!(ops, [Op::Put, Op::Expire]);
    assert!(a.get("ttl").await.unwrap().is_none());
    let hist = a.history("k").await.unwrap();
    assert_eq!(hist.len(), 2);
    drop(watch);
    kv1.delete_bucket("shared").await.unwrap();
    assert_eq!(b.get("k").await.unwrap_err().kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn offloaded_payloads_travel_as_handles() {
    use plane_core::offload::Offload;
    let dir = tempfile::tempdir().unwrap();
    let (objects, _) = planes(dir.path()).await;
    let sender = Offload::new(objects.create_bucket("payloads").await.unwrap(), 1024);
    let receiver = Offload::new(objects.open_bucket("payloads").await.unwrap(), 1024);
    let big = plane_core::Message::from(vec![3u8; 3 << 20]);
    let handle = sender.offload(big.clone()).await.unwrap();
    assert!(handle
        .headers
        .get(names::OBJECT_REF)
        .unwrap()
        .starts_with("payloads/offload/"));
    assert!(handle.payload_len() < 256);
    assert_eq!(receiver.resolve(handle.clone()).await.unwrap(), big);
    receiver.discard(&handle).await.unwrap();
    assert!(objects
        .open_bucket("payloads")
        .await
        .unwrap()
        .list("")
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_readers_never_see_a_torn_object() {
    let dir = tempfile::tempdir().unwrap();
    let (objects, _) = planes(dir.path()).await;
    let b = objects.create_bucket("race").await.unwrap();
    b.put("x", vec![0u8; 1000]).await.unwrap();
    let writers: Vec<_> = (1..=6u8)
        .map(|w| {
            let b = b.clone();
            tokio::spawn(async move {
                for round in 0..5u8 {
                    // Content, size and metadata all identify the writer, so a
                    // mix of two writes would show.
                    let len = 200_000 + usize::from(w) * 1000 + usize::from(round);
                    let meta = ObjectMeta::default().attribute("writer", w.to_string());
                    let chunks: Vec<_> = vec![
                        Bytes::from(vec![w; len / 2]),
                        Bytes::from(vec![w; len - len / 2]),
                    ];
                    b.put_stream("x", meta, stream::iter(chunks.into_iter().map(Ok)).boxed())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let reader = {
        let b = b.clone();
        tokio::spawn(async move {
            let mut checked = 0;
            for _ in 0..60 {
                let r = b.get("x").await.unwrap();
                let info = r.info.clone();
                let data = r.bytes().await.unwrap();
                assert_eq!(data.len() as u64, info.size);
                assert_eq!(Digester::of(&data), info.digest);
                let first = data[0];
                assert!(data.iter().all(|&x| x == first), "mixed content");
                if first != 0 {
                    assert_eq!(info.meta.attributes["writer"], first.to_string());
                }
                checked += 1;
            }
            checked
        })
    };
    for w in writers {
        w.await.unwrap();
    }
    assert_eq!(reader.await.unwrap(), 60);
    let info = b.head("x").await.unwrap();
    let data = b.get_bytes("x").await.unwrap();
    let w = data[0];
    assert!(data.iter().all(|&x| x == w));
    assert_eq!(info.meta.attributes["writer"], w.to_string());
    assert_eq!(info.digest, Digester::of(&data));
    // Only the winner's blob is referenced; losers' blobs were replaced and
    // removed, or are reclaimable by sweep.
    let names: Vec<String> = b
        .list("")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.name)
        .collect();
    assert_eq!(names, ["x"]);
}

#[tokio::test]
async fn urls_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let r = registry();
    let base = format!("file://{}", dir.path().display());
    let kind = |e: Result<(), Error>| e.unwrap_err().kind();
    assert_eq!(
        kind(r.objects(&format!("{base}?chunk_sise=1")).await.map(drop)),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(r.kv(&format!("{base}?poll_ms=0")).await.map(drop)),
        ErrorKind::InvalidConfig
    );
    assert_eq!(
        kind(r.kv("file://somehost/x").await.map(drop)),
        ErrorKind::InvalidConfig
    );
    // A nested root is created on first use.
    let nested = format!("{base}/a/b?fsync=false&max_value=10");
    let kv = r.kv(&nested).await.unwrap();
    assert_eq!(kv.capabilities().max_value, 10);
    assert!(dir.path().join("a/b/.plane-kv").is_dir());
    if !cfg!(feature = "aws") {
        assert_eq!(
            kind(r.objects("s3://bucket/prefix").await.map(drop)),
            ErrorKind::InvalidConfig,
            "s3 needs the aws feature"
        );
    }
}
