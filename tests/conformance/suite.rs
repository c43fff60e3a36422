//! The conformance suite: test bodies written once, run against every [`Transport`].
//!
//! An implementation provides a [`Harness`] and instantiates every test with
//! `conformance_suite!(harness_expression)` inside a module named after it.

use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, AppendPipeline, Command, DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_MAX_MESSAGE_SIZE, Error, ErrorCode, Incoming, InstallSnapshotRequest,
    InstallSnapshotResponse, Limit, Log, MAX_ENTRIES_PER_APPEND, RemoteError,
    RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse,
    Response, Rpc, RpcHeader, RpcKind, ServerAddress, ServerAddressProvider, ServerId,
    TimeoutNowRequest, TimeoutNowResponse, Transport,
};
use tokio::io::AsyncReadExt;

/// Generous bound on any single wait, so a broken implementation fails instead of hanging.
pub const GUARD: Duration = Duration::from_secs(20);

/// What a test may ask of a new node.
#[derive(Clone, Default)]
pub struct NodeOptions {
    /// Pipeline limit (0 = the implementation's default).
    pub max_in_flight: usize,
    /// Address provider consulted on every dial.
    pub address_provider: Option<Arc<dyn ServerAddressProvider>>,
    /// The RPC timeout (over QUIC also the connect timeout: the two are equal, the case where
    /// a dial and an RPC deadline could race); `None` for the harness's default.
    pub timeout: Option<Duration>,
    /// RPCs the consumer queue holds; `None` for the default.
    pub consumer_capacity: Option<usize>,
    /// The maximum message size; `None` for the default.
    pub max_message_size: Option<usize>,
}

/// A node under test.
pub struct TestNode<T> {
    pub transport: T,
    pub incoming: Incoming,
    pub id: ServerId,
    pub addr: ServerAddress,
}

impl<T: Transport + Clone> TestNode<T> {
    pub fn header(&self) -> RpcHeader {
        RpcHeader::new(self.id.clone(), self.addr.clone())
    }

    /// A pipeline to `to`, opened within the guard.
    pub async fn pipeline_to(&self, to: &TestNode<T>) -> AppendPipeline {
        guarded(
            "pipeline",
            self.transport.append_entries_pipeline(&to.id, &to.addr),
        )
        .await
        .unwrap()
    }

    /// The append at `seq` to `to`, called from a task of its own.
    pub fn spawn_append(
        &self,
        to: &TestNode<T>,
        seq: u64,
    ) -> tokio::task::JoinHandle<Result<AppendEntriesResponse, Error>> {
        let (t, id, addr, header) = (
            self.transport.clone(),
            to.id.clone(),
            to.addr.clone(),
            self.header(),
        );
        tokio::spawn(async move {
            t.append_entries(&id, &addr, append_request(&header, seq))
                .await
        })
    }
}

/// Makes nodes of one implementation.
pub trait Harness: Send + Sync + 'static {
    type T: Transport + Clone;

    /// A new, started node.
    fn node(&self, options: NodeOptions) -> impl Future<Output = TestNode<Self::T>> + Send;

    /// Lets `from` reach `to` (a no-op where any node can dial any other).
    fn link(&self, from: &TestNode<Self::T>, to: &TestNode<Self::T>);

    /// The id and address of a peer that does not exist.
    fn absent_peer(&self) -> impl Future<Output = (ServerId, ServerAddress)> + Send;

    /// Breaks what carries calls from `sender` (its transport and id) to `receiver` (its
    /// transport and address), as a failing network path would, and lets them reach each
    /// other again afterwards: over QUIC the receiver drops the connection, in memory the
    /// sender's link is cut and made again.
    fn break_connection(&self, sender: (&Self::T, &ServerId), receiver: (&Self::T, &ServerAddress));
}

/// Two linked nodes: `a` sends, `b` answers.
pub async fn pair<H: Harness>(h: &H, a: NodeOptions) -> (TestNode<H::T>, TestNode<H::T>) {
    let a = h.node(a).await;
    let b = h.node(NodeOptions::default()).await;
    h.link(&a, &b);
    h.link(&b, &a);
    (a, b)
}

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    crate::common::within(GUARD, what, fut).await
}

/// Polls `fut` once and reports whether it is still waiting.
async fn is_pending<F: Future + Unpin>(fut: &mut F) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx).is_pending())).await
}
use std::pin::Pin;

/// Sends `request` with `call` while `incoming`, the target's consumer, checks that it
/// receives `request` and answers `response`; the caller must get `response`.
async fn round_trip<Req, Resp, F>(
    what: &str,
    incoming: &mut Incoming,
    request: Req,
    response: Resp,
    call: impl FnOnce(Req) -> F,
) where
    Req: Clone + Into<Command>,
    Resp: Clone + Into<Response> + PartialEq + std::fmt::Debug,
    F: Future<Output = Result<Resp, Error>>,
{
    let server = answer_one(incoming, request.clone().into(), response.clone().into());
    let (got, ()) = guarded(what, async { tokio::join!(call(request), server) }).await;
    assert_eq!(got.unwrap(), response);
}

/// Answers one RPC: checks it equals `expected`, responds with `response`.
async fn answer_one(incoming: &mut Incoming, expected: Command, response: Response) {
    let rpc = guarded("receiving the RPC", incoming.recv())
        .await
        .expect("consumer ended");
    assert_eq!(rpc.command(), &expected);
    rpc.respond(Ok(response));
}

fn entries(n: u64, size: usize) -> Vec<Log> {
    (1..=n)
        .map(|i| Log::command(i, 3, Bytes::from(vec![i as u8; size])))
        .collect()
}

fn append_request(from: &RpcHeader, seq: u64) -> AppendEntriesRequest {
    AppendEntriesRequest {
        header: from.clone(),
        term: 3,
        prev_log_entry: seq,
        prev_log_term: 3,
        entries: entries(2, 16),
        leader_commit_index: seq,
    }
}

