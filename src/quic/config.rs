//! Settings of a [`QuicTransport`](super::QuicTransport).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use super::TlsFiles;
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
    pub(super) idle_timeout: Duration,
    pub(super) keep_alive: Option<Duration>,
    pub(super) max_message_size: usize,
    pub(super) max_streams: u32,
    pub(super) max_snapshot_streams: u32,
    pub(super) max_in_flight: usize,
    pub(super) receive_window: u64,
    pub(super) stream_receive_window: u32,
    pub(super) udp_buffer_size: usize,
    pub(super) busy_poll: Duration,
    pub(super) heartbeat_hedge: Option<Duration>,
    pub(super) max_udp_payload: u16,
    pub(super) congestion: CongestionController,
    pub(super) initial_rtt: Duration,
    pub(super) send_window: u64,
    pub(super) consumer_capacity: usize,
    pub(super) backoff_base: Duration,
    pub(super) backoff_max: Duration,
    pub(super) address_provider: Option<Arc<dyn ServerAddressProvider>>,
    /// `None`: [`DEFAULT_FRAME_BUDGET_FRAMES`] frames of `max_message_size`.
    pub(super) max_buffered_bytes_per_peer: Option<usize>,
    /// `None`: derived from the node's private key.
    pub(super) reset_secret: Option<Arc<[u8]>>,
    // Handshake admission (src/quic/admission.rs).
    pub(super) max_handshakes: usize,
    pub(super) max_handshakes_per_address: usize,
    pub(super) handshake_retry_threshold: usize,
    pub(super) handshake_rate_per_address: (u32, u32),
}

/// Streams a peer may open at first on a connection (see [`QuicConfig::max_streams`]).
const INITIAL_STREAMS: u32 = 64;

