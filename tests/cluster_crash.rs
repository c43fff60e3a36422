//! Crash test of the cluster example on durable storage: node processes on 127.0.0.1, a
//! writer that follows `ERR not leader` redirects and records every acknowledged write, the
//! leader and the followers killed with SIGKILL and restarted, the leader stopped with
//! SIGSTOP past the election timeout; afterwards every acknowledged write is read back with
//! its value through a linearizable read (`lget`), and none may be missing.
//!
//! `short_crash_run_loses_no_acknowledged_write` runs with `cargo test` (3 nodes, a few
//! faults). The long runs are ignored by default:
//!
//! ```text
//! cargo build --example cluster
//! cargo test --test cluster_crash -- --ignored --nocapture
//! ```
//!
//! and print the figures recorded in BENCHMARKS.md (writes acknowledged and lost, failover
//! time from a fault to the next acknowledged write, catch-up time of a restarted node,
//! throughput before, during and after the faults). A node whose data is deleted is refused
//! when it restarts, and comes back as a new member by the procedure its message gives
//! (`a_node_with_lost_data_is_refused_and_comes_back_as_a_new_member`).

#![cfg(feature = "openraft")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{example_binary, free_udp_addr};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quicraft::tls::{ClusterCa, NodeCertOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// The largest election timeout of the example's Raft settings.
const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(800);
/// Bound on waiting for a node to come up, a leader to be known, a node to catch up. Generous:
/// a restarted peer may be unreachable until the others drop their old connection to it.
const GUARD: Duration = Duration::from_secs(45);
/// Bound on one client request (a `put` is bounded at 5 s by the node itself).
const REQUEST: Duration = Duration::from_secs(8);
/// Snapshot often, so that restarts meet purged logs and snapshot installs.
const SNAPSHOT_BYTES: &str = "32768";

// ---------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------

fn free_tcp() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn write_secret(path: &Path, contents: &str) {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    file.write_all(contents.as_bytes()).unwrap();
}

/// Sends `signal` (`STOP`, `CONT`) to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} {pid} failed");
}

struct NodeProc {
    udp: SocketAddr,
    client: SocketAddr,
    /// Further arguments (`--join`).
    extra: Vec<String>,
    child: Option<Child>,
    /// Every line the node printed, stdout and stderr, across restarts.
    output: Arc<Mutex<Vec<String>>>,
    /// The tasks copying the current process's output into `output`.
    readers: Vec<tokio::task::JoinHandle<()>>,
}

