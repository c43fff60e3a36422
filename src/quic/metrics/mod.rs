//! What a [`QuicTransport`](super::QuicTransport) reports through the [`metrics`] facade: per
//! peer RPC outcomes and latencies (both sides), snapshot bytes, connections, path statistics
//! sampled from quinn, handshake failures, and the node-wide [`TransportStats`] mirrored.
//!
//! The library installs no recorder: without one every call here is a no-op. The application
//! installs the exporter it runs (`metrics-exporter-prometheus`, StatsD, OpenTelemetry); the
//! cluster example serves Prometheus text with `--metrics ADDR`. The names, units and labels
//! are listed in the README ("Metrics").
//!
//! Cost on the RPC path: each peer's [`PeerMetrics`] (which every connection to the peer
//! carries) counts its RPCs by kind and outcome in atomics of its own, published to the
//! recorder by the sampler every [`SAMPLE_INTERVAL`] (a recorder's counter costs several times
//! a plain atomic); latencies go to the recorder's histogram at once (the facade has no way to
//! hand over a bucketed histogram), through handles registered once per peer: no label
//! built, no lookup. So a call costs one atomic increment and one histogram record, a request
//! served one increment and (heartbeats excepted) one record. What quinn knows of a connection
//! (bytes, RTT, loss, congestion window, MTU) and the node-wide counters are read by the same
//! sampler, one task per node.
//!
//! Labels are bounded: `peer` is a server id proven by a certificate of the cluster (or one
//! this node's engine dialled), `kind`, `outcome`, `direction` and `reason` take the fixed
//! values listed here. Nothing unbounded (a stream id, an address, an error text) is a label.

mod sampler;

pub(crate) use sampler::sample;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, SharedString};

use super::stats::TransportStats;
use crate::command::{RpcKind, ServerId};
use crate::error::Error;

/// How often the sampler reads quinn's connection statistics and the node-wide counters.
pub(crate) const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);

