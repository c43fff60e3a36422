//! Keeping a node that lost its data out of its old cluster.
//!
//! Raft's safety rests on the vote and the log being durable: a node restarted with empty
//! storage under its old id can vote twice in a term, or help elect a leader that lacks
//! writes it had acknowledged. Such a node must come back as a *new* member (a membership
//! change), not silently rejoin. A node cannot tell from its own empty storage whether it
//! lost its data or never had any, so the founding of a cluster is made observable:
//!
//! - Before initializing a new cluster, the initializing node [probes](probe_peer) every other
//!   member and goes ahead only if every one answers and none has any Raft state (no vote, no
//!   log). If one has, the cluster already exists and the initializer is the one that lost
//!   its data.
//! - A node whose storage is fresh serves Raft through [`serve_raft_guarded`] with
//!   [`JoinGuard::fresh`]: it answers probes, and remembers being probed by the initializer
//!   (it is then a founding member). Any other Raft RPC while it was never probed means a
//!   cluster that was founded without it, so it refuses it, answers nothing to Raft, and
//!   reports a [`Refusal`] (the application should stop and say how to re-add the node). It
//!   may also probe its peers itself and hand the answers to [`JoinGuard::note_peer`]: a peer
//!   with Raft state is the same proof, without waiting for a leader to reach it. (The
//!   initializer founds only after its probe of this node was answered, so a founding
//!   member has always been marked before any peer has state.)
//! - A node with data, and a node started to join as a new member (added by a membership
//!   change), use [`JoinGuard::member`]: every RPC goes to Raft.
//!
//! A probe is a RequestVote for term 0 with no log: a guarded node answers it from its
//! current state without handing it to Raft, and an unguarded openraft node rejects it
//! without changing its state (term 0 never wins an election).

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{LeaderId, LogId, Raft, RaftTypeConfig, Vote};
use tokio::sync::watch;

use super::server::answer;
use super::wire;
use crate::command::{Command, Response, RpcHeader, ServerAddress, ServerId};
use crate::error::{Error, ErrorCode, RemoteError};
use crate::transport::{Incoming, Rpc, Transport};

/// What a probed peer said of its Raft state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerState {
    /// The term of the peer's vote (0: it never voted nor saw a leader).
    pub term: u64,
    /// The index of its last log entry, if it has any.
    pub last_log_index: Option<u64>,
}

impl PeerState {
    /// True when the peer has any Raft state: then its cluster exists.
    pub fn has_history(&self) -> bool {
        self.term > 0 || self.last_log_index.is_some()
    }
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.last_log_index {
            Some(index) => write!(f, "term {}, log up to index {index}", self.term),
            None => write!(f, "term {}, empty log", self.term),
        }
    }
}

fn is_probe<NID: openraft::NodeId>(request: &VoteRequest<NID>) -> bool {
    request.vote.leader_id().get_term() == 0
        && !request.vote.is_committed()
        && request.last_log_id.is_none()
}

/// Asks the peer `target` at `addr` for its Raft state without changing it (see the module
/// documentation). `me` is this node's openraft id and `local` its header.
///
/// Cancel safety: cancel-safe (a dropped probe is a RequestVote left unanswered).
pub async fn probe_peer<NID, T>(
    transport: &T,
    local: RpcHeader,
    me: NID,
    target: &ServerId,
    addr: &ServerAddress,
) -> Result<PeerState, Error>
where
    NID: openraft::NodeId,
    T: Transport,
{
    let request = VoteRequest::<NID> {
        vote: Vote {
            leader_id: LeaderId::new(0, me),
            committed: false,
        },
        last_log_id: None,
    };
    let request = wire::encode_vote_request(local, &request)
        .map_err(|e| Error::protocol_by("vote request not encoded", crate::error::cause(e)))?;
    let response = transport.request_vote(target, addr, request).await?;
    let response: VoteResponse<NID> = wire::decode_vote_response(&response)
        .map_err(|e| Error::protocol_by("bad vote response", crate::error::cause(e)))?;
    Ok(PeerState {
        term: response.vote.leader_id().get_term(),
        last_log_index: response.last_log_id.map(|l| l.index),
    })
}

/// Why a guarded node refused to take part: a peer's RPC showed a cluster that was founded
/// without this node, while its storage is empty.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Refusal {
    /// The peer whose RPC showed it.
    pub from: ServerId,
    /// Which RPC.
    pub kind: String,
    /// The term the RPC carried.
    pub term: u64,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "node {} sent {}, term {}",
            self.from, self.kind, self.term
        )
    }
}

#[derive(Debug)]
enum GuardState {
    /// Every RPC goes to Raft.
    Member,
    /// Fresh storage; `founding` once the initializer probed it.
    Fresh {
        initializer: ServerId,
        founding: bool,
    },
    /// Refused: answers nothing to Raft any more.
    Refused,
}

/// Whether a node's Raft may answer its peers' RPCs. Clones share the state.
///
/// The rules: before initializing a new cluster, the initializing node [probes](probe_peer)
/// every other member and goes ahead only if every one answers and none has any Raft state
/// (a peer with state means the cluster exists and the initializer lost its data). A node with
/// fresh storage serves through [`serve_raft_guarded`] with [`JoinGuard::fresh`]: it answers
/// probes and remembers being probed by the initializer (it is then a founding member); any
/// other Raft RPC while it was never probed comes from a cluster founded without it, so it
/// refuses the RPC and reports a [`Refusal`] (see [`refused`](Self::refused)). A node with data,
/// or one started to join as a new member added by a membership change, uses
/// [`JoinGuard::member`].
#[derive(Debug, Clone)]
pub struct JoinGuard {
    state: Arc<Mutex<GuardState>>,
    refused: watch::Sender<Option<Refusal>>,
}

