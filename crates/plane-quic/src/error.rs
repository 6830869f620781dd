//! How QUIC's and TLS's errors become plane's kinds: a failed connect, a
//! refused certificate, a write on a stream the peer stopped.

use plane_core::{Error, ErrorKind};
use plane_peer::tls::CERTIFICATE_ALERTS;

pub(crate) fn connection_error(
    what: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::new(ErrorKind::Connection, format!("{what}: {e}")).with_source(e)
}

/// `Unauthorized` if the peer closed `conn` because it refused this
/// process's certificate, or its lack of one. Under mutual TLS the server
/// checks the client's certificate only after the client considers the
/// handshake done, so the refusal ends the first call on the connection
/// rather than the connect; this tells it from a lost peer.
pub(crate) fn refusal(conn: &quinn::Connection) -> Option<Error> {
    let quinn::ConnectionError::ConnectionClosed(close) = conn.close_reason()? else {
        return None;
    };
    // QUIC carries a TLS alert as the transport error 0x100 + alert.
    let alert = u64::from(close.error_code).checked_sub(0x100)?;
    let alert = u8::try_from(alert).ok()?;
    CERTIFICATE_ALERTS.contains(&alert).then(|| {
        Error::new(
            ErrorKind::Unauthorized,
            format!("the peer refused this process's TLS certificate: {close}"),
        )
    })
}

pub(crate) fn write_error(e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::Stopped(_) => {
            Error::new(ErrorKind::Cancelled, "the caller cancelled the call").with_source(e)
        }
        quinn::WriteError::ConnectionLost(_) => {
            Error::new(ErrorKind::Disconnected, "the peer connection was lost").with_source(e)
        }
        other => Error::new(ErrorKind::Closed, "stream closed").with_source(other),
    }
}
