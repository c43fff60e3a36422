//! A connection as the pool hands it out, and why a dial failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

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

struct Active {
    count: AtomicUsize,
    idle: Notify,
    /// Set when the connection lost the tie-break and is being retired: long-lived users
    /// (pipelines) move to the winner.
    retiring: AtomicBool,
    /// The least round trip seen on the connection, in microseconds (quinn's smoothed RTT
    /// and hedged heartbeats' own; 0 for a peer on this host): the path's length, without the
    /// queueing and scheduling delays that raise the smoothed RTT under load.
    least_rtt_us: AtomicU64,
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
        let active = Arc::new(Active {
            count: AtomicUsize::new(0),
            idle: Notify::new(),
            retiring: AtomicBool::new(false),
            // A peer on this host is a short path whatever the RTT says: there, a late answer
            // means a busy host, not a lost packet.
            least_rtt_us: AtomicU64::new(
                if conn.remote_address().ip().to_canonical().is_loopback() {
                    0
                } else {
                    micros(conn.rtt())
                },
            ),
        });
        Self {
            conn,
            dialer,
            metrics,
            active,
        }
    }

    /// Whether this connection's path is at least `rtt` long: the least round-trip time seen
    /// on it (the current smoothed RTT included) is `rtt` or more. The smoothed RTT alone also
    /// grows with a busy host (a CPU-bound node acknowledges late), which is no reason to
    /// treat the path as long. Once short, always short: then it reads one atomic and leaves
    /// the connection's lock alone.
    pub(crate) fn path_at_least(&self, rtt: Duration) -> bool {
        let least = Duration::from_micros(self.active.least_rtt_us.load(Ordering::Relaxed));
        least >= rtt && self.observe_rtt(self.conn.rtt()) >= rtt
    }

    /// Takes a round trip measured on this connection (an RPC's, which includes the peer's
    /// answer time and so is never shorter than the path); returns the least so far.
    pub(crate) fn observe_rtt(&self, rtt: Duration) -> Duration {
        let rtt = micros(rtt);
        let least = self
            .active
            .least_rtt_us
            .fetch_min(rtt, Ordering::Relaxed)
            .min(rtt);
        Duration::from_micros(least)
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

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}
