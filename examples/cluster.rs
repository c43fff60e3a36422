//! `cluster`: a replicated key-value store on openraft over quicraft (QUIC, mutual TLS).
//!
//! With no arguments it runs the whole story in one process, on 127.0.0.1, and explains each
//! step with its timing:
//!
//! ```text
//! cargo run --example cluster
//! ```
//!
//! certificates (generated with the library into a temporary directory, or taken from
//! `--certs DIR`), three nodes, an election, writes read back from every node, the leader
//! stopped and a new one elected, and a node brought back with empty storage, far behind,
//! caught up by a snapshot streamed over a QUIC snapshot stream.
//!
//! With `--id` it runs one node of a real cluster, one process per node:
//!
//! ```text
//! cargo run --example certgen -- cluster --cluster demo --nodes 1,2,3     # certs/
//! cargo run --example cluster -- --id 1 --listen 0.0.0.0:7001 --advertise 192.0.2.1:7001 \
//!     --peers 1=192.0.2.1:7001,2=192.0.2.2:7002,3=192.0.2.3:7003 --certs certs \
//!     --client 127.0.0.1:8001
//! ```
//!
//! The node with the lowest id initializes the cluster (once; later starts find it
//! initialized). `--client` serves a line protocol on TCP, one command per line:
//!
//! - `put KEY VALUE`: `OK INDEX` once committed (INDEX is its log index), or
//!   `ERR not leader; leader is node N at ADDR` on a follower;
//! - `get KEY`: `OK VALUE` or `NOT_FOUND`, from this node's state machine (a follower may lag:
//!   `wait INDEX` first to read a write you made);
//! - `wait INDEX`: `OK` once this node has applied INDEX (at most 5 s, else `ERR ...`);
//! - `leader`: `OK N` or `ERR no leader`; `status`: one line of the node's state.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, Config, Raft, RaftMetrics, SnapshotPolicy};
use quicraft::openraft_adapter::mem::{KvRequest, KvStateMachine, KvTypeConfig, MemLogStore};
use quicraft::openraft_adapter::{QuicraftNetworkFactory, serve_raft};
use quicraft::{ClusterCa, NodeCertOptions, QuicConfig, QuicTransport, Transport};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A replicated key-value store on openraft over quicraft (QUIC with mutual TLS).
///
/// Without --id: a 3-node demonstration in this process (election, replication, leader loss,
/// snapshot catch-up). With --id: one node of a cluster spread over processes or hosts.
#[derive(Debug, Parser)]
#[command(name = "cluster")]
struct Cli {
    /// Certificate directory: ca.pem, and <ID>.pem / <ID>.key per node (as `certgen cluster`
    /// writes them). The demonstration generates them into a temporary directory when this
    /// is not given (or into DIR, when DIR has no ca.pem yet).
    #[arg(long, value_name = "DIR")]
    certs: Option<PathBuf>,

    /// Cluster name, the SPIFFE trust domain of the certificates.
    #[arg(long, default_value = "demo")]
    cluster: String,

    /// Run one node with this id (its certificate is <DIR>/<ID>.pem).
    #[arg(long, requires_all = ["listen", "peers", "certs"])]
    id: Option<u64>,

    /// UDP address to listen on (with --id).
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// Address the peers dial (with --id; default: the --listen address).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,

    /// Every member, this node included: id=addr,id=addr,... (with --id).
    #[arg(long, value_name = "ID=ADDR,...", value_parser = parse_peers)]
    peers: Option<Peers>,

    /// TCP address of the line protocol (with --id): put KEY VALUE / get KEY / leader / status.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    client: SocketAddr,
}

#[derive(Debug, Clone)]
struct Peers(BTreeMap<u64, SocketAddr>);

