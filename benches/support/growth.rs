//! The `growth` scenario, measured from outside: every node is an `rpc_node` process of its
//! own (`examples/rpc_node.rs`, one node per process as in a deployment), and what a
//! connection costs is read from `/proc` of each process.
//!
//! 1. The leader (the dialling side) heartbeats 64 followers (the accepting side) all at once:
//!    handshakes per second (64 over the leader's own timing of the command), and the CPU
//!    both sides spent per handshake (and its first heartbeat, and what follows within the
//!    settle time: acknowledgements, path MTU probes).
//! 2. Memory per idle connection, from each process's `VmRSS` before the connections and after
//!    they are up and idle ([`SETTLE`] after the last answer): on the dialling side the
//!    leader's growth over its 64 connections; on the accepting side the mean growth of the
//!    followers (one connection each, so it includes what the first connection of a process
//!    costs: endpoint buffers it touches, lazily built state, code paged in). The log (stderr)
//!    splits each figure into anonymous memory (`RssAnon`) and file-backed pages (`RssFile`:
//!    the binary's code, paged in once per process), and gives the followers' spread and the
//!    CPU an idle node uses.
//! 3. The accepting side at scale: the 64 followers dial one more process (the hub) all at
//!    once: its growth over its 64 accepted connections, and its CPU per handshake.
//! 4. Rates: 64 leader tasks sending heartbeats back to back to one follower, then spread over
//!    all 64 (one task per follower); likewise AppendEntries of 64 entries of 1 KiB; and the
//!    leader's CPU per RPC in each case. On a machine with fewer cores than followers the rate
//!    to 64 peers is bound by the followers' wake-ups (each follower process is woken for
//!    almost every RPC, where one busy follower handles many per wake-up), not by the leader;
//!    the leader's CPU per RPC is the figure that carries over to a real cluster.
//!
//! CPU is read per thread from `/proc/PID/task/*/schedstat` (nanoseconds), falling back to
//! `utime + stime` of `/proc/PID/stat` (10 ms ticks: far too coarse for one handshake per
//! process) where schedstat is missing; the CPU the processes use while idle, measured over
//! the settle time before the dials, is taken off. The bench's `--max-udp-payload`,
//! `--stream-window` and `--busy-poll` reach every node; `QUICRAFT_GROWTH_NODE_ARGS` (split on
//! whitespace) adds further `rpc_node` flags to every node, for experiments (e.g.
//! `--max-streams 8`, `--send-window 65536`).
//!
//! Every process is killed and reaped when its handle drops, on success or failure.

