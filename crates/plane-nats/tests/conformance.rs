//! The shared conformance suite against a real nats-server in a container:
//! once in plain text, once over mutual TLS with user/password.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use plane_conformance::{report_dir, run_and_report, Hooks, Report, Target};
use plane_nats::testkit::{NatsServer, ServerOptions, SERVER};

struct NatsHooks {
    server: Arc<NatsServer>,
    client: async_nats::Client,
}

impl Hooks for NatsHooks {
    fn restart(&self) -> Option<BoxFuture<'_, Result<(), String>>> {
        Some(Box::pin(async move {
            self.server.restart().await?;
            // The planes' connections back off at most a second between
            // attempts; wait until ours is back, then a little longer.
            let started = Instant::now();
            while self.client.connection_state() != async_nats::connection::State::Connected {
                if started.elapsed() > Duration::from_secs(20) {
                    return Err("client did not reconnect after the restart".into());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            tokio::time::sleep(Duration::from_millis(1500)).await;
            Ok(())
        }))
    }

    fn send_garbage<'a>(
        &'a self,
        endpoint: &'a str,
        garbage: &'a [u8],
    ) -> Option<BoxFuture<'a, Result<(), String>>> {
        Some(Box::pin(async move {
            plane_nats::request::send_garbage(&self.client, "plane", endpoint, garbage)
                .await
                .map_err(|e| e.to_string())
        }))
    }
}

async fn conform(name: &str, server: NatsServer, url: &str, client: async_nats::Client) -> Report {
    let mut registry = plane_mem::registry();
    plane_nats::register(&mut registry);
    let mut target = Target::from_url(&registry, name, "testcontainers", url)
        .await
        .expect("nats target");
    target.server = Some(SERVER.to_owned());
    target.hooks = Arc::new(NatsHooks {
        server: Arc::new(server),
        client,
    });
    let started = Instant::now();
    let report = run_and_report(&target).await;
    eprintln!("{name} conformance took {:?}", started.elapsed());
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_backend_conforms() {
    let server = NatsServer::start().await.expect("nats server");
    let url = server.url();
    let client = async_nats::connect(&url).await.expect("hooks client");
    let report = conform("nats", server, &url, client).await;
    assert!(
        report.failures().is_empty(),
        "conformance failures:\n{}",
        report.summary()
    );
}

/// Throwaway CA, server and client certificates.
fn certificates(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("ca key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
    let issuer = Issuer::new(ca_params, ca_key);
    let write = |name: &str, text: String| std::fs::write(dir.join(name), text).expect("write pem");
    write("ca.pem", ca_cert.pem());
    for (who, names) in [
        (
            "server",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        ),
        ("client", vec!["plane-client".to_owned()]),
    ] {
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(names)
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        write(&format!("{who}.pem"), cert.pem());
        write(&format!("{who}-key.pem"), key.serialize_pem());
    }
}

pub fn tls_dir() -> std::path::PathBuf {
    let dir = report_dir()
        .join("..")
        .join("tmp")
        .join(format!("nats-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tls dir");
    certificates(&dir);
    dir.canonicalize().expect("tls dir path")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_backend_conforms_over_tls_with_auth() {
    let dir = tls_dir();
    let server = NatsServer::start_with(ServerOptions::default().mount(&dir, "/certs").args([
        "--tls",
        "--tlscert",
        "/certs/server.pem",
        "--tlskey",
        "/certs/server-key.pem",
        "--tlsverify",
        "--tlscacert",
        "/certs/ca.pem",
        "--user",
        "plane",
        "--pass",
        "s3cret",
    ]))
    .await
    .expect("nats tls server");
    let d = dir.display();
    let url = format!(
        "tls://plane:s3cret@localhost:{}?tls_ca={d}/ca.pem&tls_cert={d}/client.pem&tls_key={d}/client-key.pem",
        server.port()
    );
    let client = async_nats::ConnectOptions::new()
        .user_and_password("plane".into(), "s3cret".into())
        .add_root_certificates(dir.join("ca.pem"))
        .add_client_certificate(dir.join("client.pem"), dir.join("client-key.pem"))
        .require_tls(true)
        .connect(format!("tls://localhost:{}", server.port()))
        .await
        .expect("hooks client");
    let report = conform("nats-tls", server, &url, client).await;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        report.failures().is_empty(),
        "conformance failures:\n{}",
        report.summary()
    );
}
