//! One node: transport, durable storage, Raft, and the helpers the line protocol and the
//! demonstration share.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, Config, Raft, RaftMetrics, SnapshotPolicy};
use quicraft::openraft_adapter::durable::{
    self, DurableKvConfig, DurableLogStore, DurableStateMachine, DurableStore,
};
use quicraft::openraft_adapter::mem::KvRequest;
use quicraft::openraft_adapter::{JoinGuard, QuicraftNetworkFactory, serve_raft_guarded};
use quicraft::{QuicConfig, QuicTransport, Transport};

use crate::BoxError;

/// The Raft settings: timeouts for a LAN or loopback; snapshots by log size (not by a count
/// of entries: see `durable::SnapshotPolicy`), keeping the last 500 entries behind a snapshot
/// so that a follower restarted after a short outage is caught up from the log.
pub(crate) fn raft_config(cluster: &str) -> Result<Arc<Config>, BoxError> {
    let config = Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        install_snapshot_timeout: 10_000,
        snapshot_policy: SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 500,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

/// How a node starts.
pub(crate) struct Start<'a> {
    pub(crate) cluster: &'a str,
    pub(crate) certs: &'a Path,
    pub(crate) id: u64,
    pub(crate) listen: SocketAddr,
    pub(crate) advertise: Option<SocketAddr>,
    pub(crate) store: DurableStore,
    pub(crate) guard: JoinGuard,
    pub(crate) snapshot_bytes: u64,
}

pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) raft: Raft<DurableKvConfig>,
    pub(crate) state_machine: DurableStateMachine,
    pub(crate) transport: QuicTransport,
    pub(crate) store: DurableStore,
}

/// Why a node could not start, in words for its operator.
fn bind_error(e: quicraft::Error, listen: SocketAddr) -> BoxError {
    match e {
        quicraft::Error::Io(io) if io.kind() == std::io::ErrorKind::AddrInUse => format!(
            "UDP address {listen} (--listen) is already in use: another process, maybe an earlier node, holds it"
        )
        .into(),
        quicraft::Error::Io(io) if io.kind() == std::io::ErrorKind::AddrNotAvailable => format!(
            "UDP address {listen} (--listen) is not an address of this host"
        )
        .into(),
        other => format!("cannot listen on {listen} (--listen): {other}").into(),
    }
}

impl Node {
    /// Starts a node on its durable store.
    pub(crate) async fn start(start: Start<'_>) -> Result<Self, BoxError> {
        let Start {
            cluster,
            certs,
            id,
            listen,
            advertise,
            store,
            guard,
            snapshot_bytes,
        } = start;
        let mut config = QuicConfig::from_pem_files(
            cluster,
            certs.join(format!("{id}.pem")),
            certs.join(format!("{id}.key")),
            certs.join("ca.pem"),
        )?
        .bind(listen)
        .rpc_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1));
        if let Some(advertise) = advertise {
            config = config.advertise(advertise);
        }
        let (transport, incoming) = QuicTransport::bind(config)
            .await
            .map_err(|e| bind_error(e, listen))?;
        let network = QuicraftNetworkFactory::<DurableKvConfig, _>::new(transport.clone(), id);
        let local = network.local_header();
        let log: DurableLogStore<DurableKvConfig> = store.log_store();
        let state_machine = store.state_machine();
        let raft = Raft::new(
            id,
            raft_config(cluster)?,
            network,
            log.clone(),
            state_machine.clone(),
        )
        .await?;
        tokio::spawn(serve_raft_guarded(raft.clone(), incoming, local, guard));
        tokio::spawn(durable::run_snapshot_policy(
            raft.clone(),
            log,
            durable::SnapshotPolicy::by_log_bytes(snapshot_bytes),
        ));
        Ok(Self {
            id,
            raft,
            state_machine,
            transport,
            store,
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.transport.local_socket_addr()
    }

    pub(crate) fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    pub(crate) async fn stop(&self) -> Result<(), BoxError> {
        self.raft.shutdown().await?;
        self.transport.close().await;
        Ok(())
    }

    /// Writes `key = value` through this node, which must be the leader.
    pub(crate) async fn put(&self, key: &str, value: &str) -> Result<u64, BoxError> {
        let request = KvRequest::Put {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        let written =
            tokio::time::timeout(Duration::from_secs(10), self.raft.client_write(request))
                .await
                .map_err(|_| "write timed out")??;
        Ok(written.log_id.index)
    }

    /// The value of `key` in this node's state machine.
    pub(crate) fn get(&self, key: &str) -> Result<Option<String>, BoxError> {
        Ok(self.state_machine.get(key)?)
    }

    /// Waits until the metrics satisfy `done`, printing a progress line every second.
    pub(crate) async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&RaftMetrics<u64, BasicNode>) -> bool,
    ) -> Result<RaftMetrics<u64, BasicNode>, BoxError> {
        let started = Instant::now();
        let mut metrics = self.raft.metrics();
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        progress.tick().await;
        loop {
            {
                let now = metrics.borrow_and_update();
                if done(&now) {
                    return Ok(now.clone());
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("node {}: gave up waiting for {what}", self.id).into());
            }
            tokio::select! {
                changed = metrics.changed() => changed.map_err(|_| "raft stopped")?,
                _ = progress.tick() => {
                    let m = metrics.borrow();
                    println!(
                        "           ... node {} still waiting for {what} ({:.1}s: {:?}, term {}, applied {})",
                        self.id, started.elapsed().as_secs_f64(), m.state, m.current_term,
                        m.last_applied.map_or(0, |l| l.index),
                    );
                }
            }
        }
    }
}
