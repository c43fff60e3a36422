//! Bad input from an authenticated peer: a raw quinn connection with a valid certificate
//! writes malformed, oversized, truncated, misplaced, reset and trickling frames. Each is
//! refused on its own stream (an Error frame with `BAD_REQUEST`, or a reset), never reaches
//! the consumer, and leaves the connection and the node serving: afterwards a valid
//! RequestVote on the same raw connection and a call from a regular peer both succeed.
//!
//! Partial frames on many streams hold at most the connection's byte budget
//! (`max_buffered_bytes_per_peer`), as the node's `TransportStats` show.

#![allow(clippy::unwrap_used)]

mod common;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use quicraft::tls::TlsContext;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, ErrorCode, Incoming,
    InstallSnapshotRequest, InstallSnapshotResponse, QuicConfig, QuicTransport, RemoteError,
    RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse, Response, RpcHeader,
    ServerAddress, ServerId, SnapshotReader, TimeoutNowResponse, Transport,
};
use quinn::{Endpoint, ReadError, ReadToEndError, RecvStream, SendStream, VarInt};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use common::Fixture;
use common::wire::*;

/// Bound on any single wait, so a broken transport fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(10);

/// The node under test, as its certificate names it.
const SERVER: &str = "srv";
/// The raw client's node id (a valid certificate of the cluster).
const RAW: &str = "raw";
/// A regular QuicTransport peer.
const PEER: &str = "peer";

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(GUARD, what, fut).await
}

fn vote_body(id: &str, term: u64) -> Vec<u8> {
    postcard::to_stdvec(&vote(id, term)).unwrap()
}

/// Deterministic pseudo-random bytes (xorshift64*), so a failure can be replayed.
fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    (0..len)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What the snapshot handler of the consumer saw.
#[derive(Debug)]
enum SnapshotEvent {
    /// The first data bytes arrived (how many so far).
    Started(usize),
    /// The reader ended: the byte count on success, the error kind otherwise.
    Finished(Result<usize, io::ErrorKind>),
}

/// Reads a snapshot to its end, reporting the first bytes and the outcome.
async fn read_snapshot(
    mut reader: SnapshotReader,
    events: &mpsc::UnboundedSender<SnapshotEvent>,
) -> Result<usize, io::ErrorKind> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return Ok(total),
            Ok(n) => {
                if total == 0 {
                    let _ = events.send(SnapshotEvent::Started(n));
                }
                total += n;
            }
            Err(e) => return Err(e.kind()),
        }
    }
}

/// The consumer: answers every RPC (echoing the term where there is one) and records every
/// command it was given. Snapshots are read on their own task, so they never hold up others.
fn spawn_consumer(
    mut incoming: Incoming,
    me: RpcHeader,
    delivered: mpsc::UnboundedSender<Command>,
    snapshots: mpsc::UnboundedSender<SnapshotEvent>,
) {
    tokio::spawn(async move {
        while let Some(mut rpc) = incoming.recv().await {
            let _ = delivered.send(rpc.command().clone());
            let header = me.clone();
            let response: Response = match rpc.command() {
                Command::RequestVote(r) => RequestVoteResponse {
                    header,
                    term: r.term,
                    granted: true,
                }
                .into(),
                Command::RequestPreVote(r) => RequestPreVoteResponse {
                    header,
                    term: r.term,
                    granted: true,
                }
                .into(),
                Command::AppendEntries(r) => AppendEntriesResponse {
                    header,
                    term: r.term,
                    last_log: r.prev_log_entry,
                    success: true,
                    no_retry_backoff: false,
                }
                .into(),
                Command::TimeoutNow(_) => TimeoutNowResponse { header }.into(),
                Command::InstallSnapshot(r) => {
                    let term = r.term;
                    let reader = rpc.take_snapshot().expect("an InstallSnapshot has data");
                    let events = snapshots.clone();
                    tokio::spawn(async move {
                        let outcome = read_snapshot(reader, &events).await;
                        let _ = events.send(SnapshotEvent::Finished(outcome));
                        let response = InstallSnapshotResponse {
                            header,
                            term,
                            success: outcome.is_ok(),
                        };
                        rpc.respond(Ok(response.into()));
                    });
                    continue;
                }
                other => panic!("unexpected command {other:?}"),
            };
            rpc.respond(Ok(response));
        }
    });
}

