//! async-nats errors mapped onto plane's [`ErrorKind`]s.

use plane_core::{Error, ErrorKind};

/// A connect failure.
pub(crate) fn connect(e: async_nats::ConnectError) -> Error {
    use async_nats::ConnectErrorKind as K;
    let kind = match e.kind() {
        K::AuthorizationViolation | K::Authentication => ErrorKind::Unauthorized,
        K::ServerParse => ErrorKind::InvalidConfig,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("cannot connect to nats: {}", e.kind())).with_source(e)
}

/// A core publish failure.
pub(crate) fn publish(e: async_nats::PublishError) -> Error {
    let kind = match e.kind() {
        async_nats::client::PublishErrorKind::MaxPayloadExceeded => ErrorKind::PayloadTooLarge,
        _ => ErrorKind::Connection,
    };
    Error::new(kind, format!("nats publish failed: {}", e.kind())).with_source(e)
}

/// A subscribe failure.
pub(crate) fn subscribe(e: async_nats::SubscribeError) -> Error {
    Error::new(ErrorKind::Connection, "nats subscribe failed").with_source(e)
}

/// A JetStream publish failure.
pub(crate) fn js_publish(e: async_nats::jetstream::context::PublishError) -> Error {
    use async_nats::jetstream::context::PublishErrorKind as K;
    let kind = match e.kind() {
        K::StreamNotFound => ErrorKind::NotFound,
        K::WrongLastSequence => ErrorKind::RevisionMismatch,
        K::MaxPayloadExceeded => ErrorKind::PayloadTooLarge,
        K::TimedOut => ErrorKind::Timeout,
        K::BrokenPipe => ErrorKind::Connection,
        K::MaxAckPending => ErrorKind::Overloaded,
        _ => ErrorKind::Other,
    };
    Error::new(kind, format!("jetstream publish failed: {}", e.kind())).with_source(e)
}

/// Any other JetStream failure: `NotFound` when the server said so, else
/// `Timeout` or `Other`.
pub(crate) fn js<E>(what: &'static str, e: E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let e = e.into();
    let text = e.to_string();
    let kind = if text.contains("not found") || text.contains("no message found") {
        ErrorKind::NotFound
    } else if text.contains("timed out") {
        ErrorKind::Timeout
    } else {
        ErrorKind::Other
    };
    Error::new(kind, format!("{what}: {text}")).with_source(e)
}
