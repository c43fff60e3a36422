//! `cluster`: a replicated key-value store on openraft over quicraft (QUIC, mutual TLS), with
//! durable storage (redb) in a data directory per node.
//!
//! With no arguments it runs the whole story in one process, on 127.0.0.1, and explains each
//! step with its timing:
//!
//! ```text
//! cargo run --example cluster
//! ```
//!
//! certificates (generated with the library into a temporary directory, or taken from
//! `--certs DIR`), three nodes on durable storage, an election, writes read back from every
//! node, the leader stopped and a new one elected, snapshots by log size, and the old leader
//! restarted on its data directory, resuming with its vote and log, caught up by a snapshot
//! streamed over a QUIC snapshot stream.
//!
//! With `--id` it runs one node of a real cluster, one process per node:
//!
//! ```text
//! cargo run --example certgen -- cluster --cluster demo --nodes 1,2,3     # certs/
//! cargo run --example cluster -- --id 1 --listen 0.0.0.0:7001 \
//!     --peers 1=192.0.2.1:7001,2=192.0.2.2:7001,3=192.0.2.3:7001 --certs certs \
//!     --client 127.0.0.1:8001 --data-dir /var/lib/quicraft/node-1
//! ```
//!
//! The node with the lowest id founds the cluster, once: when its data directory is empty and
//! every other member answers with empty storage. A node restarted on its data directory
//! resumes; a node whose data is gone refuses to rejoin under its old id (see the README).
//! `--client` serves a line protocol on TCP, one command per line:
//!
//! - `put KEY VALUE`: `OK INDEX` once committed (INDEX is its log index), or
//!   `ERR not leader; leader is node N at ADDR` on a follower, or `ERR ...` when it could not
//!   be committed within 5 s;
//! - `get KEY`: `OK VALUE` or `NOT_FOUND`, from this node's state machine (a follower may lag);
//! - `lget KEY`: the same, linearizable: the leader confirms with a quorum that it still
//!   leads and this node has applied everything committed before answering;
//! - `wait INDEX`: `OK` once this node has applied INDEX (at most 5 s, else `ERR ...`);
//! - `leader`: `OK N` or `ERR no leader`; `status`: one line of the node's state;
//! - `add ID ADDR`, `remove ID` (on the leader): membership changes.
//!
//! `--metrics ADDR` serves the transport's metrics (per peer: RPCs by kind and outcome,
//! latencies, bytes, path RTT, loss, congestion window and MTU, ...) as Prometheus text at
//! `http://ADDR/metrics`; the README lists them.

mod demo;
mod node;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use openraft::error::{CheckIsLeaderError, ClientWriteError, ForwardToLeader, RaftError};
use openraft::{BasicNode, ChangeMembers};
use quicraft::ServerId;
use quicraft::openraft_adapter::durable::DurableStore;
use quicraft::openraft_adapter::mem::KvRequest;
use quicraft::openraft_adapter::{JoinGuard, PeerState, Refusal, probe_peer};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use node::{Node, Start};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a `put`, `lget` or membership change may wait for a quorum.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A replicated key-value store on openraft over quicraft (QUIC with mutual TLS), on durable
/// storage.
///
/// Without --id: a 3-node demonstration in this process (election, replication, leader loss,
/// snapshots, restart on the data directory). With --id: one node of a cluster spread over
/// processes or hosts.
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

    /// UDP address to listen on (with --id). Its own entry in --peers, or a wildcard
    /// (0.0.0.0 or [::]) with that entry's port.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,

    /// The address the others dial, when it is not the --listen address (behind NAT, or with
    /// a wildcard --listen): must be this node's entry in --peers (default: that entry).
    #[arg(long, value_name = "ADDR")]
    advertise: Option<SocketAddr>,

    /// Every founding member, this node included: id=addr,id=addr,... (with --id). IPv6
    /// addresses in brackets: 1=[2001:db8::1]:7001.
    #[arg(long, value_name = "ID=ADDR,...", value_parser = parse_peers)]
    peers: Option<Peers>,

    /// TCP address of the line protocol (with --id): put KEY VALUE / get KEY / lget KEY /
    /// wait INDEX / leader / status / add ID ADDR / remove ID.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:0")]
    client: SocketAddr,

    /// Where this node keeps its Raft state (with --id; default: ./quicraft-data/node-<ID>).
    /// Keep it across restarts: a node whose data is lost cannot rejoin under its old id.
    /// The demonstration uses a temporary directory unless this is given.
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Start as a new member that the leader adds with `add ID ADDR` (with --id), not as a
    /// founding member: the node accepts the cluster's data although its storage is empty.
    #[arg(long)]
    join: bool,

    /// Serve the transport's metrics (per peer: RPCs by kind and outcome, latencies, bytes,
    /// path RTT, loss, congestion window and MTU, ...) as Prometheus text at
    /// http://ADDR/metrics. The names are listed in the README.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<SocketAddr>,

    /// Snapshot when the log has grown by this many bytes since the last one.
    #[arg(long, value_name = "BYTES", default_value_t = 8 * 1024 * 1024)]
    snapshot_bytes: u64,
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
        let addr: SocketAddr = addr.parse().map_err(|e| {
            format!("bad address `{addr}`: {e} (IPv6 goes in brackets: [2001:db8::1]:7001)")
        })?;
        peers.insert(id, addr);
    }
    if peers.is_empty() {
        return Err("no peers".into());
    }
    Ok(Peers(peers))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The default level shows what an operator must act on: quicraft's warnings (a peer
    // refused, a certificate problem) and this program's own messages. openraft reports
    // every failed RPC to an unreachable peer as an error, several times a second, so its
    // engine log is off unless asked for: RUST_LOG=info,openraft=info shows both.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        if let Some(addr) = cli.metrics {
            serve_metrics(addr)?;
        }
        match cli.id {
            Some(id) => run_node(&cli, id).await,
            None => demo::demo(&cli).await,
        }
    });
    // Do not wait for blocking storage tasks of a node that is going away.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs a Prometheus recorder for the `metrics` facade, before any node starts (so the
