//! Loopback benchmarks of quicraft's QUIC transport, beside the in-memory transport as a
//! floor.
//!
//! ```text
//! cargo bench --bench transport                      # every scenario, both transports, a table
//! cargo bench --bench transport -- --json            # one JSON line per result
//! cargo bench --bench transport -- --quick           # every scenario shrunk: well under 20 s
//! cargo bench --bench transport -- --scenario rtt --scenario hol --impl quicraft
//! cargo bench --bench transport -- --runtime multi   # a multi-thread runtime per node
//! cargo bench --bench transport -- --metrics         # with a Prometheus recorder installed
//! ```
//!
//! Two nodes on 127.0.0.1 with mutual TLS, each node's transport in its own tokio runtime on its
//! own OS thread, as two processes would be (the in-memory pair shares one runtime). The leader
//! sends; the follower answers heartbeats from its heartbeat handler (the fast path) and
//! everything else from its consumer loop, which reads snapshot data to the end and discards
//! it. Every scenario starts from a fresh pair of nodes and warms the connection up with
//! heartbeats before it measures. Latencies are recorded in HDR histograms and reported in
//! microseconds; MB are 10^6 bytes.
//!
//! Scenarios (`--scenario NAME`, repeatable; all by default), each run against every
//! implementation (`--impl quicraft|inmem|raw-quinn`, repeatable; all by default; `raw-quinn`
//! is quinn alone on the same threads and mTLS, and runs `rtt` and `concurrency` only):
//! - `rtt`: 20,000 sequential heartbeats (AppendEntries without entries).
//! - `throughput`: 10,000 AppendEntries of 64 entries of 1 KiB, through a pipeline with 128 in
//!   flight, then one at a time; MB/s of entry payload.
//! - `snapshot`: one 1 GiB InstallSnapshot from a source repeating one 1 MiB block. It runs in
//!   a child process (this binary again, with `--child`), so the peak RSS reported is its own.
//! - `hol`: heartbeats paced every 1 ms on an idle connection, then while 512 MiB snapshots
//!   stream to the same follower: the loaded p99 against the idle p99.
//! - `concurrency`: 64 tasks sending heartbeats back to back for 3 s over the one connection.
//! - `idle`: a connected pair doing nothing for 10 s: the CPU both nodes use (% of one core).
//! - `growth` (quicraft only): a leader and 64 followers, each a node process of its own
//!   (`examples/rpc_node.rs`), measured from outside through `/proc`: memory per idle
//!   connection on the dialling side, on the accepting side (one connection per process) and
//!   at scale (one process accepting 64), handshakes per second and CPU per handshake on each
//!   side, and 64 tasks' heartbeat and 64 x 1 KiB AppendEntries rates to all 64 peers against
//!   the rates to one, with the leader's CPU per RPC (`support/growth.rs`). `--busy-poll`,
//!   `--stream-window` and `--max-udp-payload` reach every node process.
//!
//! `rtt` and `concurrency` also report the CPU time per RPC, both nodes together (they share
//! this process).
//! - `restart` (quicraft only): two node processes (`examples/rpc_node.rs`, built by the
//!   scenario), one killed with SIGKILL and started again on its address 20 times in each id
//!   order; how long the first call after each restart takes to succeed, with the restarted
//!   node calling first and with the survivor calling first (see `support/restart.rs`).

mod support;

use std::future::Future;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use quicraft::Transport;
use serde::Serialize;
use tokio::time::MissedTickBehavior;

use support::nodes::{
    Link, MAX_IN_FLIGHT, Pair, RuntimeKind, Tuning, inmem_pair, quic_pair, snapshot_block,
};
use support::report::{
    Concurrency, Printer, Report, Rtt, cpu_us_per, latency_histogram, max_us, mb_per_s,
    peak_rss_kb, per_second, process_cpu, quantile_us, record,
};

const MIB: u64 = 1024 * 1024;
/// Entries per AppendEntries in `throughput`.
const ENTRIES_PER_BATCH: u64 = 64;
/// Payload bytes per entry in `throughput`.
const ENTRY_SIZE: u64 = 1024;
/// The block every snapshot's data repeats.
const SNAPSHOT_BLOCK: u64 = MIB;
/// Interval of the paced heartbeats of `hol`.
const HEARTBEAT_PACE: Duration = Duration::from_millis(1);
/// Followers of `growth`.
const GROWTH_PEERS: usize = 64;
/// Concurrent heartbeat senders in `concurrency`.
const CONCURRENT_TASKS: u64 = 64;

