//! Conformance cases of the kv section.
//!
//! Every case works in its own bucket, created by `in_bucket` and deleted
//! afterwards whatever the outcome of the case body.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::kv::{
    Bucket, BucketConfig, Entry, Op, PutOptions, Watch, WatchEvent, WatchFrom, WatchOptions,
};
use plane_core::ErrorKind;

use crate::{case, check, check_eq, check_kind, skip, within, Case, CaseResult, Ctx, Verdict};

/// The kv cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("kv", get_missing_is_none),
        case!("kv", put_revisions_increase),
        case!("kv", create_if_absent),
        case!("kv", create_after_delete_or_purge),
        case!("kv", update_cas_conflict),
        case!("kv", update_missing_key_fails),
        case!("kv", cas_concurrent_increment),
        case!("kv", delete_expect_revision),
        case!("kv", keys_excludes_deleted),
        case!("kv", invalid_key_rejected),
        case!("kv", history_with_delete_markers),
        case!("kv", purge_collapses_history),
        case!("kv", watch_only_new_updates),
        case!("kv", watch_snapshot_then_live),
        case!("kv", watch_prefix_and_all),
        case!("kv", watch_from_revision),
        case!("kv", watch_reports_delete_and_expiry),
        case!("kv", bucket_ttl_expires),
        case!("kv", per_key_ttl_expires),
        case!("kv", watch_resumes_after_restart),
        case!("kv", unsupported_ops_refused),
    ]
}

/// How long a single watch event may take to arrive.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// How long "eventually" may take (expiry, recovery after a restart).
const EVENTUALLY: Duration = Duration::from_secs(10);
/// A TTL short enough for a fast suite, long enough to observe the value first.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// Run `body` in a fresh bucket built from `config`, then delete the bucket
/// whatever the body's outcome. The configured name is only a placeholder:
/// it is replaced by a name unique to the case.
async fn in_bucket<F, Fut>(cx: &Ctx<'_>, config: BucketConfig, body: F) -> CaseResult
where
    F: FnOnce(Bucket) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    let kv = cx.kv()?;
    let mut config = config;
    config.name = cx.name("kv");
    let name = config.name.clone();
    let bucket = kv.create_bucket(config).await?;
    let outcome = body(bucket).await;
    let cleanup = kv.delete_bucket(&name).await;
    outcome?;
    cleanup?;
    Ok(())
}

/// The next watch event, failing on an error, an end or a timeout.
async fn next_event(w: &mut Watch, what: &str) -> Result<WatchEvent, Verdict> {
    match within(EVENT_WAIT, what, w.next()).await? {
        Some(Ok(ev)) => Ok(ev),
        Some(Err(e)) => Err(Verdict::Fail(format!(
            "watch failed waiting for {what}: {e}"
        ))),
        None => Err(Verdict::Fail(format!("watch ended waiting for {what}"))),
    }
}

/// The next watch event, which must be an entry.
async fn next_entry(w: &mut Watch, what: &str) -> Result<Entry, Verdict> {
    match next_event(w, what).await? {
        WatchEvent::Entry(e) => Ok(e),
        WatchEvent::CaughtUp => Err(Verdict::Fail(format!(
            "got an unexpected caught-up marker waiting for {what}"
        ))),
    }
}

/// The next watch event, which must be the caught-up marker.
async fn caught_up(w: &mut Watch) -> CaseResult {
    match next_event(w, "the caught-up marker").await? {
        WatchEvent::CaughtUp => Ok(()),
        WatchEvent::Entry(e) => Err(Verdict::Fail(format!(
            "expected the caught-up marker, got entry {e:?}"
        ))),
    }
}

/// Poll `key` until it has no live value, within [`EVENTUALLY`].
async fn wait_gone(b: &Bucket, key: &str) -> CaseResult {
    within(EVENTUALLY, &format!("`{key}` to expire"), async {
        loop {
            match b.get(key).await {
                Ok(None) => return Ok(()),
                Ok(Some(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => return Err(Verdict::from(e)),
            }
        }
    })
    .await?
}

fn history_config(depth: u8) -> BucketConfig {
    BucketConfig::new("placeholder").history(depth)
}

async fn get_missing_is_none(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        check!(
            b.get("missing").await?.is_none(),
            "a never-written key has a value"
        );
        let rev = b.put("present", "v").await?;
        check!(
            b.get("missing").await?.is_none(),
            "writing another key made it appear"
        );
        let e = b.get("present").await?;
        let e = e.ok_or_else(|| Verdict::Fail("written key has no value".into()))?;
        check_eq!(e.key, "present");
        check_eq!(e.value, "v");
        check_eq!(e.op, Op::Put);
        check_eq!(e.revision, rev);
        Ok(())
    })
    .await
}

