//! QuicTransport behaviour beyond the conformance suite: the connection pool, concurrency over
//! one connection, large snapshots beside heartbeats, restarts and backoff, shutdown.

#![allow(clippy::unwrap_used)]

mod common;

use std::hash::Hasher;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use common::{Fixture, header, snapshot_request, vote_from};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, Error, HeartbeatHedge, Incoming,
    InstallSnapshotRequest, InstallSnapshotResponse, QuicTransport, QuicTuning,
    RequestVoteResponse, Response, Rpc, RpcHeader, Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

const GUARD: Duration = Duration::from_secs(30);

/// Answers every RPC (votes granted with the request's term, appends echo their position,
/// snapshots are read to the end and hashed) until the consumer ends.
fn serve(node: &QuicTransport, mut incoming: Incoming) -> tokio::task::JoinHandle<()> {
    let me = header(node);
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let me = me.clone();
            tokio::spawn(async move { answer(me, rpc).await });
        }
    })
}

async fn answer(me: RpcHeader, mut rpc: Rpc) {
    let response: Response = match rpc.command().clone() {
        Command::RequestVote(req) => RequestVoteResponse {
            header: me,
            term: req.term,
            granted: true,
        }
        .into(),
        Command::AppendEntries(req) => append_response(me, req.prev_log_entry).into(),
        Command::InstallSnapshot(_) => {
            let mut reader = rpc.take_snapshot().unwrap();
            let hash = hash_reader(&mut reader).await;
            // The hash travels back in `term` so the sender can compare.
            let success = hash.is_ok();
            InstallSnapshotResponse {
                header: me,
                term: hash.unwrap_or(0),
                success,
            }
            .into()
        }
        other => panic!("unexpected {other:?}"),
    };
    rpc.respond(Ok(response));
}

fn append_response(me: RpcHeader, last_log: u64) -> AppendEntriesResponse {
    AppendEntriesResponse {
        header: me,
        term: 1,
        last_log,
        success: true,
        no_retry_backoff: false,
    }
}

async fn hash_reader(reader: &mut (impl AsyncRead + Unpin)) -> io::Result<u64> {
    let mut hasher = std::hash::DefaultHasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).await?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.write(&buf[..n]);
    }
}

/// `len` pseudo-random bytes, generated as read (a 64 MiB source holds no 64 MiB buffer).
struct Noise {
    state: u64,
    left: u64,
}

impl Noise {
    fn new(seed: u64, len: u64) -> Self {
        Self {
            state: seed | 1,
            left: len,
        }
    }
}

impl AsyncRead for Noise {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = buf
            .remaining()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let mut bytes = vec![0u8; n];
        for b in bytes.iter_mut() {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            *b = self.state as u8;
        }
        buf.put_slice(&bytes);
        self.left -= n as u64;
        Poll::Ready(Ok(()))
    }
}

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(GUARD, what, fut).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_calling_each_other_share_one_connection() {
    common::init_tracing();
    let fx = Fixture::new("pool");
    let (a, a_in) = fx.node("n1").await;
    let (b, b_in) = fx.node("n2").await;
    serve(&a, a_in);
    serve(&b, b_in);
    guarded(
        "a→b",
        a.request_vote(b.local_id(), &b.local_addr(), vote_from(&a, 1)),
    )
    .await
    .unwrap();
    guarded(
        "b→a",
        b.request_vote(a.local_id(), &a.local_addr(), vote_from(&b, 1)),
    )
    .await
    .unwrap();
    guarded(
        "a→b again",
        a.request_vote(b.local_id(), &b.local_addr(), vote_from(&a, 2)),
    )
    .await
    .unwrap();
    assert_eq!(a.open_connections(), 1, "a holds more than one connection");
    assert_eq!(b.open_connections(), 1, "b holds more than one connection");
    let (ac, bc) = (a.connections(), b.connections());
    assert_eq!(ac.len(), 1);
    assert_eq!(bc.len(), 1);
    assert_eq!(&ac[0].peer, b.local_id());
    assert_eq!(&bc[0].peer, a.local_id());
    assert!(
        ac[0].dialled_by_us && !bc[0].dialled_by_us,
        "b dialled although a's connection was up"
    );
}

