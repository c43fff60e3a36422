//! The connections to peers: at most one live QUIC connection per peer, shared by every
//! caller and used in both directions, dialled lazily, re-dialled with capped exponential
//! backoff. The pool dials through its [`Connector`], serves every connection it keeps
//! through the [`Server`], and retires the losers of the tie-break itself.

mod peer_conn;
mod probe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub(crate) use peer_conn::{ActiveGuard, DialFailure, PeerConn};
pub(crate) use probe::Watchdog;

use super::codes::{self, conn};
use super::connector::Connector;
use super::metrics::{self, PeerMetrics, PeerRegistry};
use super::server::Server;
use crate::command::{ServerAddress, ServerId};
use crate::error::Error;

type Dial = Shared<BoxFuture<'static, Result<PeerConn, DialFailure>>>;

/// Failed dials to a peer logged at debug level before they are warnings: about 0.7 s with the
/// default backoff, time for the other nodes of a cluster that starts together to come up.
const QUIET_DIAL_FAILURES: u32 = 3;

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
    /// Set while a new connection waits for the probe of the incumbent (see
    /// [`Pool::register`]); calls wait for it rather than use a connection that may be dead.
    settling: Option<Settling>,
    /// The address the connection is confirmed for (it was dialled there, or calls named it
    /// first): calls naming another address that is not the connection's mean the peer moved.
    target: Option<ServerAddress>,
}

type Settling = Shared<BoxFuture<'static, ()>>;

/// The pool's timing: reconnect backoff, how long a probe may take, how long a retired
/// connection stays open for the calls already on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PoolTiming {
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    /// The longest a probe of an incumbent connection may take (the connect timeout).
    pub(crate) probe_max: Duration,
    /// How long a connection that lost the tie-break stays open for calls already on it.
    pub(crate) retire_grace: Duration,
}

pub(crate) struct Pool {
    local_id: ServerId,
    entries: Mutex<HashMap<ServerId, Entry>>,
    timing: PoolTiming,
    connector: Connector,
    server: Arc<Server>,
    /// Each peer's metric handles, shared by all of its connections.
    peer_metrics: PeerRegistry,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

/// Where a [`Pool::register`] stands after looking at the entry.
enum Contest {
    Decided(PeerConn),
    Wait(Settling),
    Probe(PeerConn, BoxFuture<'static, bool>, oneshot::Sender<()>),
}

/// What a caller of [`Pool::get`] waits for, outside the lock.
enum Wait {
    Dial(Dial),
    Settling(Settling),
}

impl Pool {
    pub(crate) fn new(
        local_id: ServerId,
        timing: PoolTiming,
        connector: Connector,
        server: Arc<Server>,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        Self {
            local_id,
            entries: Mutex::new(HashMap::new()),
            timing,
            connector,
            server,
            peer_metrics: PeerRegistry::default(),
            shutdown,
            tasks,
        }
    }

    /// What dials: the endpoint and the TLS setup in force.
    pub(crate) fn connector(&self) -> &Connector {
        &self.connector
    }

    /// The metric handles of `peer`.
    pub(crate) fn peer_metrics(&self, peer: &ServerId) -> Arc<PeerMetrics> {
        self.peer_metrics.peer(peer)
    }