/// Metric names, with their unit in the name (Prometheus conventions).
pub(crate) mod name {
    /// Counter: RPCs this node called, by `peer`, `kind`, `outcome`.
    pub(crate) const RPC_CALLS: &str = "quicraft_rpc_calls_total";
    /// Histogram: seconds from the call to its answer, by `peer`, `kind` (answered calls).
    pub(crate) const RPC_CALL_DURATION: &str = "quicraft_rpc_call_duration_seconds";
    /// Counter: RPCs peers called on this node, by `peer`, `kind`, `outcome`.
    pub(crate) const RPC_SERVED: &str = "quicraft_rpc_served_total";
    /// Histogram: seconds from a request read whole to its answer written, by `peer`, `kind`.
    pub(crate) const RPC_SERVE_DURATION: &str = "quicraft_rpc_serve_duration_seconds";
    /// Counter: snapshots sent (answered), by `peer`.
    pub(crate) const SNAPSHOTS_SENT: &str = "quicraft_snapshots_sent_total";
    /// Counter: snapshot data bytes sent, by `peer`, counted as the source is read.
    pub(crate) const SNAPSHOT_SENT_BYTES: &str = "quicraft_snapshot_sent_bytes_total";
    /// Counter: snapshots received (the consumer answered), by `peer`.
    pub(crate) const SNAPSHOTS_RECEIVED: &str = "quicraft_snapshots_received_total";
    /// Counter: snapshot data bytes the consumer read, by `peer`.
    pub(crate) const SNAPSHOT_RECEIVED_BYTES: &str = "quicraft_snapshot_received_bytes_total";
    /// Counter: heartbeat copies sent because an answer was late, by `peer`.
    pub(crate) const HEARTBEAT_COPIES: &str = "quicraft_heartbeat_copies_total";
    /// Counter: heartbeat copies answered first, by `peer`.
    pub(crate) const HEARTBEAT_COPIES_WON: &str = "quicraft_heartbeat_copies_won_total";
    /// Counter: connections established, by `peer`, `direction` (`dialled`, `accepted`).
    pub(crate) const CONNECTIONS_OPENED: &str = "quicraft_connections_opened_total";
    /// Counter: failed dials, by `peer`, `reason` (`unreachable`, `authentication`).
    pub(crate) const DIAL_FAILURES: &str = "quicraft_dial_failures_total";
    /// Counter: failed handshakes, by `direction` (`incoming`, `outgoing`) and `reason`.
    pub(crate) const HANDSHAKE_FAILURES: &str = "quicraft_handshake_failures_total";
    /// Counter: UDP bytes sent on the peer's connections (QUIC overhead included), by `peer`.
    pub(crate) const SENT_BYTES: &str = "quicraft_sent_bytes_total";
    /// Counter: UDP bytes received on the peer's connections, by `peer`.
    pub(crate) const RECEIVED_BYTES: &str = "quicraft_received_bytes_total";
    /// Counter: QUIC packets sent, by `peer`.
    pub(crate) const PATH_SENT_PACKETS: &str = "quicraft_path_sent_packets_total";
    /// Counter: QUIC packets declared lost, by `peer`.
    pub(crate) const PATH_LOST_PACKETS: &str = "quicraft_path_lost_packets_total";
    /// Counter: congestion events (the window was cut), by `peer`.
    pub(crate) const PATH_CONGESTION_EVENTS: &str = "quicraft_path_congestion_events_total";
    /// Gauge: the connection's smoothed round-trip time, by `peer`.
    pub(crate) const PATH_RTT: &str = "quicraft_path_rtt_seconds";
    /// Gauge: the congestion window, by `peer`.
    pub(crate) const PATH_CWND: &str = "quicraft_path_cwnd_bytes";
    /// Gauge: the path MTU (largest UDP payload) in use, by `peer`.
    pub(crate) const PATH_MTU: &str = "quicraft_path_mtu_bytes";
    /// Gauge: bytes of the peer's frame budget in use, by `peer`.
    pub(crate) const PEER_FRAME_BYTES: &str = "quicraft_peer_frame_buffered_bytes";
    /// Gauge: `TransportStats::frame_bytes_buffered`.
    pub(crate) const FRAME_BYTES: &str = "quicraft_frame_buffered_bytes";
    /// Gauge: `TransportStats::frame_bytes_buffered_high_water`.
    pub(crate) const FRAME_BYTES_HIGH_WATER: &str = "quicraft_frame_buffered_high_water_bytes";
    /// Gauge: `TransportStats::consumer_queued`.
    pub(crate) const CONSUMER_QUEUED: &str = "quicraft_consumer_queued_rpcs";
    /// Gauge: `TransportStats::request_streams`.
    pub(crate) const REQUEST_STREAMS: &str = "quicraft_request_streams";
    /// Gauge: `TransportStats::handshakes_in_progress`.
    pub(crate) const HANDSHAKES_IN_PROGRESS: &str = "quicraft_handshakes_in_progress";
    /// Gauge: `TransportStats::handshakes_in_progress_high_water`.
    pub(crate) const HANDSHAKES_IN_PROGRESS_HIGH_WATER: &str =
        "quicraft_handshakes_in_progress_high_water";
    /// Counter: `TransportStats::handshakes_accepted`.
    pub(crate) const HANDSHAKES_ACCEPTED: &str = "quicraft_handshakes_accepted_total";
    /// Counter: `TransportStats::handshakes_retried`.
    pub(crate) const HANDSHAKES_RETRIED: &str = "quicraft_handshakes_retried_total";
    /// Counter: `TransportStats::handshakes_refused`.
    pub(crate) const HANDSHAKES_REFUSED: &str = "quicraft_handshakes_refused_total";
    /// Counter: `TransportStats::heartbeat_copies`, over all peers.
    pub(crate) const NODE_HEARTBEAT_COPIES: &str = "quicraft_node_heartbeat_copies_total";
    /// Counter: `TransportStats::heartbeat_copies_won`, over all peers.
    pub(crate) const NODE_HEARTBEAT_COPIES_WON: &str = "quicraft_node_heartbeat_copies_won_total";
}

