//! Offloading large bodies into an object bucket, over the in-memory backend.

use bytes::Bytes;
use plane_core::message::Headers;
use plane_core::message::{names, Body, Message};
use plane_core::objects::Digester;
use plane_core::offload::*;
use plane_core::ErrorKind;
use plane_mem::Hub;

async fn offload(threshold: usize) -> Offload {
    let objects = Hub::new().objects(&Default::default());
    let bucket = objects.create_bucket("payloads").await.unwrap();
    Offload::new(bucket, threshold)
}

#[tokio::test]
async fn small_messages_pass_through() {
    let o = offload(64).await;
    let m = Message::new(Headers::new().with("a", "b"), "small");
    assert_eq!(o.offload(m.clone()).await.unwrap(), m);
    assert_eq!(o.resolve(m.clone()).await.unwrap(), m);
    o.discard(&m).await.unwrap();
    assert!(o.bucket().list("").await.unwrap().is_empty());
}

#[tokio::test]
async fn large_bodies_round_trip_with_headers_and_parts() {
    let o = offload(16).await;
    let single = Message::new(Headers::new().with("trace", "1"), vec![9u8; 100_000]);
    let handle = o.offload(single.clone()).await.unwrap();
    assert!(Offload::is_offloaded(&handle));
    assert!(handle.body.is_empty());
    assert_eq!(handle.headers.get("trace"), Some("1"));
    assert_eq!(handle.headers.get(names::OBJECT_SIZE), Some("100000"));
    assert!(handle.payload_len() < 200);
    // Offloading a handle again is a no-op.
    assert_eq!(o.offload(handle.clone()).await.unwrap(), handle);
    assert_eq!(o.resolve(handle.clone()).await.unwrap(), single);

    let multi = Message::from(Body::from_parts(vec![
        Bytes::from(vec![1u8; 40]),
        Bytes::new(),
        Bytes::from(vec![2u8; 7]),
    ]));
    let handle2 = o.offload(multi.clone()).await.unwrap();
    assert_eq!(handle2.headers.get(names::OBJECT_PARTS), Some("40,0,7"));
    let back = o.resolve(handle2.clone()).await.unwrap();
    assert_eq!(back, multi);
    assert_eq!(back.body.parts().len(), 3);

    assert_eq!(o.bucket().list("offload/").await.unwrap().len(), 2);
    o.discard(&handle).await.unwrap();
    o.discard(&handle).await.unwrap();
    assert_eq!(
        o.resolve(handle).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(o.bucket().list("").await.unwrap().len(), 1);
}

#[tokio::test]
async fn tampered_or_foreign_handles_are_refused() {
    let o = offload(8).await;
    let handle = o.offload(Message::from(vec![5u8; 64])).await.unwrap();

    let mut wrong_digest = handle.clone();
    wrong_digest
        .headers
        .insert(names::OBJECT_DIGEST, Digester::of(b"something else"));
    assert_eq!(
        o.resolve(wrong_digest).await.unwrap_err().kind(),
        ErrorKind::Decode
    );

    let mut wrong_size = handle.clone();
    wrong_size.headers.insert(names::OBJECT_SIZE, "63");
    assert_eq!(
        o.resolve(wrong_size).await.unwrap_err().kind(),
        ErrorKind::Decode
    );

    let mut foreign = handle.clone();
    foreign.headers.insert(names::OBJECT_REF, "other/offload/x");
    assert_eq!(
        o.resolve(foreign).await.unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );

    let limited = o.clone().max_resolve(10);
    assert_eq!(
        limited.resolve(handle.clone()).await.unwrap_err().kind(),
        ErrorKind::PayloadTooLarge
    );
    assert_eq!(o.resolve(handle).await.unwrap().body.len(), 64);
}
