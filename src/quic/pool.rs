//! The connections to peers: at most one live QUIC connection per peer, shared by every
//! caller and used in both directions, dialled lazily, re-dialled with capped exponential
//! backoff.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::codes::{self, conn};
use crate::command::{ServerAddress, ServerId};
use crate::error::Error;

/// One QUIC connection to a peer, with who dialled it (for the tie-break) and a count of the
/// streams this node has under way on it (so a retired connection closes only when idle).
#[derive(Clone)]
pub(crate) struct PeerConn {
    pub(crate) conn: quinn::Connection,
    pub(crate) dialer: ServerId,
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
    pub(crate) fn new(conn: quinn::Connection, dialer: ServerId) -> Self {
        Self {
            conn,
            dialer,
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

    fn mark_retiring(&self) {
        self.active.retiring.store(true, Ordering::Release);
    }

    /// Marks a stream under way until the guard drops.
    pub(crate) fn active(&self) -> ActiveGuard {
        self.active.count.fetch_add(1, Ordering::AcqRel);
        ActiveGuard(self.active.clone())
    }

    async fn wait_idle(&self) {
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

type Dial = Shared<BoxFuture<'static, Result<PeerConn, DialFailure>>>;

/// Connections to one peer that lost the tie-break and still wait out their grace period
/// (see [`retire`]). Each holds a frame budget of its own, so a peer that dialled again and
/// again could otherwise multiply what it may make this node hold; beyond this many the
/// oldest is closed at once. An honest peer has at most one (from a simultaneous dial).
const MAX_RETIRING_PER_PEER: usize = 2;

#[derive(Default)]
struct Entry {
    conn: Option<PeerConn>,
    dial: Option<Dial>,
    failures: u32,
    retry_at: Option<Instant>,
    last_failure: Option<DialFailure>,
    /// Losers of the tie-break still open, oldest first.
    retiring: Vec<PeerConn>,
}

/// What the pool needs from the transport: starting a dial (which must complete on its own,
/// whoever waits) and retiring a connection that lost the tie-break.
pub(crate) trait Dialer: Send + Sync + 'static {
    fn spawn_dial(
        &self,
        id: ServerId,
        addr: SocketAddr,
    ) -> BoxFuture<'static, Result<PeerConn, DialFailure>>;
    fn spawn_retire(&self, loser: PeerConn);
}

pub(crate) struct Pool {
    local_id: ServerId,
    entries: Mutex<HashMap<ServerId, Entry>>,
    backoff_base: Duration,
    backoff_max: Duration,
}

impl Pool {
    pub(crate) fn new(local_id: ServerId, backoff_base: Duration, backoff_max: Duration) -> Self {
        Self {
            local_id,
            entries: Mutex::new(HashMap::new()),
            backoff_base,
            backoff_max,
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Entry>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still sound.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to `id`, dialling `target` if there is none. Concurrent callers
    /// share one dial; during the backoff after a failed dial, calls fail at once.
    pub(crate) async fn get(
        &self,
        dialer: &dyn Dialer,
        id: &ServerId,
        target: &ServerAddress,
    ) -> Result<PeerConn, Error> {
        let dial = {
            let mut entries = self.entries();
            let entry = entries.entry(id.clone()).or_default();
            if let Some(conn) = &entry.conn {
                if conn.is_alive() {
                    return Ok(conn.clone());
                }
                // A connection closed by a refused certificate counts as a failed dial, so
                // the backoff applies to it too.
                if let Some(reason) = conn.conn.close_reason()
                    && codes::is_authentication_failure(&reason)
                {
                    let failure = DialFailure::Authentication(format!(
                        "{target} closed the connection after the handshake: {reason}"
                    ));
                    self.record_failure(entry, failure);
                }
                entry.conn = None;
            }
            match &entry.dial {
                Some(dial) => dial.clone(),
                None => {
                    if let Some(retry_at) = entry.retry_at
                        && Instant::now() < retry_at
                    {
                        let failure =
                            entry
                                .last_failure
                                .clone()
                                .unwrap_or(DialFailure::Unreachable(
                                    "backing off after a failed dial".to_owned(),
                                ));
                        return Err(backing_off(failure, target, retry_at));
                    }
                    let addr = resolve(target)?;
                    let dial = dialer.spawn_dial(id.clone(), addr).shared();
                    entry.dial = Some(dial.clone());
                    dial
                }
            }
        };
        dial.await.map_err(|failure| failure.into_error(target))
    }

    /// Records the outcome of a dial to `id` started by [`get`](Self::get).
    pub(crate) fn dial_finished(
        &self,
        dialer: &dyn Dialer,
        id: &ServerId,
        outcome: Result<PeerConn, DialFailure>,
    ) -> Result<PeerConn, DialFailure> {
        match outcome {
            Ok(conn) => Ok(self.register(dialer, id, conn)),
            Err(failure) => {
                let mut entries = self.entries();
                let entry = entries.entry(id.clone()).or_default();
                entry.dial = None;
                self.record_failure(entry, failure.clone());
                Err(failure)
            }
        }
    }

    fn record_failure(&self, entry: &mut Entry, failure: DialFailure) {
        entry.failures = entry.failures.saturating_add(1);
        let exponent = (entry.failures - 1).min(16);
        let delay = self
            .backoff_base
            .saturating_mul(1 << exponent)
            .min(self.backoff_max);
        entry.retry_at = Some(Instant::now() + delay);
        entry.last_failure = Some(failure);
    }

    /// Adds a connection (dialled or accepted) to `peer` and returns the one callers should
    /// use. With two live connections to one peer, the tie-break in `docs/PROTOCOL.md`
    /// decides: the one dialled by the smaller server id wins; between two dialled by the
    /// same node, the newer wins. The loser is retired (closed once idle).
    pub(crate) fn register(&self, dialer: &dyn Dialer, peer: &ServerId, new: PeerConn) -> PeerConn {
        let mut entries = self.entries();
        let entry = entries.entry(peer.clone()).or_default();
        if new.dialer == self.local_id {
            entry.dial = None;
        }
        entry.failures = 0;
        entry.retry_at = None;
        entry.last_failure = None;
        let winner = match entry.conn.take() {
            Some(existing)
                if existing.is_alive() && existing.conn.stable_id() != new.conn.stable_id() =>
            {
                // Same dialer: a re-dial replaces the old one. Else the smaller dialer id wins.
                let new_wins = new.dialer <= existing.dialer;
                let (winner, loser) = if new_wins {
                    (new, existing)
                } else {
                    (existing, new)
                };
                tracing::debug!(
                    peer = %peer,
                    kept_dialled_by = %winner.dialer,
                    retired_dialled_by = %loser.dialer,
                    "two connections to one peer; retiring one"
                );
                loser.mark_retiring();
                entry.retiring.retain(PeerConn::is_alive);
                entry.retiring.push(loser.clone());
                if entry.retiring.len() > MAX_RETIRING_PER_PEER {
                    let oldest = entry.retiring.remove(0);
                    tracing::warn!(
                        peer = %peer,
                        limit = MAX_RETIRING_PER_PEER,
                        "too many connections from one peer; closing the oldest retiring one"
                    );
                    oldest
                        .conn
                        .close(conn::DUPLICATE, b"too many connections from one peer");
                }
                dialer.spawn_retire(loser);
                winner
            }
            _ => new,
        };
        entry.conn = Some(winner.clone());
        winner
    }

    /// Every connection the pool holds (live or not), for inspection.
    pub(crate) fn connections(&self) -> Vec<(ServerId, PeerConn)> {
        self.entries()
            .iter()
            .filter_map(|(id, e)| e.conn.clone().map(|c| (id.clone(), c)))
            .collect()
    }

    /// Every open connection, including those being retired (for revocation re-checks).
    pub(crate) fn every_connection(&self) -> Vec<(ServerId, PeerConn)> {
        let entries = self.entries();
        let mut all = Vec::new();
        for (id, entry) in entries.iter() {
            let open = entry.conn.iter().chain(&entry.retiring);
            all.extend(
                open.filter(|c| c.is_alive())
                    .map(|c| (id.clone(), c.clone())),
            );
        }
        all
    }

    /// Forgets every connection (on shutdown).
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }
}

/// Closes a connection that lost the tie-break: after `grace` (time for the peer to have
/// moved its new calls to the winner), once this node has nothing under way on it. Pipelines
/// move to the winner at their next append (see `quic::pipeline`), so what still runs on the
/// loser finishes: a snapshot in the middle of its data is not cut.
pub(crate) async fn retire(loser: PeerConn, grace: Duration) {
    tokio::time::sleep(grace).await;
    loser.wait_idle().await;
    loser.conn.close(conn::DUPLICATE, b"duplicate connection");
}

fn backing_off(failure: DialFailure, target: &ServerAddress, retry_at: Instant) -> Error {
    let wait = retry_at.saturating_duration_since(Instant::now());
    match failure {
        DialFailure::Unreachable(reason) => Error::Unreachable {
            peer: target.clone(),
            reason: format!("{reason} (next dial in {wait:?})"),
        },
        other => other.into_error(target),
    }
}

/// A peer address must be `ip:port`: the transport does not resolve names on the RPC path.
fn resolve(target: &ServerAddress) -> Result<SocketAddr, Error> {
    target.as_str().parse().map_err(|_| Error::Unreachable {
        peer: target.clone(),
        reason: "not an ip:port socket address".to_owned(),
    })
}

impl Pool {
    /// Closes every connection to `id` (the one in use and any being retired) with
    /// `DISCONNECTED` and forgets the peer, its backoff included: the next call dials anew. A
    /// dial under way is not stopped; if it completes, its connection is kept as usual.
    pub(crate) fn disconnect(&self, id: &ServerId) {
        let Some(entry) = self.entries().remove(id) else {
            return;
        };
        for open in entry.conn.iter().chain(&entry.retiring) {
            open.conn.close(conn::DISCONNECTED, b"disconnected");
        }
        tracing::debug!(peer = %id, "connections to the peer dropped");
    }
}
