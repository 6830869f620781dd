//! The HTTP request plane: one listener per handle (see [`crate::server`]
//! for what it serves) and one pooled HTTP/2 connection per peer process
//! for calls. The plane itself is [`plane_peer::PeerRequests`]; this module
//! is its HTTP links ([`HttpLinks`]).
//!
//! # Calls between peers
//!
//! A call is one HTTP/2 stream, `POST /.plane/v1/call`, on the connection
//! to the serving process (`TCP_NODELAY` set; prior knowledge on `h2c`,
//! ALPN `h2` under TLS). The request body is the request envelope and then
//! the caller's control envelopes (credit, stop, kill); the response body is
//! the replies and the server's per-call heartbeats, all in the wire
//! codec's length-delimited form. Closing either side ends the call: a
//! caller that drops the response resets the stream, and the server kills
//! the handler.
//!
//! # TLS
//!
//! On `h2://` every connection runs TLS 1.3 (rustls) with the identities,
//! pinning, CA mode and mutual TLS of [`plane_peer::tls`]; a server
//! publishes its certificate's fingerprint ([`FINGERPRINT_METADATA`]) and
//! name ([`SERVER_NAME_METADATA`]) in discovery. A cleartext caller and a
//! TLS server (or the reverse) refuse each other with `Connection`. A server
//! refusing the caller's certificate (mutual TLS) sends a TLS alert after the
//! handshake; the caller reads up to the server's HTTP/2 preface before its
//! first call, so the refusal is `Unauthorized`, not a broken pipe.
//!
//! # Liveness
//!
//! The server writes a `heartbeat` envelope into a call's response body
//! whenever the handler is quiet for a heartbeat interval; a caller that
//! hears nothing for its idle timeout ends the call `Disconnected` and
//! takes the connection for dead.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
#[cfg(feature = "testkit")]
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame};
use hyper::client::conn::http2::SendRequest;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plane_core::discovery::Instance;
use plane_core::request::{Cancel, InstanceId};
use plane_core::wire::{Envelope, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::net::{self, Connected, Listener};
use plane_peer::tls::{Published, Tls};
use plane_peer::{
    self as peer, ends_call, CallLink, Endpoints, LinkSettings, PeerRequests, Pool, RequestLinks,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio_rustls::TlsAcceptor;

#[cfg(feature = "testkit")]
use crate::error::io_error;
use crate::error::{error_from_json, http_error};
use crate::server::{
    delimited, lock, Accept, EnvelopeReader, Site, CALL_PATH, CONNECTION_WINDOW,
    ENVELOPES_CONTENT_TYPE, MAX_STREAMS, STREAM_WINDOW,
};
use crate::HttpConfig;

/// Control envelopes a caller may queue on one call.
const CONTROL_BUFFER: usize = 64;

/// Discovery metadata key of a TLS server's certificate fingerprint.
pub const FINGERPRINT_METADATA: &str = "http-sha256";
/// Discovery metadata key of the TLS name a TLS server is verified under.
pub const SERVER_NAME_METADATA: &str = "http-server-name";
/// ALPN protocol between peers: HTTP/2.
pub const ALPN: &[u8] = b"h2";

const PUBLISHED: Published = Published {
    fingerprint: FINGERPRINT_METADATA,
    server_name: SERVER_NAME_METADATA,
    alpn: ALPN,
};

/// How a mismatch names the two forms.
const FORMS: net::Forms = net::Forms {
    plain: "cleartext h2c",
    tls: "h2 (TLS)",
};

/// The HTTP request plane. Build it with [`HttpRequests::connect`] (or
/// through the registry with an `h2c://` or `h2://` URL) and wrap it in
/// [`plane_core::Requests`]; its own methods are on [`HttpRequests::links`].
pub type HttpRequests = PeerRequests<HttpLinks>;

/// What the HTTP request plane is made of: the listener serving this
/// process's endpoint instances and an HTTP/2 connection per peer process.
pub struct HttpLinks {
    config: HttpConfig,
    site: Arc<Site>,
    listener: Mutex<Listener>,
    /// By address and the fingerprint published there, so a peer restarted
    /// with another certificate gets a new connection.
    connections: Pool<(String, String), Connection>,
    limits: Limits,
    tls: Option<Arc<Tls>>,
}

impl std::fmt::Debug for HttpLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpLinks")
            .field("local_addr", &self.local_addr())
            .finish_non_exhaustive()
    }
}

