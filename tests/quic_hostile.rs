//! A hostile member (a raw quinn client holding a valid certificate) against a node whose
//! consumer is stalled or slow, while a well-behaved member keeps working: what the member can
//! make the node hold is bounded per peer, at its decoded size, and given back when its
//! connections close; its traffic does not push another member's votes behind it; refused
//! snapshot requests do not leak their data streams. Bounds are asserted from the node's own
//! stats (`QuicTransport::stats`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicraft::tls::TlsContext;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, Incoming, InstallSnapshotRequest, Log,
    MAX_ENTRIES_PER_APPEND, QuicConfig, QuicTransport, RpcHeader, ServerId, Transport,
};
use quinn::{Endpoint, RecvStream, SendStream};

use common::Fixture;
use common::wire::*;

const GUARD: Duration = Duration::from_secs(20);
const NODE: &str = "node";
const HOSTILE: &str = "hostile";
const HONEST: &str = "honest";

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(GUARD, what, fut).await
}

/// An AppendEntries of `MAX_ENTRIES_PER_APPEND` empty entries: a few bytes each on the wire,
/// about a hundred each once decoded.
fn empty_entries_append(id: &str) -> Vec<u8> {
    let request = AppendEntriesRequest {
        header: RpcHeader::new(id, "127.0.0.1:1"),
        term: 1,
        prev_log_entry: 0,
        prev_log_term: 0,
        entries: (0..MAX_ENTRIES_PER_APPEND as u64)
            .map(|i| Log::command(i + 1, 1, Bytes::new()))
            .collect(),
        leader_commit_index: 0,
    };
    postcard::to_stdvec(&request).unwrap()
}

/// A member speaking the wire protocol by hand over its own quinn endpoint.
struct RawMember {
    _endpoint: Endpoint,
    conn: quinn::Connection,
}

impl RawMember {
    async fn connect(fixture: &Fixture, id: &str, node: &QuicTransport) -> Self {
        let tls =
            TlsContext::new(fixture.cluster(), fixture.identity(id), fixture.ca.roots()).unwrap();
        let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(
                tls.client_config(NODE).unwrap(),
                node.local_socket_addr(),
                "quicraft",
            )
            .unwrap();
        let conn = guarded("the raw handshake", connecting).await.unwrap();
        Self {
            _endpoint: endpoint,
            conn,
        }
    }

    /// A request stream carrying `bytes`, finished.
    async fn send(&self, bytes: &[u8]) -> (SendStream, RecvStream) {
        let (mut send, recv) = self.conn.open_bi().await.unwrap();
        let _ = send.write_all(bytes).await;
        let _ = send.finish();
        (send, recv)
    }
}

/// The first frame of an answer: its kind.
async fn answer_kind(mut recv: RecvStream) -> Option<u8> {
    let bytes = recv.read_to_end(1 << 20).await.ok()?;
    bytes.first().copied()
}

