//! The errors the in-memory hub makes itself: something named that does
//! not exist, in one wording for every plane.

use plane_core::error::{Error, ErrorKind};

/// `NotFound` for the `what` named `name` (a kv bucket, a queue, …).
pub(crate) fn missing(what: &str, name: &str) -> Error {
    Error::new(
        ErrorKind::NotFound,
        format!("{what} `{name}` does not exist"),
    )
}

/// `NotFound` for a consumer whose stream, or itself, was deleted.
pub(crate) fn stream_gone() -> Error {
    Error::new(ErrorKind::NotFound, "the stream or consumer was deleted")
}
