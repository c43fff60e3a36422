//! Settings of a [`QuicTransport`](super::QuicTransport).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{HeartbeatHedge, QuicTuning, SnapshotPacing, TlsFiles};
use crate::tls::{CaRoots, Identity, RevocationLists};
use crate::transport::ServerAddressProvider;

/// Everything a [`QuicTransport`](super::QuicTransport) needs: who this node is (its
/// certificate chain and key), whom it trusts (the cluster CA), which cluster it belongs to,
/// and tuning with documented defaults.
///
/// ```no_run
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use quicraft::{CaRoots, Identity, QuicConfig};
///
/// let identity = Identity::from_pem_files("certs/n1.pem", "certs/n1.key")?;
/// let config = QuicConfig::new("prod", identity, CaRoots::from_pem_file("certs/ca.pem")?)
///     .bind("0.0.0.0:7000".parse()?)
///     .advertise("192.0.2.10:7000".parse()?);
/// # let _ = config;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct QuicConfig {
    pub(super) cluster: String,
    pub(super) identity: Identity,
    pub(super) roots: CaRoots,
    pub(super) revocation: RevocationLists,
    pub(super) watch: Option<(TlsFiles, Duration)>,
    pub(super) bind: SocketAddr,
    pub(super) advertise: Option<SocketAddr>,
    pub(super) rpc_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) snapshot_bytes_per_timeout: u64,
    pub(super) max_message_size: usize,
    pub(super) max_streams: u32,
    pub(super) max_snapshot_streams: u32,
    pub(super) max_in_flight: usize,
    pub(super) heartbeat_hedge: HeartbeatHedge,
    pub(super) snapshot_pacing: SnapshotPacing,
    /// `None`: [`DEFAULT_RESUME_GRACE_TIMEOUTS`] × `rpc_timeout`.
    pub(super) snapshot_resume_grace: Option<Duration>,
    pub(super) tuning: QuicTuning,
    pub(super) consumer_capacity: usize,
    pub(super) backoff_base: Duration,
    pub(super) backoff_max: Duration,
    pub(super) address_provider: Option<Arc<dyn ServerAddressProvider>>,
    /// `None`: [`DEFAULT_FRAME_BUDGET_FRAMES`] frames of `max_message_size`.
    pub(super) max_buffered_bytes_per_peer: Option<usize>,
    /// `None`: derived from the node's private key.
    pub(super) reset_secret: Option<Arc<[u8]>>,
    // Handshake admission (src/quic/admission.rs).
    pub(super) admission: super::admission::Limits,
}

/// Streams a peer may open at first on a connection (see [`QuicConfig::max_streams`]).
const INITIAL_STREAMS: u32 = 64;

/// The default grace period of a parked resumable snapshot, in RPC timeouts.
const DEFAULT_RESUME_GRACE_TIMEOUTS: u32 = 3;

/// The default per-connection frame budget, in frames of `max_message_size`.
const DEFAULT_FRAME_BUDGET_FRAMES: usize = 4;

impl QuicConfig {
    /// A node of `cluster` (the SPIFFE trust domain in every certificate) presenting
    /// `identity`, trusting `roots`. Everything else has its default.
    pub fn new(cluster: impl Into<String>, identity: Identity, roots: CaRoots) -> Self {
        Self {
            cluster: cluster.into(),
            identity,
            roots,
            revocation: RevocationLists::none(),
            watch: None,
            bind: SocketAddr::from(([0, 0, 0, 0], 7000)),
            advertise: None,
            rpc_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            snapshot_bytes_per_timeout: crate::SNAPSHOT_TIMEOUT_UNIT,
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_streams: 1024,
            max_snapshot_streams: 8,
            max_in_flight: crate::DEFAULT_MAX_IN_FLIGHT,
            heartbeat_hedge: HeartbeatHedge::Auto,
            snapshot_pacing: SnapshotPacing::Auto,
            snapshot_resume_grace: None,
            tuning: QuicTuning::default(),
            consumer_capacity: 64,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            address_provider: None,
            max_buffered_bytes_per_peer: None,
            reset_secret: None,
            admission: super::admission::Limits {
                retry_threshold: 16,
                max_total: 64,
                max_per_address: 4,
                rate_per_second: 8.0,
                burst: 16.0,
            },
        }
    }

