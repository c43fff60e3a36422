//! The Raft-facing API: the [`Transport`] trait, the receiving side, pipelines and snapshots.

mod dispatch;
mod grace;
mod limits;
mod peer;
mod pipeline;
mod queue;
mod rpc;
mod snapshot;

use std::future::Future;

use tokio::io::{AsyncRead, AsyncSeek};

pub(crate) use dispatch::{Delivered, Dispatcher};
pub(crate) use grace::GraceTimer;
pub use limits::DEFAULT_MAX_MESSAGE_SIZE;
pub(crate) use limits::{check_entries, check_request, encode_error};
pub use peer::ServerAddressProvider;
pub(crate) use peer::{AddressResolver, decode_peer};
pub(crate) use pipeline::max_in_flight_or_default;
pub use pipeline::{AppendCompletion, AppendPipeline, DEFAULT_MAX_IN_FLIGHT};
pub(crate) use pipeline::{BoxFuture, PipelineSink, ResponseFuture};
pub(crate) use queue::{Held, Queued};
pub(crate) use rpc::unanswered;
pub use rpc::{HeartbeatHandler, Incoming, Responder, Rpc, RpcResult};
pub(crate) use snapshot::{CopyError, copy_exact, stream_until_answer};
pub use snapshot::{SNAPSHOT_TIMEOUT_UNIT, SnapshotReader, snapshot_timeout};

use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    RequestPreVoteRequest, RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse,
    ServerAddress, ServerId, TimeoutNowRequest, TimeoutNowResponse,
};
use crate::error::Error;

