//! Load (issue 8, item 3): five nodes on 127.0.0.1, each sending every other node heartbeats,
//! pipelined appends and snapshots at once, for 60 s (`#[ignore]`d: run it with
//! `cargo test --test quic_load -- --ignored --nocapture`) or, in the regular test run, for 3 s.
//!
//! Checked: zero failed RPCs; zero lost or reordered appends (each receiver checks, per sender,
//! that the appends' positions come as 0, 1, 2, ... and their payloads match, and at the end has
//! exactly as many as the sender had acknowledged); every snapshot arrives byte-exact; every
//! transport task ends at close. Printed: the totals, heartbeat latency, and the process's peak
//! resident memory (VmHWM) before and after.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::pattern::Pattern;
use common::{Fixture, header};
use hdrhistogram::Histogram;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, Incoming, InstallSnapshotRequest,
    InstallSnapshotResponse, Log, QuicTransport, Rpc, ServerAddress, ServerId, SnapshotReader,
    Transport,
};
use tokio::io::AsyncReadExt;
use tokio::time::{Instant, MissedTickBehavior};

const NODES: usize = 5;
/// Bound on any single wait once the load has stopped.
const GUARD: Duration = Duration::from_secs(120);

/// How hard and how long to push.
#[derive(Debug, Clone, Copy)]
struct Plan {
    duration: Duration,
    /// Pause between two heartbeats of one pair.
    heartbeat_interval: Duration,
    /// Appends kept outstanding on each pipeline.
    window: usize,
    /// Payload bytes of each append's one entry.
    entry_size: usize,
    /// Size of each snapshot; each pair sends them back to back.
    snapshot_size: u64,
}

// ---------------------------------------------------------------------------------------------
// Payloads the receiver can check.

/// Reads a snapshot to its end, comparing it with the pattern `seed` regenerates.
async fn verify_snapshot(reader: &mut SnapshotReader, seed: u64) -> Result<u64, String> {
    let mut expected = Pattern::new(seed, reader.declared_size());
    let (mut got, mut want) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    let mut total = 0u64;
    loop {
        let n = reader
            .read(&mut got)
            .await
            .map_err(|e| format!("read failed after {total} bytes: {e}"))?;
        if n == 0 {
            return Ok(total);
        }
        expected.fill(&mut want[..n]);
        if got[..n] != want[..n] {
            return Err(format!("bytes differ within {total}..{}", total + n as u64));
        }
        total += n as u64;
    }
}

/// The payload of the append at position `seq` of a pipeline.
fn entry_payload(seq: u64, size: usize) -> Bytes {
    seq.to_le_bytes()
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect()
}

/// The process's peak and current resident set, in KiB (Linux).
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

// ---------------------------------------------------------------------------------------------
// Receiving side.