impl RequestLinks for HttpLinks {
    type Transport = crate::Http;
    type Link = HttpLink;

    fn bind(config: HttpConfig, endpoints: Endpoints) -> Result<Self> {
        let limits = peer::limits(config.max_payload);
        let tls = config
            .tls
            .as_ref()
            .map(|c| Tls::new(c, PUBLISHED).map(Arc::new))
            .transpose()?;
        let site = Arc::new(Site {
            endpoints,
            limits,
            max_payload: config.max_payload,
            heartbeat: config.timings.heartbeat,
            stoppable: Arc::default(),
        });
        let links = HttpLinks {
            listener: Mutex::new(crate::server::listen(
                config.bind,
                accept(&config, &site, tls.as_deref()),
            )?),
            config,
            site,
            connections: Pool::default(),
            limits,
            tls,
        };
        Ok(links)
    }

    fn settings(&self) -> LinkSettings {
        net::settings(self.config.max_payload, &self.config.timings)
    }

    fn record(&self, endpoint: &str, instance: InstanceId) -> Result<Instance> {
        Ok(net::record(
            endpoint,
            instance,
            self.local_addr(),
            self.config.advertise.as_deref(),
            self.tls.as_deref(),
        ))
    }

    async fn open(&self, instance: &Instance, request: Envelope) -> Result<HttpLink> {
        let mut first = BytesMut::new();
        delimited(&request, &mut first)?;
        let first = first.freeze();
        let id = request.id;
        let mut fresh = false;
        loop {
            let conn = self.connection(instance, fresh).await?;
            match self.start(&conn, id, first.clone()).await {
                Ok(link) => return Ok(link),
                // The peer answered, and not as a plane peer would.
                Err(Some(e)) => return Err(e),
                // The cached connection died since it was last used: one
                // more try on a new one, then the directory's retry takes
                // over.
                Err(None) if !fresh => fresh = true,
                Err(None) => {
                    return Err(Error::new(
                        ErrorKind::Connection,
                        format!("peer {} is unreachable", instance.address),
                    ))
                }
            }
        }
    }

    async fn rebind(&self) -> Result<()> {
        let fresh = crate::server::listen(
            self.config.bind,
            accept(&self.config, &self.site, self.tls.as_deref()),
        )?;
        // Dropping the old listener aborts it and every connection it
        // served: calls in flight are lost, as in a crashed process.
        drop(std::mem::replace(&mut *lock(&self.listener), fresh));
        self.connections.clear();
        Ok(())
    }
}

/// How a listener of `config` takes connections.
fn accept(config: &HttpConfig, site: &Arc<Site>, tls: Option<&Tls>) -> Accept {
    Accept {
        site: site.clone(),
        tls: tls.map(|t| {
            // Plain HTTP clients (curl) are offered HTTP/1.1 beside h2.
            let mut server = (*t.server_config()).clone();
            server.alpn_protocols = vec![ALPN.to_vec(), b"http/1.1".to_vec()];
            TlsAcceptor::from(Arc::new(server))
        }),
        handshake: config.timings.connect_timeout,
    }
}

