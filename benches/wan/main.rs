//! `cargo bench --bench wan`: quicraft against a single-connection TCP + TLS 1.3 baseline on an
//! emulated WAN link (see `emulator.rs`), as a table: every variant (a named configuration,
//! `variant.rs`) at every RTT and loss rate, 100 Mbit/s, a tail-drop queue of one
//! bandwidth-delay product (625 KB at 50 ms, 1,875 KB at 150 ms) unless `--queue-kb` says.
//!
//! Per row (RTT, loss, variant), on a fresh link with fresh nodes: idle heartbeats (one every
//! 50 ms), then heartbeats while a snapshot and a stream of 64 KiB appends (4 outstanding)
//! share the link, until the snapshot completes or the phase's cap passes ("loaded" means
//! while the snapshot is in flight). Goodput is what the follower received over the loaded
//! phase. Heartbeats still unanswered a grace period after a phase are counted, not timed.
//!
//! What runs:
//!
//! - full run (no `--quick`): RTT 50 and 150 ms, loss 0, 0.5, 2 and 5 %, variants
//!   `quicraft` (the library's defaults, nothing set), `quicraft-hedge-off`,
//!   `quicraft-hedge-auto`, `quicraft-pacing-off`, `quicraft-pacing-auto`, `quicraft-cubic`,
//!   `quicraft-bbr`, `tcp-cubic`, `tcp-bbr` (each setting set explicitly both ways, so the
//!   table stays right when a default changes): 72 rows. Each: 20 s of idle heartbeats
//!   (400), a 256 MiB snapshot capped at 30 s + 600 RTT (60 s at 50 ms, 120 s at 150 ms:
//!   room for 256 MiB at 36 / 18 Mbit/s, while quicraft's defaults moved 20 Mbit/s at
//!   150 ms and 5 % loss; at 50 Mbit/s it takes 43 s, ~860 loaded heartbeats), 5 s of grace.
//!   About 1.5 to 2 hours.
//! - `--quick`: the same RTTs and losses, variants `quicraft`, `quicraft-hedge-off`,
//!   `quicraft-pacing-off`, `tcp-cubic`, `tcp-bbr`: 40 rows. Each: 1 s of idle heartbeats
//!   (20), a 16 MiB snapshot capped at 4 s + 20 RTT (5 s at 50 ms, 7 s at 150 ms; 40 to 140
//!   loaded heartbeats), 2 s of grace. About four minutes; its percentiles come from tens of
//!   heartbeats, so it is a check that every row runs, not the table. Other variants run
//!   with quick phases when named (`--quick --variant quicraft-pacing-off`).
//!
//! Flags: `--json` (one JSON line per row; notes and the closing Markdown table go to
//! stderr), `--quick`, `--rtt 50,150` (ms), `--loss 0,0.5,2,5` (percent), `--variant
//! NAME,...` (see `variant.rs`: `quicraft[-hedge-off|-hedge-auto|-hedge-MS][-pacing-off|
//! -pacing-auto|-pacing-MBIT][-cubic|-newreno|-bbr][-window-KB]`, `tcp-ALGORITHM`), `--runs
//! N` (each row N times: the medians, and every run's p99s), `--queue-kb KB` (the bottleneck queue at every RTT),
//! `--snapshot-mib`, `--idle-s`, `--cap-s` (a phase's size or length instead of the mode's),
//! `--appends N` (appends outstanding, 0 for none).
//! The single-setting flags of before stay, as overrides on top of every quicraft variant
//! (the row's name then ends in `+SETTING`): `--heartbeat-hedge off|auto|MS`, `--snapshot-pacing
//! off|auto|MBIT`, `--quic-cc cubic|newreno|bbr`. `--impl quicraft,tcp-baseline` instead of
//! `--variant` runs the variants `quicraft` and `tcp-CC` with `CC` from `--tcp-cc` (default
//! cubic). Needs root and /dev/net/tun; prints why it skips otherwise.

mod baseline;
mod emulator;
#[allow(dead_code)]
#[path = "../support/report.rs"]
mod report;
mod table;
mod variant;

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use emulator::{LinkConfig, Side, WanLink};
use hdrhistogram::Histogram;
use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, InstallSnapshotRequest,
    InstallSnapshotResponse, Log, QuicConfig, QuicTransport, RemoteError, Rpc, RpcHeader,
    ServerAddress, ServerId, Transport,
};
use report::Printer;
use table::{Row, Run};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;
use variant::{QuicSettings, Setup, Variant};

