//! Handshake admission: which incoming connection attempts this node spends crypto work and
//! memory on (`docs/PROTOCOL.md` §3.7).
//!
//! Nothing authenticated can be asked of a peer before its handshake, so every decision here
//! rests on what quinn knows of an [`quinn::Incoming`] before [`quinn::Incoming::accept`]: its
//! source address, and whether that address was validated by a QUIC Retry. Deciding costs no
//! crypto work and no per-connection state:
//!
//! 1. With `handshake_retry_threshold` or more handshakes in progress, an attempt whose source
//!    address is not validated gets a Retry: a stateless packet the client must echo from the
//!    same address. A spoofed or fire-and-forget flood then holds nothing on this node.
//! 2. Beyond `max_handshakes` in progress in all, or `max_handshakes_per_address` from the
//!    attempt's source address, the attempt is refused (a CONNECTION_REFUSED close, no crypto).
//! 3. Each source address may start `handshake_rate_per_address` handshakes per second, with a
//!    burst: a peer re-dialling in a loop is refused before its handshakes cost anything.
//!
//! Source addresses are IP address and UDP port: every node dials from its one endpoint, so
//! nodes sharing a host (or a NAT address) do not share limits.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::codes;
use super::metrics::{self, HandshakeFailure};
use super::pool::Pool;
use super::stats::Counters;
use crate::command::ServerId;
use crate::sanitize::untrusted;
use crate::tls::peer_spiffe_id;

/// The admission limits, from `QuicConfig`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Handshakes in progress from which unvalidated addresses get a Retry.
    pub(super) retry_threshold: usize,
    /// Handshakes in progress at most, over all source addresses.
    pub(super) max_total: usize,
    /// Handshakes in progress at most from one source address.
    pub(super) max_per_address: usize,
    /// Handshakes one source address may start per second, on average.
    pub(super) rate_per_second: f64,
    /// Handshakes one source address may start at once after a quiet spell.
    pub(super) burst: f64,
}