/// How much each scenario does: the issue's figures, or `--quick`'s.
#[derive(Debug, Clone, Copy)]
struct Workload {
    /// Heartbeats sent before any measurement: the dial, the handshake, the first round trips.
    warmup_heartbeats: u64,
    rtt_heartbeats: u64,
    throughput_batches: u64,
    /// Batches sent, untimed, in each mode before its measured ones.
    throughput_warmup_batches: u64,
    snapshot_bytes: u64,
    /// How long `hol` measures its paced heartbeats on the idle connection.
    hol_idle: Duration,
    /// Snapshots `hol` streams back to back while it measures the loaded heartbeats.
    hol_snapshots: u64,
    hol_snapshot_bytes: u64,
    concurrency_for: Duration,
    /// Restarts of `restart` in each id order (half with each side calling first).
    restart_rounds: u64,
    /// How long `idle` measures a connected pair doing nothing.
    idle_for: Duration,
}

impl Workload {
    const FULL: Self = Self {
        warmup_heartbeats: 1_000,
        rtt_heartbeats: 20_000,
        throughput_batches: 10_000,
        throughput_warmup_batches: 500,
        snapshot_bytes: 1024 * MIB,
        hol_idle: Duration::from_secs(3),
        hol_snapshots: 4,
        hol_snapshot_bytes: 512 * MIB,
        concurrency_for: Duration::from_secs(3),
        restart_rounds: 10,
        idle_for: Duration::from_secs(10),
    };

    const QUICK: Self = Self {
        warmup_heartbeats: 200,
        rtt_heartbeats: 2_000,
        throughput_batches: 1_000,
        throughput_warmup_batches: 100,
        snapshot_bytes: 256 * MIB,
        hol_idle: Duration::from_millis(500),
        hol_snapshots: 2,
        hol_snapshot_bytes: 128 * MIB,
        concurrency_for: Duration::from_secs(1),
        restart_rounds: 3,
        idle_for: Duration::from_secs(2),
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Rtt,
    Throughput,
    Snapshot,
    Hol,
    Concurrency,
    Idle,
    Growth,
    Restart,
}

impl Scenario {
    const ALL: [Self; 8] = [
        Self::Rtt,
        Self::Throughput,
        Self::Snapshot,
        Self::Hol,
        Self::Concurrency,
        Self::Idle,
        Self::Growth,
        Self::Restart,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Rtt => "rtt",
            Self::Throughput => "throughput",
            Self::Snapshot => "snapshot",
            Self::Hol => "hol",
            Self::Concurrency => "concurrency",
            Self::Idle => "idle",
            Self::Growth => "growth",
            Self::Restart => "restart",
        }
    }

    /// Whether it runs in a child process of its own, which then holds nothing else in memory.
    fn own_process(self) -> bool {
        self == Self::Snapshot
    }

