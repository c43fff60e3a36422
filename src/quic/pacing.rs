//! Snapshot pacing: holds a snapshot's data below what the path's bottleneck drains, so that a
//! bulk transfer does not fill the bottleneck's queue, which would delay and drop the
//! heartbeats and appends that share it (`QuicConfig::snapshot_pacing`).

use std::time::Duration;

use tokio::time::Instant;

/// How a snapshot's data is paced.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum SnapshotPacing {
    /// Not paced: the congestion controller alone decides.
    Off,
    /// At most this many bytes per second.
    Rate(u64),
    /// Follows the path: the rate backs off whenever the round-trip time rises above the
    /// path's least by more than a small margin (queueing at the bottleneck), and grows again
    /// while it does not, as delay-based background transfers do (LEDBAT, RFC 6817). The
    /// default.
    #[default]
    Auto,
}

/// The pacing of one transfer.
#[derive(Debug)]
pub(crate) struct Pacer {
    bucket: Option<Bucket>,
    adaptive: Option<Adaptive>,
}

impl Pacer {
    /// The pacer `pacing` asks for, or `None`.
    pub(crate) fn new(pacing: SnapshotPacing) -> Option<Self> {
        match pacing {
            SnapshotPacing::Off => None,
            SnapshotPacing::Rate(rate) => Some(Self {
                bucket: Some(Bucket::new(rate as f64)),
                adaptive: None,
            }),
            SnapshotPacing::Auto => Some(Self {
                bucket: None,
                adaptive: Some(Adaptive::default()),
            }),
        }
    }