/// The node under attack: tiny limits so the attacks are cheap, heartbeats answered by the
/// fast path (so a well-behaved member's heartbeats work while the consumer is stalled).
async fn node(
    fixture: &Fixture,
    tune: impl FnOnce(QuicConfig) -> QuicConfig,
) -> (QuicTransport, Incoming) {
    let (node, incoming) = QuicTransport::bind(tune(fixture.config(NODE)))
        .await
        .unwrap();
    let me = RpcHeader::new(NODE, node.local_addr());
    node.set_heartbeat_handler(Some(Arc::new(move |rpc: quicraft::Rpc| {
        let term = match rpc.command() {
            Command::AppendEntries(request) => request.term,
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
    (node, incoming)
}

/// The well-behaved member's heartbeat to the node succeeds.
async fn honest_heartbeat(honest: &QuicTransport, node: &QuicTransport, term: u64) {
    let request =
        AppendEntriesRequest::heartbeat(RpcHeader::new(HONEST, honest.local_addr()), term);
    let id = ServerId::from(NODE);
    let response = guarded(
        "the honest member's heartbeat",
        honest.append_entries(&id, &node.local_addr(), request),
    )
    .await
    .expect("the honest member's heartbeat fails while another member attacks");
    assert!(response.success);
}

/// Requests of many empty entries hold about 15 times their encoded size once decoded. With
/// the consumer stalled, a member sending them on every stream it may open gets at most what
/// its budget allows queued, counted at their decoded size, and no more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_entries_are_held_to_the_peer_budget_at_their_decoded_size() {
    common::init_tracing();
    const BUDGET: usize = 8 << 20;
    let fixture = Fixture::new("prod");
    let (node, _stalled) = node(&fixture, |config| {
        config
            .max_message_size(1 << 20)
            .max_buffered_bytes_per_peer(BUDGET)
            .rpc_timeout(Duration::from_secs(2))
    })
    .await;
    let (honest, _) = fixture.node(HONEST).await;
    let hostile = RawMember::connect(&fixture, HOSTILE, &node).await;

    let body = empty_entries_append(HOSTILE);
    let decoded_at_least = MAX_ENTRIES_PER_APPEND * size_of::<Log>();
    assert!(body.len() * 8 < decoded_at_least, "the attack amplifies");
    let mut streams = Vec::new();
    for _ in 0..64 {
        streams.push(hostile.send(&frame(APPEND_ENTRIES, &body)).await);
    }
    // Some are queued for the consumer, the rest wait for budget.
    let stats = common::stats_until(GUARD, &node, "the attack's requests queued", |stats| {
        stats.consumer_queued > 0 && stats.request_streams == 64
    })
    .await;
    honest_heartbeat(&honest, &node, 1).await;
    let _ = stats;
    let stats = node.stats();
    assert!(
        stats.consumer_queued * decoded_at_least <= BUDGET,
        "{} requests of {decoded_at_least} decoded bytes each queued against a budget of \
         {BUDGET}: {stats:?}",
        stats.consumer_queued
    );
    assert!(
        stats.frame_bytes_buffered_high_water <= BUDGET,
        "the node held more than the peer's budget: {stats:?}"
    );
    assert!(
        stats.frame_bytes_buffered >= stats.consumer_queued * decoded_at_least,
        "queued requests are counted at their decoded size: {stats:?}"
    );

    // Closing the connection gives everything back at once: queued requests are withdrawn.
    hostile.conn.close(0u32.into(), b"done");
    drop(streams);
    common::stats_until(GUARD, &node, "everything given back", |stats| {
        stats.frame_bytes_buffered == 0 && stats.consumer_queued == 0 && stats.request_streams == 0
    })
    .await;
    honest_heartbeat(&honest, &node, 2).await;
}

/// With the consumer stalled, a member opens pipelines each holding a large append, closes its
/// connection and dials again, over and over. Each connection's share is given back the
/// moment it closes (pipelines and queued requests included), and what the member holds over
/// all of its connections never passes its one budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_redialling_cannot_escape_its_budget() {
    common::init_tracing();
    const MAX: usize = 1 << 20;
    const BUDGET: usize = 4 * MAX;
    let fixture = Fixture::new("prod");
    let (node, _stalled) = node(&fixture, |config| {
        config
            .max_message_size(MAX)
            .max_buffered_bytes_per_peer(BUDGET)
            .rpc_timeout(Duration::from_secs(5))
    })
    .await;
    let (honest, _) = fixture.node(HONEST).await;
    let request = AppendEntriesRequest {
        header: RpcHeader::new(HOSTILE, "127.0.0.1:1"),
        term: 1,
        prev_log_entry: 0,
        prev_log_term: 0,
        entries: vec![Log::command(1, 1, vec![7u8; MAX - 1024])],
        leader_commit_index: 0,
    };
    let append = frame(APPEND_ENTRIES, &postcard::to_stdvec(&request).unwrap());
    for round in 0..6u64 {
        let hostile = RawMember::connect(&fixture, HOSTILE, &node).await;
        let mut pipelines = Vec::new();
        for _ in 0..4 {
            let (mut send, recv) = hostile.conn.open_bi().await.unwrap();
            send.write_all(&frame(PIPELINE_OPEN, &[])).await.unwrap();
            // Not awaited whole: the node reads it only while the budget allows.
            let pending = append.clone();
            pipelines.push(tokio::spawn(async move {
                let _ = send.write_all(&pending).await;
                (send, recv)
            }));
        }
        // Read whole and queued for the stalled consumer, still counted.
        let held = common::stats_until(
            GUARD,
            &node,
            "the pipelines' appends queued and held",
            |stats| stats.consumer_queued == 4 && stats.frame_bytes_buffered >= 4 * (MAX - 1024),
        )
        .await;
        assert!(
            held.frame_bytes_buffered <= BUDGET,
            "round {round}: {held:?}"
        );
        honest_heartbeat(&honest, &node, round + 1).await;
        hostile.conn.close(0u32.into(), b"again");
        common::stats_until(
            GUARD,
            &node,
            "the closed connection's share given back",
            |stats| stats.frame_bytes_buffered == 0 && stats.consumer_queued == 0,
        )
        .await;
        for pipeline in pipelines {
            pipeline.abort();
        }
    }
    let stats = node.stats();
    assert!(
        stats.frame_bytes_buffered_high_water <= BUDGET,
        "over all of its connections the member held more than its budget: {stats:?}"
    );
}

/// A member fills its share of the consumer's queue with votes while the consumer is stalled.
/// Another member's vote is then queued anyway (its own share), and the consumer takes it
/// after at most one of the flood's votes: peers are served in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_flood_from_one_member_does_not_push_back_another_members_vote() {
    common::init_tracing();
    const PER_PEER: usize = 16;
    let fixture = Fixture::new("prod");
    let (node, mut incoming) = node(&fixture, |config| config.consumer_capacity(PER_PEER)).await;
    let (honest, _) = fixture.node(HONEST).await;
    let hostile = RawMember::connect(&fixture, HOSTILE, &node).await;

    let mut flood = Vec::new();
    for term in 0..(2 * PER_PEER) as u64 {
        let body = postcard::to_stdvec(&vote(HOSTILE, term + 1)).unwrap();
        flood.push(hostile.send(&frame(REQUEST_VOTE, &body)).await);
    }
    common::stats_until(GUARD, &node, "the flood filling its share", |stats| {
        stats.consumer_queued == PER_PEER
    })
    .await;

    let honest_vote = {
        let (honest, node_addr) = (honest.clone(), node.local_addr());
        tokio::spawn(async move {
            let mut request = vote(HONEST, 1);
            request.header = RpcHeader::new(HONEST, honest.local_addr());
            honest
                .request_vote(&ServerId::from(NODE), &node_addr, request)
                .await
        })
    };
    common::stats_until(
        GUARD,
        &node,
        "the honest vote queued beside the flood",
        |stats| stats.consumer_queued == PER_PEER + 1,
    )
    .await;

    // The consumer wakes up: the honest vote comes first or second, not after the flood.
    let mut position = None;
    for taken in 0..3 {
        let rpc = guarded("the consumer", incoming.recv()).await.unwrap();
        let from = rpc.command().header().id.to_string();
        let me = RpcHeader::new(NODE, node.local_addr());
        let term = match rpc.command() {
            Command::RequestVote(r) => r.term,
            other => panic!("unexpected {other:?}"),
        };
        rpc.respond(Ok(quicraft::RequestVoteResponse {
            header: me,
            term,
            granted: false,
        }
        .into()));
        if from == HONEST {
            position = Some(taken);
            break;
        }
    }
    assert!(
        matches!(position, Some(0 | 1)),
        "the honest vote was taken at position {position:?}, behind the flood"
    );
    guarded("the honest vote's answer", honest_vote)
        .await
        .unwrap()
        .expect("the honest vote is answered");
    drop(flood);
}

/// Snapshot requests the node refuses (the header names another node) release the data
/// stream they name at once, and data streams nobody claims expire on a timer: a correct
/// snapshot still gets through afterwards, although the refused ones were more than the
/// connection's snapshot streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_unclaimed_snapshot_streams_do_not_block_later_snapshots() {
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let (node, mut incoming) = node(&fixture, |config| {
        config
            .max_snapshot_streams(4)
            .rpc_timeout(Duration::from_millis(500))
    })
    .await;
    let consumer = tokio::spawn(async move {
        let mut installed = 0u32;
        while let Some(mut rpc) = incoming.recv().await {
            let Command::InstallSnapshot(request) = rpc.command().clone() else {
                continue;
            };
            let mut reader = rpc.take_snapshot().unwrap();
            let mut data = Vec::new();
            let read = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut data).await;
            let success = read.is_ok() && data.len() as u64 == request.size;
            installed += u32::from(success);
            rpc.respond(Ok(quicraft::InstallSnapshotResponse {
                header: RpcHeader::new(NODE, "127.0.0.1:1"),
                term: request.term,
                success,
            }
            .into()));
            if success {
                return installed;
            }
        }
        installed
    });
    let hostile = RawMember::connect(&fixture, HOSTILE, &node).await;
    let offer = |claimed: &'static str| {
        let conn = hostile.conn.clone();
        async move {
            let mut uni = conn.open_uni().await.unwrap();
            let transfer_id = u64::from(uni.id());
            let header = frame(SNAPSHOT_DATA, &postcard::to_stdvec(&transfer_id).unwrap());
            uni.write_all(&header).await.unwrap();
            uni.write_all(b"snapshot").await.unwrap();
            let _ = uni.finish();
            let request = raw_snapshot_request(claimed, 8);
            let body = postcard::to_stdvec(&(transfer_id, request)).unwrap();
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_all(&frame(INSTALL_SNAPSHOT, &body))
                .await
                .unwrap();
            let _ = send.finish();
            guarded("a snapshot answer", answer_kind(recv)).await
        }
    };
    // Twice as many refused requests as the connection has snapshot streams.
    for _ in 0..8 {
        assert_eq!(
            guarded("a refused offer", offer("someone-else")).await,
            Some(ERROR)
        );
    }
    // Data streams with no request at all, filling every stream the connection allows.
    for _ in 0..4 {
        let mut uni = hostile.conn.open_uni().await.unwrap();
        let transfer_id = u64::from(uni.id());
        let header = frame(SNAPSHOT_DATA, &postcard::to_stdvec(&transfer_id).unwrap());
        uni.write_all(&header).await.unwrap();
    }
    // Once they expire, a correct snapshot passes.
    assert_eq!(
        guarded("a correct offer", offer(HOSTILE)).await,
        Some(RESPONSE)
    );
    assert_eq!(guarded("the consumer", consumer).await.unwrap(), 1);
}