/// The bottleneck rate.
const RATE_BPS: u64 = 100_000_000;
/// Payload of each AppendEntries of the stream.
const APPEND: usize = 64 * 1024;
/// AppendEntries outstanding at once.
const APPENDS_IN_FLIGHT: usize = 4;
/// Heartbeat interval (a Raft leader's).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
const TERM: u64 = 1;
const PORT: u16 = 7000;
const CLUSTER: &str = "wanbench";

/// The variants of a full run (see the module documentation).
const FULL_VARIANTS: &[&str] = &[
    "quicraft",
    "quicraft-hedge-off",
    "quicraft-hedge-auto",
    "quicraft-pacing-off",
    "quicraft-pacing-auto",
    "quicraft-cubic",
    "quicraft-bbr",
    "tcp-cubic",
    "tcp-bbr",
];

/// The variants of a `--quick` run: the defaults, without each of the two WAN settings that are
/// on by default (the heartbeat hedge, snapshot pacing), and both baselines.
const QUICK_VARIANTS: &[&str] = &[
    "quicraft",
    "quicraft-hedge-off",
    "quicraft-pacing-off",
    "tcp-cubic",
    "tcp-bbr",
];

/// Settings of a run, from the command line.
#[derive(Debug, Clone, Parser)]
#[command(
    about = "quicraft against a TCP + TLS 1.3 baseline on an emulated WAN link (root only).",
    override_usage = "cargo bench --bench wan -- [OPTIONS]"
)]
struct Options {
    /// One JSON line per row on stdout; notes and the Markdown table on stderr.
    #[arg(long)]
    json: bool,
    /// Fewer variants and shorter phases, under five minutes for the default matrix: 1 s of
    /// idle heartbeats, a 16 MiB snapshot capped at 4 s + 20 RTT (else 20 s, 256 MiB and
    /// 30 s + 600 RTT).
    #[arg(long)]
    quick: bool,
    /// Round-trip times of the link, in milliseconds.
    #[arg(
        long = "rtt",
        value_name = "MS,...",
        value_delimiter = ',',
        default_values_t = [50, 150],
        value_parser = clap::value_parser!(u64).range(1..)
    )]
    rtts: Vec<u64>,
    /// Loss rates of the link, in percent (each direction).
    #[arg(long = "loss", value_name = "PCT,...", value_delimiter = ',', default_values_t = [0.0, 0.5, 2.0, 5.0])]
    losses: Vec<f64>,
    /// The variants to run (default: the full or the quick set), e.g. `quicraft`,
    /// `quicraft-hedge-5`, `quicraft-pacing-off`, `quicraft-cubic`, `tcp-bbr`.
    #[arg(
        long = "variant",
        value_name = "NAME,...",
        value_delimiter = ',',
        value_parser = Variant::parse,
        conflicts_with = "impls"
    )]
    variants: Vec<Variant>,
    /// Instead of `--variant`: `quicraft` is the variant `quicraft`, `tcp-baseline` the
    /// variant `tcp-CC` with `--tcp-cc`.
    #[arg(
        long = "impl",
        value_name = "NAME,...",
        value_delimiter = ',',
        value_parser = ["quicraft", "tcp-baseline"]
    )]
    impls: Vec<String>,
    /// The TCP congestion control of `--impl tcp-baseline`.
    #[arg(long, value_name = "NAME", default_value = "cubic", requires = "impls")]
    tcp_cc: String,
    /// Sets quicraft's congestion controller in every quicraft variant.
    #[arg(long, value_name = "NAME", value_parser = variant::congestion_controller)]
    quic_cc: Option<quicraft::CongestionController>,
    /// Sets `QuicConfig::heartbeat_hedge` in every quicraft variant: `off`, `auto` or a delay
    /// in ms.
    #[arg(long, value_name = "off|auto|MS", value_parser = variant::hedge_flag)]
    heartbeat_hedge: Option<variant::Hedge>,
    /// Sets `QuicConfig::snapshot_pacing` in every quicraft variant: `off`, `auto`, or a rate
    /// in Mbit/s.
    #[arg(long, value_name = "off|auto|MBIT", value_parser = variant::snapshot_pacing)]
    snapshot_pacing: Option<quicraft::SnapshotPacing>,
    /// The bottleneck queue in KB at every RTT (default: one bandwidth-delay product of the
    /// RTT, 625 KB at 50 ms).
    #[arg(long, value_name = "KB")]
    queue_kb: Option<usize>,
    /// The snapshot's size in MiB, instead of the mode's (16 quick, 256 full).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_mib: Option<u64>,
    /// Seconds of idle heartbeats, instead of the mode's (1 quick, 20 full).
    #[arg(long, value_name = "S")]
    idle_s: Option<u64>,
    /// The loaded phase's cap in seconds at every RTT, instead of the mode's (4 s + 20 RTT
    /// quick, 30 s + 600 RTT full).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u64).range(1..))]
    cap_s: Option<u64>,
    /// AppendEntries of 64 KiB outstanding at once beside the snapshot, instead of 4 (0: the
    /// snapshot and the heartbeats alone).
    #[arg(long, value_name = "N")]
    appends: Option<usize>,
    /// Measures each row this many times (fresh link and nodes each time) and reports the
    /// median of each figure, plus every run's heartbeat p99s.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,
    /// What `cargo bench` passes to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Options {
    /// The variants to run, with the single-setting overrides applied.
    fn variants(&self) -> Result<Vec<Variant>, String> {
        let variants = if !self.variants.is_empty() {
            self.variants.clone()
        } else if !self.impls.is_empty() {
            self.impls
                .iter()
                .map(|name| match name.as_str() {
                    "tcp-baseline" => Variant::parse(&format!("tcp-{}", self.tcp_cc)),
                    _ => Variant::parse("quicraft"),
                })
                .collect::<Result<_, _>>()?
        } else {
            let names = if self.quick {
                QUICK_VARIANTS
            } else {
                FULL_VARIANTS
            };
            names
                .iter()
                .map(|name| Variant::parse(name))
                .collect::<Result<_, _>>()?
        };
        let overrides = QuicSettings {
            hedge: self.heartbeat_hedge.map(|hedge| hedge.0),
            pacing: self.snapshot_pacing,
            controller: self.quic_cc,
            window_kb: None,
        };
        Ok(variants
            .into_iter()
            .map(|variant| variant.overridden(&overrides))
            .collect())
    }

    /// The bottleneck queue at `rtt`: `--queue-kb`, else one bandwidth-delay product.
    fn queue_bytes(&self, rtt: Duration) -> usize {
        match self.queue_kb {
            Some(kb) => kb * 1000,
            None => (RATE_BPS as f64 / 8.0 * rtt.as_secs_f64()).round() as usize,
        }
    }
}

