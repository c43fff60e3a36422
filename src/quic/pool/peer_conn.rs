//! A connection as the pool hands it out, and why a dial failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

use crate::command::{ServerAddress, ServerId};
use crate::error::Error;
use crate::quic::metrics::PeerMetrics;

/// One QUIC connection to a peer, with who dialled it (for the tie-break) and a count of the
/// streams this node has under way on it (so a retired connection closes only when idle).
#[derive(Clone)]
pub(crate) struct PeerConn {
    pub(crate) conn: quinn::Connection,
    pub(crate) dialer: ServerId,
    /// The peer's metric handles, shared by all of its connections.
    pub(crate) metrics: Arc<PeerMetrics>,
    active: Arc<Active>,
}

#[derive(Default)]
struct Active {
    count: AtomicUsize,
    idle: Notify,
    /// Set when the connection lost the tie-break and is being retired: long-lived users
    /// (pipelines) move to the winner.
    retiring: AtomicBool,
}

/// Counts one stream under way on a connection while it lives.
pub(crate) struct ActiveGuard(Arc<Active>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl PeerConn {
    pub(crate) fn new(
        conn: quinn::Connection,
        dialer: ServerId,
        metrics: Arc<PeerMetrics>,
    ) -> Self {
        Self {
            conn,
            dialer,
            metrics,
            active: Arc::default(),
        }
    }

    pub(crate) fn is_alive(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    /// True once the connection lost the tie-break: it closes after its grace period.
    pub(crate) fn is_retiring(&self) -> bool {
        self.active.retiring.load(Ordering::Acquire)
    }

    pub(super) fn mark_retiring(&self) {
        self.active.retiring.store(true, Ordering::Release);
    }

    pub(super) fn same(&self, other: &PeerConn) -> bool {
        self.conn.stable_id() == other.conn.stable_id()
    }

    /// Marks a stream under way until the guard drops.
    pub(crate) fn active(&self) -> ActiveGuard {
        self.active.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.active.clone())
    }

    pub(super) async fn wait_idle(&self) {
        loop {
            let idle = self.active.idle.notified();
            if self.active.count.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// Why a dial failed, kept to answer calls during the backoff.
#[derive(Clone, Debug)]
pub(crate) enum DialFailure {
    Unreachable(String),
    Authentication(String),
    Shutdown,
}

impl DialFailure {
    pub(crate) fn into_error(self, peer: &ServerAddress) -> Error {
        match self {
            Self::Unreachable(reason) => Error::Unreachable {
                peer: peer.clone(),
                reason,
            },
            Self::Authentication(reason) => Error::Authentication(reason),
            Self::Shutdown => Error::Shutdown,
        }
    }
}