fn parse_peers(text: &str) -> Result<Peers, String> {
    let mut peers = BTreeMap::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("`{part}` is not ID=ADDR"))?;
        let id: u64 = id.parse().map_err(|e| format!("bad id `{id}`: {e}"))?;
        let addr: SocketAddr = addr
            .parse()
            .map_err(|e| format!("bad address `{addr}`: {e}"))?;
        peers.insert(id, addr);
    }
    if peers.is_empty() {
        return Err("no peers".into());
    }
    Ok(Peers(peers))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.id {
            Some(id) => run_node(&cli, id).await,
            None => demo(&cli).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One node
// ---------------------------------------------------------------------------------------------

/// The Raft settings of the demonstration and of node mode: timeouts for a LAN or loopback,
/// and a snapshot every 20 entries with the log purged behind it (so that catch-up by
/// snapshot shows quickly).
fn raft_config(cluster: &str) -> Result<Arc<Config>, BoxError> {
    let config = Config {
        cluster_name: cluster.to_owned(),
        heartbeat_interval: 100,
        election_timeout_min: 400,
        election_timeout_max: 800,
        install_snapshot_timeout: 5_000,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(20),
        max_in_snapshot_log_to_keep: 0,
        purge_batch_size: 1,
        ..Config::default()
    };
    Ok(Arc::new(config.validate()?))
}

struct Node {
    id: u64,
    raft: Raft<KvTypeConfig>,
    state_machine: KvStateMachine,
    transport: QuicTransport,
}

impl Node {
    /// Starts node `id` with empty in-memory storage, its certificate from `certs`.
    async fn start(
        cluster: &str,
        certs: &Path,
        id: u64,
        listen: SocketAddr,
        advertise: Option<SocketAddr>,
    ) -> Result<Self, BoxError> {
        let mut config = QuicConfig::from_pem_files(
            cluster,
            certs.join(format!("{id}.pem")),
            certs.join(format!("{id}.key")),
            certs.join("ca.pem"),
        )?
        .bind(listen)
        .rpc_timeout(Duration::from_secs(2))
        .connect_timeout(Duration::from_secs(2))
        .reconnect_backoff(Duration::from_millis(50), Duration::from_secs(1));
        if let Some(advertise) = advertise {
            config = config.advertise(advertise);
        }
        let (transport, incoming) = QuicTransport::bind(config).await?;
        let network = QuicraftNetworkFactory::<KvTypeConfig, _>::new(transport.clone(), id);
        let local = network.local_header();
        let state_machine = KvStateMachine::default();
        let raft = Raft::new(
            id,
            raft_config(cluster)?,
            network,
            MemLogStore::default(),
            state_machine.clone(),
        )
        .await?;
        tokio::spawn(serve_raft(raft.clone(), incoming, local));
        Ok(Self {
            id,
            raft,
            state_machine,
            transport,
        })
    }

    fn addr(&self) -> SocketAddr {
        self.transport.local_socket_addr()
    }

    fn metrics(&self) -> RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
    }

    async fn stop(&self) -> Result<(), BoxError> {
        self.raft.shutdown().await?;
        self.transport.close().await;
        Ok(())
    }

    /// Writes `key = value` through this node, which must be the leader.
    async fn put(&self, key: &str, value: &str) -> Result<u64, BoxError> {
        let request = KvRequest::Put {
            key: key.to_owned(),
            value: value.to_owned(),
        };
        let written =
            tokio::time::timeout(Duration::from_secs(10), self.raft.client_write(request))
                .await
                .map_err(|_| "write timed out")??;
        Ok(written.log_id.index)
    }

    /// Waits until the metrics satisfy `done`, printing a progress line every second.
    async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&RaftMetrics<u64, BasicNode>) -> bool,
    ) -> Result<RaftMetrics<u64, BasicNode>, BoxError> {
        let started = Instant::now();
        let mut metrics = self.raft.metrics();
        let mut progress = tokio::time::interval(Duration::from_secs(1));
        progress.tick().await;
        loop {
            {
                let now = metrics.borrow_and_update();
                if done(&now) {
                    return Ok(now.clone());
                }
            }
            if started.elapsed() > Duration::from_secs(30) {
                return Err(format!("node {}: gave up waiting for {what}", self.id).into());
            }
            tokio::select! {
                changed = metrics.changed() => changed.map_err(|_| "raft stopped")?,
                _ = progress.tick() => {
                    let m = metrics.borrow();
                    println!(
                        "           ... node {} still waiting for {what} ({:.1}s: {:?}, term {}, applied {})",
                        self.id, started.elapsed().as_secs_f64(), m.state, m.current_term,
                        m.last_applied.map_or(0, |l| l.index),
                    );
                }
            }
        }
    }
}

