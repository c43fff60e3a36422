//! The sending side: openraft's network traits on a quicraft [`Transport`].

use std::fmt;
use std::future::Future;
use std::io::SeekFrom;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{
    Fatal, NetworkError, RPCError, RaftError, RemoteError, ReplicationClosed, StreamingError,
    Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory, RaftTypeConfig, Snapshot, StorageError,
    StorageIOError, Vote,
};
use tokio::io::AsyncSeekExt;

use super::wire::{self, WireError};
use crate::command::{RpcHeader, ServerAddress, ServerId};
use crate::error::{Error, ErrorCode};
use crate::transport::Transport;

/// Where openraft's node data says a node listens, as a quicraft address.
///
/// Implemented for [`BasicNode`] (its `addr`); implement it for your own node type to use
/// [`QuicraftNetworkFactory::new`], or give a resolver with
/// [`QuicraftNetworkFactory::with_resolver`].
pub trait NodeAddress {
    /// The address to dial.
    fn server_address(&self) -> ServerAddress;
}

impl NodeAddress for BasicNode {
    fn server_address(&self) -> ServerAddress {
        ServerAddress::from(self.addr.as_str())
    }
}

/// Maps an openraft node (id and node data) to the quicraft server id and address to reach.
type Resolver<C> = Arc<
    dyn Fn(
            &<C as RaftTypeConfig>::NodeId,
            &<C as RaftTypeConfig>::Node,
        ) -> (ServerId, ServerAddress)
        + Send
        + Sync,
>;

/// openraft's [`RaftNetworkFactory`] on a quicraft [`Transport`] (a [`QuicTransport`], an
/// [`InmemTransport`], or any other): hands openraft one [`QuicraftNetwork`] per target, all
/// sharing the transport and so its connections. It opens no connection of its own.
///
/// Peers are named by default as the certificates of a quicraft cluster name them: openraft
/// node `n` is quicraft server id `n.to_string()` (so node 1 needs a certificate for node id
/// `"1"`), at the address its node data gives ([`NodeAddress`], `BasicNode::addr`). The same
/// rule names this node in the headers it sends; the QUIC transport refuses requests whose
/// header id is not the one in the sender's certificate.
///
/// [`QuicTransport`]: crate::QuicTransport
/// [`InmemTransport`]: crate::InmemTransport
pub struct QuicraftNetworkFactory<C: RaftTypeConfig, T> {
    transport: T,
    node_id: C::NodeId,
    local: RpcHeader,
    resolver: Resolver<C>,
}

impl<C, T> QuicraftNetworkFactory<C, T>
where
    C: RaftTypeConfig,
    T: Transport + Clone,
{
    /// The network of node `node_id` on `transport`, with the default naming (see the type's
    /// documentation).
    pub fn new(transport: T, node_id: C::NodeId) -> Self
    where
        C::Node: NodeAddress,
    {
        Self::with_resolver(transport, node_id, |id, node| {
            (ServerId::from(id.to_string()), node.server_address())
        })
    }

    /// Like [`new`](Self::new), with `resolver` mapping a target (its node id and node data)
    /// to the quicraft server id and address to reach. This node's own server id stays
    /// `node_id.to_string()`; change it with [`local_server_id`](Self::local_server_id).
    pub fn with_resolver(
        transport: T,
        node_id: C::NodeId,
        resolver: impl Fn(&C::NodeId, &C::Node) -> (ServerId, ServerAddress) + Send + Sync + 'static,
    ) -> Self {
        let local = RpcHeader::new(node_id.to_string(), transport.local_addr());
        Self {
            transport,
            node_id,
            local,
            resolver: Arc::new(resolver),
        }
    }

    /// Names this node `id` in the headers it sends (default: the node id's string form).
    #[must_use]
    pub fn local_server_id(mut self, id: ServerId) -> Self {
        self.local.id = id;
        self
    }

    /// The header this node's requests and responses carry (its server id and address); pass
    /// it to [`serve_raft`](super::serve_raft).
    pub fn local_header(&self) -> RpcHeader {
        self.local.clone()
    }

    /// The transport the networks send on.
    pub fn transport(&self) -> &T {
        &self.transport
    }
}

impl<C: RaftTypeConfig, T: Clone> Clone for QuicraftNetworkFactory<C, T> {
    fn clone(&self) -> Self {
        Self {
            transport: self.transport.clone(),
            node_id: self.node_id.clone(),
            local: self.local.clone(),
            resolver: self.resolver.clone(),
        }
    }
}