/// What each metric is, for the recorder (Prometheus shows it as `# HELP`).
const DESCRIPTIONS: [(&str, &str); 33] = [
    (
        name::RPC_CALLS,
        "RPCs this node called, by peer, kind and outcome",
    ),
    (
        name::RPC_CALL_DURATION,
        "Seconds from a call to its answer (answered calls)",
    ),
    (
        name::RPC_SERVED,
        "RPCs peers called on this node, by peer, kind and outcome",
    ),
    (
        name::RPC_SERVE_DURATION,
        "Seconds from a request read whole to its answer ready",
    ),
    (
        name::SNAPSHOTS_SENT,
        "Snapshots sent and answered with success",
    ),
    (
        name::SNAPSHOT_SENT_BYTES,
        "Snapshot data bytes sent, as read from the source",
    ),
    (
        name::SNAPSHOTS_RECEIVED,
        "Snapshots received and answered with success",
    ),
    (
        name::SNAPSHOT_RECEIVED_BYTES,
        "Snapshot data bytes the consumer read",
    ),
    (
        name::HEARTBEAT_COPIES,
        "Heartbeat copies sent because an answer was late",
    ),
    (
        name::HEARTBEAT_COPIES_WON,
        "Heartbeat copies answered first",
    ),
    (
        name::CONNECTIONS_OPENED,
        "Connections established, dialled or accepted",
    ),
    (name::DIAL_FAILURES, "Failed dials, by reason"),
    (
        name::HANDSHAKE_FAILURES,
        "Failed handshakes, by direction and reason",
    ),
    (name::SENT_BYTES, "UDP bytes sent on the peer's connections"),
    (
        name::RECEIVED_BYTES,
        "UDP bytes received on the peer's connections",
    ),
    (name::PATH_SENT_PACKETS, "QUIC packets sent to the peer"),
    (
        name::PATH_LOST_PACKETS,
        "QUIC packets to the peer declared lost",
    ),
    (
        name::PATH_CONGESTION_EVENTS,
        "Congestion events on the peer's connections",
    ),
    (
        name::PATH_RTT,
        "Smoothed round-trip time to the peer, in seconds",
    ),
    (
        name::PATH_CWND,
        "Congestion window towards the peer, in bytes",
    ),
    (
        name::PATH_MTU,
        "Path MTU (largest UDP payload) towards the peer, in bytes",
    ),
    (
        name::PEER_FRAME_BYTES,
        "Bytes of the peer's frame budget in use",
    ),
    (
        name::FRAME_BYTES,
        "Bytes held for incoming requests, over all peers",
    ),
    (
        name::FRAME_BYTES_HIGH_WATER,
        "Peak of quicraft_frame_buffered_bytes since start",
    ),
    (name::CONSUMER_QUEUED, "RPCs queued for the consumer"),
    (name::REQUEST_STREAMS, "Request streams being served"),
    (
        name::HANDSHAKES_IN_PROGRESS,
        "Incoming handshakes in progress",
    ),
    (
        name::HANDSHAKES_IN_PROGRESS_HIGH_WATER,
        "Peak of incoming handshakes in progress",
    ),
    (name::HANDSHAKES_ACCEPTED, "Incoming handshakes admitted"),
    (
        name::HANDSHAKES_RETRIED,
        "Incoming connection attempts sent a Retry",
    ),
    (
        name::HANDSHAKES_REFUSED,
        "Incoming connection attempts refused before crypto work",
    ),
    (
        name::NODE_HEARTBEAT_COPIES,
        "Heartbeat copies sent, over all peers",
    ),
    (
        name::NODE_HEARTBEAT_COPIES_WON,
        "Heartbeat copies answered first, over all peers",
    ),
];

/// Describes every metric to the recorder installed now (once per process).
pub(crate) fn describe() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        for (name, text) in DESCRIPTIONS {
            if name.ends_with("_total") {
                metrics::describe_counter!(name, text);
            } else if name.ends_with("_seconds") && name.contains("_duration_") {
                metrics::describe_histogram!(name, text);
            } else {
                metrics::describe_gauge!(name, text);
            }
        }
    });
}

/// The `kind` label: the RPC kinds, with heartbeats (AppendEntries without entries) apart
/// from appends so their latencies are not mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Heartbeat,
    AppendEntries,
    RequestVote,
    RequestPreVote,
    InstallSnapshot,
    TimeoutNow,
}

const KINDS: usize = 6;

