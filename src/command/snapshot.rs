//! InstallSnapshot: bringing a follower that fell far behind up to date.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::RpcHeader;

/// Offers a snapshot to a follower; its `size` bytes of data travel separately, as a stream
/// (hashicorp/raft's `InstallSnapshotRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotRequest {
    /// The leader's header.
    pub header: RpcHeader,
    /// Version of the snapshot format.
    pub snapshot_version: u32,
    /// The leader's term.
    pub term: u64,
    /// Index of the last log entry the snapshot covers.
    pub last_log_index: u64,
    /// Term of that entry.
    pub last_log_term: u64,
    /// The cluster configuration as of `configuration_index`, encoded by the engine.
    pub configuration: Bytes,
    /// Log index of `configuration`.
    pub configuration_index: u64,
    /// Exact number of bytes of snapshot data that follow.
    pub size: u64,
}

/// The follower's answer to an [`InstallSnapshotRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The follower's header.
    pub header: RpcHeader,
    /// The follower's current term.
    pub term: u64,
    /// Whether the snapshot was installed.
    pub success: bool,
}