use std::io::{BufRead, BufReader, Lines, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::nodes::Tuning;
use super::report::Report;
use super::restart::rpc_node_binary;

const CLUSTER: &str = "bench-growth";
/// How long the processes are left alone before their RSS is read: the handshakes' transient
/// buffers are released, the path MTU probes are over, the process is idle.
const SETTLE: Duration = Duration::from_millis(500);
/// Concurrent senders of the rate measurements.
const LOAD_TASKS: usize = 64;
/// The nodes' RPC and connect timeout: generous, as 66 processes share the machine's cores.
const RPC_TIMEOUT_MS: &str = "10000";

/// Runs the scenario with `peers` followers, each rate measured for `run`; no report when
/// `rpc_node` cannot be built.
pub(crate) fn measure(peers: usize, run: Duration, tuning: Tuning) -> Vec<Report> {
    let binary = match rpc_node_binary() {
        Ok(binary) => binary,
        Err(why) => {
            eprintln!("growth scenario skipped: {why}");
            return Vec::new();
        }
    };
    let follower_ids: Vec<String> = (0..peers).map(|i| format!("f{i}")).collect();
    let mut ids = vec!["leader".to_owned(), "hub".to_owned()];
    ids.extend(follower_ids.iter().cloned());
    let certs = Certs::write(&ids);
    let launcher = Launcher::new(binary, certs.0.clone(), tuning);

    // Start every process first, then wait for each to be ready: they start in parallel.
    let mut leader = launcher.spawn("leader");
    let mut hub = launcher.spawn("hub");
    let mut followers: Vec<Node> = follower_ids.iter().map(|id| launcher.spawn(id)).collect();
    leader.wait_ready();
    hub.wait_ready();
    for follower in &mut followers {
        follower.wait_ready();
    }

    // 1 and 2: the leader dials every follower.
    let idle_cpu = idle_cpu(everyone(&leader, &followers, &hub));
    let before: Vec<Sample> = everyone(&leader, &followers, &hub)
        .map(Node::sample)
        .collect();
    let started = Instant::now();
    let dial_micros = leader.dial(&followers);
    std::thread::sleep(SETTLE);
    let window = started.elapsed();
    let after: Vec<Sample> = everyone(&leader, &followers, &hub)
        .map(Node::sample)
        .collect();
    let growth: Vec<Growth> = before
        .iter()
        .zip(&after)
        .zip(&idle_cpu)
        .map(|((before, after), idle)| Growth::between(before, after, *idle, window))
        .collect();
    let (leader_growth, follower_growth) = (&growth[0], &growth[1..=peers]);
    let followers_growth = Growth::mean(follower_growth);

    // 3: the followers dial the hub, all at once.
    let hub_before = hub.sample();
    let started = Instant::now();
    let dial_hub = format!("dial {} {}", hub.id, hub.addr());
    for follower in &mut followers {
        follower.send(&dial_hub);
    }
    for follower in &mut followers {
        follower.expect_dialled();
    }
    std::thread::sleep(SETTLE);
    let hub_growth = Growth::between(
        &hub_before,
        &hub.sample(),
        idle_cpu[peers + 1],
        started.elapsed(),
    );

    eprintln!(
        "# growth: VmRSS per idle connection (KiB) = anonymous + file-backed (code paged in \
         once per process): dialling {}; accepting, one per process, {}; accepting at scale {}",
        leader_growth.per_connection(peers),
        followers_growth.per_connection(1),
        hub_growth.per_connection(peers),
    );
    let follower_kib: Vec<f64> = follower_growth.iter().map(|g| g.rss_kib).collect();
    eprintln!(
        "# growth: each follower's growth (KiB): {}; CPU of an idle node, no connection: {:.0} us/s",
        spread(&follower_kib),
        idle_cpu.iter().sum::<f64>() / idle_cpu.len() as f64 / 1e3,
    );

    // 4: the rates.
    let one = std::slice::from_ref(&followers[0]);
    let heartbeats_one = leader.load(run, "heartbeat", one);
    let heartbeats_all = leader.load(run, "heartbeat", &followers);
    let appends_one = leader.load(run, "append", one);
    let appends_all = leader.load(run, "append", &followers);
    let ratio = |all: &Rate, one: &Rate| all.per_s as f64 / one.per_s.max(1) as f64;

    let n = peers as f64;
    vec![Report::of(&Figures {
        peers: peers as u64,
        kib_per_idle_connection_dialling: leader_growth.rss_kib / n,
        kib_per_idle_connection_accepting: followers_growth.rss_kib,
        kib_per_idle_connection_accepting_at_scale: hub_growth.rss_kib / n,
        handshakes_per_s: (n * 1e6 / dial_micros.max(1) as f64).round() as u64,
        cpu_us_per_handshake_dialling: leader_growth.cpu_us / n,
        cpu_us_per_handshake_accepting: followers_growth.cpu_us,
        cpu_us_per_handshake_accepting_at_scale: hub_growth.cpu_us / n,
        rpcs_per_s_one_peer: heartbeats_one.per_s,
        rpcs_per_s_all_peers: heartbeats_all.per_s,
        all_vs_one: ratio(&heartbeats_all, &heartbeats_one),
        leader_cpu_us_per_rpc_one_peer: heartbeats_one.leader_cpu_us,
        leader_cpu_us_per_rpc_all_peers: heartbeats_all.leader_cpu_us,
        appends_per_s_one_peer: appends_one.per_s,
        appends_per_s_all_peers: appends_all.per_s,
        appends_all_vs_one: ratio(&appends_all, &appends_one),
        leader_cpu_us_per_append_one_peer: appends_one.leader_cpu_us,
        leader_cpu_us_per_append_all_peers: appends_all.leader_cpu_us,
    })]
}

/// The figures of `growth`. Memory in KiB (1024 bytes) of `VmRSS` per connection; CPU in
/// microseconds per handshake; rates in RPCs answered per second.
#[derive(Serialize)]
struct Figures {
    peers: u64,
    /// The leader's growth over its `peers` dialled connections, per connection.
    kib_per_idle_connection_dialling: f64,
    /// The followers' mean growth, each over the one connection it accepted.
    kib_per_idle_connection_accepting: f64,
    /// The hub's growth over the `peers` connections it accepted, per connection.
    kib_per_idle_connection_accepting_at_scale: f64,
    /// `peers` handshakes (and a heartbeat on each) dialled at once by the leader.
    handshakes_per_s: u64,
    cpu_us_per_handshake_dialling: f64,
    /// All the followers' CPU over the leader's dials, per handshake.
    cpu_us_per_handshake_accepting: f64,
    /// The hub's CPU over the followers' dials, per handshake.
    cpu_us_per_handshake_accepting_at_scale: f64,
    /// Heartbeats per second, 64 tasks to one follower.
    rpcs_per_s_one_peer: u64,
    /// Heartbeats per second, 64 tasks spread over the `peers` followers.
    rpcs_per_s_all_peers: u64,
    all_vs_one: f64,
    /// The leader's CPU per heartbeat, to one follower. With every node on this machine the
    /// rate to many peers is bound by the followers' wake-ups on the shared cores; the
    /// leader's CPU per RPC is what its own rate would be bound by.
    leader_cpu_us_per_rpc_one_peer: f64,
    /// Likewise, spread over the `peers` followers.
    leader_cpu_us_per_rpc_all_peers: f64,
    /// AppendEntries of 64 x 1 KiB per second, 64 tasks to one follower.
    appends_per_s_one_peer: u64,
    /// Likewise, spread over the `peers` followers.
    appends_per_s_all_peers: u64,
    appends_all_vs_one: f64,
    leader_cpu_us_per_append_one_peer: f64,
    leader_cpu_us_per_append_all_peers: f64,
}

/// One rate measurement.
struct Rate {
    /// RPCs answered per second.
    per_s: u64,
    /// The leader's CPU per RPC answered, in microseconds.
    leader_cpu_us: f64,
}

/// Every node, in the order the samples are kept: the leader, the followers, the hub.
fn everyone<'a>(
    leader: &'a Node,
    followers: &'a [Node],
    hub: &'a Node,
) -> impl Iterator<Item = &'a Node> + Clone {
    std::iter::once(leader).chain(followers).chain([hub])
}

