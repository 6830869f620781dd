//! The sans-IO wire protocol: envelopes to bytes and back.
//!
//! Everything here is a pure function over bytes — no tokio, no clocks, no
//! I/O — so every transport shares one codec and the codec can be tested and
//! fuzzed on its own (the quinn-proto approach). The normative description
//! of the format is `docs/wire-protocol.md`; this summary is for orientation.
//!
//! # Frame layout (version 1)
//!
//! ```text
//! +---------+----------------+-------------------------------+--------+--------+-----
//! | version | header length  | header (postcard)             | part 0 | part 1 | ...
//! | u8 = 1  | varint (LEB128)| kind, id, headers, part lens  | bytes  | bytes  |
//! +---------+----------------+-------------------------------+--------+--------+-----
//! ```
//!
//! The *head* is the version byte, the header length and the header. Three
//! forms carry it:
//!
//! * single buffer ([`encode`], [`decode`]): head then every part's bytes,
//!   for transports that deliver one message as one buffer (NATS payloads);
//! * multipart ([`encode_parts`], [`decode_parts`]): head as the first message part,
//!   then one message part per body part, for transports with native framing (ZeroMQ);
//!   the concatenation of the message parts *is* the single-buffer form;
//! * length-delimited ([`encode_delimited`], [`DelimitedDecoder`]): a big-endian
//!   `u32` length, then the single-buffer form, for byte streams (QUIC).
//!
//! # Robustness
//!
//! Decoding any byte string returns `Ok` or a [`WireError`]; it never panics
//! and never allocates from a length it has not checked against [`Limits`]
//! (the fuzz target in `fuzz/` holds the decoders to that).
//!
//! # Example
//!
//! ```
//! use plane_core::wire::{self, Envelope, EnvelopeKind, RequestId};
//! use plane_core::Headers;
//!
//! let env = Envelope::new(EnvelopeKind::Request, RequestId::new_v7())
//!     .with_headers(Headers::new().with("content-type", "text/plain"))
//!     .with_body("hello");
//! let bytes = wire::encode(&env);
//! assert_eq!(wire::decode(bytes)?, env);
//! # Ok::<(), wire::WireError>(())
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};

use crate::message::names;
use crate::{Body, Error, ErrorKind, Headers};

mod error;
mod head;
mod stream;
#[cfg(test)]
mod tests;

pub use error::WireError;
pub use stream::{encode_delimited, DelimitedDecoder, LENGTH_PREFIX_LEN};

/// The wire version this crate writes.
pub const VERSION: u8 = 1;

/// The oldest wire version this crate reads.
///
/// The rule is N-1..N: once version 2 exists, `MIN_VERSION` becomes 1 so that
/// peers can be upgraded one at a time, and version 1 is dropped with version 3.
pub const MIN_VERSION: u8 = 1;

/// Default for [`Limits::max_header_bytes`]: 64 KiB of encoded header.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Default for [`Limits::max_header_entries`].
pub const MAX_HEADER_ENTRIES: usize = 128;

/// Default for [`Limits::max_parts`].
pub const MAX_PARTS: usize = 1024;

/// Default for [`Limits::max_envelope_bytes`]: 16 MiB per envelope. Larger payloads
/// belong in the object plane (pass a handle, not the bytes).
pub const MAX_ENVELOPE_BYTES: usize = 16 * 1024 * 1024;

/// What a decoder accepts; anything larger is refused with a [`WireError`]
/// before it is allocated.
///
/// # Example
///
/// ```
/// use plane_core::wire::Limits;
///
/// let limits = Limits::default().with_max_envelope_bytes(1024 * 1024);
/// assert_eq!(limits.max_envelope_bytes, 1024 * 1024);
/// ```
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest encoded postcard header, in bytes.
    pub max_header_bytes: usize,
    /// Most header entries (name/value pairs).
    pub max_header_entries: usize,
    /// Most body parts.
    pub max_parts: usize,
    /// Longest envelope in bytes: head plus all parts (the outer length prefix of
    /// the length-delimited form is not counted).
    pub max_envelope_bytes: usize,
}

