//! The two nodes of a benchmark: each transport in a tokio runtime on an OS thread of its own,
//! the follower answering, and the leader's view of the follower (a [`Link`]).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::mpsc;
use std::task::{Context, Poll};
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use quicraft::tls::{ClusterCa, NodeCertOptions};
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, InmemConfig, InmemTransport,
    InstallSnapshotRequest, InstallSnapshotResponse, Log, QuicConfig, QuicTransport, QuicTuning,
    RemoteError, Rpc, RpcHeader, ServerAddress, ServerId, SnapshotReader, Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::sync::oneshot;

/// The term of every request and response.
const TERM: u64 = 1;
/// Pipeline depth, on both transports.
pub(crate) const MAX_IN_FLIGHT: usize = 128;
/// Buffer of the follower's snapshot reads (what a consumer writing the data to disk might use).
const SNAPSHOT_READ_BUFFER: usize = 64 * 1024;

/// The tokio runtime of each node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum RuntimeKind {
    /// One thread per node: what the issue describes, and the default.
    #[value(name = "current")]
    CurrentThread,
    /// tokio's default multi-thread runtime per node (one worker per CPU), as `#[tokio::main]`.
    #[value(name = "multi")]
    MultiThread,
}

impl RuntimeKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::CurrentThread => "current",
            Self::MultiThread => "multi",
        }
    }

    fn build(self, node: &str) -> tokio::runtime::Runtime {
        let mut builder = match self {
            Self::CurrentThread => tokio::runtime::Builder::new_current_thread(),
            Self::MultiThread => tokio::runtime::Builder::new_multi_thread(),
        };
        builder
            .enable_all()
            .thread_name(format!("{node}-worker"))
            .build()
            .expect("build a tokio runtime")
    }
}

