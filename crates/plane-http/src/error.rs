//! How socket and HTTP errors become plane's kinds, and plane's kinds HTTP
//! status codes (the table in `docs/http.md`).

use hyper::StatusCode;
use plane_core::{Error, ErrorKind};

/// A socket that could not be bound, connected or used: the mapping every
/// transport over TCP sockets shares.
#[cfg(feature = "testkit")]
pub(crate) use plane_peer::net::io_error;

/// An HTTP exchange with a peer that failed below plane: `Connection`.
pub(crate) fn http_error(what: &str, e: hyper::Error) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}")).with_source(e)
}

/// The HTTP status an error of `kind` is answered with.
pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::InvalidArgument | ErrorKind::Decode => StatusCode::BAD_REQUEST,
        ErrorKind::Unauthorized => StatusCode::FORBIDDEN,
        ErrorKind::NotFound | ErrorKind::NoResponders => StatusCode::NOT_FOUND,
        ErrorKind::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorKind::Unsupported => StatusCode::NOT_IMPLEMENTED,
        ErrorKind::Overloaded | ErrorKind::Closed => StatusCode::SERVICE_UNAVAILABLE,
        ErrorKind::Disconnected | ErrorKind::Connection => StatusCode::BAD_GATEWAY,
        ErrorKind::AlreadyExists | ErrorKind::RevisionMismatch | ErrorKind::AlreadyAcked => {
            StatusCode::CONFLICT
        }
        // Not in the IANA registry, but the common "client closed request".
        ErrorKind::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The JSON body of an error answer: `{"kind", "code", "message"}`.
pub(crate) fn error_json(e: &Error) -> String {
    serde_json::json!({
        "kind": e.kind().as_str(),
        "code": e.kind().code(),
        "message": e.message(),
    })
    .to_string()
}

/// The error an error answer's JSON body stands for, if it is one.
pub(crate) fn error_from_json(body: &[u8]) -> Option<Error> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = u16::try_from(v.get("code")?.as_u64()?).ok()?;
    let message = v.get("message").and_then(|m| m.as_str()).unwrap_or("");
    Some(Error::new(ErrorKind::from_code(code), message.to_owned()))
}
