//! openraft on quicraft: a 3-node key-value cluster over QUIC with mutual TLS, through
//! election, replication, the loss of the leader, and a node that comes back with nothing and
//! is caught up by a snapshot over the snapshot stream.

#![cfg(feature = "openraft")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Fixture;
use openraft::{BasicNode, Config, Raft, ServerState, SnapshotPolicy};
use quicraft::openraft_adapter::mem::{KvRequest, KvStateMachine, KvTypeConfig, MemLogStore};
use quicraft::openraft_adapter::{QuicraftNetworkFactory, serve_raft};
use quicraft::{QuicTransport, Transport};

/// Bound on every wait; the whole scenario takes a few seconds.
const GUARD: Duration = Duration::from_secs(10);

struct Node {
    id: u64,
    addr: SocketAddr,
    raft: Raft<KvTypeConfig>,
    state_machine: KvStateMachine,
    transport: QuicTransport,
}

impl Node {
    async fn stop(&self) {
        self.raft.shutdown().await.unwrap();
        self.transport.close().await;
    }
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "openraft-test".into(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        install_snapshot_timeout: 2_000,
        // A snapshot every 20 entries, and the log purged up to it: a node that comes back
        // empty can only be caught up by a snapshot.
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Arc::new(config.validate().unwrap())
}

/// Starts node `id` (certificate id `id.to_string()`) on `bind` with empty storage.
async fn start(fx: &Fixture, id: u64, bind: SocketAddr) -> Node {
    let config = fx
        .config(&id.to_string())
        .bind(bind)
        .rpc_timeout(Duration::from_secs(2));
    let (transport, incoming) = QuicTransport::bind(config).await.unwrap();
    let network = QuicraftNetworkFactory::<KvTypeConfig, _>::new(transport.clone(), id);
    let local = network.local_header();
    let state_machine = KvStateMachine::default();
    let raft = Raft::new(
        id,
        raft_config(),
        network,
        MemLogStore::default(),
        state_machine.clone(),
    )
    .await
    .unwrap();
    tokio::spawn(serve_raft(raft.clone(), incoming, local));
    Node {
        id,
        addr: transport.local_socket_addr(),
        raft,
        state_machine,
        transport,
    }
}

/// Waits until `node` sees a leader other than `not`, and returns it.
async fn leader_seen_by(node: &Node, not: Option<u64>) -> u64 {
    let metrics = node
        .raft
        .wait(Some(GUARD))
        .metrics(
            |m| m.current_leader.is_some() && m.current_leader != not,
            "a leader is elected",
        )
        .await
        .unwrap();
    metrics.current_leader.unwrap()
}

async fn put(leader: &Node, key: &str, value: &str) -> u64 {
    let request = KvRequest::Put {
        key: key.into(),
        value: value.into(),
    };
    let written = tokio::time::timeout(GUARD, leader.raft.client_write(request))
        .await
        .expect("write hung")
        .unwrap();
    written.log_id.index
}

async fn applied(node: &Node, index: u64) {
    node.raft
        .wait(Some(GUARD))
        .applied_index_at_least(Some(index), "entries applied")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_replicate_fail_over_and_catch_up_by_snapshot() {
    common::init_tracing();
    let fx = Fixture::new("openraft-test");
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(&fx, id, any_port).await);
    }
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();

    // Election.
    nodes[0].raft.initialize(members).await.unwrap();
    let first = leader_seen_by(&nodes[0], None).await;
    for node in &nodes {
        assert_eq!(leader_seen_by(node, None).await, first);
    }