async fn put_revisions_increase(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let r1 = b.put("a", "1").await?;
        let r2 = b.put("a", "2").await?;
        let r3 = b.put("b", "1").await?;
        let r4 = b.put("a", "3").await?;
        check!(
            r1 < r2 && r2 < r3 && r3 < r4,
            "revisions {r1}, {r2}, {r3}, {r4} are not strictly increasing across keys"
        );
        check_eq!(b.get("a").await?.map(|e| e.revision), Some(r4));
        check_eq!(b.get("b").await?.map(|e| e.revision), Some(r3));
        Ok(())
    })
    .await
}

async fn create_if_absent(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let r1 = b.create("k", "first").await?;
        check_kind!(b.create("k", "second").await, ErrorKind::AlreadyExists);
        let e = b.get("k").await?;
        check_eq!(e.map(|e| (e.value, e.revision)), Some(("first".into(), r1)));
        Ok(())
    })
    .await
}

async fn create_after_delete_or_purge(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.create("deleted", "1").await?;
        b.delete("deleted").await?;
        b.create("deleted", "2").await?;
        check_eq!(b.get("deleted").await?.map(|e| e.value), Some("2".into()));

        b.create("purged", "1").await?;
        b.purge("purged").await?;
        b.create("purged", "2").await?;
        check_eq!(b.get("purged").await?.map(|e| e.value), Some("2".into()));
        check_kind!(b.create("purged", "3").await, ErrorKind::AlreadyExists);
        Ok(())
    })
    .await
}

async fn update_cas_conflict(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let r1 = b.put("k", "v1").await?;
        let r2 = b.update("k", "v2", r1).await?;
        check!(r2 > r1, "update revision {r2} not above {r1}");
        check_kind!(b.update("k", "v3", r1).await, ErrorKind::RevisionMismatch);
        let e = b.get("k").await?;
        check_eq!(
            e.map(|e| (e.value, e.revision)),
            Some(("v2".into(), r2)),
            "a failed compare-and-swap changed the key"
        );
        Ok(())
    })
    .await
}

async fn update_missing_key_fails(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        check_kind!(b.update("never", "v", 1).await, ErrorKind::NotFound);
        check!(
            b.get("never").await?.is_none(),
            "failed update created the key"
        );
        // A deleted key is not live either.
        let r = b.put("gone", "v").await?;
        let d = b.delete("gone").await?;
        check_kind!(b.update("gone", "v2", r).await, ErrorKind::NotFound);
        check_kind!(b.update("gone", "v2", d).await, ErrorKind::NotFound);
        check!(
            b.get("gone").await?.is_none(),
            "failed update revived the key"
        );
        Ok(())
    })
    .await
}

/// Aborts the spawned tasks if the case ends early.
struct AbortAll(Vec<tokio::task::JoinHandle<Result<u64, String>>>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

async fn cas_concurrent_increment(cx: &Ctx<'_>) -> CaseResult {
    const WORKERS: usize = 5;
    const INCREMENTS: u64 = 10;
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.create("counter", "0").await?;
        let mut tasks = AbortAll(Vec::new());
        for _ in 0..WORKERS {
            let b = b.clone();
            tasks.0.push(tokio::spawn(async move {
                let mut conflicts = 0u64;
                for _ in 0..INCREMENTS {
                    // Bounded retries: with 5 workers a few hundred conflicts
                    // per increment would mean the CAS never lets anyone win.
                    let mut attempts = 0;
                    loop {
                        attempts += 1;
                        if attempts > 1000 {
                            return Err("no progress after 1000 attempts".to_owned());
                        }
                        let e = b
                            .get("counter")
                            .await
                            .map_err(|e| e.to_string())?
                            .ok_or("counter vanished")?;
                        let n: u64 = std::str::from_utf8(&e.value)
                            .ok()
                            .and_then(|s| s.parse().ok())
                            .ok_or("counter is not a number")?;
                        // Let the other workers run between read and write,
                        // so a compare-and-swap that does not compare loses
                        // increments even on an in-process backend.
                        tokio::task::yield_now().await;
                        match b.update("counter", (n + 1).to_string(), e.revision).await {
                            Ok(_) => break,
                            Err(err) if err.kind() == ErrorKind::RevisionMismatch => {
                                conflicts += 1;
                                tokio::task::yield_now().await;
                            }
                            Err(err) => return Err(err.to_string()),
                        }
                    }
                }
                Ok(conflicts)
            }));
        }
        // Joined by reference so that a timeout still aborts them on drop.
        let results = within(
            Duration::from_secs(30),
            "the increments",
            futures_util::future::join_all(tasks.0.iter_mut()),
        )
        .await?;
        for r in results {
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(Verdict::Fail(format!("worker failed: {e}"))),
                Err(e) => return Err(Verdict::Fail(format!("worker panicked: {e}"))),
            }
        }
        let value = b.get("counter").await?.map(|e| e.value);
        check_eq!(
            value,
            Some((WORKERS as u64 * INCREMENTS).to_string().into()),
            "lost or duplicated increments"
        );
        Ok(())
    })
    .await
}