fn append_response(from: &RpcHeader, last_log: u64) -> AppendEntriesResponse {
    AppendEntriesResponse {
        header: from.clone(),
        term: 3,
        last_log,
        success: true,
        no_retry_backoff: false,
    }
}

/// Answers every AppendEntries with `last_log = prev_log_entry`, checking they arrive in
/// order, until the consumer ends.
fn spawn_append_echo(incoming: Incoming, header: RpcHeader) -> tokio::task::JoinHandle<u64> {
    spawn_append_echo_from(incoming, header, 0)
}

/// [`spawn_append_echo`] for appends whose `prev_log_entry` starts at `first`.
fn spawn_append_echo_from(
    mut incoming: Incoming,
    header: RpcHeader,
    first: u64,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut next = first;
        while let Some(rpc) = incoming.recv().await {
            let Command::AppendEntries(req) = rpc.command() else {
                panic!("not an append")
            };
            assert_eq!(
                req.prev_log_entry, next,
                "appends reached the follower out of order"
            );
            next += 1;
            let last = req.prev_log_entry;
            rpc.respond(Ok(append_response(&header, last).into()));
        }
        next
    })
}

fn snapshot_request(from: &RpcHeader, size: u64) -> InstallSnapshotRequest {
    InstallSnapshotRequest {
        header: from.clone(),
        snapshot_version: 1,
        term: 7,
        last_log_index: 100,
        last_log_term: 6,
        configuration: Bytes::from_static(b"n1,n2,n3"),
        configuration_index: 90,
        size,
    }
}

fn snapshot_bytes(size: usize) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(31) % 251) as u8)
        .collect()
}

// ---------------------------------------------------------------------------------------------

pub async fn start_stop<H: Harness>(h: &H) {
    let mut node = h.node(NodeOptions::default()).await;
    assert!(!node.transport.local_addr().is_empty());
    assert_eq!(node.transport.local_addr(), node.addr);
    guarded("close", node.transport.close()).await;
    guarded("second close", node.transport.close()).await;
    assert!(
        guarded("consumer end", node.incoming.recv())
            .await
            .is_none()
    );
}

pub async fn append_entries_round_trip<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let request = append_request(&a.header(), 10);
    let response = append_response(&b.header(), 12);
    round_trip(
        "append_entries",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.append_entries(&b.id, &b.addr, request),
    )
    .await;
}

pub async fn request_vote_round_trip<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let request = RequestVoteRequest {
        header: a.header(),
        term: 20,
        last_log_index: 100,
        last_log_term: 19,
        leadership_transfer: true,
    };
    let response = RequestVoteResponse {
        header: b.header(),
        term: 20,
        granted: true,
    };
    round_trip(
        "request_vote",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.request_vote(&b.id, &b.addr, request),
    )
    .await;
}

pub async fn request_pre_vote_round_trip<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let request = RequestPreVoteRequest {
        header: a.header(),
        term: 20,
        last_log_index: 100,
        last_log_term: 19,
    };
    let response = RequestPreVoteResponse {
        header: b.header(),
        term: 20,
        granted: false,
    };
    round_trip(
        "request_pre_vote",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.request_pre_vote(&b.id, &b.addr, request),
    )
    .await;
}

pub async fn timeout_now_round_trip<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let request = TimeoutNowRequest { header: a.header() };
    let response = TimeoutNowResponse { header: b.header() };
    round_trip(
        "timeout_now",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.timeout_now(&b.id, &b.addr, request),
    )
    .await;
}

pub async fn heartbeat_fast_path<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let header = b.header();
    let handler_seen = seen.clone();
    b.transport
        .set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
            handler_seen.lock().unwrap().push(rpc.command().clone());
            rpc.respond(Ok(append_response(&header, 4242).into()));
        })));
    let heartbeat = AppendEntriesRequest::heartbeat(a.header(), 9);
    assert!(heartbeat.is_heartbeat());
    let got = guarded(
        "heartbeat",
        a.transport
            .append_entries(&b.id, &b.addr, heartbeat.clone()),
    )
    .await
    .unwrap();
    assert_eq!(got.last_log, 4242, "the heartbeat handler did not answer");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        &[Command::AppendEntries(heartbeat.clone())]
    );
    assert!(
        b.incoming.try_recv().is_none(),
        "the consumer saw a heartbeat"
    );

    // A non-heartbeat append still goes to the consumer.
    let request = append_request(&a.header(), 1);
    let response = append_response(&b.header(), 1);
    round_trip("append", &mut b.incoming, request, response, |request| {
        a.transport.append_entries(&b.id, &b.addr, request)
    })
    .await;

    // Without a handler, heartbeats reach the consumer.
    b.transport.set_heartbeat_handler(None);
    let response = append_response(&b.header(), 7);
    round_trip(
        "heartbeat to consumer",
        &mut b.incoming,
        heartbeat,
        response,
        |request| a.transport.append_entries(&b.id, &b.addr, request),
    )
    .await;
    assert_eq!(seen.lock().unwrap().len(), 1);
}

pub async fn install_snapshot_round_trip<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let data = snapshot_bytes(3 * 1024 * 1024 + 17);
    let request = snapshot_request(&a.header(), data.len() as u64);
    let response = InstallSnapshotResponse {
        header: b.header(),
        term: 7,
        success: true,
    };
    let expected_request = request.clone();
    let expected_data = data.clone();
    let answer = response.clone();
    let (b_id, b_addr) = (b.id.clone(), b.addr.clone());
    let server = async move {
        let mut rpc = guarded("snapshot RPC", b.incoming.recv())
            .await
            .expect("consumer ended");
        assert_eq!(rpc.command(), &Command::InstallSnapshot(expected_request));
        let mut reader = rpc
            .take_snapshot()
            .expect("an InstallSnapshot has a reader");
        assert_eq!(reader.declared_size(), expected_data.len() as u64);
        let mut got = Vec::new();
        reader
            .read_to_end(&mut got)
            .await
            .expect("reading the snapshot");
        assert!(got == expected_data, "snapshot bytes differ");
        rpc.respond(Ok(answer.into()));
        b
    };
    let client = a
        .transport
        .install_snapshot(&b_id, &b_addr, request, std::io::Cursor::new(data));
    let (got, _b) = guarded("install_snapshot", async { tokio::join!(client, server) }).await;
    assert_eq!(got.unwrap(), response);
}