    /// Runs this scenario on `pair`'s leader, then closes the pair.
    fn measure<T: Transport + Clone>(self, pair: Pair<T>, workload: Workload) -> Vec<Report> {
        let reports = match self {
            Self::Rtt => pair.run(|link| rtt(link, workload)),
            Self::Throughput => pair.run(|link| throughput(link, workload)),
            Self::Snapshot => pair.run(|link| snapshot(link, workload)),
            Self::Hol => pair.run(|link| hol(link, workload)),
            Self::Concurrency => pair.run(|link| concurrency(link, workload)),
            Self::Idle => pair.run(|link| idle(link, workload)),
            Self::Restart | Self::Growth => {
                unreachable!("`restart` and `growth` run nodes of their own, not a pair")
            }
        };
        pair.close();
        reports
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Impl {
    Quicraft,
    Inmem,
    /// quinn alone, on the same threads and mutual TLS: the reference quicraft's `rtt` and
    /// `concurrency` compare against (`support/raw_quinn.rs`).
    RawQuinn,
}

impl Impl {
    const ALL: [Self; 3] = [Self::Quicraft, Self::Inmem, Self::RawQuinn];

    fn name(self) -> &'static str {
        match self {
            Self::Quicraft => "quicraft",
            Self::Inmem => "inmem",
            Self::RawQuinn => "raw-quinn",
        }
    }

    /// Runs `scenario` in this process against a fresh pair of this implementation's nodes.
    fn measure(self, scenario: Scenario, workload: Workload, options: &Options) -> Vec<Report> {
        let reports = match self {
            Self::RawQuinn => match scenario {
                Scenario::Rtt | Scenario::Concurrency => {
                    let pair = support::raw_quinn::RawPair::start(options.runtime);
                    let report = if scenario == Scenario::Rtt {
                        pair.rtt(workload.warmup_heartbeats, workload.rtt_heartbeats)
                    } else {
                        pair.concurrency(
                            workload.warmup_heartbeats,
                            CONCURRENT_TASKS,
                            workload.concurrency_for,
                        )
                    };
                    pair.close();
                    vec![report]
                }
                // The reference covers the exchange patterns quinn has on its own.
                _ => return Vec::new(),
            },
            // A restart is of a process and its QUIC endpoint, and growth is the cost of QUIC
            // connections: nothing to compare in memory.
            Self::Inmem if matches!(scenario, Scenario::Restart | Scenario::Growth) => {
                return Vec::new();
            }
            Self::Quicraft if scenario == Scenario::Growth => {
                support::growth::measure(GROWTH_PEERS, workload.concurrency_for, options.tuning())
            }
            Self::Quicraft if scenario == Scenario::Restart => {
                support::restart::measure(workload.restart_rounds)
            }
            Self::Quicraft => {
                scenario.measure(quic_pair(options.runtime, options.tuning()), workload)
            }
            Self::Inmem => scenario.measure(inmem_pair(options.runtime), workload),
        };
        reports
            .into_iter()
            .map(|report| {
                let report = Report {
                    implementation: self.name().to_owned(),
                    scenario: scenario.name().to_owned(),
                    ..report
                };
                match self {
                    Self::Quicraft => report.with(&Settings {
                        metrics: if options.metrics {
                            "prometheus"
                        } else {
                            "none"
                        },
                        busy_poll_us: options.busy_poll,
                        stream_window: options.stream_window,
                        max_udp_payload: options.max_udp_payload,
                    }),
                    Self::Inmem | Self::RawQuinn => report,
                }
            })
            .collect()
    }

    /// Runs `scenario` in a fresh process: this binary, with `--child`, which prints its reports
    /// as JSON lines.
    fn measure_in_child(self, scenario: Scenario, options: &Options) -> Vec<Report> {
        let exe = std::env::current_exe().expect("the path of this benchmark binary");
        let mut child = Command::new(exe);
        child.args(["--child", "--runtime", options.runtime.name()]);
        child.args(["--scenario", scenario.name(), "--impl", self.name()]);
        if let Some(window) = options.busy_poll {
            child.args(["--busy-poll", &window.to_string()]);
        }
        if let Some(window) = options.stream_window {
            child.args(["--stream-window", &window.to_string()]);
        }
        if let Some(bytes) = options.max_udp_payload {
            child.args(["--max-udp-payload", &bytes.to_string()]);
        }
        if options.quick {
            child.arg("--quick");
        }
        if options.metrics {
            child.arg("--metrics");
        }
        let output = child
            .stderr(Stdio::inherit())
            .output()
            .expect("run the child process");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "the {} {} child failed ({}); its output:\n{stdout}",
            self.name(),
            scenario.name(),
            output.status,
        );
        stdout
            .lines()
            .map(|line| {
                Report::from_json(line)
                    .unwrap_or_else(|| panic!("the child printed an unexpected line: {line}"))
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios. Each runs on the leader's runtime and returns its figures.

/// `rtt`: heartbeats one after another.
async fn rtt<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    let started = Instant::now();
    let cpu = process_cpu();
    let latencies = sequential_heartbeats(&link, workload.rtt_heartbeats).await;
    let cpu = process_cpu().saturating_sub(cpu);
    let elapsed = started.elapsed();
    vec![Report::of(&Rtt {
        n: latencies.len(),
        p50_us: quantile_us(&latencies, 0.5),
        p99_us: quantile_us(&latencies, 0.99),
        max_us: max_us(&latencies),
        rpcs_per_s: per_second(latencies.len(), elapsed),
        cpu_us_per_rpc: Some(cpu_us_per(cpu, latencies.len())),
    })]
}

/// `idle`: a connected pair doing nothing (keep-alives only) for a while: the CPU both nodes
/// use, in percent of one core.
async fn idle<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    // Let the warm-up's spins and acknowledgements end first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cpu = process_cpu();
    tokio::time::sleep(workload.idle_for).await;
    let cpu = process_cpu().saturating_sub(cpu);
    vec![Report::of(&Idle {
        seconds: workload.idle_for.as_secs(),
        cpu_percent_of_one_core: 100.0 * cpu.as_secs_f64() / workload.idle_for.as_secs_f64(),
    })]
}

/// The figures of `idle`.
#[derive(Serialize)]
struct Idle {
    seconds: u64,
    cpu_percent_of_one_core: f64,
}

/// `throughput`: batches of 64 entries of 1 KiB, pipelined, then one at a time.
async fn throughput<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    let payload = Bytes::from(vec![0xa5; ENTRY_SIZE as usize]);
    let mut reports = Vec::new();
    for mode in [Replication::Pipeline, Replication::Sequential] {
        replicate(&link, mode, &payload, workload.throughput_warmup_batches).await;
        let started = Instant::now();
        replicate(&link, mode, &payload, workload.throughput_batches).await;
        let elapsed = started.elapsed();
        let payload_bytes = workload.throughput_batches * ENTRIES_PER_BATCH * ENTRY_SIZE;
        reports.push(Report::of(&Throughput {
            mode: mode.name(),
            batches: workload.throughput_batches,
            entries: ENTRIES_PER_BATCH,
            entry_size: ENTRY_SIZE,
            mb_per_s: mb_per_s(payload_bytes, elapsed),
        }));
    }
    reports
}

/// The figures of `throughput`, for one mode.
#[derive(Serialize)]
struct Throughput {
    mode: &'static str,
    batches: u64,
    entries: u64,
    entry_size: u64,
    mb_per_s: f64,
}

/// `snapshot`: one InstallSnapshot read to the end, and the peak RSS of this process.
async fn snapshot<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    let block = snapshot_block(SNAPSHOT_BLOCK as usize);
    let started = Instant::now();
    link.install_snapshot(&block, workload.snapshot_bytes).await;
    let elapsed = started.elapsed();
    vec![Report::of(&Snapshot {
        snapshot_bytes: workload.snapshot_bytes,
        mb_per_s: mb_per_s(workload.snapshot_bytes, elapsed),
        peak_rss_kb: peak_rss_kb(),
    })]
}

