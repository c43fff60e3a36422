//! Three processes of `examples/cluster.rs` (`--id` mode) form a cluster on 127.0.0.1 over
//! QUIC with mutual TLS; a client writes and reads through the line protocol, the leader's
//! process is killed and the others elect a new leader that takes writes. Each node keeps its
//! data in its own `--data-dir`.

#![cfg(feature = "openraft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{LineClient, forward_stdout, node_command, peers_arg};
use common::{example_binary, free_udp_addr};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use quicraft::tls::{ClusterCa, NodeCertOptions};
use tokio::process::Child;
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(20);

struct Proc {
    child: Child,
    client: SocketAddr,
}

/// Lines the processes print, tagged with the node id.
type Lines = mpsc::UnboundedReceiver<(u64, String)>;

async fn next_line(lines: &mut Lines, what: &str) -> (u64, String) {
    tokio::time::timeout(GUARD, lines.recv())
        .await
        .unwrap_or_else(|_| panic!("no output while waiting for {what}"))
        .expect("every node process ended")
}

/// Waits for a line matching `pick` from any node; returns what `pick` extracted.
async fn wait_for<T>(
    lines: &mut Lines,
    what: &str,
    mut pick: impl FnMut(u64, &str) -> Option<T>,
) -> T {
    loop {
        let (id, line) = next_line(lines, what).await;
        if let Some(found) = pick(id, &line) {
            return found;
        }
    }
}

fn leader_in(line: &str) -> Option<u64> {
    line.split_once(": leader is node ")
        .and_then(|(_, id)| id.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_node_processes_replicate_and_fail_over() {
    let binary = example_binary("cluster");
    let certs = std::env::temp_dir().join(format!("quicraft-procs-{}", std::process::id()));
    std::fs::create_dir_all(&certs).unwrap();
    let ca = ClusterCa::generate("procs").unwrap();
    std::fs::write(certs.join("ca.pem"), ca.cert_pem()).unwrap();
    for id in 1..=3 {
        let node = ca
            .issue_node(&id.to_string(), &NodeCertOptions::default())
            .unwrap();
        std::fs::write(certs.join(format!("{id}.pem")), node.cert_pem).unwrap();
        std::fs::write(certs.join(format!("{id}.key")), node.key_pem).unwrap();
    }

    let addrs: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_udp_addr())).collect();
    let peers = peers_arg(&addrs);

    let (tx, mut lines) = mpsc::unbounded_channel();
    let mut procs = BTreeMap::new();
    for (&id, addr) in &addrs {
        let mut child = node_command(&binary, "procs", id, *addr, &peers, &certs)
            .spawn()
            .unwrap();
        forward_stdout(&mut child, id, &tx);
        procs.insert(
            id,
            Proc {
                child,
                client: "0.0.0.0:0".parse().unwrap(),
            },
        );
    }
    drop(tx);

    // Every node reports its client address, then the leader it follows.
    let mut leaders = BTreeMap::new();
    while leaders.len() < 3 || procs.values().any(|p| p.client.port() == 0) {
        let (id, line) = next_line(&mut lines, "startup and election").await;
        if let Some((_, rest)) = line.split_once("client protocol on ") {
            let addr = rest.trim_end_matches(" (TCP)");
            procs.get_mut(&id).unwrap().client = addr.parse().unwrap();
        }
        if let Some(leader) = leader_in(&line) {
            leaders.insert(id, leader);
        }
    }
    let leader = *leaders.values().next().unwrap();
    assert!(
        leaders.values().all(|&l| l == leader),
        "disagreement: {leaders:?}"
    );

    // A write through the leader, read back from every node.
    let mut to_leader = LineClient::connect(procs[&leader].client).await;
    let answer = to_leader.call("put greeting hello").await;
    let index = answer
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("put answered {answer}"));
    for proc in procs.values() {
        let mut client = LineClient::connect(proc.client).await;
        assert_eq!(client.call(&format!("wait {index}")).await, "OK");
        assert_eq!(client.call("get greeting").await, "OK hello");
        assert_eq!(client.call("get missing").await, "NOT_FOUND");
    }
    let follower = *procs.keys().find(|&&id| id != leader).unwrap();
    let mut to_follower = LineClient::connect(procs[&follower].client).await;
    let refused = to_follower.call("put k v").await;
    assert!(
        refused.starts_with(&format!("ERR not leader; leader is node {leader}")),
        "{refused}"
    );

    // The leader's process dies; the other two elect a new leader, which takes writes.
    let mut dead = procs.remove(&leader).unwrap();
    dead.child.kill().await.unwrap();
    let new_leader = wait_for(&mut lines, "a new leader", |id, line| {
        leader_in(line).filter(|&l| id != leader && l != leader)
    })
    .await;
    let mut to_new = LineClient::connect(procs[&new_leader].client).await;
    let answer = to_new.call("put after failover").await;
    let index = answer
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("put answered {answer}"));
    for proc in procs.values() {
        let mut client = LineClient::connect(proc.client).await;
        assert_eq!(client.call(&format!("wait {index}")).await, "OK");
        assert_eq!(client.call("get after").await, "OK failover");
        assert_eq!(client.call("get greeting").await, "OK hello");
    }

    for proc in procs.values_mut() {
        proc.child.kill().await.unwrap();
    }
    let _ = std::fs::remove_dir_all(&certs);
}
