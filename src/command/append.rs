//! AppendEntries: log replication and heartbeats.

use serde::{Deserialize, Serialize};

use super::{Log, RpcHeader};

/// Replicates log entries; with no entries it is a heartbeat (hashicorp/raft's
/// `AppendEntriesRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesRequest {
    /// The leader's header.
    pub header: RpcHeader,
    /// The leader's term.
    pub term: u64,
    /// Index of the entry just before `entries`.
    pub prev_log_entry: u64,
    /// Term of the entry at `prev_log_entry`.
    pub prev_log_term: u64,
    /// Entries to append, in index order.
    pub entries: Vec<Log>,
    /// The leader's commit index.
    pub leader_commit_index: u64,
}

impl AppendEntriesRequest {
    /// A heartbeat: the leader's term and nothing else.
    pub fn heartbeat(header: RpcHeader, term: u64) -> Self {
        Self {
            header,
            term,
            prev_log_entry: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit_index: 0,
        }
    }

    /// True when this request may take the heartbeat fast path: it carries a term and a sender
    /// but no entries and no log position (the rule hashicorp/raft's transports use).
    pub fn is_heartbeat(&self) -> bool {
        self.term != 0
            && !self.header.id.is_empty()
            && self.prev_log_entry == 0
            && self.prev_log_term == 0
            && self.entries.is_empty()
            && self.leader_commit_index == 0
    }
}

/// The follower's answer to an [`AppendEntriesRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's header.
    pub header: RpcHeader,
    /// The follower's current term, so a stale leader can step down.
    pub term: u64,
    /// The follower's last log index, a hint for the leader's next index.
    pub last_log: u64,
    /// Whether the entries were appended.
    pub success: bool,
    /// Set when the failure should not trigger the leader's backoff (e.g. a log mismatch).
    pub no_retry_backoff: bool,
}