async fn delete_expect_revision(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let r1 = b.put("k", "v1").await?;
        let r2 = b.put("k", "v2").await?;
        check_kind!(b.delete_if("k", r1).await, ErrorKind::RevisionMismatch);
        check_eq!(
            b.get("k").await?.map(|e| (e.value, e.revision)),
            Some(("v2".into(), r2)),
            "a refused delete changed the key"
        );
        let d = b.delete_if("k", r2).await?;
        check!(d > r2, "delete marker revision {d} not above {r2}");
        check!(b.get("k").await?.is_none(), "deleted key still has a value");
        check!(!b.keys(">").await?.contains(&"k".to_owned()));
        Ok(())
    })
    .await
}

async fn keys_excludes_deleted(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        for k in ["a", "b", "c", "grp.x", "grp.y", "grp.y.z"] {
            b.put(k, "v").await?;
        }
        b.delete("b").await?;
        b.purge("c").await?;
        check_eq!(b.keys(">").await?, vec!["a", "grp.x", "grp.y", "grp.y.z"]);
        check_eq!(b.keys("grp.*").await?, vec!["grp.x", "grp.y"]);
        check_eq!(b.keys("grp.>").await?, vec!["grp.x", "grp.y", "grp.y.z"]);
        b.delete("grp.y").await?;
        check_eq!(b.keys("grp.*").await?, vec!["grp.x"]);
        check!(b.keys("none.>").await?.is_empty());
        Ok(())
    })
    .await
}

async fn invalid_key_rejected(cx: &Ctx<'_>) -> CaseResult {
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let long = "k".repeat(2000);
        let bad = [
            "", "a..b", ".a", "a.", "a b", "a*", "*", "a.>", "tab\tkey", "ümlaut", &long,
        ];
        for key in bad {
            invalid(key, "get", b.get(key).await)?;
            invalid(key, "put", b.put(key, "v").await)?;
            invalid(key, "create", b.create(key, "v").await)?;
            invalid(key, "delete", b.delete(key).await)?;
        }
        check_kind!(b.keys("a..b").await, ErrorKind::InvalidArgument);
        check_kind!(b.keys("a.>.b").await, ErrorKind::InvalidArgument);
        // Validation is not stricter than documented.
        let odd = "Aa0-_/=.x";
        b.put(odd, "v").await?;
        check_eq!(b.get(odd).await?.map(|e| e.value), Some("v".into()));
        check!(b.keys(">").await?.len() == 1, "a rejected key was stored");
        Ok(())
    })
    .await
}

/// `result` of `op` on `key` must be exactly `InvalidArgument`.
fn invalid<T: std::fmt::Debug>(key: &str, op: &str, result: plane_core::Result<T>) -> CaseResult {
    let shown: String = key.chars().take(24).collect();
    match result {
        Err(e) if e.kind() == ErrorKind::InvalidArgument => Ok(()),
        other => Err(Verdict::Fail(format!(
            "{op} of invalid key {shown:?} gave {other:?}, expected InvalidArgument"
        ))),
    }
}