impl Kind {
    const ALL: [Self; KINDS] = [
        Self::Heartbeat,
        Self::AppendEntries,
        Self::RequestVote,
        Self::RequestPreVote,
        Self::InstallSnapshot,
        Self::TimeoutNow,
    ];
}

impl Kind {
    /// The label of an RPC of `kind`; `heartbeat` tells an empty AppendEntries.
    pub(crate) fn of(kind: RpcKind, heartbeat: bool) -> Self {
        match kind {
            RpcKind::AppendEntries if heartbeat => Self::Heartbeat,
            RpcKind::AppendEntries => Self::AppendEntries,
            RpcKind::RequestVote => Self::RequestVote,
            RpcKind::RequestPreVote => Self::RequestPreVote,
            RpcKind::InstallSnapshot => Self::InstallSnapshot,
            RpcKind::TimeoutNow => Self::TimeoutNow,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::AppendEntries => "append_entries",
            Self::RequestVote => "request_vote",
            Self::RequestPreVote => "request_pre_vote",
            Self::InstallSnapshot => "install_snapshot",
            Self::TimeoutNow => "timeout_now",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The `outcome` label of a call this node made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CallOutcome {
    Ok,
    Timeout,
    Unreachable,
    ConnectionLost,
    Authentication,
    RemoteError,
    Protocol,
    LimitExceeded,
    Shutdown,
    Other,
}

const CALL_OUTCOMES: usize = 10;

impl CallOutcome {
    const ALL: [Self; CALL_OUTCOMES] = [
        Self::Ok,
        Self::Timeout,
        Self::Unreachable,
        Self::ConnectionLost,
        Self::Authentication,
        Self::RemoteError,
        Self::Protocol,
        Self::LimitExceeded,
        Self::Shutdown,
        Self::Other,
    ];
}

impl CallOutcome {
    pub(crate) fn of<T>(result: &Result<T, Error>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(Error::Timeout { .. }) => Self::Timeout,
            Err(Error::Unreachable { .. }) => Self::Unreachable,
            Err(Error::ConnectionLost { .. }) => Self::ConnectionLost,
            Err(Error::Authentication(_)) => Self::Authentication,
            Err(Error::Remote(_)) => Self::RemoteError,
            Err(Error::Protocol { .. }) => Self::Protocol,
            Err(Error::LimitExceeded { .. }) => Self::LimitExceeded,
            Err(Error::Shutdown) => Self::Shutdown,
            Err(_) => Self::Other,
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::Unreachable => "unreachable",
            Self::ConnectionLost => "connection_lost",
            Self::Authentication => "authentication",
            Self::RemoteError => "remote_error",
            Self::Protocol => "protocol",
            Self::LimitExceeded => "limit_exceeded",
            Self::Shutdown => "shutdown",
            Self::Other => "other",
        }
    }

    /// Whether the peer answered (the latency histogram counts only these).
    fn answered(self) -> bool {
        matches!(self, Self::Ok | Self::RemoteError)
    }
}

/// The `outcome` label of an RPC a peer called on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ServeOutcome {
    /// Answered with a response.
    Ok,
    /// Answered with the handler's (or the dispatcher's) error.
    Error,
    /// Refused before the consumer saw it (identity, budget, bad input).
    Refused,
    /// No answer written: the caller gave up or the connection closed.
    Unanswered,
}

const SERVE_OUTCOMES: usize = 4;

impl ServeOutcome {
    const ALL: [Self; SERVE_OUTCOMES] = [Self::Ok, Self::Error, Self::Refused, Self::Unanswered];
}

impl ServeOutcome {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Error => "error",
            Self::Refused => "refused",
            Self::Unanswered => "unanswered",
        }
    }
}

/// One lazily registered handle.
type Slot<T> = OnceLock<T>;

