//! What a [`QuicTransport`](super::QuicTransport) reports about what it holds: the public
//! [`TransportStats`], and the node-wide counters behind it, updated with one atomic operation
//! per event on the receive path (no lock, no allocation).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What a [`QuicTransport`](super::QuicTransport) holds for its peers at one moment, as
/// [`QuicTransport::stats`](super::QuicTransport::stats) reports it.
///
/// Every field is read on its own: the set is not one atomic snapshot, and under load the
/// fields can disagree slightly with each other (never with themselves).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TransportStats {
    /// Bytes held for incoming requests, over all peers: frames being received (counted at
    /// their declared body length from the moment their header arrived and the peer's budget
    /// granted it, which is also what is allocated for them) and requests received whole but
    /// not yet taken by the consumer or the heartbeat handler, queued ones included (counted
    /// at their decoded size). Each peer's share, over all of its connections, is at most
    /// `QuicConfig::max_buffered_bytes_per_peer`.
    ///
    /// Not counted: bytes QUIC still holds unread (bounded by `QuicTuning::receive_window`
    /// per connection), the at most 5 header bytes of each stream, answers this node reads
    /// for its own calls, and snapshot data (streamed to the consumer's reader as it is read).
    pub frame_bytes_buffered: usize,
    /// The largest [`frame_bytes_buffered`](Self::frame_bytes_buffered) seen since the
    /// transport was bound.
    pub frame_bytes_buffered_high_water: usize,
    /// RPCs queued for the consumer ([`Incoming`](crate::Incoming)) and not yet received by
    /// it; at most `QuicConfig::consumer_capacity` per peer.
    pub consumer_queued: usize,
    /// Request streams peers opened to this node that are being served now (unary RPCs,
    /// InstallSnapshot requests and pipelines), over all connections; per connection at most
    /// `QuicConfig::max_streams`.
    pub request_streams: usize,
    /// Heartbeat copies this node sent because an answer was late
    /// (`QuicConfig::heartbeat_hedge`), since the transport was bound.
    pub heartbeat_copies: u64,
    /// Of those, the heartbeats whose copy was answered first: each is a heartbeat that
    /// would otherwise have waited for loss recovery (or a slow first stream).
    pub heartbeat_copies_won: u64,
    // Handshake admission (`QuicConfig::max_incoming_handshakes` and its neighbours).
    /// Incoming handshakes in progress now: admitted, neither finished nor failed.
    pub handshakes_in_progress: usize,
    /// The largest [`handshakes_in_progress`](Self::handshakes_in_progress) seen since the
    /// transport was bound.
    pub handshakes_in_progress_high_water: usize,
    /// Incoming handshakes admitted (crypto work done) since the transport was bound.
    pub handshakes_accepted: u64,
    /// Incoming connection attempts answered with a QUIC Retry (address validation, no state
    /// kept) since the transport was bound.
    pub handshakes_retried: u64,
    /// Incoming connection attempts refused before any crypto work since the transport was
    /// bound: too many in progress overall or from their address, or their address dialling
    /// too often.
    pub handshakes_refused: u64,
    // Resumable snapshots (`Transport::install_snapshot_resumable`).
    /// Resumable snapshots this node sent that resumed on a new connection after losing
    /// theirs, counted once per resume the receiver accepted, since the transport was bound.
    pub snapshot_resumes: u64,
    /// Snapshot bytes this node sent twice since the transport was bound: on each resume,
    /// what it had handed to QUIC beyond the offset the receiver confirmed. At most one stream
    /// flow-control window (`QuicTuning::stream_receive_window` of the receiver) per resume.
    pub snapshot_bytes_resent: u64,
    /// Resumable snapshots this node is receiving whose connection was lost, waiting for
    /// their sender to resume them (`QuicConfig::snapshot_resume_grace`), now.
    pub snapshots_parked: usize,
}

/// The node-wide counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    frame_bytes: AtomicUsize,
    frame_bytes_high_water: AtomicUsize,
    request_streams: AtomicUsize,
    heartbeat_copies: AtomicU64,
    heartbeat_copies_won: AtomicU64,
    // Handshake admission.
    handshakes_in_progress: AtomicUsize,
    handshakes_in_progress_high_water: AtomicUsize,
    handshakes_accepted: AtomicU64,
    handshakes_retried: AtomicU64,
    handshakes_refused: AtomicU64,
    // Resumable snapshots.
    snapshot_resumes: AtomicU64,
    snapshot_bytes_resent: AtomicU64,
    snapshots_parked: AtomicUsize,
}

impl Counters {
    /// A resumable snapshot this node sends resumed, sending `resent` bytes again.
    pub(crate) fn snapshot_resumed(&self, resent: u64) {
        self.snapshot_resumes.fetch_add(1, Ordering::Relaxed);
        self.snapshot_bytes_resent
            .fetch_add(resent, Ordering::Relaxed);
    }

    /// A resumable snapshot being received lost its connection and waits for a resume.
    pub(crate) fn snapshot_parked(&self) {
        self.snapshots_parked.fetch_add(1, Ordering::Relaxed);
    }

