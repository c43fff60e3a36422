//! TimeoutNow: leadership transfer.

use serde::{Deserialize, Serialize};

use super::RpcHeader;

/// Tells a follower to start an election at once (hashicorp/raft's `TimeoutNowRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNowRequest {
    /// The leader's header.
    pub header: RpcHeader,
}

/// The answer to a [`TimeoutNowRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNowResponse {
    /// The follower's header.
    pub header: RpcHeader,
}