/// A resumable snapshot whose connection breaks mid-transfer completes: the sender
/// reconnects and continues where the receiver's reader stopped, the consumer reads every
/// byte once and in order, and the sender gets the answer. A plain snapshot broken in the same
/// place fails on both sides.
pub async fn resumable_snapshot_survives_a_broken_connection<H: Harness>(h: &H) {
    for resumable in [true, false] {
        let (a, mut b) = pair(h, NodeOptions::default()).await;
        let data = snapshot_bytes(3 * 1024 * 1024 + 17);
        let request = snapshot_request(&a.header(), data.len() as u64);
        let response = InstallSnapshotResponse {
            header: b.header(),
            term: 7,
            success: true,
        };
        let (a_t, b_t, b_id, b_addr) = (
            a.transport.clone(),
            b.transport.clone(),
            b.id.clone(),
            b.addr.clone(),
        );
        let source = std::io::Cursor::new(data.clone());
        let client = tokio::spawn(async move {
            if resumable {
                a_t.install_snapshot_resumable(&b_id, &b_addr, request, source)
                    .await
            } else {
                a_t.install_snapshot(&b_id, &b_addr, request, source).await
            }
        });
        let mut rpc = guarded("snapshot RPC", b.incoming.recv())
            .await
            .expect("consumer ended");
        let mut reader = rpc.take_snapshot().expect("a reader");
        let mut got = vec![0u8; 1024 * 1024];
        guarded("the first MiB", reader.read_exact(&mut got))
            .await
            .expect("reading the first MiB");
        h.break_connection((&a.transport, &a.id), (&b_t, &b.addr));
        let rest = guarded("the rest", reader.read_to_end(&mut got)).await;
        if resumable {
            rest.expect("the resumed snapshot reads to its end");
            assert!(got == data, "snapshot bytes differ");
            rpc.respond(Ok(response.clone().into()));
            let answer = guarded("install_snapshot_resumable", client).await.unwrap();
            assert_eq!(answer.unwrap(), response);
        } else {
            assert!(rest.is_err(), "a plain snapshot's reader fails");
            drop(rpc);
            let answer = guarded("install_snapshot", client).await.unwrap();
            assert!(
                matches!(answer, Err(Error::ConnectionLost { .. })),
                "{answer:?}"
            );
        }
    }
}

pub async fn snapshot_reader_dropped_half_read<H: Harness>(h: &H) {
    let (a, b) = pair(h, NodeOptions::default()).await;
    let size = 4 * 1024 * 1024;
    let request = snapshot_request(&a.header(), size as u64);
    let header = b.header();
    let TestNode {
        mut incoming,
        id: b_id,
        addr: b_addr,
        ..
    } = b;
    let server = tokio::spawn(async move {
        let mut rpc = incoming.recv().await.expect("consumer ended");
        let mut reader = rpc.take_snapshot().expect("reader");
        let mut half = vec![0u8; size / 2];
        reader.read_exact(&mut half).await.expect("reading half");
        drop(reader);
        let response = InstallSnapshotResponse {
            header: header.clone(),
            term: 7,
            success: false,
        };
        rpc.respond(Ok(response.into()));
        // Later RPCs still work.
        let rpc = incoming.recv().await.expect("consumer ended");
        let Command::AppendEntries(req) = rpc.command() else {
            panic!("not an append")
        };
        let last = req.prev_log_entry;
        rpc.respond(Ok(append_response(&header, last).into()));
        incoming
    });
    let got = guarded(
        "install_snapshot",
        a.transport.install_snapshot(
            &b_id,
            &b_addr,
            request,
            std::io::Cursor::new(snapshot_bytes(size)),
        ),
    )
    .await;
    assert!(!got.expect("the receiver's answer").success);
    let got = guarded(
        "append after",
        a.transport
            .append_entries(&b_id, &b_addr, append_request(&a.header(), 5)),
    )
    .await
    .unwrap();
    assert_eq!(got.last_log, 5);
    guarded("server", server).await.unwrap();
}

/// A snapshot whose source ends after `given` of its `declared` bytes: the sender fails with
/// `SnapshotSizeMismatch`, and the receiver's reader fails (`UnexpectedEof`, never a short
/// snapshot taken as complete) within about a round trip of that, not after the RPC timeout.
async fn snapshot_source_ends_early<H: Harness>(h: &H, declared: u64, given: u64) {
    let timeout = Duration::from_secs(5);
    let options = NodeOptions {
        timeout: Some(timeout),
        ..NodeOptions::default()
    };
    let a = h.node(options.clone()).await;
    let b = h.node(options).await;
    h.link(&a, &b);
    let TestNode {
        mut incoming,
        id: b_id,
        addr: b_addr,
        ..
    } = b;
    let request = snapshot_request(&a.header(), declared);
    let server = tokio::spawn(async move {
        let mut rpc = incoming.recv().await.expect("consumer ended");
        let mut reader = rpc.take_snapshot().expect("reader");
        let mut got = Vec::new();
        let read = reader.read_to_end(&mut got).await;
        (
            read.map(|_| got.len()),
            tokio::time::Instant::now(),
            incoming,
        )
    });
    let short = snapshot_bytes(given as usize);
    let got = guarded(
        "install_snapshot",
        a.transport
            .install_snapshot(&b_id, &b_addr, request, std::io::Cursor::new(short)),
    )
    .await;
    let sender_failed = tokio::time::Instant::now();
    match got {
        Err(Error::SnapshotSizeMismatch {
            declared: d,
            actual,
        }) => {
            assert_eq!(d, declared);
            assert_eq!(actual, given);
        }
        other => panic!("expected a size mismatch, got {other:?}"),
    }
    let (read, reader_failed, _incoming) = guarded("server", server).await.unwrap();
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "{e}"),
        Ok(n) => panic!("the receiver took a short snapshot of {n} bytes as complete"),
    }
    let late = reader_failed.saturating_duration_since(sender_failed);
    assert!(
        late < Duration::from_secs(1),
        "the reader learned of the short source {late:?} after the sender (RPC timeout {timeout:?})"
    );
}