    /// A config from PEM files: the node's certificate chain and key, and the CA roots.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), quicraft::TlsError> {
    /// let config = quicraft::QuicConfig::from_pem_files(
    ///     "prod", "certs/n1.pem", "certs/n1.key", "certs/ca.pem",
    /// )?;
    /// # let _ = config;
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_pem_files(
        cluster: impl Into<String>,
        cert_chain: impl AsRef<std::path::Path>,
        key: impl AsRef<std::path::Path>,
        ca: impl AsRef<std::path::Path>,
    ) -> Result<Self, crate::TlsError> {
        let identity = Identity::from_pem_files(cert_chain, key)?;
        Ok(Self::new(cluster, identity, CaRoots::from_pem_file(ca)?))
    }

    /// Refuses peers whose certificate one of `lists` revokes, on both sides of every
    /// handshake. Default none. Replace them at run time with `QuicTransport::reload_tls` or
    /// [`watch_files`](Self::watch_files).
    pub fn revocation(mut self, lists: RevocationLists) -> Self {
        self.revocation = lists;
        self
    }

    /// Watches `files` and reloads the certificate, roots and revocation lists when one
    /// changes, checking every `interval`. Default off. A change that does not load or names
    /// another node is logged and ignored. Replace files atomically (write, then rename) so a
    /// check never sees half a file.
    pub fn watch_files(mut self, files: TlsFiles, interval: Duration) -> Self {
        self.watch = Some((files, interval.max(Duration::from_millis(10))));
        self
    }