/// `min / median / max (mean)` of `values`, for the log.
fn spread(values: &[f64]) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match (sorted.first(), sorted.last()) {
        (Some(min), Some(max)) => format!(
            "min {min:.0} / median {:.0} / max {max:.0} (mean {:.1})",
            sorted[sorted.len() / 2],
            sorted.iter().sum::<f64>() / sorted.len() as f64
        ),
        _ => "none".to_owned(),
    }
}

/// The CPU each of `nodes` uses while idle, per second, measured over [`SETTLE`].
fn idle_cpu<'a>(nodes: impl Iterator<Item = &'a Node> + Clone) -> Vec<f64> {
    let before: Vec<Sample> = nodes.clone().map(Node::sample).collect();
    let started = Instant::now();
    std::thread::sleep(SETTLE);
    let elapsed = started.elapsed().as_secs_f64();
    nodes
        .zip(before)
        .map(|(node, before)| node.sample().cpu_ns.saturating_sub(before.cpu_ns) as f64 / elapsed)
        .collect()
}

/// One reading of a process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    rss: Rss,
    /// CPU time of all its threads so far.
    cpu_ns: u64,
}

/// A process's resident memory in KiB, from `/proc/PID/status`.
#[derive(Debug, Clone, Copy, Default)]
struct Rss {
    /// `VmRSS`: all of it.
    total: u64,
    /// `RssAnon`: heap, stacks, anonymous mappings.
    anon: u64,
    /// `RssFile`: pages of mapped files (the binary's code and data, shared libraries).
    file: u64,
}

