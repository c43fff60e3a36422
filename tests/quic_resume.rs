//! Resumable snapshots over QUIC, in one process (issue 16, item 2): a snapshot whose
//! connection is lost mid-transfer resumes on the next connection from the offset the
//! receiver confirms, and the consumer reads one continuous, correct stream; a plain
//! snapshot still fails; a resume after the receiver's grace period fails cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pattern::{Fnv, Pattern};
use common::{Fixture, snapshot_request, stats_until, within};
use quicraft::{
    Error, ErrorCode, Incoming, InstallSnapshotResponse, QuicTransport, Response, ServerAddress,
    SnapshotReader, Transport,
};
use tokio::io::AsyncReadExt;

const LIMIT: Duration = Duration::from_secs(20);
/// quinn's stream receive window, which `QuicTuning` leaves as it is here.
const STREAM_WINDOW: u64 = 1_250_000;

/// Reads `n` bytes (or to the end with `None`) from `reader` into `hash`; the count read.
async fn read_into(reader: &mut SnapshotReader, hash: &mut Fnv, n: Option<u64>) -> io::Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    loop {
        let want = match n {
            Some(n) if read >= n => return Ok(read),
            Some(n) => ((n - read) as usize).min(buf.len()),
            None => buf.len(),
        };
        let got = reader.read(&mut buf[..want]).await?;
        if got == 0 {
            return Ok(read);
        }
        hash.update(&buf[..got]);
        read += got as u64;
    }
}

/// The InstallSnapshot the consumer of `incoming` receives, with its reader.
async fn next_snapshot(incoming: &mut Incoming) -> (quicraft::Rpc, SnapshotReader) {
    let mut rpc = within(LIMIT, "the snapshot request", incoming.recv())
        .await
        .expect("consumer open");
    let reader = rpc.take_snapshot().expect("a snapshot reader");
    (rpc, reader)
}

fn success(node: &QuicTransport) -> Response {
    Response::InstallSnapshot(InstallSnapshotResponse {
        header: common::header(node),
        term: 3,
        success: true,
    })
}

/// The receiver drops the connection (as a failing path would) after its consumer read the
/// first 2 MiB of 8; the sender resumes, and the consumer reads every byte once, in order.
#[tokio::test]
async fn a_lost_connection_resumes_where_the_reader_stopped() {
    common::init_tracing();
    let fixture = Fixture::new("resume");
    let (a, _a_in) = fixture.node("n1").await;
    let (b, mut b_in) = fixture.node("n2").await;
    let (size, seed, cut_at) = (8u64 << 20, 7u64, 2u64 << 20);

    let sender = {
        let (a, b_id, b_addr) = (a.clone(), b.local_id().clone(), b.local_addr());
        let request = snapshot_request(&a, size);
        tokio::spawn(async move {
            a.install_snapshot_resumable(&b_id, &b_addr, request, Pattern::new(seed, size))
                .await
        })
    };
    let (rpc, mut reader) = next_snapshot(&mut b_in).await;
    let mut hash = Fnv::default();
    let first = read_into(&mut reader, &mut hash, Some(cut_at))
        .await
        .unwrap();
    assert_eq!(first, cut_at);
    b.disconnect_peer(a.local_id());
    let started = Instant::now();
    let rest = within(
        LIMIT,
        "the rest of the snapshot",
        read_into(&mut reader, &mut hash, None),
    )
    .await
    .expect("the resumed snapshot reads to its end");
    println!("resumed and read the rest in {:?}", started.elapsed());
    assert_eq!(first + rest, size);
    assert_eq!(hash, Fnv::of_pattern(seed, size), "the bytes differ");
    rpc.respond(Ok(success(&b)));

    let answer = within(LIMIT, "the sender's answer", sender).await.unwrap();
    assert!(answer.expect("the snapshot succeeds").success);
    let stats = a.stats();
    println!(
        "resumes {}, bytes resent {} (window {STREAM_WINDOW})",
        stats.snapshot_resumes, stats.snapshot_bytes_resent
    );
    assert_eq!(stats.snapshot_resumes, 1);
    assert!(
        stats.snapshot_bytes_resent <= STREAM_WINDOW,
        "{} bytes sent twice",
        stats.snapshot_bytes_resent
    );
    assert_eq!(b.stats().snapshots_parked, 0);
    a.close().await;
    b.close().await;
}

