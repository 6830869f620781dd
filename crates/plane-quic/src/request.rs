//! The QUIC request plane: one quinn endpoint per handle, serving every
//! endpoint instance registered through it and calling peers found through
//! discovery.
//!
//! # Streams
//!
//! Each call is one bidirectional QUIC stream on a connection shared by every
//! call between the same two processes. The caller writes the request
//! envelope (and later, perhaps, a `stop` envelope); the server writes the
//! reply frames and finishes the stream after the end marker or an error.
//! Envelopes are length-delimited (`wire::encode_delimited`'s format); the body
//! parts are handed to quinn as they are, without being copied into one
//! buffer.
//!
//! # Cancellation
//!
//! A graceful stop is a `stop` envelope on the call's stream. A kill resets
//! the caller's side of the stream and asks the server to stop sending (QUIC
//! `RESET_STREAM` + `STOP_SENDING`); the server treats a reset stream, a
//! `kill` envelope, or a lost connection as a kill of the handler, and a
//! handler that goes away without its end marker resets its side, which the
//! caller reports as `Disconnected`.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use plane_core::discovery::Instance;
use plane_core::message::names;
use plane_core::request::InstanceId;
use plane_core::wire::{self, DelimitedDecoder, Envelope, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::events::EventWriter;
use plane_peer::{
    self as peer, CallLink, Control, Endpoints, LinkSettings, PeerRequests, Pool, ReplyWriter,
    RequestLinks, ServedCall,
};
use quinn::VarInt;

use crate::error::{connection_error, refusal, write_error};
use crate::tls;
use crate::QuicConfig;
use plane_peer::tls::Tls;

/// Application error code of a stream reset because the call was killed.
const KILLED: VarInt = VarInt::from_u32(1);
/// Application error code of a stream reset because the handler went away.
const ABANDONED: VarInt = VarInt::from_u32(2);
/// Application error code when an endpoint is closed.
const CLOSED: VarInt = VarInt::from_u32(3);
/// Bytes read from a stream per poll.
const READ_CHUNK: usize = 16 * 1024;

/// Write one envelope as a length-delimited frame, handing the body's parts
/// to quinn without copying them.
async fn write_envelope(send: &mut quinn::SendStream, env: &Envelope) -> Result<()> {
    let mut chunks = Vec::with_capacity(4);
    frame_chunks(env, &mut chunks)?;
    send.write_all_chunks(&mut chunks)
        .await
        .map_err(write_error)
}

/// Append one envelope to `chunks` as a length-delimited frame: the prefix,
/// then its encoded parts (the body's parts shared, not copied).
fn frame_chunks(env: &Envelope, chunks: &mut Vec<Bytes>) -> Result<()> {
    let parts = wire::encode_parts(env);
    let len: usize = parts.iter().map(Bytes::len).sum();
    let prefix = u32::try_from(len).map_err(|_| {
        Error::new(
            ErrorKind::PayloadTooLarge,
            "frame longer than a u32 length prefix",
        )
    })?;
    chunks.push(Bytes::copy_from_slice(&prefix.to_be_bytes()));
    chunks.extend(parts);
    Ok(())
}

/// Reads envelopes off a QUIC receive stream.
struct EnvelopeReader {
    recv: quinn::RecvStream,
    decoder: DelimitedDecoder,
}

impl EnvelopeReader {
    fn new(recv: quinn::RecvStream, limits: Limits) -> Self {
        EnvelopeReader {
            recv,
            decoder: DelimitedDecoder::with_limits(limits),
        }
    }

    /// The next envelope; `Ok(None)` at the end of the stream (clean or not:
    /// a reset or lost connection ends it too).
    fn poll_envelope(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<std::result::Result<Option<Envelope>, wire::WireError>> {
        loop {
            if let Some(env) = self.decoder.next_envelope()? {
                return Poll::Ready(Ok(Some(env)));
            }
            // Uninitialised: zeroing 16 KiB on every poll (most of which
            // find a small frame, or nothing) cost more than the read.
            let mut space = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
            let mut buf = tokio::io::ReadBuf::uninit(&mut space);
            match ready!(self.recv.poll_read_buf(cx, &mut buf)) {
                Err(_) => return Poll::Ready(Ok(None)),
                Ok(()) if buf.filled().is_empty() => return Poll::Ready(Ok(None)),
                Ok(()) => self.decoder.push(buf.filled()),
            }
        }
    }

    async fn next(&mut self) -> std::result::Result<Option<Envelope>, wire::WireError> {
        std::future::poll_fn(|cx| self.poll_envelope(cx)).await
    }
}

/// The QUIC request plane. Build it with [`QuicRequests::connect`] (or
/// through the registry with a `quic://` URL) and wrap it in
/// [`plane_core::Requests`]; its own methods are on [`QuicRequests::links`].
pub type QuicRequests = PeerRequests<QuicLinks>;

/// What the QUIC request plane is made of: one quinn endpoint that serves
/// this process's endpoint instances and opens a stream per call to peers.
pub struct QuicLinks {
    pub(crate) node: Arc<Node>,
}

impl std::fmt::Debug for QuicLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicLinks")
            .field("local_addr", &self.local_addr().ok())
            .finish_non_exhaustive()
    }
}

