//! QUIC and UDP tuning of a [`QuicTransport`](super::QuicTransport): what the connections and
//! the socket do underneath the RPCs. The defaults suit a LAN or one host and work across a
//! WAN; BENCHMARKS.md has what each setting changes, measured.

use std::sync::Arc;
use std::time::Duration;

use super::interfaces;
use crate::error::{ConfigError, Error};

/// Transport tuning, given to [`QuicConfig::tuning`](super::QuicConfig::tuning). Every
/// setting has a default chosen for Raft's traffic (small, latency-sensitive RPCs beside bulk
/// snapshots), which may differ from quinn's.
///
/// ```
/// use std::time::Duration;
/// use quicraft::{CongestionController, QuicTuning};
///
/// // Across regions: no spinning, a closer first RTT guess.
/// let wan = QuicTuning::default()
///     .busy_poll(Duration::ZERO)
///     .initial_rtt(Duration::from_millis(50))
///     .congestion_controller(CongestionController::Bbr);
/// # let _ = wan;
/// ```
#[derive(Debug, Clone)]
pub struct QuicTuning {
    pub(super) idle_timeout: Duration,
    pub(super) keep_alive: Option<Duration>,
    pub(super) receive_window: u64,
    /// `None`: by the bind address, at bind ([`Self::for_bind`]).
    pub(super) stream_receive_window: Option<u32>,
    pub(super) send_window: u64,
    pub(super) udp_buffer_size: usize,
    /// `None`: from the MTU of this host's interfaces, at bind ([`Self::for_bind`]).
    pub(super) max_udp_payload: Option<u16>,
    /// The bound is known to be every path's MTU (a loopback bind, the bound from the
    /// interface): path MTU discovery probes it at once instead of searching up to it.
    mtu_known: bool,
    pub(super) congestion: CongestionController,
    pub(super) initial_rtt: Duration,
    pub(super) busy_poll: Duration,
}

/// The default stream window (quinn's): 100 Mbit/s per stream at 100 ms.
const STREAM_WINDOW: u32 = 1_250_000;
/// The default stream window of a node bound to loopback: its paths' RTT is tens of
/// microseconds, so this still carries several GB/s per stream.
const SAME_HOST_STREAM_WINDOW: u32 = 256 * 1024;

impl Default for QuicTuning {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(5)),
            receive_window: 32 * 1024 * 1024,
            stream_receive_window: None,
            send_window: 10 * 1024 * 1024,
            udp_buffer_size: 4 * 1024 * 1024,
            max_udp_payload: None,
            mtu_known: false,
            congestion: CongestionController::Bbr,
            initial_rtt: Duration::from_millis(333),
            busy_poll: Duration::from_micros(50),
        }
    }
}

impl QuicTuning {
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

    /// Bytes a peer may have in flight to this node over all streams of its connection (QUIC
    /// connection flow control). Default 32 MiB, at least 64 KiB. Bounds what one peer can make
    /// this node buffer; below the link's bandwidth-delay product it caps throughput.
    pub fn receive_window(mut self, bytes: u64) -> Self {
        self.receive_window = bytes.max(64 * 1024);
        self
    }

    /// Bytes a peer may have in flight to this node on any one stream (QUIC stream flow
    /// control), at least 16 KiB. A stream's rate is at most window ÷ RTT, and a heartbeat
    /// can queue behind up to a window of another stream's data. By default it is set when
    /// the transport binds: 1,250,000 bytes (quinn's; 100 Mbit/s at 100 ms), except for a
    /// node bound to a loopback address, whose every path is on this host (tens of
    /// microseconds): 256 KiB there, which still carries several GB/s per stream and keeps
    /// a heartbeat from waiting behind a snapshot (BENCHMARKS.md has both). quinn fixes the
    /// window for a connection's life, so it cannot follow each path's RTT.
    pub fn stream_receive_window(mut self, bytes: u32) -> Self {
        self.stream_receive_window = Some(bytes.max(16 * 1024));
        self
    }