/// One peer's metric handles, registered on first use and kept for the node's life.
pub(crate) struct PeerMetrics {
    peer: SharedString,
    /// Calls counted since the last [`flush`](Self::flush), by kind and outcome.
    call_counts: [AtomicU64; KINDS * CALL_OUTCOMES],
    /// Requests served since the last flush, by kind and outcome.
    served_counts: [AtomicU64; KINDS * SERVE_OUTCOMES],
    calls: [Slot<Counter>; KINDS * CALL_OUTCOMES],
    call_duration: [Slot<Histogram>; KINDS],
    served: [Slot<Counter>; KINDS * SERVE_OUTCOMES],
    serve_duration: [Slot<Histogram>; KINDS],
    snapshots_sent: Slot<Counter>,
    snapshot_sent_bytes: Slot<Counter>,
    snapshots_received: Slot<Counter>,
    snapshot_received_bytes: Slot<Counter>,
    heartbeat_copies: Slot<Counter>,
    heartbeat_copies_won: Slot<Counter>,
    path: Slot<PathHandles>,
}

/// The handles the sampler sets for a peer.
struct PathHandles {
    sent_bytes: Counter,
    received_bytes: Counter,
    sent_packets: Counter,
    lost_packets: Counter,
    congestion_events: Counter,
    rtt: Gauge,
    cwnd: Gauge,
    mtu: Gauge,
    frame_bytes: Gauge,
}

impl PeerMetrics {
    fn new(peer: &ServerId) -> Self {
        Self {
            peer: SharedString::from(peer.as_str().to_owned()),
            call_counts: [const { AtomicU64::new(0) }; KINDS * CALL_OUTCOMES],
            served_counts: [const { AtomicU64::new(0) }; KINDS * SERVE_OUTCOMES],
            calls: [const { OnceLock::new() }; KINDS * CALL_OUTCOMES],
            call_duration: [const { OnceLock::new() }; KINDS],
            served: [const { OnceLock::new() }; KINDS * SERVE_OUTCOMES],
            serve_duration: [const { OnceLock::new() }; KINDS],
            snapshots_sent: OnceLock::new(),
            snapshot_sent_bytes: OnceLock::new(),
            snapshots_received: OnceLock::new(),
            snapshot_received_bytes: OnceLock::new(),
            heartbeat_copies: OnceLock::new(),
            heartbeat_copies_won: OnceLock::new(),
            path: OnceLock::new(),
        }
    }

    fn counter(&self, slot: &Slot<Counter>, name: &'static str) -> Counter {
        slot.get_or_init(|| metrics::counter!(name, "peer" => self.peer.clone()))
            .clone()
    }

    /// Records a call of `kind` that ended with `outcome` after `elapsed`.
    pub(crate) fn call(&self, kind: Kind, outcome: CallOutcome, elapsed: Duration) {
        self.call_counts[kind.index() * CALL_OUTCOMES + outcome as usize]
            .fetch_add(1, Ordering::Relaxed);
        if outcome.answered() {
            self.call_duration[kind.index()]
                .get_or_init(|| {
                    metrics::histogram!(
                        name::RPC_CALL_DURATION,
                        "peer" => self.peer.clone(),
                        "kind" => kind.label()
                    )
                })
                .record(elapsed.as_secs_f64());
        }
    }

    /// Records a request of `kind` this node served with `outcome`; `elapsed` from the
    /// request read whole to its answer ready, when there was an answer. Heartbeats' service
    /// times are not recorded: the fast path answers them at once, and they are the most
    /// frequent RPC (the caller's heartbeat latency covers them).
    pub(crate) fn served(&self, kind: Kind, outcome: ServeOutcome, elapsed: Option<Duration>) {
        self.served_counts[kind.index() * SERVE_OUTCOMES + outcome as usize]
            .fetch_add(1, Ordering::Relaxed);
        if let Some(elapsed) = elapsed
            && kind != Kind::Heartbeat
        {
            self.serve_duration[kind.index()]
                .get_or_init(|| {
                    metrics::histogram!(
                        name::RPC_SERVE_DURATION,
                        "peer" => self.peer.clone(),
                        "kind" => kind.label()
                    )
                })
                .record(elapsed.as_secs_f64());
        }
    }

