//! The parsers of what an HTTP client sends, for `fuzz/` only.
//!
//! Not part of the API (hidden from the docs, no stability promise): thin
//! public wrappers so the fuzz targets, a crate outside this workspace, can
//! reach the crate-private functions that turn a public call's request line
//! and headers into plane values. The peer protocol's bodies are
//! `plane_core::wire` envelopes, fuzzed there.

use plane_core::{Error, Headers};

/// The call's headers from the request's (HTTP's own left out).
pub fn call_headers(request: &hyper::HeaderMap) -> Result<Headers, Error> {
    crate::public::call_headers(request)
}

/// The endpoint a request path names.
pub fn endpoint_of(path: &str) -> Result<String, Error> {
    crate::public::endpoint_of(path)
}

/// Whether the request asks for server-sent events.
pub fn wants_events(request: &hyper::HeaderMap) -> bool {
    crate::public::wants_events(request)
}

/// The reply's headers as response headers.
pub fn copy_headers(from: &Headers, to: &mut hyper::HeaderMap) {
    crate::public::copy_headers(from, to)
}

/// The request headers that belong to HTTP, never to a call.
pub const HTTP_HEADERS: &[&str] = crate::public::HTTP_HEADERS;