pub async fn snapshot_short_source_fails_both_sides<H: Harness>(h: &H) {
    snapshot_source_ends_early(h, 1024 * 1024, 512 * 1024).await;
}

pub async fn snapshot_source_ends_early_small<H: Harness>(h: &H) {
    snapshot_source_ends_early(h, 100, 50).await;
}

pub async fn snapshot_source_ends_early_large<H: Harness>(h: &H) {
    snapshot_source_ends_early(h, 16 * 1024 * 1024, 1024 * 1024).await;
}

async fn run_pipeline<H: Harness>(h: &H, n: u64) {
    let (a, b) = pair(h, NodeOptions::default()).await;
    let header = b.header();
    let echo = spawn_append_echo(b.incoming, header);
    let pipeline = a
        .transport
        .append_entries_pipeline(&b.id, &b.addr)
        .await
        .unwrap();
    let header = a.header();
    let sender = async {
        for seq in 0..n {
            assert_eq!(
                pipeline.send(append_request(&header, seq)).await.unwrap(),
                seq
            );
        }
    };
    let receiver = async {
        for seq in 0..n {
            let done = pipeline.next().await.expect("pipeline ended early");
            assert_eq!(done.seq, seq);
            assert_eq!(done.request.prev_log_entry, seq);
            assert_eq!(
                done.response.unwrap().last_log,
                seq,
                "responses out of order"
            );
        }
    };
    guarded("pipeline", async { tokio::join!(sender, receiver) }).await;
    assert_eq!(pipeline.in_flight(), 0);
    pipeline.close();
    a.transport.close().await;
    b.transport.close().await;
    assert_eq!(guarded("echo", echo).await.unwrap(), n);
}

pub async fn pipeline_10_in_order<H: Harness>(h: &H) {
    run_pipeline(h, 10).await;
}

pub async fn pipeline_100_in_order<H: Harness>(h: &H) {
    run_pipeline(h, 100).await;
}

async fn pipeline_max_in_flight<H: Harness>(h: &H, max: usize) {
    let (a, mut b) = pair(
        h,
        NodeOptions {
            max_in_flight: max,
            ..NodeOptions::default()
        },
    )
    .await;
    let pipeline = a.transport.append_entries_pipeline(&b.id, &b.addr).await;
    if max == 1 {
        assert!(
            matches!(pipeline, Err(Error::PipelineNotSupported)),
            "{pipeline:?}"
        );
        return;
    }
    let pipeline = pipeline.unwrap();
    let expected = if max == 0 { DEFAULT_MAX_IN_FLIGHT } else { max };
    assert_eq!(pipeline.max_in_flight(), expected);
    let header = a.header();
    for seq in 0..expected as u64 {
        guarded(
            "send under the limit",
            pipeline.send(append_request(&header, seq)),
        )
        .await
        .unwrap();
    }
    assert_eq!(pipeline.in_flight(), expected);
    let mut blocked = pin!(pipeline.send(append_request(&header, expected as u64)));
    assert!(
        is_pending(&mut blocked).await,
        "send did not wait at the limit of {expected}"
    );

    // Answer the first request and take its completion: that makes room for one more.
    let rpc = guarded("first RPC", b.incoming.recv()).await.unwrap();
    rpc.respond(Ok(append_response(&b.header(), 0).into()));
    let done = guarded("first completion", pipeline.next()).await.unwrap();
    assert_eq!(done.seq, 0);
    assert!(done.response.is_ok());
    assert_eq!(
        guarded("unblocked send", blocked).await.unwrap(),
        expected as u64
    );
}

pub async fn pipeline_max_in_flight_0<H: Harness>(h: &H) {
    pipeline_max_in_flight(h, 0).await;
}

pub async fn pipeline_max_in_flight_1<H: Harness>(h: &H) {
    pipeline_max_in_flight(h, 1).await;
}

pub async fn pipeline_max_in_flight_2<H: Harness>(h: &H) {
    pipeline_max_in_flight(h, 2).await;
}

pub async fn pipeline_max_in_flight_10<H: Harness>(h: &H) {
    pipeline_max_in_flight(h, 10).await;
}

pub async fn pipeline_fails_outstanding_when_peer_goes_away<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let pipeline = a.pipeline_to(&b).await;
    for seq in 0..5 {
        pipeline
            .send(append_request(&a.header(), seq))
            .await
            .unwrap();
    }
    // The follower takes the requests but dies before answering any.
    for _ in 0..5 {
        let _held = guarded("RPC", b.incoming.recv()).await.unwrap();
    }
    guarded("peer close", b.transport.close()).await;
    for seq in 0..5 {
        let done = guarded("completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        assert!(
            done.response.is_err(),
            "request {seq} succeeded after the peer went away"
        );
    }
}

pub async fn pipeline_close_fails_outstanding<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let pipeline = a.pipeline_to(&b).await;
    for seq in 0..3 {
        pipeline
            .send(append_request(&a.header(), seq))
            .await
            .unwrap();
    }
    let _held = guarded("RPC", b.incoming.recv()).await.unwrap();
    pipeline.close();
    for seq in 0..3 {
        let done = guarded("completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        assert!(
            matches!(done.response, Err(Error::PipelineClosed)),
            "{:?}",
            done.response
        );
    }
    assert!(guarded("end", pipeline.next()).await.is_none());
    assert!(matches!(
        pipeline.send(append_request(&a.header(), 9)).await,
        Err(Error::PipelineClosed)
    ));
}