/// An InstallSnapshot of `size` bytes as a raw member claiming to be `claimed` sends it.
fn raw_snapshot_request(claimed: &str, size: u64) -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: RpcHeader::new(claimed, "127.0.0.1:1"),
        snapshot_version: 1,
        term: 3,
        last_log_index: 10,
        last_log_term: 2,
        configuration: Bytes::new(),
        configuration_index: 1,
        size,
    }
}

/// The frame kind of a resumable snapshot's request (`docs/PROTOCOL.md` §8.6).
const RESUMABLE_SNAPSHOT: u8 = 0x08;

/// Opens a resumable snapshot of `size` bytes on `conn` as `claimed` with `resume_id`,
/// sending 1 KiB of its data and leaving both streams open; returns the request stream's
/// receiving half (where the answer comes).
async fn open_resumable(
    conn: &quinn::Connection,
    claimed: &str,
    resume_id: u64,
    size: u64,
) -> (SendStream, SendStream, RecvStream) {
    let mut uni = conn.open_uni().await.unwrap();
    let transfer_id = u64::from(uni.id());
    let header = frame(SNAPSHOT_DATA, &postcard::to_stdvec(&transfer_id).unwrap());
    uni.write_all(&header).await.unwrap();
    uni.write_all(&[0x5a; 1024]).await.unwrap();
    let request = raw_snapshot_request(claimed, size);
    let body = postcard::to_stdvec(&(transfer_id, resume_id, request)).unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(&frame(RESUMABLE_SNAPSHOT, &body))
        .await
        .unwrap();
    (send, uni, recv)
}

