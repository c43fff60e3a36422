//! A snapshot across a link that goes down long enough for its connection to be lost, and
//! comes back: the snapshot resumes and completes with the right hash, and the bytes sent
//! twice are at most one flow-control window (issue 16, item 2).
//!
//! Two nodes in one process, each on a thread of its own inside one of two network
//! namespaces joined by a veth pair (198.18.7.1 and 198.18.7.2 /24); the link is cut with
//! `ip link set down` and restored with `up`. The connections' idle timeout is 1 s, so the
//! cut loses them. Needs root and `ip` (iproute2); skips, printing why, without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::Fixture;
use common::netns::{VethHosts, unsupported};
use common::pattern::{Fnv, Pattern};
use quicraft::{
    InstallSnapshotResponse, QuicConfig, QuicTransport, QuicTuning, Response, ServerAddress,
    ServerId, SnapshotPacing, Transport, TransportStats,
};
use tokio::io::AsyncReadExt;

const SIZE: u64 = 24 << 20;
const SEED: u64 = 11;
/// The receiver's stream flow-control window: at most this is sent twice per resume.
const WINDOW: u32 = 1_250_000;
/// Paced so that the cut lands mid-transfer: ~1.2 s of data in all.
const RATE: u64 = 20_000_000;
const CUT_AT: u64 = 6 << 20;
const IDLE: Duration = Duration::from_secs(1);
const PORT: u16 = 7200;
/// A bound on every wait, so a broken transport fails the test instead of hanging it.
const LIMIT: Duration = Duration::from_secs(30);

/// Runs `f` on a new thread inside `namespace`, with a current-thread runtime of its own:
/// its sockets, and the address checks of its transport, belong to that namespace.
fn in_namespace<T: Send + 'static>(
    namespace: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = T>>> + Send + 'static,
) -> thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{namespace}");
    thread::spawn(move || {
        let file = File::open(&path).expect("open the namespace");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(f())
    })
}

fn config(fixture: &Fixture, node: &str, addr: &str) -> QuicConfig {
    let tuning = QuicTuning::default()
        .idle_timeout(IDLE)
        .keep_alive(Some(Duration::from_millis(200)))
        .stream_receive_window(WINDOW);
    fixture
        .config(node)
        .bind(format!("{addr}:{PORT}").parse().unwrap())
        .connect_timeout(Duration::from_millis(500))
        .tuning(tuning)
        .snapshot_resume_grace(Duration::from_secs(10))
}

/// Polls `cond` (stats have no change notification) every 5 ms, at most `LIMIT`.
fn until(what: &str, cond: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        thread::sleep(Duration::from_millis(5));
    }
    started.elapsed()
}

#[test]
fn a_snapshot_resumes_after_the_link_comes_back() {
    if let Some(why) = unsupported() {
        eprintln!("skipped: {why}");
        println!("skipped: {why}");
        return;
    }
    common::init_tracing();
    let fixture = Arc::new(Fixture::new("resume-wan"));
    let hosts = VethHosts::new("rs", "qrr", "198.18.7");

    // The receiver: reads the snapshot, hashing it, and answers.
    let (b_tx, b_rx) = mpsc::channel::<QuicTransport>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let progress = Arc::new(AtomicU64::new(0));
    let receiver = {
        let (fixture, progress) = (fixture.clone(), progress.clone());
        in_namespace(&hosts.names[1], move || {
            Box::pin(async move {
                let (b, mut incoming) = QuicTransport::bind(config(&fixture, "n2", "198.18.7.2"))
                    .await
                    .expect("bind n2");
                b_tx.send(b.clone()).unwrap();
                let mut rpc = incoming.recv().await.expect("the snapshot");
                let mut reader = rpc.take_snapshot().expect("a reader");
                let (mut hash, mut buf) = (Fnv::default(), vec![0u8; 64 * 1024]);
                let read = loop {
                    match reader.read(&mut buf).await {
                        Ok(0) => break Ok(()),
                        Ok(n) => {
                            hash.update(&buf[..n]);
                            progress.fetch_add(n as u64, Relaxed);
                        }
                        Err(e) => break Err(e),
                    }
                };
                let response = InstallSnapshotResponse {
                    header: common::header(&b),
                    term: 3,
                    success: read.is_ok(),
                };
                rpc.respond(Ok(Response::InstallSnapshot(response)));
                // Until the sender has its answer (closing would fail it).
                let _ = tokio::time::timeout(LIMIT, done_rx).await;
                b.close().await;
                (read, hash)
            })
        })
    };
    let b = b_rx.recv_timeout(LIMIT).expect("n2 started");

    // The sender.
    let (a_tx, a_rx) = mpsc::channel::<QuicTransport>();
    let sender = {
        let fixture = fixture.clone();
        let (b_id, b_addr): (ServerId, ServerAddress) = (b.local_id().clone(), b.local_addr());
        in_namespace(&hosts.names[0], move || {
            Box::pin(async move {
                let config = config(&fixture, "n1", "198.18.7.1")
                    .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(200))
                    .snapshot_pacing(SnapshotPacing::Rate(RATE));
                let (a, _incoming) = QuicTransport::bind(config).await.expect("bind n1");
                a_tx.send(a.clone()).unwrap();
                let request = common::snapshot_request(&a, SIZE);
                let answer = a
                    .install_snapshot_resumable(&b_id, &b_addr, request, Pattern::new(SEED, SIZE))
                    .await;
                a.close().await;
                answer
            })
        })
    };
    let a = a_rx.recv_timeout(LIMIT).expect("n1 started");

    use Relaxed;
    until("the first bytes of the snapshot", || {
        progress.load(Relaxed) >= CUT_AT
    });
    hosts.set_link(false);
    let cut = Instant::now();
    let at_cut = progress.load(Relaxed);
    // Down until both ends have lost the connection: the receiver parked the transfer, the
    // sender holds no connection.
    until("the receiver parks the transfer", || {
        b.stats().snapshots_parked == 1
    });
    until("the sender loses its connection", || {
        a.connections().is_empty()
    });
    let down_for = cut.elapsed();
    hosts.set_link(true);
    let restored = Instant::now();
    until("the sender resumes", || a.stats().snapshot_resumes >= 1);
    let resumed_after = restored.elapsed();

    let answer = sender.join().expect("the sender's thread");
    let done_after = restored.elapsed();
    let _ = done_tx.send(());
    let (read, hash) = receiver.join().expect("the receiver's thread");
    read.expect("the consumer read the whole snapshot");
    assert!(answer.expect("the snapshot succeeds").success);
    assert_eq!(hash, Fnv::of_pattern(SEED, SIZE), "the bytes differ");
    let stats: TransportStats = a.stats();
    println!(
        "cut at {at_cut} of {SIZE} bytes for {down_for:?}; resumed {resumed_after:?} after \
         the link came back, done {done_after:?} after; resumes {}, bytes sent twice {} \
         (window {WINDOW})",
        stats.snapshot_resumes, stats.snapshot_bytes_resent
    );
    assert!(stats.snapshot_resumes >= 1);
    assert!(
        stats.snapshot_bytes_resent <= u64::from(WINDOW) * stats.snapshot_resumes,
        "{} bytes sent twice in {} resumes",
        stats.snapshot_bytes_resent,
        stats.snapshot_resumes
    );
    drop(hosts);
    // The namespaces are gone.
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let pid = std::process::id().to_string();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&format!("qr-rs{pid}-")),
        "namespaces left behind"
    );
}