/// A peer process: its address and the certificate fingerprint it publishes.
type ConnectionKey = (SocketAddr, String);

pub(crate) struct Node {
    pub(crate) config: QuicConfig,
    tls: Tls,
    server_config: quinn::ServerConfig,
    endpoint: RwLock<quinn::Endpoint>,
    endpoints: Endpoints,
    connections: Pool<ConnectionKey, quinn::Connection>,
    pub(crate) limits: Limits,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .close(CLOSED, b"closed");
    }
}

fn transport_config(config: &QuicConfig) -> Result<Arc<quinn::TransportConfig>> {
    let mut t = quinn::TransportConfig::default();
    let idle = quinn::IdleTimeout::try_from(config.idle_timeout).map_err(|e| {
        Error::new(ErrorKind::InvalidConfig, format!("idle_timeout: {e}")).with_source(e)
    })?;
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(Some(config.idle_timeout / 3));
    t.max_concurrent_bidi_streams(VarInt::from_u32(config.max_streams));
    t.max_concurrent_uni_streams(VarInt::from_u32(config.max_streams));
    // The per-stream window is what a stalled reader lets a handler run
    // ahead by; keep it small so memory stays bounded per call.
    t.stream_receive_window(VarInt::from_u32(config.stream_window));
    Ok(Arc::new(t))
}

fn bind(config: &QuicConfig, server_config: quinn::ServerConfig) -> Result<quinn::Endpoint> {
    quinn::Endpoint::server(server_config, config.bind).map_err(|e| {
        Error::new(
            ErrorKind::Connection,
            format!("cannot bind a QUIC endpoint on {}: {e}", config.bind),
        )
        .with_source(e)
    })
}

impl RequestLinks for QuicLinks {
    type Transport = crate::Quic;
    type Link = QuicLink;

    fn bind(config: QuicConfig, endpoints: Endpoints) -> Result<Self> {
        let tls = Tls::new(&config.tls, tls::PUBLISHED)?;
        let rustls_server = tls.server_config();
        let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(rustls_server)
            .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("tls: {e}")))?;
        let mut server_config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        server_config.transport_config(transport_config(&config)?);
        let endpoint = bind(&config, server_config.clone())?;
        let limits = peer::limits(config.max_payload);
        let node = Arc::new(Node {
            tls,
            server_config,
            endpoint: RwLock::new(endpoint.clone()),
            endpoints,
            connections: Pool::default(),
            limits,
            config,
        });
        node.accept(endpoint);
        Ok(QuicLinks { node })
    }

    fn settings(&self) -> LinkSettings {
        let c = &self.node.config;
        LinkSettings {
            max_payload: c.max_payload,
            connect_timeout: c.connect_timeout,
            // QUIC notices a lost peer itself (its idle timeout and
            // keep-alives).
            idle_limit: None,
        }
    }

    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        self.node.record(endpoint, instance)
    }

    async fn open(&self, instance: &Instance, request: Envelope) -> Result<QuicLink> {
        let (conn, mut send, recv) = self.node.open(instance).await?;
        write_envelope(&mut send, &request).await.map_err(|e| {
            refusal(&conn).unwrap_or_else(|| {
                Error::new(ErrorKind::Disconnected, "the call could not be sent").with_source(e)
            })
        })?;
        Ok(QuicLink {
            reader: EnvelopeReader::new(recv, self.node.limits),
            send: Arc::new(tokio::sync::Mutex::new(Some(send))),
            conn,
        })
    }

    async fn rebind(&self) -> Result<()> {
        // Close the endpoint (every connection and call in flight is lost)
        // and bind a new one, on a new port when the configured port is 0.
        let node = &self.node;
        let old = node
            .endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        old.close(CLOSED, b"restart");
        old.wait_idle().await;
        let endpoint = bind(&node.config, node.server_config.clone())?;
        *node.endpoint.write().unwrap_or_else(|p| p.into_inner()) = endpoint.clone();
        node.connections.clear();
        node.accept(endpoint);
        Ok(())
    }
}

