//! The one fixture factory for certificates and nodes used by the integration tests.

#![allow(dead_code, unreachable_pub)]

pub mod cluster;
pub mod logs;
pub mod netns;
pub mod pattern;
pub mod rpc_node;
pub mod tls;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use quicraft::tls::{ClusterCa, GeneratedNode, NodeCertOptions};
use quicraft::{
    Identity, Incoming, InstallSnapshotRequest, QuicConfig, QuicTransport, RequestVoteRequest,
    RpcHeader, Transport, TransportStats,
};

/// A cluster CA and the nodes it certifies, all on 127.0.0.1 with test-sized timeouts.
pub struct Fixture {
    pub ca: ClusterCa,
}

impl Fixture {
    /// A fresh CA for `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            ca: ClusterCa::generate(cluster).expect("generate CA"),
        }
    }

    pub fn cluster(&self) -> &str {
        self.ca.cluster()
    }

    /// A certificate for `node` with the default options (valid now, localhost SANs).
    pub fn issue(&self, node: &str) -> GeneratedNode {
        self.issue_with(node, &NodeCertOptions::default())
    }

    pub fn issue_with(&self, node: &str, options: &NodeCertOptions) -> GeneratedNode {
        self.ca
            .issue_node(node, options)
            .expect("issue node certificate")
    }

    /// A certificate for `node` of `cluster`, signed by this fixture's CA (whose own cluster
    /// may be another): the same CA, loaded for `cluster`, issues it.
    pub fn issue_of_cluster(&self, cluster: &str, node: &str) -> GeneratedNode {
        ClusterCa::from_pem(self.ca.cert_pem(), &self.ca.key_pem(), cluster)
            .expect("load the CA for another cluster")
            .issue_node(node, &NodeCertOptions::default())
            .expect("issue node certificate")
    }

    pub fn identity(&self, node: &str) -> Identity {
        self.issue(node).identity
    }

    /// A config for `node` bound to 127.0.0.1:0, with timeouts short enough for tests.
    pub fn config(&self, node: &str) -> QuicConfig {
        self.config_for(self.identity(node))
    }

    pub fn config_for(&self, identity: Identity) -> QuicConfig {
        QuicConfig::new(self.cluster(), identity, self.ca.roots())
            .bind("127.0.0.1:0".parse().expect("address"))
            .rpc_timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(2))
            .reconnect_backoff(Duration::from_millis(50), Duration::from_millis(500))
    }

    /// A started node.
    pub async fn node(&self, node: &str) -> (QuicTransport, Incoming) {
        QuicTransport::bind(self.config(node))
            .await
            .expect("bind node")
    }
}

/// Waits for `fut` at most `limit`, so a broken transport fails the test instead of hanging it.
pub async fn within<F: Future>(limit: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(limit, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what} did not finish within {limit:?}"),
    }
}

/// The header of the RPCs `node` sends.
pub fn header(node: &QuicTransport) -> RpcHeader {
    RpcHeader::new(node.local_id().clone(), node.local_addr())
}

/// A RequestVote from `node` at `term` (its last log entry at index 1, term 1).
pub fn vote_from(node: &QuicTransport, term: u64) -> RequestVoteRequest {
    RequestVoteRequest {
        header: header(node),
        term,
        last_log_index: 1,
        last_log_term: 1,
        leadership_transfer: false,
    }
}

/// An InstallSnapshot of `size` bytes from `node` (term 3, up to index 1000).
pub fn snapshot_request(node: &QuicTransport, size: u64) -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: header(node),
        snapshot_version: 1,
        term: 3,
        last_log_index: 1000,
        last_log_term: 3,
        configuration: Default::default(),
        configuration_index: 1,
        size,
    }
}

/// Waits at most `limit` until `node`'s stats satisfy `cond` (polling: they have no change
/// notification), and returns them.
pub async fn stats_until(
    limit: Duration,
    node: &QuicTransport,
    what: &str,
    cond: impl Fn(&TransportStats) -> bool,
) -> TransportStats {
    within(limit, what, async {
        loop {
            let stats = node.stats();
            if cond(&stats) {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    /// A new, empty directory whose name starts with `prefix` and is unique to this process.
    pub fn new(prefix: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{prefix}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temporary directory");
        Self(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Fixture {
    /// Writes `ca.pem` and `ID.pem` + `ID.key` for each of `nodes` into `dir`: the layout
    /// of `certgen` that the example binaries read with `--certs`.
    pub fn write_certs(&self, dir: &std::path::Path, nodes: &[&str]) {
        std::fs::write(dir.join("ca.pem"), self.ca.cert_pem()).expect("write ca.pem");
        for node in nodes {
            let issued = self.issue(node);
            std::fs::write(dir.join(format!("{node}.pem")), &issued.cert_pem).expect("write cert");
            std::fs::write(dir.join(format!("{node}.key")), &issued.key_pem).expect("write key");
        }
    }
}

/// An example binary, built by `cargo test` next to the test binaries.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/<profile>/deps");
    let path = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is missing: build it with `cargo build --example {name}`",
        path.display()
    );
    path
}

/// A free UDP port on 127.0.0.1 (released again, for a node process to bind).
pub fn free_udp_addr() -> std::net::SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("free UDP port")
}

/// This process's peak resident set since start or the last [`reset_peak_rss`], in MiB (0
/// where `/proc` does not tell).
pub fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024)
}

/// Starts a new peak for [`peak_rss_mib`] (Linux `clear_refs`).
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}