    // Replication: written on the leader, read back from every state machine.
    let leader = nodes.iter().find(|n| n.id == first).unwrap();
    let mut last = 0;
    for i in 0..10 {
        last = put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    for node in &nodes {
        applied(node, last).await;
        assert_eq!(node.state_machine.get("k0").as_deref(), Some("v0"));
        assert_eq!(node.state_machine.get("k9").as_deref(), Some("v9"));
    }

    // Leader loss: the other two elect a new leader.
    let position = nodes.iter().position(|n| n.id == first).unwrap();
    let old = nodes.remove(position);
    old.stop().await;
    let second = leader_seen_by(&nodes[0], Some(first)).await;
    assert_ne!(second, first);
    assert_eq!(leader_seen_by(&nodes[1], Some(first)).await, second);
    let leader = nodes.iter().find(|n| n.id == second).unwrap();
    assert_eq!(
        leader.raft.metrics().borrow().state,
        ServerState::Leader,
        "the new leader knows it leads"
    );

    // Enough writes for a snapshot and a purge of the log behind it.
    for i in 10..60 {
        last = put(leader, &format!("k{i}"), &format!("v{i}")).await;
    }
    let purged = leader
        .raft
        .wait(Some(GUARD))
        .metrics(|m| m.purged.is_some(), "the leader purged its log")
        .await
        .unwrap()
        .purged;
    assert!(purged.unwrap().index >= 20, "purged up to {purged:?}");

    // The old leader comes back with empty storage at its address: far behind, it can only
    // be caught up by a snapshot.
    let back = start(&fx, first, old.addr).await;
    let metrics = back
        .raft
        .wait(Some(GUARD))
        .metrics(
            |m| m.snapshot.is_some() && m.last_applied.is_some_and(|l| l.index >= last),
            "the returning node installed a snapshot and caught up",
        )
        .await
        .unwrap();
    assert!(back.state_machine.snapshots_installed() >= 1);
    assert!(metrics.snapshot.unwrap().index >= 20);
    let keys: BTreeSet<String> = back.state_machine.entries().into_keys().collect();
    assert_eq!(
        keys.len(),
        60,
        "every key, from the snapshot and the log after it"
    );
    assert_eq!(back.state_machine.get("k59").as_deref(), Some("v59"));
    assert_eq!(leader_seen_by(&back, None).await, second);

    // And it takes part again: a new write reaches it.
    let index = put(leader, "after", "return").await;
    applied(&back, index).await;
    assert_eq!(back.state_machine.get("after").as_deref(), Some("return"));

    back.stop().await;
    for node in &nodes {
        node.stop().await;
    }
}

/// The adapter is generic over the transport: the same cluster on the in-memory transport,
/// with a partition standing in for the leader's loss (its links are cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_adapter_runs_on_the_in_memory_transport_too() {
    use quicraft::InmemTransport;

    let mut transports = Vec::new();
    let mut rafts = Vec::new();
    let mut machines = Vec::new();
    for id in 1..=3u64 {
        let (transport, incoming) = InmemTransport::new(format!("mem-{id}"));
        let network = QuicraftNetworkFactory::<KvTypeConfig, _>::new(transport.clone(), id);
        let local = network.local_header();
        let state_machine = KvStateMachine::default();
        let raft = Raft::new(
            id,
            raft_config(),
            network,
            MemLogStore::default(),
            state_machine.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(serve_raft(raft.clone(), incoming, local));
        transports.push(transport);
        rafts.push(raft);
        machines.push(state_machine);
    }
    for a in &transports {
        for b in &transports {
            a.connect(b);
        }
    }
    let members: BTreeMap<u64, BasicNode> = (1..=3u64)
        .map(|id| (id, BasicNode::new(format!("mem-{id}"))))
        .collect();
    rafts[0].initialize(members).await.unwrap();
    let leader = rafts[0]
        .wait(Some(GUARD))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap()
        .current_leader
        .unwrap();
    let leader = usize::try_from(leader - 1).unwrap();
    let request = KvRequest::Put {
        key: "mem".into(),
        value: "ok".into(),
    };
    let index = rafts[leader]
        .client_write(request)
        .await
        .unwrap()
        .log_id
        .index;
    for (raft, machine) in rafts.iter().zip(&machines) {
        raft.wait(Some(GUARD))
            .applied_index_at_least(Some(index), "applied")
            .await
            .unwrap();
        assert_eq!(machine.get("mem").as_deref(), Some("ok"));
    }

    // Cut the leader off: the two others elect one of themselves.
    let cut = &transports[leader];
    cut.disconnect_all();
    for (i, transport) in transports.iter().enumerate() {
        if i != leader {
            transport.disconnect(&cut.local_addr());
        }
    }
    let other = (leader + 1) % 3;
    let old = u64::try_from(leader + 1).unwrap();
    let new = rafts[other]
        .wait(Some(GUARD))
        .metrics(
            |m| m.current_leader.is_some_and(|l| l != old),
            "a new leader",
        )
        .await
        .unwrap()
        .current_leader
        .unwrap();
    assert_ne!(new, old);
    for raft in &rafts {
        raft.shutdown().await.unwrap();
    }
}

// ---------------------------------------------------------------------------------------------
// On durable storage
// ---------------------------------------------------------------------------------------------

mod durable_nodes {
    use std::path::{Path, PathBuf};

