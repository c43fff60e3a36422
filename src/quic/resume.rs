//! Resumable snapshots over QUIC (`docs/PROTOCOL.md` §8.6): the receiver's transfers that
//! outlive their connection, and the consumer's reader that waits across a lost connection.
//!
//! A resumable transfer is keyed by the sending peer (proved by its certificate) and the
//! 64-bit id the sender chose. Its data arrives on one data stream per attachment: the first
//! with the `ResumableSnapshot` request, each later one with a `SnapshotResume`. The reader
//! counts the bytes it passed on (`accepted`); when the connection under the current data
//! stream is lost, the transfer is *parked* for the grace period, and a resume attaches a new
//! data stream that continues from exactly `accepted`. The consumer's reader sees one
//! continuous stream or an error.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::future::BoxFuture;
use quinn::{ReadError, RecvStream, SendStream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::snapshot_data::data_read_error;
use super::stats::Counters;
use crate::command::ServerId;
use crate::error::{ErrorCode, RemoteError};
use crate::transport::{GraceTimer, Queued, RpcResult, unanswered};

/// The generation of a transfer's first attachment, the one its `ResumableSnapshot` opens.
pub(crate) const FIRST_ATTACHMENT: u64 = 1;

/// Why the claim of an attachment's data stream did not give a stream.
pub(crate) enum ClaimFailure {
    /// The connection carrying it was lost: the transfer waits for a resume.
    Lost,
    /// Anything else: the reader fails with this error.
    Failed(io::Error),
}

/// Finds, checks and hands over the data stream of one attachment.
pub(crate) type Claim = BoxFuture<'static, Result<RecvStream, ClaimFailure>>;

/// Where the reader's bytes come from now.
enum Source {
    /// The current attachment's data stream is being claimed (when the consumer reads).
    Claiming(Claim),
    /// Its bytes are read.
    Reading(RecvStream),
    /// The connection was lost at this instant; a resume may attach a new data stream.
    Parked(Instant),
    /// The transfer failed; every read repeats this error.
    Failed(io::ErrorKind, String),
}

struct State {
    /// Bytes passed to the consumer's reader: where a resume continues.
    accepted: u64,
    source: Source,
    /// The reader's last waker, woken when the source is replaced under it.
    waker: Option<Waker>,
    /// The request in the consumer's queue while the consumer has not taken it. Withdrawn
    /// (dropped) when the connection under the transfer is lost, as every queued request of a
    /// closed connection is (`docs/PROTOCOL.md` §9.1).
    queued: Option<Queued>,
}

/// One resumable snapshot being received.
pub(crate) struct Transfer {
    peer: ServerId,
    resume_id: u64,
    declared: u64,
    grace: Duration,
    stats: Arc<Counters>,
    state: Mutex<State>,
    /// The current attachment; the request stream that owns it writes the answer.
    generation: watch::Sender<u64>,
    /// The consumer's answer, awaited by the request stream of the current attachment.
    answer: tokio::sync::Mutex<Option<oneshot::Receiver<RpcResult>>>,
    /// Set once the answer was taken for a request stream: nothing is left to resume.
    ended: std::sync::atomic::AtomicBool,
}

/// How waiting for the answer on one request stream ended.
pub(crate) enum Waited {
    /// The consumer answered: write it on this stream.
    Answer(RpcResult),
    /// A resume attached a newer request stream, which takes over the answer.
    Superseded,
    /// The sender stopped the answer half (it gave up the snapshot): the transfer failed.
    SenderGone,
    /// The connection was lost: the transfer is parked.
    Lost,
}

impl Transfer {
    fn state(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the state whole (an assignment or a poll that updates
        // one field at a time): a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The declared size of the snapshot.
    pub(crate) fn declared(&self) -> u64 {
        self.declared
    }

    /// Keeps the consumer-queue handle of the request until it is taken or the connection is
    /// lost.
    pub(crate) fn keep_queued(&self, queued: Option<Queued>) {
        self.state().queued = queued;
    }

    fn set_source(&self, state: &mut State, source: Source) {
        let was_parked = matches!(state.source, Source::Parked(_));
        let parked = matches!(source, Source::Parked(_));
        state.source = source;
        match (was_parked, parked) {
            (false, true) => self.stats.snapshot_parked(),
            (true, false) => self.stats.snapshot_unparked(),
            _ => {}
        }
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    fn is_failed(state: &State) -> bool {
        matches!(state.source, Source::Failed(..))
    }

    fn is_ended(&self) -> bool {
        self.ended.load(std::sync::atomic::Ordering::Acquire)
    }

    fn expired(&self, state: &State, now: Instant) -> bool {
        matches!(state.source, Source::Parked(since) if now.duration_since(since) >= self.grace)
    }

    /// The connection of attachment `generation` was lost: park the transfer, unless a newer
    /// attachment exists or it already failed.
    pub(crate) fn lost(&self, generation: u64) {
        let mut state = self.state();
        if *self.generation.borrow() != generation {
            return;
        }
        // Withdrawn if the consumer has not taken it yet: a closed connection's requests go.
        let queued = state.queued.take();
        if matches!(state.source, Source::Claiming(_) | Source::Reading(_)) {
            tracing::debug!(peer = %self.peer, resume_id = self.resume_id, accepted = state.accepted,
                "connection lost under a resumable snapshot: parked");
            self.set_source(&mut state, Source::Parked(Instant::now()));
        }
        drop(state);
        drop(queued);
    }

    /// Fails the transfer (if `generation` is still current, or always with `None`): the
    /// reader returns an error of `kind`, and a resume is refused.
    pub(crate) fn fail(&self, generation: Option<u64>, kind: io::ErrorKind, why: &str) {
        let mut state = self.state();
        if generation.is_some_and(|g| *self.generation.borrow() != g) || Self::is_failed(&state) {
            return;
        }
        let queued = state.queued.take();
        self.set_source(&mut state, Source::Failed(kind, why.to_owned()));
        drop(state);
        drop(queued);
    }

    /// Attaches a new data stream (found by `claim`), replacing the current one: returns the
    /// offset it must start at and the new attachment's generation, or `None` when the
    /// transfer failed or its grace period passed.
    pub(crate) fn attach(&self, claim: Claim) -> Option<(u64, u64)> {
        let mut state = self.state();
        if self.expired(&state, Instant::now()) {
            self.set_source(
                &mut state,
                Source::Failed(io::ErrorKind::TimedOut, self.not_resumed()),
            );
        }
        if Self::is_failed(&state) || self.is_ended() {
            return None;
        }
        self.set_source(&mut state, Source::Claiming(claim));
        self.generation.send_modify(|g| *g += 1);
        let generation = *self.generation.borrow();
        Some((state.accepted, generation))
    }

    fn not_resumed(&self) -> String {
        format!(
            "the connection carrying the snapshot was lost and it was not resumed within {:?}",
            self.grace
        )
    }

    /// Waits, on the request stream of attachment `generation` (`send`), for the consumer's
    /// answer, until a newer attachment takes over, the sender stops the stream or the
    /// connection is lost.
    ///
    /// Cancel-safe: the answer stays with the transfer for the next attachment.
    pub(crate) async fn wait_answer(&self, generation: u64, send: &SendStream) -> Waited {
        let mut current = self.generation.subscribe();
        let superseded = async move {
            let _ = current.wait_for(|g| *g != generation).await;
        };
        tokio::pin!(superseded);
        let stopped = send.stopped();
        tokio::pin!(stopped);
        let stopped_to_waited =
            |stopped: Result<Option<quinn::VarInt>, quinn::StoppedError>| match stopped {
                Ok(_) => Waited::SenderGone,
                Err(_) => Waited::Lost,
            };
        let mut answer = tokio::select! {
            biased;
            () = &mut superseded => return Waited::Superseded,
            stopped = &mut stopped => return stopped_to_waited(stopped),
            answer = self.answer.lock() => answer,
        };
        let Some(rx) = answer.as_mut() else {
            // Already answered through an older attachment (it then had the answer): none left.
            return Waited::Superseded;
        };
        tokio::select! {
            biased;
            result = rx => {
                answer.take();
                self.ended.store(true, std::sync::atomic::Ordering::Release);
                Waited::Answer(result.unwrap_or_else(|_| Err(unanswered())))
            }
            () = &mut superseded => Waited::Superseded,
            stopped = &mut stopped => stopped_to_waited(stopped),
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        let state = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if matches!(state.source, Source::Parked(_)) {
            self.stats.snapshot_unparked();
        }
    }
}

/// The node's resumable transfers being received, by (peer, resume id): at most
/// `max_per_peer` per peer, parked or not.
pub(crate) struct Table {
    transfers: Mutex<HashMap<(ServerId, u64), Weak<Transfer>>>,
    max_per_peer: usize,
    grace: Duration,
    stats: Arc<Counters>,
}

impl Table {
    pub(crate) fn new(max_per_peer: usize, grace: Duration, stats: Arc<Counters>) -> Self {
        Self {
            transfers: Mutex::new(HashMap::new()),
            max_per_peer: max_per_peer.max(1),
            grace,
            stats,
        }
    }

    fn transfers(&self) -> MutexGuard<'_, HashMap<(ServerId, u64), Weak<Transfer>>> {
        // Each critical section is map operations only: a poisoned lock is still sound.
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drops entries whose transfer is gone or failed, failing those parked past the grace
    /// period first.
    fn prune(map: &mut HashMap<(ServerId, u64), Weak<Transfer>>) {
        let now = Instant::now();
        map.retain(|_, weak| {
            let Some(transfer) = weak.upgrade() else {
                return false;
            };
            let mut state = transfer.state();
            if transfer.expired(&state, now) {
                let why = transfer.not_resumed();
                transfer.set_source(&mut state, Source::Failed(io::ErrorKind::TimedOut, why));
            }
            !Transfer::is_failed(&state) && !transfer.is_ended()
        });
    }

    /// A new transfer from `peer`, whose answer will arrive on `answer` and whose first data
    /// stream `claim` finds (attachment 1). Refused when the peer has as many as allowed, or
    /// already uses `resume_id`.
    pub(crate) fn register(
        &self,
        peer: &ServerId,
        (resume_id, declared): (u64, u64),
        answer: oneshot::Receiver<RpcResult>,
        claim: Claim,
    ) -> Result<Arc<Transfer>, RemoteError> {
        let mut map = self.transfers();
        Self::prune(&mut map);
        let key = (peer.clone(), resume_id);
        if map.contains_key(&key) {
            return Err(RemoteError::new(
                ErrorCode::BAD_REQUEST,
                format!("resume id {resume_id} is already in use"),
            ));
        }
        let from_peer = map.keys().filter(|(p, _)| p == peer).count();
        if from_peer >= self.max_per_peer {
            return Err(RemoteError::new(
                ErrorCode::UNAVAILABLE,
                format!(
                    "{from_peer} resumable snapshots from this peer are under way, the most allowed"
                ),
            ));
        }
        let transfer = Arc::new(Transfer {
            peer: peer.clone(),
            resume_id,
            declared,
            grace: self.grace,
            stats: self.stats.clone(),
            state: Mutex::new(State {
                accepted: 0,
                source: Source::Claiming(claim),
                waker: None,
                queued: None,
            }),
            generation: watch::Sender::new(FIRST_ATTACHMENT),
            answer: tokio::sync::Mutex::new(Some(answer)),
            ended: false.into(),
        });
        map.insert(key, Arc::downgrade(&transfer));
        Ok(transfer)
    }

    /// The transfer `resume_id` of `peer`, if it is held and has not failed.
    pub(crate) fn get(&self, peer: &ServerId, resume_id: u64) -> Option<Arc<Transfer>> {
        let mut map = self.transfers();
        Self::prune(&mut map);
        map.get(&(peer.clone(), resume_id)).and_then(Weak::upgrade)
    }

    /// Fails every transfer (the node is closing).
    pub(crate) fn fail_all(&self) {
        let transfers: Vec<_> = self.transfers().drain().collect();
        for (_, weak) in transfers {
            if let Some(transfer) = weak.upgrade() {
                transfer.fail(
                    None,
                    io::ErrorKind::NotConnected,
                    "the node is shutting down",
                );
            }
        }
    }
}

/// The consumer's view of a resumable transfer: the bytes of every attachment, in order,
/// each from where the previous one left off.
pub(crate) struct ResumableData {
    transfer: Arc<Transfer>,
    /// The end of the grace period while parked.
    grace: GraceTimer,
    /// Bytes read, in the peer's metrics.
    bytes: metrics::Counter,
}

impl ResumableData {
    pub(crate) fn new(transfer: Arc<Transfer>, bytes: metrics::Counter) -> Self {
        Self {
            transfer,
            grace: GraceTimer::default(),
            bytes,
        }
    }
}

impl AsyncRead for ResumableData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let transfer = &*this.transfer;
        let mut state = transfer.state();
        loop {
            match &mut state.source {
                Source::Claiming(claim) => match claim.as_mut().poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Ok(recv)) => transfer.set_source(&mut state, Source::Reading(recv)),
                    Poll::Ready(Err(ClaimFailure::Lost)) => {
                        let queued = state.queued.take();
                        transfer.set_source(&mut state, Source::Parked(Instant::now()));
                        drop(queued);
                    }
                    Poll::Ready(Err(ClaimFailure::Failed(e))) => {
                        let failed = Source::Failed(e.kind(), e.to_string());
                        transfer.set_source(&mut state, failed);
                        return Poll::Ready(Err(e));
                    }
                },
                Source::Reading(recv) => {
                    let before = buf.filled().len();
                    match recv.poll_read_buf(cx, buf) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(())) => {
                            let read = buf.filled().len().saturating_sub(before) as u64;
                            state.accepted += read;
                            if read > 0 {
                                this.bytes.increment(read);
                            }
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(ReadError::ConnectionLost(_))) => {
                            let queued = state.queued.take();
                            transfer.set_source(&mut state, Source::Parked(Instant::now()));
                            drop(queued);
                        }
                        Poll::Ready(Err(e)) => {
                            let e = data_read_error(e);
                            let failed = Source::Failed(e.kind(), e.to_string());
                            transfer.set_source(&mut state, failed);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Source::Parked(since) => {
                    if !this.grace.poll_passed(cx, *since, transfer.grace) {
                        break;
                    }
                    let why = transfer.not_resumed();
                    let failed = Source::Failed(io::ErrorKind::TimedOut, why);
                    transfer.set_source(&mut state, failed);
                }
                Source::Failed(kind, why) => {
                    return Poll::Ready(Err(io::Error::new(*kind, why.clone())));
                }
            }
        }
        state.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// Outgoing resumable snapshots, by peer: [`Transport::disconnect_peer`] ends them (as it
/// ends every call to that peer) rather than letting them resume.
///
/// [`Transport::disconnect_peer`]: crate::Transport::disconnect_peer
#[derive(Default)]
pub(crate) struct Outgoing {
    peers: Mutex<HashMap<ServerId, CancellationToken>>,
}

impl Outgoing {
    fn peers(&self) -> MutexGuard<'_, HashMap<ServerId, CancellationToken>> {
        // Each critical section is one map operation: a poisoned lock is still sound.
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The token a snapshot to `peer` watches: cancelled by [`disconnect`](Self::disconnect).
    pub(crate) fn session(&self, peer: &ServerId) -> CancellationToken {
        self.peers().entry(peer.clone()).or_default().clone()
    }

    /// Ends the resumable snapshots under way to `peer`.
    pub(crate) fn disconnect(&self, peer: &ServerId) {
        if let Some(token) = self.peers().remove(peer) {
            token.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(max: usize, grace: Duration) -> (Table, Arc<Counters>) {
        let stats = Arc::new(Counters::default());
        (Table::new(max, grace, stats.clone()), stats)
    }

    fn answer() -> oneshot::Receiver<RpcResult> {
        // The sender half is dropped: nothing here waits for the answer.
        oneshot::channel().1
    }

    /// A claim that never finishes (no stream comes).
    fn pending_claim() -> Claim {
        Box::pin(std::future::pending())
    }

    #[tokio::test]
    async fn a_peer_holds_at_most_max_transfers_and_ids_are_unique_per_peer() {
        let (table, _) = table(2, Duration::from_secs(1));
        let (n1, n2) = (ServerId::from("n1"), ServerId::from("n2"));
        let a = table
            .register(&n1, (1, 10), answer(), pending_claim())
            .unwrap();
        let duplicate = table
            .register(&n1, (1, 10), answer(), pending_claim())
            .err()
            .unwrap();
        assert_eq!(duplicate.code, ErrorCode::BAD_REQUEST);
        // Another peer may use the same id.
        let _b = table
            .register(&n2, (1, 10), answer(), pending_claim())
            .unwrap();
        let _c = table
            .register(&n1, (2, 10), answer(), pending_claim())
            .unwrap();
        let full = table
            .register(&n1, (3, 10), answer(), pending_claim())
            .err()
            .unwrap();
        assert_eq!(full.code, ErrorCode::UNAVAILABLE);
        // A transfer nobody holds any more frees its place.
        drop(a);
        table
            .register(&n1, (3, 10), answer(), pending_claim())
            .unwrap();
        assert!(table.get(&n1, 1).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_parked_transfer_resumes_within_its_grace_period_only() {
        let (table, stats) = table(8, Duration::from_secs(3));
        let peer = ServerId::from("n1");
        let transfer = table
            .register(&peer, (7, 100), answer(), pending_claim())
            .unwrap();
        let first = FIRST_ATTACHMENT;
        transfer.lost(first);
        assert_eq!(stats.stats(0).snapshots_parked, 1);
        // A loss reported for an older attachment changes nothing.
        tokio::time::advance(Duration::from_secs(2)).await;
        let (offset, second) = transfer.attach(pending_claim()).unwrap();
        assert_eq!((offset, stats.stats(0).snapshots_parked), (0, 0));
        assert!(second > first);
        transfer.lost(first);
        assert_eq!(
            stats.stats(0).snapshots_parked,
            0,
            "a stale loss is ignored"
        );
        transfer.lost(second);
        assert_eq!(stats.stats(0).snapshots_parked, 1);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(table.get(&peer, 7).is_none(), "past its grace period");
        assert!(transfer.attach(pending_claim()).is_none());
        assert_eq!(stats.stats(0).snapshots_parked, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_reader_waits_while_parked_then_fails_timed_out() {
        use tokio::io::AsyncReadExt;

        let (table, _) = table(8, Duration::from_secs(3));
        let transfer = table
            .register(&ServerId::from("n1"), (7, 100), answer(), pending_claim())
            .unwrap();
        transfer.lost(FIRST_ATTACHMENT);
        let mut reader = ResumableData::new(transfer.clone(), metrics::Counter::noop());
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let error = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        // And the failure is final.
        let again = reader.read(&mut buf).await.unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn disconnect_ends_the_sessions_of_one_peer() {
        let outgoing = Outgoing::default();
        let (n1, n2) = (ServerId::from("n1"), ServerId::from("n2"));
        let (s1, s2) = (outgoing.session(&n1), outgoing.session(&n2));
        outgoing.disconnect(&n1);
        assert!(s1.is_cancelled() && !s2.is_cancelled());
        assert!(
            !outgoing.session(&n1).is_cancelled(),
            "a later call starts afresh"
        );
    }
}