async fn history_with_delete_markers(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().history {
        skip!("backend does not declare `history`");
    }
    in_bucket(cx, history_config(3), |b| async move {
        let r1 = b.put("k", "v1").await?;
        let r2 = b.put("k", "v2").await?;
        let r3 = b.delete("k").await?;
        let h = b.history("k").await?;
        let got: Vec<(Op, u64)> = h.iter().map(|e| (e.op, e.revision)).collect();
        check_eq!(
            got,
            vec![(Op::Put, r1), (Op::Put, r2), (Op::Delete, r3)],
            "history oldest first, delete marker included"
        );
        check_eq!(h[0].value, "v1");
        check_eq!(h[1].value, "v2");
        check!(h.iter().all(|e| e.key == "k"));
        // The oldest revision falls out once more than `history` are kept.
        let r4 = b.put("k", "v3").await?;
        let got: Vec<(Op, u64)> = b
            .history("k")
            .await?
            .iter()
            .map(|e| (e.op, e.revision))
            .collect();
        check_eq!(got, vec![(Op::Put, r2), (Op::Delete, r3), (Op::Put, r4)]);
        check_kind!(b.history("never").await, ErrorKind::NotFound);
        Ok(())
    })
    .await
}

async fn purge_collapses_history(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().history {
        skip!("backend does not declare `history`");
    }
    in_bucket(cx, history_config(10), |b| async move {
        for v in ["1", "2", "3"] {
            b.put("k", v).await?;
        }
        b.put("other", "x").await?;
        let p = b.purge("k").await?;
        let h = b.history("k").await?;
        check_eq!(h.len(), 1, "purge left {h:?}");
        check_eq!((h[0].op, h[0].revision), (Op::Purge, p));
        check!(b.get("k").await?.is_none(), "purged key still has a value");
        check_eq!(b.keys(">").await?, vec!["other"]);
        check_eq!(
            b.history("other").await?.len(),
            1,
            "purge touched another key"
        );
        let r = b.put("k", "4").await?;
        let h = b.history("k").await?;
        check!(
            h.iter().all(|e| e.revision >= p),
            "history from before the purge came back: {h:?}"
        );
        check_eq!(h.last().map(|e| (e.op, e.revision)), Some((Op::Put, r)));
        Ok(())
    })
    .await
}

async fn watch_only_new_updates(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().watch {
        skip!("backend does not declare `watch`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put("k", "old").await?;
        let mut w = b
            .watch_with(WatchOptions::new(">").from(WatchFrom::New))
            .await?;
        caught_up(&mut w).await?;
        b.put("k", "new1").await?;
        let e = next_entry(&mut w, "the first new update").await?;
        check_eq!((e.key.as_str(), e.value), ("k", "new1".into()));
        // An idle watch must still deliver afterwards.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        b.put("k", "new2").await?;
        let e = next_entry(&mut w, "an update after an idle gap").await?;
        check_eq!((e.key.as_str(), e.value), ("k", "new2".into()));
        Ok(())
    })
    .await
}

async fn watch_snapshot_then_live(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().watch {
        skip!("backend does not declare `watch`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put("a", "1").await?;
        let ra = b.put("a", "2").await?;
        let rb = b.put("b", "1").await?;
        b.put("c", "1").await?;
        b.delete("c").await?;
        let mut w = b.watch(">").await?;
        let mut snapshot = BTreeMap::new();
        while let WatchEvent::Entry(e) = next_event(&mut w, "the snapshot").await? {
            check_eq!(e.op, Op::Put, "snapshot holds a marker: {e:?}");
            check!(
                snapshot
                    .insert(e.key.clone(), (e.value, e.revision))
                    .is_none(),
                "key `{}` twice in the snapshot",
                e.key
            );
        }
        let want: BTreeMap<String, (bytes::Bytes, u64)> = [
            ("a".to_owned(), ("2".into(), ra)),
            ("b".to_owned(), ("1".into(), rb)),
        ]
        .into();
        check_eq!(
            snapshot,
            want,
            "snapshot is the last value of each live key"
        );
        let r1 = b.put("b", "2").await?;
        let r2 = b.put("d", "1").await?;
        // Exactly one caught-up marker: what follows are live entries.
        let e1 = next_entry(&mut w, "the first live change").await?;
        let e2 = next_entry(&mut w, "the second live change").await?;
        check_eq!((e1.key.as_str(), e1.revision), ("b", r1));
        check_eq!((e2.key.as_str(), e2.revision), ("d", r2));
        Ok(())
    })
    .await
}