    /// The UDP address to listen and dial from. Default `0.0.0.0:7000`; port 0 picks a free
    /// port (see `QuicTransport::local_socket_addr`).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = addr;
        self
    }

    /// The address peers should dial, when it differs from the bound one (NAT, a wildcard
    /// bind). Default: the bound address.
    pub fn advertise(mut self, addr: SocketAddr) -> Self {
        self.advertise = Some(addr);
        self
    }

    /// Deadline of a unary RPC, dial included; snapshots scale it by size. Default 10 s, as
    /// hashicorp/raft's TCP transport. Shorter detects dead peers sooner; too short fails
    /// RPCs on slow links.
    pub fn rpc_timeout(mut self, timeout: Duration) -> Self {
        self.rpc_timeout = timeout;
        self
    }

    /// Deadline of a handshake. Default 5 s. After a failed dial the peer is not dialled again
    /// before the backoff passes.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Snapshot bytes allowed per RPC timeout: an InstallSnapshot of `size` bytes gets
    /// `rpc_timeout × size / bytes`, at least `rpc_timeout`. Default 256 KiB (hashicorp/raft's
    /// rule: 1 GiB gets 4096 timeouts). Raise it to fail stalled transfers sooner on fast
    /// links, lower it for slow WAN links.
    pub fn snapshot_timeout_scale(mut self, bytes_per_timeout: u64) -> Self {
        self.snapshot_bytes_per_timeout = bytes_per_timeout.max(1);
        self
    }

    /// Largest frame accepted or sent, in bytes. Default 16 MiB. Bounds what one stream may
    /// make this node buffer; larger allows bigger AppendEntries batches.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes;
        self
    }

    /// Concurrent RPC streams a peer may open to this node. Default 1024. A connection starts
    /// with at most 64 and grants more, doubling up to this limit, as the peer uses them
    /// (quinn keeps state for every stream a peer may open, so an idle connection stays
    /// small); callers past the limit wait for a stream.
    pub fn max_streams(mut self, streams: u32) -> Self {
        self.max_streams = streams.max(1);
        self
    }

    /// Concurrent snapshot data streams a peer may open to this node. Default 8.
    pub fn max_snapshot_streams(mut self, streams: u32) -> Self {
        self.max_snapshot_streams = streams.max(1);
        self
    }

    /// Hedged heartbeats: when a heartbeat (an AppendEntries without entries) has no answer
    /// after a delay, a copy goes on a second stream and the first answer wins. Default
    /// [`HeartbeatHedge::Auto`]: a copy after 5 ms on paths whose round trip (the least seen)
    /// is at least that long, none to a peer on this host (loopback) or on a LAN (where a late
    /// heartbeat means a busy peer, not a lost packet; a LAN host so loaded that no round trip
    /// ever takes under 5 ms looks long, and gets at most one copy per heartbeat). On a lossy
    /// long link both copies are lost only with the square of the loss rate, so the heartbeat
    /// tail shrinks from several RTTs (a loss detection and a retransmission) to about one RTT
    /// plus the delay, for a few dozen bytes per heartbeat.
    /// [`HeartbeatHedge::After`] hedges on every path; [`HeartbeatHedge::Off`] never.
    /// `QuicTransport::stats` counts copies sent and won.
    pub fn heartbeat_hedge(mut self, hedge: HeartbeatHedge) -> Self {
        self.heartbeat_hedge = hedge;
        self
    }

    /// How a snapshot's data is paced. Default [`SnapshotPacing::Auto`]: once the round-trip
    /// time shows a queue at the bottleneck, the snapshot's rate keeps that queue short, so
    /// heartbeats and appends sharing the path wait less and are not dropped with it; a path
    /// with no queue (a LAN, one host) is not paced at all. [`SnapshotPacing::Off`] leaves
    /// the congestion controller alone to decide; [`SnapshotPacing::Rate`] caps the rate.
    pub fn snapshot_pacing(mut self, pacing: SnapshotPacing) -> Self {
        self.snapshot_pacing = match pacing {
            SnapshotPacing::Rate(rate) => SnapshotPacing::Rate(rate.max(1)),
            other => other,
        };
        self
    }

    /// How long a resumable snapshot being received waits for its sender to resume it after
    /// the connection carrying it was lost (`Transport::install_snapshot_resumable`,
    /// `docs/PROTOCOL.md` §8.6). Default 3 × [`rpc_timeout`](Self::rpc_timeout) (30 s). The
    /// consumer's reader simply waits meanwhile; after it, the reader fails with
    /// [`TimedOut`](std::io::ErrorKind::TimedOut) and a resume is refused. Longer rides out
    /// longer outages (the sender keeps redialling within the snapshot's own deadline) but
    /// holds the consumer, and the transfer's slot among `max_snapshot_streams`, that much
    /// longer before it learns the snapshot failed; it must exceed the time a sender needs to
    /// notice the loss and dial again (about the idle timeout plus a handshake).
    pub fn snapshot_resume_grace(mut self, grace: Duration) -> Self {
        self.snapshot_resume_grace = Some(grace);
        self
    }

    /// The QUIC and UDP tuning underneath the RPCs (windows, MTU, congestion control,
    /// busy-polling). Default [`QuicTuning::default`].
    pub fn tuning(mut self, tuning: QuicTuning) -> Self {
        self.tuning = tuning;
        self
    }

    /// Outstanding AppendEntries per pipeline. Default 128; 0 means the default, 1 turns
    /// pipelining off. More hides more latency and holds more requests in memory.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = crate::transport::max_in_flight_or_default(max_in_flight);
        self
    }

    /// RPCs of one peer queued for the consumer before that peer's streams wait (each peer has
    /// its own share, and peers are served in turn: `docs/PROTOCOL.md` §9.2). Default 64.
    /// More absorbs longer bursts from one peer while the engine is busy; what the queued
    /// requests hold stays within the peer's budget (`max_buffered_bytes_per_peer`) either way.
    pub fn consumer_capacity(mut self, capacity: usize) -> Self {
        self.consumer_capacity = capacity.max(1);
        self
    }

    /// Backoff after a failed dial: `base`, doubling per consecutive failure up to `max`, less
    /// a random part of up to half (so nodes that lost a peer together do not re-dial it in
    /// the same instant). Default 100 ms to 10 s. Calls during the backoff fail at once as
    /// [`Error::Unreachable`](crate::Error::Unreachable).
    pub fn reconnect_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_max = max.max(base);
        self
    }

    /// Consults `provider` for a peer's address on every dial. Default none.
    pub fn address_provider(mut self, provider: Arc<dyn ServerAddressProvider>) -> Self {
        self.address_provider = Some(provider);
        self
    }

    /// Bytes the incoming requests of one peer may hold at once, over all of its connections:
    /// frames being received (at their declared length) and requests waiting for the consumer
    /// (at their decoded size), given back when a connection closes. Default four frames of
    /// [`max_message_size`](Self::max_message_size) (64 MiB); at least `max_message_size`,
    /// else `bind` fails with [`Error::Config`](crate::Error::Config). A frame arriving while
    /// the budget is spent waits unread. Smaller bounds a peer more tightly but makes an
    /// honest peer's large batches wait for each other (`docs/PROTOCOL.md` §9, SECURITY.md).
    pub fn max_buffered_bytes_per_peer(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes_per_peer = Some(bytes);
        self
    }

    /// The secret the stateless-reset keys are derived from (at least 16 random bytes, the
    /// same on every start of this node, different for every node). Default: the node's
    /// private key (HKDF-SHA256; the keys reveal nothing of it). Stable keys let a restarted
    /// node reset its peers' connections to the crashed process within a round trip; with
    /// the default, the first restart after a key rotation is found by a probe instead, a few
    /// round trips later (`docs/PROTOCOL.md` §3, SECURITY.md).
    pub fn stateless_reset_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.reset_secret = Some(Arc::from(secret.as_ref()));
        self
    }

    /// Incoming handshakes run at once: `total` over all sources and `per_address` from one
    /// source (IP address and UDP port). Default 64 and 4; values below 1 count as 1. An
    /// attempt beyond either is refused before any crypto work. Each half-open handshake
    /// holds tens of KiB until it completes or `connect_timeout` passes; `total` should exceed
    /// the cluster's size so that a whole cluster restarting at once is not refused.
    pub fn max_incoming_handshakes(mut self, total: usize, per_address: usize) -> Self {
        self.admission.max_total = total.max(1);
        self.admission.max_per_address = per_address.max(1);
        self
    }

    /// Handshakes in progress from which an attempt from an unvalidated address gets a QUIC
    /// Retry (a stateless round trip proving the address) before any crypto work. Default 16.
    /// Spoofed or fire-and-forget floods then hold nothing, at one round trip more per
    /// handshake while the threshold is passed. 0 asks it of every attempt; `usize::MAX` never.
    pub fn handshake_retry_threshold(mut self, in_progress: usize) -> Self {
        self.admission.retry_threshold = in_progress;
        self
    }

    /// Handshakes one source address may start: `per_second` on average, `burst` at once.
    /// Default 8 per second, burst 16; values below 1 count as 1. Refuses a peer re-dialling
    /// in a loop before its handshakes cost CPU. An honest node re-dials only after its
    /// backoff, far below the default; too low refuses honest reconnections after a burst of
    /// failures (they retry after their backoff).
    pub fn handshake_rate_per_address(mut self, per_second: u32, burst: u32) -> Self {
        self.admission.rate_per_second = f64::from(per_second.max(1));
        self.admission.burst = f64::from(burst.max(1));
        self
    }

    /// The stream limit a connection starts with: grown with use up to `max_streams`.
    pub(super) fn initial_streams(&self) -> u32 {
        self.max_streams.min(INITIAL_STREAMS)
    }

    /// The grace period of a parked resumable snapshot in effect.
    pub(super) fn resume_grace(&self) -> Duration {
        self.snapshot_resume_grace.unwrap_or_else(|| {
            self.rpc_timeout
                .saturating_mul(DEFAULT_RESUME_GRACE_TIMEOUTS)
        })
    }

    /// The per-connection frame budget in effect.
    pub(super) fn frame_budget(&self) -> usize {
        self.max_buffered_bytes_per_peer.unwrap_or_else(|| {
            self.max_message_size
                .saturating_mul(DEFAULT_FRAME_BUDGET_FRAMES)
        })
    }

    /// Fails when the frame budget could not hold one frame of `max_message_size`.
    pub(super) fn check_frame_budget(&self) -> Result<(), crate::Error> {
        let budget = self.frame_budget();
        if budget < self.max_message_size {
            return Err(crate::Error::Config(crate::ConfigError::Invalid(format!(
                "max_buffered_bytes_per_peer ({budget}) is smaller than max_message_size ({})",
                self.max_message_size
            ))));
        }
        Ok(())
    }
}

