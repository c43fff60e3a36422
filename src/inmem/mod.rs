//! The in-memory transport, for testing Raft engines without a network.
//!
//! Nodes are joined with [`InmemTransport::connect`]; [`Faults`] on a link emulate
//! partitions, black holes and latency deterministically (it works under paused tokio time).

mod config;
mod link_writer;
mod pipeline;
mod resume;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncSeek};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{Faults, InmemConfig};

use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, Command, InstallSnapshotRequest,
    InstallSnapshotResponse, Request, RequestPreVoteRequest, RequestPreVoteResponse,
    RequestVoteRequest, RequestVoteResponse, Response, RpcKind, ServerAddress, ServerId,
    TimeoutNowRequest, TimeoutNowResponse,
};
use crate::error::Error;
use crate::transport::{
    AddressResolver, AppendPipeline, Dispatcher, HeartbeatHandler, Incoming, Responder, Rpc,
    RpcResult, SNAPSHOT_TIMEOUT_UNIT, SnapshotReader, Transport, check_request, copy_exact,
    decode_peer, snapshot_timeout, stream_until_answer, unanswered,
};

/// A [`Transport`] between nodes in one process (hashicorp/raft's `InmemTransport`).
///
/// Cheap to clone: clones are handles to one node.
#[derive(Clone, Debug)]
pub struct InmemTransport {
    node: Arc<Node>,
}

struct Node {
    addr: ServerAddress,
    config: InmemConfig,
    resolver: AddressResolver,
    dispatcher: Dispatcher,
    links: Mutex<HashMap<ServerAddress, Link>>,
    /// Per peer id, cancelled by [`Transport::disconnect_peer`]: what is under way to that peer
    /// fails, as when a QUIC connection is closed, and the next call starts a new session.
    sessions: Mutex<HashMap<ServerId, CancellationToken>>,
    /// Notified when a link is made or its faults change: resumable snapshots wait for it.
    links_changed: Notify,
    shutdown: CancellationToken,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// A one-way link to a peer. Weak, so two nodes linked both ways do not keep each other alive.
#[derive(Clone)]
struct Link {
    peer: Weak<Node>,
    faults: Faults,
    /// Cancelled when the link is cut, failing what is under way on it.
    cut: CancellationToken,
}

/// The peer a call reached, with what is needed to wait for its answer.
struct Route {
    peer: Arc<Node>,
    target: ServerAddress,
    faults: Faults,
    cut: CancellationToken,
    /// The session with the peer's id (see `Node::sessions`).
    session: CancellationToken,
}

impl InmemTransport {
    /// A node at `addr` with the default [`InmemConfig`], and its consumer.
    pub fn new(addr: impl Into<ServerAddress>) -> (Self, Incoming) {
        Self::with_config(addr, InmemConfig::default())
    }

    /// A node at `addr` with `config`, and its consumer.
    pub fn with_config(addr: impl Into<ServerAddress>, config: InmemConfig) -> (Self, Incoming) {
        let (dispatcher, incoming) = Dispatcher::new(config.consumer_capacity);
        let node = Node {
            addr: addr.into(),
            resolver: AddressResolver::new(config.address_provider.clone()),
            config,
            dispatcher,
            links: Mutex::new(HashMap::new()),
            sessions: Mutex::new(HashMap::new()),
            links_changed: Notify::new(),
            shutdown: CancellationToken::new(),
        };
        (
            Self {
                node: Arc::new(node),
            },
            incoming,
        )
    }

    /// Lets this node reach `peer` at the peer's address (one direction; connect both ways
    /// for a two-way link). Replaces an earlier link and clears its faults.
    pub fn connect(&self, peer: &InmemTransport) {
        let link = Link {
            peer: Arc::downgrade(&peer.node),
            faults: Faults::none(),
            cut: CancellationToken::new(),
        };
        if let Some(old) = self.node.links().insert(peer.node.addr.clone(), link) {
            old.cut.cancel();
        }
        self.node.links_changed.notify_waiters();
    }

    /// Cuts the link to the peer at `addr`: what is under way on it fails, and later calls
    /// are unreachable until [`connect`](Self::connect). A fault for tests (hashicorp/raft's
    /// `InmemTransport.Disconnect`); [`Transport::disconnect_peer`] is what an engine calls
    /// when a member leaves, after which calls work again.
    pub fn disconnect(&self, addr: &ServerAddress) {
        if let Some(link) = self.node.links().remove(addr) {
            link.cut.cancel();
        }
    }

    /// Cuts every link of this node.
    pub fn disconnect_all(&self) {
        for (_, link) in self.node.links().drain() {
            link.cut.cancel();
        }
    }

