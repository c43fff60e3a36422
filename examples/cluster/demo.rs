//! The demonstration: three nodes in this process, each on its own data directory.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use openraft::BasicNode;
use quicraft::openraft_adapter::JoinGuard;
use quicraft::openraft_adapter::durable::DurableStore;
use quicraft::tls::{ClusterCa, NodeCertOptions};

use crate::node::{Node, Start};
use crate::{BoxError, Cli};

/// Prints a step with the time since the start and how long the step took.
struct Clock {
    start: Instant,
    step: Instant,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            step: now,
        }
    }

    fn begin(&mut self, what: &str) {
        self.step = Instant::now();
        println!("[{:6.2}s] {what}", self.start.elapsed().as_secs_f64());
    }

    fn done(&self, what: impl std::fmt::Display) {
        println!("           {what} ({} ms)", self.step.elapsed().as_millis());
    }
}

/// Writes a file readable by the owner only when `secret`.
fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), BoxError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// Makes a CA and certificates for nodes 1, 2, 3 in `dir` (what `certgen cluster` does).
fn generate_certs(cluster: &str, dir: &Path) -> Result<(), BoxError> {
    fs::create_dir_all(dir)?;
    let ca = ClusterCa::generate(cluster)?;
    write_file(&dir.join("ca.pem"), ca.cert_pem(), false)?;
    for id in 1..=3 {
        let node = ca.issue_node(&id.to_string(), &NodeCertOptions::default())?;
        write_file(&dir.join(format!("{id}.pem")), &node.cert_pem, false)?;
        write_file(&dir.join(format!("{id}.key")), &node.key_pem, true)?;
    }
    Ok(())
}

fn leader_of(nodes: &[Node], id: u64) -> Result<&Node, BoxError> {
    nodes
        .iter()
        .find(|n| n.id == id)
        .ok_or_else(|| format!("leader {id} is not running").into())
}