/// What came back on a raw request stream. (The payloads are read through `Debug` in
/// failure messages.)
#[derive(Debug)]
#[allow(dead_code)]
enum Answer {
    /// A whole frame, and nothing after it.
    Frame { kind: u8, body: Vec<u8> },
    /// The node reset the stream.
    Reset(VarInt),
    /// The node ended its side without a frame, and stopped ours (STOP_SENDING).
    Stopped(VarInt),
    /// Bytes that are not exactly one frame.
    Garbled(Vec<u8>),
}

async fn read_answer(mut recv: RecvStream) -> Answer {
    match recv.read_to_end(1 << 20).await {
        Ok(bytes) => {
            if bytes.len() >= 5 {
                let len = u32::from_be_bytes(bytes[1..5].try_into().unwrap()) as usize;
                if bytes.len() == 5 + len {
                    return Answer::Frame {
                        kind: bytes[0],
                        body: bytes[5..].to_vec(),
                    };
                }
            }
            Answer::Garbled(bytes)
        }
        Err(ReadToEndError::Read(ReadError::Reset(code))) => Answer::Reset(code),
        Err(other) => panic!("reading the answer failed: {other}"),
    }
}

/// The node's answer on a request stream whose sending half is `send`: what
/// [`read_answer`] reads, or, when the node ended its side empty, whether it stopped ours.
/// (A stop can only be seen while our side still has unacknowledged data; an empty answer to
/// a request the node read whole is a failure.)
async fn answer_on(send: &SendStream, recv: RecvStream) -> Answer {
    match read_answer(recv).await {
        Answer::Garbled(bytes) if bytes.is_empty() => {
            match tokio::time::timeout(Duration::from_secs(1), send.stopped()).await {
                Ok(Ok(Some(code))) => Answer::Stopped(code),
                _ => Answer::Garbled(bytes),
            }
        }
        other => other,
    }
}

/// The node refused the request on its stream: a `BAD_REQUEST` Error frame, or a reset or
/// stop of the stream.
#[track_caller]
fn assert_refused(answer: &Answer, case: &str) {
    match answer {
        Answer::Frame { kind: ERROR, body } => {
            let error: RemoteError = postcard::from_bytes(body).unwrap();
            assert_eq!(error.code, ErrorCode::BAD_REQUEST, "{case}: {error}");
        }
        Answer::Reset(_) | Answer::Stopped(_) => {}
        other => {
            panic!("{case}: expected a BAD_REQUEST Error frame, a reset or a stop, got {other:?}")
        }
    }
}

/// A node under test with a consumer, a raw authenticated connection to it, and a regular
/// peer.
struct Setup {
    server: QuicTransport,
    delivered: mpsc::UnboundedReceiver<Command>,
    snapshots: mpsc::UnboundedReceiver<SnapshotEvent>,
    _raw_endpoint: Endpoint,
    raw: quinn::Connection,
    peer: QuicTransport,
    next_term: u64,
}

impl Setup {
    async fn new() -> Self {
        Self::with(|config| config).await
    }

    async fn with(tune_server: impl FnOnce(QuicConfig) -> QuicConfig) -> Self {
        common::init_tracing();
        let fixture = Fixture::new("prod");
        let (server, incoming) = QuicTransport::bind(tune_server(fixture.config(SERVER)))
            .await
            .unwrap();
        let (delivered_tx, delivered) = mpsc::unbounded_channel();
        let (snapshots_tx, snapshots) = mpsc::unbounded_channel();
        spawn_consumer(
            incoming,
            RpcHeader::new(SERVER, server.local_addr()),
            delivered_tx,
            snapshots_tx,
        );

        let tls =
            TlsContext::new(fixture.cluster(), fixture.identity(RAW), fixture.ca.roots()).unwrap();
        let raw_endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = raw_endpoint
            .connect_with(
                tls.client_config(SERVER).unwrap(),
                server.local_socket_addr(),
                "quicraft",
            )
            .unwrap();
        let raw = guarded("the raw handshake", connecting).await.unwrap();

        let (peer, _) = fixture.node(PEER).await;
        Self {
            server,
            delivered,
            snapshots,
            _raw_endpoint: raw_endpoint,
            raw,
            peer,
            next_term: 100,
        }
    }