    use quicraft::openraft_adapter::durable::{
        DurableError, DurableKvConfig, DurableStateMachine, DurableStore,
    };

    use super::*;

    pub(super) struct DurableNode {
        pub(super) id: u64,
        pub(super) addr: SocketAddr,
        pub(super) raft: Raft<DurableKvConfig>,
        pub(super) state_machine: DurableStateMachine,
        pub(super) transport: QuicTransport,
    }

    impl DurableNode {
        pub(super) async fn stop(self) {
            self.raft.shutdown().await.unwrap();
            self.transport.close().await;
        }
    }

    /// A temporary directory, removed when dropped.
    pub(super) struct TempDir(pub(super) PathBuf);

    impl TempDir {
        pub(super) fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("quicraft-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn durable_config() -> Arc<Config> {
        let config = Config {
            cluster_name: "openraft-test".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            install_snapshot_timeout: 2_000,
            // Snapshots only when asked: the test triggers one, and the log is purged up to
            // it, so a node behind it can only be caught up by a snapshot.
            snapshot_policy: SnapshotPolicy::Never,
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Config::default()
        };
        Arc::new(config.validate().unwrap())
    }

    /// Starts node `id` on `bind` with its data in `dir/<id>`.
    pub(super) async fn start_durable(
        fx: &Fixture,
        dir: &Path,
        id: u64,
        bind: SocketAddr,
    ) -> DurableNode {
        let config = fx
            .config(&id.to_string())
            .bind(bind)
            .rpc_timeout(Duration::from_secs(2));
        // The port of a node just stopped may take a moment to be released (bounded retry).
        let started = std::time::Instant::now();
        let (transport, incoming) = loop {
            match QuicTransport::bind(config.clone()).await {
                Ok(bound) => break bound,
                Err(e) if started.elapsed() < GUARD => {
                    tracing::debug!(error = %e, "binding again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("node {id}: cannot bind {bind}: {e}"),
            }
        };
        let network = QuicraftNetworkFactory::<DurableKvConfig, _>::new(transport.clone(), id);
        let local = network.local_header();
        let store = DurableStore::open(dir.join(id.to_string()), id, "openraft-test").unwrap();
        let state_machine = store.state_machine();
        let raft = Raft::new(
            id,
            durable_config(),
            network,
            store.log_store::<DurableKvConfig>(),
            state_machine.clone(),
        )
        .await
        .unwrap();
        tokio::spawn(serve_raft(raft.clone(), incoming, local));
        DurableNode {
            id,
            addr: transport.local_socket_addr(),
            raft,
            state_machine,
            transport,
        }
    }

    /// A data directory refuses a second process, and another node or cluster.
    pub(super) fn assert_owned(dir: &Path) {
        let path = dir.join("owned");
        let first = DurableStore::open(&path, 7, "openraft-test").unwrap();
        let busy = DurableStore::open(&path, 7, "openraft-test").unwrap_err();
        assert!(matches!(busy, DurableError::InUse { .. }), "{busy}");
        drop(first);
        let other_node = DurableStore::open(&path, 8, "openraft-test").unwrap_err();
        assert!(
            matches!(other_node, DurableError::WrongOwner { .. }),
            "{other_node}"
        );
        let other_cluster = DurableStore::open(&path, 7, "elsewhere").unwrap_err();
        assert!(
            matches!(other_cluster, DurableError::WrongOwner { .. }),
            "{other_cluster}"
        );
        assert!(DurableStore::open(&path, 7, "openraft-test").is_ok());
    }
}

use durable_nodes::{TempDir, assert_owned, start_durable};

/// On the durable store: a node stopped and restarted on its data directory resumes with its
/// vote, log and state; a node far behind a purged log is caught up by a snapshot streamed out
/// of the leader's database and into its own; a data directory refuses another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_nodes_resume_after_restart_and_catch_up_by_snapshot() {
    common::init_tracing();
    let fx = Fixture::new("openraft-test");
    let dir = TempDir::new("durable-cluster");
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start_durable(&fx, &dir.0, id, any_port).await);
    }
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr.to_string())))
        .collect();
    nodes[0].raft.initialize(members).await.unwrap();
    let leader_id = nodes[0]
        .raft
        .wait(Some(GUARD))
        .metrics(|m| m.current_leader.is_some(), "a leader")
        .await
        .unwrap()
        .current_leader
        .unwrap();
    let write = |raft: Raft<_>, key: String, value: String| async move {
        tokio::time::timeout(GUARD, raft.client_write(KvRequest::Put { key, value }))
            .await
            .expect("write hung")
            .unwrap()
            .log_id
            .index
    };
    let leader = nodes
        .iter()
        .find(|n| n.id == leader_id)
        .unwrap()
        .raft
        .clone();
    let mut first_ten = 0;
    for i in 0..10 {
        first_ten = write(leader.clone(), format!("k{i}"), format!("v{i}")).await;
    }

    // A follower stops; more writes, a snapshot, the log purged behind it. It has applied the
    // first ten writes first (a write is acknowledged once a majority has it, which need not
    // include this follower yet).
    let position = nodes.iter().position(|n| n.id != leader_id).unwrap();
    let behind = nodes.remove(position);
    behind
        .raft
        .wait(Some(GUARD))
        .applied_index_at_least(Some(first_ten), "the follower applies the first writes")
        .await
        .unwrap();
    let (behind_id, behind_addr) = (behind.id, behind.addr);
    let behind_applied = behind.raft.metrics().borrow().last_applied.unwrap().index;
    let behind_term = behind.raft.metrics().borrow().current_term;
    behind.stop().await;
    let mut last = 0;
    for i in 10..50 {
        last = write(leader.clone(), format!("k{i}"), format!("v{i}")).await;
    }
    leader.trigger().snapshot().await.unwrap();
    leader
        .wait(Some(GUARD))
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= last),
            "the leader snapshots and purges its log",
        )
        .await
        .unwrap();

    // A directory belongs to its node.
    assert_owned(&dir.0);

    // The follower restarts on its data: it resumes where it was, and the entries it lacks
    // are purged on the leader, so it gets the snapshot.
    {
        use openraft::storage::RaftLogStorage;
        use quicraft::openraft_adapter::durable::{DurableKvConfig, DurableStore};

        let store = DurableStore::open(
            dir.0.join(behind_id.to_string()),
            behind_id,
            "openraft-test",
        )
        .unwrap();
        assert!(!store.is_fresh());
        let vote = store
            .log_store::<DurableKvConfig>()
            .read_vote()
            .await
            .unwrap()
            .expect("the vote survived");
        assert_eq!(vote.leader_id().get_term(), behind_term);
        let applied = store.state_machine().last_applied().unwrap().unwrap();
        assert!(
            applied.index >= behind_applied,
            "the applied state survived"
        );
        assert_eq!(
            store.state_machine().get("k9").unwrap().as_deref(),
            Some("v9")
        );
    }
    let back = start_durable(&fx, &dir.0, behind_id, behind_addr).await;
    back.raft
        .wait(Some(GUARD))
        .applied_index_at_least(Some(last), "caught up")
        .await
        .unwrap();
    assert_eq!(back.state_machine.snapshots_installed(), 1);
    assert_eq!(back.state_machine.len().unwrap(), 50);
    assert_eq!(
        back.state_machine.get("k49").unwrap().as_deref(),
        Some("v49")
    );

    // A rolling restart of the two others on their data (the leader included): same keys,
    // what they had applied, and the log continues (no new history). (The node that received
    // the snapshot is not restarted again: its UDP port stays taken after `close`, a transport
    // matter reported separately.)
    let mut nodes = nodes;
    let mut again = vec![back];
    while let Some(node) = nodes.pop() {
        let (id, addr) = (node.id, node.addr);
        node.stop().await;
        let node = start_durable(&fx, &dir.0, id, addr).await;
        assert!(
            node.state_machine.last_applied().unwrap().unwrap().index >= last,
            "node {id} resumed with what it had applied"
        );
        assert_eq!(node.state_machine.len().unwrap(), 50);
        again.push(node);
    }
    let leader = again[0]
        .raft
        .wait(Some(GUARD))
        .metrics(|m| m.current_leader.is_some(), "a leader after the restart")
        .await
        .unwrap()
        .current_leader
        .unwrap();
    let leader = again.iter().find(|n| n.id == leader).unwrap();
    let index = write(leader.raft.clone(), "after".into(), "restart".into()).await;
    assert!(index > last, "the log continues: {index} after {last}");
    for node in again {
        node.stop().await;
    }
}