/// A tokio runtime on an OS thread of its own, as a node in its own process would have.
/// Stops (dropping whatever still runs on it) when dropped.
pub(crate) struct NodeThread {
    runtime: tokio::runtime::Handle,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl NodeThread {
    pub(crate) fn start(node: &str, kind: RuntimeKind) -> Self {
        let (handle_tx, handle_rx) = mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let name = node.to_owned();
        let thread = thread::Builder::new()
            .name(node.to_owned())
            .spawn(move || {
                let runtime = kind.build(&name);
                handle_tx
                    .send(runtime.handle().clone())
                    .expect("the starting thread waits for the handle");
                // A current-thread runtime runs its tasks only inside `block_on`.
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .expect("spawn a node thread");
        let runtime = handle_rx
            .recv()
            .expect("the node thread starts its runtime");
        Self {
            runtime,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Runs `future` as a task of this node and waits (blocking the calling thread) for its
    /// output.
    pub(crate) fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        self.runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .expect("the task panicked (its message is printed above)")
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The leader's handle on the follower: its own transport, the follower's id and address, and
/// the RPCs the scenarios send. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Link<T> {
    pub(crate) transport: T,
    peer_id: ServerId,
    peer_addr: ServerAddress,
    header: RpcHeader,
}

impl<T: Transport + Clone> Link<T> {
    /// One heartbeat, answered by the follower's heartbeat handler.
    pub(crate) async fn heartbeat(&self) {
        let request = AppendEntriesRequest::heartbeat(self.header.clone(), TERM);
        let response = self
            .transport
            .append_entries(&self.peer_id, &self.peer_addr, request)
            .await
            .expect("heartbeat");
        assert!(response.success, "heartbeat refused");
    }

    /// Batch `seq` of `entries` log entries, each carrying `payload` (shared, not copied).
    pub(crate) fn batch(&self, seq: u64, entries: u64, payload: &Bytes) -> AppendEntriesRequest {
        let prev = seq * entries;
        AppendEntriesRequest {
            header: self.header.clone(),
            term: TERM,
            prev_log_entry: prev,
            prev_log_term: TERM,
            entries: (1..=entries)
                .map(|i| Log::command(prev + i, TERM, payload.clone()))
                .collect(),
            leader_commit_index: prev,
        }
    }

    /// One AppendEntries, answered by the follower's consumer.
    pub(crate) async fn append(&self, request: AppendEntriesRequest) {
        let response = self
            .transport
            .append_entries(&self.peer_id, &self.peer_addr, request)
            .await
            .expect("AppendEntries");
        assert!(response.success, "AppendEntries refused");
    }

    pub(crate) async fn pipeline(&self) -> quicraft::AppendPipeline {
        self.transport
            .append_entries_pipeline(&self.peer_id, &self.peer_addr)
            .await
            .expect("open a pipeline")
    }

    /// An InstallSnapshot of `size` bytes repeating `block`; the follower reads it to the end.
    pub(crate) async fn install_snapshot(&self, block: &Bytes, size: u64) {
        let request = InstallSnapshotRequest {
            header: self.header.clone(),
            snapshot_version: 1,
            term: TERM,
            last_log_index: 1,
            last_log_term: TERM,
            configuration: Bytes::from_static(b"leader,follower"),
            configuration_index: 1,
            size,
        };
        let data = RepeatedBlock::new(block.clone(), size);
        let response = self
            .transport
            .install_snapshot(&self.peer_id, &self.peer_addr, request, data)
            .await
            .expect("InstallSnapshot");
        assert!(
            response.success,
            "the follower did not read the whole snapshot"
        );
    }
}

/// A leader and a follower, each transport on its node's runtime.
pub(crate) struct Pair<T> {
    link: Link<T>,
    follower: T,
    leader_node: NodeThread,
    /// The follower's own runtime; `None` when it shares the leader's.
    follower_node: Option<NodeThread>,
}

impl<T: Transport + Clone> Pair<T> {
    /// Runs `scenario` on the leader's runtime and waits for its output.
    pub(crate) fn run<F>(&self, scenario: impl FnOnce(Link<T>) -> F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.leader_node.run(scenario(self.link.clone()))
    }

    /// Closes both transports, each on its own runtime, then stops the nodes.
    pub(crate) fn close(self) {
        let leader = self.link.transport.clone();
        self.leader_node.run(async move { leader.close().await });
        let follower = self.follower.clone();
        let follower_node = self.follower_node.as_ref().unwrap_or(&self.leader_node);
        follower_node.run(async move { follower.close().await });
    }
}

pub(crate) const CLUSTER: &str = "bench";

/// `QUICRAFT_BENCH_CC` (`cubic`, `newreno`, `bbr`) overrides the transport's default
/// congestion controller.
fn congestion_controller() -> quicraft::CongestionController {
    match std::env::var("QUICRAFT_BENCH_CC").as_deref() {
        Ok("cubic") => quicraft::CongestionController::Cubic,
        Ok("newreno") => quicraft::CongestionController::NewReno,
        Ok("bbr") => quicraft::CongestionController::Bbr,
        _ => quicraft::CongestionController::default(),
    }
}

/// The `QuicConfig` settings a run may change from the transport's defaults (the command
/// line's `--busy-poll`, `--stream-window` and `--max-udp-payload`).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tuning {
    /// `None`: the transport's default.
    pub(crate) busy_poll: Option<Duration>,
    pub(crate) stream_window: Option<u32>,
    pub(crate) max_udp_payload: Option<u16>,
}

impl Tuning {
    pub(crate) fn apply(self, tuning: QuicTuning) -> QuicTuning {
        let tuning = match self.busy_poll {
            Some(window) => tuning.busy_poll(window),
            None => tuning,
        };
        let tuning = match self.stream_window {
            Some(window) => tuning.stream_receive_window(window),
            None => tuning,
        };
        match self.max_udp_payload {
            Some(bytes) => tuning.max_udp_payload(bytes),
            None => tuning,
        }
    }
}

/// Two QUIC nodes on 127.0.0.1 with mutual TLS (certificates of a fresh cluster CA), each on
/// its own runtime and thread.
pub(crate) fn quic_pair(runtime: RuntimeKind, tuning: Tuning) -> Pair<QuicTransport> {
    let ca = ClusterCa::generate(CLUSTER).expect("generate the cluster CA");
    let config = |node: &str| {
        let identity = ca
            .issue_node(node, &NodeCertOptions::default())
            .expect("issue a node certificate")
            .identity;
        QuicConfig::new(CLUSTER, identity, ca.roots())
            .bind("127.0.0.1:0".parse().expect("an address"))
            .max_in_flight(MAX_IN_FLIGHT)
            .tuning(
                tuning.apply(QuicTuning::default().congestion_controller(congestion_controller())),
            )
    };

    let follower_node = NodeThread::start("follower", runtime);
    let follower_config = config("follower");
    let (follower, follower_addr) = follower_node.run(async move {
        let (transport, incoming) = QuicTransport::bind(follower_config)
            .await
            .expect("bind the follower");
        let addr = transport.local_addr();
        serve(
            &transport,
            incoming,
            RpcHeader::new("follower", addr.clone()),
        );
        (transport, addr)
    });

    let leader_node = NodeThread::start("leader", runtime);
    let leader_config = config("leader");
    let leader = leader_node.run(async move {
        // The leader is never called, so its consumer is not needed.
        let (transport, _incoming) = QuicTransport::bind(leader_config)
            .await
            .expect("bind the leader");
        transport
    });

    Pair {
        link: Link {
            header: RpcHeader::new("leader", leader.local_addr()),
            transport: leader,
            peer_id: ServerId::from("follower"),
            peer_addr: follower_addr,
        },
        follower,
        leader_node,
        follower_node: Some(follower_node),
    }
}

/// Two in-memory nodes sharing one runtime: the floor the QUIC transport is compared with.
pub(crate) fn inmem_pair(runtime: RuntimeKind) -> Pair<InmemTransport> {
    let node = NodeThread::start("inmem", runtime);
    let (leader, follower) = node.run(async {
        // The QUIC transport's default RPC timeout, so a loaded machine cannot fail the run.
        let config = InmemConfig::default()
            .timeout(Duration::from_secs(10))
            .max_in_flight(MAX_IN_FLIGHT);
        let (leader, _incoming) = InmemTransport::with_config("leader", config.clone());
        let (follower, incoming) = InmemTransport::with_config("follower", config);
        leader.connect(&follower);
        follower.connect(&leader);
        serve(&follower, incoming, RpcHeader::new("follower", "follower"));
        (leader, follower)
    });
    Pair {
        link: Link {
            header: RpcHeader::new("leader", "leader"),
            transport: leader,
            peer_id: ServerId::from("follower"),
            peer_addr: ServerAddress::from("follower"),
        },
        follower,
        leader_node: node,
        follower_node: None,
    }
}

/// The follower: a heartbeat handler answering heartbeats on the fast path, and a consumer loop
/// (a task on the current runtime) answering every AppendEntries and reading each snapshot to
/// the end.
pub(crate) fn serve<T: Transport>(
    transport: &T,
    mut incoming: quicraft::Incoming,
    header: RpcHeader,
) {
    let handler_header = header.clone();
    transport.set_heartbeat_handler(Some(Arc::new(move |rpc: Rpc| {
        rpc.respond(Ok(append_ack(&handler_header, 0).into()));
    })));
    tokio::spawn(async move {
        while let Some(mut rpc) = incoming.recv().await {
            match rpc.command() {
                Command::AppendEntries(request) => {
                    let last_log = request.prev_log_entry + request.entries.len() as u64;
                    rpc.respond(Ok(append_ack(&header, last_log).into()));
                }
                Command::InstallSnapshot(_) => {
                    let reader = rpc.take_snapshot().expect("an InstallSnapshot has data");
                    let header = header.clone();
                    // Its own task, so the loop keeps answering while the data streams.
                    tokio::spawn(async move {
                        let success = read_to_end(reader).await.is_ok();
                        let response = InstallSnapshotResponse {
                            header,
                            term: TERM,
                            success,
                        };
                        rpc.respond(Ok(response.into()));
                    });
                }
                other => {
                    let message = format!("the benchmark follower does not take {}", other.kind());
                    rpc.respond(Err(RemoteError::handler(message)));
                }
            }
        }
    });
}

fn append_ack(header: &RpcHeader, last_log: u64) -> AppendEntriesResponse {
    AppendEntriesResponse {
        header: header.clone(),
        term: TERM,
        last_log,
        success: true,
        no_retry_backoff: false,
    }
}

/// Reads snapshot data to the end, discarding it.
async fn read_to_end(mut reader: SnapshotReader) -> io::Result<u64> {
    let mut buffer = vec![0u8; SNAPSHOT_READ_BUFFER];
    let mut total = 0;
    loop {
        match reader.read(&mut buffer).await? {
            0 => return Ok(total),
            n => total += n as u64,
        }
    }
}

/// Snapshot data: `remaining` bytes repeating one block, so a snapshot of any size costs one
/// block of memory to produce.
struct RepeatedBlock {
    block: Bytes,
    offset: usize,
    remaining: u64,
}

impl RepeatedBlock {
    fn new(block: Bytes, size: u64) -> Self {
        assert!(!block.is_empty(), "an empty block repeats nothing");
        Self {
            block,
            offset: 0,
            remaining: size,
        }
    }
}

impl AsyncRead for RepeatedBlock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let n = (this.block.len() - this.offset)
            .min(buf.remaining())
            .min(usize::try_from(this.remaining).unwrap_or(usize::MAX));
        buf.put_slice(&this.block[this.offset..this.offset + n]);
        this.offset = (this.offset + n) % this.block.len();
        this.remaining -= n as u64;
        Poll::Ready(Ok(()))
    }
}

/// A block of `size` bytes that do not compress: what [`Link::install_snapshot`] repeats.
pub(crate) fn snapshot_block(size: usize) -> Bytes {
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    (0..size)
        .map(|_| {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}
