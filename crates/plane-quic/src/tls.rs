//! TLS for plane's QUIC endpoints: identities, pinning and mutual TLS.
//!
//! QUIC always runs TLS 1.3. A process needs an identity (certificate chain
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

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use plane_core::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Discovery metadata key carrying the server certificate's SHA-256
/// fingerprint (64 lower-case hex digits).
pub const FINGERPRINT_METADATA: &str = "quic-sha256";
/// Discovery metadata key carrying the TLS server name to verify.
pub const SERVER_NAME_METADATA: &str = "quic-server-name";
/// ALPN protocol of plane's QUIC planes.
pub const ALPN: &[u8] = b"plane/1";
/// Server name of generated development certificates.
pub const DEFAULT_SERVER_NAME: &str = "plane";

pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(what: &str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::new(ErrorKind::InvalidConfig, format!("{what}: {e}")).with_source(e)
}

/// A certificate chain and its private key.
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// A self-signed development certificate for `names` (plus
    /// [`DEFAULT_SERVER_NAME`]), generated now.
    ///
    /// # Errors
    /// `InvalidConfig` if a name is not a valid DNS name or IP address.
    pub fn generate(names: &[String]) -> Result<Self> {
        let mut sans = vec![DEFAULT_SERVER_NAME.to_owned(), "localhost".to_owned()];
        sans.extend(names.iter().cloned());
        sans.dedup();
        let generated = rcgen::generate_simple_self_signed(sans)
            .map_err(|e| tls_error("cannot generate a certificate", e))?;
        let key = PrivatePkcs8KeyDer::from(generated.signing_key.serialize_der());
        Ok(Identity {
            certs: vec![generated.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key),
        })
    }

    /// Load a PEM certificate chain and a PEM private key.
    ///
    /// # Errors
    /// `InvalidConfig` if a file cannot be read or holds no certificate or key.
    pub fn load(cert: &Path, key: &Path) -> Result<Self> {
        let certs = CertificateDer::pem_file_iter(cert)
            .map_err(|e| tls_error(&format!("cannot read {}", cert.display()), e))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| tls_error(&format!("cannot parse {}", cert.display()), e))?;
        if certs.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("no certificate in {}", cert.display()),
            ));
        }
        let key = PrivateKeyDer::from_pem_file(key)
            .map_err(|e| tls_error(&format!("cannot read a key from {}", key.display()), e))?;
        Ok(Identity { certs, key })
    }

    /// SHA-256 of the leaf certificate, 64 lower-case hex digits.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs[0])
    }
}

/// SHA-256 of a DER certificate, 64 lower-case hex digits.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    let digest = Sha256::digest(cert.as_ref());
    let mut s = String::with_capacity(64);
    for b in digest {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Load every certificate of a PEM file as trust roots.
///
/// # Errors
/// `InvalidConfig` if the file cannot be read or holds no usable certificate.
pub fn load_roots(path: &Path) -> Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_error(&format!("cannot read {}", path.display()), e))?
    {
        let cert = cert.map_err(|e| tls_error(&format!("cannot parse {}", path.display()), e))?;
        roots
            .add(cert)
            .map_err(|e| tls_error(&format!("bad CA certificate in {}", path.display()), e))?;
    }
    if roots.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!("no CA certificate in {}", path.display()),
        ));
    }
    Ok(roots)
}

/// The rustls server configuration: this identity, TLS 1.3, plane's ALPN,
/// and client certificates required when `client_ca` is given.
pub(crate) fn server_config(
    identity: &Identity,
    client_ca: Option<&RootCertStore>,
) -> Result<rustls::ServerConfig> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("tls versions", e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                provider,
            )
            .build()
            .map_err(|e| tls_error("client verifier", e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(identity.certs.clone(), identity.key.clone_key())
        .map_err(|e| tls_error("server certificate", e))?;
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// How a caller verifies the server it connects to.
#[derive(Debug, Clone)]
pub(crate) enum ServerTrust {
    /// Exactly the certificate with this fingerprint.
    Pinned(String),
    /// A chain verifying against these roots.
    Ca(Arc<RootCertStore>),
}

/// The rustls client configuration for one kind of trust; presents
/// `identity` when `mutual` (the server asks for it under mutual TLS).
pub(crate) fn client_config(
    trust: &ServerTrust,
    identity: &Identity,
    mutual: bool,
) -> Result<rustls::ClientConfig> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| tls_error("tls versions", e))?;
    let builder = match trust {
        ServerTrust::Ca(roots) => builder.with_root_certificates(roots.clone()),
        ServerTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinVerifier {
                fingerprint: fp.clone(),
                provider,
            })),
    };
    let mut config = if mutual {
        builder
            .with_client_auth_cert(identity.certs.clone(), identity.key.clone_key())
            .map_err(|e| tls_error("client certificate", e))?
    } else {
        builder.with_no_client_auth()
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Ok(config)
}

/// Accepts exactly one certificate, by fingerprint, whatever its issuer or
/// name; the handshake signature is still verified, so the peer must hold the
/// certificate's key.
#[derive(Debug)]
struct PinVerifier {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        if fingerprint(end_entity) == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