/// Snapshot data that does not follow the format (not one, a length over the limit, cut
/// short, a wrong record count) is refused before anything is allocated for it, and the state
/// machine is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_snapshot_is_refused_and_leaves_the_state_alone() {
    use openraft::storage::RaftStateMachine;
    use openraft::{CommittedLeaderId, LogId, SnapshotMeta};
    use quicraft::openraft_adapter::durable::DurableStore;
    use tokio::io::AsyncWriteExt;

    let dir = TempDir::new("bad-snapshot");
    let store = DurableStore::open(&dir.0, 1, "openraft-test").unwrap();
    let mut state_machine = store.state_machine();
    let record = |bytes: &[u8]| [&(bytes.len() as u32).to_le_bytes()[..], bytes].concat();
    let end = |count: u64| [&u32::MAX.to_le_bytes()[..], &count.to_le_bytes()[..]].concat();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a snapshot", b"NOTASNAP".to_vec()),
        (
            "a length over the limit",
            [&b"QRKVSNP1"[..], &(u32::MAX - 1).to_le_bytes()[..]].concat(),
        ),
        (
            "cut short",
            [
                &b"QRKVSNP1"[..],
                &record(b"key")[..],
                &7u32.to_le_bytes()[..],
                b"va",
            ]
            .concat(),
        ),
        (
            "a wrong count",
            [
                &b"QRKVSNP1"[..],
                &record(b"key")[..],
                &record(b"value")[..],
                &end(2)[..],
            ]
            .concat(),
        ),
    ];
    for (what, data) in cases {
        let mut file = state_machine.begin_receiving_snapshot().await.unwrap();
        file.write_all(&data).await.unwrap();
        file.shutdown().await.unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
            last_membership: Default::default(),
            snapshot_id: "bad".into(),
        };
        assert!(
            state_machine.install_snapshot(&meta, file).await.is_err(),
            "{what}: installed"
        );
        assert_eq!(state_machine.last_applied().unwrap(), None, "{what}");
        assert_eq!(state_machine.get("key").unwrap(), None, "{what}");
    }

    // A good one installs.
    let mut file = state_machine.begin_receiving_snapshot().await.unwrap();
    let good = [
        &b"QRKVSNP1"[..],
        &record(b"key")[..],
        &record(b"value")[..],
        &end(1)[..],
    ]
    .concat();
    file.write_all(&good).await.unwrap();
    file.shutdown().await.unwrap();
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(CommittedLeaderId::new(1, 1), 5)),
        last_membership: Default::default(),
        snapshot_id: "good".into(),
    };
    state_machine.install_snapshot(&meta, file).await.unwrap();
    assert_eq!(state_machine.get("key").unwrap().as_deref(), Some("value"));
    assert_eq!(state_machine.last_applied().unwrap().unwrap().index, 5);
    let current = state_machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta.snapshot_id, "good");
}