impl fmt::Debug for QuicConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicConfig")
            .field("cluster", &self.cluster)
            .field("identity", &self.identity)
            .field("revocation_lists", &self.revocation.lists().len())
            .field("watch", &self.watch)
            .field("bind", &self.bind)
            .field("advertise", &self.advertise)
            .field("heartbeat_hedge", &self.heartbeat_hedge)
            .field("snapshot_pacing", &self.snapshot_pacing)
            .field("snapshot_resume_grace", &self.resume_grace())
            .field("tuning", &self.tuning)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "snapshot_bytes_per_timeout",
                &self.snapshot_bytes_per_timeout,
            )
            .field("max_message_size", &self.max_message_size)
            .field("max_streams", &self.max_streams)
            .field("max_snapshot_streams", &self.max_snapshot_streams)
            .field("max_in_flight", &self.max_in_flight)
            .field("consumer_capacity", &self.consumer_capacity)
            .field("backoff", &(self.backoff_base, self.backoff_max))
            .field("address_provider", &self.address_provider.is_some())
            .field(
                "stateless_reset_secret",
                &self.reset_secret.as_ref().map(|_| "set"),
            )
            .field("max_buffered_bytes_per_peer", &self.frame_budget())
            .field("handshake_admission", &self.admission)
            .finish_non_exhaustive()
    }
}