    /// A parked snapshot was resumed, failed or dropped.
    pub(crate) fn snapshot_unparked(&self) {
        self.snapshots_parked.fetch_sub(1, Ordering::Relaxed);
    }

    /// `bytes` more are held for incoming frames.
    pub(crate) fn frame_bytes_held(&self, bytes: usize) {
        let now = self.frame_bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        // Mostly a plain load: the mark moves only when a new peak is reached.
        if now > self.frame_bytes_high_water.load(Ordering::Relaxed) {
            self.frame_bytes_high_water
                .fetch_max(now, Ordering::Relaxed);
        }
    }

    /// `bytes` held for incoming frames were let go.
    pub(crate) fn frame_bytes_released(&self, bytes: usize) {
        self.frame_bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// A heartbeat copy was sent.
    pub(crate) fn heartbeat_copy_sent(&self) {
        self.heartbeat_copies.fetch_add(1, Ordering::Relaxed);
    }

    /// A heartbeat copy's answer came first.
    pub(crate) fn heartbeat_copy_won(&self) {
        self.heartbeat_copies_won.fetch_add(1, Ordering::Relaxed);
    }

    /// An incoming handshake was admitted.
    pub(crate) fn handshake_started(&self) {
        self.handshakes_accepted.fetch_add(1, Ordering::Relaxed);
        let now = self.handshakes_in_progress.fetch_add(1, Ordering::Relaxed) + 1;
        self.handshakes_in_progress_high_water
            .fetch_max(now, Ordering::Relaxed);
    }

    /// An admitted handshake finished or failed.
    pub(crate) fn handshake_ended(&self) {
        self.handshakes_in_progress.fetch_sub(1, Ordering::Relaxed);
    }

    /// An incoming connection attempt was answered with a Retry.
    pub(crate) fn handshake_retried(&self) {
        self.handshakes_retried.fetch_add(1, Ordering::Relaxed);
    }

    /// An incoming connection attempt was refused.
    pub(crate) fn handshake_refused(&self) {
        self.handshakes_refused.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request stream being served until the guard drops.
    pub(crate) fn request_stream(&self) -> RequestStreamGuard<'_> {
        self.request_streams.fetch_add(1, Ordering::Relaxed);
        RequestStreamGuard(self)
    }

    /// The counters as [`TransportStats`], with the consumer's queue length.
    pub(crate) fn stats(&self, consumer_queued: usize) -> TransportStats {
        TransportStats {
            frame_bytes_buffered: self.frame_bytes.load(Ordering::Relaxed),
            frame_bytes_buffered_high_water: self.frame_bytes_high_water.load(Ordering::Relaxed),
            consumer_queued,
            request_streams: self.request_streams.load(Ordering::Relaxed),
            heartbeat_copies: self.heartbeat_copies.load(Ordering::Relaxed),
            heartbeat_copies_won: self.heartbeat_copies_won.load(Ordering::Relaxed),
            handshakes_in_progress: self.handshakes_in_progress.load(Ordering::Relaxed),
            handshakes_in_progress_high_water: self
                .handshakes_in_progress_high_water
                .load(Ordering::Relaxed),
            handshakes_accepted: self.handshakes_accepted.load(Ordering::Relaxed),
            handshakes_retried: self.handshakes_retried.load(Ordering::Relaxed),
            handshakes_refused: self.handshakes_refused.load(Ordering::Relaxed),
            snapshot_resumes: self.snapshot_resumes.load(Ordering::Relaxed),
            snapshot_bytes_resent: self.snapshot_bytes_resent.load(Ordering::Relaxed),
            snapshots_parked: self.snapshots_parked.load(Ordering::Relaxed),
        }
    }
}

/// One request stream being served, counted while it lives.
pub(crate) struct RequestStreamGuard<'a>(&'a Counters);

impl Drop for RequestStreamGuard<'_> {
    fn drop(&mut self) {
        self.0.request_streams.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_bytes_and_their_high_water_mark() {
        let counters = Counters::default();
        counters.frame_bytes_held(100);
        counters.frame_bytes_held(50);
        counters.frame_bytes_released(100);
        counters.frame_bytes_held(20);
        let stats = counters.stats(3);
        assert_eq!(stats.frame_bytes_buffered, 70);
        assert_eq!(stats.frame_bytes_buffered_high_water, 150);
        assert_eq!(stats.consumer_queued, 3);
        counters.frame_bytes_released(70);
        let stats = counters.stats(0);
        assert_eq!(stats.frame_bytes_buffered, 0);
        assert_eq!(stats.frame_bytes_buffered_high_water, 150);
    }

    #[test]
    fn request_streams_are_counted_while_served() {
        let counters = Counters::default();
        let first = counters.request_stream();
        let second = counters.request_stream();
        assert_eq!(counters.stats(0).request_streams, 2);
        drop(first);
        assert_eq!(counters.stats(0).request_streams, 1);
        drop(second);
        assert_eq!(counters.stats(0).request_streams, 0);
    }
}