/// What one node received.
#[derive(Default)]
struct Received {
    /// Per sender: the position the next append must have.
    next: HashMap<ServerId, u64>,
    /// Per sender: appends received.
    appends: HashMap<ServerId, u64>,
    heartbeats: u64,
    snapshots: u64,
    snapshot_bytes: u64,
    /// Lost, reordered or corrupted appends, broken snapshots, unexpected RPCs.
    violations: Vec<String>,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Heartbeats answered on the fast path; appends checked in the order the consumer takes them
/// (the order the pipeline delivered them) and answered at once; snapshots verified on their
/// own task.
fn receive(node: &QuicTransport, mut incoming: Incoming, plan: Plan) -> Shared<Received> {
    let received = Shared::<Received>::default();
    let me = header(node);
    {
        let (me, received) = (me.clone(), received.clone());
        node.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
            lock(&received).heartbeats += 1;
            let term = match rpc.command() {
                Command::AppendEntries(r) => r.term,
                _ => 0,
            };
            let response = AppendEntriesResponse {
                header: me.clone(),
                term,
                last_log: 0,
                success: true,
                no_retry_backoff: false,
            };
            rpc.respond(Ok(response.into()));
        })));
    }
    let state = received.clone();
    tokio::spawn(async move {
        while let Some(mut rpc) = incoming.recv().await {
            match rpc.command().clone() {
                Command::AppendEntries(r) => {
                    let from = r.header.id.clone();
                    let seq = r.prev_log_entry;
                    {
                        let mut st = lock(&state);
                        let next = st.next.entry(from.clone()).or_insert(0);
                        let expected = *next;
                        *next = seq + 1;
                        *st.appends.entry(from.clone()).or_insert(0) += 1;
                        if seq != expected {
                            st.violations.push(format!(
                                "append from {from}: position {seq}, expected {expected}"
                            ));
                        }
                        let intact = r.entries.len() == 1
                            && r.entries[0].index == seq + 1
                            && r.entries[0].data == entry_payload(seq, plan.entry_size);
                        if !intact {
                            st.violations
                                .push(format!("append from {from} at {seq}: entries differ"));
                        }
                    }
                    let response = AppendEntriesResponse {
                        header: me.clone(),
                        term: r.term,
                        last_log: seq,
                        success: true,
                        no_retry_backoff: false,
                    };
                    rpc.respond(Ok(response.into()));
                }
                Command::InstallSnapshot(r) => {
                    let mut reader = rpc.take_snapshot().unwrap();
                    let (me, state) = (me.clone(), state.clone());
                    tokio::spawn(async move {
                        let verified = verify_snapshot(&mut reader, r.last_log_index).await;
                        drop(reader);
                        let success = {
                            let mut st = lock(&state);
                            match verified {
                                Ok(bytes) => {
                                    st.snapshots += 1;
                                    st.snapshot_bytes += bytes;
                                    true
                                }
                                Err(e) => {
                                    st.violations.push(format!(
                                        "snapshot {} from {}: {e}",
                                        r.last_log_index, r.header.id
                                    ));
                                    false
                                }
                            }
                        };
                        let response = InstallSnapshotResponse {
                            header: me,
                            term: r.term,
                            success,
                        };
                        rpc.respond(Ok(response.into()));
                    });
                }
                other => lock(&state)
                    .violations
                    .push(format!("unexpected RPC {other:?}")),
            }
        }
    });
    received
}

// ---------------------------------------------------------------------------------------------
// Sending side.

/// What the senders saw, summed over every pair.
struct Sent {
    heartbeats: u64,
    heartbeat_latency: Histogram<u64>,
    /// Per (sender, receiver): appends acknowledged.
    appends: HashMap<(ServerId, ServerId), u64>,
    append_latency: Histogram<u64>,
    snapshots: u64,
    snapshot_bytes: u64,
    failures: Vec<String>,
    /// Pairs whose pipeline failed (their appends in flight may have arrived unacknowledged).
    broken_pipelines: HashSet<(ServerId, ServerId)>,
}

