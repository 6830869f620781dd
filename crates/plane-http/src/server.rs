//! The serving side: one listener per handle, HTTP/1.1 and HTTP/2 on each
//! connection (hyper's auto builder), and the routes of `docs/http.md` —
//! the plane-to-plane call path under `/.plane/v1/` and the public mapping
//! ([`crate::public`]) everywhere else.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::{Method, Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use plane_core::wire::{self, DelimitedDecoder, Envelope, Limits, RequestId};
use plane_core::{Error, ErrorKind, Result};
use plane_peer::net::{self, Listener};
use plane_peer::{self as peer, ends_call, Control, Endpoints, ReplyWriter, ServedCall};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use crate::error::{error_json, status_of};
use crate::public;

/// The path of a call between plane peers (HTTP/2 only).
pub const CALL_PATH: &str = "/.plane/v1/call";
/// Where paths reserved for plane begin; nothing under it is an endpoint.
pub const RESERVED_PREFIX: &str = "/.plane/";
/// The content type of a body of length-delimited envelopes.
pub const ENVELOPES_CONTENT_TYPE: &str = "application/vnd.plane.envelopes";

/// Envelopes buffered per served call between its handler and its body.
const CALL_BUFFER: usize = 64;
/// Envelopes written in one HTTP/2 data frame at most.
const WRITE_BATCH: usize = 64;
/// Streams one HTTP/2 connection may carry at once: calls between two
/// processes share one connection, so this is a process's calls to a peer.
pub(crate) const MAX_STREAMS: u32 = 4096;
/// Flow-control windows: large enough that a stream of replies is bounded
/// by plane's credit rather than by HTTP/2's 64 KiB default.
pub(crate) const STREAM_WINDOW: u32 = 1024 * 1024;
pub(crate) const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;

/// A response body; every route's answer is boxed into one type.
pub(crate) type ResponseBody = UnsyncBoxBody<Bytes, Infallible>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `env` in the length-delimited form.
pub(crate) fn delimited(env: &Envelope, out: &mut BytesMut) -> Result<()> {
    wire::encode_delimited(env, out).map_err(|e| {
        Error::new(ErrorKind::PayloadTooLarge, format!("envelope refused: {e}")).with_source(e)
    })
}

/// A whole body of bytes.
pub(crate) fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into()).boxed_unsync()
}

/// The answer to an HTTP request that failed with `e`: the status of its
/// kind and the JSON body of `docs/http.md`.
pub(crate) fn error_response(e: &Error) -> Response<ResponseBody> {
    let mut r = Response::new(full(error_json(e)));
    *r.status_mut() = status_of(e.kind());
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

/// Streamed public calls in flight, by the token a graceful stop names.
pub(crate) type Stoppable = Arc<Mutex<HashMap<u128, ServedCall>>>;

/// What every connection of one listener serves.
pub(crate) struct Site {
    pub(crate) endpoints: Endpoints,
    pub(crate) limits: Limits,
    pub(crate) max_payload: usize,
    pub(crate) heartbeat: Duration,
    /// Streamed public calls that may be asked to stop, by their token.
    pub(crate) stoppable: Stoppable,
}

/// How a listener takes its connections.
#[derive(Clone)]
pub(crate) struct Accept {
    pub(crate) site: Arc<Site>,
    /// TLS handshake first, bounded by `handshake`.
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) handshake: Duration,
}

/// Serve `accept`'s site on `addr`, bound now.
pub(crate) fn listen(addr: SocketAddr, accept: Accept) -> Result<Listener> {
    Listener::serve(net::bind(addr)?, move |stream| {
        serve_connection(stream, accept.clone())
    })
}

async fn serve_connection(stream: TcpStream, accept: Accept) {
    let Accept {
        site,
        tls,
        handshake,
    } = accept;
    match tls {
        // Cleartext: the client's first bytes tell HTTP/1.1 from h2c.
        None => serve_io(stream, site, None).await,
        // In the connection's own task, so a slow or silent client holds
        // up nobody else.
        Some(acceptor) => {
            if let Some(stream) = net::accept_tls(&acceptor, stream, handshake).await {
                // Under TLS, ALPN decided. An h2 server then speaks first
                // (its SETTINGS), which is how a caller learns that the
                // handshake's certificate check passed (see the client).
                let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                serve_io(stream, site, alpn).await;
            }
        }
    }
}