impl<C: RaftTypeConfig, T> fmt::Debug for QuicraftNetworkFactory<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicraftNetworkFactory")
            .field("node_id", &self.node_id)
            .field("local", &self.local.id)
            .finish_non_exhaustive()
    }
}

impl<C, T> RaftNetworkFactory<C> for QuicraftNetworkFactory<C, T>
where
    C: RaftTypeConfig,
    T: Transport + Clone,
{
    type Network = QuicraftNetwork<C, T>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        let (server_id, addr) = (self.resolver)(&target, node);
        QuicraftNetwork {
            transport: self.transport.clone(),
            node_id: self.node_id.clone(),
            local: self.local.clone(),
            target,
            target_node: node.clone(),
            server_id,
            addr,
        }
    }
}

/// openraft's [`RaftNetwork`] to one target, over the shared quicraft transport.
///
/// - `append_entries` is an AppendEntries, `vote` a RequestVote (see the `wire` mapping in the
///   module documentation);
/// - `full_snapshot` is one InstallSnapshot whose data is streamed from the snapshot's reader
///   on a dedicated snapshot stream, never buffered whole here (the size is found by seeking
///   to the end and back);
/// - every call is bounded by `RPCOption::hard_ttl`, as well as by the transport's own timeout;
/// - errors map as: [`Error::Unreachable`], [`Error::Shutdown`], [`Error::Authentication`]
///   and a peer that is shutting down ([`ErrorCode::UNAVAILABLE`]) → `RPCError::Unreachable`
///   (openraft backs off: retrying at once cannot succeed); [`Error::Timeout`] and the hard
///   TTL → `RPCError::Timeout`; a remote openraft error ([`wire::OPENRAFT_ERROR`]) →
///   `RPCError::RemoteError` with the original error; anything else (a lost connection, a bad
///   response) → `RPCError::Network` (openraft retries at once).
pub struct QuicraftNetwork<C: RaftTypeConfig, T> {
    transport: T,
    node_id: C::NodeId,
    local: RpcHeader,
    target: C::NodeId,
    target_node: C::Node,
    server_id: ServerId,
    addr: ServerAddress,
}

impl<C: RaftTypeConfig, T> fmt::Debug for QuicraftNetwork<C, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicraftNetwork")
            .field("target", &self.target)
            .field("server_id", &self.server_id)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A transport error sorted the way openraft needs it.
enum Failure<C: RaftTypeConfig> {
    Unreachable(Unreachable),
    Timeout(Duration),
    Remote(Fatal<C::NodeId>),
    Network(NetworkError),
}

impl<C: RaftTypeConfig, T> QuicraftNetwork<C, T> {
    /// The quicraft server id this network sends to.
    pub fn server_id(&self) -> &ServerId {
        &self.server_id
    }

    /// The address this network sends to.
    pub fn server_address(&self) -> &ServerAddress {
        &self.addr
    }

    fn classify(error: Error) -> Failure<C> {
        match error {
            Error::Unreachable { .. } | Error::Shutdown | Error::Authentication(_) => {
                Failure::Unreachable(Unreachable::new(&error))
            }
            Error::Timeout { after, .. } => Failure::Timeout(after),
            Error::Remote(ref remote) => match wire::decode_fatal::<C::NodeId>(remote) {
                Some(fatal) => Failure::Remote(fatal),
                None if remote.code == ErrorCode::UNAVAILABLE => {
                    Failure::Unreachable(Unreachable::new(&error))
                }
                None => Failure::Network(NetworkError::new(&error)),
            },
            other => Failure::Network(NetworkError::new(&other)),
        }
    }

    fn timeout(&self, action: RPCTypes, after: Duration) -> Timeout<C::NodeId> {
        Timeout {
            action,
            id: self.node_id.clone(),
            target: self.target.clone(),
            timeout: after,
        }
    }

    fn rpc_error(
        &self,
        action: RPCTypes,
        error: Error,
    ) -> RPCError<C::NodeId, C::Node, RaftError<C::NodeId>> {
        match Self::classify(error) {
            Failure::Unreachable(e) => RPCError::Unreachable(e),
            Failure::Timeout(after) => RPCError::Timeout(self.timeout(action, after)),
            Failure::Remote(fatal) => RPCError::RemoteError(RemoteError::new_with_node(
                self.target.clone(),
                self.target_node.clone(),
                RaftError::Fatal(fatal),
            )),
            Failure::Network(e) => RPCError::Network(e),
        }
    }

