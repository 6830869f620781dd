//! async-nats errors mapped onto plane's [`ErrorKind`]s.

use async_nats::jetstream::ErrorCode;
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
        _ => match server_code(&e) {
            // A clustered stream refuses an expected-sequence check with
            // this code rather than 10071 (which async-nats maps): it is
            // the compare-and-swap conflict all the same.
            Some(ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT) => ErrorKind::RevisionMismatch,
            // A newly elected leader cannot check the expected sequence
            // yet; nothing was written, and a retry soon succeeds, as
            // while the stream has no leader at all.
            Some(ErrorCode::STREAM_EXPECTED_LAST_SEQ_PER_SUBJECT_NOT_READY) => {
                ErrorKind::NoResponders
            }
            _ => ErrorKind::Other,
        },
    };
    let detail = match server_code(&e) {
        Some(code) => format!("{} (server error {})", e.kind(), code.0),
        None => e.kind().to_string(),
    };
    Error::new(kind, format!("jetstream publish failed: {detail}")).with_source(e)
}

/// The JetStream error code the server answered with, if it did.
fn server_code(e: &(dyn std::error::Error + 'static)) -> Option<ErrorCode> {
    std::error::Error::source(e)?
        .downcast_ref::<async_nats::jetstream::Error>()
        .map(async_nats::jetstream::Error::error_code)
}

/// A failed pull of a queue receive. The server answers a pull with status
/// 503 while the consumer has no leader (an election on a cluster): nothing
/// was taken and a retry soon succeeds, so it is `NoResponders`, as a
/// request with nobody to answer it. async-nats reports that status only as
/// text. Anything else is as [`js`].
pub(crate) fn pull<E>(what: &'static str, e: E) -> Error
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let e = e.into();
    let text = e.to_string();
    if text.contains("messages from the stream: 503") {
        return Error::new(
            ErrorKind::NoResponders,
            format!("{what}: the consumer has no leader to answer ({text})"),
        )
        .with_source(e);
    }
    js(what, e)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pull_nobody_leads_is_no_responders() {
        // The text async-nats 0.51 gives a pull answered with status 503,
        // as seen during a consumer leader election.
        let e = std::io::Error::other("error while processing messages from the stream: 503, None");
        assert_eq!(pull("queue receive", e).kind(), ErrorKind::NoResponders);
        let e = std::io::Error::other(
            "error while processing messages from the stream: 409, Some(\"Consumer Deleted\")",
        );
        assert_eq!(pull("queue receive", e).kind(), ErrorKind::Other);
        let e = std::io::Error::other("consumer not found");
        assert_eq!(pull("queue receive", e).kind(), ErrorKind::NotFound);
    }
}