/// transport's handles register with it), and serves its text at http://ADDR/metrics.
fn serve_metrics(addr: SocketAddr) -> Result<(), BoxError> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    // Latency buckets from 50 us (a loopback round trip) to 10 s (an RPC timeout): real
    // histograms, which Prometheus can aggregate over nodes (quantile summaries cannot be).
    const SECONDS: [f64; 16] = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 10.0,
    ];
    let (recorder, exporter) = PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS)?
        .build()
        .map_err(|e| format!("cannot serve metrics on {addr} (--metrics): {e}"))?;
    metrics::set_global_recorder(recorder)
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::warn!("the metrics listener on {addr} stopped: {e:?}");
        }
    });
    println!("metrics at http://{addr}/metrics (Prometheus text)");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One node
// ---------------------------------------------------------------------------------------------

/// Checks `--listen` and `--advertise` against the node's own `--peers` entry, and the
/// address families; returns the address to advertise.
fn check_addresses(
    id: u64,
    listen: SocketAddr,
    advertise: Option<SocketAddr>,
    peers: &BTreeMap<u64, SocketAddr>,
) -> Result<SocketAddr, BoxError> {
    let Some(&own) = peers.get(&id) else {
        return Err(format!("--peers does not list node {id} itself").into());
    };
    match advertise {
        Some(advertise) if advertise != own => {
            return Err(format!(
                "--advertise {advertise} is not node {id}'s entry in --peers ({own}): the others dial the --peers address"
            )
            .into());
        }
        Some(_) => {}
        None if listen == own => {}
        None if listen.ip().is_unspecified() && listen.port() == own.port() => {}
        None => {
            return Err(format!(
                "--listen {listen} is not node {id}'s entry in --peers ({own}): the others dial {own}, so listen there \
                 (or on {} with its port), or give --advertise {own} if this host is reached through that address",
                if own.is_ipv4() { "0.0.0.0" } else { "[::]" }
            )
            .into());
        }
    }
    let family = |a: &SocketAddr| if a.is_ipv4() { "IPv4" } else { "IPv6" };
    if let Some((other, addr)) = peers
        .iter()
        .find(|(_, addr)| addr.is_ipv4() != listen.is_ipv4())
    {
        return Err(format!(
            "--listen {listen} is {} but node {other} is at {addr} ({}): a socket of one family cannot reach the other; \
             listen on an {} address (e.g. {}:{}), or list the peers by their {} addresses",
            family(&listen),
            family(addr),
            family(addr),
            if addr.is_ipv4() { "0.0.0.0" } else { "[::]" },
            listen.port(),
            family(&listen),
        )
        .into());
    }
    Ok(own)
}

