//! The Raft-facing API: the [`Transport`] trait, the receiving side, pipelines and snapshots.

mod dispatch;
mod peer;
mod pipeline;
mod rpc;
mod snapshot;

use std::future::Future;

use tokio::io::AsyncRead;

pub(crate) use dispatch::Dispatcher;
pub use peer::ServerAddressProvider;
pub(crate) use peer::{AddressResolver, decode_peer};
pub use pipeline::{
    AppendCompletion, AppendPipeline, BoxFuture, DEFAULT_MAX_IN_FLIGHT, PipelineSink,
    ResponseFuture,
};
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

    /// Sets (or, with `None`, clears) the heartbeat fast-path handler.
    fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>);

    /// Closes the transport: RPCs under way fail with [`Error::Shutdown`], later calls too,
    /// the consumer ends, and the transport's tasks stop. Idempotent.
    ///
    /// Cancel-safe: the shutdown is started at the first poll and completes regardless.
    fn close(&self) -> impl Future<Output = ()> + Send;
}