    /// Publishes the calls and requests served counted since the last flush to the
    /// recorder's counters (registering a series on its first non-zero count).
    pub(crate) fn flush(&self) {
        for (i, count) in self.call_counts.iter().enumerate() {
            if count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let delta = count.swap(0, Ordering::Relaxed);
            let (kind, outcome) = (
                Kind::ALL[i / CALL_OUTCOMES],
                CallOutcome::ALL[i % CALL_OUTCOMES],
            );
            self.calls[i]
                .get_or_init(|| {
                    metrics::counter!(
                        name::RPC_CALLS,
                        "peer" => self.peer.clone(),
                        "kind" => kind.label(),
                        "outcome" => outcome.label()
                    )
                })
                .increment(delta);
        }
        for (i, count) in self.served_counts.iter().enumerate() {
            if count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let delta = count.swap(0, Ordering::Relaxed);
            let (kind, outcome) = (
                Kind::ALL[i / SERVE_OUTCOMES],
                ServeOutcome::ALL[i % SERVE_OUTCOMES],
            );
            self.served[i]
                .get_or_init(|| {
                    metrics::counter!(
                        name::RPC_SERVED,
                        "peer" => self.peer.clone(),
                        "kind" => kind.label(),
                        "outcome" => outcome.label()
                    )
                })
                .increment(delta);
        }
    }

    /// The counter of snapshot data bytes sent to the peer.
    pub(crate) fn snapshot_sent_bytes(&self) -> Counter {
        self.counter(&self.snapshot_sent_bytes, name::SNAPSHOT_SENT_BYTES)
    }

    /// A snapshot sent to the peer was answered.
    pub(crate) fn snapshot_sent(&self) {
        self.counter(&self.snapshots_sent, name::SNAPSHOTS_SENT)
            .increment(1);
    }

    /// The counter of snapshot data bytes received from the peer.
    pub(crate) fn snapshot_received_bytes(&self) -> Counter {
        self.counter(&self.snapshot_received_bytes, name::SNAPSHOT_RECEIVED_BYTES)
    }

    /// A snapshot from the peer was answered by the consumer.
    pub(crate) fn snapshot_received(&self) {
        self.counter(&self.snapshots_received, name::SNAPSHOTS_RECEIVED)
            .increment(1);
    }

    /// A heartbeat copy was sent to the peer.
    pub(crate) fn heartbeat_copy_sent(&self) {
        self.counter(&self.heartbeat_copies, name::HEARTBEAT_COPIES)
            .increment(1);
    }

    /// A heartbeat copy's answer came first.
    pub(crate) fn heartbeat_copy_won(&self) {
        self.counter(&self.heartbeat_copies_won, name::HEARTBEAT_COPIES_WON)
            .increment(1);
    }

    fn path(&self) -> &PathHandles {
        self.path.get_or_init(|| {
            let peer = || ("peer", self.peer.clone());
            let counter = |name: &'static str| {
                let (k, v) = peer();
                metrics::counter!(name, k => v)
            };
            let gauge = |name: &'static str| {
                let (k, v) = peer();
                metrics::gauge!(name, k => v)
            };
            PathHandles {
                sent_bytes: counter(name::SENT_BYTES),
                received_bytes: counter(name::RECEIVED_BYTES),
                sent_packets: counter(name::PATH_SENT_PACKETS),
                lost_packets: counter(name::PATH_LOST_PACKETS),
                congestion_events: counter(name::PATH_CONGESTION_EVENTS),
                rtt: gauge(name::PATH_RTT),
                cwnd: gauge(name::PATH_CWND),
                mtu: gauge(name::PATH_MTU),
                frame_bytes: gauge(name::PEER_FRAME_BYTES),
            }
        })
    }
}

/// Counts a connection to `peer` established in `direction` (`dialled` or `accepted`).
pub(crate) fn connection_opened(peer: &ServerId, direction: &'static str) {
    metrics::counter!(
        name::CONNECTIONS_OPENED,
        "peer" => peer.as_str().to_owned(),
        "direction" => direction
    )
    .increment(1);
}

/// Counts a failed dial to `peer` (`unreachable` or `authentication`).
pub(crate) fn dial_failed(peer: &ServerId, reason: &'static str) {
    metrics::counter!(
        name::DIAL_FAILURES,
        "peer" => peer.as_str().to_owned(),
        "reason" => reason
    )
    .increment(1);
}

