//! Fault injection on 127.0.0.1 (issue 8, items 2 and 4), beyond what `quic_transport.rs`
//! (close with RPCs in flight, restart after the backoff) and `quic_bad_input.rs` (oversize
//! length prefix, trickling stream, reset snapshot streams) cover:
//!
//! - a receiver shut down in the middle of a 256 MiB snapshot;
//! - a connection killed under 50 pipelined appends: by the follower shutting down, or by the
//!   link going silent (a UDP relay that drops everything);
//! - a pipeline on a duplicate connection that the tie-break retires (it moves to the winner);
//! - a call cut by this node closing a connection (retired or revoked) is `ConnectionLost`;
//! - a consumer that stops reading;
//! - a peer that completes the handshake and then never answers, and one that never completes
//!   it;
//! - a peer that opens streams as fast as it can, on one connection or several.
//!
//! Each case checks that callers get a typed error on schedule (never a hang), that nothing is
//! lost or taken as complete, that what the node holds stays bounded by its configured limits,
//! and that the node recovers or keeps serving its other peers.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod connection_loss;
mod floods;
mod retirement;
mod silent_peers;
mod slow_consumer;
mod snapshot_cut;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::pattern::Pattern;
use common::{Fixture, header, snapshot_request, vote_from};
use quicraft::tls::TlsContext;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, AppendPipeline, Command, Error, ErrorCode,
    Incoming, InstallSnapshotResponse, Log, QuicConfig, QuicTransport, RequestPreVoteRequest,
    RequestPreVoteResponse, RequestVoteResponse, Response, Rpc, RpcHeader, RpcKind, ServerAddress,
    ServerId, TimeoutNowRequest, TimeoutNowResponse, Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bound on any single wait, so a broken transport fails the test instead of hanging it.
const GUARD: Duration = Duration::from_secs(30);

async fn guarded<F: Future>(what: &str, fut: F) -> F::Output {
    common::within(GUARD, what, fut).await
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn bind(config: QuicConfig) -> (QuicTransport, Incoming) {
    QuicTransport::bind(config).await.unwrap()
}

/// Binds a node on the address a closed node used. The closed node's UDP socket is released
/// when quinn's endpoint driver sees its last handle go, which no API signals: retry while
/// the address is in use, for at most 5 s.
async fn rebind(config: QuicConfig) -> (QuicTransport, Incoming) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match QuicTransport::bind(config.clone()).await {
            Ok(node) => return node,
            Err(Error::Io(e))
                if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot bind the restarted node: {e}"),
        }
    }
}

/// A pipelined append whose position (`prev_log_entry`) is `seq`; not a heartbeat.
fn append(from: &QuicTransport, seq: u64) -> AppendEntriesRequest {
    AppendEntriesRequest {
        header: header(from),
        term: 1,
        prev_log_entry: seq,
        prev_log_term: 1,
        entries: vec![Log::command(seq + 1, 1, seq.to_le_bytes().to_vec())],
        leader_commit_index: 0,
    }
}

// ---------------------------------------------------------------------------------------------
// Snapshot data generated on the fly, and hashed with SHA-256 as it is read.

fn sha256() -> &'static dyn rustls::crypto::hash::Hash {
    match rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256 {
        rustls::SupportedCipherSuite::Tls13(suite) => suite.common.hash_provider,
        _ => unreachable!("a TLS 1.3 suite"),
    }
}

/// Reads `reader` to its end, hashing it and publishing the byte count as it goes. Returns
/// the bytes read and the digest, or the error that ended the read.
async fn hash_stream(
    reader: &mut (impl AsyncRead + Unpin),
    progress: Option<&watch::Sender<u64>>,
) -> (u64, io::Result<Vec<u8>>) {
    let mut hash = sha256().start();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) => return (total, Ok(hash.finish().as_ref().to_vec())),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
                if let Some(progress) = progress {
                    progress.send_replace(total);
                }
            }
            Err(e) => return (total, Err(e)),
        }
    }
}

/// The first 8 bytes of a digest: what the receiver sends back in the response's `term`.
fn digest_word(digest: &[u8]) -> u64 {
    u64::from_le_bytes(digest[..8].try_into().unwrap())
}

async fn expected_digest(seed: u64, len: u64) -> Vec<u8> {
    let (read, digest) = hash_stream(&mut Pattern::new(seed, len), None).await;
    assert_eq!(read, len);
    digest.unwrap()
}

// ---------------------------------------------------------------------------------------------
// The consumer side.

/// What a snapshot reader on the receiving side saw.
#[derive(Debug)]
struct SnapshotOutcome {
    declared: u64,
    read: u64,
    result: Result<Vec<u8>, io::ErrorKind>,
}

/// Where a consumer reports what it saw.
#[derive(Clone, Default)]
struct Taps {
    /// Every command, in the order the consumer took them.
    commands: Option<mpsc::UnboundedSender<Command>>,
    /// Snapshot bytes read so far (of the latest snapshot).
    progress: Option<watch::Sender<u64>>,
    /// How each snapshot read ended.
    snapshots: Option<mpsc::UnboundedSender<SnapshotOutcome>>,
}