impl JoinGuard {
    fn with(state: GuardState) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            refused: watch::Sender::new(None),
        }
    }

    /// A node with data, or one started to join as a new member: every RPC goes to Raft.
    pub fn member() -> Self {
        Self::with(GuardState::Member)
    }

    /// A node with fresh storage in a cluster whose initializer is `initializer`.
    pub fn fresh(initializer: ServerId) -> Self {
        Self::with(GuardState::Fresh {
            initializer,
            founding: false,
        })
    }

    /// Waits until the guard refuses (it may never).
    ///
    /// Cancel safety: cancel-safe.
    pub async fn refused(&self) -> Refusal {
        let mut watch = self.refused.subscribe();
        loop {
            if let Some(refusal) = watch.borrow_and_update().clone() {
                return refusal;
            }
            if watch.changed().await.is_err() {
                // Unreachable while `self` holds the sender.
                std::future::pending::<()>().await;
            }
        }
    }

    /// True while the node is fresh and was not probed by the initializer: what it learns of
    /// an existing cluster then means it must not take part.
    pub fn is_undecided(&self) -> bool {
        matches!(
            *self.state.lock().unwrap_or_else(PoisonError::into_inner),
            GuardState::Fresh {
                founding: false,
                ..
            }
        )
    }

    /// Notes what this node's own [probe](probe_peer) of peer `from` found: while the node
    /// [is undecided](Self::is_undecided), a peer with Raft state means a cluster founded
    /// without it, and the guard refuses from then on. Returns true when it refused. A fresh
    /// node that probes its peers this way learns it lost its data without waiting for a
    /// leader to reach it.
    pub fn note_peer(&self, from: &ServerId, state: PeerState) -> bool {
        if !state.has_history() {
            return false;
        }
        let mut guard = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !matches!(
            *guard,
            GuardState::Fresh {
                founding: false,
                ..
            }
        ) {
            return false;
        }
        self.refuse(
            &mut guard,
            Refusal {
                from: from.clone(),
                kind: format!("a probe answer ({state})"),
                term: state.term,
            },
        );
        true
    }

    /// Refuses from now on, and tells [`refused`](Self::refused).
    fn refuse(&self, state: &mut GuardState, refusal: Refusal) {
        tracing::error!(%refusal, "refusing to rejoin: this node's storage is empty but its cluster already exists");
        *state = GuardState::Refused;
        self.refused.send_replace(Some(refusal));
    }

    /// Decides on a Raft RPC other than a probe: `true` to hand it to Raft.
    fn admit(&self, command: &Command) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match &*state {
            GuardState::Member | GuardState::Fresh { founding: true, .. } => true,
            GuardState::Refused => false,
            GuardState::Fresh {
                founding: false, ..
            } => {
                let term = match command {
                    Command::AppendEntries(r) => r.term,
                    Command::RequestVote(r) => r.term,
                    Command::InstallSnapshot(r) => r.term,
                    _ => 0,
                };
                self.refuse(
                    &mut state,
                    Refusal {
                        from: command.header().id.clone(),
                        kind: command.kind().to_string(),
                        term,
                    },
                );
                false
            }
        }
    }

    /// Notes a probe from `from`.
    fn probed_by(&self, from: &ServerId) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if let GuardState::Fresh {
            initializer,
            founding,
        } = &mut *state
            && initializer == from
            && !*founding
        {
            tracing::debug!(%from, "probed by the initializer while fresh: a founding member");
            *founding = true;
        }
    }
}

/// [`serve_raft`](super::serve_raft) behind a [`JoinGuard`]: probes are answered from the
/// node's state (never handed to Raft), other RPCs go to Raft only while the guard admits
/// them; a refused RPC is answered with [`ErrorCode::UNAVAILABLE`] (the sender backs off).
/// Runs until the consumer ends (the transport was closed).
///
/// Cancel safety: cancel-safe (RPCs being answered finish in their own tasks).
pub async fn serve_raft_guarded<C>(
    raft: Raft<C>,
    mut incoming: Incoming,
    local: RpcHeader,
    guard: JoinGuard,
) where
    C: RaftTypeConfig,
{
    while let Some(rpc) = incoming.recv().await {
        if let Command::RequestVote(request) = rpc.command()
            && let Ok(vote) = wire::decode_vote_request::<C::NodeId>(request)
            && is_probe(&vote)
        {
            guard.probed_by(&request.header.id);
            answer_probe(raft.clone(), local.clone(), rpc);
            continue;
        }
        if guard.admit(rpc.command()) {
            tokio::spawn(answer(raft.clone(), local.clone(), rpc));
        } else {
            rpc.respond(Err(RemoteError::new(
                ErrorCode::UNAVAILABLE,
                "this node lost its data and does not take part in the cluster",
            )));
        }
    }
    tracing::debug!(id = %local.id, "openraft server stopped: the transport is closed");
}

fn answer_probe<C: RaftTypeConfig>(raft: Raft<C>, local: RpcHeader, rpc: Rpc) {
    // The metrics carry the vote and the last log index; the probe reads only the index of
    // the log id, so its leader id is the vote's.
    let (vote, last_log_id) = {
        let metrics = raft.metrics();
        let m = metrics.borrow();
        let last = m
            .last_log_index
            .map(|index| LogId::new(m.vote.leader_id().clone(), index));
        (m.vote.clone(), last)
    };
    let response = VoteResponse::new(vote, last_log_id, false);
    let result = wire::encode_vote_response(local, &response)
        .map(Response::from)
        .map_err(|e| RemoteError::new(ErrorCode::BAD_REQUEST, e.to_string()));
    rpc.respond(result);
}
