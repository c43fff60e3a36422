//! Snapshot pacing: holds a snapshot's data to a byte rate, so that a bulk transfer leaves
//! room on a shared bottleneck for heartbeats and appends (`QuicConfig::snapshot_rate`).

use std::time::Duration;

use tokio::time::Instant;

/// A token bucket over time: each chunk of `n` bytes takes `n / rate` seconds, and sending
/// may run at most [`BURST`] ahead of that schedule.
#[derive(Debug)]
pub(crate) struct Pacer {
    bytes_per_second: u64,
    /// When the bytes sent so far are due, by the rate.
    due: Instant,
}

/// How far ahead of its schedule a paced transfer may send: one chunk of the copy loop at
/// once, without sleeping for every chunk on a fast path.
const BURST: Duration = Duration::from_millis(10);

impl Pacer {
    /// A pacer at `bytes_per_second` (at least 1), starting now.
    pub(crate) fn new(bytes_per_second: u64) -> Self {
        Self {
            bytes_per_second: bytes_per_second.max(1),
            due: Instant::now(),
        }
    }

    /// Accounts for `bytes` about to be sent, waiting first until the schedule allows them.
    ///
    /// Cancel-safe: a cancelled wait leaves the bytes accounted for, which only delays the
    /// next chunk.
    pub(crate) async fn admit(&mut self, bytes: usize) {
        let now = Instant::now();
        // An idle spell earns no credit beyond the burst.
        if self.due + BURST < now {
            self.due = now - BURST;
        }
        let takes = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second as f64);
        self.due += takes;
        if self.due > now + BURST {
            tokio::time::sleep_until(self.due - BURST).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_paced_transfer_keeps_to_its_rate_after_the_burst() {
        let start = Instant::now();
        let mut pacer = Pacer::new(1_000_000);
        // 2 MB in 64 KiB chunks at 1 MB/s: about 2 s, less the burst.
        let mut sent = 0;
        while sent < 2_000_000 {
            pacer.admit(65_536).await;
            sent += 65_536;
        }
        let took = start.elapsed();
        let expected = Duration::from_secs_f64(sent as f64 / 1e6) - BURST;
        assert!(took >= expected, "{took:?} < {expected:?}");
        assert!(took <= expected + Duration::from_millis(70), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_earns_no_more_than_the_burst() {
        let mut pacer = Pacer::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(10)).await;
        let start = Instant::now();
        // 100 KB at 1 MB/s after 10 s idle: not sent at once, 90 ms late by the schedule.
        pacer.admit(100_000).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(80), "{took:?}");
    }
}