/// The figures of `snapshot`.
#[derive(Serialize)]
struct Snapshot {
    snapshot_bytes: u64,
    mb_per_s: f64,
    /// `None` (`null`) without `/proc`.
    peak_rss_kb: Option<u64>,
}

/// `hol`: paced heartbeats on the idle connection, then while snapshots stream to the same
/// follower.
async fn hol<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    let (idle, ()) = paced_heartbeats(&link, tokio::time::sleep(workload.hol_idle)).await;

    let streaming = tokio::spawn({
        let link = link.clone();
        let block = snapshot_block(SNAPSHOT_BLOCK as usize);
        async move {
            let started = Instant::now();
            for _ in 0..workload.hol_snapshots {
                link.install_snapshot(&block, workload.hol_snapshot_bytes)
                    .await;
            }
            started.elapsed()
        }
    });
    let (loaded, streamed_for) = paced_heartbeats(&link, streaming).await;
    let streamed_for = streamed_for.expect("the snapshot task panicked");

    let streamed_bytes = workload.hol_snapshots * workload.hol_snapshot_bytes;
    let (loaded_p99, idle_p99) = (quantile_us(&loaded, 0.99), quantile_us(&idle, 0.99));
    vec![Report::of(&Hol {
        hb_p50_us: quantile_us(&loaded, 0.5),
        hb_p99_us: loaded_p99,
        idle_p99_us: idle_p99,
        p99_ratio_vs_idle: loaded_p99 / idle_p99,
        snapshot_mb_per_s: mb_per_s(streamed_bytes, streamed_for),
    })]
}

/// The figures of `hol`.
#[derive(Serialize)]
struct Hol {
    hb_p50_us: f64,
    hb_p99_us: f64,
    idle_p99_us: f64,
    p99_ratio_vs_idle: f64,
    snapshot_mb_per_s: f64,
}

