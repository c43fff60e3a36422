//! A bare quicraft node in its own process, driven line by line on stdin: what the restart
//! tests (`tests/restart_processes.rs`) and the `restart` scenario of `cargo bench --bench
//! transport` kill with SIGKILL and start again on the same address.
//!
//! ```text
//! cargo run --example rpc_node -- --cluster demo --id 1 --listen 127.0.0.1:7001 --certs certs
//! ```
//!
//! `--certs DIR` holds `ca.pem`, `ID.pem` and `ID.key` (the layout `certgen` writes). The node
//! prints `ready ADDR` once bound and answers every AppendEntries with success (heartbeats on
//! the fast path, the rest through the consumer). Commands, one per line, each answered with
//! one line:
//!
//! - `call ID ADDR MAX_MS`: heartbeats to `ID` at `ADDR`, one after another, until one
//!   succeeds or `MAX_MS` milliseconds pass; answers `ok ATTEMPTS MICROS` or
//!   `err ATTEMPTS MICROS REASON`, timed from when the command was read.
//! - `dial ID ADDR [ID ADDR ...]`: one heartbeat to each peer, all at once (each dialling a
//!   connection if there is none yet); answers `ok MICROS` once every one succeeded, or
//!   `err FAILED MICROS REASON` (how many failed, and the first failure), timed from when the
//!   command was read. What the `growth` scenario of `cargo bench --bench transport` times.
//! - `load MILLIS TASKS KIND ID ADDR [ID ADDR ...]`: `TASKS` tasks, task `i` calling peer `i`
//!   mod the number of peers, each sending `KIND` back to back for `MILLIS` milliseconds:
//!   `heartbeat` (an AppendEntries without entries) or `append` (64 entries of 1 KiB);
//!   answers `ok RPCS MICROS` (the RPCs answered, and how long the tasks took in all) or
//!   `err RPCS MICROS REASON` on the first failure.
//! - `quit`: closes the transport (sending SHUTDOWN to the peers) and exits.
//!
//! Any other line is answered `err 0 0 unknown command ...` or, for a command with arguments
//! it cannot read, `err 0 0 REASON`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Parser;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, ErrorCode, Log, QuicConfig,
    QuicTransport, QuicTuning, RemoteError, RpcHeader, ServerAddress, ServerId, Transport,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::time::Instant;

#[derive(Parser)]
#[command(about = "A bare quicraft node driven on stdin (restart tests and bench)")]
struct Args {
    /// The cluster name (the SPIFFE trust domain of the certificates).
    #[arg(long)]
    cluster: String,
    /// This node's server id.
    #[arg(long)]
    id: String,
    /// The UDP address to bind.
    #[arg(long)]
    listen: std::net::SocketAddr,
    /// Directory with ca.pem, ID.pem and ID.key.
    #[arg(long)]
    certs: PathBuf,
    /// The secret the stateless-reset keys are derived from (default: the node's private key).
    /// A different secret on a restart is what a key rotation does.
    #[arg(long)]
    reset_secret: Option<String>,
    /// The RPC timeout, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    rpc_timeout_ms: u64,
    /// `QuicTuning::max_udp_payload`, the path MTU bound (default: from this host's
    /// interfaces, 65,488 bytes on Linux loopback).
    #[arg(long, value_name = "BYTES")]
    max_udp_payload: Option<u16>,
    /// `QuicTuning::stream_receive_window`, in bytes (default 1,250,000).
    #[arg(long, value_name = "BYTES")]
    stream_window: Option<u32>,
    /// `QuicTuning::receive_window`, the connection's receive window, in bytes (default 32 MiB).
    #[arg(long, value_name = "BYTES")]
    receive_window: Option<u64>,
    /// `QuicTuning::send_window`, in bytes (default 10 MiB).
    #[arg(long, value_name = "BYTES")]
    send_window: Option<u64>,
    /// `QuicTuning::busy_poll` window, in microseconds (0: off; default 50).
    #[arg(long, value_name = "US")]
    busy_poll: Option<u64>,
    /// `QuicConfig::max_streams`, the RPC streams a peer may open at once (default 1024; a
    /// connection starts with at most 64 of them).
    #[arg(long, value_name = "STREAMS")]
    max_streams: Option<u32>,
    /// `QuicConfig::max_snapshot_streams`, the snapshot streams a peer may open at once
    /// (default 8).
    #[arg(long, value_name = "STREAMS")]
    max_snapshot_streams: Option<u32>,
}

