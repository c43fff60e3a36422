//! The endpoint's UDP socket: quinn's, with segmentation-offload batches kept under the UDP
//! datagram limit, and optionally kept polling for a short while after traffic so an answer
//! that comes back within microseconds does not have to wake a parked thread.
//!
//! Batches: quinn sends up to 10 packets per `sendmsg` with GSO whatever their size, and
//! quinn-udp treats the kernel's EMSGSIZE for a batch over 64 KiB as sent (it expects it only
//! from MTU probes). With packets over ~6.5 KB (a jumbo-frame or loopback path MTU) every full
//! batch silently vanished: quinn saw ~40 % loss and fell back to the minimum MTU. The socket
//! reports how many packets of the largest allowed size fit in one datagram instead (the
//! silent EMSGSIZE on big batches is discussed upstream in quinn-rs/quinn#2199).
//!
//! Busy-polling: on an idle machine a thread waiting in `epoll_wait` lets its CPU halt, and
//! the wake-up when a datagram lands costs tens of microseconds (a virtual CPU's wake-up costs
//! a VM exit too). A Raft round trip crosses threads at least twice, so on loopback or a fast LAN the
//! wake-ups are most of the latency. Staying runnable for a bounded window after each send or
//! receive — yielding to the runtime between polls, never blocking it — trades CPU for that
//! latency, as Go's scheduler does by spinning before it parks.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// The largest UDP payload one `sendmsg` may carry (65,535 minus the 8-byte UDP and 20-byte
/// IPv4 headers).
const MAX_UDP_DATAGRAM: usize = 65_507;

/// A UDP socket for quinn whose segmentation-offload batches fit one UDP datagram, and that,
/// for `window` after the last datagram sent or received (zero: never), does not let its
/// receive poll park: it asks the runtime to poll it again after the runtime has checked for
/// I/O (tokio's `yield_now`, which defers the wake until the I/O driver ran).
pub(super) struct QuicSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    /// Packets per send batch: what the socket supports, and what fits one datagram at the
    /// largest packet size allowed.
    max_segments: usize,
    window: Duration,
    /// Start of the clock `window_start` counts from.
    epoch: Instant,
    /// A datagram was sent or received since the receive poll last looked: the next pending
    /// poll opens a window. A flag, so that traffic itself never reads the clock.
    active: AtomicBool,
    /// Nanoseconds after `epoch` of the first pending poll after traffic: the window's start.
    window_start: AtomicU64,
    /// Whether the receive poll is spinning in the current window (set on its first spin).
    spinning: AtomicBool,
    /// Windows in a row whose spin ended without a datagram.
    misses: AtomicU32,
    /// Windows still to skip without spinning (after misses), and whether this one is.
    skip: AtomicU32,
    skipping: AtomicBool,
}

/// Missed windows in a row before spinning backs off.
const MISSES_BEFORE_BACKOFF: u32 = 4;
/// At most this many windows are skipped between two tries (2^6).
const MAX_BACKOFF_EXPONENT: u32 = 6;