pub async fn encode_decode_peer<H: Harness>(h: &H) {
    let node = h.node(NodeOptions::default()).await;
    let id = ServerId::from("n9");
    let addr = ServerAddress::from("127.0.0.1:7009");
    let encoded = node.transport.encode_peer(&id, &addr);
    assert_eq!(node.transport.decode_peer(&encoded).unwrap(), addr);
    assert!(node.transport.decode_peer(&[0xff, 0xfe]).is_err());
}

pub async fn encode_decode_peer_with_address_provider<H: Harness>(h: &H) {
    let b = h.node(NodeOptions::default()).await;
    let (b_id, b_addr) = (b.id.clone(), b.addr.clone());
    let provider = move |id: &ServerId| (id == &b_id).then(|| b_addr.clone());
    let options = NodeOptions {
        address_provider: Some(Arc::new(provider)),
        ..NodeOptions::default()
    };
    let mut b = b;
    let a = h.node(options).await;
    h.link(&a, &b);
    let stale = ServerAddress::from("127.0.0.1:9");
    let encoded = a.transport.encode_peer(&b.id, &stale);
    assert_eq!(
        a.transport.decode_peer(&encoded).unwrap(),
        b.addr,
        "the provider's address wins"
    );
    let other = ServerId::from("not-provided");
    let encoded = a.transport.encode_peer(&other, &stale);
    assert_eq!(
        a.transport.decode_peer(&encoded).unwrap(),
        stale,
        "falls back to the given address"
    );

    // Calls are dialled at the provider's address, not the stale one given.
    let request = TimeoutNowRequest { header: a.header() };
    let response = TimeoutNowResponse { header: b.header() };
    round_trip(
        "timeout_now via provider",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.timeout_now(&b.id, &stale, request),
    )
    .await;
}

pub async fn remote_error_is_typed<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let server = async {
        let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
        rpc.respond(Err(RemoteError::handler("log is compacted past 10")));
        // An RPC dropped unanswered is a remote error too.
        drop(guarded("RPC", b.incoming.recv()).await.unwrap());
    };
    let client = async {
        let first = a
            .transport
            .append_entries(&b.id, &b.addr, append_request(&a.header(), 1))
            .await;
        let second = a
            .transport
            .append_entries(&b.id, &b.addr, append_request(&a.header(), 2))
            .await;
        (first, second)
    };
    let ((first, second), ()) = guarded("calls", async { tokio::join!(client, server) }).await;
    match first {
        Err(Error::Remote(RemoteError { code, message, .. })) => {
            assert_eq!(code, ErrorCode::HANDLER);
            assert_eq!(message, "log is compacted past 10");
        }
        other => panic!("expected a remote error, got {other:?}"),
    }
    match second {
        Err(Error::Remote(e)) => assert_eq!(e.code, ErrorCode::NO_RESPONSE),
        other => panic!("expected a no-response error, got {other:?}"),
    }
}

pub async fn wrong_response_kind_is_an_error<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let header = b.header();
    let server = async {
        let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
        rpc.respond(Ok(TimeoutNowResponse { header }.into()));
    };
    let client = a
        .transport
        .append_entries(&b.id, &b.addr, append_request(&a.header(), 1));
    let (got, ()) = guarded("call", async { tokio::join!(client, server) }).await;
    assert!(
        matches!(got, Err(Error::Remote(ref e)) if e.code == ErrorCode::WRONG_RESPONSE),
        "{got:?}"
    );
}

pub async fn calls_after_close_fail_with_shutdown<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    // One call is under way when the transport closes.
    let in_flight = {
        let transport = a.transport.clone();
        let (id, addr, header) = (b.id.clone(), b.addr.clone(), a.header());
        tokio::spawn(async move {
            transport
                .append_entries(&id, &addr, append_request(&header, 1))
                .await
        })
    };
    let _held = guarded("RPC", b.incoming.recv()).await.unwrap();
    guarded("close", a.transport.close()).await;
    let got = guarded("in-flight call", in_flight).await.unwrap();
    assert!(
        matches!(got, Err(Error::Shutdown)),
        "in-flight call: {got:?}"
    );

    let got = a
        .transport
        .append_entries(&b.id, &b.addr, append_request(&a.header(), 2))
        .await;
    assert!(
        matches!(got, Err(Error::Shutdown)),
        "append_entries: {got:?}"
    );
    let got = a
        .transport
        .timeout_now(&b.id, &b.addr, TimeoutNowRequest { header: a.header() })
        .await;
    assert!(matches!(got, Err(Error::Shutdown)), "timeout_now: {got:?}");
    let got = a.transport.append_entries_pipeline(&b.id, &b.addr).await;
    assert!(matches!(got, Err(Error::Shutdown)), "pipeline: {got:?}");
    let got = a
        .transport
        .install_snapshot(
            &b.id,
            &b.addr,
            snapshot_request(&a.header(), 3),
            std::io::Cursor::new(vec![1u8; 3]),
        )
        .await;
    assert!(
        matches!(got, Err(Error::Shutdown)),
        "install_snapshot: {got:?}"
    );
}

pub async fn absent_peer_is_unreachable<H: Harness>(h: &H) {
    let a = h.node(NodeOptions::default()).await;
    let (id, addr) = h.absent_peer().await;
    let got = guarded(
        "call",
        a.transport
            .timeout_now(&id, &addr, TimeoutNowRequest { header: a.header() }),
    )
    .await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
}

/// Nodes whose RPC timeout (and, over QUIC, connect timeout) is `timeout`.
fn timed(timeout: Duration) -> NodeOptions {
    NodeOptions {
        timeout: Some(timeout),
        ..NodeOptions::default()
    }
}