/// Serve HTTP on `io`: the protocol ALPN chose, or either, told apart by
/// what the client sends first.
async fn serve_io<I>(io: I, site: Arc<Site>, alpn: Option<Vec<u8>>)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(64 * 1024);
    // Bounds what one HTTP/1.1 request's head may hold (and so the memory a
    // client that never finishes one can tie up).
    builder.http1().max_buf_size(64 * 1024);
    let builder = match alpn.as_deref() {
        Some(b"h2") => builder.http2_only(),
        Some(b"http/1.1") => builder.http1_only(),
        _ => builder,
    };
    let service = hyper::service::service_fn(move |req| {
        let site = site.clone();
        async move { Ok::<_, Infallible>(site.route(req).await) }
    });
    if let Err(e) = builder.serve_connection(TokioIo::new(io), service).await {
        // Malformed HTTP ends here: hyper answered it (400) where it could.
        tracing::debug!(error = %e, "http connection ended");
    }
}

impl Site {
    /// Answer one HTTP request.
    async fn route(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let path = req.uri().path();
        if let Some(rest) = path.strip_prefix(RESERVED_PREFIX) {
            return match rest.split_once('/') {
                Some(("v1", route)) => self.plane_route(route.to_owned(), req).await,
                _ => error_response(&Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "`{path}`: this server speaks version 1 of plane's HTTP mapping (paths under `/.plane/v1/`)"
                    ),
                )),
            };
        }
        public::call(self, req).await
    }

    async fn plane_route(&self, route: String, req: Request<Incoming>) -> Response<ResponseBody> {
        if req.method() != Method::POST {
            return public::method_not_allowed();
        }
        if route == "call" {
            return self.plane_call(req).await;
        }
        if let Some(token) = route.strip_prefix("stop/") {
            return public::stop(self, token);
        }
        error_response(&Error::new(
            ErrorKind::NotFound,
            format!("no route `/.plane/v1/{route}`"),
        ))
    }

    /// A call from a plane peer: the request body carries the request
    /// envelope and then the caller's control (credit, stop, kill); the
    /// response body carries the replies and the server's heartbeats.
    async fn plane_call(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        if req.version() != Version::HTTP_2 {
            return error_response(&Error::new(
                ErrorKind::InvalidArgument,
                format!("`{CALL_PATH}` is for plane peers, over HTTP/2 only; see docs/http.md for the public mapping"),
            ));
        }
        let mut body = EnvelopeReader::new(req.into_body(), self.limits);
        let first = match body.next().await {
            Ok(Some(env)) => env,
            Ok(None) => {
                return error_response(&Error::new(
                    ErrorKind::Decode,
                    "the call's body ended before its request envelope",
                ))
            }
            Err(e) => return error_response(&e),
        };
        let id = first.id;
        let (call, incoming) = match ServedCall::accept(&self.endpoints, first) {
            Ok(accepted) => accepted,
            // In-band, as the caller's plane expects a refusal.
            Err(e) => return envelopes_response(one_envelope(&Envelope::error(id, &e))),
        };
        let (tx, rx) = mpsc::channel(CALL_BUFFER);
        call.start(
            incoming,
            ChannelWriter {
                id,
                replies: tx.clone(),
            },
        );
        tokio::spawn(read_control(body, call.clone(), tx));
        envelopes_response(
            ReplyBody {
                replies: rx,
                heartbeat: heartbeat_timer(self.heartbeat),
                id,
                call,
                ended: false,
            }
            .boxed_unsync(),
        )
    }
}

/// A 200 answer whose body is envelopes.
fn envelopes_response(body: ResponseBody) -> Response<ResponseBody> {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ENVELOPES_CONTENT_TYPE),
    );
    r
}

fn one_envelope(env: &Envelope) -> ResponseBody {
    let mut buf = BytesMut::new();
    match delimited(env, &mut buf) {
        Ok(()) => full(buf.freeze()),
        Err(e) => full(error_json(&e)),
    }
}

/// An interval whose first tick is one `period` from now.
pub(crate) fn heartbeat_timer(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

/// Apply the caller's control envelopes to `call` until its request body
/// ends, however it ends: a caller that closed its side, reset the stream
/// or lost the connection is gone, and its handler is killed (which does
/// nothing to a call already over).
async fn read_control(mut body: EnvelopeReader, call: ServedCall, replies: mpsc::Sender<Envelope>) {
    loop {
        match body.next().await {
            Ok(Some(env)) => match call.control(env) {
                Ok(Control::Continue) => {}
                Ok(Control::Killed) => return,
                Err(e) => {
                    let _ = replies.try_send(Envelope::error(call.id(), &e));
                    break;
                }
            },
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(error = %e, "malformed control stream; killing the call");
                let _ = replies.try_send(Envelope::error(call.id(), &e));
                break;
            }
        }
    }
    call.kill();
}