/// The default [`QuicConfig::busy_poll`] window: longer than a loopback or LAN round trip
/// (20 – 40 µs when the other side is awake), short enough to cost little per packet.
const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(50);

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
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(5)),
            max_message_size: crate::DEFAULT_MAX_MESSAGE_SIZE,
            max_streams: 1024,
            max_snapshot_streams: 8,
            max_in_flight: crate::DEFAULT_MAX_IN_FLIGHT,
            receive_window: 32 * 1024 * 1024,
            stream_receive_window: 1_250_000,
            udp_buffer_size: 4 * 1024 * 1024,
            busy_poll: DEFAULT_BUSY_POLL,
            heartbeat_hedge: None,
            max_udp_payload: 1452,
            congestion: CongestionController::Bbr,
            initial_rtt: Duration::from_millis(333),
            send_window: 10 * 1024 * 1024,
            consumer_capacity: 64,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            address_provider: None,
            max_buffered_bytes_per_peer: None,
            reset_secret: None,
            max_handshakes: 64,
            max_handshakes_per_address: 4,
            handshake_retry_threshold: 16,
            handshake_rate_per_address: (8, 16),
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

    /// A connection silent this long is closed. Default 30 s. Keep-alive stops an idle but
    /// healthy connection from reaching it.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout;
        self
    }

    /// Interval of keep-alive packets, or `None` for none. Default 5 s: a dead peer is noticed
    /// within the idle timeout even when no RPC is under way, for a few bytes per interval.
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
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

    /// Bytes a peer may have in flight to this node across all streams of its connection
    /// (QUIC connection flow control). Default 32 MiB. Bounds what one peer can make this node
    /// buffer; below the link's bandwidth-delay product it caps throughput.
    pub fn receive_window(mut self, bytes: u64) -> Self {
        self.receive_window = bytes.max(64 * 1024);
        self
    }

    /// Bytes a peer may have in flight to this node on any one stream (QUIC stream flow
    /// control). Default 1,250,000 (quinn's default).
    ///
    /// This bounds how much of a snapshot (or a pipeline) can be on its way at once, and so how
    /// long a heartbeat sent behind it waits: on a link whose round trip is short compared
    /// with the time to drain the window (loopback, a LAN), the window sits in queues and a
    /// heartbeat waits for all of it. 128 KiB on loopback took the heartbeat p99 under a
    /// streaming snapshot from ~2.6–2.9 ms to ~0.45–0.7 ms, at 460–730 MB/s of snapshot
    /// (BENCHMARKS.md). On a long fat link the window caps one stream's rate at window ÷ round
    /// trip (1.25 MB per 50 ms is 25 MB/s): keep it at or above the bandwidth-delay product
    /// there. At least 16 KiB.
    pub fn stream_receive_window(mut self, bytes: u32) -> Self {
        self.stream_receive_window = bytes.max(16 * 1024);
        self
    }

    /// Size asked for the UDP socket's send and receive buffers. Default 4 MiB: at full speed
    /// the kernel's default (about 208 KiB) drops packets, which congestion control reads as
    /// loss. Linux caps it at `net.core.rmem_max` / `wmem_max`; larger buffers absorb bursts
    /// but let a queue (and its delay) build up.
    pub fn udp_buffer_size(mut self, bytes: usize) -> Self {
        self.udp_buffer_size = bytes;
        self
    }

    /// The largest UDP payload path MTU discovery may try. Default 1452 (a 1500-byte Ethernet
    /// path). Raise it on links known to carry larger packets (8952 on a 9000-byte jumbo-frame
    /// LAN, 65527 on loopback): fewer, larger packets cost less CPU per byte, about twice the
    /// snapshot and pipeline throughput on the benchmark machine (BENCHMARKS.md). Discovery
    /// probes upwards from 1200 and keeps what the path delivers, so a value too high only
    /// costs lost probes; quinn sizes its receive buffers by it (virtual memory, up to
    /// 128 MiB at 65527).
    pub fn max_udp_payload(mut self, bytes: u16) -> Self {
        self.max_udp_payload = bytes.max(1200);
        self
    }

    /// The congestion controller. Default [`CongestionController::Bbr`]: on an emulated
    /// 50 ms / 100 Mbit/s link with 2 % loss it moved a 64 MiB snapshot at 55 Mbit/s where
    /// Cubic (quinn's own default) starved it (see BENCHMARKS.md). Cubic is more conservative
    /// and fairer to loss-based flows sharing a congested link; quinn marks its BBR
    /// experimental.
    pub fn congestion_controller(mut self, controller: CongestionController) -> Self {
        self.congestion = controller;
        self
    }

    /// How long the endpoint keeps polling its UDP socket after a datagram was sent or
    /// received, instead of letting its thread park. Default 50 µs; zero turns it off.
    ///
    /// A parked thread costs a wake-up (tens of microseconds on an idle machine, more in a
    /// VM) when the next datagram lands; on loopback or a LAN that is most of an RPC's round
    /// trip. With a window a little longer than the round trip, an answer finds the thread
    /// awake (Go's scheduler spins before it parks for the same reason; figures in
    /// BENCHMARKS.md). The price is CPU, and only right after traffic: the runtime thread that
    /// drives the endpoint stays runnable for the window after each packet (an idle node, with
    /// a keep-alive every few seconds, spends next to nothing), so a node that talks
    /// continuously keeps its thread busy. Polling yields to the runtime between checks, so
    /// other tasks still run. Across a WAN the round trip is far longer than the window and the
    /// spin buys nothing: turn it off there to save the CPU.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// Hedged heartbeats: when a heartbeat (an AppendEntries without entries) has no answer
    /// after `delay`, send a copy on a second stream and take whichever answer comes first.
    /// Default `None` (off).
    ///
    /// On a lossy long link a lost heartbeat packet costs QUIC's loss detection (at least
    /// 9/8 of the RTT) plus a retransmission, so a few percent of heartbeats take ~3 RTTs,
    /// and election timeouts must allow for that tail. A copy sent a little later travels in
    /// another packet, so both are lost only with the square of the loss rate: at 2 % loss
    /// on a 50 ms link the heartbeat p99 went from ~160 ms to about one RTT plus `delay`
    /// (BENCHMARKS.md). The price: when the RTT exceeds `delay` every heartbeat is sent
    /// twice (about 100 bytes each), and the receiver sees both (heartbeats are idempotent).
    /// Pick `delay` above the usual local answer time and well under the RTT (e.g. 2–5 ms
    /// across regions); on a LAN a copy is then never needed. `QuicTransport::stats` counts
    /// copies sent and copies that won.
    pub fn heartbeat_hedge(mut self, delay: Option<Duration>) -> Self {
        self.heartbeat_hedge = delay;
        self
    }

    /// The round-trip time assumed before the first measurement. Default 333 ms (QUIC's
    /// recommendation). Set it near the real RTT (e.g. 50 ms across regions) so the first
    /// retransmissions of a new connection are not late.
    pub fn initial_rtt(mut self, rtt: Duration) -> Self {
        self.initial_rtt = rtt;
        self
    }

    /// Bytes this node may have in flight unacknowledged per connection. Default 10 MiB
    /// (quinn's default). It must cover the bandwidth-delay product to fill a long fat link;
    /// larger lets more data queue behind a slow peer.
    pub fn send_window(mut self, bytes: u64) -> Self {
        self.send_window = bytes.max(64 * 1024);
        self
    }

    /// Outstanding AppendEntries per pipeline. Default 128; 0 means the default, 1 turns
    /// pipelining off. More hides more latency and holds more requests in memory.
    pub fn max_in_flight(mut self, max_in_flight: usize) -> Self {
        self.max_in_flight = if max_in_flight == 0 {
            crate::DEFAULT_MAX_IN_FLIGHT
        } else {
            max_in_flight
        };
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

    /// Backoff after a failed dial: `base`, doubling per consecutive failure up to `max`.
    /// Default 100 ms to 10 s. Calls during the backoff fail at once as unreachable.
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

    /// Bytes the incoming requests of one peer may hold at once, over all of its connections
    /// (closing ones included): frames being received (each counted at its declared length
    /// from its header on) and requests received whole but not yet taken by the consumer or
    /// the heartbeat handler (counted at their decoded size, which for many small entries is
    /// several times their encoded size). What a connection holds is given back the moment
    /// it closes, requests waiting for the consumer included. Default four frames of
    /// [`max_message_size`](Self::max_message_size): 64 MiB with its default of 16 MiB. Must
    /// be at least `max_message_size` (else `QuicTransport::bind` fails with
    /// [`Error::Config`](crate::Error::Config)).
    ///
    /// Bytes quinn holds unread count against QUIC flow control
    /// ([`receive_window`](Self::receive_window)); bytes read out of quinn do not, so without
    /// this budget one peer could make this node hold `max_streams × max_message_size` (16 GiB
    /// by default). With it, a peer can make the node hold at most this budget plus the
    /// receive window. A frame whose header arrives while the budget is spent waits, in
    /// arrival order, without reading its body, and a stream's first request that waited
    /// `rpc_timeout` is answered with `UNAVAILABLE`. Smaller bounds memory per peer more
    /// tightly; it must still cover the large frames an honest peer sends at once (a few
    /// pipelined or concurrent batches near `max_message_size`), or they wait for each other,
    /// and when many more of them are in flight than the budget admits, their unread bytes
    /// can fill the receive window and stall the admitted ones until their timeouts.
    /// Requests of ordinary size are a small share of it.
    pub fn max_buffered_bytes_per_peer(mut self, bytes: usize) -> Self {
        self.max_buffered_bytes_per_peer = Some(bytes);
        self
    }

    /// The secret the endpoint's stateless-reset keys are derived from. Default: the node's
    /// private key (HKDF-SHA256 with fixed labels; the keys reveal nothing of it).
    ///
    /// The keys must be the same after a restart for the restarted node to reset the
    /// connections its peers still hold to the crashed process, which is how they learn of the
    /// crash within a round trip instead of an idle timeout. With the default, rotating the
    /// node's key changes them: the first restart after a rotation is detected by the
    /// connection probe instead (see `docs/PROTOCOL.md` §3), which costs a few round trips.
    /// Set a secret here (at least 16 random bytes, kept as privately as the key, the same on
    /// every start of this node and different for every node) to keep them across rotations.
    pub fn stateless_reset_secret(mut self, secret: impl AsRef<[u8]>) -> Self {
        self.reset_secret = Some(Arc::from(secret.as_ref()));
        self
    }

    /// Incoming handshakes this node runs at once: `total` over all source addresses and
    /// `per_address` from one source address (IP address and UDP port). Default 64 and 4.
    ///
    /// An attempt beyond either is refused before any crypto work (a QUIC CONNECTION_REFUSED
    /// close; the dialler sees `Error::Unreachable` and backs off). Every half-open handshake
    /// holds a connection's state (tens of KiB) until it completes or `connect_timeout`
    /// passes, so `total` bounds what a handshake flood can make this node hold, and
    /// `per_address` keeps one socket from taking all of it. A node dials each peer once at a
    /// time, so honest peers need 1 or 2 per address; `total` should exceed the cluster's size
    /// so that a whole cluster restarting at once is not refused. Values below 1 count as 1.
    pub fn max_incoming_handshakes(mut self, total: usize, per_address: usize) -> Self {
        self.max_handshakes = total.max(1);
        self.max_handshakes_per_address = per_address.max(1);
        self
    }

    /// Handshakes in progress from which an attempt whose source address is not yet
    /// validated gets a QUIC Retry instead of a handshake. Default 16.
    ///
    /// A Retry is a stateless packet carrying a token the client must send back from the same
    /// address (quinn's clients, quicraft's included, do so): it proves the address is real
    /// before this node spends crypto work or memory on it, so spoofed or fire-and-forget
    /// floods hold nothing. The price is one round trip more on every handshake while the
    /// threshold is passed. 0 asks every new attempt to validate its address (one round trip
    /// more on every dial, always); `usize::MAX` never does (floods are then bounded only by
    /// [`max_incoming_handshakes`](Self::max_incoming_handshakes)). Tokens are valid 15 s.
    pub fn handshake_retry_threshold(mut self, in_progress: usize) -> Self {
        self.handshake_retry_threshold = in_progress;
        self
    }

    /// Handshakes one source address (IP address and UDP port) may start: `per_second` on
    /// average, `burst` at once after a quiet spell. Default 8 per second, burst 16.
    ///
    /// An attempt beyond it is refused before any crypto work. It slows down a peer that
    /// re-dials in a loop (a member's valid certificate cannot be refused before its handshake,
    /// but every handshake it completes costs CPU and a connection that the pool then closes).
    /// An honest node re-dials a peer only after its backoff (`reconnect_backoff`, 100 ms
    /// doubling), far below the default. Lower bounds a re-dialling peer more tightly; too low
    /// refuses honest reconnections after a burst of failures (they retry after their
    /// backoff). Values below 1 count as 1.
    pub fn handshake_rate_per_address(mut self, per_second: u32, burst: u32) -> Self {
        self.handshake_rate_per_address = (per_second.max(1), burst.max(1));
        self
    }

    /// The handshake admission limits in effect.
    pub(super) fn admission_limits(&self) -> super::admission::Limits {
        let (rate, burst) = self.handshake_rate_per_address;
        super::admission::Limits {
            retry_threshold: self.handshake_retry_threshold,
            max_total: self.max_handshakes,
            max_per_address: self.max_handshakes_per_address,
            rate_per_second: f64::from(rate),
            burst: f64::from(burst),
        }
    }

    /// The stream limit a connection starts with: grown with use up to `max_streams`.
    pub(super) fn initial_streams(&self) -> u32 {
        self.max_streams.min(INITIAL_STREAMS)
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
            .field("busy_poll", &self.busy_poll)
            .field("heartbeat_hedge", &self.heartbeat_hedge)
            .field("rpc_timeout", &self.rpc_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field(
                "snapshot_bytes_per_timeout",
                &self.snapshot_bytes_per_timeout,
            )
            .field("idle_timeout", &self.idle_timeout)
            .field("keep_alive", &self.keep_alive)
            .field("max_message_size", &self.max_message_size)
            .field("max_streams", &self.max_streams)
            .field("max_snapshot_streams", &self.max_snapshot_streams)
            .field("max_in_flight", &self.max_in_flight)
            .field("receive_window", &self.receive_window)
            .field("stream_receive_window", &self.stream_receive_window)
            .field("udp_buffer_size", &self.udp_buffer_size)
            .field("max_udp_payload", &self.max_udp_payload)
            .field("congestion", &self.congestion)
            .field("initial_rtt", &self.initial_rtt)
            .field("send_window", &self.send_window)
            .field("consumer_capacity", &self.consumer_capacity)
            .field("backoff", &(self.backoff_base, self.backoff_max))
            .field("address_provider", &self.address_provider.is_some())
            .field(
                "stateless_reset_secret",
                &self.reset_secret.as_ref().map(|_| "set"),
            )
            .field("max_buffered_bytes_per_peer", &self.frame_budget())
            .field(
                "max_incoming_handshakes",
                &(self.max_handshakes, self.max_handshakes_per_address),
            )
            .field("handshake_retry_threshold", &self.handshake_retry_threshold)
            .field(
                "handshake_rate_per_address",
                &self.handshake_rate_per_address,
            )
            .finish_non_exhaustive()
    }
}

/// Congestion controllers a [`QuicConfig`] can choose, as quinn implements them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CongestionController {
    /// CUBIC (RFC 9438): loss-based, quinn's default.
    Cubic,
    /// NewReno (RFC 9002's reference controller): loss-based, conservative.
    NewReno,
    /// BBR (version 1, quinn's experimental implementation): model-based, tolerant of
    /// random loss. quicraft's default.
    #[default]
    Bbr,
}
