//! Whether a connection's peer still answers: the probe, and the watchdog that probes a
//! connection after a call on it timed out.

use std::time::Duration;

use tokio::time::Instant;

use crate::quic::codes::conn;

/// Added to a probe's wait for an answer: the peer may delay its ACK by up to 25 ms (QUIC's
/// default `max_ack_delay`), and a loaded peer (or a loaded machine) takes longer. A live peer
/// answers within a round trip and the probe ends then; a restarted one resets the connection
/// at once; only a peer gone silent costs the whole wait.
const PROBE_SLACK: Duration = Duration::from_millis(250);

/// Whether the peer still answers on `conn` within `timeout`. Sends an empty DATAGRAM frame
/// (ack-eliciting, ignored by the peer's application; sent again halfway in case one is
/// lost) and watches for any packet arriving on the connection. A peer that restarted
/// answers with a stateless reset (the connection closes at once); a peer gone silent does
/// not answer at all.
pub(super) async fn probe(conn: quinn::Connection, timeout: Duration) -> bool {
    let before = conn.stats().udp_rx.datagrams;
    let start = Instant::now();
    let deadline = start + timeout;
    // A peer that takes no datagrams leaves only its own traffic to show it is alive.
    let _ = conn.send_datagram(bytes::Bytes::new());
    let mut resent = false;
    let step = (timeout / 16).max(Duration::from_millis(1));
    loop {
        if conn.close_reason().is_some() {
            return false;
        }
        if conn.stats().udp_rx.datagrams > before {
            tracing::trace!(after = ?start.elapsed(), "probe answered");
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        if !resent && now >= start + timeout / 2 {
            let _ = conn.send_datagram(bytes::Bytes::new());
            resent = true;
        }
        tokio::select! {
            _ = conn.closed() => return false,
            _ = tokio::time::sleep(step) => {}
        }
    }
}

/// How long a probe may wait for an answer: a few round trips plus the peer's ACK delay, at
/// most `max`.
pub(super) fn probe_timeout(conn: &quinn::Connection, max: Duration) -> Duration {
    (conn.rtt() * 3 + PROBE_SLACK).clamp(PROBE_SLACK, max.max(PROBE_SLACK))
}

/// See [`Pool::watchdog`](super::Pool::watchdog).
pub(crate) struct Watchdog<'a> {
    conn: &'a quinn::Connection,
    tasks: &'a tokio_util::task::TaskTracker,
    deadline: Instant,
    probe_max: Duration,
    armed: bool,
}

impl<'a> Watchdog<'a> {
    pub(super) fn new(
        conn: &'a quinn::Connection,
        tasks: &'a tokio_util::task::TaskTracker,
        deadline: Instant,
        probe_max: Duration,
    ) -> Self {
        Self {
            conn,
            tasks,
            deadline,
            probe_max,
            armed: true,
        }
    }

    /// The call got an answer (or failed on its own): nothing to check.
    pub(crate) fn answered(mut self) {
        self.armed = false;
    }
}

impl Drop for Watchdog<'_> {
    fn drop(&mut self) {
        // Dropped before its deadline: cancelled by the caller, which says nothing of the peer.
        if !self.armed || Instant::now() < self.deadline || self.conn.close_reason().is_some() {
            return;
        }
        let conn = self.conn.clone();
        let timeout = probe_timeout(&conn, self.probe_max);
        self.tasks.spawn(async move {
            if !probe(conn.clone(), timeout).await && conn.close_reason().is_none() {
                tracing::info!(
                    remote = %conn.remote_address(),
                    "a call timed out and the connection did not answer a probe; closing it"
                );
                conn.close(conn::STALE, b"no answer to a probe");
            }
        });
    }
}