    /// Every peer's metric handles.
    pub(crate) fn peer_registry(&self) -> &PeerRegistry {
        &self.peer_metrics
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<ServerId, Entry>> {
        // Every critical section leaves the map consistent, so a poisoned lock is still sound.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live connection to `id`, dialling `target` if there is none, or if `target` is an
    /// address the connection was never confirmed for (the peer moved: the old connection
    /// may belong to a dead process). Concurrent callers share one dial; during the backoff
    /// after a failed dial, calls fail at once.
    pub(crate) async fn get(
        self: &Arc<Self>,
        id: &ServerId,
        target: &ServerAddress,
    ) -> Result<PeerConn, Error> {
        loop {
            let wait =
                {
                    let mut entries = self.entries();
                    let entry = entries.entry(id.clone()).or_default();
                    if let Some(settling) = &entry.settling {
                        Wait::Settling(settling.clone())
                    } else {
                        if let Some(conn) = self.usable(entry, target) {
                            return Ok(conn);
                        }
                        match &entry.dial {
                            Some(dial) => Wait::Dial(dial.clone()),
                            None => {
                                if let Some(retry_at) = entry.retry_at
                                    && Instant::now() < retry_at
                                {
                                    let failure = entry.last_failure.clone().unwrap_or(
                                        DialFailure::Unreachable(
                                            "backing off after a failed dial".to_owned(),
                                        ),
                                    );
                                    return Err(backing_off(failure, target, retry_at));
                                }
                                let addr = resolve(target)?;
                                let dial = self.spawn_dial(id.clone(), addr);
                                entry.dial = Some(dial.clone());
                                Wait::Dial(dial)
                            }
                        }
                    }
                };
            match wait {
                Wait::Settling(settling) => settling.await,
                Wait::Dial(dial) => return dial.await.map_err(|f| f.into_error(target)),
            }
        }
    }

    /// The live connection to `id` if calls to `target` may use it now, without waiting for
    /// anything: the fast path of [`get`](Self::get).
    pub(crate) fn ready(&self, id: &ServerId, target: &ServerAddress) -> Option<PeerConn> {
        let mut entries = self.entries();
        let entry = entries.get_mut(id)?;
        if entry.settling.is_some() {
            return None;
        }
        self.usable(entry, target)
    }

    /// The entry's connection if calls to `target` may use it; clears a dead one. The usual
    /// case, the address it is confirmed for, is one string comparison.
    fn usable(&self, entry: &mut Entry, target: &ServerAddress) -> Option<PeerConn> {
        let conn = entry.conn.clone()?;
        if !conn.is_alive() {
            // A connection closed by a refused certificate counts as a failed dial, so the
            // backoff applies to it too.
            if let Some(reason) = conn.conn.close_reason()
                && codes::is_authentication_failure(&reason)
            {
                // TLS 1.3: a dialler learns that its certificate was refused only now.
                if let Some(why) = codes::refused_by_peer(&reason) {
                    tracing::warn!("{target} refused this node: {why}");
                    metrics::handshake_failed("outgoing", metrics::HandshakeFailure::RefusedByPeer);
                }
                let failure = DialFailure::Authentication(format!(
                    "{target} closed the connection after the handshake: {}",
                    crate::sanitize::untrusted(&reason)
                ));
                self.record_failure(entry, failure);
            }
            // Dial again. Should the two sides ever have chosen differently (each probes on
            // its own, and a lost probe can split them), this is also how they converge: the
            // new connection replaces the old ones on both sides.
            entry.conn = None;
            entry.target = None;
            return None;
        }
        match &entry.target {
            Some(confirmed) if confirmed == target => Some(conn),
            Some(_) => match resolve(target) {
                Ok(addr) if conn.conn.remote_address() == addr => {
                    entry.target = Some(target.clone());
                    Some(conn)
                }
                // The peer moved: dial it there. The register step keeps the old connection
                // only if it still answers.
                Ok(_) => None,
                // Not an address to dial: the connection serves it, as any accepted one.
                Err(_) => Some(conn),
            },
            // A connection the peer dialled comes from its listening endpoint: a call naming
            // another address means the peer moved since (or is known by another address,
            // behind a NAT: one dial, and the tie-break keeps the live connection).
            None => match resolve(target) {
                Ok(addr) if conn.conn.remote_address() != addr => None,
                _ => {
                    entry.target = Some(target.clone());
                    Some(conn)
                }
            },
        }
    }

    /// Starts a dial of `id` at `addr` on a task of its own, so that it completes whoever
    /// waits for it.
    fn spawn_dial(self: &Arc<Self>, id: ServerId, addr: SocketAddr) -> Dial {
        let handle = self.tasks.spawn(self.clone().dial(id, addr));
        async move { handle.await.unwrap_or(Err(DialFailure::Shutdown)) }
            .boxed()
            .shared()
    }

    /// Dials `id` at `addr`, serves the connection, and records the outcome.
    async fn dial(
        self: Arc<Self>,
        id: ServerId,
        addr: SocketAddr,
    ) -> Result<PeerConn, DialFailure> {
        let outcome = if self.shutdown.is_cancelled() {
            Err(DialFailure::Shutdown)
        } else {
            tokio::select! {
                _ = self.shutdown.cancelled() => Err(DialFailure::Shutdown),
                dialled = self.connector.connect(&id, addr) => dialled,
            }
        };
        let outcome = outcome.map(|conn| {
            let conn = PeerConn::new(conn, self.local_id.clone(), self.peer_metrics(&id));
            self.tasks.spawn(
                self.server
                    .clone()
                    .serve_connection(id.clone(), conn.clone()),
            );
            conn
        });
        self.dial_finished(&id, outcome).await
    }

    /// Adds a connection `peer` dialled to this node (its identity checked), and serves it
    /// until it closes.
    ///
    /// Cancel-safe as [`register`](Self::register) is; cancelling it stops serving the
    /// connection.
    pub(crate) async fn accepted(&self, peer: ServerId, conn: quinn::Connection) {
        let conn = PeerConn::new(conn, peer.clone(), self.peer_metrics(&peer));
        self.register(&peer, conn.clone()).await;
        self.server.clone().serve_connection(peer, conn).await;
    }

    /// Records the outcome of a dial to `id` started by [`get`](Self::get).
    async fn dial_finished(
        &self,
        id: &ServerId,
        outcome: Result<PeerConn, DialFailure>,
    ) -> Result<PeerConn, DialFailure> {
        match outcome {
            Ok(conn) => {
                let addr = conn.conn.remote_address();
                let winner = self.register(id, conn).await;
                // Whichever won, calls to the address just dialled may use it.
                if let Some(entry) = self.entries().get_mut(id)
                    && entry.conn.as_ref().is_some_and(|c| c.same(&winner))
                {
                    entry.target = Some(ServerAddress::from(addr));
                }
                Ok(winner)
            }
            Err(failure) => {
                let mut entries = self.entries();
                let entry = entries.entry(id.clone()).or_default();
                entry.dial = None;
                self.record_failure(entry, failure.clone());
                match &failure {
                    DialFailure::Unreachable(_) => metrics::dial_failed(id, "unreachable"),
                    DialFailure::Authentication(_) => metrics::dial_failed(id, "authentication"),
                    DialFailure::Shutdown => {}
                }
                if let DialFailure::Unreachable(reason) = &failure {
                    let next = entry
                        .retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or_default();
                    // One line per failed dial, so once per backoff period; the first few
                    // are the peers a starting cluster has not started yet.
                    if entry.failures > QUIET_DIAL_FAILURES {
                        tracing::warn!(
                            "node {id} unreachable ({} failed dials): {reason}; next dial in {next:?}",
                            entry.failures
                        );
                    } else {
                        tracing::debug!(peer = %id, %reason, ?next, "dial failed");
                    }
                }
                Err(failure)
            }
        }
    }

    fn record_failure(&self, entry: &mut Entry, failure: DialFailure) {
        entry.failures = entry.failures.saturating_add(1);
        let delay = backoff(&self.timing, entry.failures, fastrand::f64());
        entry.retry_at = Some(Instant::now() + delay);
        entry.last_failure = Some(failure);
    }

    /// Adds a connection (dialled or accepted) to `peer` and returns the one callers should
    /// use. With two live connections to one peer, the rule of `docs/PROTOCOL.md` §3.3
    /// decides: the one dialled by the smaller server id wins (between two dialled by the
    /// same node, the newer), unless the winner is the older one and does not answer a probe
    /// (its peer crashed and restarted, or moved): then the new one wins. The loser is retired
    /// (closed once idle), a silent incumbent too, in case the probe was wrong.
    ///
    /// Cancel-safe: a cancelled probe leaves the incumbent in place and the new connection
    /// unregistered (it closes when its last handle drops).
    async fn register(&self, peer: &ServerId, new: PeerConn) -> PeerConn {
        loop {
            let step = {
                let mut entries = self.entries();
                let entry = entries.entry(peer.clone()).or_default();
                self.contest(peer, entry, &new)
            };
            let (incumbent, probe, done) = match step {
                Contest::Decided(winner) => return winner,
                // One contest at a time: wait for the other to settle, then decide.
                Contest::Wait(settling) => {
                    settling.await;
                    continue;
                }
                Contest::Probe(incumbent, probe, done) => (incumbent, probe, done),
            };
            let mut settled = Settled {
                pool: self,
                peer,
                armed: true,
                _done: done,
            };
            let answered = probe.await;
            settled.armed = false;
            let mut entries = self.entries();
            let entry = entries.entry(peer.clone()).or_default();
            entry.settling = None;
            return match entry.conn.clone() {
                Some(current) if current.same(&incumbent) && answered && current.is_alive() => {
                    self.retire(peer, entry, new);
                    current
                }
                Some(current) if current.same(&incumbent) => {
                    tracing::info!(
                        %peer,
                        remote = %incumbent.conn.remote_address(),
                        "the old connection did not answer a probe; the peer's new one replaces it"
                    );
                    // Retired, not closed: should the probe have been wrong (a peer too busy
                    // to answer in time), what runs on it still finishes.
                    self.install(peer, entry, new, Some(incumbent))
                }
                // The incumbent went away meanwhile: decide again against what is there now.
                _ => {
                    drop(entries);
                    continue;
                }
            };
        }
    }

    /// The first step of [`register`](Self::register), under the lock.
    fn contest(&self, peer: &ServerId, entry: &mut Entry, new: &PeerConn) -> Contest {
        if let Some(settling) = &entry.settling {
            return Contest::Wait(settling.clone());
        }
        if new.dialer == self.local_id {
            entry.dial = None;
            entry.failures = 0;
            entry.retry_at = None;
            entry.last_failure = None;
        }
        let incumbent = match entry.conn.clone() {
            Some(existing) if existing.is_alive() && !existing.same(new) => existing,
            _ => return Contest::Decided(self.install(peer, entry, new.clone(), None)),
        };
        if new.dialer <= incumbent.dialer {
            let winner = self.install(peer, entry, new.clone(), Some(incumbent));
            return Contest::Decided(winner);
        }
        let timeout = self.probe_timeout(&incumbent);
        let probe = probe::probe(incumbent.conn.clone(), timeout).boxed();
        // Resolves when `done` is dropped, which happens only once `settling` is cleared (see
        // `Settled`): a waiter woken by it never finds the mark still set, and never spins.
        let (done, settled) = oneshot::channel::<()>();
        entry.settling = Some(settled.map(|_| ()).boxed().shared());
        Contest::Probe(incumbent, probe, done)
    }

    /// Makes `winner` the connection calls use, retiring `loser` if there is one.
    fn install(
        &self,
        peer: &ServerId,
        entry: &mut Entry,
        winner: PeerConn,
        loser: Option<PeerConn>,
    ) -> PeerConn {
        if let Some(loser) = loser {
            self.retire(peer, entry, loser);
        }
        entry.target = (winner.dialer == self.local_id)
            .then(|| ServerAddress::from(winner.conn.remote_address()));
        entry.conn = Some(winner.clone());
        winner
    }

    /// Retires a connection that lost the tie-break: it closes once idle after a grace
    /// period. At most [`MAX_RETIRING_PER_PEER`] wait; beyond that the oldest closes at once.
    fn retire(&self, peer: &ServerId, entry: &mut Entry, loser: PeerConn) {
        tracing::debug!(
            %peer,
            retired_dialled_by = %loser.dialer,
            "two connections to one peer; retiring one"
        );
        loser.mark_retiring();
        entry.retiring.retain(PeerConn::is_alive);
        entry.retiring.push(loser.clone());
        if entry.retiring.len() > MAX_RETIRING_PER_PEER {
            let oldest = entry.retiring.remove(0);
            tracing::warn!(
                %peer,
                limit = MAX_RETIRING_PER_PEER,
                "too many connections from one peer; closing the oldest retiring one"
            );
            oldest
                .conn
                .close(conn::DUPLICATE, b"too many connections from one peer");
        }
        let grace = self.timing.retire_grace;
        let shutdown = self.shutdown.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = retire(loser, grace) => {}
            }
        });
    }