/// The lengths and sizes of one row's phases, from the mode and the RTT.
#[derive(Debug, Clone, Copy)]
struct Phases {
    /// How long the idle heartbeats are measured.
    idle: Duration,
    /// The snapshot's size in bytes.
    snapshot: u64,
    /// The longest the loaded phase runs (the snapshot is abandoned then).
    cap: Duration,
    /// How long heartbeats still in flight at the end of a phase are waited for.
    grace: Duration,
    /// AppendEntries of the append stream outstanding at once (0: no appends).
    appends: usize,
}

impl Phases {
    /// The phases of a `quick` run or a full one at `rtt` (see the module documentation).
    fn new(quick: bool, rtt: Duration) -> Self {
        if quick {
            Self {
                idle: Duration::from_secs(1),
                snapshot: 16 << 20,
                cap: Duration::from_secs(4) + rtt * 20,
                grace: Duration::from_secs(2),
                appends: APPENDS_IN_FLIGHT,
            }
        } else {
            Self {
                idle: Duration::from_secs(20),
                snapshot: 256 << 20,
                cap: Duration::from_secs(30) + rtt * 600,
                grace: Duration::from_secs(5),
                appends: APPENDS_IN_FLIGHT,
            }
        }
    }

    /// These phases with what `--snapshot-mib`, `--idle-s` and `--cap-s` set.
    fn overridden(mut self, options: &Options) -> Self {
        if let Some(mib) = options.snapshot_mib {
            self.snapshot = mib << 20;
        }
        if let Some(s) = options.idle_s {
            self.idle = Duration::from_secs(s);
        }
        if let Some(s) = options.cap_s {
            self.cap = Duration::from_secs(s);
        }
        if let Some(appends) = options.appends {
            self.appends = appends;
        }
        self
    }
}