impl QuicSocket {
    /// Wraps `inner` for packets of at most `max_packet` bytes, busy-polling for `window`.
    pub(super) fn new(inner: Arc<dyn AsyncUdpSocket>, max_packet: u16, window: Duration) -> Self {
        let fit = (MAX_UDP_DATAGRAM / usize::from(max_packet.max(1))).max(1);
        Self {
            max_segments: inner.max_transmit_segments().min(fit),
            inner,
            window,
            epoch: Instant::now(),
            active: AtomicBool::new(false),
            window_start: AtomicU64::new(0),
            spinning: AtomicBool::new(false),
            misses: AtomicU32::new(0),
            skip: AtomicU32::new(0),
            skipping: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        // Saturates after ~584 years of uptime.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Records traffic (only when busy-polling: otherwise nothing reads it), opening a
    /// window at the next pending poll, which is skipped while spinning is backing off.
    fn touch(&self) {
        if !self.window.is_zero() {
            // Relaxed: a stale read only shortens or lengthens one spin by a few polls, and
            // the back-off counts are a heuristic.
            self.active.store(true, Ordering::Relaxed);
            let skip = self.skip.load(Ordering::Relaxed);
            if skip > 0 {
                self.skip.store(skip - 1, Ordering::Relaxed);
            }
            self.skipping.store(skip > 0, Ordering::Relaxed);
        }
    }

    /// A datagram arrived: a spin under way paid off.
    fn spin_paid_off(&self) {
        if self.spinning.swap(false, Ordering::Relaxed) {
            self.misses.store(0, Ordering::Relaxed);
        }
    }

    /// The window closed without a datagram: a spin under way was wasted. After
    /// [`MISSES_BEFORE_BACKOFF`] in a row, the next windows are skipped, twice as many each
    /// further miss (up to 64), so a node whose answers come later than the window (a WAN, a
    /// machine whose CPUs are all busy, where spinning only delays the thread that would
    /// answer) stops paying for it, and tries again now and then.
    fn spin_missed(&self) {
        if !self.spinning.swap(false, Ordering::Relaxed) {
            return;
        }
        let misses = self.misses.load(Ordering::Relaxed).saturating_add(1);
        self.misses.store(misses, Ordering::Relaxed);
        if misses >= MISSES_BEFORE_BACKOFF {
            let exponent = (misses - MISSES_BEFORE_BACKOFF).min(MAX_BACKOFF_EXPONENT);
            self.skip.store(1 << exponent, Ordering::Relaxed);
        }
    }

    /// Whether a pending receive poll should spin: within `window` of the first pending poll
    /// after the last traffic.
    fn in_window(&self) -> bool {
        if self.window.is_zero() || self.skipping.load(Ordering::Relaxed) {
            return false;
        }
        let now = self.now();
        if self.active.swap(false, Ordering::Relaxed) {
            self.window_start.store(now, Ordering::Relaxed);
            return true;
        }
        let idle = now.saturating_sub(self.window_start.load(Ordering::Relaxed));
        u128::from(idle) < self.window.as_nanos()
    }
}

impl fmt::Debug for QuicSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuicSocket")
            .field("inner", &self.inner)
            .field("max_segments", &self.max_segments)
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl AsyncUdpSocket for QuicSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit<'_>) -> io::Result<()> {
        let sent = self.inner.try_send(transmit);
        if sent.is_ok() {
            self.touch();
        }
        sent
    }

