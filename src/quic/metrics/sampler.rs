//! The sampler: once a second, what quinn counted on each connection and what the node
//! holds, published as metrics.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::{PeerMetrics, SAMPLE_INTERVAL, node, peer_frame_bytes};
use crate::quic::pool::Pool;
use crate::quic::server::Server;

/// Every [`SAMPLE_INTERVAL`] until shutdown: publishes each peer's RPC counts, mirrors
/// [`TransportStats`](crate::TransportStats) and each peer's frame budget in use, and adds
/// what quinn counted on each connection (bytes, packets, losses) to its peer's metrics, with
/// the path gauges (RTT, congestion window, MTU) from the connection calls use.
pub(crate) async fn sample(pool: Arc<Pool>, server: Arc<Server>) {
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(SAMPLE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = server.shutdown.cancelled() => {
                // What was counted since the last tick.
                pool.peer_registry().flush();
                return;
            }
            _ = tick.tick() => {}
        }
        pool.peer_registry().flush();
        node(&server.stats.stats(server.dispatcher.queued()));
        let primary: HashSet<usize> = pool
            .connections()
            .iter()
            .map(|(_, c)| c.conn.stable_id())
            .collect();
        let mut next = sampler.begin();
        for (peer, conn) in pool.every_connection() {
            let is_primary = primary.contains(&conn.conn.stable_id());
            sampler.connection(&mut next, &conn.metrics, &conn.conn, is_primary);
            if is_primary {
                peer_frame_bytes(&conn.metrics, server.budgets.used(&peer));
            }
        }
        sampler.finish(next);
    }
}

/// What the sampler last read of one connection (quinn's counters are per connection and
/// start at zero; the metrics are per peer and only grow).
#[derive(Default, Clone, Copy)]
struct Seen {
    tx_bytes: u64,
    rx_bytes: u64,
    sent_packets: u64,
    lost_packets: u64,
    congestion_events: u64,
}

/// The sampler's memory between two samples.
#[derive(Default)]
struct Sampler {
    seen: HashMap<usize, Seen>,
}

impl Sampler {
    /// Adds what `conn` (to the peer of `metrics`) did since the last sample to the peer's
    /// counters; with `primary`, also sets the peer's path gauges from it.
    fn connection(
        &mut self,
        next: &mut HashMap<usize, Seen>,
        metrics: &PeerMetrics,
        conn: &quinn::Connection,
        primary: bool,
    ) {
        let stats = conn.stats();
        let now = Seen {
            tx_bytes: stats.udp_tx.bytes,
            rx_bytes: stats.udp_rx.bytes,
            sent_packets: stats.path.sent_packets,
            lost_packets: stats.path.lost_packets,
            congestion_events: stats.path.congestion_events,
        };
        let before = self
            .seen
            .get(&conn.stable_id())
            .copied()
            .unwrap_or_default();
        let handles = metrics.path();
        handles
            .sent_bytes
            .increment(now.tx_bytes.saturating_sub(before.tx_bytes));
        handles
            .received_bytes
            .increment(now.rx_bytes.saturating_sub(before.rx_bytes));
        handles
            .sent_packets
            .increment(now.sent_packets.saturating_sub(before.sent_packets));
        handles
            .lost_packets
            .increment(now.lost_packets.saturating_sub(before.lost_packets));
        handles.congestion_events.increment(
            now.congestion_events
                .saturating_sub(before.congestion_events),
        );
        if primary {
            handles.rtt.set(stats.path.rtt.as_secs_f64());
            handles.cwnd.set(stats.path.cwnd as f64);
            handles.mtu.set(f64::from(stats.path.current_mtu));
        }
        next.insert(conn.stable_id(), now);
    }

    /// Ends a sample: connections not seen in it are forgotten.
    fn finish(&mut self, next: HashMap<usize, Seen>) {
        self.seen = next;
    }

    /// A fresh map for the next sample.
    fn begin(&self) -> HashMap<usize, Seen> {
        HashMap::with_capacity(self.seen.len())
    }
}