async fn run_node(cli: &Cli, id: u64) -> Result<(), BoxError> {
    let (Some(listen), Some(Peers(peers)), Some(certs)) = (cli.listen, &cli.peers, &cli.certs)
    else {
        return Err("--id needs --listen, --peers and --certs".into());
    };
    if !peers.contains_key(&id) {
        return Err(format!("--peers does not list node {id} itself").into());
    }
    let node = Node::start(&cli.cluster, certs, id, listen, cli.advertise).await?;
    let client = TcpListener::bind(cli.client).await?;
    println!(
        "node {id} listening on {} (QUIC), client protocol on {} (TCP)",
        node.addr(),
        client.local_addr()?
    );

    if peers.keys().next() == Some(&id) {
        let members: BTreeMap<u64, BasicNode> = peers
            .iter()
            .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
            .collect();
        match node.raft.initialize(members).await {
            Ok(()) => println!(
                "node {id} initialized the cluster with {} members",
                peers.len()
            ),
            Err(RaftError::APIError(e)) => println!("node {id}: cluster already initialized ({e})"),
            Err(e) => return Err(e.into()),
        }
    }

    let node = Arc::new(node);
    let mut leader_watch = node.raft.metrics();
    let mut last_leader = None;
    loop {
        tokio::select! {
            accepted = client.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(serve_client(node.clone(), stream));
            }
            changed = leader_watch.changed() => {
                changed.map_err(|_| "raft stopped")?;
                let leader = leader_watch.borrow_and_update().current_leader;
                if leader != last_leader {
                    if let Some(leader) = leader {
                        println!("node {id}: leader is node {leader}");
                    }
                    last_leader = leader;
                }
            }
            _ = tokio::signal::ctrl_c() => {
                println!("node {id} stopping");
                node.stop().await?;
                return Ok(());
            }
        }
    }
}