pub(crate) async fn demo(cli: &Cli) -> Result<(), BoxError> {
    let mut clock = Clock::new();
    println!(
        "quicraft cluster demo: openraft over QUIC with mutual TLS, 3 nodes on 127.0.0.1, durable storage\n"
    );
    let scratch = std::env::temp_dir().join(format!("quicraft-demo-{}", std::process::id()));

    // 1. Certificates.
    let certs = cli.certs.clone().unwrap_or_else(|| scratch.join("certs"));
    if certs.join("ca.pem").exists() {
        clock.begin(&format!("certificates: using {}", certs.display()));
        clock.done("loaded ca.pem and 1.pem, 2.pem, 3.pem");
    } else {
        clock.begin("certificates: a cluster CA and one certificate per node");
        generate_certs(&cli.cluster, &certs)?;
        clock.done(format!(
            "wrote ca.pem and 1.pem/.key, 2.pem/.key, 3.pem/.key to {} (identities spiffe://{}/node/1..3)",
            certs.display(),
            cli.cluster
        ));
    }
    let data = cli.data_dir.clone().unwrap_or_else(|| scratch.join("data"));
    let result = scenario(cli, &certs, &data, &mut clock).await;
    let _ = fs::remove_dir_all(&scratch);
    result?;
    println!(
        "\ndone in {:.2}s: election, replication, leader loss, snapshots by log size and a restart on durable storage, all over QUIC + mTLS",
        clock.start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Snapshot every 4 KiB of log in the demonstration, so that 50 writes make a few.
const DEMO_SNAPSHOT_BYTES: u64 = 4 * 1024;

async fn start(
    cli: &Cli,
    certs: &Path,
    data: &Path,
    id: u64,
    listen: SocketAddr,
) -> Result<Node, BoxError> {
    let dir: PathBuf = data.join(format!("node-{id}"));
    let store = DurableStore::open(&dir, id, &cli.cluster)?;
    Node::start(Start {
        cluster: &cli.cluster,
        certs,
        id,
        listen,
        advertise: None,
        store,
        // The demonstration founds its own cluster: no probing needed.
        guard: JoinGuard::member(),
        snapshot_bytes: DEMO_SNAPSHOT_BYTES,
    })
    .await
}

async fn scenario(cli: &Cli, certs: &Path, data: &Path, clock: &mut Clock) -> Result<(), BoxError> {
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;

    // 2. Nodes.
    clock.begin(&format!(
        "starting nodes 1, 2, 3 (one QUIC endpoint each; vote, log and state machine in redb under {})",
        data.display()
    ));
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(start(cli, certs, data, id, any_port).await?);
    }
    let members: BTreeMap<u64, BasicNode> = nodes
        .iter()
        .map(|n| (n.id, BasicNode::new(n.addr().to_string())))
        .collect();
    let listing: Vec<String> = nodes
        .iter()
        .map(|n| format!("node {} on {}", n.id, n.addr()))
        .collect();
    clock.done(listing.join(", "));

    // 3. Election.
    clock.begin("initializing the cluster on node 1 and electing a leader");
    nodes[0].raft.initialize(members).await?;
    nodes[0].store.set_initialized()?;
    let mut leader_id = 0;
    for node in &nodes {
        let m = node
            .wait_until("a leader", |m| m.current_leader.is_some())
            .await?;
        leader_id = m.current_leader.unwrap_or_default();
    }
    let term = leader_of(&nodes, leader_id)?.metrics().current_term;
    clock.done(format!(
        "node {leader_id} is the leader (term {term}); all nodes agree"
    ));

    // 4. Replication.
    clock.begin("writing 10 keys through the leader (each on the disks of a majority before it is acknowledged)");
    let leader = leader_of(&nodes, leader_id)?;
    let mut last = 0;
    for i in 0..10 {
        last = leader.put(&format!("key{i}"), &format!("value{i}")).await?;
    }
    clock.done(format!("committed up to log index {last}"));
    clock.begin("reading them back from every node's state machine");
    for node in &nodes {
        node.wait_until("the writes", |m| {
            m.last_applied.is_some_and(|l| l.index >= last)
        })
        .await?;
        let mut found = 0;
        for i in 0..10 {
            if node.get(&format!("key{i}"))? == Some(format!("value{i}")) {
                found += 1;
            }
        }
        println!(
            "           node {}: {found}/10 keys, key9 = {:?}",
            node.id,
            node.get("key9")?.unwrap_or_default()
        );
        if found != 10 {
            return Err(format!("node {} has {found} of 10 keys", node.id).into());
        }
    }
    clock.done("every node has every key");

    // 5. Leader loss.
    clock.begin(&format!("stopping the leader, node {leader_id}"));
    let position = nodes
        .iter()
        .position(|n| n.id == leader_id)
        .ok_or("no leader")?;
    let old = nodes.remove(position);
    let old_addr = old.addr();
    let old_applied = old.metrics().last_applied.map_or(0, |l| l.index);
    old.stop().await?;
    drop(old);
    clock.done(format!(
        "node {leader_id} stopped; its data stays in {}",
        data.join(format!("node-{leader_id}")).display()
    ));
    clock.begin("waiting for the other two to elect a new leader");
    let mut new_leader = 0;
    for node in &nodes {
        let m = node
            .wait_until("a new leader", |m| {
                m.current_leader.is_some_and(|l| l != leader_id)
            })
            .await?;
        new_leader = m.current_leader.unwrap_or_default();
    }
    let term = leader_of(&nodes, new_leader)?.metrics().current_term;
    clock.done(format!("node {new_leader} is the new leader (term {term})"));

    // 6. Snapshots by log size.
    clock.begin(&format!(
        "writing 50 more keys, 600 bytes each: the leader snapshots every {} KiB of log (streamed out of the database into a file)",
        DEMO_SNAPSHOT_BYTES / 1024
    ));
    let leader = leader_of(&nodes, new_leader)?;
    let padding = "x".repeat(600);
    for i in 10..60 {
        last = leader
            .put(&format!("key{i}"), &format!("value{i}-{padding}"))
            .await?;
    }
    let m = leader
        .wait_until("a snapshot", |m| {
            m.snapshot.is_some_and(|s| s.index > old_applied)
        })
        .await?;
    clock.done(format!(
        "log at index {last}; {} snapshot(s) built, the latest up to index {}, {} bytes",
        leader.state_machine.snapshots_built(),
        m.snapshot.map_or(0, |l| l.index),
        leader.state_machine.snapshot_size()?.unwrap_or(0),
    ));

    // 7. Restart on the data directory.
    clock.begin(&format!(
        "restarting node {leader_id} at {old_addr} on its data directory"
    ));
    let back = start(cli, certs, data, leader_id, old_addr).await?;
    let resumed = back.metrics();
    println!(
        "           node {leader_id} resumed with its vote (term {}) and log (up to index {}, applied {})",
        resumed.current_term,
        resumed.last_log_index.unwrap_or(0),
        resumed.last_applied.map_or(0, |l| l.index),
    );
    let m = back
        .wait_until("catch-up", |m| {
            m.last_applied.is_some_and(|l| l.index >= last)
        })
        .await?;
    let keys = back.state_machine.len()?;
    clock.done(format!(
        "node {leader_id} caught up: applied {}, {keys}/60 keys, {}",
        m.last_applied.map_or(0, |l| l.index),
        match back.state_machine.snapshots_installed() {
            0 => "from the leader's log (the entries it lacked were still there)".to_owned(),
            n => format!("{n} snapshot(s) installed from the leader over a QUIC snapshot stream"),
        }
    ));
    if keys != 60 {
        return Err(format!("node {leader_id} did not catch up ({keys} keys)").into());
    }
    let follows = back
        .wait_until("the leader", |m| m.current_leader == Some(new_leader))
        .await?;
    println!(
        "           node {leader_id} follows node {} in term {}",
        new_leader, follows.current_term
    );

    clock.begin("shutting down");
    back.stop().await?;
    for node in &nodes {
        node.stop().await?;
    }
    clock.done("all nodes stopped");
    Ok(())
}