    /// Accounts for `bytes` about to be sent on `conn`, first waiting until the pace allows
    /// them.
    ///
    /// Cancel-safe: a cancelled wait leaves the bytes accounted for, which only delays the
    /// next chunk.
    pub(crate) async fn admit(&mut self, bytes: usize, conn: &quinn::Connection) {
        let now = Instant::now();
        if let Some(adaptive) = &mut self.adaptive {
            match adaptive.observe(now, conn.rtt(), bytes) {
                Some(rate) => match &mut self.bucket {
                    Some(bucket) => bucket.rate = rate,
                    None => self.bucket = Some(Bucket::new(rate)),
                },
                None if !adaptive.engaged() => self.bucket = None,
                None => {}
            }
        }
        if let Some(bucket) = &mut self.bucket
            && let Some(until) = bucket.take(now, bytes)
        {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// How far ahead of its schedule a paced transfer may send: a chunk of the copy loop at once,
/// without sleeping for every chunk on a fast path.
const BURST: Duration = Duration::from_millis(10);

/// A token bucket over time: `n` bytes take `n / rate` seconds, and sending may run at most
/// [`BURST`] ahead of that schedule.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    /// When the bytes taken so far are due, by the rate.
    due: Instant,
}

impl Bucket {
    fn new(bytes_per_second: f64) -> Self {
        Self {
            rate: bytes_per_second.max(1.0),
            due: Instant::now(),
        }
    }

    /// Takes `bytes`; returns when they may go if that is later than `now` allows.
    fn take(&mut self, now: Instant, bytes: usize) -> Option<Instant> {
        // An idle spell earns no credit beyond the burst.
        if self.due + BURST < now {
            self.due = now - BURST;
        }
        self.due += Duration::from_secs_f64(bytes as f64 / self.rate.max(1.0));
        (self.due > now + BURST).then(|| self.due - BURST)
    }
}

/// The least queueing delay the adaptive pacer aims at; on a path longer than 50 ms, a tenth of
/// its round trip. Small, because a heartbeat waits behind whatever the queue holds; the
/// WAN bench's table (BENCHMARKS.md) shows the snapshot keeps its rate at this target.
const TARGET_DELAY_MIN: Duration = Duration::from_millis(5);
/// How often the adaptive pacer adjusts at the least (on a long path, once a round trip).
const ADJUST_MIN: Duration = Duration::from_millis(10);
/// The most the rate changes in one adjustment, either way, as a share of itself: reached
/// with no queueing at all (growth) or with twice the target (decrease). A fifth, so that a
/// rate cut by a burst of queueing is back within a few round trips.
const STEP: f64 = 0.2;

/// The adaptive pacer's state: the least RTT seen, and what was sent since the last
/// adjustment.
#[derive(Debug, Default)]
struct Adaptive {
    min_rtt: Option<Duration>,
    /// The pacing rate once queueing was seen (unpaced before).
    rate: Option<f64>,
    since: Option<Instant>,
    bytes: usize,
}

impl Adaptive {
    fn engaged(&self) -> bool {
        self.rate.is_some()
    }

    /// Takes an RTT sample and `bytes` about to be sent; returns the new rate when it changed.
    ///
    /// Unpaced until the RTT first shows a queue over the target; from then on, once a round
    /// trip, the rate moves towards keeping the queueing delay at the target, by up to
    /// [`STEP`] of itself (LEDBAT's rule, RFC 6817, on a rate). It grows only while the pace
    /// holds the transfer back (up to twice what went out), and a round trip in which little
    /// went out (flow control, a slow source) does not cut it.
    fn observe(&mut self, now: Instant, rtt: Duration, bytes: usize) -> Option<f64> {
        let min_rtt = self.min_rtt.map_or(rtt, |least| least.min(rtt));
        self.min_rtt = Some(min_rtt);
        let since = *self.since.get_or_insert(now);
        self.bytes += bytes;
        let elapsed = now.saturating_duration_since(since);
        if elapsed < min_rtt.max(ADJUST_MIN) {
            return None;
        }
        let measured = self.bytes as f64 / elapsed.as_secs_f64();
        self.since = Some(now);
        self.bytes = 0;
        let target = (min_rtt / 10).max(TARGET_DELAY_MIN).as_secs_f64();
        let queueing = rtt.saturating_sub(min_rtt).as_secs_f64();
        let off_target = ((target - queueing) / target).clamp(-1.0, 1.0);
        let rate = match self.rate {
            None if off_target >= 0.0 => return None,
            None => measured,
            Some(rate) => rate,
        };
        let mut rate = rate * (1.0 + STEP * off_target);
        // Growth only while the pace is what holds the transfer back: a transfer that sent
        // far less than its rate (a stall for flow control, a slow source) keeps its rate
        // rather than losing it, and does not grow it either.
        if off_target > 0.0 {
            rate = rate.min(self.rate.unwrap_or(rate).max(measured * 2.0));
        }
        self.rate = Some(rate.max(1.0));
        tracing::trace!(
            rtt_ms = rtt.as_secs_f64() * 1e3,
            min_rtt_ms = min_rtt.as_secs_f64() * 1e3,
            measured_mbit = measured * 8e-6,
            rate_mbit = rate * 8e-6,
            "snapshot pacing adjusted"
        );
        self.rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_keeps_to_its_rate_after_the_burst() {
        let start = Instant::now();
        let mut bucket = Bucket::new(1_000_000.0);
        // 2 MB in 64 KiB chunks at 1 MB/s: about 2 s, less the burst.
        let mut sent = 0;
        while sent < 2_000_000 {
            if let Some(until) = bucket.take(Instant::now(), 65_536) {
                tokio::time::sleep_until(until).await;
            }
            sent += 65_536;
        }
        let took = start.elapsed();
        let expected = Duration::from_secs_f64(sent as f64 / 1e6) - BURST;
        assert!(took >= expected, "{took:?} < {expected:?}");
        assert!(took <= expected + Duration::from_millis(70), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_no_more_than_the_burst() {
        let mut bucket = Bucket::new(1_000_000.0);
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 100 KB at 1 MB/s after 10 s idle: not at once, 90 ms late by the schedule.
        let until = bucket.take(Instant::now(), 100_000).expect("must wait");
        assert!(until - Instant::now() >= Duration::from_millis(80));
    }

    #[test]
    fn the_adaptive_pacer_stays_off_until_queueing_then_steers_towards_the_target() {
        let mut pacer = Adaptive::default();
        let start = Instant::now();
        let rtt = Duration::from_millis(40);
        let at = |ms: u64| start + Duration::from_millis(ms);
        // No queueing: not engaged, whatever is sent.
        assert_eq!(pacer.observe(at(0), rtt, 1_000_000), None);
        assert_eq!(pacer.observe(at(50), rtt, 1_000_000), None);
        assert!(!pacer.engaged());
        // 600 KB in 50 ms with 20 ms of queueing (over twice the 5 ms target): engaged at
        // what went out, less the whole step.
        let backed = pacer
            .observe(at(100), rtt + Duration::from_millis(20), 600_000)
            .expect("engaged");
        let measured = 600_000.0 / 0.050;
        assert!((backed - measured * (1.0 - STEP)).abs() < 1.0, "{backed}");
        // At the target: unchanged.
        let held = pacer
            .observe(at(150), rtt + Duration::from_millis(5), 600_000)
            .expect("adjusted");
        assert!((held - backed).abs() < 1.0, "{held} after {backed}");
        // The queue gone: grows by the whole step.
        let grown = pacer.observe(at(200), rtt, 600_000).expect("adjusted");
        assert!(
            (grown - held * (1.0 + STEP)).abs() < 1.0,
            "{grown} after {held}"
        );
    }

    #[test]
    fn a_stall_neither_cuts_nor_grows_the_rate() {
        let mut pacer = Adaptive::default();
        let start = Instant::now();
        let rtt = Duration::from_millis(40);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(pacer.observe(at(0), rtt, 1_000_000), None);
        let engaged = pacer
            .observe(at(50), rtt + Duration::from_millis(20), 1_000_000)
            .expect("engaged");
        // A round trip in which almost nothing went out (the window was full), no queueing:
        // the rate holds; it does not fall to what went out, nor grow past it.
        let held = pacer.observe(at(100), rtt, 1_000).expect("adjusted");
        assert!((held - engaged).abs() < 1.0, "{held} after {engaged}");
        // Queueing still cuts it.
        let cut = pacer
            .observe(at(150), rtt + Duration::from_millis(20), 1_000)
            .expect("adjusted");
        assert!(
            (cut - held * (1.0 - STEP)).abs() < 1.0,
            "{cut} after {held}"
        );
    }
}
