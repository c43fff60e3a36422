//! The cluster example serves the transport's metrics: two processes of `examples/cluster`
//! (`--id` mode) with `--metrics 127.0.0.1:PORT` form a cluster, a client writes through the
//! line protocol, and `/metrics` is scraped twice over plain HTTP: the series exist, carry
//! the peer label, and move between the scrapes. At the default log level a normal start and
//! these writes print nothing on stderr.

#![cfg(feature = "openraft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::cluster::{LineClient, forward_stdout, free_tcp_addr, node_command, peers_arg};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::Child;
use tokio::sync::mpsc;

const GUARD: Duration = Duration::from_secs(20);

/// One sample of the Prometheus text: name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus text exposition (the subset the exporter writes: no escaped quotes in
/// the label values used here).
fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|p| !p.is_empty())
                .map(|pair| {
                    let (k, v) = pair.split_once('=').expect("label=value");
                    (k.to_owned(), v.trim_matches('"').to_owned())
                })
                .collect();
            Sample {
                name: name.to_owned(),
                labels,
                value: value.parse().expect("a number"),
            }
        })
        .collect()
}

/// GET /metrics over plain HTTP/1.1.
async fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let mut stream = TcpStream::connect(addr).await.expect("connect to /metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(GUARD, stream.read_to_string(&mut response))
        .await
        .expect("scrape answered")
        .unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    parse(body)
}

/// Scrapes every 100 ms until `done` holds for a scrape, within the guard; returns it.
async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let deadline = Instant::now() + GUARD;
    loop {
        let samples = scrape(addr).await;
        if done(&samples) {
            return samples;
        }
        let quicraft: Vec<String> = samples
            .iter()
            .filter(|s| s.name.starts_with("quicraft_rpc") || s.name.starts_with("quicraft_path"))
            .map(|s| format!("{} {:?} {}", s.name, s.labels, s.value))
            .collect();
        assert!(
            Instant::now() < deadline,
            "{what}: not seen at {addr} within {GUARD:?}; last scrape:\n{}",
            quicraft.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The sum of `name` over the series whose labels include `with`.
fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            with.iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
        .sum()
}

fn has(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> bool {
    samples.iter().any(|s| {
        s.name == name
            && with
                .iter()
                .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
    })
}

/// Puts `key{i}` = `value{i}` for `i` in `from..to`.
async fn puts(client: &mut LineClient, from: u32, to: u32) {
    for i in from..to {
        let answer = client.call(&format!("put key{i} value{i}")).await;
        assert!(answer.starts_with("OK "), "put answered {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_serves_per_peer_metrics_that_move() {
    let binary = common::example_binary("cluster");
    let certs = common::TempDir::new("quicraft-metrics-scrape");
    let fixture = common::Fixture::new("scrape");
    fixture.write_certs(certs.path(), &["1", "2"]);
    // As certgen writes them: a key readable by others is (rightly) a warning.
    #[cfg(unix)]
    for id in ["1", "2"] {
        use std::os::unix::fs::PermissionsExt;
        let key = certs.path().join(format!("{id}.key"));
        std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let udp: BTreeMap<u64, SocketAddr> = (1..=2).map(|id| (id, common::free_udp_addr())).collect();
    let peers = peers_arg(&udp);

    let (tx, mut lines) = mpsc::unbounded_channel::<(u64, String)>();
    let mut children: Vec<Child> = Vec::new();
    let mut metrics = BTreeMap::new();
    for (&id, addr) in &udp {
        let metrics_addr = free_tcp_addr();
        metrics.insert(id, metrics_addr);
        let mut child = node_command(&binary, "scrape", id, *addr, &peers, certs.path())
            .args(["--metrics", &metrics_addr.to_string()])
            .stderr(Stdio::piped())
            .env_remove("RUST_LOG")
            .spawn()
            .unwrap();
        forward_stdout(&mut child, id, &tx);
        children.push(child);
    }
    drop(tx);

    // Each node reports its client address and the leader it follows.
    let mut clients = BTreeMap::new();
    let mut leaders = BTreeMap::new();
    while clients.len() < 2 || leaders.len() < 2 {
        let (id, line) = tokio::time::timeout(GUARD, lines.recv())
            .await
            .expect("startup and election within the guard")
            .expect("a node process ended");
        if let Some((_, rest)) = line.split_once("client protocol on ") {
            let addr: SocketAddr = rest.trim_end_matches(" (TCP)").parse().unwrap();
            clients.insert(id, addr);
        }
        if let Some((_, leader)) = line.split_once(": leader is node ") {
            leaders.insert(id, leader.trim().parse::<u64>().unwrap());
        }
    }
    let leader = leaders[&1];
    assert_eq!(leaders[&2], leader, "the nodes disagree on the leader");
    let follower = if leader == 1 { 2 } else { 1 };
    let (leader_label, follower_label) = (leader.to_string(), follower.to_string());
    let mut client = LineClient::connect(clients[&leader]).await;
    puts(&mut client, 0, 20).await;

    // The first scrape: the leader's calls to the follower, the follower's service of them
    // (counts are published once a second: scrape until they show, within the guard).
    let appends = [
        ("peer", follower_label.as_str()),
        ("kind", "append_entries"),
        ("outcome", "ok"),
    ];
    let first = scrape_until(metrics[&leader], "ok append_entries to the follower", |s| {
        sum(s, "quicraft_rpc_calls_total", &appends) >= 1.0
    })
    .await;
    let calls_before = sum(&first, "quicraft_rpc_calls_total", &appends);
    let peer = [("peer", follower_label.as_str())];
    assert!(has(
        &first,
        "quicraft_rpc_call_duration_seconds_bucket",
        &[
            ("peer", follower_label.as_str()),
            ("kind", "append_entries")
        ]
    ));
    assert!(has(&first, "quicraft_connections_opened_total", &peer));
    let served = [("peer", leader_label.as_str()), ("outcome", "ok")];
    scrape_until(metrics[&follower], "requests served for the leader", |s| {
        sum(s, "quicraft_rpc_served_total", &served) >= 1.0
    })
    .await;

    // More writes; the second scrape has moved. The sampled series (bytes, path) are read
    // once a second: poll until they show, within the guard.
    puts(&mut client, 20, 40).await;
    let sent_before = sum(&first, "quicraft_sent_bytes_total", &peer);
    scrape_until(metrics[&leader], "the series moving", |second| {
        // Each put is at least one append to the follower.
        sum(second, "quicraft_rpc_calls_total", &appends) >= calls_before + 20.0
            && sum(second, "quicraft_sent_bytes_total", &peer) > sent_before
            && sum(second, "quicraft_path_rtt_seconds", &peer) > 0.0
            && sum(second, "quicraft_path_mtu_bytes", &peer) >= 1200.0
    })
    .await;

    for child in &mut children {
        child.kill().await.unwrap();
    }
    // The default log (warnings) stayed silent through a normal start, an election and
    // writes.
    for child in &mut children {
        let mut stderr = String::new();
        let mut pipe = child.stderr.take().unwrap();
        tokio::time::timeout(GUARD, pipe.read_to_string(&mut stderr))
            .await
            .expect("stderr closed after kill")
            .unwrap();
        assert!(stderr.is_empty(), "a normal run logged:\n{stderr}");
    }
}