/// Makes sure the kernel offers every TCP congestion control the TCP variants ask for, loading
/// its module (`tcp_NAME`) if needed.
fn ensure_tcp_algorithms(variants: &[Variant]) -> Result<(), String> {
    const AVAILABLE: &str = "/proc/sys/net/ipv4/tcp_available_congestion_control";
    let available = || std::fs::read_to_string(AVAILABLE).unwrap_or_default();
    for variant in variants {
        let Setup::Tcp(algorithm) = &variant.setup else {
            continue;
        };
        let offered = |list: String| list.split_whitespace().any(|a| a == algorithm);
        if offered(available()) {
            continue;
        }
        let _ = std::process::Command::new("modprobe")
            .arg(format!("tcp_{algorithm}"))
            .status();
        if !offered(available()) {
            return Err(format!(
                "{}: the kernel has no TCP congestion control {algorithm} (available: {}; \
                 `modprobe tcp_{algorithm}` did not add it)",
                variant.name,
                available().trim(),
            ));
        }
    }
    Ok(())
}

fn main() {
    let options = Options::parse();
    let variants = match options.variants() {
        Ok(variants) => variants,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    if let Err(reason) = emulator::check_supported() {
        println!("wan bench skipped: {reason}");
        return;
    }
    if let Err(e) = ensure_tcp_algorithms(&variants) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let mut printer = Printer::new(options.json);
    let names: Vec<&str> = variants.iter().map(|v| v.name.as_str()).collect();
    printer.note(&format!(
        "{} run: RTT {:?} ms, loss {:?} %, variants {}; {} run(s) per row; {} Mbit/s, heartbeat \
         every {} ms, appends {} KiB x {} in flight",
        if options.quick { "quick" } else { "full" },
        options.rtts,
        options.losses,
        names.join(", "),
        options.runs,
        RATE_BPS / 1_000_000,
        HEARTBEAT_EVERY.as_millis(),
        APPEND >> 10,
        options.appends.unwrap_or(APPENDS_IN_FLIGHT),
    ));
    let started = Instant::now();
    let mut rows = Vec::new();
    for &rtt_ms in &options.rtts {
        let rtt = Duration::from_millis(rtt_ms);
        let phases = Phases::new(options.quick, rtt).overridden(&options);
        printer.note(&format!(
            "RTT {rtt_ms} ms: queue {} KB (tail drop); idle {:?}, snapshot {} MiB, loaded cap \
             {:?}, grace {:?}",
            options.queue_bytes(rtt) / 1000,
            phases.idle,
            phases.snapshot >> 20,
            phases.cap,
            phases.grace,
        ));
        for &loss_pct in &options.losses {
            for variant in &variants {
                let runs = (0..options.runs)
                    .map(|_| run_one(variant, rtt, loss_pct, phases, &options, &printer))
                    .collect();
                let row = Row {
                    rtt_ms,
                    loss_pct,
                    variant: variant.name.clone(),
                    implementation: variant.implementation(),
                    cap_s: phases.cap.as_secs_f64(),
                    runs,
                };
                printer.print(&row.report());
                rows.push(row);
            }
        }
    }
    printer.note(&format!(
        "{} rows in {:.0} s",
        rows.len(),
        started.elapsed().as_secs_f64()
    ));
    let table = table::markdown(&rows);
    if options.json {
        eprintln!();
        eprint!("{table}");
    } else {
        println!();
        print!("{table}");
    }
}

/// A tokio runtime (current-thread, as one node in its own process) on a thread inside one of
/// the link's namespaces.
struct NsNode {
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NsNode {
    fn start(link: &WanLink, side: Side, name: &str) -> Self {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = link.spawn_in(side, name, move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a tokio runtime");
            handle_tx
                .send(runtime.handle().clone())
                .expect("the starter waits");
            runtime.block_on(async {
                let _ = stopped.await;
            });
        });
        Self {
            runtime: handle_rx.recv().expect("the node starts its runtime"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` on this node and waits for its output.
    fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv().expect("the task panicked (its message is above)")
    }
}

impl Drop for NsNode {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What the follower received.
#[derive(Debug, Default)]
struct Received {
    snapshot_bytes: AtomicU64,
    append_bytes: AtomicU64,
}

/// The leader's side of either implementation.
trait Client: Clone + Send + Sync + 'static {
    fn heartbeat(&self) -> impl Future<Output = Result<(), String>> + Send;
    fn append(
        &self,
        request: AppendEntriesRequest,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn snapshot(
        &self,
        request: InstallSnapshotRequest,
        data: impl AsyncRead + Send + Unpin + 'static,
    ) -> impl Future<Output = Result<(), String>> + Send;
    fn close(&self) -> impl Future<Output = ()> + Send;
}

#[derive(Clone)]
struct QuicClient {
    transport: QuicTransport,
    peer_id: ServerId,
    peer_addr: ServerAddress,
}

impl Client for QuicClient {
    async fn heartbeat(&self) -> Result<(), String> {
        let request = AppendEntriesRequest::heartbeat(header(), TERM);
        self.append(request).await
    }

    async fn append(&self, request: AppendEntriesRequest) -> Result<(), String> {
        self.transport
            .append_entries(&self.peer_id, &self.peer_addr, request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn snapshot(
        &self,
        request: InstallSnapshotRequest,
        data: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<(), String> {
        let response = self
            .transport
            .install_snapshot(&self.peer_id, &self.peer_addr, request, data)
            .await
            .map_err(|e| e.to_string())?;
        response
            .success
            .then_some(())
            .ok_or_else(|| "snapshot refused".to_owned())
    }

    async fn close(&self) {
        self.transport.close().await;
    }
}

impl Client for baseline::TcpClient {
    async fn heartbeat(&self) -> Result<(), String> {
        let request = AppendEntriesRequest::heartbeat(header(), TERM);
        self.append(request).await
    }

    async fn append(&self, request: AppendEntriesRequest) -> Result<(), String> {
        self.append_entries(request)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    async fn snapshot(
        &self,
        request: InstallSnapshotRequest,
        data: impl AsyncRead + Send + Unpin + 'static,
    ) -> Result<(), String> {
        let response = self
            .install_snapshot(request, data)
            .await
            .map_err(|e| e.to_string())?;
        response
            .success
            .then_some(())
            .ok_or_else(|| "snapshot refused".to_owned())
    }

    /// The connection closes when the leader's runtime stops.
    async fn close(&self) {}
}

fn header() -> RpcHeader {
    RpcHeader::new("leader", Side::A.addr().to_string())
}

fn append_request(seq: u64, payload: &Bytes) -> AppendEntriesRequest {
    AppendEntriesRequest {
        header: header(),
        term: TERM,
        prev_log_entry: seq,
        prev_log_term: TERM,
        entries: vec![Log::command(seq + 1, TERM, payload.clone())],
        leader_commit_index: seq,
    }
}

/// The InstallSnapshot of a snapshot of `size` bytes.
fn snapshot_request(size: u64) -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: header(),
        snapshot_version: 1,
        term: TERM,
        last_log_index: 1,
        last_log_term: TERM,
        configuration: Bytes::from_static(b"leader,follower"),
        configuration_index: 1,
        size,
    }
}

/// The quicraft follower: heartbeats on the fast path, appends and snapshots by the consumer.
fn serve_quic(
    transport: &QuicTransport,
    mut incoming: quicraft::Incoming,
    received: Arc<Received>,
) {
    let follower = RpcHeader::new("follower", Side::B.addr().to_string());
    let ack = move |last_log: u64| AppendEntriesResponse {
        header: follower.clone(),
        term: TERM,
        last_log,
        success: true,
        no_retry_backoff: false,
    };
    let handler_ack = ack.clone();
    transport.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
        rpc.respond(Ok(handler_ack(0).into()));
    })));
    tokio::spawn(async move {
        while let Some(mut rpc) = incoming.recv().await {
            match rpc.command() {
                Command::AppendEntries(request) => {
                    let bytes: usize = request.entries.iter().map(|e| e.data.len()).sum();
                    received
                        .append_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    let last = request.prev_log_entry + request.entries.len() as u64;
                    rpc.respond(Ok(ack(last).into()));
                }
                Command::InstallSnapshot(_) => {
                    let mut reader = rpc.take_snapshot().expect("snapshot data");
                    let received = received.clone();
                    let header = RpcHeader::new("follower", Side::B.addr().to_string());
                    tokio::spawn(async move {
                        let mut buffer = vec![0u8; 64 * 1024];
                        let success = loop {
                            match reader.read(&mut buffer).await {
                                Ok(0) => break true,
                                Ok(n) => received
                                    .snapshot_bytes
                                    .fetch_add(n as u64, Ordering::Relaxed),
                                Err(_) => break false,
                            };
                        };
                        let response = InstallSnapshotResponse {
                            header,
                            term: TERM,
                            success,
                        };
                        rpc.respond(Ok(response.into()));
                    });
                }
                other => {
                    let message = format!("not taken here: {}", other.kind());
                    rpc.respond(Err(RemoteError::handler(message)));
                }
            }
        }
    });
}

/// The quicraft settings of a node: the library's defaults, a longer RPC timeout (a snapshot
/// on a slow lossy link must not time out), and what the variant sets.
fn quic_config(
    ca: &ClusterCa,
    node: &str,
    bind: std::net::SocketAddr,
    settings: &QuicSettings,
) -> QuicConfig {
    let identity = ca
        .issue_node(node, &NodeCertOptions::default())
        .expect("issue a node certificate")
        .identity;
    let config = QuicConfig::new(CLUSTER, identity, ca.roots())
        .bind(bind)
        .rpc_timeout(Duration::from_secs(60));
    settings.apply(config, quicraft::QuicTuning::default())
}

/// Both nodes of one implementation on `link`; the follower's counters; a description.
struct Nodes<C> {
    client: C,
    received: Arc<Received>,
    detail: String,
    /// The quicraft follower, closed on its runtime at the end.
    follower_quic: Option<QuicTransport>,
    // Dropped leader first, then follower: each stops its runtime and everything on it.
    leader: NsNode,
    follower: NsNode,
}

/// quicraft nodes with `settings` on both.
fn quic_nodes(link: &WanLink, settings: &QuicSettings) -> Nodes<QuicClient> {
    let ca = ClusterCa::generate(CLUSTER).expect("CA");
    let received = Arc::new(Received::default());
    let follower = NsNode::start(link, Side::B, "follower");
    let config = quic_config(&ca, "follower", (Side::B.addr(), PORT).into(), settings);
    let counters = received.clone();
    let peer_addr = follower.run(async move {
        let (transport, incoming) = QuicTransport::bind(config).await.expect("bind follower");
        serve_quic(&transport, incoming, counters);
        let addr = transport.local_addr();
        (transport, addr)
    });
    let (follower_quic, peer_addr) = peer_addr;
    let leader = NsNode::start(link, Side::A, "leader");
    let config = quic_config(&ca, "leader", (Side::A.addr(), 0).into(), settings);
    let transport =
        leader.run(async move { QuicTransport::bind(config).await.expect("bind leader").0 });
    Nodes {
        client: QuicClient {
            transport,
            peer_id: ServerId::from("follower"),
            peer_addr,
        },
        received,
        detail: settings.describe(),
        follower_quic: Some(follower_quic),
        leader,
        follower,
    }
}

/// Baseline nodes with `algorithm` as the TCP congestion control of both sockets; panics if
/// the kernel reports another one on the leader's connection.
fn tcp_nodes(link: &WanLink, algorithm: &str) -> Nodes<baseline::TcpClient> {
    let ca = ClusterCa::generate(CLUSTER).expect("CA");
    let issue = |node: &str, ips: Vec<std::net::IpAddr>| {
        ca.issue_node(node, &NodeCertOptions::default().ip_addresses(ips))
            .expect("issue a node certificate")
    };
    let tls = baseline::TlsPair::new(
        &ca,
        &issue("leader", vec![Side::A.addr().into()]),
        &issue("follower", vec![Side::B.addr().into()]),
    );
    let received = Arc::new(Received::default());
    let server_counters = Arc::new(baseline::ServerCounters::default());
    let follower = NsNode::start(link, Side::B, "follower");
    let addr = std::net::SocketAddr::from((Side::B.addr(), PORT));
    let (server_tls, cc) = (tls.server.clone(), algorithm.to_owned());
    let counters = server_counters.clone();
    follower
        .run(async move { baseline::serve(addr, server_tls, &cc, counters) })
        .expect("baseline follower listens");
    // Mirror the baseline's counters into the shared shape.
    {
        let received = received.clone();
        follower.runtime.spawn(async move {
            loop {
                received.snapshot_bytes.store(
                    server_counters.snapshot_bytes.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                received.append_bytes.store(
                    server_counters.append_bytes.load(Ordering::Relaxed),
                    Ordering::Relaxed,
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    let leader = NsNode::start(link, Side::A, "leader");
    let (client_tls, cc) = (tls.client.clone(), algorithm.to_owned());
    let client = leader
        .run(async move { baseline::TcpClient::connect(addr, client_tls, &cc).await })
        .expect("baseline leader connects");
    assert_eq!(
        client.congestion, algorithm,
        "the baseline's connection runs another congestion control than asked for"
    );
    let detail = format!("TCP {}", client.congestion);
    Nodes {
        client,
        received,
        detail,
        follower_quic: None,
        leader,
        follower,
    }
}

/// Heartbeats every [`HEARTBEAT_EVERY`] for `duration`, each timed on its own; waits up to
/// `grace` for the last ones. `stop` ends it early. Returns the histogram and how many never
/// answered.
async fn heartbeats<C: Client>(
    client: C,
    duration: Duration,
    grace: Duration,
    stop: Arc<AtomicBool>,
) -> (Histogram<u64>, u64) {
    let histogram = Arc::new(Mutex::new(report::latency_histogram()));
    let mut tasks = Vec::new();
    let start = Instant::now();
    let mut ticker = tokio::time::interval(HEARTBEAT_EVERY);
    while start.elapsed() < duration && !stop.load(Ordering::Relaxed) {
        ticker.tick().await;
        let (client, histogram) = (client.clone(), histogram.clone());
        tasks.push(tokio::spawn(async move {
            let sent = Instant::now();
            client.heartbeat().await.expect("heartbeat");
            report::record(&mut histogram.lock().expect("lock"), sent.elapsed());
        }));
    }
    let deadline = Instant::now() + grace;
    let mut unanswered = 0;
    for task in tasks {
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, task).await.is_err() {
            unanswered += 1;
        }
    }
    let histogram = histogram.lock().expect("lock").clone();
    (histogram, unanswered)
}

/// Figures of the loaded phase.
struct Loaded {
    heartbeats: Histogram<u64>,
    unanswered: u64,
    snapshot_secs: Option<f64>,
    snapshot_mbit_s: f64,
    append_mbit_s: f64,
}

/// Heartbeats while a snapshot of `phases.snapshot` bytes and the append stream run, until
/// the snapshot completes or `phases.cap` passes.
async fn loaded<C: Client>(client: C, received: Arc<Received>, phases: Phases) -> Loaded {
    let start = Instant::now();
    let (snapshot_bytes0, append_bytes0) = (
        received.snapshot_bytes.load(Ordering::Relaxed),
        received.append_bytes.load(Ordering::Relaxed),
    );
    let snapshot = {
        let client = client.clone();
        tokio::spawn(async move {
            let data = tokio::io::repeat(0xa5).take(phases.snapshot);
            client
                .snapshot(snapshot_request(phases.snapshot), data)
                .await
                .expect("snapshot");
            start.elapsed()
        })
    };
    let payload = Bytes::from(vec![0x3c; APPEND]);
    let seq = Arc::new(AtomicU64::new(0));
    let appenders: Vec<_> = (0..phases.appends)
        .map(|_| {
            let (client, payload, seq) = (client.clone(), payload.clone(), seq.clone());
            tokio::spawn(async move {
                loop {
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    client
                        .append(append_request(n, &payload))
                        .await
                        .expect("append");
                }
            })
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let beats = tokio::spawn(heartbeats(
        client.clone(),
        phases.cap,
        phases.grace,
        stop.clone(),
    ));
    // The phase: until the snapshot is in, or the cap.
    let mut snapshot = snapshot;
    let snapshot_secs = tokio::time::timeout(phases.cap, &mut snapshot)
        .await
        .ok()
        .map(|done| done.expect("snapshot task").as_secs_f64());
    // Not done within the cap: abandon it (the transports close next).
    snapshot.abort();
    let elapsed = start.elapsed().as_secs_f64();
    let snapshot_bytes = received.snapshot_bytes.load(Ordering::Relaxed) - snapshot_bytes0;
    let append_bytes = received.append_bytes.load(Ordering::Relaxed) - append_bytes0;
    for appender in &appenders {
        appender.abort();
    }
    stop.store(true, Ordering::Relaxed);
    let (heartbeats, unanswered) = beats.await.expect("heartbeat task");
    Loaded {
        heartbeats,
        unanswered,
        snapshot_secs,
        snapshot_mbit_s: snapshot_bytes as f64 * 8.0 / 1e6 / elapsed,
        append_mbit_s: append_bytes as f64 * 8.0 / 1e6 / elapsed,
    }
}

/// The latency at `quantile`, in milliseconds.
fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    report::quantile_us(histogram, quantile) / 1000.0
}

/// One run of `variant` on a fresh link of `rtt` and `loss_pct`; notes what the link saw.
fn run_one(
    variant: &Variant,
    rtt: Duration,
    loss_pct: f64,
    phases: Phases,
    options: &Options,
    printer: &Printer,
) -> Run {
    let config = LinkConfig::new(rtt / 2)
        .loss(loss_pct / 100.0)
        .rate(RATE_BPS, options.queue_bytes(rtt));
    let link = WanLink::start(config).expect("start the WAN link");
    let started = Instant::now();
    let (detail, idle, load) = match &variant.setup {
        Setup::Quic(settings) => measure(quic_nodes(&link, settings), phases),
        Setup::Tcp(algorithm) => measure(tcp_nodes(&link, algorithm), phases),
    };
    let stats = link.stats();
    printer.note(&format!(
        "{} at {} ms, {loss_pct}% loss ({detail}): snapshot {}; {} loaded heartbeats, {} \
         unanswered; link A->B {}; B->A {}; kernel TUN drops {:?}/{:?}; {:.1} s",
        variant.name,
        rtt.as_millis(),
        load.snapshot_secs
            .map_or("not done within the cap".to_owned(), |s| format!(
                "in {s:.1} s"
            )),
        load.heartbeats.len(),
        load.unanswered,
        stats.a_to_b,
        stats.b_to_a,
        link.kernel_drops(Side::A),
        link.kernel_drops(Side::B),
        started.elapsed().as_secs_f64(),
    ));
    Run {
        idle_p50_ms: ms(&idle, 0.5),
        idle_p99_ms: ms(&idle, 0.99),
        loaded_p50_ms: ms(&load.heartbeats, 0.5),
        loaded_p99_ms: ms(&load.heartbeats, 0.99),
        loaded_max_ms: report::max_us(&load.heartbeats) / 1000.0,
        loaded_n: load.heartbeats.len(),
        loaded_lost: load.unanswered,
        snapshot_mbit_s: load.snapshot_mbit_s,
        snapshot_s: load.snapshot_secs,
        append_mbit_s: load.append_mbit_s,
        drop_loss: stats.a_to_b.dropped_loss + stats.b_to_a.dropped_loss,
        drop_queue: stats.a_to_b.dropped_queue + stats.b_to_a.dropped_queue,
    }
}

/// Connects, measures the idle and the loaded phase, and closes both nodes. Returns the
/// nodes' description, the idle heartbeats and the loaded phase's figures.
fn measure<C: Client>(nodes: Nodes<C>, phases: Phases) -> (String, Histogram<u64>, Loaded) {
    let client = nodes.client.clone();
    // Connect and warm up.
    nodes.leader.run({
        let client = client.clone();
        async move {
            for _ in 0..3 {
                client.heartbeat().await.expect("warm-up heartbeat");
            }
        }
    });
    let idle = nodes
        .leader
        .run(heartbeats(
            client.clone(),
            phases.idle,
            phases.grace,
            Arc::new(AtomicBool::new(false)),
        ))
        .0;
    let load = nodes
        .leader
        .run(loaded(client.clone(), nodes.received.clone(), phases));
    nodes.leader.run(async move { client.close().await });
    if let Some(follower) = nodes.follower_quic.clone() {
        nodes.follower.run(async move { follower.close().await });
    }
    let detail = nodes.detail.clone();
    drop(nodes);
    (detail, idle, load)
}