/// `max_udp_payload` above quinn's default datagram limit (1472) takes effect: on loopback
/// (MTU 65536) path MTU discovery climbs past it, `connections()` reports the figure, and a
/// bulk transfer keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_max_udp_payload_is_reached_on_loopback_and_kept_under_bulk_transfer() {
    common::init_tracing();
    let fx = Fixture::new("mtu");
    let (a, _a_in) = QuicTransport::bind(
        fx.config("n1")
            .tuning(QuicTuning::default().max_udp_payload(16_384)),
    )
    .await
    .unwrap();
    let (b, b_in) = QuicTransport::bind(
        fx.config("n2")
            .tuning(QuicTuning::default().max_udp_payload(16_384)),
    )
    .await
    .unwrap();
    serve(&b, b_in);
    let mtu = mtu_after_discovery(&a, &b, 1472).await;
    assert!(mtu > 1472 && mtu <= 16_384, "path MTU stuck at {mtu}");

    // A bulk transfer at that MTU: quinn batches up to 10 packets per send, which at 16 KB
    // would exceed a UDP datagram; the kernel refuses such a batch and quinn-udp takes it as
    // sent, so without the transport's cap every full batch was lost and black-hole
    // detection dropped the path back to 1200. The snapshot must arrive whole, and the MTU
    // must stay.
    let size = 16 * 1024 * 1024;
    let request = snapshot_request(&a, size);
    let answer = guarded(
        "a 16 MiB snapshot at a 16 KB MTU",
        a.install_snapshot(b.local_id(), &b.local_addr(), request, Noise::new(9, size)),
    )
    .await
    .unwrap();
    let expected = hash_reader(&mut Noise::new(9, size)).await.unwrap();
    assert!(answer.success);
    assert_eq!(answer.term, expected, "the snapshot arrived changed");
    let after = a.connections()[0].mtu;
    // Discovery may still be climbing, never falling.
    assert!(
        after >= mtu,
        "the path MTU fell from {mtu} to {after} during the transfer"
    );
}

/// `a`'s path MTU to `b` once discovery has passed `above`, or where it stopped. Discovery
/// probes ride on the connection's own timers; this keeps calling until they are acknowledged
/// (bounded: 2,000 round trips, far more than the few probes need).
async fn mtu_after_discovery(a: &QuicTransport, b: &QuicTransport, above: u16) -> u16 {
    let mut mtu = 0;
    for term in 1..=2_000 {
        guarded(
            "a→b",
            a.request_vote(b.local_id(), &b.local_addr(), vote_from(a, term)),
        )
        .await
        .unwrap();
        mtu = a.connections()[0].mtu;
        if mtu > above {
            break;
        }
        tokio::task::yield_now().await;
    }
    mtu
}

