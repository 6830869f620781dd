//! QUIC: plane-quic against quinn used directly (one bi-stream per call),
//! with the same TLS (rustls + ring, TLS 1.3, a generated certificate, the
//! same ALPN) and the same transport settings as plane-quic's defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, Mutex};

use crate::drive::{self, Pair, Params, PubSub, PubSubFactory, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// Largest request the raw server reads (plane-quic's default `max_payload`).
const MAX_PAYLOAD: usize = 8 << 20;
/// Events queued per subscriber at the raw publisher before it drops
/// (plane-quic's `SUBSCRIBER_QUEUE`).
const SUBSCRIBER_QUEUE: usize = plane::quic::events::SUBSCRIBER_QUEUE;

/// Run the request scenarios on `quic://`.
pub async fn run(rows: &mut Vec<Row>, p: &Params) -> Result<()> {
    let registry = plane::registry();
    // Discovery on an in-process kv, as the conformance suite does.
    let requests = registry
        .requests("quic://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-quic")
        .await?;
    let _servers = plane_ops::serve(&requests).await?;

    // The raw side: one endpoint that serves and calls itself, like the
    // plane handle above, and one connection shared by every call.
    let identity = raw_identity()?;
    let endpoint = raw_endpoint(&identity)?;
    let addr = endpoint.local_addr()?;
    let server = tokio::spawn(raw_server(endpoint.clone()));
    let connection = endpoint.connect(addr, "plane")?.await?;

    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(
            connection.clone(),
            Bytes::from(vec![0x5a; SMALL]),
        )),
    };
    step(
        rows,
        "quic unary_latency",
        drive::unary_latency("quic", &unary, p),
    )
    .await?;
    step(
        rows,
        "quic unary_throughput",
        drive::unary_throughput("quic", &unary, p),
    )
    .await?;
    step(
        rows,
        "quic unary_allocs",
        drive::unary_allocs("quic", "unary_latency", &unary, p),
    )
    .await?;
    let awaiting = Pair {
        plane: plane_ops::plane_unary_await(&requests),
        raw: Some(raw_unary(connection.clone(), plane_ops::await_payload())),
    };
    step(
        rows,
        "quic unary_await",
        drive::unary_await("quic", &awaiting, p),
    )
    .await?;
    step(rows, "quic paced_slo", drive::paced_slo("quic", &unary, p)).await?;
    let streamed = Pair {
        plane: plane_ops::plane_streamed(&requests),
        raw: Some(raw_streamed(connection.clone())),
    };
    step(
        rows,
        "quic stream_throughput",
        drive::stream_throughput("quic", &streamed, p),
    )
    .await?;

    // Events: one plane handle publishes and subscribes to itself over
    // loopback; the raw side is one publisher endpoint and a subscriber
    // connection to it, with the same non-blocking publish (a bounded
    // queue per subscriber drained into its stream, dropping when full).
    let events = registry
        .events("quic://127.0.0.1:0?discovery=mem%3A%2F%2Fbench-quic-events")
        .await?;
    let (subscribed, registrations) = mpsc::unbounded_channel();
    let publisher_endpoint = raw_endpoint(&identity)?;
    let publisher_addr = publisher_endpoint.local_addr()?;
    let publisher = tokio::spawn(raw_publisher(publisher_endpoint.clone(), subscribed));
    let to_publisher = endpoint.connect(publisher_addr, "plane")?.await?;
    let pubsub = Pair {
        plane: plane_ops::plane_pubsub(&events, "quic"),
        raw: Some(raw_pubsub(to_publisher.clone(), registrations)),
    };
    step(
        rows,
        "quic pubsub_throughput",
        drive::pubsub_throughput("quic", &pubsub, p),
    )
    .await?;
    to_publisher.close(VarInt::from_u32(0), b"done");
    connection.close(VarInt::from_u32(0), b"done");
    server.abort();
    publisher.abort();
    publisher_endpoint.close(VarInt::from_u32(0), b"done");
    endpoint.close(VarInt::from_u32(0), b"done");
    Ok(())
}

/// plane-quic's default transport: 6 s idle timeout with keep-alives every
/// 2 s, 4096 concurrent streams, a 64 KiB stream window.
fn transport() -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(quinn::IdleTimeout::try_from(Duration::from_secs(6))?));
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_concurrent_bidi_streams(VarInt::from_u32(4096));
    t.max_concurrent_uni_streams(VarInt::from_u32(4096));
    t.stream_receive_window(VarInt::from_u32(65_536));
    Ok(Arc::new(t))
}

/// The raw side's certificate and key, shared by its endpoints so each
/// trusts the others.
fn raw_identity() -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>)> {
    let generated =
        rcgen::generate_simple_self_signed(vec!["plane".to_owned(), "localhost".to_owned()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
    Ok((generated.cert.der().clone(), key))
}

fn raw_endpoint(
    (cert, key): &(CertificateDer<'static>, PrivateKeyDer<'static>),
) -> Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let (cert, key) = (cert.clone(), key.clone_key());
    let alpn = plane::quic::tls::ALPN.to_vec();

    let mut server_tls = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)?;
    server_tls.alpn_protocols = vec![alpn.clone()];
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        quinn::crypto::rustls::QuicServerConfig::try_from(server_tls)?,
    ));
    server.transport_config(transport()?);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client_tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_tls.alpn_protocols = vec![alpn];
    let mut client = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(client_tls)?,
    ));
    client.transport_config(transport()?);

    let bind: SocketAddr = "127.0.0.1:0".parse()?;
    let mut endpoint = quinn::Endpoint::server(server, bind)?;
    endpoint.set_default_client_config(client);
    Ok(endpoint)
}