/// What to do with one incoming connection attempt.
#[derive(Debug)]
enum Decision {
    /// Do the handshake; the guard counts it as in progress until it drops.
    Accept(InProgress),
    /// Ask the client to prove its address first.
    Retry,
    /// Refuse it, for the reason given.
    Refuse(&'static str),
}

/// What admission remembers of one source address.
#[derive(Debug)]
struct Source {
    in_progress: usize,
    /// Handshakes this address may still start now (a token bucket).
    tokens: f64,
    refilled: Instant,
}

#[derive(Debug)]
struct State {
    in_progress: usize,
    sources: HashMap<SocketAddr, Source>,
    /// When a refusal was last logged as a warning (refusals come in floods).
    last_warning: Option<Instant>,
}

/// The node's handshake admission: limits, and the handshakes in progress per source.
#[derive(Debug)]
pub(super) struct Admission {
    limits: Limits,
    state: Mutex<State>,
    stats: Arc<Counters>,
}

/// Sources remembered beyond which the idle ones (nothing in progress, a full bucket) are
/// forgotten. An idle source's state is its default, so forgetting it changes no decision.
const SOURCES_BEFORE_SWEEP: usize = 1024;

/// At most one warning about refused handshakes per this interval; the rest are debug lines
/// (the counters in `TransportStats` have them all).
const WARNING_INTERVAL: Duration = Duration::from_secs(10);

impl Admission {
    pub(super) fn new(limits: Limits, stats: Arc<Counters>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            state: Mutex::new(State {
                in_progress: 0,
                sources: HashMap::new(),
                last_warning: None,
            }),
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides on an attempt from `remote` at `now`. No I/O, a short lock.
    fn decide(
        self: &Arc<Self>,
        remote: SocketAddr,
        validated: bool,
        may_retry: bool,
        now: Instant,
    ) -> Decision {
        let limits = self.limits;
        let mut state = self.lock();
        if !validated && may_retry && state.in_progress >= limits.retry_threshold {
            return Decision::Retry;
        }
        if state.in_progress >= limits.max_total {
            return Decision::Refuse("too many handshakes in progress");
        }
        if state.sources.len() >= SOURCES_BEFORE_SWEEP && !state.sources.contains_key(&remote) {
            state
                .sources
                .retain(|_, source| source.in_progress > 0 || !source.refill(limits, now));
        }
        let source = state.sources.entry(remote).or_insert(Source {
            in_progress: 0,
            tokens: limits.burst,
            refilled: now,
        });
        source.refill(limits, now);
        if source.in_progress >= limits.max_per_address {
            return Decision::Refuse("too many handshakes in progress from this address");
        }
        if source.tokens < 1.0 {
            return Decision::Refuse("handshakes from this address too frequent");
        }
        source.tokens -= 1.0;
        source.in_progress += 1;
        state.in_progress += 1;
        self.stats.handshake_started();
        Decision::Accept(InProgress {
            admission: self.clone(),
            remote,
        })
    }

    /// Logs a refusal: a warning at most once per [`WARNING_INTERVAL`], else a debug line.
    fn log_refusal(&self, remote: SocketAddr, why: &'static str, now: Instant) {
        let warn = {
            let mut state = self.lock();
            let due = state
                .last_warning
                .is_none_or(|last| now.duration_since(last) >= WARNING_INTERVAL);
            if due {
                state.last_warning = Some(now);
            }
            due
        };
        if warn {
            tracing::warn!(
                %remote,
                why,
                "refusing incoming handshakes (further refusals within 10 s are logged at debug level)"
            );
        } else {
            tracing::debug!(%remote, why, "incoming handshake refused");
        }
    }
}

impl Source {
    /// Adds the tokens earned since the last refill; true when the bucket is full.
    fn refill(&mut self, limits: Limits, now: Instant) -> bool {
        let earned =
            now.saturating_duration_since(self.refilled).as_secs_f64() * limits.rate_per_second;
        self.tokens = (self.tokens + earned).min(limits.burst);
        self.refilled = now;
        self.tokens >= limits.burst
    }
}

/// One handshake in progress, counted until it drops.
#[derive(Debug)]
struct InProgress {
    admission: Arc<Admission>,
    remote: SocketAddr,
}

impl Drop for InProgress {
    fn drop(&mut self) {
        let mut state = self.admission.lock();
        state.in_progress = state.in_progress.saturating_sub(1);
        if let Some(source) = state.sources.get_mut(&self.remote) {
            source.in_progress = source.in_progress.saturating_sub(1);
        }
        drop(state);
        self.admission.stats.handshake_ended();
    }
}

/// Connection attempts quinn holds for the accept loop at once, beyond which it refuses them
/// itself. The loop decides on each without awaiting anything, so only a burst queues here.
const MAX_PENDING_ATTEMPTS: usize = 1024;

/// Bytes quinn buffers per attempt awaiting a decision, besides its first datagram: room for
/// the rest of a large ClientHello. Beyond it datagrams are dropped (the client resends).
const ATTEMPT_BUFFER: u64 = 16 * 1024;

/// Bytes quinn buffers for all attempts awaiting a decision, besides their first datagrams.
const ATTEMPT_BUFFER_TOTAL: u64 = 1024 * 1024;

/// Bounds what quinn holds for connection attempts before the accept loop decides on them
/// (its defaults allow 65,536 attempts and 100 MiB of buffered datagrams).
pub(super) fn configure(server: &mut quinn::ServerConfig) {
    server
        .max_incoming(MAX_PENDING_ATTEMPTS)
        .incoming_buffer_size(ATTEMPT_BUFFER)
        .incoming_buffer_size_total(ATTEMPT_BUFFER_TOTAL);
}

/// The accepting side of a node: what it admits, and where admitted connections go.
pub(super) struct Acceptor {
    pub(super) pool: Arc<Pool>,
    pub(super) limits: Limits,
    /// The cluster every peer's certificate must name (a node's cluster never changes).
    pub(super) cluster: String,
    pub(super) handshake_timeout: Duration,
    pub(super) stats: Arc<Counters>,
    pub(super) shutdown: tokio_util::sync::CancellationToken,
    pub(super) tasks: tokio_util::task::TaskTracker,
}

/// Accepts connections until shutdown: decides on each attempt at once, then runs each
/// admitted handshake on its own task.
pub(super) async fn accept_loop(acceptor: Arc<Acceptor>, endpoint: quinn::Endpoint) {
    let admission = Admission::new(acceptor.limits, acceptor.stats.clone());
    loop {
        let incoming = tokio::select! {
            _ = acceptor.shutdown.cancelled() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let remote = incoming.remote_address();
        let now = Instant::now();
        match admission.decide(
            remote,
            incoming.remote_address_validated(),
            incoming.may_retry(),
            now,
        ) {
            Decision::Accept(guard) => {
                acceptor
                    .tasks
                    .spawn(accept(acceptor.clone(), incoming, guard));
            }
            Decision::Retry => {
                acceptor.stats.handshake_retried();
                tracing::trace!(%remote, "asking an incoming handshake to validate its address");
                if let Err(e) = incoming.retry() {
                    // Only when the attempt already carried a Retry token, which `may_retry`
                    // excluded; refuse rather than drop it silently.
                    e.into_incoming().refuse();
                }
            }
            Decision::Refuse(why) => {
                acceptor.stats.handshake_refused();
                admission.log_refusal(remote, why, now);
                incoming.refuse();
            }
        }
    }
}

/// Runs one admitted handshake, checks who the peer is, and serves the connection.
async fn accept(acceptor: Arc<Acceptor>, incoming: quinn::Incoming, in_progress: InProgress) {
    let remote = incoming.remote_address();
    let timeout = acceptor.handshake_timeout;
    let handshake = tokio::select! {
        _ = acceptor.shutdown.cancelled() => return,
        handshake = tokio::time::timeout(timeout, incoming) => handshake,
    };
    drop(in_progress);
    let conn = match handshake {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) if codes::is_authentication_failure(&e) => {
            let peer = format_args!("the peer dialling from {remote}");
            super::connector::handshake_refused("incoming", peer, &e);
            return;
        }
        Ok(Err(e)) => {
            tracing::warn!(%remote, error = %untrusted(&e), "incoming handshake failed");
            metrics::handshake_failed("incoming", HandshakeFailure::Failed);
            return;
        }
        Err(_) => {
            tracing::warn!(%remote, "incoming handshake timed out");
            metrics::handshake_failed("incoming", HandshakeFailure::Timeout);
            return;
        }
    };
    // The TLS verifier proved the chain and the cluster; the node id names the peer.
    let peer = match peer_spiffe_id(conn.peer_identity()) {
        Ok(id) if id.cluster() == acceptor.cluster => ServerId::from(id.node()),
        Ok(id) => {
            tracing::warn!(%remote, peer = %id, "refusing a peer of another cluster");
            conn.close(codes::conn::IDENTITY, b"wrong cluster");
            metrics::handshake_failed("incoming", HandshakeFailure::WrongCluster);
            return;
        }
        Err(e) => {
            tracing::warn!(%remote, error = %e, "refusing a peer without a usable identity");
            conn.close(codes::conn::IDENTITY, b"no identity");
            metrics::handshake_failed("incoming", HandshakeFailure::NoIdentity);
            return;
        }
    };
    tracing::debug!(%remote, %peer, "accepted connection");
    metrics::connection_opened(&peer, "accepted");
    acceptor.pool.accepted(peer, conn).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            retry_threshold: 3,
            max_total: 5,
            max_per_address: 2,
            rate_per_second: 10.0,
            burst: 4.0,
        }
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 1], port))
    }

    #[test]
    fn per_address_and_total_caps_then_retry() {
        let admission = Admission::new(limits(), Arc::default());
        let now = Instant::now();
        let a1 = admission.decide(addr(1), false, true, now);
        let a2 = admission.decide(addr(1), false, true, now);
        assert!(matches!(a1, Decision::Accept(_)) && matches!(a2, Decision::Accept(_)));
        // The third from the same address is refused: two in progress from it.
        assert!(matches!(
            admission.decide(addr(1), true, false, now),
            Decision::Refuse(_)
        ));
        let b1 = admission.decide(addr(2), false, true, now);
        assert!(matches!(b1, Decision::Accept(_)));
        // Three in progress: unvalidated addresses get a Retry, validated ones go on.
        assert!(matches!(
            admission.decide(addr(3), false, true, now),
            Decision::Retry
        ));
        let c1 = admission.decide(addr(3), true, false, now);
        let d1 = admission.decide(addr(4), true, false, now);
        assert!(matches!(c1, Decision::Accept(_)) && matches!(d1, Decision::Accept(_)));
        // Five in progress: refused whatever the address.
        assert!(matches!(
            admission.decide(addr(5), true, false, now),
            Decision::Refuse("too many handshakes in progress")
        ));
        assert_eq!(admission.stats.stats(0).handshakes_in_progress, 5);
        drop((a1, a2, b1, c1, d1));
        assert_eq!(admission.lock().in_progress, 0);
        assert_eq!(admission.stats.stats(0).handshakes_in_progress, 0);
        assert_eq!(
            admission.stats.stats(0).handshakes_in_progress_high_water,
            5
        );
    }

    #[test]
    fn a_re_dialling_address_is_held_to_its_rate() {
        let admission = Admission::new(limits(), Arc::default());
        let start = Instant::now();
        // The burst of 4 passes (each handshake ending at once), the fifth is refused.
        for _ in 0..4 {
            assert!(matches!(
                admission.decide(addr(1), true, false, start),
                Decision::Accept(_)
            ));
        }
        assert!(matches!(
            admission.decide(addr(1), true, false, start),
            Decision::Refuse("handshakes from this address too frequent")
        ));
        // Another address has its own bucket.
        assert!(matches!(
            admission.decide(addr(2), true, false, start),
            Decision::Accept(_)
        ));
        // 10 per second: one more after 100 ms, not two.
        let later = start + Duration::from_millis(100);
        assert!(matches!(
            admission.decide(addr(1), true, false, later),
            Decision::Accept(_)
        ));
        assert!(matches!(
            admission.decide(addr(1), true, false, later),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn idle_sources_are_forgotten() {
        let admission = Admission::new(limits(), Arc::default());
        let start = Instant::now();
        for port in 0..SOURCES_BEFORE_SWEEP as u16 {
            drop(admission.decide(addr(port), true, false, start));
        }
        assert_eq!(admission.lock().sources.len(), SOURCES_BEFORE_SWEEP);
        // A second later every bucket is full again: all are forgotten but the new one.
        let later = start + Duration::from_secs(1);
        drop(admission.decide(addr(u16::MAX), true, false, later));
        assert_eq!(admission.lock().sources.len(), 1);
    }
}
