//! `cargo bench --bench wan`: quicraft against a single-connection TCP + TLS 1.3 baseline on an
//! emulated WAN link (see `emulator.rs`): 50 ms RTT, 100 Mbit/s, 0 / 0.5 / 2 % loss.
//!
//! Per (implementation, loss): idle heartbeats (one every 50 ms), then heartbeats while a
//! 64 MiB snapshot and a stream of 64 KiB appends (4 outstanding) share the link, until the
//! snapshot completes or the phase's time cap passes. Goodput is what the follower received.
//!
//! Flags: `--json` (one line per implementation and loss), `--quick` (shorter phases),
//! `--loss 0,0.5,2`, `--impl quicraft,tcp-baseline`, `--quic-cc cubic|newreno|bbr` (quicraft's
//! congestion controller), `--snapshot-pacing off|auto|MBIT` (quicraft's
//! `QuicConfig::snapshot_pacing`),
//! `--heartbeat-hedge MS` (quicraft's `QuicConfig::heartbeat_hedge`,
//! off by default), `--tcp-cc cubic` (the baseline's TCP congestion control),
//! `--queue-kb 625` (the bottleneck queue; 625 KB is one
//! bandwidth-delay product). Needs root and /dev/net/tun; prints why it skips otherwise.

mod baseline;
mod emulator;
#[allow(dead_code)]
#[path = "../support/report.rs"]
mod report;

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
use report::{Printer, Report};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::oneshot;

/// One-way delay: 50 ms RTT.
const ONE_WAY: Duration = Duration::from_millis(25);
/// The bottleneck rate.
const RATE_BPS: u64 = 100_000_000;
/// Snapshot size.
const SNAPSHOT: u64 = 64 * 1024 * 1024;
/// Payload of each AppendEntries of the stream.
const APPEND: usize = 64 * 1024;
/// AppendEntries outstanding at once.
const APPENDS_IN_FLIGHT: usize = 4;
/// Heartbeat interval (a Raft leader's).
const HEARTBEAT_EVERY: Duration = Duration::from_millis(50);
const TERM: u64 = 1;
const PORT: u16 = 7000;
const CLUSTER: &str = "wanbench";

/// Settings of a run, from the command line.
#[derive(Debug, Clone, Parser)]
#[command(
    about = "quicraft against a TCP + TLS 1.3 baseline on an emulated WAN link (root only).",
    override_usage = "cargo bench --bench wan -- [OPTIONS]"
)]
struct Options {
    /// One JSON line per implementation and loss.
    #[arg(long)]
    json: bool,
    /// Shorter phases: 2 s of idle heartbeats and a 10 s cap on the loaded phase (else 5 s
    /// and 30 s).
    #[arg(long)]
    quick: bool,
    /// Loss rates of the link, in percent.
    #[arg(long = "loss", value_name = "PCT,...", value_delimiter = ',', default_values_t = [0.0, 0.5, 2.0])]
    losses: Vec<f64>,
    /// The implementations to run.
    #[arg(
        long = "impl",
        value_name = "NAME,...",
        value_delimiter = ',',
        value_parser = ["quicraft", "tcp-baseline"],
        default_values = ["quicraft", "tcp-baseline"]
    )]
    impls: Vec<String>,
    /// The baseline's TCP congestion control.
    #[arg(long, value_name = "NAME", default_value = "cubic")]
    tcp_cc: String,
    /// quicraft's congestion controller (default: the transport's).
    #[arg(long, value_name = "NAME", value_parser = quic_cc)]
    quic_cc: Option<quicraft::CongestionController>,
    /// quicraft's `QuicConfig::heartbeat_hedge` delay in milliseconds (default: off).
    #[arg(long, value_name = "MS")]
    heartbeat_hedge: Option<u64>,
    /// quicraft's `QuicConfig::snapshot_pacing`: `off`, `auto`, or a rate in Mbit/s
    /// (default: the transport's).
    #[arg(long, value_name = "off|auto|MBIT", value_parser = snapshot_pacing)]
    snapshot_pacing: Option<quicraft::SnapshotPacing>,
    /// The bottleneck queue in KB (625 KB is one bandwidth-delay product).
    #[arg(long, value_name = "KB", default_value_t = 625)]
    queue_kb: usize,
    /// What `cargo bench` passes to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// quicraft's congestion controller for this run (`--quic-cc`), set once in `main`.
static QUIC_CC: std::sync::OnceLock<quicraft::CongestionController> = std::sync::OnceLock::new();
/// quicraft's heartbeat hedge delay for this run (`--heartbeat-hedge MS`), set once in `main`.
static HEARTBEAT_HEDGE: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
/// quicraft's snapshot pacing for this run (`--snapshot-pacing`).
static SNAPSHOT_PACING: std::sync::OnceLock<quicraft::SnapshotPacing> = std::sync::OnceLock::new();