    /// Sets the faults on the link to the peer at `addr`; false when there is no such link.
    pub fn set_faults(&self, addr: &ServerAddress, faults: Faults) -> bool {
        match self.node.links().get_mut(addr) {
            Some(link) => {
                link.faults = faults;
                self.node.links_changed.notify_waiters();
                true
            }
            None => false,
        }
    }

    fn route(&self, id: &ServerId, target: &ServerAddress) -> Result<Route, Error> {
        let node = &self.node;
        if node.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let target = node.resolver.resolve(id, target);
        let unreachable = |reason: &str| Error::Unreachable {
            peer: target.clone(),
            reason: reason.to_owned(),
        };
        let link = node
            .links()
            .get(&target)
            .cloned()
            .ok_or_else(|| unreachable("not connected"))?;
        if link.faults.unreachable {
            return Err(unreachable("injected fault: unreachable"));
        }
        let peer = link
            .peer
            .upgrade()
            .ok_or_else(|| unreachable("peer is gone"))?;
        if peer.shutdown.is_cancelled() {
            return Err(unreachable("peer is shut down"));
        }
        let session = node.sessions().entry(id.clone()).or_default().clone();
        Ok(Route {
            peer,
            target,
            faults: link.faults,
            cut: link.cut,
            session,
        })
    }

    /// Delivers `command` over `route` by `deadline` and returns the receiver of its answer.
    /// `timeout` is what the deadline allows the whole call, for the error.
    async fn deliver(
        &self,
        route: &Route,
        command: Command,
        snapshot: Option<SnapshotReader>,
        deadline: Instant,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<RpcResult>, Error> {
        let kind = command.kind();
        let timed_out = || Error::Timeout {
            rpc: kind,
            after: timeout,
        };
        let (responder, rx) = Responder::new(kind);
        if route.faults.drop_requests {
            // A black hole: the request is lost, so the caller waits out its deadline.
            drop(responder);
            self.wait_or_fail(route, tokio::time::sleep_until(deadline))
                .await?;
            return Err(timed_out());
        }
        if !route.faults.delay.is_zero() {
            let delayed = tokio::time::timeout_at(deadline, tokio::time::sleep(route.faults.delay));
            if self.wait_or_fail(route, delayed).await?.is_err() {
                return Err(timed_out());
            }
        }
        let rpc = Rpc::new(command, snapshot, responder);
        let dispatched = tokio::time::timeout_at(deadline, route.peer.dispatcher.dispatch(rpc));
        match self.wait_or_fail(route, dispatched).await? {
            // Refused, the RPC was answered `UNAVAILABLE`: the answer says so.
            Ok(Ok(())) | Ok(Err(_)) => Ok(rx),
            Err(_) => Err(timed_out()),
        }
    }

    /// Runs `fut` unless this node shuts down or the route fails first.
    async fn wait_or_fail<F: Future>(&self, route: &Route, fut: F) -> Result<F::Output, Error> {
        tokio::select! {
            biased;
            _ = self.node.shutdown.cancelled() => Err(Error::Shutdown),
            _ = route.cut.cancelled() => Err(route.lost("disconnected")),
            _ = route.session.cancelled() => Err(route.lost("disconnected by this node")),
            _ = route.peer.shutdown.cancelled() => Err(route.lost("peer shut down")),
            out = fut => Ok(out),
        }
    }

    /// One request and its answer, within one `timeout` in all.
    async fn call<Q: Request>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: Q,
    ) -> Result<Q::Answer, Error> {
        let timeout = self.node.config.timeout;
        let deadline = Instant::now() + timeout;
        let command = request.into();
        let kind = command.kind();
        check_request(&command, self.node.config.max_message_size)?;
        let route = self.route(id, target)?;
        let rx = self
            .deliver(&route, command, None, deadline, timeout)
            .await?;
        let answer = self
            .wait_or_fail(&route, tokio::time::timeout_at(deadline, rx))
            .await?;
        match answer {
            Ok(answer) => route.answer(answer, kind),
            Err(_) => Err(Error::Timeout {
                rpc: kind,
                after: timeout,
            }),
        }
    }