fn lost_data_error(id: u64, dir: &Path, detail: &str) -> BoxError {
    format!(
        "node {id} has no Raft data in {dir}, but its cluster already exists ({detail}).\n\
         A node whose data is lost must not rejoin under its old id: it could vote twice in a term, or help elect a \
         leader that lacks writes the cluster acknowledged.\n\
         To bring this host back, make it a new member:\n\
         1. on the leader's client port: `remove {id}`\n\
         2. issue a certificate for a new id, e.g. 4 (`cargo run --example certgen -- node --id 4 ...`)\n\
         3. start it with `--id 4 --join --peers <the members and 4=ADDR> --data-dir <an empty directory>`\n\
         4. on the leader: `add 4 ADDR` (it becomes a voter once it has caught up).\n\
         If you deleted every node's data on purpose to start over, delete all of their data directories and start \
         them all again.",
        dir = dir.display()
    )
    .into()
}

async fn run_node(cli: &Cli, id: u64) -> Result<(), BoxError> {
    let (Some(listen), Some(Peers(peers)), Some(certs)) = (cli.listen, &cli.peers, &cli.certs)
    else {
        return Err("--id needs --listen, --peers and --certs".into());
    };
    let own = check_addresses(id, listen, cli.advertise, peers)?;
    let data_dir = cli
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("quicraft-data").join(format!("node-{id}")));
    let store = {
        let (dir, cluster) = (data_dir.clone(), cli.cluster.clone());
        // Blocking: redb checks its files after an unclean stop.
        tokio::task::spawn_blocking(move || DurableStore::open(&dir, id, &cluster)).await??
    };
    let data_dir = std::fs::canonicalize(&data_dir).unwrap_or(data_dir);
    let fresh = store.is_fresh();
    let initializer = *peers.keys().next().ok_or("no peers")?;
    let guard = if fresh && !cli.join {
        JoinGuard::fresh(ServerId::from(initializer.to_string()))
    } else {
        JoinGuard::member()
    };
    let client = TcpListener::bind(cli.client).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::AddrInUse => format!(
            "TCP address {} (--client) is already in use: another process, maybe an earlier node, holds it",
            cli.client
        ),
        _ => format!("cannot listen on {} (--client): {e}", cli.client),
    })?;
    let node = Node::start(Start {
        cluster: &cli.cluster,
        certs,
        id,
        listen,
        advertise: Some(own),
        store,
        guard: guard.clone(),
        snapshot_bytes: cli.snapshot_bytes,
    })
    .await?;
    println!("node {id} data directory: {}", data_dir.display());
    println!(
        "node {id} listening on {} (QUIC), client protocol on {} (TCP)",
        node.addr(),
        client.local_addr()?
    );
    let m = node.metrics();
    if !fresh {
        println!(
            "node {id} resumed: term {}, log up to index {}, applied {}",
            m.current_term,
            m.last_log_index.unwrap_or(0),
            m.last_applied.map_or(0, |l| l.index)
        );
    } else if cli.join {
        println!("node {id} has no data yet: waiting for the leader to add it (`add {id} {own}`)");
    } else if id == initializer {
        found(&node, peers, &data_dir).await?;
    } else {
        println!("node {id} has no data yet: waiting for node {initializer} to found the cluster");
        tokio::spawn(watch_for_existing_cluster(
            node.transport.clone(),
            guard.clone(),
            id,
            peers.clone(),
        ));
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
                if changed.is_err() {
                    return Err(format!("node {id}: the Raft engine stopped (see the log above); restart the node").into());
                }
                let leader = leader_watch.borrow_and_update().current_leader;
                if leader != last_leader {
                    if let Some(leader) = leader {
                        println!("node {id}: leader is node {leader}");
                    }
                    last_leader = leader;
                }
            }
            refusal = guard.refused() => {
                let _ = node.stop().await;
                return Err(lost_data_error(id, &data_dir, &refused_detail(&refusal)));
            }
            _ = tokio::signal::ctrl_c() => {
                println!("node {id} stopping");
                node.stop().await?;
                return Ok(());
            }
        }
    }
}

fn refused_detail(refusal: &Refusal) -> String {
    format!("{refusal}")
}