    /// How long a probe of `conn` may wait for an answer.
    fn probe_timeout(&self, conn: &PeerConn) -> Duration {
        probe::probe_timeout(&conn.conn, self.timing.probe_max)
    }

    /// Watches a call on `conn` that must be answered by `deadline`: if the call is dropped
    /// unanswered after its deadline, the connection is probed on a task of the pool's, and
    /// closed if the peer does not answer. That is how a node learns that a peer restarted
    /// when the restarted process cannot reset the connection (it had dialled it and its
    /// handshake connection ID carries no reset token, or its reset keys changed).
    ///
    /// Costs nothing per call beyond the struct: it borrows, and reads the connection's RTT
    /// (a lock in quinn) only when it fires.
    pub(crate) fn watchdog<'a>(
        &'a self,
        conn: &'a quinn::Connection,
        deadline: Instant,
    ) -> Watchdog<'a> {
        Watchdog::new(conn, &self.tasks, deadline, self.timing.probe_max)
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

    /// Forgets every connection (on shutdown).
    pub(crate) fn clear(&self) {
        self.entries().clear();
    }

    /// Every [`ADDRESS_CHECK_INTERVAL`] until shutdown: [`follow_address_change`].
    ///
    /// [`follow_address_change`]: Self::follow_address_change
    pub(crate) async fn watch_local_addresses(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ADDRESS_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tick.tick() => self.follow_address_change(),
            }
        }
    }

    /// Replaces the connections on a local address this node no longer has. Its peers drop
    /// what it sends from a new address on the connections they dialled (in QUIC only the
    /// dialler migrates), and quinn keeps sending from the old address on those this node
    /// dialled. Each such connection is closed with `MOVED` and the peer dialled at once, at
    /// the address of the connection (a node dials from its listening endpoint, so that is
    /// where the peer listens).
    pub(crate) fn follow_address_change(self: &Arc<Self>) {
        let mut gone: HashMap<std::net::IpAddr, bool> = HashMap::new();
        let mut stranded = Vec::new();
        {
            let mut entries = self.entries();
            for (peer, entry) in entries.iter_mut() {
                let Some(conn) = entry.conn.clone() else {
                    continue;
                };
                if !conn.is_alive() {
                    continue;
                }
                let Some(ip) = conn.conn.local_ip() else {
                    continue;
                };
                if !*gone.entry(ip).or_insert_with(|| !is_local_address(ip)) {
                    continue;
                }
                entry.conn = None;
                entry.target = None;
                stranded.push((peer.clone(), conn));
            }
        }
        for (peer, conn) in stranded {
            let remote = conn.conn.remote_address();
            tracing::info!(
                %peer,
                %remote,
                "this node's address changed under its connection to the peer; dialling it again"
            );
            conn.conn.close(conn::MOVED, b"address changed");
            let mut entries = self.entries();
            let entry = entries.entry(peer.clone()).or_default();
            if entry.dial.is_none() && entry.conn.is_none() {
                entry.dial = Some(self.spawn_dial(peer, remote));
            }
        }
    }
}

