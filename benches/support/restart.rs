//! The `restart` scenario: two node processes (`examples/rpc_node.rs`) on 127.0.0.1, one
//! killed with SIGKILL and started again on the same address, again and again; each time, how
//! long the first call takes to succeed, timed by the calling process from when it is asked.
//! Rounds alternate between the restarted node calling first (its first packet is its dial)
//! and the survivor calling first (its first packet goes to the connection of the dead
//! process), with the restarted node holding the larger id and then the smaller.

use std::io::{BufRead, BufReader, Lines, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::report::{Report, latency_histogram, max_us, quantile_us, record};

const CLUSTER: &str = "bench-restart";

/// Runs `rounds` restarts in each id order; one report per order.
pub(crate) fn measure(rounds: u64) -> Vec<Report> {
    let binary = match rpc_node_binary() {
        Ok(binary) => binary,
        Err(why) => {
            eprintln!("restart scenario skipped: {why}");
            return Vec::new();
        }
    };
    let certs = Certs::write();
    [("2", "1"), ("1", "2")]
        .into_iter()
        .map(|(victim, survivor)| order(&binary, &certs.0, victim, survivor, rounds))
        .collect()
}

fn order(binary: &Path, certs: &Path, victim_id: &str, survivor_id: &str, rounds: u64) -> Report {
    let mut survivor = Node::start(binary, certs, survivor_id, free_udp_addr());
    let mut victim = Node::start(binary, certs, victim_id, free_udp_addr());
    survivor.call_ok(&victim);
    victim.call_ok(&survivor);
    let mut restarted_first = latency_histogram();
    let mut survivor_first = latency_histogram();
    let mut second_call = latency_histogram();
    for round in 0..rounds * 2 {
        let (id, addr) = victim.kill();
        victim = Node::start(binary, certs, &id, addr);
        let (first, second, histogram): (&mut Node, &Node, &mut Histogram<u64>) = if round % 2 == 0
        {
            (&mut victim, &survivor, &mut restarted_first)
        } else {
            (&mut survivor, &victim, &mut survivor_first)
        };
        record(histogram, first.call_ok(second));
        // The other direction right after: the connection is up by now.
        let (first, second) = if round % 2 == 0 {
            (&mut survivor, &victim)
        } else {
            (&mut victim, &survivor)
        };
        record(&mut second_call, first.call_ok(second));
    }
    victim.quit();
    survivor.quit();
    let larger = victim_id > survivor_id;
    Report::of(&Restart {
        restarted_id: if larger { "larger" } else { "smaller" },
        rounds,
        restarted_first_p50_us: quantile_us(&restarted_first, 0.5),
        restarted_first_max_us: max_us(&restarted_first),
        survivor_first_p50_us: quantile_us(&survivor_first, 0.5),
        survivor_first_max_us: max_us(&survivor_first),
        other_direction_p50_us: quantile_us(&second_call, 0.5),
        other_direction_max_us: max_us(&second_call),
    })
}

/// The figures of `restart`, for one id order.
#[derive(Serialize)]
struct Restart {
    /// Whether the restarted node's id is the `larger` or the `smaller` of the two.
    restarted_id: &'static str,
    rounds: u64,
    restarted_first_p50_us: f64,
    restarted_first_max_us: f64,
    survivor_first_p50_us: f64,
    survivor_first_max_us: f64,
    other_direction_p50_us: f64,
    other_direction_max_us: f64,
}

/// `rpc_node` built with this benchmark's profile (`cargo bench` does not build examples).
pub(crate) fn rpc_node_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("no target directory")?;
    let binary = profile_dir
        .join("examples")
        .join(format!("rpc_node{}", std::env::consts::EXE_SUFFIX));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    // Cargo describes the running package to it in these; build scripts (ring's) rerun when
    // they change, so passing them on would rebuild ring and all that depends on it here, and
    // again at the next `cargo bench`.
    for (name, _) in std::env::vars_os() {
        let set_for_the_package = name.to_str().is_some_and(|name| {
            name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || matches!(
                    name,
                    "CARGO_CRATE_NAME" | "CARGO_PRIMARY_PACKAGE" | "OUT_DIR"
                )
        });
        if set_for_the_package {
            command.env_remove(name);
        }
    }
    let status = command
        .args([
            "build",
            "--quiet",
            "--profile",
            "bench",
            "--example",
            "rpc_node",
        ])
        .status()
        .map_err(|e| format!("cannot run cargo to build rpc_node: {e}"))?;
    if !status.success() || !binary.exists() {
        return Err(format!(
            "`cargo build --profile bench --example rpc_node` failed ({status}); {} is missing",
            binary.display()
        ));
    }
    Ok(binary)
}

/// The certificates of nodes "1" and "2" in a temporary directory, removed on drop.
struct Certs(PathBuf);

impl Certs {
    fn write() -> Self {
        let dir =
            std::env::temp_dir().join(format!("quicraft-bench-restart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the certificate directory");
        let ca = quicraft::tls::ClusterCa::generate(CLUSTER).expect("generate a CA");
        std::fs::write(dir.join("ca.pem"), ca.cert_pem()).expect("write ca.pem");
        for id in ["1", "2"] {
            let node = ca
                .issue_node(id, &quicraft::tls::NodeCertOptions::default())
                .expect("issue a node certificate");
            std::fs::write(dir.join(format!("{id}.pem")), &node.cert_pem).expect("write cert");
            std::fs::write(dir.join(format!("{id}.key")), &node.key_pem).expect("write key");
        }
        Self(dir)
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Node {
    id: String,
    addr: SocketAddr,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Node {
    fn start(binary: &Path, certs: &Path, id: &str, addr: SocketAddr) -> Self {
        let mut child = Command::new(binary)
            .args([
                "--cluster",
                CLUSTER,
                "--id",
                id,
                "--listen",
                &addr.to_string(),
            ])
            .arg("--certs")
            .arg(certs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn rpc_node");
        let stdin = child.stdin.take().expect("piped stdin");
        let lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        let mut node = Self {
            id: id.to_owned(),
            addr,
            child,
            stdin,
            lines,
        };
        let ready = node.line();
        assert_eq!(ready, format!("ready {addr}"), "node {id} did not start");
        node
    }

    fn line(&mut self) -> String {
        self.lines
            .next()
            .expect("the node exited")
            .expect("read the node's output")
    }

    /// Heartbeats `peer` until one succeeds (at most 30 s: a failure shows as a figure near
    /// the idle timeout rather than a hang); the time it took.
    fn call_ok(&mut self, peer: &Node) -> std::time::Duration {
        writeln!(self.stdin, "call {} {} 30000", peer.id, peer.addr).expect("write a command");
        let reply = self.line();
        let words: Vec<&str> = reply.split_whitespace().collect();
        assert_eq!(words.first(), Some(&"ok"), "node {}: {reply}", self.id);
        let micros = words
            .get(2)
            .and_then(|w| w.parse().ok())
            .expect("ok ATTEMPTS MICROS");
        std::time::Duration::from_micros(micros)
    }

    /// SIGKILL; the id and address to start it again on.
    fn kill(mut self) -> (String, SocketAddr) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap the killed node");
        (self.id.clone(), self.addr)
    }

    fn quit(mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.wait();
    }
}

fn free_udp_addr() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}