impl Limits {
    /// The defaults: [`MAX_HEADER_BYTES`], [`MAX_HEADER_ENTRIES`],
    /// [`MAX_PARTS`], [`MAX_ENVELOPE_BYTES`].
    pub const DEFAULT: Limits = Limits {
        max_header_bytes: MAX_HEADER_BYTES,
        max_header_entries: MAX_HEADER_ENTRIES,
        max_parts: MAX_PARTS,
        max_envelope_bytes: MAX_ENVELOPE_BYTES,
    };

    /// Set [`max_header_bytes`](Limits::max_header_bytes).
    pub const fn with_max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }

    /// Set [`max_header_entries`](Limits::max_header_entries).
    pub const fn with_max_header_entries(mut self, n: usize) -> Self {
        self.max_header_entries = n;
        self
    }

    /// Set [`max_parts`](Limits::max_parts).
    pub const fn with_max_parts(mut self, n: usize) -> Self {
        self.max_parts = n;
        self
    }

    /// Set [`max_envelope_bytes`](Limits::max_envelope_bytes).
    pub const fn with_max_envelope_bytes(mut self, n: usize) -> Self {
        self.max_envelope_bytes = n;
        self
    }

    /// Whether a peer decoding with these limits would accept `env`.
    ///
    /// Senders call this before sending so that an oversized message fails
    /// locally (a backend reports it as [`ErrorKind::PayloadTooLarge`])
    /// instead of being refused by the receiver.
    ///
    /// # Errors
    ///
    /// The [`WireError`] the receiver's decoder would return.
    pub fn check(&self, env: &Envelope) -> Result<(), WireError> {
        let postcard_len = head::postcard_len(env);
        if postcard_len > self.max_header_bytes {
            return Err(WireError::HeaderTooLarge {
                len: postcard_len as u64,
                max: self.max_header_bytes as u64,
            });
        }
        if env.headers.len() > self.max_header_entries {
            return Err(WireError::TooManyHeaders {
                count: env.headers.len() as u64,
                max: self.max_header_entries as u64,
            });
        }
        let parts = env.body.parts().len();
        if parts > self.max_parts {
            return Err(WireError::TooManyParts {
                count: parts as u64,
                max: self.max_parts as u64,
            });
        }
        let len = head::head_len(postcard_len) + env.body.len();
        if len > self.max_envelope_bytes {
            return Err(WireError::EnvelopeTooLarge {
                len: len as u64,
                max: self.max_envelope_bytes as u64,
            });
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// What an envelope means. Codes are stable; a new kind needs a new wire version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum EnvelopeKind {
    /// Opens a request; the body is the request payload.
    Request = 1,
    /// One response item of a unary or streamed reply.
    Data = 2,
    /// The explicit end of a response stream; a stream without it is
    /// `Disconnected`, never a clean end.
    End = 3,
    /// A typed error in-band; see [`Envelope::error`].
    Error = 4,
    /// Caller asks the handler to stop gracefully.
    Stop = 5,
    /// Caller asks the handler to stop now.
    Kill = 6,
    /// Positive acknowledgement (request accepted, delivery processed).
    Ack = 7,
    /// Negative acknowledgement (refusal, or redeliver later).
    Nack = 8,
    /// Liveness signal on an otherwise idle stream.
    Heartbeat = 9,
}

impl EnvelopeKind {
    /// Every kind, in code order.
    pub const ALL: [EnvelopeKind; 9] = [
        EnvelopeKind::Request,
        EnvelopeKind::Data,
        EnvelopeKind::End,
        EnvelopeKind::Error,
        EnvelopeKind::Stop,
        EnvelopeKind::Kill,
        EnvelopeKind::Ack,
        EnvelopeKind::Nack,
        EnvelopeKind::Heartbeat,
    ];

    /// The wire code. 0 is never a kind, so an all-zero header is refused.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The kind for a wire code.
    ///
    /// # Errors
    ///
    /// [`WireError::UnknownKind`] for a code that names no kind.
    pub const fn from_code(code: u8) -> Result<EnvelopeKind, WireError> {
        Ok(match code {
            1 => EnvelopeKind::Request,
            2 => EnvelopeKind::Data,
            3 => EnvelopeKind::End,
            4 => EnvelopeKind::Error,
            5 => EnvelopeKind::Stop,
            6 => EnvelopeKind::Kill,
            7 => EnvelopeKind::Ack,
            8 => EnvelopeKind::Nack,
            9 => EnvelopeKind::Heartbeat,
            other => return Err(WireError::UnknownKind(other)),
        })
    }

    /// Stable lower-case name, for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            EnvelopeKind::Request => "request",
            EnvelopeKind::Data => "data",
            EnvelopeKind::End => "end",
            EnvelopeKind::Error => "error",
            EnvelopeKind::Stop => "stop",
            EnvelopeKind::Kill => "kill",
            EnvelopeKind::Ack => "ack",
            EnvelopeKind::Nack => "nack",
            EnvelopeKind::Heartbeat => "heartbeat",
        }
    }
}