/// Carries Raft's RPCs between nodes (hashicorp/raft's `Transport`, with its `WithClose` and
/// `WithPreVote` extensions).
///
/// The sending side is these methods. Each takes the peer's server id (who the caller means to
/// reach: over QUIC, the identity its certificate must prove) and address. The receiving side
/// is the [`Incoming`] consumer that the implementation's constructor returns, plus the
/// optional heartbeat handler.
///
/// All methods take `&self`: one transport serves every replication task at once. Unless
/// stated otherwise, the RPC futures are cancel-safe in the sense that dropping one abandons
/// that RPC only (the peer may or may not have seen it) and disturbs no other.
///
/// # The contract
///
/// Every implementation behaves as follows; `tests/conformance/` checks each point against
/// each implementation.
///
/// - **Limits, before anything is sent.** An AppendEntries of more than
///   [`MAX_ENTRIES_PER_APPEND`](crate::MAX_ENTRIES_PER_APPEND) entries, or a request whose
///   encoded body exceeds the maximum message size (default [`DEFAULT_MAX_MESSAGE_SIZE`]),
///   fails with [`Error::LimitExceeded`] naming the limit and the request's figure; nothing
///   reaches the peer and no connection is dialled for it. On a pipeline the refused append
///   takes no sequence number and the pipeline goes on.
/// - **A peer that cannot be reached** is [`Error::Unreachable`]: a dial that never completed
///   gives it whichever deadline (the dial's own or the call's) passes first, never
///   [`Error::Timeout`].
/// - **Deadlines.** A call has one deadline for all of it (the configured RPC timeout; for a
///   snapshot, scaled by its size, [`snapshot_timeout`]). A peer that was reached but did not
///   answer in time is [`Error::Timeout`].
/// - **A consumer that never reads.** Calls to it fail with [`Error::Timeout`] at the caller's
///   deadline, whether their RPC was queued for the consumer or waited for room in its queue.
///   (Over QUIC the receiver waits twice its own RPC timeout for room before it answers
///   `UNAVAILABLE`, so only a caller with a longer timeout than that sees the remote error.)
/// - **A consumer that was dropped** (the transport still open): calls to the node fail with
///   [`Error::Remote`] [`ErrorCode::UNAVAILABLE`](crate::ErrorCode::UNAVAILABLE): the node is
///   reachable but takes no work, so an immediate retry does not help.
/// - **An RPC dropped unanswered** by the receiving handler: [`Error::Remote`]
///   [`ErrorCode::NO_RESPONSE`](crate::ErrorCode::NO_RESPONSE).
/// - **Pipelines** deliver appends to the follower in send order and yield completions in
///   that order. The first failed completion closes the pipeline: every request behind it
///   completes with [`Error::PipelineClosed`] even if it was answered, as in hashicorp/raft
///   (see [`AppendPipeline::next`], which is cancel-safe).
/// - **Snapshots** send exactly the declared size. A source that ends early fails the call
///   with [`Error::SnapshotSizeMismatch`] at once, and the receiver's [`SnapshotReader`] fails
///   with [`std::io::ErrorKind::UnexpectedEof`] within about one round trip.
/// - **Resumable snapshots**
///   ([`install_snapshot_resumable`](Self::install_snapshot_resumable)) survive a lost
///   connection (over QUIC) or a cut link (in memory): the sender reconnects and continues
///   from the exact count of bytes the receiver's reader has yielded, and the reader yields
///   one continuous stream, never a gap or a repeated byte. The receiver waits a grace period
///   for the resume; after it the reader fails with [`std::io::ErrorKind::TimedOut`] and a
///   late resume fails the call with [`Error::Remote`]
///   [`ErrorCode::TRANSFER_UNKNOWN`](crate::ErrorCode::TRANSFER_UNKNOWN).
///   [`disconnect_peer`](Self::disconnect_peer) on the sender still ends the call.
/// - **A peer that closes** fails the calls under way to it with [`Error::ConnectionLost`];
///   later calls find it unreachable.
/// - **[`disconnect_peer`](Self::disconnect_peer)** fails what is under way to that peer with
///   [`Error::ConnectionLost`], and the next call reaches the peer afresh.
/// - **[`close`](Self::close)** fails what is under way here, and every later call, with
///   [`Error::Shutdown`].
pub trait Transport: Send + Sync + 'static {
    /// This node's address, as peers should dial it.
    fn local_addr(&self) -> ServerAddress;

    /// Sends an AppendEntries (or heartbeat) and waits for the answer.
    fn append_entries(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: AppendEntriesRequest,
    ) -> impl Future<Output = Result<AppendEntriesResponse, Error>> + Send;

    /// Sends a RequestVote and waits for the answer.
    fn request_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestVoteRequest,
    ) -> impl Future<Output = Result<RequestVoteResponse, Error>> + Send;

    /// Sends a RequestPreVote and waits for the answer.
    fn request_pre_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestPreVoteRequest,
    ) -> impl Future<Output = Result<RequestPreVoteResponse, Error>> + Send;

    /// Sends a TimeoutNow and waits for the answer.
    fn timeout_now(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: TimeoutNowRequest,
    ) -> impl Future<Output = Result<TimeoutNowResponse, Error>> + Send;

    /// Sends an InstallSnapshot, streams exactly `request.size` bytes read from `data`, and
    /// waits for the answer. The data is streamed, never held whole. A source that ends before
    /// `size` bytes fails with [`Error::SnapshotSizeMismatch`], and the receiver's reader sees
    /// an error, not a short snapshot. The deadline scales with the size
    /// ([`snapshot_timeout`]).
    fn install_snapshot<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        data: R,
    ) -> impl Future<Output = Result<InstallSnapshotResponse, Error>> + Send
    where
        R: AsyncRead + Send + Unpin + 'static;

    /// As [`install_snapshot`](Self::install_snapshot), for a source that can seek: when the
    /// connection carrying the snapshot is lost, the sender connects again (within the
    /// snapshot's deadline, [`snapshot_timeout`]), asks the receiver how many bytes its reader
    /// has yielded, seeks `data` there and sends the rest; the receiver's [`SnapshotReader`]
    /// meanwhile waits, then continues with exactly the next byte. At most one flow-control
    /// window is sent twice per resume.
    ///
    /// The snapshot is the `request.size` bytes of `data` from its position when the call
    /// begins. Failures other than a lost connection (the peer's answer or refusal, a source
    /// that ends early, the deadline, [`disconnect_peer`](Self::disconnect_peer),
    /// [`close`](Self::close)) end the call as they end `install_snapshot`. A peer that does not
    /// speak protocol version 3 refuses the request
    /// ([`Error::Remote`] [`ErrorCode::BAD_REQUEST`](crate::ErrorCode::BAD_REQUEST)).
    ///
    /// Cancel-safe in the sense of the other calls: dropping it abandons the snapshot (the
    /// receiver's reader fails about one round trip later, or after its grace period if the
    /// connection was down).
    fn install_snapshot_resumable<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        data: R,
    ) -> impl Future<Output = Result<InstallSnapshotResponse, Error>> + Send
    where
        R: AsyncRead + AsyncSeek + Send + Unpin + 'static;

    /// Opens a pipeline of AppendEntries to the peer; fails with
    /// [`Error::PipelineNotSupported`] when pipelining is turned off.
    ///
    /// Cancel-safe.
    fn append_entries_pipeline(
        &self,
        id: &ServerId,
        target: &ServerAddress,
    ) -> impl Future<Output = Result<AppendPipeline, Error>> + Send;

    /// Encodes a peer for storage in the Raft configuration; with an address provider, its
    /// address for `id` wins over `addr`.
    fn encode_peer(&self, id: &ServerId, addr: &ServerAddress) -> Vec<u8>;

    /// Decodes what [`encode_peer`](Self::encode_peer) produced.
    fn decode_peer(&self, encoded: &[u8]) -> Result<ServerAddress, Error>;

    /// Drops every connection to the peer `id` (hashicorp/raft's `CloseStreams`, for one
    /// peer): what is under way to it fails with [`Error::ConnectionLost`], pipelines to it
    /// included, and the transport forgets the peer, so the next call to it starts afresh (over
    /// QUIC: dials a new connection, with no backoff left from earlier failures). For an
    /// engine whose configuration no longer has the peer. Does nothing for a peer without
    /// connections.
    fn disconnect_peer(&self, id: &ServerId);

    /// Sets (or, with `None`, clears) the heartbeat fast-path handler.
    fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>);

    /// Closes the transport: RPCs under way fail with [`Error::Shutdown`], later calls too,
    /// the consumer ends, and the transport's tasks stop. Idempotent.
    ///
    /// Cancel-safe: the shutdown is started at the first poll and completes regardless.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
