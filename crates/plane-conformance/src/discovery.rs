//! Conformance cases of the discovery section, run over the target's
//! discovery kv (its own kv unless another is set).
//!
//! Every case uses its own discovery bucket and endpoint, with a short lease
//! and resync period so expiry and recovery are observed quickly, and deletes
//! the bucket afterwards whatever the outcome.

use std::collections::BTreeSet;
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use plane_core::discovery::{Discovery, DiscoveryConfig, DiscoveryEvent, DiscoveryWatch, Instance};
use plane_core::request::InstanceId;
use plane_core::ErrorKind;

use crate::{case, check, check_eq, skip, within, Case, CaseResult, Ctx, Verdict};

/// The discovery cases, in catalog order.
pub fn cases() -> Vec<Case> {
    vec![
        case!("discovery", register_list_watch),
        case!("discovery", lease_expiry_removes_instance),
        case!("discovery", reregister_after_lease_loss),
        case!("discovery", watch_resync_after_restart),
    ]
}

/// A short lease keeps expiry cases fast. Two seconds, not one: renewal
/// every third of it must survive a loaded two-core CI machine, where a
/// one-second lease once let a renewed record expire.
const LEASE: Duration = Duration::from_secs(2);
/// A short resync period bounds how long a missed change can stay unseen.
const RESYNC: Duration = Duration::from_millis(500);
/// How long one expected discovery event may take.
const EVENT_WAIT: Duration = Duration::from_secs(5);
/// How long "eventually" may take (expiry, recovery after a restart).
const EVENTUALLY: Duration = Duration::from_secs(15);

/// Run `body` with a discovery over a fresh bucket and a unique endpoint
/// name, then delete the bucket whatever the body's outcome.
async fn with_discovery<F, Fut>(cx: &Ctx<'_>, lease: Duration, body: F) -> CaseResult
where
    F: FnOnce(Discovery, String) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    let kv = cx.discovery_kv()?;
    let bucket = cx.name("disc");
    let config = DiscoveryConfig::default()
        .bucket(bucket.clone())
        .lease(lease)
        .resync(RESYNC);
    let discovery = match Discovery::open(kv, config).await {
        Err(e) if e.kind() == ErrorKind::Unsupported => {
            skip!("discovery needs a kv backend declaring `bucket_ttl` or `key_ttl`")
        }
        other => other?,
    };
    let outcome = body(discovery, cx.name("ep")).await;
    let cleanup = kv.delete_bucket(&bucket).await;
    outcome?;
    cleanup?;
    Ok(())
}

fn instance(endpoint: &str, address: &str) -> Instance {
    Instance::new(endpoint, InstanceId::random(), address).with_metadata("case", "conformance")
}

/// The next discovery event, failing on a timeout or an end.
async fn next_event(w: &mut DiscoveryWatch, what: &str) -> Result<DiscoveryEvent, Verdict> {
    within(EVENT_WAIT, what, w.next())
        .await?
        .ok_or_else(|| Verdict::Fail(format!("discovery watch ended waiting for {what}")))
}

/// Read events until one equals `want`, within `limit`, failing if any event
/// about an instance not in `tolerated` (other than `want`) comes first.
async fn wait_for(
    w: &mut DiscoveryWatch,
    want: DiscoveryEvent,
    tolerated: &[InstanceId],
    limit: Duration,
) -> CaseResult {
    within(limit, &format!("{want:?}"), async {
        loop {
            let ev = w
                .next()
                .await
                .ok_or_else(|| Verdict::Fail("discovery watch ended".into()))?;
            if ev == want {
                return Ok(());
            }
            let about = match &ev {
                DiscoveryEvent::Added(i) => i.id,
                DiscoveryEvent::Removed(id) => *id,
            };
            if !tolerated.contains(&about) {
                return Err(Verdict::Fail(format!(
                    "unexpected discovery event {ev:?} while waiting for {want:?}"
                )));
            }
        }
    })
    .await?
}

fn ids(instances: &[Instance]) -> BTreeSet<InstanceId> {
    instances.iter().map(|i| i.id).collect()
}