impl fmt::Display for EnvelopeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<EnvelopeKind> for u8 {
    fn from(kind: EnvelopeKind) -> u8 {
        kind.code()
    }
}

impl TryFrom<u8> for EnvelopeKind {
    type Error = WireError;

    fn try_from(code: u8) -> Result<Self, WireError> {
        EnvelopeKind::from_code(code)
    }
}

/// A 128-bit request id, a UUIDv7 when made by [`RequestId::new_v7`].
///
/// Displayed and parsed as a hyphenated UUID; on the wire it is the 16 bytes
/// of the UUID in their usual (big-endian) order.
///
/// ```
/// use plane_core::wire::RequestId;
///
/// let id: RequestId = "017f22e2-79b0-7cc3-98c4-dc0c0c07398f".parse()?;
/// assert_eq!(id.0, 0x017f22e2_79b0_7cc3_98c4_dc0c0c07398f);
/// assert_eq!(id.to_string(), "017f22e2-79b0-7cc3-98c4-dc0c0c07398f");
/// # Ok::<(), plane_core::wire::WireError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RequestId(pub u128);

impl RequestId {
    /// A fresh UUIDv7: time-ordered to the millisecond, so ids sort by
    /// creation and index well; within one millisecond their order is random.
    ///
    /// The 74 random bits come from the thread's user-space generator rather
    /// than the operating system (one system call per id, which showed in the
    /// profile of every call). This reads the system clock and that
    /// generator; it is the one impure function in this module and is never
    /// called by the codec.
    pub fn new_v7() -> Self {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let random: [u8; 10] = rand::random();
        RequestId(
            uuid::Builder::from_unix_timestamp_millis(millis, &random)
                .into_uuid()
                .as_u128(),
        )
    }

    /// The 16 wire bytes, most significant first.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.to_be_bytes()
    }

    /// The id from its 16 wire bytes, most significant first.
    pub const fn from_bytes(bytes: [u8; 16]) -> Self {
        RequestId(u128::from_be_bytes(bytes))
    }
}

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&uuid::Uuid::from_u128(self.0).hyphenated(), f)
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RequestId({self})")
    }
}

impl FromStr for RequestId {
    type Err = WireError;

    /// Parses any form the `uuid` crate accepts: hyphenated, simple (32 hex
    /// digits), braced or `urn:uuid:`.
    fn from_str(s: &str) -> Result<Self, WireError> {
        uuid::Uuid::parse_str(s)
            .map(|u| RequestId(u.as_u128()))
            .map_err(|e| WireError::InvalidRequestId(e.to_string()))
    }
}

/// One protocol message: what it is, which request it belongs to, headers and
/// a body of one or more parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// What the envelope means.
    pub kind: EnvelopeKind,
    /// The request this envelope belongs to.
    pub id: RequestId,
    /// Headers; see [`crate::message::names`] for the well-known ones.
    pub headers: Headers,
    /// The payload, the user's bytes.
    pub body: Body,
}

impl Envelope {
    /// An envelope with no headers and an empty single-part body.
    pub fn new(kind: EnvelopeKind, id: RequestId) -> Self {
        Envelope {
            kind,
            id,
            headers: Headers::new(),
            body: Body::empty(),
        }
    }

    /// Replace the headers.
    pub fn with_headers(mut self, headers: Headers) -> Self {
        self.headers = headers;
        self
    }

    /// Replace the body.
    pub fn with_body(mut self, body: impl Into<Body>) -> Self {
        self.body = body.into();
        self
    }

