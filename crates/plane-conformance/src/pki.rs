//! Certificates for the TLS tests of the transports that run rustls: two
//! unrelated CAs issued in the test, and the checks every such transport
//! must pass (mutual TLS, CA mode), written once.

use std::future::Future;
use std::path::{Path, PathBuf};

use plane_core::request::{unary_fn, Request, Server};
use plane_core::{ErrorKind, Requests};
use plane_peer::tls::{TlsConfig, DEFAULT_SERVER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A scratch directory for PEM files, removed when dropped.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A fresh directory under the system's temporary directory.
    pub fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("plane-pki-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    /// Write `pem` to the file `name` and return its path.
    pub fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority: its issuer, and its certificate as a PEM file.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// The CA certificate, as trust roots for `ca` or `client_ca`.
    pub pem: PathBuf,
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(scratch: &Scratch, name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("ca key"))
            .expect("ca certificate");
        let pem = scratch.write(&format!("{name}.pem"), &issuer.pem());
        Ca { issuer, pem }
    }

    /// A certificate for the default server name issued by this CA, for
    /// serving and for client authentication, as TLS settings presenting it.
    pub fn issue(&self, scratch: &Scratch, name: &str) -> TlsConfig {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(vec![DEFAULT_SERVER_NAME.to_owned()]).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("leaf certificate");
        let mut tls = TlsConfig::default();
        tls.cert = Some(scratch.write(&format!("{name}.crt"), &cert.pem()));
        tls.key = Some(scratch.write(&format!("{name}.key"), &key.serialize_pem()));
        tls
    }
}

fn path(p: &Path) -> Option<PathBuf> {
    Some(p.to_path_buf())
}

/// Two unrelated CAs and the directory holding their files.
struct Pkis {
    scratch: Scratch,
    ours: Ca,
    theirs: Ca,
}

impl Pkis {
    fn new() -> Self {
        let scratch = Scratch::new();
        let ours = Ca::new(&scratch, "ours");
        let theirs = Ca::new(&scratch, "theirs");
        Pkis {
            scratch,
            ours,
            theirs,
        }
    }
}

/// Serve an echo endpoint `echo` on `server`; the server lives as long as
/// the returned handle, which keeps the request handle too.
async fn serve_echo(server: Requests) -> (Requests, Server) {
    let echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .expect("serve");
    (server, echo)
}

/// Under mutual TLS a server admits callers presenting a certificate of its
/// `client_ca` and refuses, with `Unauthorized`, callers presenting none or
/// one of another CA; the refusals do not hurt it. `node` makes a request
/// handle with the given TLS settings, every node sharing one discovery.
pub async fn mutual_tls_admits_only_clients_of_the_ca<F, Fut>(node: F)
where
    F: Fn(TlsConfig) -> Fut,
    Fut: Future<Output = Requests>,
{
    let Pkis {
        scratch,
        ours,
        theirs,
    } = Pkis::new();
    let mut tls = ours.issue(&scratch, "server");
    tls.client_ca = path(&ours.pem);
    let _echo = serve_echo(node(tls).await).await;

    let mut tls = ours.issue(&scratch, "member");
    tls.client_ca = path(&ours.pem);
    let member = node(tls).await;
    let reply = member.call("echo", "hello").await.expect("admitted");
    assert_eq!(reply.to_bytes(), "hello");

    let anonymous = node(TlsConfig::default()).await;
    let e = anonymous.call("echo", "hello").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "no certificate: {e}");

    let mut tls = theirs.issue(&scratch, "stranger");
    tls.client_ca = path(&theirs.pem);
    let stranger = node(tls).await;
    let e = stranger.call("echo", "hello").await.unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Unauthorized,
        "another CA's certificate: {e}"
    );

    let reply = member.call("echo", "again").await.expect("still admitted");
    assert_eq!(reply.to_bytes(), "again");
}

/// In CA mode a caller trusts a server whose chain verifies against its
/// `ca` for the name the server publishes, and refuses (`Connection`) a
/// server of another CA.
pub async fn ca_mode_trusts_servers_of_the_ca_only<F, Fut>(node: F)
where
    F: Fn(TlsConfig) -> Fut,
    Fut: Future<Output = Requests>,
{
    let Pkis {
        scratch,
        ours,
        theirs,
    } = Pkis::new();
    let _echo = serve_echo(node(ours.issue(&scratch, "server")).await).await;

    let mut tls = TlsConfig::default();
    tls.ca = path(&ours.pem);
    let trusting = node(tls).await;
    let reply = trusting.call("echo", "hello").await.expect("trusted");
    assert_eq!(reply.to_bytes(), "hello");

    let mut tls = TlsConfig::default();
    tls.ca = path(&theirs.pem);
    let distrusting = node(tls).await;
    let e = distrusting.call("echo", "hello").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
}
