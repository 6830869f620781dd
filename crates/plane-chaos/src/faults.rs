//! The faults a run injects, each with its undoing.

use std::time::Duration;

use plane_nats::testkit::NatsCluster;

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// No fault: the baseline every other run is compared with.
    None,
    /// SIGKILL one node (the stream's leader in even runs), start it again.
    Kill,
    /// SIGSTOP one node, SIGCONT it.
    Pause,
    /// Cut one node off the network (its clients too), reconnect it.
    Partition,
    /// SIGKILL every node at once, as a power cut, then start them all.
    RestartAll,
    /// SIGKILL the consumer and worker process mid-message, twice, each
    /// time starting a new one.
    ConsumerKill,
}

/// Every fault kind of a full run, in run order.
pub const ALL: &[Fault] = &[
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::RestartAll,
    Fault::ConsumerKill,
];

impl Fault {
    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::RestartAll => "restart-all",
            Fault::ConsumerKill => "consumer-kill",
        }
    }

    /// Parse a name.
    pub fn parse(name: &str) -> Result<Fault, String> {
        [Fault::None]
            .iter()
            .chain(ALL)
            .find(|f| f.name() == name)
            .copied()
            .ok_or_else(|| {
                format!(
                    "unknown fault `{name}`; known: none, {}",
                    ALL.iter().map(|f| f.name()).collect::<Vec<_>>().join(", ")
                )
            })
    }

    /// Whether a majority of the cluster stays up and connected during it,
    /// so clients are expected to fail over and keep working.
    pub fn keeps_quorum(self) -> bool {
        !matches!(self, Fault::RestartAll)
    }

    /// Whether it acts on one node of the cluster.
    pub fn hits_one_node(self) -> bool {
        matches!(self, Fault::Kill | Fault::Pause | Fault::Partition)
    }
}

/// Inject a cluster fault on `node` (ignored by the all-node and
/// consumer faults).
pub async fn inject(fault: Fault, cluster: &NatsCluster, node: usize) -> Result<(), String> {
    match fault {
        Fault::None | Fault::ConsumerKill => Ok(()),
        Fault::Kill => cluster.kill(node).await,
        Fault::Pause => cluster.pause(node).await,
        Fault::Partition => cluster.disconnect(node).await,
        Fault::RestartAll => {
            let kills = (0..cluster.nodes().len()).map(|i| cluster.kill(i));
            futures_util::future::try_join_all(kills).await.map(|_| ())
        }
    }
}

/// Undo [`inject`].
pub async fn heal(fault: Fault, cluster: &NatsCluster, node: usize) -> Result<(), String> {
    match fault {
        Fault::None | Fault::ConsumerKill => Ok(()),
        Fault::Kill => cluster.start_node(node).await,
        Fault::Pause => cluster.resume(node).await,
        Fault::Partition => cluster.reconnect(node).await,
        Fault::RestartAll => {
            let starts = (0..cluster.nodes().len()).map(|i| cluster.start_node(i));
            futures_util::future::try_join_all(starts).await.map(|_| ())
        }
    }
}

/// The node leading `stream`, asked of the cluster by a plain client
/// (retried briefly: a fresh stream may not have elected its leader yet).
pub async fn leader_of(cluster: &NatsCluster, stream: &str) -> Result<usize, String> {
    let addrs: Vec<async_nats::ServerAddr> = cluster
        .nodes()
        .iter()
        .map(|n| n.url().parse().map_err(|e| format!("{}: {e}", n.url())))
        .collect::<Result<_, _>>()?;
    let client = async_nats::connect(addrs)
        .await
        .map_err(|e| format!("plain client: {e}"))?;
    let js = async_nats::jetstream::new(client);
    let mut last = String::new();
    for _ in 0..50 {
        match js.get_stream(stream).await {
            Ok(mut s) => match s.info().await {
                Ok(info) => {
                    if let Some(i) = info
                        .cluster
                        .as_ref()
                        .and_then(|c| c.leader.as_deref())
                        .and_then(|l| cluster.index_of(l))
                    {
                        return Ok(i);
                    }
                    last = "no leader yet".into();
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("the leader of {stream}: {last}"))
}
