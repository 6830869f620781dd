//! How the stores' errors become plane's kinds: one mapping for
//! object_store, one for the filesystem, one constructor for bad URLs.

use plane_core::{Error, ErrorKind};

/// Map an object_store error to plane's kinds, keeping it as the source.
pub(crate) fn store_err(e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => ErrorKind::NotFound,
        E::AlreadyExists { .. } => ErrorKind::AlreadyExists,
        E::Precondition { .. } => ErrorKind::RevisionMismatch,
        E::NotSupported { .. } | E::NotImplemented { .. } => ErrorKind::Unsupported,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ErrorKind::Unauthorized,
        E::UnknownConfigurationKey { .. } => ErrorKind::InvalidConfig,
        E::InvalidPath { .. } => ErrorKind::InvalidArgument,
        _ => ErrorKind::Other,
    };
    Error::new(kind, "object store operation failed").with_source(e)
}

/// Map a filesystem error of `what` to plane's kinds, keeping it as the source.
pub(crate) fn io_err(what: &str, e: std::io::Error) -> Error {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => ErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => ErrorKind::Unauthorized,
        _ => ErrorKind::Other,
    };
    Error::new(kind, what.to_owned()).with_source(e)
}

/// A configuration error with `msg`.
pub(crate) fn config_err(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidConfig, msg.into())
}