async fn register_list_watch(cx: &Ctx<'_>) -> CaseResult {
    with_discovery(cx, LEASE, |d, ep| async move {
        let a = instance(&ep, "addr-a");
        let b = instance(&ep, "addr-b");
        let elsewhere = instance(&format!("{ep}_other"), "addr-x");
        let ra = d.register(a.clone()).await?;
        let rx = d.register(elsewhere.clone()).await?;
        check_eq!(
            d.list(&ep).await?,
            vec![a.clone()],
            "list after one registration"
        );

        let mut w = d.watch(&ep).await?;
        check_eq!(
            next_event(&mut w, "the current instance").await?,
            DiscoveryEvent::Added(a.clone())
        );
        let rb = d.register(b.clone()).await?;
        check_eq!(
            next_event(&mut w, "the new instance").await?,
            DiscoveryEvent::Added(b.clone())
        );
        let listed = d.list(&ep).await?;
        check_eq!(ids(&listed), ids(&[a.clone(), b.clone()]));
        check!(
            listed.contains(&b),
            "record not listed as registered: {listed:?}"
        );

        ra.deregister().await?;
        check_eq!(
            next_event(&mut w, "the deregistration").await?,
            DiscoveryEvent::Removed(a.id)
        );
        check_eq!(
            d.list(&ep).await?,
            vec![b.clone()],
            "list after deregistration"
        );
        rb.deregister().await?;
        check_eq!(
            next_event(&mut w, "the second deregistration").await?,
            DiscoveryEvent::Removed(b.id)
        );
        check!(d.list(&ep).await?.is_empty());
        // The other endpoint was never part of this watch and is untouched.
        check_eq!(d.list(&elsewhere.endpoint).await?, vec![elsewhere]);
        rx.deregister().await?;
        Ok(())
    })
    .await
}

async fn lease_expiry_removes_instance(cx: &Ctx<'_>) -> CaseResult {
    with_discovery(cx, LEASE, |d, ep| async move {
        let a = instance(&ep, "addr-a");
        let keep = instance(&ep, "addr-keep");
        let ra = d.register(a.clone()).await?;
        let rk = d.register(keep.clone()).await?;
        let mut w = d.watch(&ep).await?;
        let mut seen = BTreeSet::new();
        for _ in 0..2 {
            match next_event(&mut w, "the current instances").await? {
                DiscoveryEvent::Added(i) => seen.insert(i.id),
                other => return Err(Verdict::Fail(format!("unexpected {other:?}"))),
            };
        }
        check_eq!(seen, ids(&[a.clone(), keep.clone()]));
        // Gone without deregistering, as when a process dies.
        drop(ra);
        wait_for(&mut w, DiscoveryEvent::Removed(a.id), &[], EVENTUALLY).await?;
        check_eq!(
            d.list(&ep).await?,
            vec![keep.clone()],
            "the renewed instance must outlive the lease; the abandoned one must not"
        );
        rk.deregister().await?;
        Ok(())
    })
    .await
}

async fn reregister_after_lease_loss(cx: &Ctx<'_>) -> CaseResult {
    with_discovery(cx, LEASE, |d, ep| async move {
        let a = instance(&ep, "addr-a");
        let ra = d.register(a.clone()).await?;
        let mut w = d.watch(&ep).await?;
        check_eq!(
            next_event(&mut w, "the current instance").await?,
            DiscoveryEvent::Added(a.clone())
        );
        // Lose the record behind the registration's back.
        d.bucket().delete(&a.key()).await?;
        // A kv watch reports the gap; a list-only watch may miss a gap
        // shorter than its resync period, so only the return is required.
        if d.bucket().capabilities().watch {
            wait_for(&mut w, DiscoveryEvent::Removed(a.id), &[], EVENT_WAIT).await?;
            wait_for(&mut w, DiscoveryEvent::Added(a.clone()), &[], EVENTUALLY).await?;
        }
        within(EVENTUALLY, "the instance to be registered again", async {
            loop {
                if d.list(&ep).await? == vec![a.clone()] && ra.reregistrations() >= 1 {
                    return Ok::<(), Verdict>(());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await??;
        ra.deregister().await?;
        Ok(())
    })
    .await
}

async fn watch_resync_after_restart(cx: &Ctx<'_>) -> CaseResult {
    // A restart may outlast a short lease; the lease is longer here so the
    // case checks the watch, and tolerates the first instance flapping.
    with_discovery(cx, Duration::from_secs(3), |d, ep| async move {
        let a = instance(&ep, "addr-a");
        let ra = d.register(a.clone()).await?;
        let mut w = d.watch(&ep).await?;
        check_eq!(
            next_event(&mut w, "the current instance").await?,
            DiscoveryEvent::Added(a.clone())
        );
        cx.restart().await?;
        let b = instance(&ep, "addr-b");
        // Registration may need the connection to come back first.
        let rb = within(EVENTUALLY, "a registration after the restart", async {
            loop {
                match d.register(b.clone()).await {
                    Ok(r) => return r,
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        })
        .await?;
        wait_for(
            &mut w,
            DiscoveryEvent::Added(b.clone()),
            &[a.id],
            EVENTUALLY,
        )
        .await?;
        rb.deregister().await?;
        wait_for(&mut w, DiscoveryEvent::Removed(b.id), &[a.id], EVENTUALLY).await?;
        // The first registration survives (or comes back after) the restart.
        within(EVENTUALLY, "the first instance to be listed", async {
            loop {
                if d.list(&ep).await.is_ok_and(|l| l == vec![a.clone()]) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await?;
        ra.deregister().await?;
        Ok(())
    })
    .await
}