/// Why a handshake failed, as the `reason` label says it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HandshakeFailure {
    /// This node's verifier refused the peer's certificate.
    RefusedHere,
    /// The peer refused this node's certificate.
    RefusedByPeer,
    /// No handshake within the connect timeout.
    Timeout,
    /// Anything else (lost packets, a closed endpoint, a protocol error).
    Failed,
    /// An authenticated peer of another cluster (incoming).
    WrongCluster,
    /// A certificate without a usable node identity (incoming).
    NoIdentity,
}

/// Counts a failed handshake, `incoming` or `outgoing`.
pub(crate) fn handshake_failed(direction: &'static str, why: HandshakeFailure) {
    let reason = match why {
        HandshakeFailure::RefusedHere => "refused_here",
        HandshakeFailure::RefusedByPeer => "refused_by_peer",
        HandshakeFailure::Timeout => "timeout",
        HandshakeFailure::Failed => "failed",
        HandshakeFailure::WrongCluster => "wrong_cluster",
        HandshakeFailure::NoIdentity => "no_identity",
    };
    metrics::counter!(name::HANDSHAKE_FAILURES, "direction" => direction, "reason" => reason)
        .increment(1);
}

/// The node's peers' handles: one [`PeerMetrics`] per peer, for the node's life (bounded by
/// the peers that proved a certificate of the cluster or that this node's engine dialled).
#[derive(Default)]
pub(crate) struct PeerRegistry(Mutex<HashMap<ServerId, Arc<PeerMetrics>>>);

impl PeerRegistry {
    /// [`PeerMetrics::flush`] for every peer.
    pub(crate) fn flush(&self) {
        let peers: Vec<Arc<PeerMetrics>> = {
            let peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
            peers.values().cloned().collect()
        };
        for peer in peers {
            peer.flush();
        }
    }

    /// The handles of `peer`.
    pub(crate) fn peer(&self, peer: &ServerId) -> Arc<PeerMetrics> {
        // One map operation per critical section: a poisoned lock is still sound.
        let mut peers = self.0.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(peer.clone())
            .or_insert_with(|| Arc::new(PeerMetrics::new(peer)))
            .clone()
    }
}

/// Sets the peer's frame-budget gauge.
fn peer_frame_bytes(metrics: &PeerMetrics, bytes: usize) {
    metrics.path().frame_bytes.set(bytes as f64);
}

/// Mirrors the node-wide [`TransportStats`].
pub(crate) fn node(stats: &TransportStats) {
    metrics::gauge!(name::FRAME_BYTES).set(stats.frame_bytes_buffered as f64);
    metrics::gauge!(name::FRAME_BYTES_HIGH_WATER).set(stats.frame_bytes_buffered_high_water as f64);
    metrics::gauge!(name::CONSUMER_QUEUED).set(stats.consumer_queued as f64);
    metrics::gauge!(name::REQUEST_STREAMS).set(stats.request_streams as f64);
    metrics::gauge!(name::HANDSHAKES_IN_PROGRESS).set(stats.handshakes_in_progress as f64);
    metrics::gauge!(name::HANDSHAKES_IN_PROGRESS_HIGH_WATER)
        .set(stats.handshakes_in_progress_high_water as f64);
    metrics::counter!(name::HANDSHAKES_ACCEPTED).absolute(stats.handshakes_accepted);
    metrics::counter!(name::HANDSHAKES_RETRIED).absolute(stats.handshakes_retried);
    metrics::counter!(name::HANDSHAKES_REFUSED).absolute(stats.handshakes_refused);
    metrics::counter!(name::NODE_HEARTBEAT_COPIES).absolute(stats.heartbeat_copies);
    metrics::counter!(name::NODE_HEARTBEAT_COPIES_WON).absolute(stats.heartbeat_copies_won);
}

/// An `AsyncRead` that counts the bytes read through it.
pub(crate) struct CountingRead<R> {
    inner: R,
    bytes: Counter,
}

impl<R> CountingRead<R> {
    pub(crate) fn new(inner: R, bytes: Counter) -> Self {
        Self { inner, bytes }
    }
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingRead<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len().saturating_sub(before);
        if read > 0 {
            self.bytes.increment(read as u64);
        }
        polled
    }
}