impl HttpLinks {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        lock(&self.listener).addr()
    }

    /// Connect to this handle's own listener, write `bytes` as they are,
    /// and return what the server answers within `wait`, up to 64 KiB. A
    /// test hook (feature `testkit`) for checking that a peer survives
    /// garbage.
    ///
    /// # Errors
    /// `Connection` if the listener cannot be reached.
    #[cfg(feature = "testkit")]
    pub async fn send_raw(&self, bytes: &[u8], wait: Duration) -> Result<Vec<u8>> {
        net::send_raw(self.local_addr(), bytes, wait)
            .await
            .map_err(|e| io_error("cannot reach the listener", e))
    }

    /// Start call `id` on `conn` with its request envelope `first`. `None`
    /// when the connection is dead.
    async fn start(
        &self,
        conn: &Connection,
        id: RequestId,
        first: Bytes,
    ) -> std::result::Result<HttpLink, Option<Error>> {
        let (control, queued) = mpsc::channel(CONTROL_BUFFER);
        let body = ControlBody {
            first: Some(first),
            queued,
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("{scheme}://plane{CALL_PATH}"))
            .header(hyper::header::CONTENT_TYPE, ENVELOPES_CONTENT_TYPE)
            .body(body)
            .map_err(|e| Some(Error::new(ErrorKind::Other, format!("request: {e}"))))?;
        let mut sender = conn.sender.clone();
        if sender.ready().await.is_err() {
            return Err(None);
        }
        let timeout = self.config.timings.connect_timeout;
        let response = match tokio::time::timeout(timeout, sender.send_request(req)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "call refused by the connection");
                if conn.sender.is_closed() {
                    return Err(None);
                }
                return Err(Some(http_error("the call could not be sent", e)));
            }
            Err(_) => {
                return Err(Some(Error::new(
                    ErrorKind::Connection,
                    format!("the peer did not take the call within {timeout:?}"),
                )))
            }
        };
        if response.status() != StatusCode::OK {
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), 64 * 1024)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(Some(error_from_json(&body).unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Connection,
                    format!("the peer answered HTTP {status}, not as a plane peer"),
                )
            })));
        }
        Ok(HttpLink {
            id,
            control,
            replies: Some(EnvelopeReader::new(response.into_body(), self.limits)),
            conn: conn.clone(),
            ended: false,
        })
    }

    /// The shared connection to `instance`'s process.
    async fn connection(&self, instance: &Instance, fresh: bool) -> Result<Connection> {
        let fingerprint = self.tls.as_ref().map_or("", |t| t.fingerprint_of(instance));
        let key = (instance.address.clone(), fingerprint.to_owned());
        let alive = |c: &Connection| !c.sender.is_closed() && !c.closed.load(Ordering::Acquire);
        self.connections
            .get(&key, fresh, alive, || self.connect(instance))
            .await
    }

    async fn connect(&self, instance: &Instance) -> Result<Connection> {
        let connected = net::connect(
            instance,
            self.tls.as_deref(),
            &PUBLISHED,
            FORMS,
            self.config.timings.connect_timeout,
        )
        .await?;
        match connected {
            Connected::Plain(stream) => handshake(stream).await,
            Connected::Tls(mut stream) => {
                // Under TLS 1.3 a server refuses this process's certificate
                // only after the handshake, with an alert; hyper would meet
                // it as a broken pipe on its first write and lose why. The
                // server's HTTP/2 preface (SETTINGS) comes first on a good
                // connection, so read that far here, then hand hyper the
                // bytes read.
                let timeout = self.config.timings.connect_timeout;
                let mut first = vec![0u8; 1024];
                let n = match tokio::time::timeout(timeout, stream.read(&mut first)).await {
                    Ok(Ok(0)) => {
                        return Err(Error::new(
                            ErrorKind::Connection,
                            format!("{} closed the connection after TLS", instance.address),
                        ))
                    }
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) => {
                        return Err(plane_peer::tls::refusal_in(&e).unwrap_or_else(|| {
                            net::io_error(&format!("TLS with {} failed", instance.address), e)
                        }))
                    }
                    Err(_) => {
                        return Err(Error::new(
                            ErrorKind::Connection,
                            format!(
                                "{} sent no HTTP/2 preface within {timeout:?}",
                                instance.address
                            ),
                        ))
                    }
                };
                first.truncate(n);
                handshake(Rewind {
                    read: Some(Bytes::from(first)),
                    inner: *stream,
                })
                .await
            }
        }
    }
}