fn snapshot_pacing(value: &str) -> Result<quicraft::SnapshotPacing, String> {
    match value {
        "off" => Ok(quicraft::SnapshotPacing::Off),
        "auto" => Ok(quicraft::SnapshotPacing::Auto),
        mbit => mbit
            .parse::<f64>()
            .map(|mbit| quicraft::SnapshotPacing::Rate((mbit * 1e6 / 8.0) as u64))
            .map_err(|e| format!("{mbit}: off, auto or Mbit/s ({e})")),
    }
}

fn quic_cc(name: &str) -> Result<quicraft::CongestionController, String> {
    match name {
        "cubic" => Ok(quicraft::CongestionController::Cubic),
        "newreno" => Ok(quicraft::CongestionController::NewReno),
        "bbr" => Ok(quicraft::CongestionController::Bbr),
        other => Err(format!("{other}: cubic, newreno or bbr")),
    }
}

impl Options {
    /// How long the idle heartbeats are measured.
    fn idle(&self) -> Duration {
        Duration::from_secs(if self.quick { 2 } else { 5 })
    }

    /// The longest the loaded phase runs.
    fn loaded_cap(&self) -> Duration {
        Duration::from_secs(if self.quick { 10 } else { 30 })
    }

    fn queue_bytes(&self) -> usize {
        self.queue_kb * 1000
    }
}