/// Accept connections; each stream is one call: an echo of the request, or,
/// for a request starting with `n`, that many length-prefixed 64 B chunks.
async fn raw_server(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(connection) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = connection.accept_bi().await {
                tokio::spawn(raw_call(send, recv));
            }
        });
    }
}

/// The raw publisher's side of a subscription: the queue `publish` offers
/// events to.
type Subscriber = mpsc::Sender<Bytes>;

/// The raw events publisher: accepts one subscriber connection on its own
/// endpoint; each bi-stream on it is one subscription. It
/// answers with one byte once the subscriber's queue exists, hands the queue
/// to `subscribed` and drains it into the stream, length-prefixed.
async fn raw_publisher(endpoint: quinn::Endpoint, subscribed: mpsc::UnboundedSender<Subscriber>) {
    let connection = match endpoint.accept().await {
        Some(incoming) => match incoming.await {
            Ok(c) => c,
            Err(_) => return,
        },
        None => return,
    };
    while let Ok((mut send, mut recv)) = connection.accept_bi().await {
        let mut request = [0u8; 1];
        if recv.read_exact(&mut request).await.is_err() {
            continue;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(SUBSCRIBER_QUEUE);
        if send.write_all(b"k").await.is_err() || subscribed.send(tx).is_err() {
            return;
        }
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                let prefix = Bytes::copy_from_slice(&(event.len() as u32).to_be_bytes());
                if send.write_all_chunks(&mut [prefix, event]).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn raw_call(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let Ok(request) = recv.read_to_end(MAX_PAYLOAD).await else {
        return;
    };
    if let Some(n) = request.strip_prefix(b"n") {
        let n: u32 = std::str::from_utf8(n)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut frame = (SMALL as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0x5a; SMALL]);
        let frame = Bytes::from(frame);
        for _ in 0..n {
            if send.write_chunk(frame.clone()).await.is_err() {
                return;
            }
        }
    } else {
        if request.first() == Some(&b'y') {
            tokio::task::yield_now().await;
        }
        if send.write_all(&request).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

fn raw_unary(connection: quinn::Connection, payload: Bytes) -> Unary {
    Arc::new(move || {
        let connection = connection.clone();
        let payload = payload.clone();
        Box::pin(async move {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_chunk(payload).await?;
            send.finish()?;
            let reply = recv.read_to_end(MAX_PAYLOAD).await?;
            if reply.len() != SMALL {
                return Err(format!("echo of {} bytes", reply.len()).into());
            }
            Ok(())
        })
    })
}

fn raw_streamed(connection: quinn::Connection) -> Streamed {
    Arc::new(move |n| {
        let connection = connection.clone();
        Box::pin(async move {
            let (mut send, mut recv) = connection.open_bi().await?;
            send.write_chunk(Bytes::from(format!("n{n}"))).await?;
            send.finish()?;
            let mut got = 0;
            let mut prefix = [0u8; 4];
            let mut chunk = vec![0u8; SMALL];
            loop {
                match recv.read_exact(&mut prefix).await {
                    Ok(()) => {}
                    Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(got),
                    Err(e) => return Err(e.into()),
                }
                let len = u32::from_be_bytes(prefix) as usize;
                chunk.resize(len, 0);
                recv.read_exact(&mut chunk).await?;
                got += 1;
            }
        })
    })
}

/// A raw subscription per round: a bi-stream to the raw publisher, counted
/// frame by frame; publishing offers the event to the subscriber's queue
/// and drops it when the queue is full, as plane-quic's publisher does.
fn raw_pubsub(
    connection: quinn::Connection,
    registrations: mpsc::UnboundedReceiver<Subscriber>,
) -> PubSubFactory {
    let registrations = Arc::new(Mutex::new(registrations));
    let subscriber = connection;
    Arc::new(move || {
        let subscriber = subscriber.clone();
        let registrations = registrations.clone();
        Box::pin(async move {
            let (mut send, mut recv) = subscriber.open_bi().await?;
            send.write_all(b"s").await?;
            let mut ack = [0u8; 1];
            recv.read_exact(&mut ack).await?;
            let queue = registrations
                .lock()
                .await
                .recv()
                .await
                .ok_or("the raw publisher ended")?;
            // Same settling time as the plane side.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let publish: Arc<dyn Fn(Bytes) -> BoxFuture<'static, Result<()>> + Send + Sync> =
                Arc::new(move |event: Bytes| {
                    // Full: dropped, as at-most-once allows; the receiver's
                    // count shows it.
                    let _ = queue.try_send(event);
                    Box::pin(async { Ok(()) })
                });
            let frames = futures_util::stream::unfold((send, recv), |(send, mut recv)| async {
                let mut prefix = [0u8; 4];
                recv.read_exact(&mut prefix).await.ok()?;
                let mut event = vec![0u8; u32::from_be_bytes(prefix) as usize];
                recv.read_exact(&mut event).await.ok()?;
                Some((event, (send, recv)))
            });
            Ok(PubSub::new(publish, Box::pin(frames), |_| true))
        })
    })
}