/// The same loss under a plain (non-seekable) snapshot fails both sides, as before.
#[tokio::test]
async fn a_plain_snapshot_still_fails_when_its_connection_is_lost() {
    common::init_tracing();
    let fixture = Fixture::new("resume");
    let (a, _a_in) = fixture.node("n1").await;
    let (b, mut b_in) = fixture.node("n2").await;
    let size = 8u64 << 20;

    let sender = {
        let (a, b_id, b_addr) = (a.clone(), b.local_id().clone(), b.local_addr());
        let request = snapshot_request(&a, size);
        tokio::spawn(async move {
            a.install_snapshot(&b_id, &b_addr, request, Pattern::new(1, size))
                .await
        })
    };
    let (_rpc, mut reader) = next_snapshot(&mut b_in).await;
    let mut hash = Fnv::default();
    read_into(&mut reader, &mut hash, Some(1 << 20))
        .await
        .unwrap();
    b.disconnect_peer(a.local_id());
    let read = within(
        LIMIT,
        "the reader's error",
        read_into(&mut reader, &mut hash, None),
    )
    .await;
    assert!(read.is_err(), "the reader fails: {read:?}");
    let answer = within(LIMIT, "the sender's failure", sender).await.unwrap();
    assert!(
        matches!(answer, Err(Error::ConnectionLost { .. })),
        "{answer:?}"
    );
    assert_eq!(a.stats().snapshot_resumes, 0);
    a.close().await;
    b.close().await;
}

/// The sender cannot reach the receiver again before the receiver's grace period passes:
/// the reader fails with `TimedOut` at the end of it, and the resume that comes later is
/// refused (`TRANSFER_UNKNOWN`), which fails the call.
#[tokio::test]
async fn a_resume_after_the_grace_period_fails_cleanly() {
    common::init_tracing();
    let fixture = Fixture::new("resume");
    let (b, mut b_in) = QuicTransport::bind(
        fixture
            .config("n2")
            .snapshot_resume_grace(Duration::from_millis(300)),
    )
    .await
    .unwrap();
    // Where the sender finds n2: switched to a dead port while the grace period passes.
    let real = b.local_addr();
    let route: Arc<Mutex<ServerAddress>> = Arc::new(Mutex::new(real.clone()));
    let provider = {
        let route = route.clone();
        move |_: &quicraft::ServerId| Some(route.lock().unwrap().clone())
    };
    let (a, _a_in) = QuicTransport::bind(
        fixture
            .config("n1")
            .connect_timeout(Duration::from_millis(300))
            .reconnect_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .address_provider(Arc::new(provider)),
    )
    .await
    .unwrap();
    let size = 8u64 << 20;
    let sender = {
        let (a, b_id, b_addr) = (a.clone(), b.local_id().clone(), real.clone());
        let request = snapshot_request(&a, size);
        tokio::spawn(async move {
            a.install_snapshot_resumable(&b_id, &b_addr, request, Pattern::new(3, size))
                .await
        })
    };
    let (rpc, mut reader) = next_snapshot(&mut b_in).await;
    let mut hash = Fnv::default();
    read_into(&mut reader, &mut hash, Some(1 << 20))
        .await
        .unwrap();
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    *route.lock().unwrap() = ServerAddress::from(dead.local_addr().unwrap());
    b.disconnect_peer(a.local_id());
    let lost = Instant::now();
    let read = within(
        LIMIT,
        "the reader's error",
        read_into(&mut reader, &mut hash, None),
    )
    .await;
    let waited = lost.elapsed();
    let error = read.expect_err("the reader fails after the grace period");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
    assert!(
        waited >= Duration::from_millis(300),
        "failed after {waited:?}"
    );
    rpc.respond(Ok(success(&b)));
    // The way back opens; the sender's resume finds nothing to resume.
    *route.lock().unwrap() = real;
    let answer = within(LIMIT, "the sender's failure", sender).await.unwrap();
    match answer {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::TRANSFER_UNKNOWN, "{e:?}"),
        other => panic!("expected TRANSFER_UNKNOWN, got {other:?}"),
    }
    stats_until(LIMIT, &b, "nothing parked", |s| s.snapshots_parked == 0).await;
    drop(dead);
    a.close().await;
    b.close().await;
}