/// Answers every RPC until the consumer ends: votes granted echoing the term, appends echoing
/// their position in `last_log`, snapshots read to the end and hashed (success with the
/// digest's first word in `term`, or failure).
fn serve(node: &QuicTransport, mut incoming: Incoming, taps: Taps) -> JoinHandle<()> {
    let me = header(node);
    tokio::spawn(async move {
        while let Some(rpc) = incoming.recv().await {
            if let Some(commands) = &taps.commands {
                let _ = commands.send(rpc.command().clone());
            }
            let (me, taps) = (me.clone(), taps.clone());
            tokio::spawn(answer(me, rpc, taps));
        }
    })
}

async fn answer(me: RpcHeader, mut rpc: Rpc, taps: Taps) {
    let response: Response = match rpc.command().clone() {
        Command::RequestVote(r) => RequestVoteResponse {
            header: me,
            term: r.term,
            granted: true,
        }
        .into(),
        Command::RequestPreVote(r) => RequestPreVoteResponse {
            header: me,
            term: r.term,
            granted: true,
        }
        .into(),
        Command::TimeoutNow(_) => TimeoutNowResponse { header: me }.into(),
        Command::AppendEntries(r) => AppendEntriesResponse {
            header: me,
            term: r.term,
            last_log: r.prev_log_entry,
            success: true,
            no_retry_backoff: false,
        }
        .into(),
        Command::InstallSnapshot(_) => {
            let mut reader = rpc.take_snapshot().unwrap();
            let declared = reader.declared_size();
            let (read, result) = hash_stream(&mut reader, taps.progress.as_ref()).await;
            // Release the stream (and with it the connection) before reporting.
            drop(reader);
            let response = InstallSnapshotResponse {
                header: me,
                term: result.as_deref().map_or(0, digest_word),
                success: result.is_ok(),
            };
            if let Some(snapshots) = &taps.snapshots {
                let _ = snapshots.send(SnapshotOutcome {
                    declared,
                    read,
                    result: result.map_err(|e| e.kind()),
                });
            }
            response.into()
        }
        other => panic!("unexpected {other:?}"),
    };
    rpc.respond(Ok(response));
}

/// Samples `node.task_count()` every few milliseconds until dropped; `peak` is the largest
/// count seen. (A measurement, not a synchronisation: nothing waits on it.)
struct TaskSampler {
    peak: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
}

impl TaskSampler {
    fn start(node: &QuicTransport) -> Self {
        let peak = Arc::new(AtomicUsize::new(node.task_count()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let (node, peak, stop) = (node.clone(), peak.clone(), stop.clone());
            tokio::spawn(async move {
                // At most 60 s of samples.
                for _ in 0..12_000 {
                    peak.fetch_max(node.task_count(), Ordering::Relaxed);
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        Self { peak, stop, task }
    }

    fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    async fn finish(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

/// Waits (polling, at most 10 s) until `cond` holds; the transport's task count has no
/// change notification.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "{what}: not within 10 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// A UDP relay whose link can be cut or held.

/// What a [`Relay`] does with datagrams.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Link {
    /// Forwards them.
    Up,
    /// Drops them, both ways: a partition, or a peer losing power, with no close sent.
    Cut,
    /// Keeps them, to forward when the link is set up again.
    Held,
}

struct RelayState {
    link: Link,
    held: Vec<(Vec<u8>, SocketAddr)>,
}

/// A UDP relay between one client and `server`, whose link can be cut or held.
struct Relay {
    addr: SocketAddr,
    socket: Arc<tokio::net::UdpSocket>,
    state: Arc<std::sync::Mutex<RelayState>>,
    /// Datagrams held so far.
    held: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl Relay {
    async fn start(server: SocketAddr) -> Self {
        let socket = Arc::new(tokio::net::UdpSocket::bind(loopback()).await.unwrap());
        let addr = socket.local_addr().unwrap();
        let state = Arc::new(std::sync::Mutex::new(RelayState {
            link: Link::Up,
            held: Vec::new(),
        }));
        let (held_tx, held) = watch::channel(0);
        let (relaying, link) = (socket.clone(), state.clone());
        // Runs until aborted.
        let task = tokio::spawn(async move {
            let mut client = None;
            let mut buf = vec![0u8; 65_536];
            while let Ok((n, from)) = relaying.recv_from(&mut buf).await {
                let to = if from == server {
                    match client {
                        Some(client) => client,
                        None => continue,
                    }
                } else {
                    client = Some(from);
                    server
                };
                {
                    let mut state = link.lock().unwrap();
                    match state.link {
                        Link::Up => {}
                        Link::Cut => continue,
                        Link::Held => {
                            state.held.push((buf[..n].to_vec(), to));
                            held_tx.send_replace(state.held.len());
                            continue;
                        }
                    }
                }
                let _ = relaying.send_to(&buf[..n], to).await;
            }
        });
        Self {
            addr,
            socket,
            state,
            held,
            task,
        }
    }

    /// Sets the link; setting it up forwards what was held.
    async fn set(&self, link: Link) {
        let held = {
            let mut state = self.state.lock().unwrap();
            state.link = link;
            if link == Link::Up {
                std::mem::take(&mut state.held)
            } else {
                Vec::new()
            }
        };
        for (datagram, to) in held {
            let _ = self.socket.send_to(&datagram, to).await;
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
