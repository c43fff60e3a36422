//! The receiving side: incoming RPCs, their responders, and the consumer that yields them.

use std::fmt;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::SnapshotReader;
use super::queue::ConsumerQueue;
use crate::command::{Command, Response, RpcKind};
use crate::error::{ErrorCode, RemoteError};

/// What a responder sends back: a response of the request's kind, or an error for the caller.
pub type RpcResult = Result<Response, RemoteError>;

/// Handles heartbeats without going through the consumer (hashicorp/raft's heartbeat fast path).
///
/// Called on the transport's receive path for every [`AppendEntriesRequest`] for which
/// [`is_heartbeat`] holds; it must answer through [`Rpc::respond`] and must not block.
///
/// [`AppendEntriesRequest`]: crate::AppendEntriesRequest
/// [`is_heartbeat`]: crate::AppendEntriesRequest::is_heartbeat
pub type HeartbeatHandler = Arc<dyn Fn(Rpc) + Send + Sync>;

/// One incoming RPC: the command, the snapshot data where it has one, and a one-shot responder.
///
/// Dropping an `Rpc` without answering sends the caller a [`RemoteError`] with
/// [`ErrorCode::NO_RESPONSE`].
pub struct Rpc {
    command: Command,
    snapshot: Option<SnapshotReader>,
    responder: Responder,
}

impl Rpc {
    /// An RPC as a transport hands it to a consumer; `responder` carries the answer back.
    pub(crate) fn new(
        command: Command,
        snapshot: Option<SnapshotReader>,
        responder: Responder,
    ) -> Self {
        Self {
            command,
            snapshot,
            responder,
        }
    }

    /// The request.
    pub fn command(&self) -> &Command {
        &self.command
    }

    /// Takes the snapshot data of an [`Command::InstallSnapshot`]: a reader of exactly the
    /// declared number of bytes. `None` for other commands, or when already taken.
    pub fn take_snapshot(&mut self) -> Option<SnapshotReader> {
        self.snapshot.take()
    }

    /// Answers the caller. A response of another kind than the request is not sent; the caller
    /// gets an [`ErrorCode::WRONG_RESPONSE`] error instead.
    pub fn respond(self, result: RpcResult) {
        self.responder.respond(result);
    }

    /// Splits the RPC into its parts, to answer from elsewhere.
    pub fn into_parts(self) -> (Command, Option<SnapshotReader>, Responder) {
        (self.command, self.snapshot, self.responder)
    }
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc")
            .field("command", &self.command)
            .field("has_snapshot", &self.snapshot.is_some())
            .finish_non_exhaustive()
    }
}

/// The error a caller gets for an RPC its receiver dropped without answering.
pub(crate) fn unanswered() -> RemoteError {
    RemoteError::new(
        ErrorCode::NO_RESPONSE,
        "the RPC was dropped without an answer",
    )
}

/// Sends the answer to one RPC back to its caller, once.
pub struct Responder {
    kind: RpcKind,
    tx: oneshot::Sender<RpcResult>,
}

impl Responder {
    /// A responder for a request of `kind`, and the receiver its answer arrives on.
    pub(crate) fn new(kind: RpcKind) -> (Self, oneshot::Receiver<RpcResult>) {
        let (tx, rx) = oneshot::channel();
        (Self { kind, tx }, rx)
    }

    /// Answers the caller (see [`Rpc::respond`]). Answering a caller that has gone away is not
    /// an error: the answer is dropped.
    pub fn respond(self, result: RpcResult) {
        let result = match result {
            Ok(response) if response.kind() != self.kind => {
                tracing::error!(
                    request = %self.kind,
                    response = %response.kind(),
                    "handler answered with a response of the wrong kind"
                );
                Err(RemoteError::new(
                    ErrorCode::WRONG_RESPONSE,
                    format!("{} answered with a {} response", self.kind, response.kind()),
                ))
            }
            other => other,
        };
        // The caller may have timed out and gone; nothing to do then.
        let _ = self.tx.send(result);
    }

    /// True once the caller has stopped waiting (timed out, cancelled or disconnected).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// The consumer: yields the RPCs that reach this node (hashicorp/raft's `Consumer()` channel).
///
/// Ends (yields `None`) once the transport is closed. Heartbeats go to the heartbeat handler
/// instead, when one is set. While the consumer is not read, its queue fills and callers see
/// backpressure, then timeouts.
pub struct Incoming {
    queue: Arc<ConsumerQueue>,
}

impl Incoming {
    pub(crate) fn new(queue: Arc<ConsumerQueue>) -> Self {
        Self { queue }
    }

    /// The next RPC, or `None` once the transport is closed and the queue is drained. Peers
    /// are served in turn, votes and heartbeats before appends and snapshots (see
    /// `docs/PROTOCOL.md` §9.2).
    ///
    /// Cancel-safe: a cancelled call loses no RPC.
    pub async fn recv(&mut self) -> Option<Rpc> {
        self.queue.pop().await
    }

    /// The next RPC if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Rpc> {
        self.queue.try_pop().flatten()
    }

    /// RPCs queued and not yet received.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// True when no RPC is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Incoming {
    /// What is queued, and what arrives from now on, is answered `UNAVAILABLE`.
    fn drop(&mut self) {
        self.queue.consumer_gone();
    }
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("queued", &self.queue.len())
            .finish()
    }
}
