//! The `growth` scenario: one leader and many followers, all QUIC nodes of this process on one
//! runtime thread each side (the leader on one, the followers on another). What an idle
//! connection costs in memory (both sides), how fast the leader connects to them all, and the
//! heartbeat rate to many peers against the rate to one.

use std::time::{Duration, Instant};

use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{
    AppendEntriesRequest, QuicConfig, QuicTransport, QuicTuning, RpcHeader, ServerAddress,
    ServerId, Transport,
};
use serde::Serialize;

use super::nodes::{CLUSTER, NodeThread, RuntimeKind, Tuning, serve};
use super::report::{Report, per_second};

/// This process's resident set size now, in KiB (`VmRSS`).
fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub(crate) fn measure(peers: usize, run: Duration, tuning: Tuning) -> Report {
    let ca = ClusterCa::generate(CLUSTER).expect("a CA");
    let config = |node: &str| {
        let identity = ca
            .issue_node(node, &NodeCertOptions::default())
            .expect("a node certificate")
            .identity;
        QuicConfig::new(CLUSTER, identity, ca.roots())
            .bind("127.0.0.1:0".parse().expect("addr"))
            .tuning(tuning.apply(QuicTuning::default()))
    };
    let followers_thread = NodeThread::start("followers", RuntimeKind::CurrentThread);
    let configs: Vec<_> = (0..peers).map(|i| config(&format!("f{i}"))).collect();
    let followers: Vec<(QuicTransport, ServerId, ServerAddress)> =
        followers_thread.run(async move {
            let mut followers = Vec::new();
            for (i, config) in configs.into_iter().enumerate() {
                let (transport, incoming) = QuicTransport::bind(config).await.expect("bind");
                let addr = transport.local_addr();
                let id = format!("f{i}");
                serve(
                    &transport,
                    incoming,
                    RpcHeader::new(id.as_str(), addr.clone()),
                );
                followers.push((transport, ServerId::from(id.as_str()), addr));
            }
            followers
        });
    let leader_thread = NodeThread::start("leader", RuntimeKind::CurrentThread);
    let leader_config = config("leader");
    let leader =
        leader_thread.run(async move { QuicTransport::bind(leader_config).await.expect("bind").0 });
    let targets: Vec<(ServerId, ServerAddress)> = followers
        .iter()
        .map(|(_, id, addr)| (id.clone(), addr.clone()))
        .collect();

    let before = rss_kb();
    let (connect_time, after) = {
        let (leader, targets) = (leader.clone(), targets.clone());
        leader_thread.run(async move {
            let started = Instant::now();
            let dials: Vec<_> = targets
                .iter()
                .map(|(id, addr)| heartbeat(&leader, id, addr))
                .collect();
            futures_util::future::join_all(dials).await;
            let connect_time = started.elapsed();
            // Let the handshakes' and first exchanges' buffers go.
            tokio::time::sleep(Duration::from_millis(500)).await;
            (connect_time, rss_kb())
        })
    };
    let per_connection_kb = after.saturating_sub(before) as f64 / peers as f64;

    let rate = |spread: bool| {
        let (leader, targets) = (leader.clone(), targets.clone());
        leader_thread.run(async move {
            let deadline = Instant::now() + run;
            let tasks: Vec<_> = (0..64usize)
                .map(|task| {
                    let leader = leader.clone();
                    let (id, addr) = targets[if spread { task % targets.len() } else { 0 }].clone();
                    tokio::spawn(async move {
                        let mut sent = 0u64;
                        while Instant::now() < deadline {
                            heartbeat(&leader, &id, &addr).await;
                            sent += 1;
                        }
                        sent
                    })
                })
                .collect();
            let mut sent = 0;
            for task in tasks {
                sent += task.await.expect("a heartbeat task");
            }
            per_second(sent, run)
        })
    };
    let one_peer = rate(false);
    let many_peers = rate(true);

    leader_thread.run(async move { leader.close().await });
    followers_thread.run(async move {
        for (follower, _, _) in followers {
            follower.close().await;
        }
    });
    Report::of(&Growth {
        peers: peers as u64,
        kib_per_idle_connection_both_sides: per_connection_kb,
        handshakes_per_s: per_second(peers as u64, connect_time),
        rpcs_per_s_one_peer: one_peer,
        rpcs_per_s_all_peers: many_peers,
        all_vs_one: many_peers as f64 / one_peer.max(1) as f64,
    })
}

/// The figures of `growth`.
#[derive(Serialize)]
struct Growth {
    peers: u64,
    kib_per_idle_connection_both_sides: f64,
    handshakes_per_s: u64,
    rpcs_per_s_one_peer: u64,
    rpcs_per_s_all_peers: u64,
    all_vs_one: f64,
}

async fn heartbeat(leader: &QuicTransport, id: &ServerId, addr: &ServerAddress) {
    let request = AppendEntriesRequest::heartbeat(RpcHeader::new("leader", leader.local_addr()), 1);
    leader
        .append_entries(id, addr, request)
        .await
        .expect("a heartbeat");
}