/// How often [`Pool::watch_local_addresses`] looks for a lost local address: the longest a
/// peer waits, after this node's address changed, for this node to dial it anew.
const ADDRESS_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Whether `ip` is an address of this host: binding a socket to it succeeds.
fn is_local_address(ip: std::net::IpAddr) -> bool {
    if ip.is_unspecified() {
        return true;
    }
    match std::net::UdpSocket::bind(SocketAddr::new(ip, 0)) {
        Ok(_) => true,
        // Anything else (no free port, no permission) says nothing of the address.
        Err(e) => e.kind() != std::io::ErrorKind::AddrNotAvailable,
    }
}

/// Clears an entry's `settling` mark if the register that set it is cancelled mid-probe
/// (otherwise the register clears it when it decides, under the same lock).
///
/// `_done` drops after `drop` has run (fields drop last), so the calls and registrations
/// waiting for the contest are woken only once the mark is cleared.
struct Settled<'a> {
    pool: &'a Pool,
    peer: &'a ServerId,
    armed: bool,
    _done: oneshot::Sender<()>,
}

impl Drop for Settled<'_> {
    fn drop(&mut self) {
        if self.armed
            && let Some(entry) = self.pool.entries().get_mut(self.peer)
        {
            entry.settling = None;
        }
    }
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

