//! The public mapping: how any HTTP client calls an endpoint served here
//! (`docs/http.md` is its specification).
//!
//! - `POST /{endpoint}`: the body is the request, the reply is the
//!   response body, the reply's headers are response headers.
//! - With `Accept: text/event-stream` the call is streamed and its replies
//!   are server-sent events: `message` (UTF-8 data) or `binary` (base64),
//!   then `end`; `error` carries a typed error; a body that stops without
//!   `end` was cut short. Comments (`: heartbeat`) keep it alive.
//! - `plane-timeout-ms` is the deadline; other request headers become the
//!   call's headers.
//! - A streamed call's `plane-call` response header names it for a graceful
//!   stop (`POST /.plane/v1/stop/{token}`); closing the response kills it.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use plane_core::message::{names, Message};
use plane_core::request::flow::Grants;
use plane_core::request::{Call, Cancel, Frame};
use plane_core::wire::{Envelope, EnvelopeKind, RequestId};
use plane_core::{Error, ErrorKind, Headers};
use plane_peer::{self as peer, Reply, ServedCall, WINDOW};
use tokio::sync::mpsc;

use crate::error::error_json;
use crate::server::{
    error_response, full, heartbeat_timer, lock, too_large, ChannelWriter, ResponseBody, Site,
};

/// The response header naming a streamed call, for a graceful stop.
pub const CALL_HEADER: &str = "plane-call";
/// Where a graceful stop of a streamed call is asked for (then its token).
pub const STOP_PATH: &str = "/.plane/v1/stop/";

/// Replies buffered per public call between its handler and its response.
const CALL_BUFFER: usize = 64;

/// Request headers that belong to HTTP itself, not to the call.
pub(crate) const HTTP_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "accept",
    "accept-encoding",
    "proxy-connection",
    "proxy-authorization",
];

/// `405` with the one method every route takes.
pub(crate) fn method_not_allowed() -> Response<ResponseBody> {
    let mut r = error_response(&Error::new(
        ErrorKind::InvalidArgument,
        "plane endpoints are called with POST",
    ));
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST"));
    r
}

/// Ask the streamed call named `token` to stop gracefully.
pub(crate) fn stop(site: &Site, token: &str) -> Response<ResponseBody> {
    let call = u128::from_str_radix(token, 16)
        .ok()
        .and_then(|t| lock(&site.stoppable).get(&t).cloned());
    let Some(call) = call else {
        return error_response(&Error::new(
            ErrorKind::NotFound,
            format!("no streamed call `{token}` in flight here"),
        ));
    };
    if let Err(e) = call.control(peer::cancel_envelope(call.id(), Cancel::Stop)) {
        return error_response(&e);
    }
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// Whether the client asked for server-sent events.
pub(crate) fn wants_events(headers: &hyper::HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or("").trim() == "text/event-stream")
}

/// The call's headers: the request's, less HTTP's own; `plane-*` headers
/// other than the deadline are refused (they are plane's control fields).
pub(crate) fn call_headers(request: &hyper::HeaderMap) -> Result<Headers, Error> {
    let mut headers = Headers::new();
    for name in request.keys() {
        let name = name.as_str();
        if HTTP_HEADERS.contains(&name) {
            continue;
        }
        if name.starts_with("plane-") && name != names::TIMEOUT_MS {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "`{name}` is one of plane's own headers; of them a client sends only `{}`",
                    names::TIMEOUT_MS
                ),
            ));
        }
        let mut value = String::new();
        // Joined as HTTP combines repeated field lines (RFC 9110 5.3), empty
        // ones included, so each line's value keeps its place in the list.
        for (i, v) in request.get_all(name).iter().enumerate() {
            let v = v.to_str().map_err(|_| {
                Error::new(
                    ErrorKind::InvalidArgument,
                    format!("header `{name}` is not visible ASCII"),
                )
            })?;
            if i > 0 {
                value.push_str(", ");
            }
            value.push_str(v);
        }
        if name == names::TIMEOUT_MS && value.parse::<u64>().is_err() {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("`{name}` is a whole number of milliseconds, not `{value}`"),
            ));
        }
        headers.insert(name.to_owned(), value);
    }
    Ok(headers)
}

/// The endpoint a public path names: the path without its leading `/`,
/// percent-decoded.
pub(crate) fn endpoint_of(path: &str) -> Result<String, Error> {
    let raw = path.trim_start_matches('/');
    let endpoint = percent_decode(raw)?;
    if endpoint.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "the path names no endpoint: POST /{endpoint}",
        ));
    }
    Ok(endpoint)
}

fn percent_decode(s: &str) -> Result<String, Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(b) = hex else {
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    format!("the path `{s}` has a bad percent-escape"),
                ));
            };
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| {
        Error::new(
            ErrorKind::InvalidArgument,
            format!("the path `{s}` is not UTF-8"),
        )
    })
}