fn main() {
    let options = Options::parse();
    if let Some(cc) = options.quic_cc {
        let _ = QUIC_CC.set(cc);
    }
    if let Some(ms) = options.heartbeat_hedge {
        let _ = HEARTBEAT_HEDGE.set(Duration::from_millis(ms));
    }
    if let Some(pacing) = options.snapshot_pacing {
        let _ = SNAPSHOT_PACING.set(pacing);
    }
    if let Err(reason) = emulator::check_supported() {
        println!("wan bench skipped: {reason}");
        return;
    }
    let mut printer = Printer::new(options.json);
    printer.note(&format!(
        "link: {} ms RTT, {} Mbit/s, queue {} KB (tail drop); heartbeat every {} ms; \
         snapshot {} MiB; appends {} KiB x {} in flight; baseline TCP congestion control {}; \
         quicraft congestion controller {:?}, heartbeat hedge {:?}, snapshot pacing {:?}",
        ONE_WAY.as_millis() * 2,
        RATE_BPS / 1_000_000,
        options.queue_bytes() / 1000,
        HEARTBEAT_EVERY.as_millis(),
        SNAPSHOT >> 20,
        APPEND >> 10,
        APPENDS_IN_FLIGHT,
        options.tcp_cc,
        QUIC_CC.get().copied().unwrap_or_default(),
        HEARTBEAT_HEDGE.get(),
        SNAPSHOT_PACING.get(),
    ));
    for &loss in &options.losses {
        for implementation in &options.impls {
            let report = run_one(implementation, loss, &options, &printer);
            printer.print(&report);
        }
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

fn snapshot_request() -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: header(),
        snapshot_version: 1,
        term: TERM,
        last_log_index: 1,
        last_log_term: TERM,
        configuration: Bytes::from_static(b"leader,follower"),
        configuration_index: 1,
        size: SNAPSHOT,
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

/// The quicraft settings of this benchmark (the library's defaults, a longer RPC timeout).
fn quic_config(ca: &ClusterCa, node: &str, bind: std::net::SocketAddr) -> QuicConfig {
    let identity = ca
        .issue_node(node, &NodeCertOptions::default())
        .expect("issue a node certificate")
        .identity;
    let config = QuicConfig::new(CLUSTER, identity, ca.roots())
        .bind(bind)
        .rpc_timeout(Duration::from_secs(60))
        .tuning(
            quicraft::QuicTuning::default()
                .congestion_controller(QUIC_CC.get().copied().unwrap_or_default()),
        )
        .heartbeat_hedge(
            HEARTBEAT_HEDGE
                .get()
                .map_or(quicraft::HeartbeatHedge::Auto, |&d| {
                    quicraft::HeartbeatHedge::After(d)
                }),
        );
    match SNAPSHOT_PACING.get() {
        Some(pacing) => config.snapshot_pacing(*pacing),
        None => config,
    }
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

fn quic_nodes(link: &WanLink) -> Nodes<QuicClient> {
    let ca = ClusterCa::generate(CLUSTER).expect("CA");
    let received = Arc::new(Received::default());
    let follower = NsNode::start(link, Side::B, "follower");
    let config = quic_config(&ca, "follower", (Side::B.addr(), PORT).into());
    let counters = received.clone();
    let peer_addr = follower.run(async move {
        let (transport, incoming) = QuicTransport::bind(config).await.expect("bind follower");
        serve_quic(&transport, incoming, counters);
        let addr = transport.local_addr();
        (transport, addr)
    });
    let (follower_quic, peer_addr) = peer_addr;
    let leader = NsNode::start(link, Side::A, "leader");
    let config = quic_config(&ca, "leader", (Side::A.addr(), 0).into());
    let transport =
        leader.run(async move { QuicTransport::bind(config).await.expect("bind leader").0 });
    Nodes {
        client: QuicClient {
            transport,
            peer_id: ServerId::from("follower"),
            peer_addr,
        },
        received,
        detail: "quinn defaults (Cubic)".into(),
        follower_quic: Some(follower_quic),
        leader,
        follower,
    }
}

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
/// 5 s for the last ones. `stop` ends it early. Returns the histogram and how many never answered.
async fn heartbeats<C: Client>(
    client: C,
    duration: Duration,
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
    let deadline = Instant::now() + Duration::from_secs(5);
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

/// Heartbeats while a snapshot and the append stream run, until the snapshot completes or
/// `cap` passes.
async fn loaded<C: Client>(client: C, received: Arc<Received>, cap: Duration) -> Loaded {
    let start = Instant::now();
    let (snapshot_bytes0, append_bytes0) = (
        received.snapshot_bytes.load(Ordering::Relaxed),
        received.append_bytes.load(Ordering::Relaxed),
    );
    let snapshot = {
        let client = client.clone();
        tokio::spawn(async move {
            let data = tokio::io::repeat(0xa5).take(SNAPSHOT);
            client
                .snapshot(snapshot_request(), data)
                .await
                .expect("snapshot");
            start.elapsed()
        })
    };
    let payload = Bytes::from(vec![0x3c; APPEND]);
    let seq = Arc::new(AtomicU64::new(0));
    let appenders: Vec<_> = (0..APPENDS_IN_FLIGHT)
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
    let beats = tokio::spawn(heartbeats(client.clone(), cap, stop.clone()));
    // The phase: until the snapshot is in, or the cap.
    let mut snapshot = snapshot;
    let snapshot_secs = tokio::time::timeout(cap, &mut snapshot)
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

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    report::quantile_us(histogram, quantile) / 1000.0
}

fn run_one(implementation: &str, loss_pct: f64, options: &Options, printer: &Printer) -> Report {
    let config = LinkConfig::new(ONE_WAY)
        .loss(loss_pct / 100.0)
        .rate(RATE_BPS, options.queue_bytes());
    let link = WanLink::start(config).expect("start the WAN link");
    let (detail, idle, load) = match implementation {
        "quicraft" => measure(quic_nodes(&link), options),
        "tcp-baseline" => measure(tcp_nodes(&link, &options.tcp_cc), options),
        other => panic!("unknown implementation {other} (quicraft, tcp-baseline)"),
    };
    let stats = link.stats();
    printer.note(&format!(
        "{implementation} at {loss_pct}% loss ({detail}): snapshot {}; link A->B {}; B->A {}; \
         kernel TUN drops {:?}/{:?}",
        load.snapshot_secs
            .map_or("not done within the cap".to_owned(), |s| format!(
                "in {s:.1} s"
            )),
        stats.a_to_b,
        stats.b_to_a,
        link.kernel_drops(Side::A),
        link.kernel_drops(Side::B),
    ));
    Report {
        implementation: implementation.to_owned(),
        scenario: "wan".to_owned(),
        ..Report::of(&Figures {
            rtt_ms: (ONE_WAY.as_millis() * 2) as u64,
            loss_pct,
            hb_p50_ms: ms(&load.heartbeats, 0.5),
            hb_p99_ms: ms(&load.heartbeats, 0.99),
            hb_max_ms: report::max_us(&load.heartbeats) / 1000.0,
            hb_lost: load.unanswered,
            idle_hb_p50_ms: ms(&idle, 0.5),
            idle_hb_p99_ms: ms(&idle, 0.99),
            snapshot_mbit_s: load.snapshot_mbit_s,
            snapshot_s: load.snapshot_secs,
            append_mbit_s: load.append_mbit_s,
            drop_loss: stats.a_to_b.dropped_loss + stats.b_to_a.dropped_loss,
            drop_queue: stats.a_to_b.dropped_queue + stats.b_to_a.dropped_queue,
        })
    }
}

/// The figures of one implementation at one loss rate.
#[derive(Serialize)]
struct Figures {
    rtt_ms: u64,
    loss_pct: f64,
    hb_p50_ms: f64,
    hb_p99_ms: f64,
    hb_max_ms: f64,
    hb_lost: u64,
    idle_hb_p50_ms: f64,
    idle_hb_p99_ms: f64,
    snapshot_mbit_s: f64,
    /// `None` (`null`): not done within the phase's cap.
    snapshot_s: Option<f64>,
    append_mbit_s: f64,
    drop_loss: u64,
    drop_queue: u64,
}

fn measure<C: Client>(nodes: Nodes<C>, options: &Options) -> (String, Histogram<u64>, Loaded) {
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
            options.idle(),
            Arc::new(AtomicBool::new(false)),
        ))
        .0;
    let load = nodes.leader.run(loaded(
        client.clone(),
        nodes.received.clone(),
        options.loaded_cap(),
    ));
    nodes.leader.run(async move { client.close().await });
    if let Some(follower) = nodes.follower_quic.clone() {
        nodes.follower.run(async move { follower.close().await });
    }
    let detail = nodes.detail.clone();
    drop(nodes);
    (detail, idle, load)
}