async fn watch_prefix_and_all(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().watch {
        skip!("backend does not declare `watch`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        let mut all = b.watch(">").await?;
        let mut deep = b.watch("pfx.>").await?;
        let mut one = b.watch("pfx.*").await?;
        for w in [&mut all, &mut deep, &mut one] {
            caught_up(w).await?;
        }
        for k in ["pfx.a", "other.b", "pfx.x.y", "pfxno", "pfx.end"] {
            b.put(k, "v").await?;
        }
        // Each watch sees exactly its keys, in order; the last key is a
        // sentinel every watch matches, so nothing can arrive after it unseen.
        let expect: [(&mut Watch, &[&str]); 3] = [
            (
                &mut all,
                &["pfx.a", "other.b", "pfx.x.y", "pfxno", "pfx.end"],
            ),
            (&mut deep, &["pfx.a", "pfx.x.y", "pfx.end"]),
            (&mut one, &["pfx.a", "pfx.end"]),
        ];
        for (w, keys) in expect {
            for want in keys {
                let e = next_entry(w, want).await?;
                check_eq!(e.key.as_str(), *want);
            }
        }
        Ok(())
    })
    .await
}

async fn watch_from_revision(cx: &Ctx<'_>) -> CaseResult {
    let caps = cx.kv()?.capabilities();
    if !caps.watch || !caps.watch_from_revision {
        skip!("backend does not declare `watch` and `watch_from_revision`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put("a", "1").await?;
        let r2 = b.put("b", "1").await?;
        let r3 = b.put("a", "2").await?;
        let r4 = b.put("c", "1").await?;
        let mut w = b
            .watch_with(WatchOptions::new(">").from(WatchFrom::Revision(r2)))
            .await?;
        let mut got = Vec::new();
        while let WatchEvent::Entry(e) = next_event(&mut w, "the replay").await? {
            got.push((e.key, e.revision));
        }
        check_eq!(
            got,
            vec![
                ("b".to_owned(), r2),
                ("a".to_owned(), r3),
                ("c".to_owned(), r4)
            ],
            "replay from revision {r2}"
        );
        let r5 = b.put("d", "1").await?;
        let e = next_entry(&mut w, "a live change after the replay").await?;
        check_eq!((e.key.as_str(), e.revision), ("d", r5));
        Ok(())
    })
    .await
}

async fn watch_reports_delete_and_expiry(cx: &Ctx<'_>) -> CaseResult {
    let caps = cx.kv()?.capabilities().clone();
    if !caps.watch {
        skip!("backend does not declare `watch`");
    }
    // Expiry can be observed through a per-key TTL or a bucket max age.
    let config = if caps.key_ttl || !caps.bucket_ttl {
        BucketConfig::new("b")
    } else {
        BucketConfig::new("b").max_age(SHORT_TTL)
    };
    in_bucket(cx, config, |b| async move {
        let mut w = b
            .watch_with(WatchOptions::new(">").from(WatchFrom::New))
            .await?;
        caught_up(&mut w).await?;
        let r = b.put("del", "v").await?;
        check_eq!(next_entry(&mut w, "the put").await?.revision, r);
        let d = b.delete("del").await?;
        let e = next_entry(&mut w, "the delete").await?;
        check_eq!((e.key.as_str(), e.op, e.revision), ("del", Op::Delete, d));
        let p = b.purge("del").await?;
        let e = next_entry(&mut w, "the purge").await?;
        check_eq!((e.key.as_str(), e.op, e.revision), ("del", Op::Purge, p));

        // Backends that only make expired values disappear (without telling
        // watchers) do not declare `expiry_events`; for them the delete half
        // above is the whole check.
        if !caps.expiry_events || !(caps.key_ttl || caps.bucket_ttl) {
            return Ok(());
        }
        let r = if caps.key_ttl {
            b.put_opts("exp", "v", PutOptions::default().ttl(SHORT_TTL))
                .await?
        } else {
            b.put("exp", "v").await?
        };
        check_eq!(next_entry(&mut w, "the expiring put").await?.revision, r);
        let e = next_entry(&mut w, "the expiry").await?;
        check_eq!((e.key.as_str(), e.op), ("exp", Op::Expire));
        check!(
            e.revision > r,
            "expiry revision {} not above {r}",
            e.revision
        );
        check!(
            b.get("exp").await?.is_none(),
            "expired key still has a value"
        );
        Ok(())
    })
    .await
}

async fn bucket_ttl_expires(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().bucket_ttl {
        skip!("backend does not declare `bucket_ttl`");
    }
    in_bucket(
        cx,
        BucketConfig::new("b").max_age(SHORT_TTL),
        |b| async move {
            b.put("k", "v").await?;
            check!(
                b.get("k").await?.is_some(),
                "value gone right after the put"
            );
            wait_gone(&b, "k").await?;
            check!(
                !b.keys(">").await?.contains(&"k".to_owned()),
                "expired key listed"
            );
            // An expired key can be created again.
            b.create("k", "again").await?;
            Ok(())
        },
    )
    .await
}

