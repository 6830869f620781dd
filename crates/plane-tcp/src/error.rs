//! How socket errors become plane's kinds.

use plane_core::{Error, ErrorKind};

/// A socket that could not be bound, connected or used: `Connection`,
/// saying `what` failed.
pub(crate) fn io_error(what: &str, e: std::io::Error) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}")).with_source(e)
}