/// A dial that never completes is `Unreachable`, for every kind of call, even with the
/// connect timeout equal to the RPC timeout (the dial's deadline and the call's then fall
/// together): never `Timeout`, which would tell the engine the peer was reached.
pub async fn dial_that_never_completes_is_unreachable<H: Harness>(h: &H) {
    let a = h.node(timed(Duration::from_millis(400))).await;
    let mut peers = Vec::new();
    for _ in 0..5 {
        peers.push(h.absent_peer().await);
    }
    let header = a.header();
    let t = &a.transport;
    let (vote, pre_vote, append, snapshot, pipeline) = guarded("calls", async {
        tokio::join!(
            t.request_vote(
                &peers[0].0,
                &peers[0].1,
                RequestVoteRequest {
                    header: header.clone(),
                    term: 1,
                    last_log_index: 0,
                    last_log_term: 0,
                    leadership_transfer: false,
                },
            ),
            t.request_pre_vote(
                &peers[1].0,
                &peers[1].1,
                RequestPreVoteRequest {
                    header: header.clone(),
                    term: 1,
                    last_log_index: 0,
                    last_log_term: 0,
                },
            ),
            t.append_entries(&peers[2].0, &peers[2].1, append_request(&header, 1)),
            t.install_snapshot(
                &peers[3].0,
                &peers[3].1,
                snapshot_request(&header, 3),
                std::io::Cursor::new(vec![1u8; 3]),
            ),
            t.append_entries_pipeline(&peers[4].0, &peers[4].1),
        )
    })
    .await;
    assert!(
        matches!(vote, Err(Error::Unreachable { .. })),
        "vote: {vote:?}"
    );
    assert!(
        matches!(pre_vote, Err(Error::Unreachable { .. })),
        "pre-vote: {pre_vote:?}"
    );
    assert!(
        matches!(append, Err(Error::Unreachable { .. })),
        "append: {append:?}"
    );
    assert!(
        matches!(snapshot, Err(Error::Unreachable { .. })),
        "snapshot: {snapshot:?}"
    );
    assert!(
        matches!(pipeline, Err(Error::Unreachable { .. })),
        "pipeline: {:?}",
        pipeline.err()
    );
}

/// A consumer that never reads: every call to it fails with `Timeout` at the caller's
/// deadline, both the one queued for the consumer and those waiting for room in its queue
/// (the receiver waits for its consumer longer than a caller with the same timeout waits for
/// the answer, so no `Remote(UNAVAILABLE)` races the deadline).
pub async fn consumer_that_never_reads_gives_timeout<H: Harness>(h: &H) {
    let timeout = Duration::from_millis(600);
    let a = h.node(timed(timeout)).await;
    let b = h
        .node(NodeOptions {
            consumer_capacity: Some(1),
            ..timed(timeout)
        })
        .await;
    h.link(&a, &b);
    let calls = (0..4).map(|seq| a.spawn_append(&b, seq));
    let calls: Vec<_> = calls.collect();
    for call in calls {
        let got = guarded("call", call).await.unwrap();
        assert!(
            matches!(
                got,
                Err(Error::Timeout {
                    rpc: RpcKind::AppendEntries,
                    ..
                })
            ),
            "{got:?}"
        );
    }
    drop(b);
}

fn limit_exceeded(got: &Result<impl std::fmt::Debug, Error>, which: Limit, max: u64) -> u64 {
    match got {
        Err(Error::LimitExceeded {
            limit,
            max: m,
            actual,
            ..
        }) if *limit == which && *m == max => *actual,
        other => panic!("expected {which:?} of {max} exceeded, got {other:?}"),
    }
}

/// The same limits on every transport, refused before anything is sent (not even a dial: the
/// peer is absent) with one typed error naming the limit and the request's figure:
/// `MAX_ENTRIES_PER_APPEND` entries per AppendEntries, and the message size (default 16 MiB).
pub async fn limits_are_enforced_before_sending<H: Harness>(h: &H) {
    let a = h.node(NodeOptions::default()).await;
    let (id, addr) = h.absent_peer().await;
    let header = a.header();
    let too_many = AppendEntriesRequest {
        entries: (1..=MAX_ENTRIES_PER_APPEND as u64 + 1)
            .map(|i| Log::command(i, 3, Bytes::new()))
            .collect(),
        ..append_request(&header, 1)
    };
    let got = guarded(
        "too many entries",
        a.transport.append_entries(&id, &addr, too_many.clone()),
    )
    .await;
    let actual = limit_exceeded(&got, Limit::EntriesPerAppend, MAX_ENTRIES_PER_APPEND as u64);
    assert_eq!(actual, MAX_ENTRIES_PER_APPEND as u64 + 1);

    let default_max = DEFAULT_MAX_MESSAGE_SIZE as u64;
    let too_large = AppendEntriesRequest {
        entries: vec![Log::command(
            1,
            3,
            Bytes::from(vec![7u8; DEFAULT_MAX_MESSAGE_SIZE]),
        )],
        ..append_request(&header, 1)
    };
    let got = guarded(
        "oversize append",
        a.transport.append_entries(&id, &addr, too_large),
    )
    .await;
    assert!(limit_exceeded(&got, Limit::MessageSize, default_max) > default_max);

    // A configured limit, on every kind of request, and on a pipeline.
    let max = 64 * 1024;
    let a = h
        .node(NodeOptions {
            max_message_size: Some(max),
            ..NodeOptions::default()
        })
        .await;
    let header = a.header();
    let big = Bytes::from(vec![7u8; max]);
    let got = guarded(
        "oversize vote",
        a.transport.request_vote(
            &id,
            &addr,
            RequestVoteRequest {
                header: RpcHeader {
                    extensions: big.clone(),
                    ..header.clone()
                },
                term: 1,
                last_log_index: 0,
                last_log_term: 0,
                leadership_transfer: false,
            },
        ),
    )
    .await;
    assert!(limit_exceeded(&got, Limit::MessageSize, max as u64) > max as u64);
    let got = guarded(
        "oversize snapshot request",
        a.transport.install_snapshot(
            &id,
            &addr,
            InstallSnapshotRequest {
                configuration: big.clone(),
                ..snapshot_request(&header, 3)
            },
            std::io::Cursor::new(vec![1u8; 3]),
        ),
    )
    .await;
    assert!(limit_exceeded(&got, Limit::MessageSize, max as u64) > max as u64);

    // On a pipeline: the oversize append is refused, and the pipeline goes on.
    let (a, mut b) = pair(
        h,
        NodeOptions {
            max_message_size: Some(max),
            ..NodeOptions::default()
        },
    )
    .await;
    let header = a.header();
    let pipeline = a.pipeline_to(&b).await;
    let oversize = AppendEntriesRequest {
        entries: vec![Log::command(1, 3, big)],
        ..append_request(&header, 0)
    };
    let got = guarded("pipelined oversize", pipeline.send(oversize)).await;
    assert!(limit_exceeded(&got, Limit::MessageSize, max as u64) > max as u64);
    let got = guarded("pipelined too many", pipeline.send(too_many)).await;
    limit_exceeded(&got, Limit::EntriesPerAppend, MAX_ENTRIES_PER_APPEND as u64);
    let seq = guarded("pipelined", pipeline.send(append_request(&header, 0)))
        .await
        .unwrap();
    assert_eq!(seq, 0, "a refused append took a sequence number");
    let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
    assert_eq!(
        rpc.command(),
        &Command::AppendEntries(append_request(&header, 0)),
        "the consumer saw a refused request"
    );
    rpc.respond(Ok(append_response(&b.header(), 0).into()));
    let done = guarded("completion", pipeline.next()).await.unwrap();
    assert_eq!(done.response.unwrap().last_log, 0);
}