async fn per_key_ttl_expires(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().key_ttl {
        skip!("backend does not declare `key_ttl`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put_opts("short", "v", PutOptions::default().ttl(SHORT_TTL))
            .await?;
        b.put("keep", "v").await?;
        check!(
            b.get("short").await?.is_some(),
            "value gone right after the put"
        );
        wait_gone(&b, "short").await?;
        check_eq!(
            b.keys(">").await?,
            vec!["keep"],
            "only the TTL'd key expires"
        );
        Ok(())
    })
    .await
}

async fn watch_resumes_after_restart(cx: &Ctx<'_>) -> CaseResult {
    if !cx.kv()?.capabilities().watch {
        skip!("backend does not declare `watch`");
    }
    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put("before", "1").await?;
        let mut w = b.watch(">").await?;
        check_eq!(next_entry(&mut w, "the snapshot").await?.key, "before");
        caught_up(&mut w).await?;
        cx.restart().await?;
        // The write may need the connection to come back first.
        let r = within(EVENTUALLY, "a write after the restart", async {
            loop {
                match b.put("after", "1").await {
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await?;
        // A resumed watch may resynchronise (snapshot and caught-up marker
        // again) before the live change; it must not end or lose it.
        within(EVENTUALLY, "the change made after the restart", async {
            loop {
                match next_event(&mut w, "the change made after the restart").await? {
                    WatchEvent::Entry(e) if e.key == "after" && e.revision == r => {
                        return Ok::<(), Verdict>(())
                    }
                    _ => {}
                }
            }
        })
        .await??;
        check_eq!(b.get("before").await?.map(|e| e.value), Some("1".into()));
        Ok(())
    })
    .await
}

/// Declared: the operation must not be refused as unsupported. Not declared:
/// it must be refused with exactly `Unsupported`.
fn refused_iff<T: std::fmt::Debug>(
    capability: &str,
    declared: bool,
    result: plane_core::Result<T>,
) -> CaseResult {
    match (declared, result) {
        (true, Err(e)) if e.kind() == ErrorKind::Unsupported => Err(Verdict::Fail(format!(
            "`{capability}` is declared but refused as unsupported: {e}"
        ))),
        (true, _) => Ok(()),
        (false, Err(e)) if e.kind() == ErrorKind::Unsupported => Ok(()),
        (false, other) => Err(Verdict::Fail(format!(
            "`{capability}` is not declared but the operation was not refused with `Unsupported`: {other:?}"
        ))),
    }
}

async fn unsupported_ops_refused(cx: &Ctx<'_>) -> CaseResult {
    let kv = cx.kv()?;
    let caps = kv.capabilities().clone();

    // Bucket options: create, check, delete what was created.
    let name = cx.name("hist");
    let created = kv.create_bucket(BucketConfig::new(&name).history(2)).await;
    let ok = created.is_ok();
    let verdict = refused_iff("history", caps.history, created);
    if ok {
        kv.delete_bucket(&name).await?;
    }
    verdict?;

    let name = cx.name("ttl");
    let created = kv
        .create_bucket(BucketConfig::new(&name).max_age(Duration::from_secs(60)))
        .await;
    let ok = created.is_ok();
    let verdict = refused_iff("bucket_ttl", caps.bucket_ttl, created);
    if ok {
        kv.delete_bucket(&name).await?;
    }
    verdict?;

    in_bucket(cx, BucketConfig::new("b"), |b| async move {
        b.put("k", "v").await?;
        refused_iff("history", caps.history, b.history("k").await)?;
        refused_iff(
            "key_ttl",
            caps.key_ttl,
            b.put_opts("t", "v", PutOptions::default().ttl(Duration::from_secs(60)))
                .await,
        )?;
        // Watches are dropped as soon as they are checked.
        refused_iff("watch", caps.watch, b.watch(">").await.map(drop))?;
        // Watching from a revision needs `watch` as well.
        refused_iff(
            "watch_from_revision",
            caps.watch && caps.watch_from_revision,
            b.watch_with(WatchOptions::new(">").from(WatchFrom::Revision(1)))
                .await
                .map(drop),
        )?;
        Ok(())
    })
    .await
}