/// Serves the line protocol on one client connection.
async fn serve_client(node: Arc<Node>, stream: TcpStream) {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let answer = answer_line(&node, line.trim()).await;
        if write
            .write_all(format!("{answer}\n").as_bytes())
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn answer_line(node: &Node, line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("put"), Some(key), Some(value)) => {
            let request = KvRequest::Put {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            match node.raft.client_write(request).await {
                Ok(written) => format!("OK {}", written.log_id.index),
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                    match (forward.leader_id, forward.leader_node) {
                        (Some(id), Some(n)) => {
                            format!("ERR not leader; leader is node {id} at {}", n.addr)
                        }
                        _ => "ERR not leader; no leader known yet".to_owned(),
                    }
                }
                Err(e) => format!("ERR {e}"),
            }
        }
        (Some("get"), Some(key), None) => match node.state_machine.get(key) {
            Some(value) => format!("OK {value}"),
            None => "NOT_FOUND".to_owned(),
        },
        (Some("wait"), Some(index), None) => {
            let Ok(index) = index.parse::<u64>() else {
                return "ERR usage: wait INDEX".to_owned();
            };
            let waited = node
                .raft
                .wait(Some(Duration::from_secs(5)))
                .applied_index_at_least(Some(index), "client wait")
                .await;
            match waited {
                Ok(_) => "OK".to_owned(),
                Err(e) => format!("ERR {e}"),
            }
        }
        (Some("leader"), None, None) => match node.metrics().current_leader {
            Some(id) => format!("OK {id}"),
            None => "ERR no leader".to_owned(),
        },
        (Some("status"), None, None) => {
            let m = node.metrics();
            format!(
                "OK node {} {:?} term {} leader {:?} applied {} keys {}",
                m.id,
                m.state,
                m.current_term,
                m.current_leader,
                m.last_applied.map_or(0, |l| l.index),
                node.state_machine.entries().len()
            )
        }
        _ => "ERR usage: put KEY VALUE | get KEY | wait INDEX | leader | status".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// The demonstration
// ---------------------------------------------------------------------------------------------

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

async fn demo(cli: &Cli) -> Result<(), BoxError> {
    let mut clock = Clock::new();
    println!("quicraft cluster demo: openraft over QUIC with mutual TLS, 3 nodes on 127.0.0.1\n");

    // 1. Certificates.
    let (certs, temporary) = match &cli.certs {
        Some(dir) if dir.join("ca.pem").exists() => (dir.clone(), false),
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("quicraft-demo-{}", std::process::id())),
            true,
        ),
    };
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
    let result = scenario(cli, &certs, &mut clock).await;
    if temporary {
        let _ = fs::remove_dir_all(&certs);
    }
    result?;
    println!(
        "\ndone in {:.2}s: election, replication, leader loss and snapshot catch-up, all over QUIC + mTLS",
        clock.start.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn scenario(cli: &Cli, certs: &Path, clock: &mut Clock) -> Result<(), BoxError> {
    let any_port: SocketAddr = "127.0.0.1:0".parse()?;

    // 2. Nodes.
    clock.begin("starting nodes 1, 2, 3 (one QUIC endpoint each, in-memory log and state machine)");
    let mut nodes = Vec::new();
    for id in 1..=3 {
        nodes.push(Node::start(&cli.cluster, certs, id, any_port, None).await?);
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
    clock.begin("writing 10 keys through the leader");
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
        let found = (0..10)
            .filter(|i| node.state_machine.get(&format!("key{i}")) == Some(format!("value{i}")))
            .count();
        println!(
            "           node {}: {found}/10 keys, key9 = {:?}",
            node.id,
            node.state_machine.get("key9").unwrap_or_default()
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
    old.stop().await?;
    clock.done(format!(
        "node {leader_id} stopped; its storage is gone with it"
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

    // 6. Snapshot and log compaction.
    clock.begin("writing 50 more keys: the leader snapshots every 20 entries and purges its log");
    let leader = leader_of(&nodes, new_leader)?;
    for i in 10..60 {
        last = leader.put(&format!("key{i}"), &format!("value{i}")).await?;
    }
    let m = leader
        .wait_until("the log purge", |m| {
            m.purged.is_some() && m.snapshot.is_some()
        })
        .await?;
    clock.done(format!(
        "log at index {last}; snapshot up to index {}, {} bytes; log purged up to index {}",
        m.snapshot.map_or(0, |l| l.index),
        leader.state_machine.snapshot_size().unwrap_or(0),
        m.purged.map_or(0, |l| l.index),
    ));

    // 7. Catch-up by snapshot.
    clock.begin(&format!(
        "bringing node {leader_id} back at {old_addr} with empty storage (entries 1..{} are purged everywhere)",
        m.purged.map_or(0, |l| l.index)
    ));
    let back = Node::start(&cli.cluster, certs, leader_id, old_addr, None).await?;
    let m = back
        .wait_until("catch-up", |m| {
            m.snapshot.is_some() && m.last_applied.is_some_and(|l| l.index >= last)
        })
        .await?;
    let keys = back.state_machine.entries().len();
    clock.done(format!(
        "node {leader_id} installed a snapshot ({} received, {} bytes, up to index {}) over a QUIC snapshot stream, then the log after it: applied {}, {keys}/60 keys, key59 = {:?}",
        back.state_machine.snapshots_installed(),
        back.state_machine.snapshot_size().unwrap_or(0),
        m.snapshot.map_or(0, |l| l.index),
        m.last_applied.map_or(0, |l| l.index),
        back.state_machine.get("key59").unwrap_or_default(),
    ));
    if keys != 60 || back.state_machine.snapshots_installed() == 0 {
        return Err(format!("node {leader_id} did not catch up by snapshot ({keys} keys)").into());
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