/// A member that opens resumable snapshots and drops its connections to park them (each
/// parked transfer waits `snapshot_resume_grace` for a resume) holds at most
/// `max_snapshot_streams` transfers on the node, parked or not, whatever connection it comes
/// back on: the next one is refused `UNAVAILABLE`. A parked transfer's reader fails when the
/// grace period passes, which frees its place. An honest member's calls are answered
/// throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_resumable_snapshots_are_bounded_per_member() {
    const MAX: u32 = 2;
    const SIZE: u64 = 1 << 20;
    common::init_tracing();
    let fixture = Fixture::new("prod");
    let grace = Duration::from_millis(1500);
    let (node, mut incoming) = node(&fixture, |config| {
        config
            .max_snapshot_streams(MAX)
            .snapshot_resume_grace(grace)
    })
    .await;
    // The consumer takes every snapshot and reads it; each reader's end is reported.
    let (taken_tx, mut taken) = tokio::sync::mpsc::unbounded_channel();
    let (ended_tx, mut ended) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(mut rpc) = incoming.recv().await {
            let Some(mut reader) = rpc.take_snapshot() else {
                continue;
            };
            let _ = taken_tx.send(());
            let ended_tx = ended_tx.clone();
            tokio::spawn(async move {
                let mut sink = Vec::new();
                let read = tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut sink).await;
                let _ = ended_tx.send(read.map_err(|e| e.kind()));
                drop(rpc);
            });
        }
    });
    let (honest, _) = fixture.node(HONEST).await;

    let (_, rtts, failures) = honest_calls_during(&honest, &node, true, async {
        // Fill the member's places, then drop the connection: both transfers park.
        let first = RawMember::connect(&fixture, HOSTILE, &node).await;
        let mut open = Vec::new();
        for resume_id in [11, 12] {
            open.push(open_resumable(&first.conn, HOSTILE, resume_id, SIZE).await);
            guarded("the consumer takes the snapshot", taken.recv()).await;
        }
        first.conn.close(0u32.into(), b"gone");
        drop(open);
        common::stats_until(GUARD, &node, "both transfers parked", |stats| {
            stats.snapshots_parked == MAX as usize
        })
        .await;

        // Back on new connections: every further transfer is refused while they are parked.
        for round in 0..3u64 {
            let again = RawMember::connect(&fixture, HOSTILE, &node).await;
            let (_send, _uni, recv) = open_resumable(&again.conn, HOSTILE, 100 + round, SIZE).await;
            let answer = guarded("the refusal", recv_frame(recv)).await;
            let (kind, body) = answer.expect("an answer");
            assert_eq!(
                kind, ERROR,
                "round {round}: a transfer past the limit was taken"
            );
            let error: quicraft::RemoteError = postcard::from_bytes(&body).unwrap();
            assert_eq!(error.code, quicraft::ErrorCode::UNAVAILABLE, "{error}");
            assert!(node.stats().snapshots_parked <= MAX as usize);
        }

        // The grace period passes: the readers fail, the places free up.
        for _ in 0..MAX {
            let end = guarded("a parked reader's end", ended.recv())
                .await
                .unwrap();
            assert_eq!(end, Err(std::io::ErrorKind::TimedOut));
        }
        common::stats_until(GUARD, &node, "nothing parked", |stats| {
            stats.snapshots_parked == 0
        })
        .await;
        let back = RawMember::connect(&fixture, HOSTILE, &node).await;
        let _kept = open_resumable(&back.conn, HOSTILE, 200, SIZE).await;
        guarded("a transfer taken again", taken.recv()).await;
    })
    .await;
    assert_eq!(failures, 0, "the honest member's calls failed");
    eprintln!("honest member: {} calls, p99 {:?}", rtts.len(), p99(&rtts));
}