impl Args {
    /// The transport's tuning: its defaults, with what the command line set.
    fn tuning(&self) -> QuicTuning {
        let mut tuning = QuicTuning::default();
        if let Some(bytes) = self.max_udp_payload {
            tuning = tuning.max_udp_payload(bytes);
        }
        if let Some(bytes) = self.stream_window {
            tuning = tuning.stream_receive_window(bytes);
        }
        if let Some(bytes) = self.receive_window {
            tuning = tuning.receive_window(bytes);
        }
        if let Some(bytes) = self.send_window {
            tuning = tuning.send_window(bytes);
        }
        if let Some(micros) = self.busy_poll {
            tuning = tuning.busy_poll(Duration::from_micros(micros));
        }
        tuning
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args = Args::parse();
    let file = |name: String| args.certs.join(name);
    let config = QuicConfig::from_pem_files(
        &args.cluster,
        file(format!("{}.pem", args.id)),
        file(format!("{}.key", args.id)),
        file("ca.pem".to_owned()),
    )?
    .bind(args.listen)
    .rpc_timeout(Duration::from_millis(args.rpc_timeout_ms))
    .connect_timeout(Duration::from_millis(args.rpc_timeout_ms))
    .reconnect_backoff(Duration::from_millis(10), Duration::from_millis(100))
    .tuning(args.tuning());
    let config = match &args.reset_secret {
        Some(secret) => config.stateless_reset_secret(secret),
        None => config,
    };
    let config = match args.max_streams {
        Some(streams) => config.max_streams(streams),
        None => config,
    };
    let config = match args.max_snapshot_streams {
        Some(streams) => config.max_snapshot_streams(streams),
        None => config,
    };
    let (transport, mut incoming) = QuicTransport::bind(config).await?;
    let header = RpcHeader::new(args.id.as_str(), transport.local_addr());

    let answer = header.clone();
    let success = move |term| AppendEntriesResponse {
        header: answer.clone(),
        term,
        last_log: 0,
        success: true,
        no_retry_backoff: false,
    };
    let respond = move |rpc: quicraft::Rpc| {
        let result = match rpc.command() {
            Command::AppendEntries(request) => Ok(success(request.term).into()),
            other => Err(RemoteError::new(
                ErrorCode::HANDLER,
                format!("rpc_node answers only AppendEntries, not {}", other.kind()),
            )),
        };
        rpc.respond(result);
    };
    let fast = respond.clone();
    transport.set_heartbeat_handler(Some(Arc::new(fast)));
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            respond(rpc);
        }
    });

    let mut stdout = tokio::io::stdout();
    let ready = format!("ready {}\n", transport.local_socket_addr());
    stdout.write_all(ready.as_bytes()).await?;
    stdout.flush().await?;

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let words: Vec<&str> = line.split_whitespace().collect();
        let reply = match words.as_slice() {
            ["call", id, addr, max_ms] => match max_ms.parse() {
                Ok(max_ms) => call_until_ok(&transport, &header, id, addr, max_ms).await,
                Err(_) => format!("err 0 0 bad MAX_MS {max_ms:?}"),
            },
            ["dial", peers @ ..] => match peer_list(peers) {
                Ok(peers) => dial(&transport, &header, &peers).await,
                Err(reason) => format!("err 0 0 {reason}"),
            },
            ["load", millis, tasks, kind, peers @ ..] => {
                match Load::parse(millis, tasks, kind, peers) {
                    Ok(load) => load.run(&transport, &header).await,
                    Err(reason) => format!("err 0 0 {reason}"),
                }
            }
            ["quit"] => break,
            _ => format!("err 0 0 unknown command {line:?}"),
        };
        stdout.write_all(format!("{reply}\n").as_bytes()).await?;
        stdout.flush().await?;
    }
    transport.close().await;
    Ok(())
}

/// Heartbeats `id` until one succeeds or `max_ms` pass; the reply line.
async fn call_until_ok(
    transport: &QuicTransport,
    header: &RpcHeader,
    id: &str,
    addr: &str,
    max_ms: u64,
) -> String {
    let start = Instant::now();
    let deadline = start + Duration::from_millis(max_ms);
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let request = AppendEntriesRequest::heartbeat(header.clone(), 1);
        let (id, addr) = (id.into(), addr.into());
        let call = transport.append_entries(&id, &addr, request);
        let outcome = tokio::time::timeout_at(deadline, call).await;
        let micros = start.elapsed().as_micros();
        match outcome {
            Ok(Ok(_)) => return format!("ok {attempts} {micros}"),
            Ok(Err(e)) if Instant::now() < deadline => {
                // Back off a little so a peer that refuses at once is not spun on.
                tracing::debug!(attempt = attempts, error = %e, "call failed; retrying");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(Err(e)) => return format!("err {attempts} {micros} {e}"),
            Err(_) => return format!("err {attempts} {micros} no answer within {max_ms} ms"),
        }
    }
}