/// Without `max_udp_payload` set, a node bound to loopback searches up to the loopback
/// interface's MTU (65536 on Linux), not Ethernet's.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_path_mtu_discovery_climbs_to_what_loopback_carries() {
    common::init_tracing();
    let fx = Fixture::new("mtu-default");
    let (a, _a_in) = fx.node("n1").await;
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let mtu = mtu_after_discovery(&a, &b, 16_384).await;
    assert!(mtu > 16_384, "path MTU stopped at {mtu} on loopback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_dials_settle_on_one_connection() {
    common::init_tracing();
    let fx = Fixture::new("tiebreak");
    for round in 0..5 {
        let (a, a_in) = fx.node(&format!("a{round}")).await;
        let (b, b_in) = fx.node(&format!("b{round}")).await;
        serve(&a, a_in);
        serve(&b, b_in);
        let (a_addr, b_addr) = (a.local_addr(), b.local_addr());
        let (ra, rb) = guarded("both dial", async {
            tokio::join!(
                a.request_vote(b.local_id(), &b_addr, vote_from(&a, 1)),
                b.request_vote(a.local_id(), &a_addr, vote_from(&b, 1)),
            )
        })
        .await;
        ra.unwrap();
        rb.unwrap();
        // Both sides now use the same connection: exactly one of them dialled it, and when
        // both dialled, the one dialled by the smaller id ("a…" < "b…").
        let (ac, bc) = (a.connections(), b.connections());
        assert_eq!((ac.len(), bc.len()), (1, 1));
        assert_ne!(
            ac[0].dialled_by_us, bc[0].dialled_by_us,
            "round {round}: sides disagree"
        );
        if a.open_connections() > 1 {
            assert!(
                ac[0].dialled_by_us,
                "round {round}: the larger id's connection won"
            );
        }
        // Calls keep working both ways on the settled connection.
        a.request_vote(b.local_id(), &b.local_addr(), vote_from(&a, 2))
            .await
            .unwrap();
        b.request_vote(a.local_id(), &a.local_addr(), vote_from(&b, 2))
            .await
            .unwrap();
        a.close().await;
        b.close().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_rpcs_share_one_connection() {
    common::init_tracing();
    let fx = Fixture::new("concurrency");
    let (a, _a_in) = fx.node("n1").await;
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let tasks: Vec<_> = (0..1000u64)
        .map(|i| {
            let a = a.clone();
            let (id, addr) = (b.local_id().clone(), b.local_addr());
            tokio::spawn(async move { a.request_vote(&id, &addr, vote_from(&a, i + 1)).await })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        let response = guarded("rpc", task).await.unwrap().unwrap();
        assert_eq!(response.term, i as u64 + 1, "answers crossed between RPCs");
    }
    assert_eq!(
        a.open_connections(),
        1,
        "more than one connection to one peer"
    );
    assert_eq!(a.connections().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_snapshot_arrives_byte_exact_while_heartbeats_go_on() {
    common::init_tracing();
    let fx = Fixture::new("snapshot");
    let (a, _a_in) = fx.node("n1").await;
    let (b, b_in) = fx.node("n2").await;
    let me = header(&b);
    b.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
        rpc.respond(Ok(append_response(me.clone(), 42).into()));
    })));
    serve(&b, b_in);
    let size = 64 * 1024 * 1024;
    let expected = hash_reader(&mut Noise::new(7, size)).await.unwrap();
    let request = snapshot_request(&a, size);
    let done = Arc::new(AtomicBool::new(false));
    let beats = Arc::new(AtomicU64::new(0));
    let heartbeats = {
        let (a, done, beats) = (a.clone(), done.clone(), beats.clone());
        let (id, addr) = (b.local_id().clone(), b.local_addr());
        tokio::spawn(async move {
            while !done.load(Ordering::Acquire) {
                let hb = AppendEntriesRequest::heartbeat(header(&a), 3);
                let response = a
                    .append_entries(&id, &addr, hb)
                    .await
                    .expect("heartbeat failed");
                assert_eq!(response.last_log, 42);
                beats.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let response = guarded(
        "snapshot",
        a.install_snapshot(b.local_id(), &b.local_addr(), request, Noise::new(7, size)),
    )
    .await
    .unwrap();
    done.store(true, Ordering::Release);
    guarded("heartbeats", heartbeats).await.unwrap();
    assert!(response.success, "the receiver failed to read the snapshot");
    assert_eq!(response.term, expected, "snapshot bytes differ");
    assert!(
        beats.load(Ordering::Relaxed) > 0,
        "no heartbeat completed during the transfer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_peer_is_reached_again_after_the_backoff() {
    common::init_tracing();
    let fx = Fixture::new("restart");
    let backoff = Duration::from_millis(200);
    let config = fx
        .config("n1")
        .connect_timeout(Duration::from_millis(300))
        .reconnect_backoff(backoff, backoff);
    let (a, _a_in) = QuicTransport::bind(config).await.unwrap();
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let (id, addr) = (b.local_id().clone(), b.local_addr());
    a.request_vote(&id, &addr, vote_from(&a, 1)).await.unwrap();
    let b_socket = b.local_socket_addr();
    b.close().await;

    // While n2 is down: the call fails, and the next one fails fast during the backoff.
    let err = a
        .request_vote(&id, &addr, vote_from(&a, 2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost { .. } | Error::Unreachable { .. }
        ),
        "{err:?}"
    );
    let err = a
        .request_vote(&id, &addr, vote_from(&a, 3))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    let started = Instant::now();
    let err = a
        .request_vote(&id, &addr, vote_from(&a, 4))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
    assert!(
        started.elapsed() < backoff,
        "a call during the backoff dialled again"
    );

    // n2 comes back on the same address; after the backoff the next call reaches it.
    let (b2, b2_in) = QuicTransport::bind(fx.config("n2").bind(b_socket))
        .await
        .unwrap();
    serve(&b2, b2_in);
    tokio::time::sleep(backoff).await;
    let response = a.request_vote(&id, &addr, vote_from(&a, 5)).await.unwrap();
    assert_eq!(response.term, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_fails_rpcs_in_flight_and_stops_every_task() {
    common::init_tracing();
    let fx = Fixture::new("close");
    let (a, _a_in) = fx.node("n1").await;
    let (b, mut b_in) = fx.node("n2").await;
    let calls: Vec<_> = (0..10)
        .map(|i| {
            let a = a.clone();
            let (id, addr) = (b.local_id().clone(), b.local_addr());
            tokio::spawn(async move { a.request_vote(&id, &addr, vote_from(&a, i)).await })
        })
        .collect();
    // Hold every request unanswered, then close the caller.
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(guarded("rpc", b_in.recv()).await.unwrap());
    }
    assert!(a.task_count() > 0);
    guarded("close", a.close()).await;
    for call in calls {
        let result = guarded("call", call).await.unwrap();
        assert!(matches!(result, Err(Error::Shutdown)), "{result:?}");
    }
    assert_eq!(a.task_count(), 0, "tasks left running after close");
    let result = a
        .request_vote(b.local_id(), &b.local_addr(), vote_from(&a, 99))
        .await;
    assert!(matches!(result, Err(Error::Shutdown)), "{result:?}");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_too_large_to_send_leaves_the_pipeline_in_step() {
    common::init_tracing();
    let fx = Fixture::new("pipeline-oversize");
    let (a, _a_in) = QuicTransport::bind(fx.config("n1").max_message_size(16 * 1024))
        .await
        .unwrap();
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let pipeline = a
        .append_entries_pipeline(b.local_id(), &b.local_addr())
        .await
        .unwrap();
    let append = |seq: u64, size: usize| AppendEntriesRequest {
        header: header(&a),
        term: 1,
        prev_log_entry: seq,
        prev_log_term: 1,
        entries: vec![quicraft::Log::command(seq + 1, 1, vec![7u8; size])],
        leader_commit_index: 0,
    };
    pipeline.send(append(10, 100)).await.unwrap();
    let refused = pipeline.send(append(11, 64 * 1024)).await;
    assert!(
        matches!(
            refused,
            Err(Error::LimitExceeded {
                limit: quicraft::Limit::MessageSize,
                max: 16384,
                ..
            })
        ),
        "{refused:?}"
    );
    pipeline.send(append(12, 100)).await.unwrap();
    pipeline.send(append(13, 100)).await.unwrap();
    for expected in [10, 12, 13] {
        let done = guarded("completion", pipeline.next()).await.unwrap();
        assert_eq!(done.request.prev_log_entry, expected);
        assert_eq!(
            done.response.unwrap().last_log,
            expected,
            "answers out of step"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_answered_without_reading_their_data_do_not_use_up_streams() {
    common::init_tracing();
    let fx = Fixture::new("snapshot-unread");
    let (a, _a_in) = fx.node("n1").await;
    let (b, mut b_in) = fx.node("n2").await;
    let me = header(&b);
    tokio::spawn(async move {
        // A follower with a newer term refuses every snapshot without reading it.
        while let Some(rpc) = b_in.recv().await {
            let response = InstallSnapshotResponse {
                header: me.clone(),
                term: 9,
                success: false,
            };
            rpc.respond(Ok(response.into()));
        }
    });
    // Twice as many as the data streams a peer may hold open (8 by default).
    for i in 0..16u64 {
        let request = InstallSnapshotRequest {
            last_log_index: i,
            ..snapshot_request(&a, 256 * 1024)
        };
        let got = guarded(
            "snapshot",
            a.install_snapshot(
                b.local_id(),
                &b.local_addr(),
                request,
                Noise::new(i, 256 * 1024),
            ),
        )
        .await;
        let response = got.unwrap_or_else(|e| panic!("snapshot {i} failed: {e}"));
        assert!(!response.success);
    }
}

// ---------------------------------------------------------------------------------------------
// Hedged heartbeats (`QuicConfig::heartbeat_hedge`).

/// A heartbeat handler that holds (never answers) the first `hold` heartbeats it gets and
/// answers the rest at once. Returns the held ones, kept alive until the test ends.
fn hold_first_heartbeats(node: &QuicTransport, hold: usize) -> Arc<std::sync::Mutex<Vec<Rpc>>> {
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let me = header(node);
    let slot = held.clone();
    node.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
        let mut held = slot.lock().unwrap();
        if held.len() < hold {
            held.push(rpc);
        } else {
            rpc.respond(Ok(append_response(me.clone(), 0).into()));
        }
    })));
    held
}

/// The first heartbeat's answer never comes (its handler holds it): after the hedge delay a
/// copy goes out on a second stream, its answer completes the call, and the stats count one
/// copy sent and won. An answered heartbeat sends no copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_heartbeat_is_answered_through_its_hedged_copy() {
    common::init_tracing();
    let fx = Fixture::new("hedge");
    // Long enough that an answered heartbeat never needs a copy, even on a loaded machine.
    let hedge = Duration::from_millis(200);
    let (a, _a_in) = QuicTransport::bind(
        fx.config("n1")
            .heartbeat_hedge(HeartbeatHedge::After(hedge)),
    )
    .await
    .unwrap();
    let (b, _b_in) = fx.node("n2").await;
    let held = hold_first_heartbeats(&b, 1);
    let heartbeat = AppendEntriesRequest::heartbeat(header(&a), 1);

    let started = Instant::now();
    let answer = guarded(
        "hedged heartbeat",
        a.append_entries(b.local_id(), &b.local_addr(), heartbeat.clone()),
    )
    .await
    .unwrap();
    assert!(answer.success);
    assert!(
        started.elapsed() >= hedge,
        "answered before any copy was sent"
    );
    assert_eq!(
        held.lock().unwrap().len(),
        1,
        "the original reached the handler"
    );
    let stats = a.stats();
    assert_eq!((stats.heartbeat_copies, stats.heartbeat_copies_won), (1, 1));

    // Answered at once (well within the hedge delay on loopback): no copy.
    let answered = guarded(
        "heartbeat",
        a.append_entries(b.local_id(), &b.local_addr(), heartbeat),
    )
    .await
    .unwrap();
    assert!(answered.success);
    let stats = a.stats();
    assert_eq!((stats.heartbeat_copies, stats.heartbeat_copies_won), (1, 1));
}

/// By default ([`HeartbeatHedge::Auto`]) a short path gets no copies: on loopback a heartbeat
/// that is late means a busy peer, not a lost packet, so the held heartbeat times out alone.
/// (tests/hedge_wan.rs checks that a long path does get them.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_a_heartbeat_on_a_short_path_gets_no_copy() {
    common::init_tracing();
    let fx = Fixture::new("hedge-default");
    let timeout = Duration::from_millis(300);
    let (a, _a_in) = QuicTransport::bind(fx.config("n1").rpc_timeout(timeout))
        .await
        .unwrap();
    let (b, _b_in) = fx.node("n2").await;
    let held = hold_first_heartbeats(&b, 1);
    let result = guarded(
        "heartbeat with a held original",
        a.append_entries(
            b.local_id(),
            &b.local_addr(),
            AppendEntriesRequest::heartbeat(header(&a), 1),
        ),
    )
    .await;
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    assert_eq!(held.lock().unwrap().len(), 1, "the original was held");
    assert_eq!(a.stats().heartbeat_copies, 0);
}

/// Neither the heartbeat nor its copy is answered: the call fails with `Timeout` at the
/// original's deadline, not the copy's, and appends with entries are never hedged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hedged_heartbeat_times_out_on_the_original_deadline() {
    common::init_tracing();
    let fx = Fixture::new("hedge-timeout");
    let timeout = Duration::from_millis(1000);
    // The copy goes out late, so its own deadline would be well after the original's.
    let hedge = Duration::from_millis(900);
    let (a, _a_in) = QuicTransport::bind(
        fx.config("n1")
            .rpc_timeout(timeout)
            .heartbeat_hedge(HeartbeatHedge::After(hedge)),
    )
    .await
    .unwrap();
    let (b, b_in) = fx.node("n2").await;
    let held = hold_first_heartbeats(&b, 2);
    serve(&b, b_in);

    let started = Instant::now();
    let result = guarded(
        "unanswered heartbeat",
        a.append_entries(
            b.local_id(),
            &b.local_addr(),
            AppendEntriesRequest::heartbeat(header(&a), 1),
        ),
    )
    .await;
    let took = started.elapsed();
    assert!(matches!(result, Err(Error::Timeout { .. })), "{result:?}");
    // The copy's own deadline is `hedge` later; the call must not wait for it.
    assert!(took < timeout + hedge, "took {took:?}");
    assert_eq!(
        held.lock().unwrap().len(),
        2,
        "original and copy both arrived"
    );
    assert_eq!(a.stats().heartbeat_copies, 1);
    assert_eq!(a.stats().heartbeat_copies_won, 0);

    // An append with entries is not a heartbeat: one stream, no copy.
    let append = AppendEntriesRequest {
        prev_log_entry: 1,
        prev_log_term: 1,
        entries: vec![quicraft::Log::command(2, 1, vec![1u8; 8])],
        ..AppendEntriesRequest::heartbeat(header(&a), 1)
    };
    guarded(
        "append",
        a.append_entries(b.local_id(), &b.local_addr(), append),
    )
    .await
    .unwrap();
    assert_eq!(a.stats().heartbeat_copies, 1);
}

/// `close()` ends a connection this node dialled with CONNECTION_CLOSE SHUTDOWN (3),
/// "shutdown", as the peer sees it: never code 0 with no reason, which quinn sends when the
/// last handle of a connection is dropped before the endpoint's close reached it. Several
/// rounds, since that was a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_sends_shutdown_on_a_connection_it_dialled() {
    common::init_tracing();
    let fx = Fixture::new("close-code");
    let tls =
        quicraft::tls::TlsContext::new(fx.cluster(), fx.identity("peer"), fx.ca.roots()).unwrap();
    let peer =
        quinn::Endpoint::server(tls.server_config().unwrap(), "127.0.0.1:0".parse().unwrap())
            .unwrap();
    let peer_addr = quicraft::ServerAddress::from(peer.local_addr().unwrap());
    for round in 0..8 {
        let (a, _a_in) = fx.node("a").await;
        let call = {
            let (a, addr) = (a.clone(), peer_addr.clone());
            tokio::spawn(async move {
                a.request_vote(&"peer".into(), &addr, vote_from(&a, 1))
                    .await
            })
        };
        let conn = guarded("handshake", async {
            peer.accept().await.unwrap().await.unwrap()
        })
        .await;
        // The request arrived: `a` holds the connection it dialled, in its pool.
        let (_send, _recv) = guarded("request stream", conn.accept_bi()).await.unwrap();
        guarded("close", a.close()).await;
        let got = guarded("call", call).await.unwrap();
        assert!(matches!(got, Err(Error::Shutdown)), "{got:?}");
        match guarded("peer sees the close", conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(close) => {
                assert_eq!(
                    (close.error_code, &close.reason[..]),
                    (quinn::VarInt::from_u32(3), &b"shutdown"[..]),
                    "round {round}"
                );
            }
            other => panic!("round {round}: the connection ended with {other:?}"),
        }
    }
}

/// `disconnect_peer` closes the connection to that peer and forgets it: the pool holds nothing
/// for it until the next call, which dials a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_peer_closes_the_connection_and_the_next_call_dials_anew() {
    common::init_tracing();
    let fx = Fixture::new("disconnect-peer");
    let (a, _a_in) = fx.node("n1").await;
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let (id, addr) = (b.local_id().clone(), b.local_addr());
    guarded("first call", a.request_vote(&id, &addr, vote_from(&a, 1)))
        .await
        .unwrap();
    assert_eq!(a.connections().len(), 1);
    a.disconnect_peer(&id);
    assert!(a.connections().is_empty(), "{:?}", a.connections());
    guarded("call after", a.request_vote(&id, &addr, vote_from(&a, 2)))
        .await
        .unwrap();
    let connections = a.connections();
    assert_eq!(connections.len(), 1, "{connections:?}");
    assert!(connections[0].dialled_by_us);
    a.close().await;
    b.close().await;
}

/// `SnapshotPacing::Rate`: a 2 MB snapshot capped at 4 MB/s takes at least its share of
/// a second (less the pacer's 10 ms burst) and arrives byte-exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_snapshot_keeps_to_its_rate_and_arrives_byte_exact() {
    common::init_tracing();
    let fx = Fixture::new("snapshot-rate");
    let rate = 4_000_000;
    let (a, _a_in) = QuicTransport::bind(
        fx.config("n1")
            .snapshot_pacing(quicraft::SnapshotPacing::Rate(rate)),
    )
    .await
    .unwrap();
    let (b, b_in) = fx.node("n2").await;
    serve(&b, b_in);
    let size = 2_000_000;
    let request = snapshot_request(&a, size);
    let started = Instant::now();
    let answer = guarded(
        "snapshot",
        a.install_snapshot(b.local_id(), &b.local_addr(), request, Noise::new(3, size)),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    let expected = hash_reader(&mut Noise::new(3, size)).await.unwrap();
    assert!(answer.success);
    assert_eq!(answer.term, expected, "the snapshot arrived changed");
    let least = Duration::from_secs_f64(size as f64 / rate as f64) - Duration::from_millis(10);
    assert!(took >= least, "{size} bytes at {rate} B/s took {took:?}");
    a.close().await;
    b.close().await;
}
