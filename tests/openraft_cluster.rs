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