/// Founds a new cluster from the initializer: only once every other member answered and none
/// has Raft state; refuses when one has (then this node is the one that lost its data).
async fn found(
    node: &Node,
    peers: &BTreeMap<u64, SocketAddr>,
    data_dir: &Path,
) -> Result<(), BoxError> {
    let id = node.id;
    let network = quicraft::openraft_adapter::QuicraftNetworkFactory::<
        quicraft::openraft_adapter::durable::DurableKvConfig,
        _,
    >::new(node.transport.clone(), id);
    let local = network.local_header();
    let mut told = BTreeSet::new();
    loop {
        let mut missing = BTreeSet::new();
        for (&peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
            let server_id = ServerId::from(peer.to_string());
            let server_addr = quicraft::ServerAddress::from(addr.to_string().as_str());
            let probe = probe_peer(&node.transport, local.clone(), id, &server_id, &server_addr);
            match tokio::time::timeout(Duration::from_secs(1), probe).await {
                Ok(Ok(state)) if state.has_history() => {
                    return Err(lost_data_error(
                        id,
                        data_dir,
                        &format!("node {peer} answered with {}", describe(&state)),
                    ));
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::debug!(peer, error = %e, "probe failed");
                    missing.insert(peer);
                }
                Err(_) => {
                    missing.insert(peer);
                }
            }
        }
        if missing.is_empty() {
            break;
        }
        if missing != told {
            let list: Vec<String> = missing.iter().map(u64::to_string).collect();
            println!(
                "node {id}: waiting for node(s) {} to answer before founding a new cluster (every member must be up, with empty storage)",
                list.join(", ")
            );
            told = missing;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let members: BTreeMap<u64, BasicNode> = peers
        .iter()
        .map(|(id, addr)| (*id, BasicNode::new(addr.to_string())))
        .collect();
    node.raft.initialize(members).await?;
    node.store.set_initialized()?;
    println!(
        "node {id} founded a new cluster with {} members",
        peers.len()
    );
    Ok(())
}

/// While this fresh node waits to be founded, probes its peers: one with Raft state means the
/// cluster exists without this node's data, and the guard refuses at once (rather than when a
/// leader first reaches this node). Ends once the node is founded or refused.
async fn watch_for_existing_cluster(
    transport: quicraft::QuicTransport,
    guard: JoinGuard,
    id: u64,
    peers: BTreeMap<u64, SocketAddr>,
) {
    let network = quicraft::openraft_adapter::QuicraftNetworkFactory::<
        quicraft::openraft_adapter::durable::DurableKvConfig,
        _,
    >::new(transport.clone(), id);
    let local = network.local_header();
    while guard.is_undecided() {
        for (&peer, addr) in peers.iter().filter(|(p, _)| **p != id) {
            let server_id = ServerId::from(peer.to_string());
            let server_addr = quicraft::ServerAddress::from(addr.to_string().as_str());
            let probe = probe_peer(&transport, local.clone(), id, &server_id, &server_addr);
            if let Ok(Ok(state)) = tokio::time::timeout(Duration::from_secs(1), probe).await
                && guard.note_peer(&server_id, state)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn describe(state: &PeerState) -> String {
    state.to_string()
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

fn not_leader(forward: &ForwardToLeader<u64, BasicNode>) -> String {
    match (forward.leader_id, &forward.leader_node) {
        (Some(id), Some(n)) => format!("ERR not leader; leader is node {id} at {}", n.addr),
        _ => "ERR not leader; no leader known yet".to_owned(),
    }
}

/// An openraft error in words for a client: never a Rust debug dump, never just "panicked".
fn raft_failure<E: std::fmt::Display>(error: RaftError<u64, E>) -> String {
    match error {
        RaftError::APIError(e) => format!("ERR {e}"),
        RaftError::Fatal(e) => format!(
            "ERR this node's Raft engine stopped ({e}); the node is exiting: restart it on its data directory"
        ),
    }
}

fn timed_out(node: &Node, what: &str) -> String {
    let m = node.metrics();
    format!(
        "ERR {what} timed out after {} s: this node (term {}, {}) cannot reach a majority; \
         a write may still commit later: check with `lget` before retrying",
        WRITE_TIMEOUT.as_secs(),
        m.current_term,
        match m.current_leader {
            Some(l) if l == node.id => "leader".to_owned(),
            Some(l) => format!("leader node {l}"),
            None => "no leader".to_owned(),
        }
    )
}

async fn answer_line(node: &Node, line: &str) -> String {
    let mut words = line.splitn(3, ' ');
    match (words.next(), words.next(), words.next()) {
        (Some("put"), Some(key), Some(value)) => {
            let request = KvRequest::Put {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            match tokio::time::timeout(WRITE_TIMEOUT, node.raft.client_write(request)).await {
                Err(_) => timed_out(node, "the write"),
                Ok(Ok(written)) => format!("OK {}", written.log_id.index),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                    not_leader(&forward)
                }
                Ok(Err(e)) => raft_failure(e),
            }
        }
        (Some("get"), Some(key), None) => read(node, key),
        (Some("lget"), Some(key), None) => {
            match tokio::time::timeout(WRITE_TIMEOUT, node.raft.ensure_linearizable()).await {
                Err(_) => timed_out(node, "the read"),
                Ok(Ok(_)) => read(node, key),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(forward)))) => {
                    not_leader(&forward)
                }
                Ok(Err(e)) => raft_failure(e),
            }
        }
        (Some("wait"), Some(index), None) => {
            let Ok(index) = index.parse::<u64>() else {
                return "ERR usage: wait INDEX".to_owned();
            };
            let waited = node
                .raft
                .wait(Some(WRITE_TIMEOUT))
                .applied_index_at_least(Some(index), "client wait")
                .await;
            match waited {
                Ok(_) => "OK".to_owned(),
                Err(_) => format!(
                    "ERR index {index} not applied within {} s (applied up to {})",
                    WRITE_TIMEOUT.as_secs(),
                    node.metrics().last_applied.map_or(0, |l| l.index)
                ),
            }
        }
        (Some("leader"), None, None) => match node.metrics().current_leader {
            Some(id) => format!("OK {id}"),
            None => "ERR no leader".to_owned(),
        },
        (Some("status"), None, None) => {
            let m = node.metrics();
            let keys = node
                .state_machine
                .len()
                .map_or_else(|e| format!("unknown ({e})"), |n| n.to_string());
            format!(
                "OK node {} {:?} term {} leader {} applied {} keys {}",
                m.id,
                m.state,
                m.current_term,
                m.current_leader
                    .map_or_else(|| "none".to_owned(), |l| l.to_string()),
                m.last_applied.map_or(0, |l| l.index),
                keys
            )
        }
        (Some("add"), Some(id), Some(addr)) => {
            let Ok(id) = id.parse::<u64>() else {
                return "ERR usage: add ID ADDR".to_owned();
            };
            add_member(node, id, addr).await
        }
        (Some("remove"), Some(id), None) => {
            let Ok(id) = id.parse::<u64>() else {
                return "ERR usage: remove ID".to_owned();
            };
            change_members(node, ChangeMembers::RemoveVoters(BTreeSet::from([id]))).await
        }
        _ => "ERR usage: put KEY VALUE | get KEY | lget KEY | wait INDEX | leader | status | add ID ADDR | remove ID"
            .to_owned(),
    }
}

fn read(node: &Node, key: &str) -> String {
    match node.get(key) {
        Ok(Some(value)) => format!("OK {value}"),
        Ok(None) => "NOT_FOUND".to_owned(),
        Err(e) => format!("ERR cannot read this node's storage: {e}"),
    }
}

/// Adds node `id` at `addr`: as a learner, caught up, then as a voter.
async fn add_member(node: &Node, id: u64, addr: &str) -> String {
    if addr.parse::<SocketAddr>().is_err() {
        return format!("ERR `{addr}` is not an address (HOST:PORT)");
    }
    let added = tokio::time::timeout(
        Duration::from_secs(60),
        node.raft.add_learner(id, BasicNode::new(addr), true),
    )
    .await;
    match added {
        Err(_) => {
            return format!(
                "ERR node {id} did not catch up within 60 s: is it running with --join?"
            );
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            return not_leader(&forward);
        }
        Ok(Err(e)) => return raft_failure(e),
        Ok(Ok(_)) => {}
    }
    change_members(node, ChangeMembers::AddVoterIds(BTreeSet::from([id]))).await
}

async fn change_members(node: &Node, change: ChangeMembers<u64, BasicNode>) -> String {
    match tokio::time::timeout(WRITE_TIMEOUT, node.raft.change_membership(change, false)).await {
        Err(_) => timed_out(node, "the membership change"),
        Ok(Ok(written)) => {
            let voters: Vec<String> = written
                .membership()
                .as_ref()
                .map(|m| m.voter_ids().map(|v| v.to_string()).collect())
                .unwrap_or_default();
            format!("OK voters {}", voters.join(","))
        }
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
            not_leader(&forward)
        }
        Ok(Err(e)) => raft_failure(e),
    }
}