    /// An error envelope carrying `err` in-band: header [`names::ERROR_KIND`] is
    /// the kind's [`code`](ErrorKind::code) in decimal, the body is the
    /// message as UTF-8.
    ///
    /// Only kind and message cross the wire; `op`, `backend` and `source` are
    /// local to the process that raised the error.
    ///
    /// ```
    /// use plane_core::wire::{Envelope, RequestId};
    /// use plane_core::{Error, ErrorKind};
    ///
    /// let sent = Error::new(ErrorKind::NotFound, "no such key");
    /// let got = Envelope::error(RequestId(7), &sent).to_error();
    /// assert_eq!(got.kind(), ErrorKind::NotFound);
    /// assert_eq!(got.message(), "no such key");
    /// ```
    pub fn error(id: RequestId, err: &Error) -> Self {
        Envelope {
            kind: EnvelopeKind::Error,
            id,
            headers: Headers::new().with(names::ERROR_KIND, err.kind().code().to_string()),
            body: Body::from(err.message().to_owned()),
        }
    }

    /// The error an error envelope carries (see [`Envelope::error`]).
    ///
    /// Lenient by design, since the envelope may come from a newer or foreign
    /// peer: a missing or unparsable kind header, or an unknown code, gives
    /// [`ErrorKind::Other`]; invalid UTF-8 in the message is replaced. Called
    /// on an envelope of another kind it still returns an error built the same way.
    pub fn to_error(&self) -> Error {
        let kind = self
            .headers
            .get(names::ERROR_KIND)
            .and_then(|v| v.parse::<u16>().ok())
            .map_or(ErrorKind::Other, ErrorKind::from_code);
        let body = self.body.to_bytes();
        Error::new(kind, String::from_utf8_lossy(&body).into_owned())
    }

    /// Exact length of [`encode`]'s output for this envelope.
    pub fn encoded_len(&self) -> usize {
        head::head_len(head::postcard_len(self)) + self.body.len()
    }
}

/// Encode `env` as one buffer (the single-buffer form).
///
/// Copies the body once, which a single contiguous buffer forces; use
/// [`encode_parts`] where the transport can send the parts as they are.
pub fn encode(env: &Envelope) -> Bytes {
    let mut buf = BytesMut::new();
    encode_into(env, &mut buf);
    buf.freeze()
}

/// Append the single-buffer form of `env` to `dst`, reserving the exact space
/// first.
pub fn encode_into(env: &Envelope, dst: &mut BytesMut) {
    let postcard_len = head::postcard_len(env);
    encode_with_len(env, postcard_len, dst);
}

/// [`encode_into`] with the postcard length already computed.
fn encode_with_len(env: &Envelope, postcard_len: usize, dst: &mut BytesMut) {
    dst.reserve(head::head_len(postcard_len) + env.body.len());
    head::put_head(env, postcard_len, dst);
    for part in env.body.parts() {
        dst.extend_from_slice(part);
    }
}

/// Encode `env` in the multipart form: `[head, part 0, part 1, ...]`.
///
/// The parts are the body's own `Bytes` (reference-counted, not copied).
/// Concatenating the result gives exactly [`encode`]'s output.
pub fn encode_parts(env: &Envelope) -> Vec<Bytes> {
    let postcard_len = head::postcard_len(env);
    let mut head_buf = BytesMut::with_capacity(head::head_len(postcard_len));
    head::put_head(env, postcard_len, &mut head_buf);
    let parts = env.body.parts();
    let mut out = Vec::with_capacity(1 + parts.len());
    out.push(head_buf.freeze());
    out.extend(parts.iter().cloned());
    out
}

/// Decode the single-buffer form with the default [`Limits`].
///
/// # Errors
///
/// See [`decode_with`].
pub fn decode(bytes: Bytes) -> Result<Envelope, WireError> {
    decode_with(bytes, &Limits::DEFAULT)
}

