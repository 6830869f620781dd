//! A subscription's bounds: both refused at zero, and the byte bound applied
//! by default, over the in-memory backend.

use futures_util::StreamExt;

use plane_core::events::buffer::{cost, EVENT_OVERHEAD};
use plane_core::events::SubscribeOptions;
use plane_core::ErrorKind;
use plane_mem::{Hub, MemConfig};

#[tokio::test]
async fn zero_bounds_are_invalid_config() {
    let events = Hub::new().events(&MemConfig::default());
    for (options, what) in [
        (SubscribeOptions::new("b.zero").capacity(0), "capacity"),
        (SubscribeOptions::new("b.zero").max_bytes(0), "max_bytes"),
    ] {
        let e = events.subscribe_with(options).await.err().expect(what);
        assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{e}");
        assert!(e.to_string().contains(what), "{e}");
    }
}

#[tokio::test]
async fn the_default_byte_bound_holds_large_events_and_reports_the_rest() {
    let events = Hub::new().events(&MemConfig::default());
    // Room for 4096 events by count; by bytes for far fewer of 64 KiB.
    let mut sub = events.subscribe("b.large").await.unwrap();
    const N: u64 = 1500;
    const SIZE: usize = 64 * 1024;
    for i in 0..N {
        events
            .publish("b.large", vec![i as u8; SIZE])
            .await
            .unwrap();
    }
    events.flush().await.unwrap();
    let (mut delivered, mut held_bytes, mut dropped) = (0u64, 0usize, 0u64);
    let mut one = SIZE + EVENT_OVERHEAD;
    while let Ok(Some(item)) =
        tokio::time::timeout(std::time::Duration::from_millis(200), sub.next()).await
    {
        match item {
            Ok(e) => {
                assert_eq!(dropped, 0, "the gap comes after what was held");
                delivered += 1;
                one = cost(&e);
                held_bytes += one;
            }
            Err(e) => {
                assert_eq!(e.kind(), ErrorKind::Overloaded, "{e}");
                dropped += e
                    .message()
                    .split(' ')
                    .next()
                    .unwrap()
                    .parse::<u64>()
                    .unwrap();
            }
        }
    }
    assert!(held_bytes <= SubscribeOptions::DEFAULT_MAX_BYTES);
    assert!(
        held_bytes + one > SubscribeOptions::DEFAULT_MAX_BYTES,
        "one more event would not have fit: {delivered} delivered"
    );
    assert_eq!(delivered + dropped, N, "every event delivered or reported");
}