/// `concurrency`: many tasks sending heartbeats back to back over the one connection.
async fn concurrency<T: Transport + Clone>(link: Link<T>, workload: Workload) -> Vec<Report> {
    sequential_heartbeats(&link, workload.warmup_heartbeats).await;
    let started = Instant::now();
    let cpu = process_cpu();
    let deadline = started + workload.concurrency_for;
    let senders: Vec<_> = (0..CONCURRENT_TASKS)
        .map(|_| tokio::spawn(heartbeats_until(link.clone(), deadline)))
        .collect();
    let mut latencies = latency_histogram();
    for sender in senders {
        let sent = sender.await.expect("a heartbeat task panicked");
        latencies
            .add(sent)
            .expect("histograms with the same bounds add up");
    }
    let elapsed = started.elapsed();
    vec![Report::of(&Concurrency {
        tasks: CONCURRENT_TASKS,
        rpcs_per_s: per_second(latencies.len(), elapsed),
        p99_us: quantile_us(&latencies, 0.99),
        cpu_us_per_rpc: Some(cpu_us_per(
            process_cpu().saturating_sub(cpu),
            latencies.len(),
        )),
    })]
}

// ---------------------------------------------------------------------------------------------
// What the scenarios are made of.

/// `n` heartbeats, each sent when the last was answered; their latencies.
async fn sequential_heartbeats<T: Transport + Clone>(link: &Link<T>, n: u64) -> Histogram<u64> {
    let mut latencies = latency_histogram();
    for _ in 0..n {
        let sent = Instant::now();
        link.heartbeat().await;
        record(&mut latencies, sent.elapsed());
    }
    latencies
}

/// Heartbeats back to back until `deadline`; their latencies.
async fn heartbeats_until<T: Transport + Clone>(
    link: Link<T>,
    deadline: Instant,
) -> Histogram<u64> {
    let mut latencies = latency_histogram();
    while Instant::now() < deadline {
        let sent = Instant::now();
        link.heartbeat().await;
        record(&mut latencies, sent.elapsed());
    }
    latencies
}

/// A heartbeat every [`HEARTBEAT_PACE`] (skipping ticks missed while one is out) until `until`
/// completes; their latencies, and what `until` returned.
async fn paced_heartbeats<T, F>(link: &Link<T>, until: F) -> (Histogram<u64>, F::Output)
where
    T: Transport + Clone,
    F: Future,
{
    let mut latencies = latency_histogram();
    let mut ticks = tokio::time::interval(HEARTBEAT_PACE);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    tokio::pin!(until);
    loop {
        tokio::select! {
            biased;
            output = &mut until => return (latencies, output),
            _ = ticks.tick() => {
                let sent = Instant::now();
                link.heartbeat().await;
                record(&mut latencies, sent.elapsed());
            }
        }
    }
}

/// How `throughput` sends its batches.
#[derive(Debug, Clone, Copy)]
enum Replication {
    /// Through an [`AppendPipeline`](quicraft::AppendPipeline), `MAX_IN_FLIGHT` outstanding.
    Pipeline,
    /// One AppendEntries at a time, each waiting for the last one's answer.
    Sequential,
}

impl Replication {
    fn name(self) -> &'static str {
        match self {
            Self::Pipeline => "pipeline",
            Self::Sequential => "sequential",
        }
    }
}

