//! The events plane between separate handles (separate sockets, as separate
//! processes would have), found through a shared `mem://` discovery kv.

use std::time::Duration;

use futures_util::StreamExt;
use plane_core::{Events, Registry};
use plane_quic::{QuicConfig, QuicEvents};

async fn handle(hub: &str) -> Events {
    let registry = Registry::with_defaults();
    let config = QuicConfig::new("127.0.0.1:0".parse().expect("address"), hub.to_owned());
    let discovery = config.discovery(&registry).await.expect("discovery");
    Events::new(
        QuicEvents::connect(config, discovery)
            .await
            .expect("events plane"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_subscribers_of_other_handles_and_of_later_publishers() {
    let hub = format!("mem://quic-events-{:016x}", rand::random::<u64>());
    let publisher = handle(&hub).await;
    let subscriber = handle(&hub).await;
    let mut sub = subscriber.subscribe("peer.>").await.expect("subscribe");

    // A publisher known when subscribing: nothing published after
    // `subscribe` returned is lost.
    publisher.publish("peer.a", "one").await.expect("publish");
    let e = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the event in time")
        .expect("an open subscription")
        .expect("an event");
    assert_eq!(e.subject, "peer.a");
    assert_eq!(e.body().to_bytes(), "one");
    let origin = e.origin.expect("an origin");
    assert_eq!(origin.publisher, publisher.publisher_id());
    assert_eq!(origin.sequence, 1);

    // A publisher that appears later is found through the discovery watch.
    let late = handle(&hub).await;
    let found = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            late.publish("peer.late", "hello").await.expect("publish");
            if let Ok(Some(item)) =
                tokio::time::timeout(Duration::from_millis(200), sub.next()).await
            {
                let e = item.expect("an event");
                if e.origin.map(|o| o.publisher) == Some(late.publisher_id()) {
                    return e;
                }
            }
        }
    })
    .await
    .expect("an event of the later publisher");
    assert_eq!(found.subject, "peer.late");
    sub.close();
}