    fn server_addr(&self) -> SocketAddr {
        self.server.local_socket_addr()
    }

    /// Opens a request stream on the raw connection and writes `bytes` to it; `finish` ends
    /// the stream. A write refused by the node (it stopped the stream) is not an error here:
    /// its answer says what happened.
    async fn send(&self, bytes: &[u8], finish: bool) -> (SendStream, RecvStream) {
        let (mut send, recv) = self.raw.open_bi().await.unwrap();
        if send.write_all(bytes).await.is_ok() && finish {
            let _ = send.finish();
        }
        (send, recv)
    }

    /// Sends `bytes` as a whole request stream and returns the node's answer.
    async fn exchange(&self, bytes: &[u8]) -> Answer {
        let (send, recv) = self.send(bytes, true).await;
        guarded("the answer", answer_on(&send, recv)).await
    }

    /// The node still serves both the raw connection that sent bad input and other peers, and
    /// nothing but the valid requests reached its consumer.
    async fn assert_still_serving(&mut self, case: &str) {
        assert!(
            self.raw.close_reason().is_none(),
            "{case}: the connection was closed: {:?}",
            self.raw.close_reason()
        );
        let raw_term = self.next_term;
        let peer_term = self.next_term + 1;
        self.next_term += 2;

        // A valid request on the same raw connection gets a proper answer.
        match self
            .exchange(&frame(REQUEST_VOTE, &vote_body(RAW, raw_term)))
            .await
        {
            Answer::Frame {
                kind: RESPONSE,
                body,
            } => match postcard::from_bytes::<Response>(&body).unwrap() {
                Response::RequestVote(r) => {
                    assert_eq!(r.term, raw_term, "{case}");
                    assert!(r.granted, "{case}");
                    assert_eq!(r.header.id, ServerId::from(SERVER), "{case}");
                }
                other => panic!("{case}: a RequestVote answered with {other:?}"),
            },
            other => panic!("{case}: a valid RequestVote after bad input got {other:?}"),
        }

        // A regular peer is served too.
        let request = RequestVoteRequest {
            header: RpcHeader::new(PEER, self.peer.local_addr()),
            ..vote(PEER, peer_term)
        };
        let response = guarded(
            "the peer's call",
            self.peer.request_vote(
                &ServerId::from(SERVER),
                &ServerAddress::from(self.server_addr()),
                request,
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("{case}: a regular peer's call failed: {e}"));
        assert_eq!(response.term, peer_term, "{case}");

        // The consumer saw exactly those two requests since the last check.
        let mut seen = Vec::new();
        while let Ok(command) = self.delivered.try_recv() {
            seen.push(command);
        }
        let expected = vec![
            Command::RequestVote(vote(RAW, raw_term)),
            Command::RequestVote(RequestVoteRequest {
                header: RpcHeader::new(PEER, self.peer.local_addr()),
                ..vote(PEER, peer_term)
            }),
        ];
        assert_eq!(seen, expected, "{case}: the consumer saw other requests");
    }

    /// Asserts nothing at all reached the consumer yet.
    fn assert_nothing_delivered(&mut self, case: &str) {
        if let Ok(command) = self.delivered.try_recv() {
            panic!("{case}: bad input reached the consumer as {command:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_bytes_are_refused() {
    let mut s = Setup::new().await;
    for seed in 1..=6u64 {
        let bytes = pseudo_random(seed, 1 + (seed as usize * 97) % 600);
        let case = format!("random bytes, seed {seed}");
        assert_refused(&s.exchange(&bytes).await, &case);
        s.assert_nothing_delivered(&case);
    }
    // Random bytes behind a valid header: a RequestVote whose body does not decode.
    let garbage = frame(REQUEST_VOTE, &pseudo_random(42, 40));
    assert_refused(&s.exchange(&garbage).await, "garbage body");
    s.assert_nothing_delivered("garbage body");
    // A valid body with a byte too many inside the declared length.
    let mut body = vote_body(RAW, 1);
    body.push(0);
    assert_refused(&s.exchange(&frame(REQUEST_VOTE, &body)).await, "long body");
    s.assert_nothing_delivered("long body");
    s.assert_still_serving("random bytes").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_message_kind_is_refused() {
    let mut s = Setup::new().await;
    let answer = s.exchange(&frame(0x42, &vote_body(RAW, 1))).await;
    assert_refused(&answer, "kind 0x42");
    s.assert_nothing_delivered("kind 0x42");
    s.assert_still_serving("kind 0x42").await;
}

/// The process's peak virtual memory, in bytes (Linux only).
fn peak_virtual_memory() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmPeak:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn length_over_the_limit_is_refused_at_the_header_without_allocating() {
    let mut s = Setup::new().await;
    let before = peak_virtual_memory();
    // Only the header, and the stream left open: an answer can only come from judging the
    // declared length alone, not from waiting for (or buffering) 4 GiB.
    let (mut send, recv) = s.send(&[REQUEST_VOTE, 0xFF, 0xFF, 0xFF, 0xFF], false).await;
    let answer = guarded("the answer to an oversize header", answer_on(&send, recv)).await;
    assert_refused(&answer, "length 0xFFFFFFFF");
    if let (Some(before), Some(after)) = (before, peak_virtual_memory()) {
        // A reservation for the declared 4 GiB would show in the peak even if never touched.
        assert!(
            after < before + (2 << 30),
            "peak virtual memory grew from {before} to {after} bytes"
        );
    }
    let _ = send.reset(VarInt::from_u32(0));
    s.assert_nothing_delivered("oversize");

    // Just over the configured limit (16 MiB by default) is refused the same way.
    let (mut send, recv) = s.send(&[REQUEST_VOTE, 0x01, 0x00, 0x00, 0x01], false).await;
    let answer = guarded("the answer to a 16 MiB + 1 header", answer_on(&send, recv)).await;
    assert_refused(&answer, "length 16 MiB + 1");
    let _ = send.reset(VarInt::from_u32(0));
    s.assert_nothing_delivered("16 MiB + 1");
    s.assert_still_serving("oversize").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_body_is_refused() {
    let mut s = Setup::new().await;
    // A valid RequestVote body, but the header declares 100 bytes more than are sent.
    let body = vote_body(RAW, 1);
    let mut bytes = vec![REQUEST_VOTE];
    bytes.extend_from_slice(&(body.len() as u32 + 100).to_be_bytes());
    bytes.extend_from_slice(&body);
    assert_refused(&s.exchange(&bytes).await, "truncated body");
    // A header cut short.
    assert_refused(&s.exchange(&[REQUEST_VOTE, 0, 0]).await, "truncated header");
    s.assert_nothing_delivered("truncated");
    s.assert_still_serving("truncated").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_frames_used_as_requests_are_refused() {
    let mut s = Setup::new().await;
    let response = Response::RequestVote(RequestVoteResponse {
        header: RpcHeader::new(RAW, "127.0.0.1:1"),
        term: 1,
        granted: true,
    });
    let bytes = frame(RESPONSE, &postcard::to_stdvec(&response).unwrap());
    assert_refused(&s.exchange(&bytes).await, "Response frame as request");
    let error = RemoteError::new(ErrorCode::HANDLER, "not a request");
    let bytes = frame(ERROR, &postcard::to_stdvec(&error).unwrap());
    assert_refused(&s.exchange(&bytes).await, "Error frame as request");
    // A snapshot data header on a bidirectional stream is no request either.
    let bytes = frame(SNAPSHOT_DATA, &postcard::to_stdvec(&0u64).unwrap());
    assert_refused(&s.exchange(&bytes).await, "SnapshotData frame as request");
    s.assert_nothing_delivered("answer frames");
    s.assert_still_serving("answer frames").await;
}

fn snapshot_request(size: u64) -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: RpcHeader::new(RAW, "127.0.0.1:1"),
        snapshot_version: 1,
        term: 9,
        last_log_index: 100,
        last_log_term: 8,
        configuration: Bytes::from_static(b"srv,raw,peer"),
        configuration_index: 90,
        size,
    }
}

/// Opens a snapshot data stream with its `SnapshotData` header and `data`, and sends the
/// InstallSnapshot request (declaring `size` bytes) that refers to it.
async fn offer_snapshot(s: &Setup, data: &[u8], size: u64) -> (SendStream, RecvStream) {
    let mut uni = s.raw.open_uni().await.unwrap();
    let transfer_id = u64::from(uni.id());
    uni.write_all(&frame(
        SNAPSHOT_DATA,
        &postcard::to_stdvec(&transfer_id).unwrap(),
    ))
    .await
    .unwrap();
    uni.write_all(data).await.unwrap();
    let body = postcard::to_stdvec(&(transfer_id, snapshot_request(size))).unwrap();
    let (_send, recv) = s.send(&frame(INSTALL_SNAPSHOT, &body), true).await;
    (uni, recv)
}

/// The answer to an InstallSnapshot whose data failed: a proper response saying it failed.
#[track_caller]
fn assert_snapshot_failed(answer: Answer) {
    match answer {
        Answer::Frame {
            kind: RESPONSE,
            body,
        } => match postcard::from_bytes::<Response>(&body).unwrap() {
            Response::InstallSnapshot(r) => assert!(!r.success),
            other => panic!("an InstallSnapshot answered with {other:?}"),
        },
        other => panic!("expected the consumer's InstallSnapshot answer, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_reset_mid_snapshot_is_an_error_for_the_reader() {
    let mut s = Setup::new().await;
    let (mut uni, recv) = offer_snapshot(&s, &[7u8; 4096], 1 << 20).await;

    // Wait until the consumer is reading the data, then reset the data stream under it.
    match guarded("the first snapshot bytes", s.snapshots.recv()).await {
        Some(SnapshotEvent::Started(n)) => assert!(n > 0),
        other => panic!("expected the snapshot to start, got {other:?}"),
    }
    uni.reset(VarInt::from_u32(99)).unwrap();
    match guarded("the end of the snapshot", s.snapshots.recv()).await {
        Some(SnapshotEvent::Finished(Err(_))) => {}
        other => panic!("a reset snapshot stream must fail the reader, got {other:?}"),
    }
    assert_snapshot_failed(guarded("the InstallSnapshot answer", read_answer(recv)).await);

    match s.delivered.try_recv() {
        Ok(Command::InstallSnapshot(r)) => assert_eq!(r, snapshot_request(1 << 20)),
        other => panic!("expected the InstallSnapshot to reach the consumer, got {other:?}"),
    }
    s.assert_still_serving("snapshot reset mid-stream").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_reset_before_its_request_is_an_error_for_the_reader() {
    let mut s = Setup::new().await;
    // The data stream is reset right after its first bytes, before the request is even sent.
    let mut uni = s.raw.open_uni().await.unwrap();
    let transfer_id = u64::from(uni.id());
    uni.write_all(&frame(
        SNAPSHOT_DATA,
        &postcard::to_stdvec(&transfer_id).unwrap(),
    ))
    .await
    .unwrap();
    uni.write_all(&[7u8; 4096]).await.unwrap();
    uni.reset(VarInt::from_u32(99)).unwrap();
    let body = postcard::to_stdvec(&(transfer_id, snapshot_request(1 << 20))).unwrap();
    let (_send, recv) = s.send(&frame(INSTALL_SNAPSHOT, &body), true).await;

    loop {
        match guarded("the end of the snapshot", s.snapshots.recv()).await {
            Some(SnapshotEvent::Started(_)) => continue,
            Some(SnapshotEvent::Finished(Err(_))) => break,
            other => panic!("a reset snapshot stream must fail the reader, got {other:?}"),
        }
    }
    assert_snapshot_failed(guarded("the InstallSnapshot answer", read_answer(recv)).await);
    match s.delivered.try_recv() {
        Ok(Command::InstallSnapshot(_)) => {}
        other => panic!("expected the InstallSnapshot to reach the consumer, got {other:?}"),
    }
    s.assert_still_serving("snapshot reset before its request")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_ending_short_is_an_error_for_the_reader() {
    let mut s = Setup::new().await;
    // Half the declared size, then a clean end of stream: still not a snapshot.
    let (mut uni, recv) = offer_snapshot(&s, &[7u8; 4096], 8192).await;
    uni.finish().unwrap();
    loop {
        match guarded("the end of the snapshot", s.snapshots.recv()).await {
            Some(SnapshotEvent::Started(_)) => continue,
            Some(SnapshotEvent::Finished(Err(kind))) => {
                assert_eq!(kind, io::ErrorKind::UnexpectedEof);
                break;
            }
            other => panic!("a short snapshot stream must fail the reader, got {other:?}"),
        }
    }
    assert_snapshot_failed(guarded("the InstallSnapshot answer", read_answer(recv)).await);
    assert!(matches!(
        s.delivered.try_recv(),
        Ok(Command::InstallSnapshot(_))
    ));
    s.assert_still_serving("snapshot ending short").await;
}

/// A data stream that does not open with its own `SnapshotData` header (another frame kind,
/// another transfer id, an oversize length) is refused, and the reader fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_stream_with_a_bad_header_is_an_error_for_the_reader() {
    let mut s = Setup::new().await;
    // Each case builds the data stream's first bytes from its transfer id.
    type Header = fn(u64) -> Vec<u8>;
    let cases: [(&str, Header); 3] = [
        ("a RequestVote frame as header", |_| {
            frame(REQUEST_VOTE, &vote_body(RAW, 1))
        }),
        ("another transfer id", |id| {
            frame(SNAPSHOT_DATA, &postcard::to_stdvec(&(id + 4)).unwrap())
        }),
        ("an oversize header", |_| {
            vec![SNAPSHOT_DATA, 0xFF, 0xFF, 0xFF, 0xFF]
        }),
    ];
    for (case, header) in cases {
        let mut uni = s.raw.open_uni().await.unwrap();
        let transfer_id = u64::from(uni.id());
        uni.write_all(&header(transfer_id)).await.unwrap();
        uni.write_all(&[7u8; 1024]).await.unwrap();
        let body = postcard::to_stdvec(&(transfer_id, snapshot_request(1024))).unwrap();
        let (_send, recv) = s.send(&frame(INSTALL_SNAPSHOT, &body), true).await;
        match guarded("the end of the snapshot", s.snapshots.recv()).await {
            Some(SnapshotEvent::Finished(Err(kind))) => {
                assert_eq!(kind, io::ErrorKind::InvalidData, "{case}");
            }
            other => panic!("{case}: the reader must fail, got {other:?}"),
        }
        assert_snapshot_failed(guarded("the InstallSnapshot answer", read_answer(recv)).await);
        assert!(
            matches!(s.delivered.try_recv(), Ok(Command::InstallSnapshot(_))),
            "{case}"
        );
        // The node stopped reading the bad data stream.
        let stopped = guarded("the data stream stop", uni.stopped()).await;
        assert!(matches!(stopped, Ok(Some(_))), "{case}: {stopped:?}");
    }
    s.assert_still_serving("snapshot streams with bad headers")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickling_stream_does_not_block_other_rpcs() {
    // A shorter RPC timeout, so the trickling stream's own refusal comes within the test.
    let rpc_timeout = Duration::from_secs(3);
    let mut s = Setup::with(|config| config.rpc_timeout(rpc_timeout)).await;
    let started = tokio::time::Instant::now();

    // One byte of a request header, then nothing: the stream stays open.
    let (send, recv) = s.send(&[REQUEST_VOTE], false).await;
    let trickle = tokio::spawn(async move { answer_on(&send, recv).await });

    s.assert_still_serving("while a stream trickles").await;
    assert!(
        !trickle.is_finished(),
        "the trickling stream was answered before the other RPCs were served \
         ({:?} after it opened)",
        started.elapsed()
    );

    // The trickling request itself is refused once the node stops waiting for it.
    let answer = guarded("the trickling stream's answer", trickle)
        .await
        .unwrap();
    assert_refused(&answer, "trickling stream");
    assert!(started.elapsed() >= rpc_timeout);
    s.assert_nothing_delivered("trickling stream");
    s.assert_still_serving("after a stream trickled").await;
}

// ---------------------------------------------------------------------------------------------
// Partial frames and the per-connection byte budget.

/// A header of `kind` declaring `len` body bytes, and only the first `sent` of them.
fn partial_frame(kind: u8, len: usize, sent: usize) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    out.extend_from_slice(&pseudo_random(len as u64, sent));
    out
}

/// 16 streams each declare a 1 MiB request (the frame limit) and send 768 KiB of it, 12 MiB
/// in all, on one connection whose budget is 4 MiB. The node holds exactly its budget (four
/// frames admitted; the other streams' bytes wait in QUIC flow control), never more; a
/// heartbeat from another peer is answered meanwhile; once the RPC timeout passes, every
/// partial request is refused (`BAD_REQUEST` for the admitted ones that stopped short,
/// `UNAVAILABLE` for those still waiting for the budget) and the node holds nothing again.
/// At most what a decoded heartbeat holds: the `Command` value and its header's strings.
const HEARTBEAT_DECODED: usize = 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_frames_on_many_streams_hold_at_most_the_connection_budget() {
    const MAX: usize = 1 << 20;
    const BUDGET: usize = 4 * MAX;
    const STREAMS: usize = 16;
    const SENT: usize = 3 * MAX / 4;
    let rpc_timeout = Duration::from_secs(3);
    let mut s = Setup::with(|config| {
        config
            .max_message_size(MAX)
            .max_buffered_bytes_per_peer(BUDGET)
            .rpc_timeout(rpc_timeout)
            // Each stream's 768 KiB must fit its flow-control window whether or not the node
            // reads it (a loopback-bound node's default window is 256 KiB): what bounds the
            // node here is the budget, not flow control.
            .tuning(quicraft::QuicTuning::default().stream_receive_window(1_250_000))
    })
    .await;
    let flood_started = tokio::time::Instant::now();
    let partial = partial_frame(REQUEST_VOTE, MAX, SENT);
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        streams.push(s.send(&partial, false).await);
    }
    let full = common::stats_until(GUARD, &s.server, "the budget filling up", |stats| {
        stats.frame_bytes_buffered == BUDGET && stats.request_streams == STREAMS
    })
    .await;
    assert_eq!(full.frame_bytes_buffered_high_water, BUDGET, "{full:?}");

    // Another peer (another connection, another budget) is served meanwhile.
    let heartbeat = AppendEntriesRequest::heartbeat(RpcHeader::new(PEER, s.peer.local_addr()), 7);
    let heartbeat_len = postcard::to_stdvec(&heartbeat).unwrap().len();
    let response = guarded(
        "a heartbeat from another peer",
        s.peer.append_entries(
            &ServerId::from(SERVER),
            &ServerAddress::from(s.server_addr()),
            heartbeat,
        ),
    )
    .await
    .unwrap();
    assert!(response.success);
    assert!(
        flood_started.elapsed() < rpc_timeout,
        "the heartbeat was answered only after the partial requests could have been refused"
    );
    match s.delivered.try_recv() {
        Ok(Command::AppendEntries(request)) if request.is_heartbeat() => {}
        other => panic!("the consumer should have seen the heartbeat, saw {other:?}"),
    }

    // Every partial request is refused once its deadline passes.
    let (mut bad, mut unavailable) = (0, 0);
    for (send, recv) in streams {
        match guarded("a partial request's answer", answer_on(&send, recv)).await {
            Answer::Frame { kind: ERROR, body } => {
                let error: RemoteError = postcard::from_bytes(&body).unwrap();
                match error.code {
                    ErrorCode::BAD_REQUEST => bad += 1,
                    ErrorCode::UNAVAILABLE => unavailable += 1,
                    _ => panic!("a partial request was refused with {error}"),
                }
            }
            other => panic!("a partial request got {other:?}"),
        }
    }
    eprintln!("partial requests: {bad} refused as bad input, {unavailable} as unavailable");
    assert!(
        bad >= BUDGET / MAX,
        "the admitted partial requests are bad input"
    );
    let after = common::stats_until(
        GUARD,
        &s.server,
        "the held bytes going back to zero",
        |stats| stats.frame_bytes_buffered == 0 && stats.request_streams == 0,
    )
    .await;
    // The raw connection never held more than its budget; the only other frame was the
    // heartbeat, on its own connection, counted at its decoded size once decoded (the value
    // and its strings: a few hundred bytes).
    assert!(
        after.frame_bytes_buffered_high_water <= BUDGET + heartbeat_len.max(HEARTBEAT_DECODED),
        "{after:?}"
    );
    s.assert_nothing_delivered("partial requests");
    s.assert_still_serving("partial requests").await;
    assert_eq!(s.server.stats().frame_bytes_buffered, 0);
}

/// A request whose connection's budget stays spent is not bad input: a pipeline's append
/// holds the whole budget (1 MiB declared, 1 KiB sent: a pipeline has no deadline between
/// or within its frames), and a whole RequestVote behind it on another stream of the same
/// connection is answered `UNAVAILABLE` once the RPC timeout passes. When the pipeline is
/// reset, the budget comes back and the connection is served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waiting_for_the_connection_budget_is_answered_unavailable() {
    const MAX: usize = 1 << 20;
    let rpc_timeout = Duration::from_secs(1);
    let mut s = Setup::with(|config| {
        config
            .max_message_size(MAX)
            .max_buffered_bytes_per_peer(MAX)
            .rpc_timeout(rpc_timeout)
    })
    .await;
    let mut pipeline = frame(PIPELINE_OPEN, &[]);
    pipeline.extend_from_slice(&partial_frame(APPEND_ENTRIES, MAX, 1024));
    let (mut held, _held_recv) = s.send(&pipeline, false).await;
    common::stats_until(
        GUARD,
        &s.server,
        "the pipeline holding the budget",
        |stats| stats.frame_bytes_buffered == MAX,
    )
    .await;

    let started = tokio::time::Instant::now();
    match s.exchange(&frame(REQUEST_VOTE, &vote_body(RAW, 1))).await {
        Answer::Frame { kind: ERROR, body } => {
            let error: RemoteError = postcard::from_bytes(&body).unwrap();
            assert_eq!(error.code, ErrorCode::UNAVAILABLE, "{error}");
        }
        other => panic!("a request waiting for the budget got {other:?}"),
    }
    assert!(started.elapsed() >= rpc_timeout);
    s.assert_nothing_delivered("a request waiting for the budget");

    held.reset(VarInt::from_u32(0)).unwrap();
    common::stats_until(
        GUARD,
        &s.server,
        "the pipeline's budget coming back",
        |stats| stats.frame_bytes_buffered == 0 && stats.request_streams == 0,
    )
    .await;
    s.assert_still_serving("after the budget came back").await;
}

/// A budget that could not hold one frame of `max_message_size` is a configuration error.
#[tokio::test]
async fn a_budget_smaller_than_the_frame_limit_is_refused_at_bind() {
    let fixture = Fixture::new("prod");
    let config = fixture
        .config(SERVER)
        .max_message_size(1 << 20)
        .max_buffered_bytes_per_peer((1 << 20) - 1);
    match QuicTransport::bind(config).await {
        Err(quicraft::Error::Config(quicraft::ConfigError::Invalid(why))) => {
            assert!(why.contains("max_buffered_bytes_per_peer"), "{why}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}