/// A cluster of example processes; every process is killed when it is dropped.
struct Cluster {
    ca: ClusterCa,
    binary: PathBuf,
    dir: PathBuf,
    peers: String,
    nodes: BTreeMap<u64, NodeProc>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(child) = node.child.as_mut() {
                if let Some(pid) = child.id() {
                    // A stopped process must be continued to die promptly.
                    let _ = std::process::Command::new("kill")
                        .args(["-CONT", &pid.to_string()])
                        .status();
                }
                let _ = child.start_kill();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Cluster {
    fn new(name: &str, size: u64) -> Self {
        let dir =
            std::env::temp_dir().join(format!("quicraft-crash-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let ca = ClusterCa::generate("crash").unwrap();
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).unwrap();
        let mut nodes = BTreeMap::new();
        for id in 1..=size {
            let node = ca
                .issue_node(&id.to_string(), &NodeCertOptions::default())
                .unwrap();
            std::fs::write(dir.join(format!("{id}.pem")), node.cert_pem).unwrap();
            write_secret(&dir.join(format!("{id}.key")), &node.key_pem);
            nodes.insert(
                id,
                NodeProc {
                    udp: free_udp_addr(),
                    client: free_tcp(),
                    extra: Vec::new(),
                    child: None,
                    output: Arc::default(),
                    readers: Vec::new(),
                },
            );
        }
        let peers = nodes
            .iter()
            .map(|(id, n)| format!("{id}={}", n.udp))
            .collect::<Vec<_>>()
            .join(",");
        Self {
            ca,
            binary: example_binary("cluster"),
            dir,
            peers,
            nodes,
        }
    }

    /// Adds node `id` at `udp` as a new member (started with `--join`), with a certificate.
    fn add_joining(&mut self, id: u64, udp: SocketAddr) {
        let node = self
            .ca
            .issue_node(&id.to_string(), &NodeCertOptions::default())
            .unwrap();
        std::fs::write(self.dir.join(format!("{id}.pem")), node.cert_pem).unwrap();
        write_secret(&self.dir.join(format!("{id}.key")), &node.key_pem);
        self.peers.push_str(&format!(",{id}={udp}"));
        self.nodes.insert(
            id,
            NodeProc {
                udp,
                client: free_tcp(),
                extra: vec!["--join".into()],
                child: None,
                output: Arc::default(),
                readers: Vec::new(),
            },
        );
    }

    fn data_dir(&self, id: u64) -> PathBuf {
        self.dir.join(format!("data-{id}"))
    }

    /// Starts node `id` (on its data directory) without waiting for it.
    fn spawn(&mut self, id: u64) {
        let data_dir = self.data_dir(id);
        let node = self.nodes.get_mut(&id).unwrap();
        assert!(node.child.is_none(), "node {id} is already running");
        node.readers.clear();
        let mut child = Command::new(&self.binary)
            .args(["--cluster", "crash", "--id", &id.to_string()])
            .args(["--listen", &node.udp.to_string(), "--peers", &self.peers])
            .arg("--certs")
            .arg(&self.dir)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--client", &node.client.to_string()])
            .args(["--snapshot-bytes", SNAPSHOT_BYTES])
            .args(&node.extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        for stream in [
            Box::new(out) as Box<dyn tokio::io::AsyncRead + Send + Unpin>,
            Box::new(err),
        ] {
            let output = node.output.clone();
            node.readers.push(tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    output.lock().unwrap().push(format!("node {id}: {line}"));
                }
            }));
        }
        node.child = Some(child);
    }

    /// Waits until node `id` accepts client connections (bounded polling).
    async fn wait_ready(&self, id: u64) {
        let addr = self.nodes[&id].client;
        let started = Instant::now();
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                started.elapsed() < GUARD,
                "node {id} did not come up:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self, id: u64) {
        let mut child = self.nodes.get_mut(&id).unwrap().child.take().unwrap();
        child.kill().await.unwrap();
    }

    fn pid(&self, id: u64) -> u32 {
        self.nodes[&id].child.as_ref().unwrap().id().unwrap()
    }

    fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.child.is_some())
            .map(|(id, _)| *id)
            .collect()
    }

    fn output(&self) -> String {
        let mut all = Vec::new();
        for node in self.nodes.values() {
            all.extend(node.output.lock().unwrap().iter().cloned());
        }
        all.join("\n")
    }

    fn clients(&self) -> BTreeMap<u64, SocketAddr> {
        self.nodes.iter().map(|(id, n)| (*id, n.client)).collect()
    }

    /// The leader, as a running node that says it leads (bounded polling).
    async fn leader(&self, not: Option<u64>) -> u64 {
        let started = Instant::now();
        loop {
            for id in self.running() {
                if Some(id) == not {
                    continue;
                }
                if let Ok(answer) = call_once(self.nodes[&id].client, "status").await
                    && answer.contains(" Leader ")
                {
                    return id;
                }
            }
            assert!(
                started.elapsed() < GUARD,
                "no leader (other than {not:?}):\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Node `id`'s applied index.
    async fn applied(&self, id: u64) -> Option<u64> {
        let answer = call_once(self.nodes[&id].client, "status").await.ok()?;
        answer
            .split_once(" applied ")
            .and_then(|(_, rest)| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
    }

    /// Time until node `id` has applied `index` (bounded polling).
    async fn caught_up(&self, id: u64, index: u64, since: Instant) -> Duration {
        loop {
            if self.applied(id).await.is_some_and(|a| a >= index) {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < GUARD,
                "node {id} did not reach index {index}:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One request on a fresh connection.
async fn call_once(addr: SocketAddr, line: &str) -> std::io::Result<String> {
    let mut conn = Conn::connect(addr).await?;
    conn.call(line).await
}

struct Conn {
    reader: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
            .await
            .map_err(|_| std::io::Error::other("connect timed out"))??;
        let (read, writer) = stream.into_split();
        Ok(Self {
            reader: BufReader::new(read).lines(),
            writer,
        })
    }

    async fn call(&mut self, line: &str) -> std::io::Result<String> {
        self.writer
            .write_all(format!("{line}\n").as_bytes())
            .await?;
        tokio::time::timeout(REQUEST, self.reader.next_line())
            .await
            .map_err(|_| std::io::Error::other("no answer"))??
            .ok_or_else(|| std::io::Error::other("connection closed"))
    }
}

// ---------------------------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------------------------

/// What the writer recorded.
#[derive(Default)]
struct Acks {
    /// Every acknowledged write: key, value, when.
    writes: Vec<(String, String, Instant)>,
    /// Answers that were not `OK` (for the report).
    refused: u64,
}

fn leader_in(answer: &str) -> Option<u64> {
    answer
        .strip_prefix("ERR not leader; leader is node ")?
        .split(' ')
        .next()?
        .parse()
        .ok()
}

/// Writes unique keys until `stop`, to whichever node leads, following redirects.
async fn writer(clients: BTreeMap<u64, SocketAddr>, acks: Arc<Mutex<Acks>>, stop: Arc<AtomicBool>) {
    let ids: Vec<u64> = clients.keys().copied().collect();
    let mut target = ids[0];
    let mut conns: BTreeMap<u64, Conn> = BTreeMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        let (key, value) = (format!("k{seq}"), format!("v{seq}"));
        let conn = match conns.entry(target) {
            std::collections::btree_map::Entry::Occupied(conn) => conn.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                match Conn::connect(clients[&target]).await {
                    Ok(conn) => slot.insert(conn),
                    Err(_) => {
                        target = next(&ids, target);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                }
            }
        };
        match conn.call(&format!("put {key} {value}")).await {
            Ok(answer) if answer.starts_with("OK ") => {
                acks.lock()
                    .unwrap()
                    .writes
                    .push((key, value, Instant::now()));
            }
            Ok(answer) => {
                acks.lock().unwrap().refused += 1;
                target = match leader_in(&answer) {
                    Some(leader) if leader != target => leader,
                    _ => {
                        // No leader known yet, or a bounded failure: try another node soon.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        next(&ids, target)
                    }
                };
            }
            Err(_) => {
                conns.remove(&target);
                target = next(&ids, target);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn next(ids: &[u64], current: u64) -> u64 {
    let at = ids.iter().position(|&i| i == current).unwrap_or(0);
    ids[(at + 1) % ids.len()]
}

/// Reads every acknowledged write back with `lget`, on the leader, over a few pipelined
/// connections; returns the keys missing or with another value.
async fn read_back(cluster: &Cluster, writes: &[(String, String, Instant)]) -> Vec<String> {
    let leader = cluster.leader(None).await;
    let addr = cluster.nodes[&leader].client;
    let mut tasks = Vec::new();
    for chunk in writes.chunks(writes.len().div_ceil(4).max(1)) {
        let chunk: Vec<(String, String)> = chunk
            .iter()
            .map(|(k, v, _)| (k.clone(), v.clone()))
            .collect();
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (read, mut write) = stream.into_split();
            let mut lines = BufReader::new(read).lines();
            let mut lost = Vec::new();
            for batch in chunk.chunks(64) {
                let mut out = String::new();
                for (key, _) in batch {
                    out.push_str(&format!("lget {key}\n"));
                }
                write.write_all(out.as_bytes()).await.unwrap();
                for (key, value) in batch {
                    let answer = tokio::time::timeout(REQUEST, lines.next_line())
                        .await
                        .expect("lget answered")
                        .unwrap()
                        .expect("connection open");
                    assert!(
                        !answer.starts_with("ERR"),
                        "lget {key} on the leader answered {answer}"
                    );
                    if answer != format!("OK {value}") {
                        lost.push(format!("{key}: expected {value}, got {answer}"));
                    }
                }
            }
            lost
        }));
    }
    let mut lost = Vec::new();
    for task in tasks {
        lost.extend(task.await.unwrap());
    }
    lost
}

// ---------------------------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------------------------

struct Plan {
    size: u64,
    leader_kills: usize,
    follower_kills: usize,
    leader_stops: usize,
    /// Steady writing before and after the faults, to measure throughput.
    steady: Duration,
    /// Writing between one fault's recovery and the next fault.
    pause: Duration,
}

#[derive(Default)]
struct Report {
    acked: usize,
    refused: u64,
    lost: usize,
    failovers: Vec<Duration>,
    catch_ups: Vec<Duration>,
    before: f64,
    during: f64,
    after: f64,
}

fn rate(writes: &[(String, String, Instant)], from: Instant, to: Instant) -> f64 {
    let n = writes.iter().filter(|w| w.2 >= from && w.2 < to).count();
    n as f64 / (to - from).as_secs_f64()
}

fn percentile(values: &[Duration], p: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let at = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[at]
}

/// Time from `fault` to the first write acknowledged after it.
async fn failover(acks: &Mutex<Acks>, fault: Instant, cluster: &Cluster) -> Duration {
    loop {
        if let Some(first) = acks
            .lock()
            .unwrap()
            .writes
            .iter()
            .rev()
            .take_while(|w| w.2 > fault)
            .last()
        {
            return first.2 - fault;
        }
        assert!(
            fault.elapsed() < GUARD,
            "no write acknowledged within {GUARD:?} of a fault:\n{}",
            cluster.output()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Restarts node `id` and returns how long it took to apply what the leader had applied at
/// the restart.
async fn restart_and_catch_up(cluster: &mut Cluster, id: u64) -> Duration {
    let leader = cluster.leader(Some(id)).await;
    let target = cluster.applied(leader).await.unwrap_or(0);
    let started = Instant::now();
    cluster.spawn(id);
    cluster.wait_ready(id).await;
    cluster.caught_up(id, target, started).await
}

async fn run(name: &str, plan: Plan) -> Report {
    let mut cluster = Cluster::new(name, plan.size);
    for id in 1..=plan.size {
        cluster.spawn(id);
    }
    for id in 1..=plan.size {
        cluster.wait_ready(id).await;
    }
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let writing = tokio::spawn(writer(cluster.clients(), acks.clone(), stop.clone()));
    let mut report = Report::default();

    // The cluster takes writes.
    let _ = failover(&acks, Instant::now(), &cluster).await;
    let before_start = Instant::now();
    tokio::time::sleep(plan.steady).await;
    let faults_start = Instant::now();

    // Faults, interleaved: leader kills, follower kills, leader stops.
    let rounds = plan
        .leader_kills
        .max(plan.follower_kills)
        .max(plan.leader_stops);
    for round in 0..rounds {
        if round < plan.leader_kills {
            let leader = cluster.leader(None).await;
            let fault = Instant::now();
            cluster.kill(leader).await;
            report
                .failovers
                .push(failover(&acks, fault, &cluster).await);
            report
                .catch_ups
                .push(restart_and_catch_up(&mut cluster, leader).await);
            tokio::time::sleep(plan.pause).await;
        }
        if round < plan.follower_kills {
            let leader = cluster.leader(None).await;
            let follower = *cluster.running().iter().find(|&&id| id != leader).unwrap();
            cluster.kill(follower).await;
            // Down for a while, so that it has entries to catch up on.
            tokio::time::sleep(Duration::from_secs(1)).await;
            report
                .catch_ups
                .push(restart_and_catch_up(&mut cluster, follower).await);
            tokio::time::sleep(plan.pause).await;
        }
        if round < plan.leader_stops {
            let leader = cluster.leader(None).await;
            let pid = cluster.pid(leader);
            let fault = Instant::now();
            signal(pid, "STOP");
            // Stopped for 2.5 times the largest election timeout.
            tokio::time::sleep(ELECTION_TIMEOUT_MAX * 5 / 2).await;
            let elected = cluster.leader(Some(leader)).await;
            assert_ne!(elected, leader);
            signal(pid, "CONT");
            report
                .failovers
                .push(failover(&acks, fault, &cluster).await);
            let target = cluster.applied(elected).await.unwrap_or(0);
            report
                .catch_ups
                .push(cluster.caught_up(leader, target, Instant::now()).await);
            tokio::time::sleep(plan.pause).await;
        }
    }
    let faults_end = Instant::now();
    tokio::time::sleep(plan.steady).await;
    let after_end = Instant::now();
    stop.store(true, Ordering::Relaxed);
    tokio::time::timeout(REQUEST * 2, writing)
        .await
        .expect("the writer stops")
        .unwrap();

    let (writes, refused) = {
        let acks = acks.lock().unwrap();
        (acks.writes.clone(), acks.refused)
    };
    let lost = read_back(&cluster, &writes).await;
    let output = cluster.output();
    assert!(!output.contains("panicked"), "a node panicked:\n{output}");
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        writes.len(),
        &lost[..lost.len().min(10)]
    );
    report.acked = writes.len();
    report.refused = refused;
    report.lost = lost.len();
    report.before = rate(&writes, before_start, faults_start);
    report.during = rate(&writes, faults_start, faults_end);
    report.after = rate(&writes, faults_end, after_end);
    println!(
        "{name}: {} nodes, {} leader kills, {} follower kills, {} leader stops\n  \
         writes acknowledged {}, lost {}, not acknowledged (redirects, timeouts) {}\n  \
         failover (fault to next acknowledged write) p50 {:?} max {:?} over {}\n  \
         catch-up of a restarted or resumed node p50 {:?} max {:?} over {}\n  \
         throughput writes/s: before {:.0}, during {:.0}, after {:.0}",
        plan.size,
        plan.leader_kills,
        plan.follower_kills,
        plan.leader_stops,
        report.acked,
        report.lost,
        report.refused,
        percentile(&report.failovers, 0.5),
        percentile(&report.failovers, 1.0),
        report.failovers.len(),
        percentile(&report.catch_ups, 0.5),
        percentile(&report.catch_ups, 1.0),
        report.catch_ups.len(),
        report.before,
        report.during,
        report.after,
    );
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_crash_run_loses_no_acknowledged_write() {
    let report = run(
        "short",
        Plan {
            size: 3,
            leader_kills: 2,
            follower_kills: 1,
            leader_stops: 1,
            steady: Duration::from_secs(1),
            pause: Duration::from_millis(300),
        },
    )
    .await;
    assert_eq!(report.lost, 0);
    assert!(report.acked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 3 to 15 minutes; run with --ignored --nocapture for the figures"]
async fn long_crash_run_3_nodes() {
    let report = run(
        "long3",
        Plan {
            size: 3,
            leader_kills: 20,
            follower_kills: 10,
            leader_stops: 5,
            steady: Duration::from_secs(5),
            pause: Duration::from_secs(2),
        },
    )
    .await;
    assert_eq!(report.lost, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: 3 to 15 minutes; run with --ignored --nocapture for the figures"]
async fn long_crash_run_5_nodes() {
    let report = run(
        "long5",
        Plan {
            size: 5,
            leader_kills: 20,
            follower_kills: 10,
            leader_stops: 5,
            steady: Duration::from_secs(5),
            pause: Duration::from_secs(2),
        },
    )
    .await;
    assert_eq!(report.lost, 0);
}

/// A node whose data is deleted is refused when it restarts under its old id, with a message
/// saying how to bring it back; the procedure it gives works: `remove` it, start a new id
/// with `--join` on that host, `add` it. The founder is refused too (its probe finds the
/// cluster), and the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_lost_data_is_refused_and_comes_back_as_a_new_member() {
    let mut cluster = Cluster::new("lost", 3);
    for id in 1..=3 {
        cluster.spawn(id);
    }
    for id in 1..=3 {
        cluster.wait_ready(id).await;
    }
    let leader = cluster.leader(None).await;
    let answer = call_once(cluster.nodes[&leader].client, "put before loss")
        .await
        .unwrap();
    assert!(answer.starts_with("OK "), "{answer}");

    // A node other than the founder and the leader loses its data: refused on the leader's
    // first RPC.
    let lost = *cluster
        .running()
        .iter()
        .find(|&&id| id != leader && id != 1)
        .unwrap();
    lose_data_and_expect_refusal(&mut cluster, lost).await;

    // As the message says: remove it, start a new id with --join on that host, add it.
    let leader = cluster.leader(None).await;
    let removed = call_once(cluster.nodes[&leader].client, &format!("remove {lost}"))
        .await
        .unwrap();
    assert!(removed.starts_with("OK voters "), "{removed}");
    assert!(!removed.contains(&lost.to_string()), "{removed}");
    let udp = cluster.nodes[&lost].udp;
    cluster.add_joining(4, udp);
    cluster.spawn(4);
    cluster.wait_ready(4).await;
    let added = call_once(cluster.nodes[&leader].client, &format!("add 4 {udp}"))
        .await
        .unwrap();
    assert!(
        added.starts_with("OK voters ") && added.contains('4'),
        "{added}\n{}",
        cluster.output()
    );
    let index = call_once(cluster.nodes[&leader].client, "put after rejoin")
        .await
        .unwrap();
    let index = index
        .strip_prefix("OK ")
        .unwrap_or_else(|| panic!("{index}"));
    let mut to_new = Conn::connect(cluster.nodes[&4].client).await.unwrap();
    assert_eq!(to_new.call(&format!("wait {index}")).await.unwrap(), "OK");
    assert_eq!(to_new.call("get before").await.unwrap(), "OK loss");
    assert_eq!(to_new.call("get after").await.unwrap(), "OK rejoin");

    // The founder loses its data: refused (its probe finds the cluster); the rest serve on.
    if cluster.nodes[&1].child.is_some() {
        cluster.kill(1).await;
    }
    std::fs::remove_dir_all(cluster.data_dir(1)).unwrap();
    expect_refusal(&mut cluster, 1).await;
    let leader = cluster.leader(None).await;
    let answer = call_once(cluster.nodes[&leader].client, "lget after")
        .await
        .unwrap();
    assert_eq!(answer, "OK rejoin");
}

async fn lose_data_and_expect_refusal(cluster: &mut Cluster, id: u64) {
    cluster.kill(id).await;
    std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
    expect_refusal(cluster, id).await;
}

/// Starts node `id` (whose data directory is gone) and expects it to exit with the message.
async fn expect_refusal(cluster: &mut Cluster, id: u64) {
    cluster.spawn(id);
    let mut child = cluster.nodes.get_mut(&id).unwrap().child.take().unwrap();
    let status = tokio::time::timeout(GUARD, child.wait())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "node {id} with lost data kept running:\n{}",
                cluster.output()
            )
        })
        .unwrap();
    assert!(!status.success());
    // Everything it printed, to the end of its output.
    for reader in std::mem::take(&mut cluster.nodes.get_mut(&id).unwrap().readers) {
        tokio::time::timeout(GUARD, reader).await.unwrap().unwrap();
    }
    let output = cluster.nodes[&id].output.lock().unwrap().join("\n");
    assert!(
        output.contains("its cluster already exists") && output.contains("--join"),
        "node {id} said:\n{output}"
    );
}
