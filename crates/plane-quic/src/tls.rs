//! TLS for plane's QUIC endpoints: identities, pinning and mutual TLS.
//!
//! QUIC always runs TLS 1.3, through plane-peer's shared [`plane_peer::tls`]. A process needs an identity (certificate chain
//! and key): loaded from PEM files, or a self-signed development certificate
//! generated at start-up. Peers are verified in one of two ways:
//!
//! - **pinning** (the default): a server publishes the SHA-256 fingerprint of
//!   its certificate in its discovery record ([`FINGERPRINT_METADATA`]); a
//!   caller accepts exactly that certificate. Self-signed certificates are
//!   then safe as long as the discovery kv is trusted.
//! - **a CA** (`ca`): the server's chain must verify against the given roots
//!   for the name it publishes ([`SERVER_NAME_METADATA`]).
//!
//! With `client_ca` set, a server requires callers to present a certificate
//! issued by that CA (mutual TLS); callers present their own identity.
//!
//! # Refusals
//!
//! - A caller that refuses the server's certificate (wrong fingerprint, or a
//!   chain its CA does not verify) fails to connect: `Connection`, and the
//!   call moves on to another instance of the endpoint if there is one.
//! - A server that refuses the caller's certificate (none presented, or not
//!   issued by its `client_ca`) closes the connection with a TLS alert; the
//!   caller's call fails with `Unauthorized`. TLS 1.3 checks the client's
//!   certificate after the client finished its handshake, so this shows on
//!   the first call rather than on connecting.

use plane_peer::tls::Published;
pub use plane_peer::tls::{fingerprint, load_roots, Identity, TlsConfig, DEFAULT_SERVER_NAME};

/// Discovery metadata key carrying the server certificate's SHA-256
/// fingerprint (64 lower-case hex digits).
pub const FINGERPRINT_METADATA: &str = "quic-sha256";
/// Discovery metadata key carrying the TLS server name to verify.
pub const SERVER_NAME_METADATA: &str = "quic-server-name";
/// ALPN protocol of plane's QUIC planes.
pub const ALPN: &[u8] = b"plane/1";

/// What QUIC's TLS publishes and negotiates under.
pub(crate) const PUBLISHED: Published = Published {
    fingerprint: FINGERPRINT_METADATA,
    server_name: SERVER_NAME_METADATA,
    alpn: ALPN,
};