/// The body of a request, at most `limit` bytes (`declared` is its
/// `content-length`, if it gave one).
async fn read_body(
    body: &mut Incoming,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, Error> {
    // Refused before a byte of it is read.
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(limit));
    }
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            Error::new(
                ErrorKind::Disconnected,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Most of a refused body read and discarded, and for how long at most.
const DRAIN_BYTES: usize = 16 * 1024 * 1024;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Read and discard the rest of a refused body, within bounds. A client
/// still sending when the refusal comes would otherwise see its stream
/// reset (HTTP/2) and many report that instead of the answer.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > DRAIN_BYTES {
                return;
            }
        }
    })
    .await;
}

/// Kills a public call whose answer was given up before the call ended
/// (the client went away while waiting).
struct KillUnlessDone(Option<ServedCall>);

impl Drop for KillUnlessDone {
    fn drop(&mut self) {
        if let Some(call) = self.0.take() {
            call.kill();
        }
    }
}

/// Answer a public call.
pub(crate) async fn call(site: &Site, req: Request<Incoming>) -> Response<ResponseBody> {
    if req.method() != Method::POST {
        return method_not_allowed();
    }
    match started(site, req).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn started(site: &Site, req: Request<Incoming>) -> Result<Response<ResponseBody>, Error> {
    let endpoint = endpoint_of(req.uri().path())?;
    let stream = wants_events(req.headers());
    let headers = call_headers(req.headers())?;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut request_body = req.into_body();
    let body = match read_body(&mut request_body, declared, site.max_payload).await {
        Ok(body) => body,
        Err(e) => {
            tokio::spawn(drain(request_body));
            return Err(e);
        }
    };
    let mut call = Call::new(endpoint, body);
    call.message.headers = headers;
    call.stream = stream;
    let id = call.id;
    let (served, incoming) = ServedCall::accept(&site.endpoints, peer::call_envelope(call, None))?;
    let (tx, mut rx) = mpsc::channel(CALL_BUFFER);
    served.start(incoming, ChannelWriter { id, replies: tx });
    let mut guard = KillUnlessDone(Some(served.clone()));
    if stream {
        // The first envelope says whether the handler took the call (its
        // `Accepted`) or refused it, which an HTTP status can still say.
        let first = loop {
            let Some(env) = rx.recv().await else {
                return Err(peer::abandoned());
            };
            if env.kind != EnvelopeKind::Heartbeat {
                break env;
            }
        };
        if first.kind == EnvelopeKind::Error {
            guard.0 = None;
            return Err(first.to_error());
        }
        guard.0 = None;
        return Ok(events_response(site, served, rx, first));
    }
    loop {
        let Some(env) = rx.recv().await else {
            return Err(peer::abandoned());
        };
        match peer::decode_reply(env)? {
            Reply::Heartbeat | Reply::Frame(Frame::Accepted) => {}
            Reply::Error(e) => {
                guard.0 = None;
                return Err(e);
            }
            Reply::Frame(Frame::End) => {
                guard.0 = None;
                let mut r = Response::new(full(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                return Ok(r);
            }
            Reply::Frame(Frame::Last(m)) => {
                guard.0 = None;
                return Ok(unary_response(m));
            }
            // A handler that streams to a unary call: its first reply is
            // the answer, and the rest is not waited for (the guard kills
            // it).
            Reply::Frame(Frame::Data(m)) => return Ok(unary_response(m)),
        }
    }
}

/// A unary reply as a `200` answer.
fn unary_response(m: Message) -> Response<ResponseBody> {
    let Message { headers, body } = m;
    let mut r = Response::new(full(body.to_bytes()));
    copy_headers(&headers, r.headers_mut());
    if !r.headers().contains_key(header::CONTENT_TYPE) {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    r
}

/// The reply's headers that HTTP can carry (a name or value HTTP refuses is
/// left out, as are those HTTP computes itself).
pub(crate) fn copy_headers(from: &Headers, to: &mut hyper::HeaderMap) {
    for (name, value) in from.iter() {
        if HTTP_HEADERS.contains(&name) {
            continue;
        }
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            to.append(n, v);
        }
    }
}

/// A streamed call answered as server-sent events.
fn events_response(
    site: &Site,
    call: ServedCall,
    replies: mpsc::Receiver<Envelope>,
    first: Envelope,
) -> Response<ResponseBody> {
    let token: u128 = rand::random();
    lock(&site.stoppable).insert(token, call.clone());
    let body = EventsBody {
        replies,
        pending: Some(first),
        id: call.id(),
        call,
        grants: Grants::new(WINDOW),
        heartbeat: heartbeat_timer(site.heartbeat),
        token,
        site_stoppable: site.stoppable.clone(),
        messages: 0,
        ended: false,
    };
    let mut r = Response::new(body.boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(&format!("{token:032x}")) {
        h.insert(HeaderName::from_static(CALL_HEADER), v);
    }
    r
}

/// The response body of a streamed public call. Dropped before its end (the
/// client closed the response, the connection died) it kills the handler.
struct EventsBody {
    replies: mpsc::Receiver<Envelope>,
    pending: Option<Envelope>,
    id: RequestId,
    call: ServedCall,
    grants: Grants,
    heartbeat: tokio::time::Interval,
    token: u128,
    site_stoppable: crate::server::Stoppable,
    messages: u64,
    ended: bool,
}

impl EventsBody {
    /// The next reply, its event written to `out`; `false` when none is
    /// ready.
    fn poll_reply(&mut self, cx: &mut Context<'_>, out: &mut BytesMut) -> bool {
        let env = match self.pending.take() {
            Some(env) => env,
            None => match self.replies.poll_recv(cx) {
                Poll::Ready(Some(env)) => env,
                Poll::Ready(None) => {
                    self.end_with(Err(peer::abandoned()), out);
                    return true;
                }
                Poll::Pending => return false,
            },
        };
        match peer::decode_reply(env) {
            Ok(Reply::Heartbeat | Reply::Frame(Frame::Accepted)) => {}
            Ok(Reply::Frame(Frame::Data(m))) => {
                self.message(&m, out);
                if let Some(n) = self.grants.data_read() {
                    let grant = Envelope::new(EnvelopeKind::Ack, self.id)
                        .with_headers(Headers::new().with(names::CREDIT, n.to_string()));
                    let _ = self.call.control(grant);
                }
            }
            Ok(Reply::Frame(Frame::Last(m))) => {
                self.message(&m, out);
                self.end_with(Ok(()), out);
            }
            Ok(Reply::Frame(Frame::End)) => self.end_with(Ok(()), out),
            Ok(Reply::Error(e)) | Err(e) => self.end_with(Err(e), out),
        }
        true
    }

    fn message(&mut self, m: &Message, out: &mut BytesMut) {
        self.messages += 1;
        let body = m.body.to_bytes();
        match std::str::from_utf8(&body) {
            // A carriage return would end an SSE line early.
            Ok(text) if !text.contains('\r') => {
                out.extend_from_slice(b"event: message\n");
                for line in text.split('\n') {
                    out.extend_from_slice(b"data: ");
                    out.extend_from_slice(line.as_bytes());
                    out.extend_from_slice(b"\n");
                }
            }
            _ => {
                out.extend_from_slice(b"event: binary\ndata: ");
                out.extend_from_slice(
                    base64::engine::general_purpose::STANDARD
                        .encode(&body)
                        .as_bytes(),
                );
                out.extend_from_slice(b"\n");
            }
        }
        out.extend_from_slice(b"\n");
    }

    fn end_with(&mut self, outcome: Result<(), Error>, out: &mut BytesMut) {
        self.ended = true;
        lock(&self.site_stoppable).remove(&self.token);
        match outcome {
            Ok(()) => {
                let data = serde_json::json!({ "messages": self.messages });
                out.extend_from_slice(format!("event: end\ndata: {data}\n\n").as_bytes());
            }
            Err(e) => {
                out.extend_from_slice(
                    format!("event: error\ndata: {}\n\n", error_json(&e)).as_bytes(),
                );
            }
        }
    }
}

impl Body for EventsBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<BodyFrame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let mut out = BytesMut::new();
        // A batch of replies per frame, as many as are ready.
        while !this.ended && out.len() < 64 * 1024 && this.poll_reply(cx, &mut out) {}
        if !out.is_empty() {
            this.heartbeat.reset();
            return Poll::Ready(Some(Ok(BodyFrame::data(out.freeze()))));
        }
        if this.ended {
            return Poll::Ready(None);
        }
        futures_util::ready!(this.heartbeat.poll_tick(cx));
        Poll::Ready(Some(Ok(BodyFrame::data(Bytes::from_static(
            b": heartbeat\n\n",
        )))))
    }
}

impl Drop for EventsBody {
    fn drop(&mut self) {
        if !self.ended {
            lock(&self.site_stoppable).remove(&self.token);
            self.call.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_header_lines_keep_their_place_even_when_empty() {
        // Found by the `http_mapping` fuzz target: two empty `z` lines were
        // joined to "" (one empty value) instead of ", " (two).
        let mut map = hyper::HeaderMap::new();
        for v in ["", "", "b"] {
            map.append("z", hyper::header::HeaderValue::from_static(v));
        }
        map.append("y", hyper::header::HeaderValue::from_static("one"));
        let headers = call_headers(&map).expect("headers");
        assert_eq!(headers.get("z"), Some(", , b"));
        assert_eq!(headers.get("y"), Some("one"));
    }
}
