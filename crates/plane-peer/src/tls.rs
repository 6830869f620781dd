//! TLS for plane's brokerless transports: identities, pinning and mutual
//! TLS, written once for every transport that runs rustls (QUIC, TCP).
//!
//! A process needs an identity (certificate chain and key): loaded from PEM
//! files, or a self-signed development certificate generated at start-up.
//! Peers are verified in one of two ways:
//!
//! - **pinning** (the default): a server publishes the SHA-256 fingerprint of
//!   its certificate in its discovery record; a caller accepts exactly that
//!   certificate. Self-signed certificates are then safe as long as the
//!   discovery kv is trusted.
//! - **a CA** (`ca`): the server's chain must verify against the given roots
//!   for the name the server publishes.
//!
//! With `client_ca` set, a server requires callers to present a certificate
//! issued by that CA (mutual TLS); callers present their own identity. Only
//! TLS 1.3 is offered.
//!
//! Each transport names its own discovery metadata keys and ALPN protocol
//! ([`Published`]), so a record says which transport's TLS it speaks.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use plane_core::discovery::Instance;
use plane_core::registry::QueryParams;
use plane_core::{Error, ErrorKind, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Server name of generated development certificates, and the name a
/// server publishes unless configured otherwise.
pub const DEFAULT_SERVER_NAME: &str = "plane";

/// TLS alerts (RFC 8446, section 6.2) by which a peer refuses a
/// certificate: bad, unsupported, revoked, expired or unknown certificate,
/// unknown CA, access denied, certificate required.
pub const CERTIFICATE_ALERTS: &[u8] = &[42, 43, 44, 45, 46, 48, 49, 116];

/// The TLS settings of a process, read from URL keys or set in code.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM certificate chain; generated when `None`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// CA roots to verify servers with; `None` pins published fingerprints.
    pub ca: Option<PathBuf>,
    /// CA roots client certificates must be issued by (mutual TLS).
    pub client_ca: Option<PathBuf>,
    /// TLS name of this server's certificate.
    pub server_name: String,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            ca: None,
            client_ca: None,
            server_name: DEFAULT_SERVER_NAME.to_owned(),
        }
    }
}

impl TlsConfig {
    /// The URL keys of TLS settings, for transports to list.
    pub const KEYS: &'static [&'static str] = &["cert", "key", "ca", "client_ca", "server_name"];

    /// Take `cert`, `key`, `ca`, `client_ca` and `server_name` from `q`.
    pub fn read(mut self, q: &mut QueryParams) -> Self {
        self.cert = q.take_str("cert").map(PathBuf::from).or(self.cert);
        self.key = q.take_str("key").map(PathBuf::from).or(self.key);
        self.ca = q.take_str("ca").map(PathBuf::from).or(self.ca);
        self.client_ca = q
            .take_str("client_ca")
            .map(PathBuf::from)
            .or(self.client_ca);
        if let Some(n) = q.take_str("server_name") {
            self.server_name = n;
        }
        self
    }

    /// Whether any setting differs from the default (a transport that runs
    /// TLS only on request refuses such settings without it).
    pub fn is_set(&self) -> bool {
        *self != TlsConfig::default()
    }
}

/// What a transport's TLS publishes and negotiates under.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Discovery metadata key of the server certificate's SHA-256
    /// fingerprint (64 lower-case hex digits).
    pub fingerprint: &'static str,
    /// Discovery metadata key of the TLS server name to verify.
    pub server_name: &'static str,
    /// ALPN protocol.
    pub alpn: &'static [u8],
}

impl Published {
    /// Whether `instance`'s record says it serves this transport's TLS.
    pub fn is_in(&self, instance: &Instance) -> bool {
        instance.metadata.contains_key(self.fingerprint)
    }
}

/// One process's TLS side: its identity and trust, the server configuration,
/// and client configurations per trusted peer.
pub struct Tls {
    identity: Identity,
    ca: Option<Arc<RootCertStore>>,
    mutual: bool,
    server_name: String,
    published: Published,
    server: Arc<rustls::ServerConfig>,
    /// Client configurations by trust (a pinned fingerprint, or `ca`).
    clients: Mutex<HashMap<String, Arc<rustls::ClientConfig>>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("identity", &self.identity)
            .field("ca", &self.ca.is_some())
            .field("mutual", &self.mutual)
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Load (or generate) the identity and trust roots of `config`.
    ///
    /// # Errors
    /// `InvalidConfig` for `cert` without `key` or the reverse, and for
    /// files that cannot be read or hold nothing usable.
    pub fn new(config: &TlsConfig, published: Published) -> Result<Self> {
        let identity = match (&config.cert, &config.key) {
            (Some(cert), Some(key)) => Identity::load(cert, key)?,
            (None, None) => Identity::generate(std::slice::from_ref(&config.server_name))?,
            _ => {
                return Err(Error::new(
                    ErrorKind::InvalidConfig,
                    "`cert` and `key` must be given together",
                ))
            }
        };
        let ca = config
            .ca
            .as_deref()
            .map(load_roots)
            .transpose()?
            .map(Arc::new);
        let client_ca = config.client_ca.as_deref().map(load_roots).transpose()?;
        let server = Arc::new(server_config(
            &identity,
            client_ca.as_ref(),
            published.alpn,
        )?);
        Ok(Tls {
            identity,
            ca,
            mutual: client_ca.is_some(),
            server_name: config.server_name.clone(),
            published,
            server,
            clients: Mutex::default(),
        })
    }