    fn new_pipeline(&self, id: &ServerId, target: &ServerAddress) -> Result<AppendPipeline, Error> {
        let node = &self.node;
        if node.config.max_in_flight < 2 {
            return Err(Error::PipelineNotSupported);
        }
        let route = self.route(id, target)?;
        let sink = pipeline::InmemSink::new(self.clone(), route);
        AppendPipeline::new(
            sink,
            node.config.max_in_flight,
            node.config.timeout,
            &node.shutdown,
        )
    }
}

impl InmemTransport {
    /// After the link under a resumable snapshot was cut: a route to the peer again, waiting
    /// for the link to be restored until `give_up`. Fails with `cut` (the error that ended the
    /// attempt) if it is not, and as any call does if this node closes or `session` (the
    /// peer's session when the link was cut) ends.
    async fn relink(
        &self,
        (id, target): (&ServerId, &ServerAddress),
        session: &CancellationToken,
        give_up: Instant,
        cut: Error,
    ) -> Result<Route, Error> {
        loop {
            let changed = self.node.links_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if session.is_cancelled() {
                return Err(cut);
            }
            match self.route(id, target) {
                Ok(route) => return Ok(route),
                Err(Error::Unreachable { .. }) => {}
                Err(e) => return Err(e),
            }
            tokio::select! {
                biased;
                _ = self.node.shutdown.cancelled() => return Err(Error::Shutdown),
                _ = session.cancelled() => return Err(cut),
                () = tokio::time::sleep_until(give_up) => return Err(cut),
                () = changed => {}
            }
        }
    }

    /// [`Transport::install_snapshot_resumable`].
    async fn send_resumable<R>(
        &self,
        (id, target): (&ServerId, &ServerAddress),
        request: InstallSnapshotRequest,
        mut data: R,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin + 'static,
    {
        use tokio::io::{AsyncSeekExt, AsyncWriteExt};

        let config = &self.node.config;
        let size = request.size;
        let timeout = snapshot_timeout(config.timeout, size, SNAPSHOT_TIMEOUT_UNIT);
        let deadline = Instant::now() + timeout;
        let timed_out = || Error::Timeout {
            rpc: RpcKind::InstallSnapshot,
            after: timeout,
        };
        let command = Command::InstallSnapshot(request);
        check_request(&command, config.max_message_size)?;
        let base = data.stream_position().await.map_err(Error::Io)?;
        let mut route = self.route(id, target)?;
        let (writer, reader) = tokio::io::duplex(config.snapshot_buffer);
        // The receiver's grace period, as over QUIC.
        let transfer = resume::Transfer::new(reader, route.peer.config.resume_grace());
        let reader = SnapshotReader::new(resume::Reader::new(transfer.clone()), size);
        let mut rx = self
            .deliver(&route, command, Some(reader), deadline, timeout)
            .await?;
        let mut sink = resume::Counted::new(
            link_writer::LinkWriter::new(writer, &route.cut, &route.session),
            0,
        );
        loop {
            let offset = sink.position;
            let streaming = async {
                copy_exact(&mut data, size - offset, &mut sink).await?;
                // The end of this pipe is the end of the snapshot.
                sink.shutdown()
                    .await
                    .map_err(crate::transport::CopyError::Sink)
            };
            let answer = stream_until_answer(streaming, &mut rx, size);
            let cut = match self
                .wait_or_fail(&route, tokio::time::timeout_at(deadline, answer))
                .await
            {
                Ok(Ok(Ok(answer))) => return route.answer(answer, RpcKind::InstallSnapshot),
                Ok(Ok(Err(Error::SnapshotSizeMismatch { declared, actual }))) => {
                    return Err(Error::SnapshotSizeMismatch {
                        declared,
                        actual: actual + offset,
                    });
                }
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(timed_out()),
                Err(cut)
                    if route.cut.is_cancelled()
                        && !route.session.is_cancelled()
                        && !route.peer.shutdown.is_cancelled() =>
                {
                    cut
                }
                Err(e) => return Err(e),
            };
            // The link was cut: what the pipe held is lost; continue once it is back.
            transfer.lost();
            let give_up = deadline.min(Instant::now() + config.resume_grace());
            route = self
                .relink((id, target), &route.session, give_up, cut)
                .await?;
            let (writer, reader) = tokio::io::duplex(config.snapshot_buffer);
            let Some(at) = transfer.attach(reader) else {
                return Err(Error::Remote(crate::error::RemoteError::new(
                    crate::ErrorCode::TRANSFER_UNKNOWN,
                    "the snapshot was not resumed within the receiver's grace period",
                )));
            };
            tracing::debug!(peer = %id, offset = at, resent = sink.position.saturating_sub(at), "snapshot resumed");
            let source = base.checked_add(at).ok_or_else(|| {
                Error::protocol(format!("snapshot offset {at} past the source's end"))
            })?;
            data.seek(std::io::SeekFrom::Start(source))
                .await
                .map_err(Error::Io)?;
            sink = resume::Counted::new(
                link_writer::LinkWriter::new(writer, &route.cut, &route.session),
                at,
            );
        }
    }
}

impl Route {
    fn lost(&self, reason: &str) -> Error {
        Error::lost(&self.target, reason)
    }

