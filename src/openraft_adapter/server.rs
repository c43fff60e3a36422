//! The receiving side: hands the RPCs a quicraft consumer yields to the local `openraft::Raft`.

use openraft::error::{Fatal, Infallible, RaftError};
use openraft::{Raft, RaftTypeConfig, Snapshot};
use tokio::io::AsyncWriteExt;

use super::wire::{self, WireError};
use crate::command::{AppendEntriesRequest, Command, InstallSnapshotRequest, RequestVoteRequest};
use crate::command::{Response, RpcHeader};
use crate::error::{ErrorCode, RemoteError};
use crate::transport::{Incoming, Rpc, RpcResult, SnapshotReader};

/// Answers every RPC `incoming` yields with the local `raft`, until the consumer ends (the
/// transport was closed). `local` is the header of this node's answers (its server id and
/// address: [`QuicraftNetworkFactory::local_header`](super::QuicraftNetworkFactory::local_header)).
///
/// Each RPC is handled in its own task, so a snapshot being received never holds up a vote
/// or a heartbeat. AppendEntries goes to `Raft::append_entries`, RequestVote to `Raft::vote`,
/// and InstallSnapshot streams its data into `Raft::begin_receiving_snapshot`'s buffer and
/// then calls `Raft::install_full_snapshot` (a snapshot from a leader whose vote is older than
/// this node's is refused before its data is read). An openraft error travels back as a
/// [`RemoteError`] of code [`OPENRAFT_ERROR`](super::OPENRAFT_ERROR) whose details are the encoded
/// error; a request that does not decode is answered with [`ErrorCode::BAD_REQUEST`].
pub async fn serve_raft<C>(raft: Raft<C>, mut incoming: Incoming, local: RpcHeader)
where
    C: RaftTypeConfig,
{
    while let Some(rpc) = incoming.recv().await {
        tokio::spawn(answer(raft.clone(), local.clone(), rpc));
    }
    tracing::debug!(id = %local.id, "openraft server stopped: the transport is closed");
}

/// Answers one RPC.
pub(crate) async fn answer<C: RaftTypeConfig>(raft: Raft<C>, local: RpcHeader, rpc: Rpc) {
    let (command, snapshot, responder) = rpc.into_parts();
    let result = match command {
        Command::AppendEntries(request) => append(&raft, local, &request).await,
        Command::RequestVote(request) => vote(&raft, local, &request).await,
        Command::InstallSnapshot(request) => install(&raft, local, &request, snapshot).await,
        other => Err(RemoteError::new(
            ErrorCode::BAD_REQUEST,
            format!("{} is not part of openraft's protocol", other.kind()),
        )),
    };
    responder.respond(result);
}

fn bad_request(error: &WireError) -> RemoteError {
    RemoteError::new(ErrorCode::BAD_REQUEST, error.to_string())
}

fn raft_error<NID: openraft::NodeId>(error: RaftError<NID, Infallible>) -> RemoteError {
    match error {
        RaftError::Fatal(fatal) => wire::encode_fatal(&fatal),
        RaftError::APIError(never) => match never {},
    }
}

fn fatal_error<NID: openraft::NodeId>(fatal: &Fatal<NID>) -> RemoteError {
    wire::encode_fatal(fatal)
}

async fn append<C: RaftTypeConfig>(
    raft: &Raft<C>,
    local: RpcHeader,
    request: &AppendEntriesRequest,
) -> RpcResult {
    let decoded = wire::decode_append_request::<C>(request).map_err(|e| bad_request(&e))?;
    let last_index = wire::append_last_index(&decoded);
    let response = raft.append_entries(decoded).await.map_err(raft_error)?;
    wire::encode_append_response(local, request.term, last_index, &response)
        .map(Response::from)
        .map_err(|e| bad_request(&e))
}

async fn vote<C: RaftTypeConfig>(
    raft: &Raft<C>,
    local: RpcHeader,
    request: &RequestVoteRequest,
) -> RpcResult {
    let decoded = wire::decode_vote_request::<C::NodeId>(request).map_err(|e| bad_request(&e))?;
    let response = raft.vote(decoded).await.map_err(raft_error)?;
    wire::encode_vote_response(local, &response)
        .map(Response::from)
        .map_err(|e| bad_request(&e))
}

async fn install<C: RaftTypeConfig>(
    raft: &Raft<C>,
    local: RpcHeader,
    request: &InstallSnapshotRequest,
    reader: Option<SnapshotReader>,
) -> RpcResult {
    let mut reader = reader.ok_or_else(|| bad_request(&WireError::MissingSnapshotData))?;
    let (vote, meta) = wire::decode_snapshot_request::<C>(request).map_err(|e| bad_request(&e))?;

    // A leader older than what this node has seen is refused before any data is read
    // (dropping the reader tells the sender to stop).
    let my_vote = raft
        .with_raft_state(|state| state.vote_ref().clone())
        .await
        .map_err(|e| fatal_error(&e))?;
    if vote < my_vote {
        tracing::info!(%vote, %my_vote, "refusing a snapshot from a stale leader");
        let response = openraft::raft::SnapshotResponse::new(my_vote);
        return wire::encode_snapshot_response(local, &response, false)
            .map(Response::from)
            .map_err(|e| bad_request(&e));
    }

    let mut data = raft.begin_receiving_snapshot().await.map_err(raft_error)?;
    let received = tokio::io::copy(&mut reader, &mut *data).await;
    let received = match received {
        Ok(n) => data.shutdown().await.map(|()| n),
        Err(e) => Err(e),
    }
    .map_err(|e| RemoteError::handler(format!("receiving snapshot data failed: {e}")))?;
    tracing::debug!(snapshot = %meta.snapshot_id, bytes = received, "snapshot received");

    let response = raft
        .install_full_snapshot(
            vote.clone(),
            Snapshot {
                meta,
                snapshot: data,
            },
        )
        .await
        .map_err(|e| fatal_error(&e))?;
    let installed = response.vote <= vote;
    wire::encode_snapshot_response(local, &response, installed)
        .map(Response::from)
        .map_err(|e| bad_request(&e))
}