impl Sent {
    fn new() -> Self {
        Self {
            heartbeats: 0,
            heartbeat_latency: Histogram::new(3).unwrap(),
            appends: HashMap::new(),
            append_latency: Histogram::new(3).unwrap(),
            snapshots: 0,
            snapshot_bytes: 0,
            failures: Vec::new(),
            broken_pipelines: HashSet::new(),
        }
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

async fn heartbeats(
    from: QuicTransport,
    id: ServerId,
    addr: ServerAddress,
    plan: Plan,
    deadline: Instant,
    sent: Shared<Sent>,
) {
    let mut tick = tokio::time::interval(plan.heartbeat_interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let term = 7;
    while Instant::now() < deadline {
        tick.tick().await;
        let started = Instant::now();
        let request = AppendEntriesRequest::heartbeat(header(&from), term);
        let result = from.append_entries(&id, &addr, request).await;
        let mut s = lock(&sent);
        match result {
            Ok(r) if r.success && r.term == term => {
                s.heartbeats += 1;
                s.heartbeat_latency
                    .record(micros(started.elapsed()))
                    .unwrap();
            }
            other => s
                .failures
                .push(format!("heartbeat {} -> {id}: {other:?}", from.local_id())),
        }
    }
}

/// One pipeline for the whole run, `plan.window` appends outstanding: send while below the
/// window, then take the oldest completion (checking its order and answer); at the deadline,
/// take the rest.
async fn appends(
    from: QuicTransport,
    id: ServerId,
    addr: ServerAddress,
    plan: Plan,
    deadline: Instant,
    sent: Shared<Sent>,
) {
    let fail = |what: String| {
        let mut s = lock(&sent);
        s.failures.push(what);
        s.broken_pipelines
            .insert((from.local_id().clone(), id.clone()));
    };
    let pipeline = match from.append_entries_pipeline(&id, &addr).await {
        Ok(p) => p,
        Err(e) => return fail(format!("pipeline {} -> {id}: {e}", from.local_id())),
    };
    let (mut next_seq, mut acked) = (0u64, 0u64);
    loop {
        let sending = Instant::now() < deadline;
        if sending && pipeline.in_flight() < plan.window {
            let request = AppendEntriesRequest {
                header: header(&from),
                term: 7,
                prev_log_entry: next_seq,
                prev_log_term: 7,
                entries: vec![Log::command(
                    next_seq + 1,
                    7,
                    entry_payload(next_seq, plan.entry_size),
                )],
                leader_commit_index: next_seq,
            };
            match pipeline.send(request).await {
                Ok(seq) if seq == next_seq => next_seq += 1,
                other => {
                    return fail(format!(
                        "append {next_seq} {} -> {id}: send gave {other:?}",
                        from.local_id()
                    ));
                }
            }
            continue;
        }
        if acked == next_seq {
            break;
        }
        // Something is outstanding, so `next` yields it.
        let Some(done) = pipeline.next().await else {
            return fail(format!("pipeline {} -> {id} closed early", from.local_id()));
        };
        let ok = done.seq == acked
            && matches!(&done.response, Ok(r) if r.success && r.last_log == acked);
        if !ok {
            return fail(format!(
                "append {acked} {} -> {id}: completion {} with {:?}",
                from.local_id(),
                done.seq,
                done.response
            ));
        }
        acked += 1;
        let mut s = lock(&sent);
        s.append_latency
            .record(micros(done.started.elapsed()))
            .unwrap();
        *s.appends
            .entry((from.local_id().clone(), id.clone()))
            .or_insert(0) += 1;
    }
    pipeline.close();
}

/// Snapshots back to back (at least one), each seeded by its pair and number.
async fn snapshots(
    from: QuicTransport,
    (i, j): (usize, usize),
    id: ServerId,
    addr: ServerAddress,
    plan: Plan,
    deadline: Instant,
    sent: Shared<Sent>,
) {
    for k in 0u64.. {
        let seed = ((i as u64) << 48) | ((j as u64) << 40) | k;
        let request = InstallSnapshotRequest {
            header: header(&from),
            snapshot_version: 1,
            term: 7,
            last_log_index: seed,
            last_log_term: 7,
            configuration: Bytes::from_static(b"n0,n1,n2,n3,n4"),
            configuration_index: 1,
            size: plan.snapshot_size,
        };
        let result = from
            .install_snapshot(&id, &addr, request, Pattern::new(seed, plan.snapshot_size))
            .await;
        let mut s = lock(&sent);
        match result {
            Ok(r) if r.success => {
                s.snapshots += 1;
                s.snapshot_bytes += plan.snapshot_size;
            }
            other => {
                s.failures.push(format!(
                    "snapshot {k} {} -> {id}: {other:?}",
                    from.local_id()
                ));
                return;
            }
        }
        drop(s);
        if Instant::now() >= deadline {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The run.

fn quantiles(h: &Histogram<u64>) -> String {
    format!(
        "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0,
        h.max() as f64 / 1000.0
    )
}

async fn run(plan: Plan) {
    common::init_tracing();
    let (hwm_before, _) = memory_kib();
    let fx = Fixture::new("load");
    let mut nodes = Vec::new();
    let mut received = Vec::new();
    for i in 0..NODES {
        let config = fx
            .config(&format!("n{i}"))
            .rpc_timeout(Duration::from_secs(10))
            .connect_timeout(Duration::from_secs(5));
        let (node, incoming) = QuicTransport::bind(config).await.unwrap();
        received.push(receive(&node, incoming, plan));
        nodes.push(node);
    }
    let sent = Arc::new(Mutex::new(Sent::new()));
    let started = Instant::now();
    let deadline = started + plan.duration;
    let mut tasks = Vec::new();
    for (i, from) in nodes.iter().enumerate() {
        for (j, to) in nodes.iter().enumerate() {
            if i == j {
                continue;
            }
            let (id, addr) = (to.local_id().clone(), to.local_addr());
            tasks.push(tokio::spawn(heartbeats(
                from.clone(),
                id.clone(),
                addr.clone(),
                plan,
                deadline,
                sent.clone(),
            )));
            tasks.push(tokio::spawn(appends(
                from.clone(),
                id.clone(),
                addr.clone(),
                plan,
                deadline,
                sent.clone(),
            )));
            tasks.push(tokio::spawn(snapshots(
                from.clone(),
                (i, j),
                id,
                addr,
                plan,
                deadline,
                sent.clone(),
            )));
        }
    }
    for task in tasks {
        tokio::time::timeout(plan.duration + GUARD, task)
            .await
            .expect("a sender hung")
            .unwrap();
    }
    let elapsed = started.elapsed();
    let (hwm_loaded, rss_loaded) = memory_kib();
    let closing: Vec<_> = nodes
        .iter()
        .map(|node| {
            let node = node.clone();
            tokio::spawn(async move { node.close().await })
        })
        .collect();
    for close in closing {
        tokio::time::timeout(GUARD, close)
            .await
            .expect("close hung")
            .unwrap();
    }
    for node in &nodes {
        assert_eq!(
            node.task_count(),
            0,
            "{} left tasks running",
            node.local_id()
        );
    }

    let sent = lock(&sent);
    let mut violations = Vec::new();
    let (mut appends_received, mut heartbeats_received) = (0, 0);
    let (mut snapshots_received, mut snapshot_bytes_received) = (0, 0);
    let mut unacknowledged = 0;
    for (to, received) in nodes.iter().zip(&received) {
        let r = lock(received);
        violations.extend(r.violations.iter().cloned());
        appends_received += r.appends.values().sum::<u64>();
        heartbeats_received += r.heartbeats;
        snapshots_received += r.snapshots;
        snapshot_bytes_received += r.snapshot_bytes;
        for from in &nodes {
            if from.local_id() == to.local_id() {
                continue;
            }
            let key = (from.local_id().clone(), to.local_id().clone());
            let acked = sent.appends.get(&key).copied().unwrap_or(0);
            let got = r.appends.get(from.local_id()).copied().unwrap_or(0);
            // An acknowledged append the receiver never saw is lost; one it saw but the
            // sender never had acknowledged is allowed only after the pipeline failed.
            if got < acked {
                violations.push(format!(
                    "{} -> {}: {acked} appends acknowledged, only {got} received",
                    key.0, key.1
                ));
            } else if got > acked {
                if sent.broken_pipelines.contains(&key) {
                    unacknowledged += got - acked;
                } else {
                    violations.push(format!(
                        "{} -> {}: {got} appends received, only {acked} sent and acknowledged",
                        key.0, key.1
                    ));
                }
            }
            if acked == 0 {
                violations.push(format!("{} -> {}: no append went through", key.0, key.1));
            }
        }
    }
    let appends_acked: u64 = sent.appends.values().sum();
    let secs = elapsed.as_secs_f64();
    println!("--- quicraft load: {NODES} nodes, {plan:?}");
    println!("ran {elapsed:.2?}");
    println!(
        "heartbeats: {} ok ({:.0}/s), {heartbeats_received} received; latency {}",
        sent.heartbeats,
        sent.heartbeats as f64 / secs,
        quantiles(&sent.heartbeat_latency)
    );
    println!(
        "pipelined appends: {appends_acked} acknowledged ({:.0}/s), {appends_received} received; \
         completion latency {}",
        appends_acked as f64 / secs,
        quantiles(&sent.append_latency)
    );
    println!(
        "snapshots: {} ok, {:.1} MiB ({:.1} MiB/s); {snapshots_received} received, {:.1} MiB",
        sent.snapshots,
        sent.snapshot_bytes as f64 / (1 << 20) as f64,
        sent.snapshot_bytes as f64 / (1 << 20) as f64 / secs,
        snapshot_bytes_received as f64 / (1 << 20) as f64,
    );
    println!(
        "failed RPCs: {}; lost, reordered or corrupted: {}; delivered but unacknowledged \
         (after a pipeline failed): {unacknowledged}",
        sent.failures.len(),
        violations.len()
    );
    for failure in sent.failures.iter().take(20) {
        println!("  failed: {failure}");
    }
    for violation in violations.iter().take(20) {
        println!("  violation: {violation}");
    }
    println!(
        "memory: VmHWM {} MiB before, {} MiB at the end of the load (VmRSS {} MiB)",
        hwm_before / 1024,
        hwm_loaded / 1024,
        rss_loaded / 1024
    );

    assert!(
        sent.failures.is_empty(),
        "{} RPCs failed, first: {:?}",
        sent.failures.len(),
        &sent.failures[..sent.failures.len().min(5)]
    );
    assert!(
        violations.is_empty(),
        "{} violations, first: {:?}",
        violations.len(),
        &violations[..violations.len().min(5)]
    );
    let pairs = (NODES * (NODES - 1)) as u64;
    assert_eq!(appends_received, appends_acked + unacknowledged);
    // A hedged heartbeat's copy may reach the receiver too (none goes to a peer on this
    // host by default, but the count does not depend on it): none is lost, and nothing but
    // copies is extra.
    let copies: u64 = nodes.iter().map(|n| n.stats().heartbeat_copies).sum();
    assert!(
        (sent.heartbeats..=sent.heartbeats + copies).contains(&heartbeats_received),
        "{heartbeats_received} heartbeats received of {} sent with {copies} copies",
        sent.heartbeats
    );
    assert_eq!(snapshots_received, sent.snapshots);
    assert!(sent.snapshots >= pairs, "a pair sent no snapshot");
    assert!(sent.heartbeats >= pairs, "a pair sent no heartbeat");
    // Bounded memory: generous, to catch a leak or whole-snapshot buffering (each snapshot
    // alone is streamed through 64 KiB buffers).
    assert!(
        hwm_loaded < 1024 * 1024,
        "peak resident memory {} MiB",
        hwm_loaded / 1024
    );
}

/// The stress test: 60 s. `cargo test --test quic_load -- --ignored --nocapture`.
///
/// BUG(src), fails today: the nodes dial each other at once at start, so some pairs briefly
/// hold two connections; a pipeline opened on the one that loses the tie-break fails with
/// `ConnectionLost` ("closed by peer: duplicate connection") when that connection is retired,
/// about 2 × (`rpc_timeout` + `connect_timeout`) = 30 s into the run. Reproduced in 3 s by
/// `pipeline_on_a_duplicate_connection_survives_its_retirement` in `quic_faults.rs`. The 3 s
/// variant below ends before any retirement, so it passes.
#[ignore = "60 s stress test; run with --ignored"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_for_60_s_lose_nothing() {
    run(Plan {
        duration: Duration::from_secs(60),
        heartbeat_interval: Duration::from_millis(20),
        window: 64,
        entry_size: 256,
        snapshot_size: 4 * 1024 * 1024,
    })
    .await;
}

/// The same load for 3 s, in every test run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_for_3_s_lose_nothing() {
    run(Plan {
        duration: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(20),
        window: 64,
        entry_size: 256,
        snapshot_size: 1024 * 1024,
    })
    .await;
}