/// Reads a whole answer stream: its first frame's kind and body.
async fn recv_frame(mut recv: RecvStream) -> Option<(u8, Vec<u8>)> {
    let bytes = recv.read_to_end(1 << 20).await.ok()?;
    let (&kind, rest) = bytes.split_first()?;
    let len = u32::from_be_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    Some((kind, rest.get(4..4 + len)?.to_vec()))
}

/// The honest member's calls made every 10 ms while `attack` runs: round trips and failures.
async fn honest_calls_during<T>(
    honest: &QuicTransport,
    node: &QuicTransport,
    heartbeat: bool,
    attack: impl Future<Output = T>,
) -> (T, Vec<Duration>, usize) {
    let stop = std::sync::atomic::AtomicBool::new(false);
    let calls = async {
        let (mut rtts, mut failures) = (Vec::new(), 0);
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let id = ServerId::from(NODE);
        let mut term = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            tick.tick().await;
            term += 1;
            let at = tokio::time::Instant::now();
            let header = RpcHeader::new(HONEST, honest.local_addr());
            let ok = if heartbeat {
                let request = AppendEntriesRequest::heartbeat(header, term);
                honest
                    .append_entries(&id, &node.local_addr(), request)
                    .await
                    .is_ok()
            } else {
                let mut request = vote(HONEST, term);
                request.header = header;
                honest
                    .request_vote(&id, &node.local_addr(), request)
                    .await
                    .is_ok()
            };
            if ok {
                rtts.push(at.elapsed());
            } else {
                failures += 1;
            }
        }
        (rtts, failures)
    };
    let attack = async {
        let out = attack.await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        out
    };
    let (out, (rtts, failures)) = tokio::join!(attack, calls);
    (out, rtts, failures)
}