/// Peers as `ID ADDR` pairs, at least one.
fn peer_list(words: &[&str]) -> Result<Vec<(ServerId, ServerAddress)>, String> {
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!("expected ID ADDR pairs, got {words:?}"));
    }
    Ok(words
        .chunks_exact(2)
        .map(|pair| (ServerId::from(pair[0]), ServerAddress::from(pair[1])))
        .collect())
}

/// One heartbeat to each of `peers`, all at once; the reply line.
async fn dial(
    transport: &QuicTransport,
    header: &RpcHeader,
    peers: &[(ServerId, ServerAddress)],
) -> String {
    let start = Instant::now();
    let calls = peers.iter().map(|(id, addr)| {
        let request = AppendEntriesRequest::heartbeat(header.clone(), 1);
        transport.append_entries(id, addr, request)
    });
    let outcomes = futures_util::future::join_all(calls).await;
    let micros = start.elapsed().as_micros();
    let mut failures = outcomes.into_iter().filter_map(Result::err);
    match failures.next() {
        None => format!("ok {micros}"),
        Some(first) => format!("err {} {micros} {first}", 1 + failures.count()),
    }
}

/// Entries per AppendEntries of a `load ... append`.
const APPEND_ENTRIES: u64 = 64;
/// Payload bytes of each of those entries.
const APPEND_ENTRY_SIZE: usize = 1024;

/// What a `load` command sends.
#[derive(Clone, Copy)]
enum LoadKind {
    /// AppendEntries without entries (answered on the peer's fast path).
    Heartbeat,
    /// AppendEntries of [`APPEND_ENTRIES`] entries of [`APPEND_ENTRY_SIZE`] bytes.
    Append,
}

/// A `load` command, read.
struct Load {
    duration: Duration,
    tasks: usize,
    kind: LoadKind,
    peers: Vec<(ServerId, ServerAddress)>,
}

impl Load {
    fn parse(millis: &str, tasks: &str, kind: &str, peers: &[&str]) -> Result<Self, String> {
        let millis: u64 = millis
            .parse()
            .map_err(|_| format!("bad MILLIS {millis:?}"))?;
        let tasks: usize = match tasks.parse() {
            Ok(tasks) if tasks > 0 => tasks,
            _ => return Err(format!("bad TASKS {tasks:?}")),
        };
        let kind = match kind {
            "heartbeat" => LoadKind::Heartbeat,
            "append" => LoadKind::Append,
            other => return Err(format!("bad KIND {other:?} (heartbeat or append)")),
        };
        Ok(Self {
            duration: Duration::from_millis(millis),
            tasks,
            kind,
            peers: peer_list(peers)?,
        })
    }

    /// Runs the tasks to the end; the reply line.
    async fn run(self, transport: &QuicTransport, header: &RpcHeader) -> String {
        let start = Instant::now();
        let deadline = start + self.duration;
        let payload = Bytes::from(vec![0xa5; APPEND_ENTRY_SIZE]);
        let tasks: Vec<_> = (0..self.tasks)
            .map(|task| {
                let (id, addr) = self.peers[task % self.peers.len()].clone();
                let (transport, header, payload) =
                    (transport.clone(), header.clone(), payload.clone());
                let kind = self.kind;
                tokio::spawn(async move {
                    let mut answered = 0u64;
                    while Instant::now() < deadline {
                        let request = match kind {
                            LoadKind::Heartbeat => {
                                AppendEntriesRequest::heartbeat(header.clone(), 1)
                            }
                            LoadKind::Append => append(&header, answered, &payload),
                        };
                        if let Err(e) = transport.append_entries(&id, &addr, request).await {
                            return (answered, Some(e.to_string()));
                        }
                        answered += 1;
                    }
                    (answered, None)
                })
            })
            .collect();
        let mut answered = 0;
        let mut failure = None;
        for task in tasks {
            let (count, error) = match task.await {
                Ok(outcome) => outcome,
                Err(e) => (0, Some(format!("a load task failed: {e}"))),
            };
            answered += count;
            failure = failure.or(error);
        }
        let micros = start.elapsed().as_micros();
        match failure {
            None => format!("ok {answered} {micros}"),
            Some(reason) => format!("err {answered} {micros} {reason}"),
        }
    }
}

/// The `seq`-th AppendEntries of a task: [`APPEND_ENTRIES`] entries carrying `payload`
/// (shared, not copied).
fn append(header: &RpcHeader, seq: u64, payload: &Bytes) -> AppendEntriesRequest {
    let prev = seq * APPEND_ENTRIES;
    AppendEntriesRequest {
        header: header.clone(),
        term: 1,
        prev_log_entry: prev,
        prev_log_term: 1,
        entries: (1..=APPEND_ENTRIES)
            .map(|i| Log::command(prev + i, 1, payload.clone()))
            .collect(),
        leader_commit_index: prev,
    }
}