    fn poll_recv(
        &self,
        cx: &mut Context<'_>,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        match self.inner.poll_recv(cx, bufs, meta) {
            Poll::Ready(result) => {
                if result.is_ok() {
                    self.spin_paid_off();
                    self.touch();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                if self.in_window() {
                    // Pending now, polled again once the runtime has looked for I/O: the
                    // thread stays awake (other tasks still run in between) until the window
                    // closes. A fresh `yield_now` is always pending on its first poll.
                    self.spinning.store(true, Ordering::Relaxed);
                    let _ = pin!(tokio::task::yield_now()).poll(cx);
                } else {
                    self.spin_missed();
                }
                Poll::Pending
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.max_segments
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::task::{Wake, Waker};

    use super::*;

    /// A socket that never has a datagram and sends everything.
    #[derive(Debug)]
    struct Silent;

    impl AsyncUdpSocket for Silent {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            unreachable!("not used by these tests")
        }

        fn try_send(&self, _: &Transmit<'_>) -> io::Result<()> {
            Ok(())
        }

        fn poll_recv(
            &self,
            _: &mut Context<'_>,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }

        fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
            Ok(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        }

        fn max_transmit_segments(&self) -> usize {
            64
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `socket` for a datagram once; returns how often that asked to be polled again.
    fn poll_once(socket: &QuicSocket) -> usize {
        let wakes = Arc::new(Wakes::default());
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = [0u8; 16];
        let mut bufs = [IoSliceMut::new(&mut buf)];
        let mut meta = [RecvMeta::default()];
        assert!(socket.poll_recv(&mut cx, &mut bufs, &mut meta).is_pending());
        wakes.0.load(Ordering::SeqCst)
    }

    fn transmit(contents: &[u8]) -> Transmit<'_> {
        Transmit {
            destination: std::net::SocketAddr::from(([127, 0, 0, 1], 9)),
            ecn: None,
            contents,
            segment_size: None,
            src_ip: None,
        }
    }

    #[test]
    fn keeps_polling_within_the_window_after_a_send_and_parks_after_it() {
        // Outside a tokio runtime `yield_now` wakes at once, which is what the count sees.
        let socket = QuicSocket::new(Arc::new(Silent), 1452, Duration::from_secs(3600));
        socket.try_send(&transmit(b"x")).unwrap();
        assert_eq!(poll_once(&socket), 1, "within the window: polled again");
        assert_eq!(poll_once(&socket), 1, "still within the window");
    }

    #[test]
    fn parks_when_the_window_has_passed() {
        let mut socket = QuicSocket::new(Arc::new(Silent), 1452, Duration::from_millis(100));
        socket.try_send(&transmit(b"x")).unwrap();
        assert_eq!(poll_once(&socket), 1);
        // As if that send was a second ago.
        socket.epoch -= Duration::from_secs(1);
        assert_eq!(poll_once(&socket), 0, "the window passed: park");
    }

    #[test]
    fn a_send_batch_always_fits_one_udp_datagram() {
        for (packet, segments) in [(1200, 54), (1452, 45), (9000, 7), (16_384, 3), (65_527, 1)] {
            let socket = QuicSocket::new(Arc::new(Silent), packet, Duration::ZERO);
            assert_eq!(
                socket.max_transmit_segments(),
                segments,
                "packets of {packet}"
            );
            // One packet per send is never batched, whatever its size.
            assert!(segments == 1 || segments * usize::from(packet) <= MAX_UDP_DATAGRAM);
        }
        // Never more than the socket itself supports.
        let socket = QuicSocket::new(Arc::new(Silent), 100, Duration::ZERO);
        assert_eq!(socket.max_transmit_segments(), 64);
    }

    #[test]
    fn spinning_backs_off_after_windows_that_bring_nothing_and_resumes_when_one_does() {
        let mut socket = QuicSocket::new(Arc::new(Silent), 1452, Duration::from_millis(100));
        let window_without_answer = |socket: &mut QuicSocket| {
            socket.try_send(&transmit(b"x")).unwrap();
            let spun = poll_once(socket);
            socket.epoch -= Duration::from_secs(1);
            assert_eq!(poll_once(socket), 0, "the window passed");
            spun
        };
        for _ in 0..MISSES_BEFORE_BACKOFF {
            assert_eq!(window_without_answer(&mut socket), 1, "spins");
        }
        // Backing off: the next window is skipped, then one is tried again.
        assert_eq!(window_without_answer(&mut socket), 0, "skipped");
        assert_eq!(window_without_answer(&mut socket), 1, "tried again");
        // That one missed too: two windows are skipped now.
        assert_eq!(window_without_answer(&mut socket), 0);
        assert_eq!(window_without_answer(&mut socket), 0);
        assert_eq!(window_without_answer(&mut socket), 1);
        // A datagram arriving while a spin is under way resets the back-off.
        socket.spinning.store(true, Ordering::Relaxed);
        socket.spin_paid_off();
        assert_eq!(socket.misses.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_zero_window_never_spins() {
        let socket = QuicSocket::new(Arc::new(Silent), 1452, Duration::ZERO);
        socket.try_send(&transmit(b"x")).unwrap();
        assert_eq!(poll_once(&socket), 0);
    }
}
