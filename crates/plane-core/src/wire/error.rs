//! The typed error every wire decoder returns.

use std::fmt;

use crate::{Error, ErrorKind};

/// Why bytes could not be decoded as an envelope (or an envelope could not be encoded).
///
/// Every decoder in [`wire`](super) returns one of these for malformed input
/// instead of panicking. Numbers are `u64` so that a length read from the wire
/// is reported as it was declared, even when it does not fit a `usize`.
///
/// Converts into [`crate::Error`] with [`ErrorKind::Decode`], keeping itself
/// as the [`source`](std::error::Error::source).
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The input ends before the envelope does.
    Truncated,
    /// The version byte names a version this decoder does not speak.
    UnsupportedVersion(u8),
    /// The envelope kind code is not one of [`EnvelopeKind`](super::EnvelopeKind)'s.
    UnknownKind(u8),
    /// The encoded header is longer than [`Limits::max_header_bytes`](super::Limits).
    HeaderTooLarge {
        /// Declared header length in bytes.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// The header map has more entries than [`Limits::max_header_entries`](super::Limits).
    TooManyHeaders {
        /// Declared number of entries (at least this many when not declared up front).
        count: u64,
        /// The limit in force.
        max: u64,
    },
    /// The body has more parts than [`Limits::max_parts`](super::Limits).
    TooManyParts {
        /// Declared (or, in the multipart form, present) number of parts.
        count: u64,
        /// The limit in force.
        max: u64,
    },
    /// The envelope is longer than [`Limits::max_envelope_bytes`](super::Limits), or
    /// longer than a `u32` length prefix can express.
    EnvelopeTooLarge {
        /// Declared or actual envelope length in bytes.
        len: u64,
        /// The limit in force.
        max: u64,
    },
    /// A length or count declared in the header disagrees with what follows it
    /// (trailing bytes after the body, or a multipart message with extra parts).
    LengthMismatch {
        /// What the header declares.
        expected: u64,
        /// What is actually present.
        actual: u64,
    },
    /// The same header name appears twice; header names are unique on the wire.
    DuplicateHeader(String),
    /// The header is not valid postcard for this version (bad varint, invalid
    /// UTF-8, bytes left over, ...).
    BadHeader(String),
    /// A textual request id is not a UUID.
    InvalidRequestId(String),
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated => f.write_str("envelope truncated"),
            WireError::UnsupportedVersion(v) => write!(
                f,
                "unsupported wire version {v} (this decoder accepts {}..={})",
                super::MIN_VERSION,
                super::VERSION
            ),
            WireError::UnknownKind(k) => write!(f, "unknown envelope kind {k}"),
            WireError::HeaderTooLarge { len, max } => {
                write!(
                    f,
                    "envelope header of {len} bytes exceeds the limit of {max}"
                )
            }
            WireError::TooManyHeaders { count, max } => {
                write!(f, "{count} header entries exceed the limit of {max}")
            }
            WireError::TooManyParts { count, max } => {
                write!(f, "{count} body parts exceed the limit of {max}")
            }
            WireError::EnvelopeTooLarge { len, max } => {
                write!(f, "envelope of {len} bytes exceeds the limit of {max}")
            }
            WireError::LengthMismatch { expected, actual } => write!(
                f,
                "envelope length mismatch: header declares {expected}, found {actual}"
            ),
            WireError::DuplicateHeader(name) => write!(f, "duplicate header `{name}`"),
            WireError::BadHeader(why) => write!(f, "malformed envelope header: {why}"),
            WireError::InvalidRequestId(why) => write!(f, "invalid request id: {why}"),
        }
    }
}

impl std::error::Error for WireError {}

impl From<WireError> for Error {
    fn from(e: WireError) -> Self {
        Error::new(ErrorKind::Decode, e.to_string()).with_source(e)
    }
}
