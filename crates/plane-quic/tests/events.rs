//! The events plane between separate handles (separate sockets, as separate
//! processes would have), found through a shared `mem://` discovery kv.

use plane_core::Events;
use plane_quic::{QuicConfig, QuicEvents};

async fn handle(hub: &str) -> Events {
    let registry = plane_mem::registry();
    let config = QuicConfig::new("127.0.0.1:0".parse().expect("address"), hub.to_owned());
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .expect("discovery");
    Events::new(
        QuicEvents::connect(config, discovery)
            .await
            .expect("events plane"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_of_other_handles_and_of_later_publishers() {
    let hub = format!("mem://quic-events-{:016x}", rand::random::<u64>());
    plane_conformance::peer::events_between_handles(|| handle(&hub)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_loses_nothing_unreported() {
    let hub = format!("mem://quic-events-{:016x}", rand::random::<u64>());
    plane_conformance::peer::a_burst_loses_nothing_unreported(
        handle(&hub).await,
        handle(&hub).await,
    )
    .await;
}
