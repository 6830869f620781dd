//! One error type for every plane and every backend.
//!
//! The conformance suite asserts the same [`ErrorKind`] on every backend, so the
//! kind is shared and backend-neutral; the backend's own error travels as the
//! [`source`](std::error::Error::source) for people who need the detail.

use std::borrow::Cow;
use std::fmt;

/// Result alias used throughout plane.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, independent of the backend that reported it.
///
/// Every kind has a stable numeric [`code`](ErrorKind::code) so that a typed
/// error crosses the wire intact (see `docs/wire-protocol.md`).
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The operation did not complete before its deadline.
    Timeout,
    /// Nobody serves the endpoint that was called.
    NoResponders,
    /// The key, object, bucket, queue or endpoint does not exist.
    NotFound,
    /// A create-if-absent found the key or resource already present.
    AlreadyExists,
    /// A compare-and-swap found a different revision than expected; nothing changed.
    RevisionMismatch,
    /// The payload exceeds the backend's declared limit; nothing was sent.
    PayloadTooLarge,
    /// The backend does not declare the capability the operation needs.
    Unsupported,
    /// The operation was cancelled by its caller.
    Cancelled,
    /// The peer went away before the operation completed (for example a stream
    /// that stopped without its end marker).
    Disconnected,
    /// A bounded resource is full: admission was refused or events were dropped.
    Overloaded,
    /// A configuration value or URL is invalid.
    InvalidConfig,
    /// An argument is invalid (a malformed key, subject or name).
    InvalidArgument,
    /// Bytes could not be decoded (malformed frame, unknown version).
    Decode,
    /// The transport could not connect or lost its connection.
    Connection,
    /// The credentials were refused.
    Unauthorized,
    /// The delivery was already acknowledged or negatively acknowledged.
    AlreadyAcked,
    /// The handle or resource was closed.
    Closed,
    /// Anything else, including errors returned by application handlers
    /// that chose no more specific kind.
    Other,
}

impl ErrorKind {
    /// Every kind, in code order.
    pub const ALL: [ErrorKind; 18] = [
        ErrorKind::Timeout,
        ErrorKind::NoResponders,
        ErrorKind::NotFound,
        ErrorKind::AlreadyExists,
        ErrorKind::RevisionMismatch,
        ErrorKind::PayloadTooLarge,
        ErrorKind::Unsupported,
        ErrorKind::Cancelled,
        ErrorKind::Disconnected,
        ErrorKind::Overloaded,
        ErrorKind::InvalidConfig,
        ErrorKind::InvalidArgument,
        ErrorKind::Decode,
        ErrorKind::Connection,
        ErrorKind::Unauthorized,
        ErrorKind::AlreadyAcked,
        ErrorKind::Closed,
        ErrorKind::Other,
    ];

    /// Stable numeric code carried on the wire. Codes are never reused.
    pub const fn code(self) -> u16 {
        match self {
            ErrorKind::Timeout => 1,
            ErrorKind::NoResponders => 2,
            ErrorKind::NotFound => 3,
            ErrorKind::AlreadyExists => 4,
            ErrorKind::RevisionMismatch => 5,
            ErrorKind::PayloadTooLarge => 6,
            ErrorKind::Unsupported => 7,
            ErrorKind::Cancelled => 8,
            ErrorKind::Disconnected => 9,
            ErrorKind::Overloaded => 10,
            ErrorKind::InvalidConfig => 11,
            ErrorKind::InvalidArgument => 12,
            ErrorKind::Decode => 13,
            ErrorKind::Connection => 14,
            ErrorKind::Unauthorized => 15,
            ErrorKind::AlreadyAcked => 16,
            ErrorKind::Closed => 17,
            ErrorKind::Other => 18,
        }
    }

    /// The kind for a wire code; unknown codes (from a newer peer) map to `Other`.
    pub fn from_code(code: u16) -> ErrorKind {
        ErrorKind::ALL
            .into_iter()
            .find(|k| k.code() == code)
            .unwrap_or(ErrorKind::Other)
    }

    /// Stable lower-case name, used in metrics labels and reports.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::NoResponders => "no_responders",
            ErrorKind::NotFound => "not_found",
            ErrorKind::AlreadyExists => "already_exists",
            ErrorKind::RevisionMismatch => "revision_mismatch",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Disconnected => "disconnected",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::InvalidConfig => "invalid_config",
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Decode => "decode",
            ErrorKind::Connection => "connection",
            ErrorKind::Unauthorized => "unauthorized",
            ErrorKind::AlreadyAcked => "already_acked",
            ErrorKind::Closed => "closed",
            ErrorKind::Other => "other",
        }
    }

    /// Whether repeating the same operation may succeed.
    ///
    /// Only transient conditions qualify: a retry policy never repeats an
    /// operation whose failure is a property of the request itself.
    pub const fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorKind::Timeout
                | ErrorKind::NoResponders
                | ErrorKind::Disconnected
                | ErrorKind::Overloaded
                | ErrorKind::Connection
        )
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// The error every plane operation returns.
///
/// `op` names the operation (`"kv.update"`), `backend` the backend that failed
/// (`"mem"`, `"nats"`), and the source, when present, is the backend's own error.
pub struct Error {
    kind: ErrorKind,
    message: Cow<'static, str>,
    op: Option<&'static str>,
    backend: Option<&'static str>,
    source: Option<Source>,
}

impl Error {
    /// A new error of `kind` with a lower-case message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            op: None,
            backend: None,
            source: None,
        }
    }

    /// Shorthand for an [`ErrorKind::Unsupported`] error naming the capability.
    pub fn unsupported(capability: &'static str) -> Self {
        Error::new(
            ErrorKind::Unsupported,
            format!("backend does not declare capability `{capability}`"),
        )
    }

    /// Attach the operation name.
    pub fn with_op(mut self, op: &'static str) -> Self {
        self.op = Some(op);
        self
    }

    /// Attach the backend name.
    pub fn with_backend(mut self, backend: &'static str) -> Self {
        self.backend = Some(backend);
        self
    }

    /// Attach the underlying error.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// The kind, the part programs match on.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The human-readable message, without op, backend or source.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The operation that failed, if recorded.
    pub fn op(&self) -> Option<&'static str> {
        self.op
    }

    /// The backend that failed, if recorded.
    pub fn backend(&self) -> Option<&'static str> {
        self.backend
    }

    /// See [`ErrorKind::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        self.kind.is_retryable()
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(op) = self.op {
            d.field("op", &op);
        }
        if let Some(backend) = self.backend {
            d.field("backend", &backend);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(backend) = self.backend {
            write!(f, "{backend}: ")?;
        }
        if let Some(op) = self.op {
            write!(f, "{op}: ")?;
        }
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|s| s.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorKind> for Error {
    fn from(kind: ErrorKind) -> Self {
        Error::new(kind, kind.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_and_round_trip() {
        for kind in ErrorKind::ALL {
            assert_eq!(ErrorKind::from_code(kind.code()), kind);
        }
        let mut codes: Vec<u16> = ErrorKind::ALL.iter().map(|k| k.code()).collect();
        codes.dedup();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        assert_eq!(ErrorKind::from_code(9999), ErrorKind::Other);
    }

    #[test]
    fn display_names_backend_op_and_kind() {
        let e = Error::new(ErrorKind::NotFound, "no such key")
            .with_op("kv.get")
            .with_backend("mem");
        assert_eq!(e.to_string(), "mem: kv.get: not_found: no such key");
        assert!(!e.is_retryable());
        assert!(Error::from(ErrorKind::Timeout).is_retryable());
    }
}