    /// This process's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// The server side: this identity, and client certificates required
    /// under mutual TLS.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }

    /// `record` with what callers need to verify this server.
    pub fn publish(&self, record: Instance) -> Instance {
        record
            .with_metadata(self.published.fingerprint, self.identity.fingerprint())
            .with_metadata(self.published.server_name, self.server_name.clone())
    }

    /// The fingerprint `instance` publishes, empty if none: part of a
    /// connection's identity, so a restarted peer with a new certificate
    /// gets a new connection.
    pub fn fingerprint_of<'a>(&self, instance: &'a Instance) -> &'a str {
        instance
            .metadata
            .get(self.published.fingerprint)
            .map_or("", String::as_str)
    }

    /// The TLS name to verify `instance` under.
    pub fn server_name_of<'a>(&self, instance: &'a Instance) -> &'a str {
        instance
            .metadata
            .get(self.published.server_name)
            .map_or(DEFAULT_SERVER_NAME, String::as_str)
    }

    /// The client side for connecting to `instance`: its pinned certificate,
    /// or the configured CA; presenting this identity under mutual TLS.
    ///
    /// # Errors
    /// `Connection` when pinning and the instance publishes no fingerprint.
    pub fn client_config(&self, instance: &Instance) -> Result<Arc<rustls::ClientConfig>> {
        let (key, trust) = match &self.ca {
            Some(roots) => ("ca".to_owned(), ServerTrust::Ca(roots.clone())),
            None => {
                let fp = instance
                    .metadata
                    .get(self.published.fingerprint)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorKind::Connection,
                            format!(
                                "instance {} publishes no certificate fingerprint to pin",
                                instance.id
                            ),
                        )
                    })?;
                (fp.clone(), ServerTrust::Pinned(fp.clone()))
            }
        };
        let mut cache = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let config = Arc::new(client_config(
            &trust,
            &self.identity,
            self.mutual,
            self.published.alpn,
        )?);
        cache.insert(key, config.clone());
        Ok(config)
    }
}

/// `Unauthorized` if `e` says the peer refused this process's certificate
/// (or its lack of one) with a certificate alert.
pub fn refusal(e: &rustls::Error) -> Option<Error> {
    let rustls::Error::AlertReceived(alert) = e else {
        return None;
    };
    let code = u8::from(*alert);
    CERTIFICATE_ALERTS.contains(&code).then(|| {
        Error::new(
            ErrorKind::Unauthorized,
            format!("the peer refused this process's TLS certificate: {alert:?}"),
        )
    })
}

/// `Unauthorized` if the error `e`, or one of its causes, says the peer
/// refused this process's certificate with a certificate alert: a rustls
/// error, or one inside an I/O error (as tokio-rustls reports it).
pub fn refusal_in(e: &(dyn std::error::Error + 'static)) -> Option<Error> {
    let mut cause = Some(e);
    while let Some(c) = cause {
        let tls = c.downcast_ref::<rustls::Error>().or_else(|| {
            c.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(refusal) = tls.and_then(refusal) {
            return Some(refusal);
        }
        cause = c.source();
    }
    None
}

fn provider() -> Arc<CryptoProvider> {
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

/// The rustls server configuration: this identity, TLS 1.3, `alpn`, and
/// client certificates required when `client_ca` is given.
fn server_config(
    identity: &Identity,
    client_ca: Option<&RootCertStore>,
    alpn: &[u8],
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
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

/// How a caller verifies the server it connects to.
#[derive(Debug, Clone)]
enum ServerTrust {
    /// Exactly the certificate with this fingerprint.
    Pinned(String),
    /// A chain verifying against these roots.
    Ca(Arc<RootCertStore>),
}

/// The rustls client configuration for one kind of trust; presents
/// `identity` when `mutual` (the server asks for it under mutual TLS).
fn client_config(
    trust: &ServerTrust,
    identity: &Identity,
    mutual: bool,
    alpn: &[u8],
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
    config.alpn_protocols = vec![alpn.to_vec()];
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