fn p99(rtts: &[Duration]) -> Duration {
    let mut rtts = rtts.to_vec();
    rtts.sort();
    rtts.get((rtts.len() * 99).div_ceil(100).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// Per attack of this file at full size with the default limits: the process's peak RSS (the
/// attacker's few connections included), the node's own high-water mark, and the honest
/// member's p99 and failures. The figures of SECURITY.md "Limits against a hostile peer".
/// `cargo test --release --test quic_hostile -- --ignored --nocapture hostile_figures`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints the figures of SECURITY.md; run in a release build"]
async fn hostile_figures() {
    let fixture = Fixture::new("prod");

    // 1. Decoded-size amplification: 1,000 AppendEntries of 8,192 empty entries on one
    // connection, consumer stalled, heartbeats answered by the fast path.
    common::reset_peak_rss();
    let (node1, _stalled) = node(&fixture, |config| config).await;
    let (honest, _) = fixture.node(HONEST).await;
    let hostile = RawMember::connect(&fixture, HOSTILE, &node1).await;
    // `Bytes`, written with `write_chunk`: the attacker shares this process, and must not
    // hold a copy per stream.
    let body = Bytes::from(frame(APPEND_ENTRIES, &empty_entries_append(HOSTILE)));
    let (_, rtts, failures) = honest_calls_during(&honest, &node1, true, async {
        let mut streams = Vec::new();
        for _ in 0..1_000 {
            let (mut send, recv) =
                tokio::time::timeout(Duration::from_secs(30), hostile.conn.open_bi())
                    .await
                    .expect("stream credit")
                    .unwrap();
            let body = body.clone();
            streams.push(tokio::spawn(async move {
                let _ = send.write_chunk(body).await;
                let _ = send.finish();
                (send, recv)
            }));
            if streams.len() >= 900 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        streams.len()
    })
    .await;
    let stats = node1.stats();
    println!(
        "decoded-size amplification: honest heartbeats {} ok, {failures} failed, p99 {:?}; node \
         held at most {} MiB ({} queued); peak RSS {} MiB",
        rtts.len(),
        p99(&rtts),
        stats.frame_bytes_buffered_high_water >> 20,
        stats.consumer_queued,
        common::peak_rss_mib()
    );
    hostile.conn.close(0u32.into(), b"done");
    drop(hostile);

    // 2. Closing to escape: 14 rounds of 4 pipelines with a 16 MiB append each, then close
    // and dial again, consumer stalled.
    common::reset_peak_rss();
    let (node2, _stalled2) = node(&fixture, |config| config).await;
    let request = AppendEntriesRequest {
        header: RpcHeader::new(HOSTILE, "127.0.0.1:1"),
        term: 1,
        prev_log_entry: 0,
        prev_log_term: 0,
        entries: vec![Log::command(1, 1, vec![7u8; (16 << 20) - 4096])],
        leader_commit_index: 0,
    };
    let append = Bytes::from(frame(
        APPEND_ENTRIES,
        &postcard::to_stdvec(&request).unwrap(),
    ));
    drop(request);
    let (_, rtts, failures) = honest_calls_during(&honest, &node2, true, async {
        for _ in 0..14 {
            let hostile = RawMember::connect(&fixture, HOSTILE, &node2).await;
            let mut pipelines = Vec::new();
            for _ in 0..4 {
                let (mut send, recv) = hostile.conn.open_bi().await.unwrap();
                let append = append.clone();
                pipelines.push(tokio::spawn(async move {
                    let _ = send.write_all(&frame(PIPELINE_OPEN, &[])).await;
                    let _ = send.write_chunk(append).await;
                    (send, recv)
                }));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            hostile.conn.close(0u32.into(), b"again");
            for pipeline in pipelines {
                pipeline.abort();
            }
        }
    })
    .await;
    let stats = node2.stats();
    println!(
        "re-dialling to escape the budget: honest heartbeats {} ok, {failures} failed, p99 {:?}; \
         node held at most {} MiB, {} MiB now; peak RSS {} MiB",
        rtts.len(),
        p99(&rtts),
        stats.frame_bytes_buffered_high_water >> 20,
        stats.frame_bytes_buffered >> 20,
        common::peak_rss_mib()
    );

    // 3. A vote flood: 1,000 concurrent RequestVote loops from one member, against a consumer
    // that spends 100 us per RPC; the honest member's votes go through the same consumer.
    let (node3, mut incoming) = node(&fixture, |config| config).await;
    let me = RpcHeader::new(NODE, node3.local_addr());
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            let term = match rpc.command() {
                Command::RequestVote(r) => r.term,
                _ => 0,
            };
            std::thread::sleep(Duration::from_micros(100));
            rpc.respond(Ok(quicraft::RequestVoteResponse {
                header: me.clone(),
                term,
                granted: false,
            }
            .into()));
        }
    });
    let (_, quiet, _) = honest_calls_during(
        &honest,
        &node3,
        false,
        tokio::time::sleep(Duration::from_secs(2)),
    )
    .await;
    let hostile = RawMember::connect(&fixture, HOSTILE, &node3).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..1_000u64)
        .map(|i| {
            let (conn, stop) = (hostile.conn.clone(), stop.clone());
            tokio::spawn(async move {
                let body = frame(
                    REQUEST_VOTE,
                    &postcard::to_stdvec(&vote(HOSTILE, i + 1)).unwrap(),
                );
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok((mut send, recv)) = conn.open_bi().await else {
                        return;
                    };
                    let _ = send.write_all(&body).await;
                    let _ = send.finish();
                    let _ = answer_kind(recv).await;
                }
            })
        })
        .collect();
    let (_, rtts, failures) = honest_calls_during(
        &honest,
        &node3,
        false,
        tokio::time::sleep(Duration::from_secs(5)),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for l in loops {
        l.abort();
    }
    println!(
        "vote flood (1,000 loops): honest votes {} ok, {failures} failed, p99 {:?} (quiet p99 {:?})",
        rtts.len(),
        p99(&rtts),
        p99(&quiet)
    );
}