/// Replicates `batches` batches of entries carrying `payload` and waits for every answer.
async fn replicate<T: Transport + Clone>(
    link: &Link<T>,
    mode: Replication,
    payload: &Bytes,
    batches: u64,
) {
    let batch = |seq| link.batch(seq, ENTRIES_PER_BATCH, payload);
    match mode {
        Replication::Sequential => {
            for seq in 0..batches {
                link.append(batch(seq)).await;
            }
        }
        Replication::Pipeline => {
            let pipeline = link.pipeline().await;
            assert_eq!(pipeline.max_in_flight(), MAX_IN_FLIGHT);
            let send = async {
                for seq in 0..batches {
                    pipeline.send(batch(seq)).await.expect("pipelined send");
                }
            };
            let complete = async {
                for _ in 0..batches {
                    let done = pipeline.next().await.expect("the pipeline ended early");
                    let response = done.response.expect("pipelined AppendEntries");
                    assert!(response.success, "AppendEntries refused");
                }
            };
            tokio::join!(send, complete);
            pipeline.close();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line.

#[derive(Parser)]
#[command(
    about = "Loopback benchmarks of quicraft's QUIC transport, beside the in-memory transport.",
    override_usage = "cargo bench --bench transport -- [OPTIONS]"
)]
struct Options {
    /// Shrink every scenario (the whole run takes well under 20 s).
    #[arg(long)]
    quick: bool,
    /// One JSON line per result instead of a table.
    #[arg(long)]
    json: bool,
    /// Run every scenario in this process and print JSON (how `snapshot` gets a process of its
    /// own).
    #[arg(long, hide = true)]
    child: bool,
    /// Each node's tokio runtime.
    #[arg(long, value_enum, value_name = "KIND", default_value = "current")]
    runtime: RuntimeKind,
    /// Record the transport's metrics in a Prometheus recorder (as the cluster example's
    /// --metrics does, without serving them); reported as metrics.
    #[arg(long)]
    metrics: bool,
    /// QuicTuning::busy_poll window in microseconds (0: off; default: the transport's
    /// default); reported as busy_poll_us (null: the default).
    #[arg(long, value_name = "US")]
    busy_poll: Option<u64>,
    /// QuicTuning::stream_receive_window in bytes (default: the transport's, 262144 for these
    /// loopback-bound nodes, 1250000 elsewhere); reported as stream_window (null: the default).
    #[arg(long, value_name = "BYTES")]
    stream_window: Option<u32>,
    /// QuicTuning::max_udp_payload (default: the transport's, from the loopback MTU for these
    /// loopback-bound nodes, 65488, which lets path MTU discovery use 64 KiB datagrams; 1452
    /// keeps packets Ethernet-sized); reported as max_udp_payload (null: the default).
    #[arg(long, value_name = "BYTES")]
    max_udp_payload: Option<u16>,
    /// A scenario to run (repeatable; default all).
    #[arg(long = "scenario", value_enum, value_name = "NAME")]
    scenarios: Vec<Scenario>,
    /// An implementation to run against (repeatable; default all).
    #[arg(long = "impl", value_enum, value_name = "NAME")]
    impls: Vec<Impl>,
    /// What `cargo bench` passes to every bench binary; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

impl Options {
    /// The QUIC transport's settings that differ from its defaults.
    fn tuning(&self) -> Tuning {
        Tuning {
            busy_poll: self.busy_poll.map(Duration::from_micros),
            stream_window: self.stream_window,
            max_udp_payload: self.max_udp_payload,
        }
    }
}

/// The settings of a quicraft run, reported beside its figures.
#[derive(Serialize)]
struct Settings {
    metrics: &'static str,
    busy_poll_us: Option<u64>,
    stream_window: Option<u32>,
    max_udp_payload: Option<u16>,
}

/// Installs a Prometheus recorder with the cluster example's latency buckets, without a
/// listener: every metric the transport records is recorded, none is served.
fn install_recorder() {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    const SECONDS: [f64; 16] = [
        0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
        0.5, 1.0, 2.5, 10.0,
    ];
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &SECONDS)
        .expect("latency buckets")
        .build_recorder();
    metrics::set_global_recorder(recorder).expect("the only recorder of this process");
}

/// The items of `all` that were `chosen` (all of them when none was), each once, in `all`'s
/// order.
fn in_order<T: Copy + PartialEq>(all: &[T], chosen: &[T]) -> Vec<T> {
    all.iter()
        .copied()
        .filter(|item| chosen.is_empty() || chosen.contains(item))
        .collect()
}

fn main() {
    let mut options = Options::parse();
    options.scenarios = in_order(&Scenario::ALL, &options.scenarios);
    options.impls = in_order(&Impl::ALL, &options.impls);
    let workload = if options.quick {
        Workload::QUICK
    } else {
        Workload::FULL
    };
    if options.metrics {
        install_recorder();
    }
    let mut printer = Printer::new(options.json || options.child);
    let started = Instant::now();
    if !options.child {
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        printer.note(&format!(
            "quicraft transport benchmark: {} workload, a {} runtime per node, {cpus} CPUs; \
             latencies in us, MB = 10^6 bytes",
            if options.quick { "quick" } else { "full" },
            options.runtime.name(),
        ));
    }
    for &scenario in &options.scenarios {
        for &implementation in &options.impls {
            let reports = if scenario.own_process() && !options.child {
                implementation.measure_in_child(scenario, &options)
            } else {
                implementation.measure(scenario, workload, &options)
            };
            for report in &reports {
                printer.print(report);
            }
        }
    }
    if !options.child {
        printer.note(&format!("done in {:.1} s", started.elapsed().as_secs_f64()));
    }
}