/// A stream whose first reads return bytes already read off it.
struct Rewind<S> {
    read: Option<Bytes>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(mut read) = self.read.take() {
            let n = read.len().min(buf.remaining());
            buf.put_slice(&read.split_to(n));
            if !read.is_empty() {
                self.read = Some(read);
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// HTTP/2 over `io`, prior knowledge (no upgrade dance).
async fn handshake<I>(io: I) -> Result<Connection>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_concurrent_reset_streams(MAX_STREAMS as usize)
        .max_frame_size(64 * 1024)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| http_error("HTTP/2 handshake failed", e))?;
    let closed: Arc<AtomicBool> = Arc::default();
    let ended = closed.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "http/2 connection to a peer ended");
        }
        ended.store(true, Ordering::Release);
    });
    Ok(Connection {
        sender,
        closed,
        task: Arc::new(task.abort_handle()),
    })
}

/// The caller's HTTP/2 connection to one peer process. Cheap to clone.
#[derive(Clone)]
struct Connection {
    sender: SendRequest<ControlBody>,
    /// Set once the connection ended or was taken for dead.
    closed: Arc<AtomicBool>,
    task: Arc<AbortHandle>,
}

impl Connection {
    /// Take the connection for dead: every stream on it ends, and the pool
    /// connects afresh on next use.
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.task.abort();
    }
}

/// A call's request body: its request envelope, then the control the
/// caller queues; it ends when the caller's link is dropped.
struct ControlBody {
    first: Option<Bytes>,
    queued: mpsc::Receiver<Bytes>,
}

impl Body for ControlBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if let Some(first) = this.first.take() {
            return Poll::Ready(Some(Ok(Frame::data(first))));
        }
        this.queued
            .poll_recv(cx)
            .map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// The caller's side of one call: its HTTP/2 stream.
pub struct HttpLink {
    id: RequestId,
    control: mpsc::Sender<Bytes>,
    /// The response body; `None` once the call was killed.
    replies: Option<EnvelopeReader>,
    conn: Connection,
    /// The server ended the call, or it was killed: nothing to tell it.
    ended: bool,
}

impl HttpLink {
    fn queue(&self, env: &Envelope) -> bool {
        let mut buf = BytesMut::new();
        delimited(env, &mut buf).is_ok() && self.control.try_send(buf.freeze()).is_ok()
    }
}

impl CallLink for HttpLink {
    fn poll_envelope(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Envelope>>> {
        let Some(replies) = &mut self.replies else {
            return Poll::Ready(None);
        };
        match futures_util::ready!(replies.poll_next(cx)) {
            Ok(Some(env)) => {
                self.ended |= ends_call(&env);
                Poll::Ready(Some(Ok(env)))
            }
            Ok(None) => {
                self.replies = None;
                Poll::Ready(None)
            }
            Err(e) => {
                self.replies = None;
                Poll::Ready(Some(Err(e)))
            }
        }
    }

    fn control(&mut self, env: Envelope) -> bool {
        self.queue(&env)
    }

    fn silent(&mut self) {
        // The server heartbeats every call: one call's silence is the
        // connection's.
        tracing::debug!(id = %self.id, "call silent for the idle limit; dropping its connection");
        self.conn.close();
    }

    fn kill(&mut self) {
        if !self.ended && !self.queue(&peer::cancel_envelope(self.id, Cancel::Kill)) {
            // The stream's reset (the response dropped below) still ends
            // the handler.
            tracing::debug!(id = %self.id, "kill envelope dropped: control queue full");
        }
        self.ended = true;
        self.replies = None;
    }
}

impl Drop for HttpLink {
    fn drop(&mut self) {
        self.kill();
    }
}
