//! QUIC: plane-quic against quinn used directly (one bi-stream per call),
//! with the same TLS (rustls + ring, TLS 1.3, a generated certificate, the
//! same ALPN) and the same transport settings as plane-quic's defaults.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::VarInt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::drive::{self, Pair, Params, Streamed, Unary, SMALL};
use crate::plane_ops;
use crate::report::Row;
use crate::{step, Result};

/// Largest request the raw server reads (plane-quic's default `max_payload`).
const MAX_PAYLOAD: usize = 8 << 20;

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
    let endpoint = raw_endpoint()?;
    let addr = endpoint.local_addr()?;
    let server = tokio::spawn(raw_server(endpoint.clone()));
    let connection = endpoint.connect(addr, "plane")?.await?;

    let unary = Pair {
        plane: plane_ops::plane_unary(&requests),
        raw: Some(raw_unary(connection.clone())),
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
    connection.close(VarInt::from_u32(0), b"done");
    server.abort();
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

fn raw_endpoint() -> Result<quinn::Endpoint> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let generated =
        rcgen::generate_simple_self_signed(vec!["plane".to_owned(), "localhost".to_owned()])?;
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        generated.signing_key.serialize_der(),
    ));
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
    } else if send.write_all(&request).await.is_err() {
        return;
    }
    let _ = send.finish();
}

fn raw_unary(connection: quinn::Connection) -> Unary {
    let payload = Bytes::from(vec![0x5a; SMALL]);
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