/// A peer whose consumer was dropped (its transport still open) answers every call with
/// `Remote(UNAVAILABLE)`: the peer is reachable but takes no work, so retrying at once does
/// not help (not `ConnectionLost`).
pub async fn consumer_dropped_gives_unavailable<H: Harness>(h: &H) {
    let (a, b) = pair(h, NodeOptions::default()).await;
    let TestNode {
        transport: _b_transport,
        incoming,
        id: b_id,
        addr: b_addr,
    } = b;
    drop(incoming);
    let header = a.header();
    let got = guarded(
        "call",
        a.transport
            .append_entries(&b_id, &b_addr, append_request(&header, 1)),
    )
    .await;
    assert!(
        matches!(&got, Err(Error::Remote(e)) if e.code == ErrorCode::UNAVAILABLE),
        "{got:?}"
    );
    let got = guarded(
        "vote",
        a.transport.timeout_now(
            &b_id,
            &b_addr,
            TimeoutNowRequest {
                header: header.clone(),
            },
        ),
    )
    .await;
    assert!(
        matches!(&got, Err(Error::Remote(e)) if e.code == ErrorCode::UNAVAILABLE),
        "{got:?}"
    );
    let pipeline = guarded(
        "pipeline",
        a.transport.append_entries_pipeline(&b_id, &b_addr),
    )
    .await
    .unwrap();
    guarded("send", pipeline.send(append_request(&header, 1)))
        .await
        .unwrap();
    let done = guarded("completion", pipeline.next()).await.unwrap();
    assert!(
        matches!(&done.response, Err(Error::Remote(e)) if e.code == ErrorCode::UNAVAILABLE),
        "{:?}",
        done.response
    );
}

/// A pipelined request the follower never answers fails with `Timeout`, and every request
/// sent after it fails with `PipelineClosed`, even those the follower answered: it handles
/// appends in order, so nothing behind a stuck one can be trusted (hashicorp/raft's rule).
pub async fn unanswered_pipelined_request_fails_everything_behind_it<H: Harness>(h: &H) {
    let timeout = Duration::from_millis(600);
    let (a, mut b) = pair(h, timed(timeout)).await;
    let header = a.header();
    let pipeline = a.pipeline_to(&b).await;
    for seq in 0..4 {
        guarded("send", pipeline.send(append_request(&header, seq)))
            .await
            .unwrap();
    }
    let stuck = guarded("first RPC", b.incoming.recv()).await.unwrap();
    for seq in 1..4 {
        let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
        rpc.respond(Ok(append_response(&b.header(), seq).into()));
    }
    let done = guarded("first completion", pipeline.next()).await.unwrap();
    assert_eq!(done.seq, 0);
    assert!(
        matches!(
            done.response,
            Err(Error::Timeout {
                rpc: RpcKind::AppendEntries,
                ..
            })
        ),
        "{:?}",
        done.response
    );
    for seq in 1..4 {
        let done = guarded("completion", pipeline.next()).await.unwrap();
        assert_eq!(done.seq, seq);
        assert!(
            matches!(done.response, Err(Error::PipelineClosed)),
            "request {seq} behind the stuck one: {:?}",
            done.response
        );
    }
    assert!(guarded("end", pipeline.next()).await.is_none());
    assert!(pipeline.is_closed());
    let got = pipeline.send(append_request(&header, 9)).await;
    assert!(matches!(got, Err(Error::PipelineClosed)), "{got:?}");
    drop(stuck);
}

