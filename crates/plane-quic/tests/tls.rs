//! Mutual TLS and CA mode of the QUIC planes, with certificates issued in
//! the test by two unrelated CAs.

use std::path::{Path, PathBuf};

use plane_core::request::{unary_fn, Request};
use plane_core::{ErrorKind, Requests};
use plane_quic::{QuicConfig, QuicRequests};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A scratch directory for PEM files, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        let dir =
            std::env::temp_dir().join(format!("plane-quic-tls-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn write(&self, name: &str, pem: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, pem).expect("write a PEM file");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority: its issuer, and its certificate as a PEM file.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    pem: PathBuf,
}

fn ca(scratch: &Scratch, name: &str) -> Ca {
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

/// A certificate for `plane` (the default server name) issued by `ca`, for
/// serving and for client authentication; returns the cert and key files.
fn issue(scratch: &Scratch, ca: &Ca, name: &str) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(vec![plane_quic::tls::DEFAULT_SERVER_NAME.to_owned()])
        .expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params
        .signed_by(&key, &ca.issuer)
        .expect("leaf certificate");
    (
        scratch.write(&format!("{name}.crt"), &cert.pem()),
        scratch.write(&format!("{name}.key"), &key.serialize_pem()),
    )
}

fn hub() -> String {
    format!("mem://quic-tls-{:016x}", rand::random::<u64>())
}

fn with_identity(c: &mut QuicConfig, (cert, key): (PathBuf, PathBuf)) {
    c.cert = Some(cert);
    c.key = Some(key);
}

async fn node(hub: &str, tweak: impl FnOnce(&mut QuicConfig)) -> Requests {
    let registry = plane_mem::registry();
    let mut config = QuicConfig::new("127.0.0.1:0".parse().expect("address"), hub);
    tweak(&mut config);
    let discovery = plane_peer::discovery_of::<plane_quic::Quic>(&config, &registry)
        .await
        .expect("discovery");
    Requests::new(QuicRequests::connect(config, discovery).expect("quic endpoint"))
}

fn path(p: &Path) -> Option<PathBuf> {
    Some(p.to_path_buf())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let scratch = Scratch::new();
    let ours = ca(&scratch, "ours");
    let theirs = ca(&scratch, "theirs");
    let hub = hub();
    let server = node(&hub, |c| {
        with_identity(c, issue(&scratch, &ours, "server"));
        c.client_ca = path(&ours.pem);
    })
    .await;
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .expect("serve");

    // A caller under mutual TLS presents its own certificate, issued by the
    // server's client CA: admitted.
    let member = node(&hub, |c| {
        with_identity(c, issue(&scratch, &ours, "member"));
        c.client_ca = path(&ours.pem);
    })
    .await;
    let reply = member.call("echo", "hello").await.expect("admitted");
    assert_eq!(reply.to_bytes(), "hello");

    // No certificate at all: refused.
    let anonymous = node(&hub, |_| {}).await;
    let e = anonymous.call("echo", "hello").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // A certificate from another CA: refused.
    let stranger = node(&hub, |c| {
        with_identity(c, issue(&scratch, &theirs, "stranger"));
        c.client_ca = path(&theirs.pem);
    })
    .await;
    let e = stranger.call("echo", "hello").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unauthorized, "{e}");

    // The refusals did not hurt the server.
    let reply = member.call("echo", "again").await.expect("still admitted");
    assert_eq!(reply.to_bytes(), "again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_mode_trusts_servers_of_the_configured_ca_only() {
    let scratch = Scratch::new();
    let ours = ca(&scratch, "ours");
    let theirs = ca(&scratch, "theirs");
    let hub = hub();
    let server = node(&hub, |c| with_identity(c, issue(&scratch, &ours, "server"))).await;
    let _echo = server
        .serve("echo", unary_fn(|r: Request| async move { Ok(r.message) }))
        .await
        .expect("serve");

    // The server's certificate verifies against the caller's CA for the name
    // it publishes; no fingerprint is pinned.
    let trusting = node(&hub, |c| c.ca = path(&ours.pem)).await;
    let reply = trusting.call("echo", "hello").await.expect("trusted");
    assert_eq!(reply.to_bytes(), "hello");

    // A caller trusting another CA refuses the server.
    let distrusting = node(&hub, |c| c.ca = path(&theirs.pem)).await;
    let e = distrusting.call("echo", "hello").await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Connection, "{e}");
}