    /// Bytes this node may have in flight unacknowledged per connection. Default 10 MiB
    /// (quinn's), at least 64 KiB. It must cover the bandwidth-delay product to fill a long fat
    /// link; larger lets more data queue behind a slow peer.
    pub fn send_window(mut self, bytes: u64) -> Self {
        self.send_window = bytes.max(64 * 1024);
        self
    }

    /// Size asked for the UDP socket's send and receive buffers; 0 keeps the system's.
    /// Default 4 MiB: the usual system default (about 208 KiB) drops packets at full speed,
    /// which congestion control reads as loss. Linux caps it at `net.core.rmem_max` /
    /// `wmem_max`; larger absorbs bursts but lets a queue build up.
    pub fn udp_buffer_size(mut self, bytes: usize) -> Self {
        self.udp_buffer_size = bytes;
        self
    }

    /// The largest UDP payload path MTU discovery may try, at least 1200. By default it is
    /// taken from this host's interfaces when the transport binds: the loopback interface's
    /// MTU for a node bound to a loopback address (65,488 bytes on Linux), otherwise the
    /// largest MTU of the interfaces that are up (1,452 bytes on an Ethernet host, 8,952 with
    /// jumbo frames), always minus 48 bytes of IPv6 and UDP headers; 1,452 where the
    /// interfaces cannot be read. Each connection then finds what its path carries, from
    /// 1,200 up: fewer, larger packets cost less CPU per byte (on loopback a snapshot moves
    /// about four times as fast as at 1,452). Probes above the outgoing interface's MTU fail
    /// on this host and cost no traffic. The cost is memory: quinn keeps each connection's
    /// send buffer at the largest batch it has built (at most one 64 KiB datagram, as the
    /// socket caps a batch to one), and the endpoint's receive buffers at this size.
    pub fn max_udp_payload(mut self, bytes: u16) -> Self {
        self.max_udp_payload = Some(bytes.max(1200));
        self
    }

    /// These settings for a transport bound to `bind`: the path MTU bound resolved from this
    /// host's interfaces and the stream window from the bind address, unless they were set.
    pub(super) fn for_bind(&self, bind: std::net::IpAddr) -> Self {
        let mut tuning = self.clone();
        tuning.max_udp_payload = Some(
            self.max_udp_payload
                .unwrap_or_else(|| interfaces::max_udp_payload(bind.is_loopback())),
        );
        tuning.mtu_known = self.max_udp_payload.is_none() && bind.is_loopback();
        tuning.stream_receive_window = Some(self.stream_window_for(bind));
        tuning
    }

    /// The stream window for a transport bound to `bind`: as set, else by the address
    /// ([`Self::stream_receive_window`]).
    fn stream_window_for(&self, bind: std::net::IpAddr) -> u32 {
        self.stream_receive_window.unwrap_or(if bind.is_loopback() {
            SAME_HOST_STREAM_WINDOW
        } else {
            STREAM_WINDOW
        })
    }

    /// The path MTU bound in use ([`Self::for_bind`] resolves it first).
    pub(super) fn udp_payload(&self) -> u16 {
        self.max_udp_payload
            .unwrap_or(interfaces::FALLBACK_UDP_PAYLOAD)
    }

    /// The congestion controller. Default [`CongestionController::Bbr`], which keeps a
    /// snapshot moving on a lossy long link where loss-based controllers back off. Cubic is
    /// more conservative and fairer to loss-based flows sharing a congested link.
    pub fn congestion_controller(mut self, controller: CongestionController) -> Self {
        self.congestion = controller;
        self
    }

    /// The round-trip time assumed before the first measurement. Default 333 ms (QUIC's
    /// recommendation). Set it near the real RTT (e.g. 50 ms across regions) so the first
    /// retransmissions of a new connection are not late.
    pub fn initial_rtt(mut self, rtt: Duration) -> Self {
        self.initial_rtt = rtt;
        self
    }