    /// Turns what came back on a responder's channel for a request of `kind` into the
    /// caller's result: a response that is not the `T` that answers it is a protocol error.
    fn answer<T: TryFrom<Response, Error = Response>>(
        &self,
        answer: Result<RpcResult, oneshot::error::RecvError>,
        kind: RpcKind,
    ) -> Result<T, Error> {
        match answer {
            Ok(Ok(response)) => T::try_from(response).map_err(|other| {
                Error::protocol(format!("{kind} answered with a {} response", other.kind()))
            }),
            Ok(Err(remote)) => Err(Error::Remote(remote)),
            Err(_) if self.peer.shutdown.is_cancelled() => Err(self.lost("peer shut down")),
            Err(_) => Err(Error::Remote(unanswered())),
        }
    }
}

impl Node {
    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, CancellationToken>> {
        // Every critical section is a single map operation: a poisoned lock is safe to use.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn links(&self) -> std::sync::MutexGuard<'_, HashMap<ServerAddress, Link>> {
        // A panic while holding this lock cannot leave the map half-updated: every critical
        // section is a single map operation. So a poisoned lock is safe to use.
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Transport for InmemTransport {
    fn local_addr(&self) -> ServerAddress {
        self.node.addr.clone()
    }

    async fn append_entries(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: AppendEntriesRequest,
    ) -> Result<AppendEntriesResponse, Error> {
        self.call(id, target, request).await
    }

    async fn request_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestVoteRequest,
    ) -> Result<RequestVoteResponse, Error> {
        self.call(id, target, request).await
    }

    async fn request_pre_vote(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: RequestPreVoteRequest,
    ) -> Result<RequestPreVoteResponse, Error> {
        self.call(id, target, request).await
    }

    async fn timeout_now(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: TimeoutNowRequest,
    ) -> Result<TimeoutNowResponse, Error> {
        self.call(id, target, request).await
    }

    async fn install_snapshot<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        mut data: R,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + Send + Unpin + 'static,
    {
        let size = request.size;
        let timeout = snapshot_timeout(self.node.config.timeout, size, SNAPSHOT_TIMEOUT_UNIT);
        let deadline = Instant::now() + timeout;
        let command = Command::InstallSnapshot(request);
        check_request(&command, self.node.config.max_message_size)?;
        let route = self.route(id, target)?;
        let (writer, reader) = tokio::io::duplex(self.node.config.snapshot_buffer);
        let mut writer = link_writer::LinkWriter::new(writer, &route.cut, &route.session);
        let reader = SnapshotReader::new(reader, size);
        let rx = self
            .deliver(&route, command, Some(reader), deadline, timeout)
            .await?;

        let streaming = async move { copy_exact(&mut data, size, &mut writer).await };
        let answer = stream_until_answer(streaming, rx, size);
        let answer = self
            .wait_or_fail(&route, tokio::time::timeout_at(deadline, answer))
            .await?;
        // A cut while the copy loop ran stops the data, the receiver's reader fails, and the
        // receiver's answer to that (or its dropping the RPC) can arrive within the same poll
        // as the cut, past `wait_or_fail`'s check: it did not cross the link.
        if route.cut.is_cancelled() {
            return Err(route.lost("disconnected"));
        }
        if route.session.is_cancelled() {
            return Err(route.lost("disconnected by this node"));
        }
        match answer {
            Ok(Ok(answer)) => route.answer(answer, RpcKind::InstallSnapshot),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout {
                rpc: RpcKind::InstallSnapshot,
                after: timeout,
            }),
        }
    }

    async fn install_snapshot_resumable<R>(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        request: InstallSnapshotRequest,
        data: R,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin + 'static,
    {
        self.send_resumable((id, target), request, data).await
    }

    async fn append_entries_pipeline(
        &self,
        id: &ServerId,
        target: &ServerAddress,
    ) -> Result<AppendPipeline, Error> {
        self.new_pipeline(id, target)
    }

    fn encode_peer(&self, id: &ServerId, addr: &ServerAddress) -> Vec<u8> {
        self.node.resolver.encode_peer(id, addr)
    }

    fn decode_peer(&self, encoded: &[u8]) -> Result<ServerAddress, Error> {
        decode_peer(encoded)
    }

    fn set_heartbeat_handler(&self, handler: Option<HeartbeatHandler>) {
        self.node.dispatcher.set_heartbeat_handler(handler);
    }

    fn disconnect_peer(&self, id: &ServerId) {
        if let Some(session) = self.node.sessions().remove(id) {
            session.cancel();
        }
    }

    async fn close(&self) {
        self.node.shutdown.cancel();
        self.node.dispatcher.close();
        self.disconnect_all();
    }
}
