//! How libzmq's errors become plane's kinds.

use plane_core::{Error, ErrorKind};
use plane_zmq_sys as zmq;

/// A socket that could not be made, set up, bound or connected: `Connection`,
/// saying `what` failed.
pub(crate) fn zmq_error(what: &str, e: zmq::Error) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}")).with_source(e)
}