/// Envelopes read off an HTTP body, length-delimited.
pub(crate) struct EnvelopeReader {
    body: Incoming,
    decoder: DelimitedDecoder,
}

impl EnvelopeReader {
    pub(crate) fn new(body: Incoming, limits: Limits) -> Self {
        EnvelopeReader {
            body,
            decoder: DelimitedDecoder::with_limits(limits),
        }
    }

    /// The next envelope; `None` when the body ended (cleanly or not).
    ///
    /// # Errors
    /// `Decode` or `PayloadTooLarge` for a body that is no envelopes.
    pub(crate) async fn next(&mut self) -> Result<Option<Envelope>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    pub(crate) fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Envelope>>> {
        loop {
            match self.decoder.next_envelope() {
                Ok(Some(env)) => return Poll::Ready(Ok(Some(env))),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(wire_error(e))),
            }
            match futures_util::ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.decoder.push(&data);
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "envelope body ended with an error");
                    return Poll::Ready(Ok(None));
                }
                None => return Poll::Ready(Ok(None)),
            }
        }
    }
}

/// The typed error of an envelope stream that cannot be read.
pub(crate) fn wire_error(e: wire::WireError) -> Error {
    match e {
        wire::WireError::EnvelopeTooLarge { .. } => {
            Error::new(ErrorKind::PayloadTooLarge, format!("envelope refused: {e}"))
        }
        e => peer::malformed(e),
    }
}

/// How a served call's replies reach the body that answers it, plane peer
/// or public client alike.
pub(crate) struct ChannelWriter {
    pub(crate) id: RequestId,
    pub(crate) replies: mpsc::Sender<Envelope>,
}

impl ReplyWriter for ChannelWriter {
    fn write(&self, env: Envelope, _last: bool) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.replies
                .send(env)
                .await
                .map_err(|_| Error::new(ErrorKind::Disconnected, "the caller is gone"))
        })
    }

    fn abandon(&mut self) {
        // Tell the caller now rather than after its idle limit.
        let _ = self
            .replies
            .try_send(Envelope::error(self.id, &peer::abandoned()));
    }
}

/// The response body of a call between peers: its replies, a batch per
/// data frame, and a heartbeat whenever the handler is quiet for an
/// interval. Dropped before the call ended (the caller reset the stream,
/// the connection died), it kills the handler.
struct ReplyBody {
    replies: mpsc::Receiver<Envelope>,
    heartbeat: tokio::time::Interval,
    id: RequestId,
    call: ServedCall,
    ended: bool,
}

impl Body for ReplyBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<std::result::Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let mut buf = BytesMut::new();
        let mut n = 0;
        while n < WRITE_BATCH {
            match this.replies.poll_recv(cx) {
                Poll::Ready(Some(env)) => {
                    n += 1;
                    this.ended = ends_call(&env);
                    if let Err(e) = delimited(&env, &mut buf) {
                        this.ended = true;
                        let _ = delimited(&Envelope::error(this.id, &e), &mut buf);
                    }
                    if this.ended {
                        break;
                    }
                }
                Poll::Ready(None) => {
                    // Every writer is gone without an end marker.
                    if !this.ended {
                        let _ = delimited(&Envelope::error(this.id, &peer::abandoned()), &mut buf);
                        this.ended = true;
                    }
                    break;
                }
                Poll::Pending => break,
            }
        }
        if !buf.is_empty() {
            this.heartbeat.reset();
            return Poll::Ready(Some(Ok(Frame::data(buf.freeze()))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        futures_util::ready!(this.heartbeat.poll_tick(cx));
        let _ = delimited(&peer::heartbeat_envelope(this.id), &mut buf);
        Poll::Ready(Some(Ok(Frame::data(buf.freeze()))))
    }
}

impl Drop for ReplyBody {
    fn drop(&mut self) {
        if !self.ended {
            self.call.kill();
        }
    }
}

/// An HTTP body longer than `limit`: `PayloadTooLarge`.
pub(crate) fn too_large(limit: usize) -> Error {
    Error::new(
        ErrorKind::PayloadTooLarge,
        format!("the body is over this server's limit of {limit} bytes"),
    )
}
