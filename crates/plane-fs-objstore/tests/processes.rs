//! Guarantees between operating-system processes: compare-and-swap on the
//! shared-directory kv from several processes at once, and a writer killed
//! with SIGKILL in the middle of an upload.
//!
//! The test binary re-invokes itself as the child processes: `child` runs
//! only when `PLANE_FS_CHILD` says what to do, and is a no-op otherwise.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{self, StreamExt};
use plane_core::kv::BucketConfig;
use plane_core::objects::ObjectMeta;
use plane_core::{ErrorKind, Registry};

const ROLE: &str = "PLANE_FS_CHILD";
const DIR: &str = "PLANE_FS_CHILD_DIR";

fn url(dir: &str) -> String {
    format!("file://{dir}?poll_ms=20")
}

fn registry() -> Registry {
    let mut r = Registry::new();
    plane_fs_objstore::register(&mut r);
    r
}

fn spawn_child(role: &str, dir: &std::path::Path) -> std::process::Child {
    Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(ROLE, role)
        .env(DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child process")
}

const INCREMENTS: u64 = 25;
const PROCESSES: u64 = 3;

/// The child side: what it does depends on `PLANE_FS_CHILD`.
#[test]
fn child() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let dir = std::env::var(DIR).expect("child needs a directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "cas" => cas_increments(&dir).await,
            "slow-writer" => slow_writer(&dir).await,
            other => panic!("unknown child role {other}"),
        }
    });
}

async fn cas_increments(dir: &str) {
    let kv = registry().kv(&url(dir)).await.unwrap();
    let bucket = kv.open_bucket("counter").await.unwrap();
    let mut done = 0;
    let mut conflicts = 0u64;
    while done < INCREMENTS {
        let entry = bucket.get("n").await.unwrap().expect("counter exists");
        let n: u64 = std::str::from_utf8(&entry.value).unwrap().parse().unwrap();
        match bucket
            .update("n", (n + 1).to_string(), entry.revision)
            .await
        {
            Ok(_) => done += 1,
            Err(e) if e.kind() == ErrorKind::RevisionMismatch => conflicts += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    println!("conflicts={conflicts}");
}

async fn slow_writer(dir: &str) {
    let objects = registry().objects(&url(dir)).await.unwrap();
    let bucket = objects.open_bucket("crash").await.unwrap();
    // Far more than will ever be written before the parent kills us.
    let endless = stream::unfold(0u64, |i| async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        Some((Ok(Bytes::from(vec![(i % 251) as u8; 256 * 1024])), i + 1))
    })
    .boxed();
    let _ = bucket
        .put_stream("victim", ObjectMeta::default(), endless)
        .await;
    unreachable!("the endless upload never completes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_concurrent_increment_across_processes() {
    let dir = tempfile::tempdir().unwrap();
    let kv = registry()
        .kv(&url(dir.path().to_str().unwrap()))
        .await
        .unwrap();
    let bucket = kv
        .create_bucket(BucketConfig::new("counter"))
        .await
        .unwrap();
    bucket.create("n", "0").await.unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| spawn_child("cas", dir.path()))
        .collect();
    // This process competes too.
    let mut mine = 0;
    while mine < INCREMENTS {
        let entry = bucket.get("n").await.unwrap().unwrap();
        let n: u64 = std::str::from_utf8(&entry.value).unwrap().parse().unwrap();
        match bucket
            .update("n", (n + 1).to_string(), entry.revision)
            .await
        {
            Ok(_) => mine += 1,
            Err(e) => assert_eq!(e.kind(), ErrorKind::RevisionMismatch, "{e}"),
        }
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "child failed: {:?}", out.status);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if let Some(line) = stdout.lines().find(|l| l.contains("conflicts=")) {
            eprintln!("cas child: {}", line.trim());
        }
    }
    let total = bucket.get("n").await.unwrap().unwrap();
    assert_eq!(total.value, ((PROCESSES + 1) * INCREMENTS).to_string());
}

fn staging_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writer_killed_mid_upload_leaves_no_partial_object() {
    let dir = tempfile::tempdir().unwrap();
    let u = url(dir.path().to_str().unwrap());
    let backend = plane_fs_objstore::FsObjects::from_url(&u.parse().unwrap())
        .await
        .unwrap();
    let objects = plane_core::Objects::new(backend.clone());
    let bucket = objects.create_bucket("crash").await.unwrap();
    bucket.put("victim", "previous version").await.unwrap();

    let mut child = spawn_child("slow-writer", dir.path());
    // Wait until the child has streamed a good part of an upload.
    let blobs = dir.path().join("crash/d");
    let started = Instant::now();
    while staging_bytes(&blobs) < 12 * 1024 * 1024 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "child never got going"
        );
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited early: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap(); // SIGKILL: no destructor, no cleanup runs
    child.wait().unwrap();

    // The previous version is intact and is the only one visible.
    assert_eq!(
        bucket.get_bytes("victim").await.unwrap(),
        "previous version"
    );
    let listed: Vec<_> = bucket.list("").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, "previous version".len() as u64);
    // The dead upload left bytes on disk, which sweep reclaims.
    assert!(staging_bytes(&blobs) > "previous version".len() as u64);
    let removed = backend.sweep("crash", Duration::ZERO).await.unwrap();
    assert!(removed >= 1, "sweep removed {removed}");
    assert_eq!(staging_bytes(&blobs), "previous version".len() as u64);
    assert_eq!(
        bucket.get_bytes("victim").await.unwrap(),
        "previous version"
    );
    // And the name can be written again.
    bucket.put("victim", "next").await.unwrap();
    assert_eq!(bucket.get_bytes("victim").await.unwrap(), "next");
}
