//! Events handle behaviour that needs a backend, over the in-memory one.

use futures_util::StreamExt;

use plane_mem::{Hub, MemConfig};

#[tokio::test]
async fn a_drained_subscription_yields_what_it_had_then_ends() {
    let events = Hub::new().events(&MemConfig::default());
    let mut sub = events.subscribe("drain.>").await.unwrap();
    for i in 0..3 {
        events.publish("drain.x", format!("e{i}")).await.unwrap();
    }
    sub.drain();
    events.publish("drain.x", "after").await.unwrap();
    let mut got = Vec::new();
    while let Some(item) = sub.next().await {
        got.push(item.unwrap().body().to_bytes());
    }
    assert_eq!(got, vec!["e0", "e1", "e2"]);
}