impl QuicLinks {
    /// The address the endpoint is bound to.
    ///
    /// # Errors
    /// `Connection` if the socket is gone.
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.node.local_addr()
    }

    /// SHA-256 fingerprint of this endpoint's certificate, as published in
    /// discovery.
    pub fn fingerprint(&self) -> String {
        self.node.tls.identity().fingerprint()
    }

    /// Open a stream to this endpoint itself, write `bytes` as they are (not
    /// an envelope), and return everything the server answers on it, up to
    /// 64 KiB. A test hook (feature `testkit`) for checking that a peer
    /// survives garbage.
    ///
    /// # Errors
    /// `Connection` if the endpoint cannot be reached.
    #[cfg(feature = "testkit")]
    pub async fn send_raw(&self, bytes: &[u8]) -> Result<Vec<u8>> {
        let node = &self.node;
        let me = node.record("raw", InstanceId(0))?;
        let (_conn, mut send, mut recv) = node.open(&me).await?;
        send.write_all(bytes)
            .await
            .map_err(|e| connection_error("cannot write", e))?;
        let _ = send.finish();
        recv.read_to_end(64 * 1024)
            .await
            .map_err(|e| connection_error("cannot read the answer", e))
    }
}

impl Node {
    fn local_addr(&self) -> Result<SocketAddr> {
        self.endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .local_addr()
            .map_err(|e| connection_error("endpoint address", e))
    }

    /// The address published in discovery.
    fn advertised(&self) -> Result<String> {
        Ok(peer::advertised(
            self.local_addr()?,
            self.config.advertise.as_deref(),
        ))
    }

    /// The discovery record of `instance` of `endpoint` served here.
    pub(crate) fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        Ok(self
            .tls
            .publish(Instance::new(endpoint, instance, self.advertised()?)))
    }

    fn client_config(&self, instance: &Instance) -> Result<quinn::ClientConfig> {
        let crypto =
            quinn::crypto::rustls::QuicClientConfig::try_from(self.tls.client_config(instance)?)
                .map_err(|e| Error::new(ErrorKind::InvalidConfig, format!("tls: {e}")))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        client.transport_config(transport_config(&self.config)?);
        Ok(client)
    }

    async fn resolve(address: &str) -> Result<SocketAddr> {
        if let Ok(a) = address.parse() {
            return Ok(a);
        }
        tokio::net::lookup_host(address)
            .await
            .map_err(|e| connection_error(&format!("cannot resolve `{address}`"), e))?
            .next()
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Connection,
                    format!("`{address}` resolves to nothing"),
                )
            })
    }

    /// The shared connection to `instance`'s process, connecting if needed.
    async fn connection(&self, instance: &Instance, fresh: bool) -> Result<quinn::Connection> {
        let addr = Self::resolve(&instance.address).await?;
        let key = (addr, self.tls.fingerprint_of(instance).to_owned());
        let alive = |c: &quinn::Connection| c.close_reason().is_none();
        self.connections
            .get(&key, fresh, alive, || async {
                let client = self.client_config(instance)?;
                let name = self.tls.server_name_of(instance);
                let endpoint = self
                    .endpoint
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                let connecting = endpoint
                    .connect_with(client, addr, name)
                    .map_err(|e| connection_error(&format!("cannot connect to {addr}"), e))?;
                tokio::time::timeout(self.config.connect_timeout, connecting)
                    .await
                    .map_err(|_| {
                        Error::new(
                            ErrorKind::Connection,
                            format!("connecting to {addr} timed out"),
                        )
                    })?
                    .map_err(|e| connection_error(&format!("cannot connect to {addr}"), e))
            })
            .await
    }

    /// Open a call's stream to `instance`, replacing a cached connection
    /// that turns out to be dead.
    pub(crate) async fn open(
        &self,
        instance: &Instance,
    ) -> Result<(quinn::Connection, quinn::SendStream, quinn::RecvStream)> {
        let conn = self.connection(instance, false).await?;
        match conn.open_bi().await {
            Ok((s, r)) => Ok((conn, s, r)),
            Err(_) => {
                let conn = self.connection(instance, true).await?;
                let (s, r) = conn.open_bi().await.map_err(|e| {
                    refusal(&conn).unwrap_or_else(|| connection_error("cannot open a stream", e))
                })?;
                Ok((conn, s, r))
            }
        }
    }
}

/// The caller's side of one call's stream.
pub struct QuicLink {
    reader: EnvelopeReader,
    send: Arc<tokio::sync::Mutex<Option<quinn::SendStream>>>,
    conn: quinn::Connection,
}

impl CallLink for QuicLink {
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>> {
        Poll::Ready(match ready!(self.reader.poll_envelope(cx)) {
            Ok(Some(env)) => Some(Ok(env)),
            // A stream cut by a refused certificate is `Unauthorized`; any
            // other end is the plane's to judge (`Disconnected` without an
            // end marker).
            Ok(None) => refusal(&self.conn).map(Err),
            Err(e) => Some(Err(peer::malformed(e))),
        })
    }

