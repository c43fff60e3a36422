//! Hedged heartbeats: a heartbeat unanswered after a short delay gets a copy on a second
//! stream, and the first answer wins (`QuicConfig::heartbeat_hedge`). Against loss on a long
//! path, where the loss tail (a loss detection and a retransmission) is several round trips.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::client::{Client, unary};
use super::pool::PeerConn;
use super::priority;
use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, RpcKind, ServerAddress, ServerId,
};
use crate::error::Error;

/// When a heartbeat gets a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum HeartbeatHedge {
    /// Never: one stream per heartbeat.
    Off,
    /// A copy when the heartbeat has no answer after this delay, whatever the path.
    After(Duration),
    /// A copy after [`HeartbeatHedge::AUTO_DELAY`] on paths whose round-trip time (the least
    /// seen on the connection) is at least that long and whose peer is not on this host:
    /// across regions, where the copy costs a few dozen bytes and saves round trips when a
    /// packet is lost. None on shorter paths (one host, a LAN), where a heartbeat that late
    /// means a busy peer, which a copy would only load more. The default.
    #[default]
    Auto,
}

impl HeartbeatHedge {
    /// The delay of [`HeartbeatHedge::Auto`], and the shortest round trip it hedges on.
    pub const AUTO_DELAY: Duration = Duration::from_millis(5);

    /// How long after the original the copy goes, or `None` for no copy; `long_path` says
    /// whether a path's least round-trip time is at least a given length.
    pub(crate) fn delay(self, long_path: impl FnOnce(Duration) -> bool) -> Option<Duration> {
        match self {
            Self::Off => None,
            Self::After(delay) => Some(delay),
            Self::Auto => long_path(Self::AUTO_DELAY).then_some(Self::AUTO_DELAY),
        }
    }
}

/// A heartbeat on `conn`, and a copy of it on a second stream if the first has no answer
/// after `delay` (counted from now: the connection is up; [`HeartbeatHedge::delay`]). The first
/// answer of either wins; the loser's streams are dropped (reset), so the peer writes no
/// second answer. Only the original's failure is reported (a copy that fails is ignored), and
/// the whole call has one deadline. The winner's round trip is a sample of the path's length
/// ([`PeerConn::path_at_least`](super::pool::PeerConn::path_at_least)).
///
/// Cancel-safe: dropping it drops both calls.
pub(super) async fn hedged_heartbeat(
    client: &Arc<Client>,
    (id, target): (&ServerId, &ServerAddress),
    request: AppendEntriesRequest,
    conn: PeerConn,
    deadline: Instant,
    delay: Duration,
) -> Result<AppendEntriesResponse, Error> {
    let kind = RpcKind::AppendEntries;
    client
        .guarded(kind, deadline, async {
            let copy = request.clone();
            let sent = Instant::now();
            let original = unary(client, id, target, priority::CONTROL, request);
            tokio::pin!(original);
            tokio::select! {
                biased;
                answer = &mut original => {
                    conn.observe_rtt(sent.elapsed());
                    return answer;
                }
                () = tokio::time::sleep(delay) => {}
            }
            let counters = &client.stats;
            counters.heartbeat_copy_sent();
            let peer_metrics = client.pool.peer_metrics(id);
            peer_metrics.heartbeat_copy_sent();
            tracing::trace!(peer = %id, ?delay, "heartbeat unanswered: sending a copy");
            let copy = async {
                match unary(client, id, target, priority::CONTROL, copy).await {
                    Ok(answer) => answer,
                    // Left to the original, which ends by the shared deadline.
                    Err(_) => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                answer = &mut original => {
                    conn.observe_rtt(sent.elapsed());
                    answer
                }
                answer = copy => {
                    conn.observe_rtt(sent.elapsed().saturating_sub(delay));
                    counters.heartbeat_copy_won();
                    peer_metrics.heartbeat_copy_won();
                    Ok(answer)
                }
            }
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_hedges_only_paths_at_least_as_long_as_its_delay() {
        let path = |least: Duration| move |rtt: Duration| least >= rtt;
        let auto = HeartbeatHedge::Auto;
        assert_eq!(auto.delay(path(Duration::from_micros(40))), None);
        assert_eq!(auto.delay(path(Duration::from_millis(4))), None);
        assert_eq!(
            auto.delay(path(Duration::from_millis(5))),
            Some(HeartbeatHedge::AUTO_DELAY)
        );
        assert_eq!(
            auto.delay(path(Duration::from_millis(50))),
            Some(HeartbeatHedge::AUTO_DELAY)
        );
        let fixed = HeartbeatHedge::After(Duration::from_millis(200));
        assert_eq!(
            fixed.delay(path(Duration::from_micros(40))),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            HeartbeatHedge::Off.delay(path(Duration::from_secs(1))),
            None
        );
    }
}