    fn streaming_error(&self, error: Error) -> StreamingError<C, Fatal<C::NodeId>> {
        match Self::classify(error) {
            Failure::Unreachable(e) => StreamingError::Unreachable(e),
            Failure::Timeout(after) => {
                StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, after))
            }
            Failure::Remote(fatal) => StreamingError::RemoteError(RemoteError::new_with_node(
                self.target.clone(),
                self.target_node.clone(),
                fatal,
            )),
            Failure::Network(e) => StreamingError::Network(e),
        }
    }
}

/// Runs `call` with the hard TTL as its deadline: `Err(ttl)` when it passed.
async fn within<F: Future>(ttl: Duration, call: F) -> Result<F::Output, Duration> {
    tokio::time::timeout(ttl, call).await.map_err(|_| ttl)
}

/// A message that does not encode or decode: openraft may retry at once.
fn wire_error(error: &WireError) -> NetworkError {
    NetworkError::new(error)
}

impl<C, T> RaftNetwork<C> for QuicraftNetwork<C, T>
where
    C: RaftTypeConfig,
    T: Transport + Clone,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>>
    {
        let request = wire::encode_append_request(self.local.clone(), &rpc)
            .map_err(|e| RPCError::Network(wire_error(&e)))?;
        drop(rpc);
        let sent = self
            .transport
            .append_entries(&self.server_id, &self.addr, request);
        let response = within(option.hard_ttl(), sent)
            .await
            .map_err(|after| RPCError::Timeout(self.timeout(RPCTypes::AppendEntries, after)))?
            .map_err(|e| self.rpc_error(RPCTypes::AppendEntries, e))?;
        Ok(wire::decode_append_response(&response).map_err(|e| wire_error(&e))?)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C::NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>> {
        let request = wire::encode_vote_request(self.local.clone(), &rpc)
            .map_err(|e| RPCError::Network(wire_error(&e)))?;
        let sent = self
            .transport
            .request_vote(&self.server_id, &self.addr, request);
        let response = within(option.hard_ttl(), sent)
            .await
            .map_err(|after| RPCError::Timeout(self.timeout(RPCTypes::Vote, after)))?
            .map_err(|e| self.rpc_error(RPCTypes::Vote, e))?;
        Ok(wire::decode_vote_response(&response).map_err(|e| wire_error(&e))?)
    }

    /// Not used: [`full_snapshot`](Self::full_snapshot) replaces openraft's chunked transfer,
    /// so openraft never calls this; it fails with a network error if something does.
    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<C>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<C::NodeId>,
        RPCError<C::NodeId, C::Node, RaftError<C::NodeId, openraft::error::InstallSnapshotError>>,
    > {
        Err(RPCError::Network(wire_error(&WireError::ChunkedSnapshot)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote<C::NodeId>,
        snapshot: Snapshot<C>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<C::NodeId>, StreamingError<C, Fatal<C::NodeId>>> {
        let Snapshot { meta, mut snapshot } = snapshot;
        // The size, without reading the data: seek to the end and back.
        let size = async {
            let end = snapshot.seek(SeekFrom::End(0)).await?;
            snapshot.seek(SeekFrom::Start(0)).await?;
            Ok::<_, std::io::Error>(end)
        }
        .await
        .map_err(|e| {
            StorageError::from(StorageIOError::read_snapshot(Some(meta.signature()), &e))
        })?;
        let request = wire::encode_snapshot_request::<C>(self.local.clone(), &vote, &meta, size)
            .map_err(|e| wire_error(&e))?;
        tracing::debug!(target = %self.server_id, size, snapshot = %meta.snapshot_id, "sending snapshot");
        // The data source is the snapshot itself: the transport streams it as it reads.
        let sent = self
            .transport
            .install_snapshot(&self.server_id, &self.addr, request, snapshot);
        let response = tokio::select! {
            result = within(option.hard_ttl(), sent) => result
                .map_err(|after| StreamingError::Timeout(self.timeout(RPCTypes::InstallSnapshot, after)))?
                .map_err(|e| self.streaming_error(e))?,
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        Ok(wire::decode_snapshot_response(&response).map_err(|e| wire_error(&e))?)
    }
}