impl Rss {
    /// Of process `pid`; zeros for what cannot be read.
    fn of(pid: u32) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|value| value.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        Self {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

/// What a process grew by between two [`Sample`]s (or the mean of several processes').
struct Growth {
    rss_kib: f64,
    anon_kib: f64,
    file_kib: f64,
    /// CPU used beyond its idle rate.
    cpu_us: f64,
}

impl Growth {
    /// From `before` to `after`, `window` apart, for a process using `idle_ns_per_s` of CPU
    /// when idle.
    fn between(before: &Sample, after: &Sample, idle_ns_per_s: f64, window: Duration) -> Self {
        let kib = |f: fn(&Rss) -> u64| f(&after.rss) as f64 - f(&before.rss) as f64;
        let cpu_ns = after.cpu_ns.saturating_sub(before.cpu_ns) as f64;
        let idle_ns = idle_ns_per_s * window.as_secs_f64();
        Self {
            rss_kib: kib(|rss| rss.total),
            anon_kib: kib(|rss| rss.anon),
            file_kib: kib(|rss| rss.file),
            cpu_us: (cpu_ns - idle_ns).max(0.0) / 1e3,
        }
    }

    /// The mean of `all` (zeros for none).
    fn mean(all: &[Self]) -> Self {
        let n = all.len().max(1) as f64;
        let mean = |f: fn(&Self) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            rss_kib: mean(|g| g.rss_kib),
            anon_kib: mean(|g| g.anon_kib),
            file_kib: mean(|g| g.file_kib),
            cpu_us: mean(|g| g.cpu_us),
        }
    }

    /// `TOTAL = ANON + FILE`, per connection of `connections`, for the log.
    fn per_connection(&self, connections: usize) -> String {
        let n = connections.max(1) as f64;
        format!(
            "{:.1} = {:.1} + {:.1}",
            self.rss_kib / n,
            self.anon_kib / n,
            self.file_kib / n
        )
    }
}

/// The CPU time process `pid` has used, in nanoseconds: the sum of its live threads' run
/// times (the first field of `/proc/PID/task/TID/schedstat`), or, on a kernel without
/// schedstat, `utime + stime` of `/proc/PID/stat` (in 1/100 s).
fn cpu_ns(pid: u32) -> u64 {
    if Path::new("/proc/self/schedstat").exists() {
        return std::fs::read_dir(format!("/proc/{pid}/task"))
            .into_iter()
            .flatten()
            .flatten()
            // A thread that ended since the listing has nothing more to count.
            .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
            .filter_map(|schedstat| schedstat.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name, which is in parentheses and may hold spaces: the
    // state is the first, utime the 12th and stime the 13th (fields 14 and 15 of proc(5)).
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|t| t.parse::<u64>().ok());
    (ticks(11).unwrap_or(0) + ticks(12).unwrap_or(0)) * 10_000_000
}

/// Starts `rpc_node` processes with this run's settings.
struct Launcher {
    binary: PathBuf,
    certs: PathBuf,
    args: Vec<String>,
}

impl Launcher {
    fn new(binary: PathBuf, certs: PathBuf, tuning: Tuning) -> Self {
        let mut args = vec!["--rpc-timeout-ms".to_owned(), RPC_TIMEOUT_MS.to_owned()];
        if let Some(window) = tuning.busy_poll {
            args.extend(["--busy-poll".to_owned(), window.as_micros().to_string()]);
        }
        if let Some(bytes) = tuning.stream_window {
            args.extend(["--stream-window".to_owned(), bytes.to_string()]);
        }
        if let Some(bytes) = tuning.max_udp_payload {
            args.extend(["--max-udp-payload".to_owned(), bytes.to_string()]);
        }
        if let Ok(extra) = std::env::var("QUICRAFT_GROWTH_NODE_ARGS") {
            args.extend(extra.split_whitespace().map(str::to_owned));
        }
        Self {
            binary,
            certs,
            args,
        }
    }

    /// Starts node `id` on a port of its choosing; [`Node::wait_ready`] reads which.
    fn spawn(&self, id: &str) -> Node {
        let mut child = Command::new(&self.binary)
            .args(["--cluster", CLUSTER, "--id", id, "--listen", "127.0.0.1:0"])
            .args(&self.args)
            .arg("--certs")
            .arg(&self.certs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn rpc_node");
        let stdin = child.stdin.take().expect("stdin was piped");
        let lines = BufReader::new(child.stdout.take().expect("stdout was piped")).lines();
        Node {
            id: id.to_owned(),
            addr: None,
            child,
            stdin,
            lines,
        }
    }
}

/// One `rpc_node` process, killed and reaped when dropped.
struct Node {
    id: String,
    /// Where it listens, once it said so.
    addr: Option<SocketAddr>,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    /// Waits for `ready ADDR` and keeps the address.
    fn wait_ready(&mut self) {
        let line = self.line();
        let addr = line
            .strip_prefix("ready ")
            .and_then(|addr| addr.parse().ok())
            .unwrap_or_else(|| panic!("node {} did not start: {line:?}", self.id));
        self.addr = Some(addr);
    }

    fn addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| panic!("node {} is not ready yet", self.id))
    }

    fn sample(&self) -> Sample {
        let pid = self.child.id();
        Sample {
            rss: Rss::of(pid),
            cpu_ns: cpu_ns(pid),
        }
    }

    fn send(&mut self, command: &str) {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .unwrap_or_else(|e| panic!("node {}: write {command:?}: {e}", self.id));
    }

    fn line(&mut self) -> String {
        match self.lines.next() {
            Some(Ok(line)) => line,
            Some(Err(e)) => panic!("node {}: read its output: {e}", self.id),
            None => panic!("node {} exited", self.id),
        }
    }

    /// `command`'s reply, which must start with `ok`; its words after `ok`.
    fn ok(&mut self, command: &str) -> Vec<u64> {
        self.send(command);
        self.expect_ok(command)
    }

    fn expect_ok(&mut self, command: &str) -> Vec<u64> {
        let reply = self.line();
        let words = reply
            .strip_prefix("ok ")
            .map(|rest| rest.split_whitespace().map(str::parse).collect());
        match words {
            Some(Ok(words)) => words,
            _ => panic!("node {}: {command:?} answered {reply:?}", self.id),
        }
    }

    /// The answer to a `dial` sent earlier.
    fn expect_dialled(&mut self) {
        self.expect_ok("dial");
    }

    /// `peers` as `ID ADDR` pairs.
    fn peer_words(peers: &[Node]) -> String {
        peers
            .iter()
            .map(|peer| format!("{} {}", peer.id, peer.addr()))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// One heartbeat to each of `peers`, all at once; how long they took, in microseconds.
    fn dial(&mut self, peers: &[Node]) -> u64 {
        let words = self.ok(&format!("dial {}", Self::peer_words(peers)));
        words.first().copied().expect("ok MICROS")
    }

    /// [`LOAD_TASKS`] tasks sending `kind` for `run`, task `i` to peer `i` mod `peers.len()`.
    fn load(&mut self, run: Duration, kind: &str, peers: &[Node]) -> Rate {
        let command = format!(
            "load {} {LOAD_TASKS} {kind} {}",
            run.as_millis(),
            Self::peer_words(peers)
        );
        let cpu_before = self.sample().cpu_ns;
        let reply = self.ok(&command);
        let cpu_ns = self.sample().cpu_ns.saturating_sub(cpu_before);
        match reply[..] {
            [rpcs, micros] => Rate {
                per_s: (rpcs as f64 * 1e6 / micros.max(1) as f64).round() as u64,
                leader_cpu_us: cpu_ns as f64 / 1e3 / rpcs.max(1) as f64,
            },
            _ => panic!("node {}: {command:?}: expected ok RPCS MICROS", self.id),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // Already gone is fine: what matters is that it is not left running or unreaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The certificates of the nodes in a temporary directory, removed on drop.
struct Certs(PathBuf);

impl Certs {
    fn write(ids: &[String]) -> Self {
        let dir =
            std::env::temp_dir().join(format!("quicraft-bench-growth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let certs = Self(dir);
        let ca = quicraft::tls::ClusterCa::generate(CLUSTER).expect("generate a CA");
        write(&certs.0, "ca.pem", ca.cert_pem());
        for id in ids {
            let node = ca
                .issue_node(id, &quicraft::tls::NodeCertOptions::default())
                .expect("issue a node certificate");
            write(&certs.0, &format!("{id}.pem"), &node.cert_pem);
            write(&certs.0, &format!("{id}.key"), &node.key_pem);
        }
        certs
    }
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) {
    std::fs::write(dir.join(name), contents).unwrap_or_else(|e| panic!("write {name}: {e}"));
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
