//! RequestVote and RequestPreVote: elections.

use serde::{Deserialize, Serialize};

use super::RpcHeader;

/// A candidate asks for a vote (hashicorp/raft's `RequestVoteRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteRequest {
    /// The candidate's header.
    pub header: RpcHeader,
    /// The candidate's term.
    pub term: u64,
    /// Index of the candidate's last log entry.
    pub last_log_index: u64,
    /// Term of the candidate's last log entry.
    pub last_log_term: u64,
    /// Set when the election follows a leadership transfer, so voters ignore a known leader.
    pub leadership_transfer: bool,
}

/// A voter's answer to a [`RequestVoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// The voter's header.
    pub header: RpcHeader,
    /// The voter's current term.
    pub term: u64,
    /// Whether the vote was granted.
    pub granted: bool,
}

/// A would-be candidate asks whether it could win, without disrupting the cluster's term
/// (hashicorp/raft's `RequestPreVoteRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPreVoteRequest {
    /// The would-be candidate's header.
    pub header: RpcHeader,
    /// The term it would campaign in.
    pub term: u64,
    /// Index of its last log entry.
    pub last_log_index: u64,
    /// Term of its last log entry.
    pub last_log_term: u64,
}

/// The answer to a [`RequestPreVoteRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestPreVoteResponse {
    /// The voter's header.
    pub header: RpcHeader,
    /// The voter's current term.
    pub term: u64,
    /// Whether the pre-vote was granted.
    pub granted: bool,
}