    /// How long the endpoint keeps polling its socket after a datagram, instead of parking
    /// its thread; zero turns it off. Default 50 µs, backing off when the spin finds nothing.
    /// On a LAN or one host an answer then finds the thread awake (no wake-up in the round
    /// trip), for CPU right after traffic only. Across a WAN it buys nothing: turn it off.
    pub fn busy_poll(mut self, window: Duration) -> Self {
        self.busy_poll = window;
        self
    }

    /// quinn's transport settings for these values: `initial_streams` bidirectional and
    /// `snapshot_streams` unidirectional streams per connection at first.
    pub(super) fn transport_config(
        &self,
        initial_streams: u32,
        snapshot_streams: u32,
    ) -> Result<quinn::TransportConfig, Error> {
        let idle = quinn::IdleTimeout::try_from(self.idle_timeout).map_err(|_| {
            ConfigError::Invalid(format!("idle timeout {:?} is too long", self.idle_timeout))
        })?;
        let congestion: Arc<dyn quinn::congestion::ControllerFactory + Send + Sync> = match self
            .congestion
        {
            CongestionController::Cubic => Arc::new(quinn::congestion::CubicConfig::default()),
            CongestionController::NewReno => Arc::new(quinn::congestion::NewRenoConfig::default()),
            CongestionController::Bbr => Arc::new(quinn::congestion::BbrConfig::default()),
        };
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(self.udp_payload());
        if self.mtu_known {
            // One probe at the bound rather than a binary search of about a dozen probes up
            // to it: each probe is padded to its size (up to 64 KiB), which the peer parses
            // byte by byte, so the search cost more than the handshake itself.
            mtu.minimum_change(self.udp_payload().saturating_sub(MIN_UDP_PAYLOAD).max(1));
        }
        let mut transport = quinn::TransportConfig::default();
        transport
            .max_idle_timeout(Some(idle))
            .keep_alive_interval(self.keep_alive)
            .max_concurrent_bidi_streams(initial_streams.into())
            .max_concurrent_uni_streams(snapshot_streams.into())
            .receive_window(
                quinn::VarInt::from_u64(self.receive_window).unwrap_or(quinn::VarInt::MAX),
            )
            .stream_receive_window(quinn::VarInt::from_u32(
                self.stream_receive_window.unwrap_or(STREAM_WINDOW),
            ))
            .congestion_controller_factory(congestion)
            .initial_rtt(self.initial_rtt)
            .send_window(self.send_window)
            // Datagrams carry only the connection probes of `pool` (empty, never read): a
            // small buffer bounds what a peer's datagrams can make this node hold.
            .datagram_receive_buffer_size(Some(PROBE_DATAGRAM_BUFFER))
            .mtu_discovery_config(Some(mtu));
        Ok(transport)
    }
}

/// The UDP payload every QUIC path carries (RFC 9000), where path MTU discovery starts.
const MIN_UDP_PAYLOAD: u16 = 1200;

/// Bytes of received datagrams a connection keeps (quinn drops the oldest beyond it).
const PROBE_DATAGRAM_BUFFER: usize = 1024;

/// Congestion controllers [`QuicTuning::congestion_controller`] can choose, as quinn
/// implements them.
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

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use super::*;

    #[test]
    fn the_stream_window_follows_the_bind_address_unless_set() {
        let by_default = QuicTuning::default();
        let window = |tuning: &QuicTuning, ip: IpAddr| tuning.for_bind(ip).stream_receive_window;
        assert_eq!(
            window(&by_default, IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(SAME_HOST_STREAM_WINDOW)
        );
        assert_eq!(
            window(&by_default, IpAddr::V6(Ipv6Addr::LOCALHOST)),
            Some(SAME_HOST_STREAM_WINDOW)
        );
        assert_eq!(
            window(&by_default, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            Some(STREAM_WINDOW)
        );
        assert_eq!(
            window(&by_default, IpAddr::V4(Ipv4Addr::new(198, 18, 0, 1))),
            Some(STREAM_WINDOW)
        );
        let set = QuicTuning::default().stream_receive_window(2_000_000);
        assert_eq!(
            window(&set, IpAddr::V4(Ipv4Addr::LOCALHOST)),
            Some(2_000_000)
        );
    }
}
