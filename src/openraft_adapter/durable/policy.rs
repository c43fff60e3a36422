//! When to snapshot: by the size of the log, not by a count of entries.

use openraft::{Raft, RaftTypeConfig};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::DurableLogStore;

/// Snapshot when the log has grown by [`max_log_bytes`](Self::max_log_bytes) since the last
/// purge. A snapshot costs a pass over the whole state machine, so its frequency should follow
/// how much log it saves, not how many entries went by: many small writes and a few large
/// ones then cost the same disk. Use it with openraft's `SnapshotPolicy::Never` and
/// [`run_snapshot_policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotPolicy {
    /// Log growth, in encoded bytes, that triggers a snapshot. Default 64 MiB: smaller keeps
    /// less disk and shortens restarts, larger rewrites the state machine less often.
    pub max_log_bytes: u64,
}

impl Default for SnapshotPolicy {
    fn default() -> Self {
        Self {
            max_log_bytes: 64 * 1024 * 1024,
        }
    }
}

impl SnapshotPolicy {
    /// A snapshot every `max_log_bytes` of log growth.
    pub fn by_log_bytes(max_log_bytes: u64) -> Self {
        Self { max_log_bytes }
    }
}

/// Applies `policy` to `raft`, whose log is `log`: on every change of the node's metrics,
/// asks openraft for a snapshot once the log has grown by `policy.max_log_bytes` since the
/// last purge (at most one request in flight). Returns when the Raft node shuts down.
///
/// Cancel safety: cancel-safe (dropping the future stops the policy; a snapshot already
/// requested still completes).
pub async fn run_snapshot_policy<C>(raft: Raft<C>, log: DurableLogStore<C>, policy: SnapshotPolicy)
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned,
{
    let mut metrics = raft.metrics();
    // Log size right after the last purge: what the log keeps behind a snapshot.
    let mut floor = 0u64;
    let (mut purged, mut snapshot) = {
        let m = metrics.borrow();
        (m.purged.clone(), m.snapshot.clone())
    };
    let mut requested = false;
    loop {
        {
            let m = metrics.borrow_and_update();
            if m.purged != purged {
                purged = m.purged.clone();
                floor = log.bytes();
            }
            if m.snapshot != snapshot {
                snapshot = m.snapshot.clone();
                requested = false;
            }
        }
        let bytes = log.bytes();
        if !requested && bytes >= floor.saturating_add(policy.max_log_bytes) {
            tracing::debug!(bytes, floor, "the log has grown enough: snapshot");
            if raft.trigger().snapshot().await.is_err() {
                return;
            }
            requested = true;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