    fn control(&mut self, env: Envelope) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let send = self.send.clone();
        rt.spawn(async move {
            if let Some(s) = send.lock().await.as_mut() {
                // The call may be over already; nothing to control then.
                let _ = write_envelope(s, &env).await;
            }
        });
        true
    }

    fn kill(&mut self) {
        // Both directions at once: the server reads the reset as a kill, and
        // stops sending what nobody will read.
        let _ = self.reader.recv.stop(KILLED);
        let send = self.send.clone();
        let reset_now = match send.try_lock() {
            Ok(mut s) => {
                if let Some(mut s) = s.take() {
                    let _ = s.reset(KILLED);
                }
                true
            }
            Err(_) => false,
        };
        if !reset_now {
            // A control envelope is being written right now: reset after it.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    if let Some(mut s) = send.lock().await.take() {
                        let _ = s.reset(KILLED);
                    }
                });
            }
        }
    }
}

impl Node {
    /// Serve what arrives on `endpoint` until it is closed.
    fn accept(&self, endpoint: quinn::Endpoint) {
        tokio::spawn(accept_loop(endpoint, self.endpoints.clone(), self.limits));
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, endpoints: Endpoints, limits: Limits) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(serve_connection(incoming, endpoints.clone(), limits));
    }
}

async fn serve_connection(incoming: quinn::Incoming, endpoints: Endpoints, limits: Limits) {
    let conn = match incoming.await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "QUIC handshake failed");
            return;
        }
    };
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(serve_stream(send, recv, endpoints.clone(), limits));
    }
}

/// Refuse a stream with a typed error and finish it.
async fn refuse(mut send: quinn::SendStream, id: RequestId, error: Error) {
    if write_envelope(&mut send, &Envelope::error(id, &error))
        .await
        .is_ok()
    {
        let _ = send.finish();
    }
}

async fn serve_stream(
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    endpoints: Endpoints,
    limits: Limits,
) {
    let mut reader = EnvelopeReader::new(recv, limits);
    let env = match reader.next().await {
        Ok(Some(env)) => env,
        Ok(None) => return,
        Err(e) => {
            let error = match e {
                wire::WireError::EnvelopeTooLarge { .. } => {
                    Error::new(ErrorKind::PayloadTooLarge, format!("envelope refused: {e}"))
                }
                e => peer::malformed(e),
            };
            tracing::debug!(error = %error, "malformed request envelope refused");
            return refuse(send, RequestId::default(), error).await;
        }
    };
    if env.headers.get(names::SUBSCRIBE).is_some() {
        // Anything more from the subscriber, its end or a reset ends the
        // subscription.
        let gone = async move {
            let _ = reader.next().await;
        };
        return endpoints
            .subscribers()
            .serve(env, QuicEventWriter(send), gone)
            .await;
    }
    let id = env.id;
    let (call, incoming) = match ServedCall::accept(&endpoints, env) {
        Ok(accepted) => accepted,
        Err(e) => return refuse(send, id, e).await,
    };
    call.start(
        incoming,
        QuicWriter {
            send: tokio::sync::Mutex::new(Some(send)),
        },
    );
    // Follow the caller's side for credit, stop and kill. However it ends —
    // a kill envelope, a reset, a lost connection, or the caller finishing
    // its side after the reply — the handler is killed; for a call that is
    // already over that does nothing.
    while let Ok(Some(env)) = reader.next().await {
        match call.control(env) {
            Ok(Control::Continue) => {}
            Ok(Control::Killed) | Err(_) => break,
        }
    }
    call.kill();
}

/// How a served call's replies go onto its stream.
struct QuicWriter {
    send: tokio::sync::Mutex<Option<quinn::SendStream>>,
}

impl ReplyWriter for QuicWriter {
    fn write(&self, env: Envelope, last: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut guard = self.send.lock().await;
            let Some(send) = guard.as_mut() else {
                return Err(Error::new(
                    ErrorKind::Closed,
                    "the reply stream is finished",
                ));
            };
            write_envelope(send, &env).await?;
            if last {
                if let Some(mut s) = guard.take() {
                    let _ = s.finish();
                }
            }
            Ok(())
        })
    }

    fn abandon(&mut self) {
        // A handler that went away without its end marker (killed, server
        // shut down) must not look like a clean end: reset, don't finish.
        if let Some(mut s) = self.send.get_mut().take() {
            let _ = s.reset(ABANDONED);
        }
    }
}

/// A subscriber's stream, as the publisher writes it.
struct QuicEventWriter(quinn::SendStream);

impl EventWriter for QuicEventWriter {
    async fn write(&mut self, envs: &[Envelope]) -> Result<()> {
        let mut chunks = Vec::with_capacity(envs.len() * 3);
        for env in envs {
            frame_chunks(env, &mut chunks)?;
        }
        self.0
            .write_all_chunks(&mut chunks)
            .await
            .map_err(write_error)
    }

    fn finish(&mut self) {
        let _ = self.0.finish();
    }
}