/// The wait after the `failures`-th failed dial in a row: the base doubled per failure up to
/// the maximum, of which a random half (`unit` in `[0, 1)`) is taken off, so that the nodes
/// that lost a peer together do not all dial it again in the same instant.
fn backoff(timing: &PoolTiming, failures: u32, unit: f64) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = timing
        .backoff_base
        .saturating_mul(1 << exponent)
        .min(timing.backoff_max);
    ceiling.mul_f64(1.0 - unit.clamp(0.0, 1.0) / 2.0)
}

/// A peer address must be `ip:port`: the transport does not resolve names on the RPC path.
fn resolve(target: &ServerAddress) -> Result<SocketAddr, Error> {
    target.as_str().parse().map_err(|_| Error::Unreachable {
        peer: target.clone(),
        reason: "not an ip:port socket address".to_owned(),
    })
}

/// Closes a connection that lost the tie-break: after `grace` (time for the peer to have
/// moved its new calls to the winner), once this node has nothing under way on it. Pipelines
/// move to the winner at their next append (see `quic::pipeline`), so what still runs on the
/// loser finishes: a snapshot in the middle of its data is not cut.
async fn retire(loser: PeerConn, grace: Duration) {
    tokio::time::sleep(grace).await;
    loser.wait_idle().await;
    loser.conn.close(conn::DUPLICATE, b"duplicate connection");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> PoolTiming {
        PoolTiming {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            probe_max: Duration::from_secs(1),
            retire_grace: Duration::from_secs(1),
        }
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_takes_off_up_to_half_at_random() {
        let t = timing();
        assert_eq!(backoff(&t, 1, 0.0), Duration::from_millis(100));
        assert_eq!(backoff(&t, 2, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(&t, 4, 0.0), Duration::from_millis(800));
        assert_eq!(backoff(&t, 40, 0.0), Duration::from_secs(10));
        assert_eq!(backoff(&t, 4, 1.0), Duration::from_millis(400));
        assert_eq!(backoff(&t, 4, 0.5), Duration::from_millis(600));
        // Two nodes that failed together wait different times.
        let waits: std::collections::HashSet<Duration> =
            (0..32).map(|_| backoff(&t, 3, fastrand::f64())).collect();
        assert!(waits.len() > 1);
        assert!(
            waits
                .iter()
                .all(|w| *w > Duration::from_millis(200) && *w <= Duration::from_millis(400))
        );
    }
}