/// Decode the single-buffer form, refusing anything beyond `limits`.
///
/// The body parts are [`Bytes::slice`]s of `bytes`: no payload is copied.
///
/// # Errors
///
/// A [`WireError`] for any input that is not exactly one well-formed envelope
/// within `limits`: [`Truncated`](WireError::Truncated) for a prefix of one,
/// [`LengthMismatch`](WireError::LengthMismatch) for trailing bytes, and the
/// specific variant for a bad version, kind, header or limit.
pub fn decode_with(bytes: Bytes, limits: &Limits) -> Result<Envelope, WireError> {
    if let Some(&version) = bytes.first() {
        head::check_version(version)?;
    }
    if bytes.len() > limits.max_envelope_bytes {
        return Err(WireError::EnvelopeTooLarge {
            len: bytes.len() as u64,
            max: limits.max_envelope_bytes as u64,
        });
    }
    let head = head::decode_head(&bytes, limits)?;
    // `decode_head` only succeeds when the head lies within `bytes`.
    let available = (bytes.len() - head.len) as u64;
    let mut declared = 0u64;
    for &len in &head.part_lens {
        // Saturating: a sum past u64::MAX is certainly more than is present.
        declared = declared.saturating_add(len);
    }
    if declared > available {
        return Err(WireError::Truncated);
    }
    if declared < available {
        return Err(WireError::LengthMismatch {
            expected: declared,
            actual: available,
        });
    }
    // Every length is now known to fit in `bytes`, so the casts and slices
    // below are in bounds. `part_lens.len()` was checked against `max_parts`.
    let mut parts = Vec::with_capacity(head.part_lens.len());
    let mut at = head.len;
    for &len in &head.part_lens {
        let end = at + len as usize;
        parts.push(bytes.slice(at..end));
        at = end;
    }
    Ok(Envelope {
        kind: head.kind,
        id: head.id,
        headers: head.headers,
        body: Body::from_parts(parts),
    })
}

/// Decode the multipart form with the default [`Limits`].
///
/// # Errors
///
/// See [`decode_parts_with`].
pub fn decode_parts(message: &[Bytes]) -> Result<Envelope, WireError> {
    decode_parts_with(message, &Limits::DEFAULT)
}

/// Decode the multipart form `[head, part 0, part 1, ...]`, refusing anything
/// beyond `limits`. The body parts are the given message parts (not copied).
///
/// # Errors
///
/// [`Truncated`](WireError::Truncated) if there is no head part or fewer
/// parts than the head declares; [`LengthMismatch`](WireError::LengthMismatch)
/// if the head part has trailing bytes, there are more parts than declared
/// or a part's length differs from its declared length; otherwise as
/// [`decode_with`]. [`max_envelope_bytes`](Limits::max_envelope_bytes) applies to
/// the sum of all message parts.
pub fn decode_parts_with(message: &[Bytes], limits: &Limits) -> Result<Envelope, WireError> {
    let (head_part, parts) = message.split_first().ok_or(WireError::Truncated)?;
    if let Some(&version) = head_part.first() {
        head::check_version(version)?;
    }
    if parts.len() > limits.max_parts {
        return Err(WireError::TooManyParts {
            count: parts.len() as u64,
            max: limits.max_parts as u64,
        });
    }
    let total = message
        .iter()
        .fold(0u64, |sum, f| sum.saturating_add(f.len() as u64));
    if total > limits.max_envelope_bytes as u64 {
        return Err(WireError::EnvelopeTooLarge {
            len: total,
            max: limits.max_envelope_bytes as u64,
        });
    }
    let head = head::decode_head(head_part, limits)?;
    if head.len != head_part.len() {
        return Err(WireError::LengthMismatch {
            expected: head.len as u64,
            actual: head_part.len() as u64,
        });
    }
    let declared = head.part_lens.len();
    if parts.len() < declared {
        return Err(WireError::Truncated);
    }
    if parts.len() > declared {
        return Err(WireError::LengthMismatch {
            expected: declared as u64,
            actual: parts.len() as u64,
        });
    }
    for (&len, part) in head.part_lens.iter().zip(parts) {
        if len != part.len() as u64 {
            return Err(WireError::LengthMismatch {
                expected: len,
                actual: part.len() as u64,
            });
        }
    }
    Ok(Envelope {
        kind: head.kind,
        id: head.id,
        headers: head.headers,
        body: Body::from_parts(parts.to_vec()),
    })
}