/// `AppendPipeline::next` is cancel-safe: a `next` dropped while it waits for a response (the
/// losing branch of a `select!`) loses no completion.
pub async fn pipeline_next_is_cancel_safe<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let header = a.header();
    let pipeline = a.pipeline_to(&b).await;
    guarded("send", pipeline.send(append_request(&header, 0)))
        .await
        .unwrap();
    let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
    {
        let mut waiting = pin!(pipeline.next());
        assert!(
            is_pending(&mut waiting).await,
            "a completion before the answer"
        );
        // Dropped here, while it holds the request it waits on.
    }
    rpc.respond(Ok(append_response(&b.header(), 0).into()));
    let done = guarded("completion after a cancelled next", pipeline.next())
        .await
        .expect("the completion was lost");
    assert_eq!(done.seq, 0);
    assert_eq!(done.response.unwrap().last_log, 0);

    // The natural port of a Go select: `next` raced against a ticker that often wins.
    let n = 20u64;
    let b_header = b.header();
    let echo = spawn_append_echo_from(b.incoming, b_header, 1);
    let mut ticks = tokio::time::interval(Duration::from_micros(200));
    let mut seen = Vec::new();
    guarded("select loop", async {
        for seq in 1..=n {
            pipeline.send(append_request(&header, seq)).await.unwrap();
        }
        while seen.len() < n as usize {
            tokio::select! {
                done = pipeline.next() => {
                    let done = done.expect("pipeline ended");
                    assert_eq!(done.response.unwrap().last_log, done.seq);
                    seen.push(done.seq);
                }
                _ = ticks.tick() => {}
            }
        }
    })
    .await;
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    pipeline.close();
    a.transport.close().await;
    b.transport.close().await;
    guarded("echo", echo).await.unwrap();
}

/// `disconnect_peer` drops what is under way to that peer (`ConnectionLost`), pipelines
/// included, and forgets it: the next call reaches the peer afresh.
pub async fn disconnect_peer_fails_calls_under_way_and_next_call_succeeds<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, NodeOptions::default()).await;
    let header = a.header();
    let pipeline = a.pipeline_to(&b).await;
    guarded("send", pipeline.send(append_request(&header, 0)))
        .await
        .unwrap();
    let call = a.spawn_append(&b, 1);
    let _held = (
        guarded("RPC", b.incoming.recv()).await.unwrap(),
        guarded("RPC", b.incoming.recv()).await.unwrap(),
    );
    a.transport.disconnect_peer(&b.id);
    let got = guarded("call under way", call).await.unwrap();
    assert!(matches!(got, Err(Error::ConnectionLost { .. })), "{got:?}");
    let done = guarded("completion", pipeline.next()).await.unwrap();
    assert!(
        matches!(done.response, Err(Error::ConnectionLost { .. })),
        "{:?}",
        done.response
    );
    // Disconnecting a peer with nothing open does nothing.
    a.transport.disconnect_peer(&ServerId::from("never-called"));

    let request = append_request(&header, 2);
    let response = append_response(&b.header(), 2);
    round_trip(
        "call after",
        &mut b.incoming,
        request,
        response,
        |request| a.transport.append_entries(&b.id, &b.addr, request),
    )
    .await;

    // And a new pipeline works (hashicorp/raft's AppendEntriesPipeline_CloseStreams).
    assert!(pipeline.is_closed(), "the broken pipeline is still open");
    let pipeline = a.pipeline_to(&b).await;
    guarded("send", pipeline.send(append_request(&header, 3)))
        .await
        .unwrap();
    let rpc = guarded("RPC", b.incoming.recv()).await.unwrap();
    rpc.respond(Ok(append_response(&b.header(), 3).into()));
    let done = guarded("completion", pipeline.next()).await.unwrap();
    assert_eq!(done.response.unwrap().last_log, 3);
}

/// A peer that closes fails the calls under way to it with `ConnectionLost` (a retry may go
/// elsewhere at once), and later calls find it `Unreachable`.
pub async fn peer_close_fails_calls_under_way_with_connection_lost<H: Harness>(h: &H) {
    let (a, mut b) = pair(h, timed(Duration::from_millis(500))).await;
    let call = a.spawn_append(&b, 1);
    let _held = guarded("RPC", b.incoming.recv()).await.unwrap();
    guarded("peer close", b.transport.close()).await;
    let got = guarded("call under way", call).await.unwrap();
    assert!(matches!(got, Err(Error::ConnectionLost { .. })), "{got:?}");
    let got = guarded(
        "call after",
        a.transport
            .timeout_now(&b.id, &b.addr, TimeoutNowRequest { header: a.header() }),
    )
    .await;
    assert!(matches!(got, Err(Error::Unreachable { .. })), "{got:?}");
}

/// Instantiates every conformance test for the harness expression `$harness`.
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr) => {
        $crate::conformance_tests!($harness;
            start_stop,
            append_entries_round_trip,
            request_vote_round_trip,
            request_pre_vote_round_trip,
            timeout_now_round_trip,
            heartbeat_fast_path,
            install_snapshot_round_trip,
            resumable_snapshot_survives_a_broken_connection,
            snapshot_reader_dropped_half_read,
            snapshot_short_source_fails_both_sides,
            snapshot_source_ends_early_small,
            snapshot_source_ends_early_large,
            pipeline_10_in_order,
            pipeline_100_in_order,
            pipeline_max_in_flight_0,
            pipeline_max_in_flight_1,
            pipeline_max_in_flight_2,
            pipeline_max_in_flight_10,
            pipeline_fails_outstanding_when_peer_goes_away,
            pipeline_close_fails_outstanding,
            encode_decode_peer,
            encode_decode_peer_with_address_provider,
            remote_error_is_typed,
            wrong_response_kind_is_an_error,
            calls_after_close_fail_with_shutdown,
            absent_peer_is_unreachable,
            dial_that_never_completes_is_unreachable,
            consumer_that_never_reads_gives_timeout,
            limits_are_enforced_before_sending,
            consumer_dropped_gives_unavailable,
            unanswered_pipelined_request_fails_everything_behind_it,
            pipeline_next_is_cancel_safe,
            disconnect_peer_fails_calls_under_way_and_next_call_succeeds,
            peer_close_fails_calls_under_way_with_connection_lost,
        );
    };
}

/// Helper of [`conformance_suite!`]: one `#[tokio::test]` per name.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let harness = $harness;
                $crate::suite::$name(&harness).await;
            }
        )*
    };
}
