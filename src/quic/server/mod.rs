//! The receiving side: accepting connections, checking who the peer is, and serving each
//! stream on its own task so no RPC waits for another.

mod pipeline;
mod resumable;

use std::io;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::client::term_of;
use super::codes::stream;
use super::io::PeerBudgets;
use super::io::{FrameBudget, FrameReader, ReadFrameError, Reservation, write_frame};
use super::metrics::{Kind, ServeOutcome};
use super::pool::PeerConn;
use super::priority;
use super::rendezvous::Rendezvous;
use super::resume;
use super::snapshot_data::{SnapshotData, data_read_error};
use super::stats::Counters;
use crate::codec::Frame;
use crate::command::{Command, ServerId};
use crate::error::{ErrorCode, RemoteError};
use crate::sanitize::untrusted;
use crate::transport::{
    Delivered, Dispatcher, Held, Responder, Rpc, RpcResult, SnapshotReader, unanswered,
};

/// How many RPC timeouts a request waits for the consumer to take it before it is answered
/// `UNAVAILABLE` (see `Stream::dispatch`).
const CONSUMER_WAIT_FACTOR: u32 = 2;

/// The `kind` label of a request frame; `None` for frames that are not one.
fn metric_kind(frame: &Frame) -> Option<Kind> {
    Some(match frame {
        Frame::Request(command) => Kind::of(command.kind(), command.is_heartbeat()),
        Frame::InstallSnapshot { .. }
        | Frame::ResumableSnapshot { .. }
        | Frame::SnapshotResume(_) => Kind::InstallSnapshot,
        _ => return None,
    })
}

/// What [`Stream::record`] needs of a request being served.
#[derive(Clone, Copy)]
struct Served {
    kind: Kind,
    /// When the request was read whole (`None` for heartbeats, whose time is not recorded).
    started: Option<std::time::Instant>,
}

/// How a request ended, by its answer (`None`: none was written).
fn serve_outcome(answer: Option<&RpcResult>) -> ServeOutcome {
    match answer {
        Some(Ok(_)) => ServeOutcome::Ok,
        Some(Err(_)) => ServeOutcome::Error,
        None => ServeOutcome::Unanswered,
    }
}

/// What serving peers' streams needs: the limits, the consumer's queue, each peer's frame
/// budget and the node's counters.
pub(crate) struct Server {
    pub(crate) limits: ServeLimits,
    pub(crate) dispatcher: Dispatcher,
    /// What each peer's requests may hold, shared by the peer's connections.
    pub(crate) budgets: PeerBudgets,
    /// What the node's connections hold (`QuicTransport::stats`), shared by their streams.
    pub(crate) stats: Arc<Counters>,
    /// Resumable snapshots being received, across connections.
    pub(crate) resumable: Arc<resume::Table>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tasks: TaskTracker,
}

/// The settings of [`QuicConfig`](super::QuicConfig) that serving reads.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeLimits {
    pub(crate) max_message_size: usize,
    pub(crate) rpc_timeout: std::time::Duration,
    pub(crate) max_in_flight: usize,
    pub(crate) max_snapshot_streams: u32,
    pub(crate) initial_streams: u32,
    pub(crate) max_streams: u32,
    pub(crate) frame_budget: usize,
}

impl Server {
    /// Serves the streams `peer` opens on `conn` until it closes or this node shuts down.
    ///
    /// Cancel-safe: cancelling it stops accepting streams; those being served go on.
    pub(crate) async fn serve_connection(self: Arc<Self>, peer: ServerId, conn: PeerConn) {
        let limits = self.limits;
        let rendezvous = Arc::new(Rendezvous::new(
            limits.max_snapshot_streams as usize,
            limits.rpc_timeout,
        ));
        // What the peer's requests may hold at once, over all of its connections.
        let budget = self.budgets.of(&peer, limits.frame_budget, &self.stats);
        let parked = Parked::default();
        let credit = StreamCredit::new(limits.initial_streams, limits.max_streams);
        let mut expiry = tokio::time::interval(rendezvous.expiry_interval());
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = expiry.tick() => rendezvous.expire(),
                bi = conn.conn.accept_bi() => match bi {
                    Ok((send, recv)) => {
                        let slot = credit.open(&conn.conn);
                        let stream = Stream {
                            _slot: slot,
                            server: self.clone(),
                            peer: peer.clone(),
                            conn: conn.clone(),
                            parked: parked.clone(),
                            budget: budget.clone(),
                        };
                        // Polled here first: a request that came whole with its stream and
                        // is answered at once (a heartbeat, by the heartbeat handler) needs no
                        // task of its own. The rest go on in one.
                        let mut serve = Box::pin(stream.serve_bi(send, recv, rendezvous.clone()));
                        if futures_util::poll!(serve.as_mut()).is_pending() {
                            self.tasks.spawn(serve);
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %untrusted(&e), "connection ended");
                        return;
                    }
                },
                uni = conn.conn.accept_uni() => match uni {
                    Ok(recv) => {
                        // Held, unread, until its InstallSnapshot request claims it.
                        let id = u64::from(recv.id());
                        tracing::trace!(%peer, stream = id, "snapshot data stream");
                        if let Err(why) = rendezvous.data_arrived(id, recv) {
                            tracing::warn!(%peer, stream = id, why, "snapshot data stream refused");
                        }
                    }
                    Err(e) => {
                        tracing::debug!(%peer, error = %untrusted(&e), "connection ended");
                        return;
                    }
                },
            }
        }
    }
}

/// Requests of one connection whose callers gave up while they waited for the consumer:
/// they stay queued (what reaches the consumer does not depend on timing) but go, with what
/// they hold, when the connection closes and this is dropped.
#[derive(Clone, Default)]
struct Parked(Arc<std::sync::Mutex<Vec<crate::transport::Queued>>>);

impl Parked {
    fn park(&self, queued: crate::transport::Queued) {
        // Each critical section is one push or prune: a poisoned lock is still sound.
        let mut parked = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded by the peer's queue: handles whose RPC the consumer took are let go.
        parked.retain(crate::transport::Queued::is_queued);
        parked.push(queued);
    }
}

/// The bidirectional streams a peer may open on one connection: granted as it uses them, from
/// `QuicConfig::initial_streams` up to `max_streams`, doubling whenever three quarters of the
/// current grant are in use. quinn keeps state for every stream a peer may open, so an idle
/// connection holds little, and a busy one gets what it uses.
struct StreamCredit {
    open: Arc<std::sync::atomic::AtomicU32>,
    limit: std::sync::atomic::AtomicU32,
    max: u32,
}

/// One open request stream, counted until dropped.
struct StreamSlot(Arc<std::sync::atomic::AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl StreamCredit {
    fn new(initial: u32, max: u32) -> Self {
        Self {
            open: Arc::default(),
            limit: initial.into(),
            max,
        }
    }

    /// Counts a stream the peer opened on `conn`, raising the peer's grant when it runs low.
    fn open(&self, conn: &quinn::Connection) -> StreamSlot {
        use std::sync::atomic::Ordering::Relaxed;
        let open = self.open.fetch_add(1, Relaxed) + 1;
        let limit = self.limit.load(Relaxed);
        if limit < self.max && u64::from(open) * 4 >= u64::from(limit) * 3 {
            let raised = limit.saturating_mul(2).min(self.max);
            self.limit.store(raised, Relaxed);
            conn.set_max_concurrent_bi_streams(raised.into());
        }
        StreamSlot(self.open.clone())
    }
}

/// One incoming stream and where it came from.
struct Stream {
    /// Counts the stream against its connection's grant while it is served.
    _slot: StreamSlot,
    server: Arc<Server>,
    peer: ServerId,
    conn: PeerConn,
    /// The connection's requests whose callers gave up.
    parked: Parked,
    /// The connection's budget for frames being received.
    budget: FrameBudget,
}

impl Stream {
    fn max(&self) -> usize {
        self.server.limits.max_message_size
    }

    /// Answers a request that cannot be served with an error frame, and stops reading.
    async fn refuse(&self, send: &mut SendStream, recv: &mut RecvStream, error: RemoteError) {
        let _ = recv.stop(stream::BAD_FRAME);
        if write_frame(send, &Frame::Error(error), self.max())
            .await
            .is_ok()
        {
            let _ = send.finish();
        }
    }

    /// Logs bad input from the peer and answers it on this stream only.
    async fn bad_input(&self, send: &mut SendStream, recv: &mut RecvStream, what: String) {
        tracing::warn!(peer = %self.peer, error = %what, "bad input on a request stream");
        self.refuse(send, recv, RemoteError::new(ErrorCode::BAD_REQUEST, what))
            .await;
    }

    /// Checks that a request's header names the node whose certificate sent it.
    fn identity_error(&self, command: &Command) -> Option<RemoteError> {
        let id = &command.header().id;
        (id != &self.peer).then(|| {
            // The peer's text: escaped and capped in the log line and the answer.
            let claimed = untrusted(id);
            tracing::warn!(
                peer = %self.peer,
                claimed = %claimed,
                rpc = %command.kind(),
                "request header names another node than the certificate"
            );
            RemoteError::new(
                ErrorCode::IDENTITY_MISMATCH,
                format!(
                    "header id {claimed} is not the certificate's id {}",
                    self.peer
                ),
            )
        })
    }

    async fn serve_bi(
        self,
        mut send: SendStream,
        mut recv: RecvStream,
        rendezvous: Arc<Rendezvous>,
    ) {
        let _active = self.conn.active();
        let _serving = self.server.stats.request_stream();
        let mut reader = FrameReader::with_budget(self.max(), self.budget.clone());
        // A peer that trickles its request must not hold the stream forever, nor may a request
        // wait forever for its connection's budget.
        let timeout = self.server.limits.rpc_timeout;
        let first = tokio::time::timeout(timeout, reader.next(&mut recv)).await;
        let frame = match first {
            Ok(Ok(Some(frame))) => frame,
            Ok(Ok(None)) => return,
            Ok(Err(ReadFrameError::Codec(e))) => {
                return self.bad_input(&mut send, &mut recv, e.to_string()).await;
            }
            Ok(Err(ReadFrameError::Truncated)) => {
                return self
                    .bad_input(&mut send, &mut recv, "request truncated".to_owned())
                    .await;
            }
            Ok(Err(ReadFrameError::Read(e))) => {
                tracing::debug!(peer = %self.peer, error = %untrusted(&e), "request stream failed");
                return;
            }
            Err(_) if reader.waiting_for_budget() => {
                // Not bad input: the peer's other frames hold this connection's budget.
                let what = format!(
                    "the {} bytes this node allows the peer's requests stayed in use for {timeout:?}",
                    self.budget.total()
                );
                tracing::warn!(peer = %self.peer, why = %what, "request refused");
                return self
                    .write_answer(
                        &mut send,
                        Some(Err(RemoteError::new(ErrorCode::UNAVAILABLE, what))),
                    )
                    .await;
            }
            Err(_) => {
                return self
                    .bad_input(
                        &mut send,
                        &mut recv,
                        "no whole request within the RPC timeout".to_owned(),
                    )
                    .await;
            }
        };
        // Counted until the request is handed to the consumer or the heartbeat handler.
        let held = reader.take_reservation();
        tracing::trace!(peer = %self.peer, stream = %recv.id(), kind = frame.kind().name(), "request");
        let Some(kind) = metric_kind(&frame) else {
            // A pipeline (its appends are counted one by one) or a frame that opens nothing.
            return self.serve_other(frame, send, recv, reader).await;
        };
        // Heartbeats' service times are not recorded: no clock read for them.
        let started = (kind != Kind::Heartbeat).then(std::time::Instant::now);
        let span = tracing::debug_span!(
            "serve_rpc",
            peer = %self.peer,
            kind = kind.label(),
            term = term_of(&frame),
            stream = u64::from(recv.id()),
        );
        let served = Served { kind, started };
        let serve = self.serve_request(frame, send, recv, rendezvous, held, served);
        // Wrapped only when enabled, and boxed then: the wrapper is one more move of the
        // request's state, and the stream's future would hold that state twice.
        if span.is_disabled() {
            serve.await
        } else {
            Box::pin(serve.instrument(span)).await
        }
    }

    /// Records how a request ended, before its answer is written (so a caller that has its
    /// answer finds it counted).
    fn record(&self, served: Served, outcome: ServeOutcome) {
        let answered = matches!(outcome, ServeOutcome::Ok | ServeOutcome::Error);
        let elapsed = served.started.filter(|_| answered).map(|s| s.elapsed());
        self.conn.metrics.served(served.kind, outcome, elapsed);
    }

    /// Serves a stream whose first frame is not a request: a pipeline, or bad input.
    async fn serve_other(
        &self,
        frame: Frame,
        mut send: SendStream,
        mut recv: RecvStream,
        reader: FrameReader,
    ) {
        match frame {
            Frame::PipelineOpen => Box::pin(self.serve_pipeline(send, recv, reader)).await,
            other => {
                let what = format!("a {} frame cannot open a stream", other.kind().name());
                self.bad_input(&mut send, &mut recv, what).await
            }
        }
    }

    /// Serves one request (unary or InstallSnapshot) read whole from its stream, and records
    /// how it ended.
    async fn serve_request(
        &self,
        frame: Frame,
        mut send: SendStream,
        mut recv: RecvStream,
        rendezvous: Arc<Rendezvous>,
        held: Option<Reservation>,
        served: Served,
    ) {
        let command = match frame {
            Frame::Request(command) => command,
            Frame::InstallSnapshot {
                transfer_id,
                request,
            } => {
                // Boxed: the rare, large state machines of snapshots and pipelines would
                // otherwise make every stream's task (spawned per RPC) as large as they are.
                let serve = self.serve_snapshot(
                    send,
                    recv,
                    (transfer_id, request),
                    rendezvous,
                    held,
                    served,
                );
                return Box::pin(serve).await;
            }
            Frame::ResumableSnapshot {
                transfer_id,
                resume_id,
                request,
            } => {
                let serve = self.serve_resumable(
                    send,
                    recv,
                    (transfer_id, resume_id, request),
                    rendezvous,
                    held,
                    served,
                );
                return Box::pin(serve).await;
            }
            Frame::SnapshotResume(resume) => {
                drop(held);
                let serve = self.serve_resume(send, recv, resume, rendezvous, served);
                return Box::pin(serve).await;
            }
            other => {
                // `metric_kind` let only requests through.
                self.record(served, ServeOutcome::Refused);
                let what = format!("a {} frame cannot open a stream", other.kind().name());
                return self.bad_input(&mut send, &mut recv, what).await;
            }
        };
        if let Some(error) = self.identity_error(&command) {
            self.record(served, ServeOutcome::Refused);
            return self.refuse(&mut send, &mut recv, error).await;
        }
        // The answer goes at the request's priority: a vote's answer before snapshot data.
        let urgent = match &command {
            Command::AppendEntries(request) => request.is_heartbeat(),
            _ => true,
        };
        let _ = send.set_priority(if urgent {
            priority::CONTROL
        } else {
            priority::APPEND
        });
        let held = match self.hold_decoded(held, &command).await {
            Ok(held) => held,
            Err(error) => {
                self.record(served, ServeOutcome::Refused);
                return self.refuse(&mut send, &mut recv, error).await;
            }
        };
        let answer = self.dispatch(command, None, &send, held, None).await;
        self.record(served, serve_outcome(answer.as_ref()));
        self.write_answer(&mut send, answer).await;
    }

    /// Grows what `held` counts of the peer's budget to the request's decoded size (a request
    /// of many small entries holds several times its encoded size once decoded). An error
    /// answer when the budget cannot hold it: never, if the request alone is larger than the
    /// whole budget; not within `rpc_timeout`, if the peer's other requests hold it.
    ///
    /// Cancel-safe: a cancelled wait adds nothing to `held` (which is dropped).
    async fn hold_decoded(
        &self,
        held: Option<Reservation>,
        command: &Command,
    ) -> Result<Option<Reservation>, RemoteError> {
        let decoded = command.decoded_size();
        let have = held.as_ref().map_or(0, Reservation::bytes);
        let Some(extra) = decoded.checked_sub(have).filter(|extra| *extra > 0) else {
            return Ok(held);
        };
        let timeout = self.server.limits.rpc_timeout;
        let more = match tokio::time::timeout(timeout, self.budget.reserve(extra)).await {
            Ok(Ok(more)) => more,
            Ok(Err(_)) => {
                let what = format!(
                    "the request holds {decoded} bytes once decoded, more than the {} this node \
                     allows a peer",
                    self.budget.total()
                );
                tracing::warn!(peer = %self.peer, why = %what, "request refused");
                return Err(RemoteError::new(ErrorCode::BAD_REQUEST, what));
            }
            Err(_) => {
                let what = format!(
                    "the {} bytes this node allows the peer's requests stayed in use for {timeout:?}",
                    self.budget.total()
                );
                tracing::warn!(peer = %self.peer, why = %what, "request refused");
                return Err(RemoteError::new(ErrorCode::UNAVAILABLE, what));
            }
        };
        Ok(Some(match held {
            Some(mut held) => {
                held.absorb(more);
                held
            }
            None => more,
        }))
    }

    /// Hands a request to the heartbeat handler or the consumer and waits for its answer.
    /// Every request that arrived whole is delivered, even if its caller has given up (then
    /// `caller_gone` is cancelled, and no answer is returned), so what reaches the consumer
    /// does not depend on timing. The request keeps its share of the peer's budget, `held`,
    /// until the consumer takes it; if the connection closes first, the request is withdrawn
    /// from the consumer's queue and its share given back at once (by this task, or, once
    /// its caller gave up, by the connection's [`Parked`]).
    async fn dispatch(
        &self,
        command: Command,
        snapshot: Option<SnapshotReader>,
        send: &SendStream,
        held: Option<Reservation>,
        caller_gone: Option<&CancellationToken>,
    ) -> Option<RpcResult> {
        let (responder, rx) = Responder::new(command.kind());
        let rpc = Rpc::new(command, snapshot, responder);
        // Twice the RPC timeout, so that a caller with the same timeout always sees its own
        // deadline pass (`Error::Timeout`) before this answer could reach it: the outcome of a
        // consumer that does not read does not depend on a race between the two.
        let wait = self
            .server
            .limits
            .rpc_timeout
            .saturating_mul(CONSUMER_WAIT_FACTOR);
        let held = held.map(|held| Box::new(held) as Held);
        let dispatched = tokio::select! {
            // The queue first: it usually takes the request at once, and then the connection's
            // state (behind a lock in quinn) is not looked at.
            biased;
            dispatched = tokio::time::timeout(wait, self.server.dispatcher.dispatch_held(rpc, held)) => dispatched,
            // Nobody to answer: dropping the wait drops the request and what it held.
            _ = self.conn.conn.closed() => return None,
        };
        // Kept until the answer: dropped early (the connection closed), it withdraws the
        // request from the consumer's queue if the consumer has not taken it.
        let mut queued = match dispatched {
            Ok(Ok(Delivered::Queued(queued))) => Some(queued),
            Ok(Ok(Delivered::Handled)) => None,
            // Refused: the dispatcher answered `UNAVAILABLE` through `rx`.
            Ok(Err(_)) => None,
            Err(_) => {
                let why = format!("consumer did not take the request within {wait:?}");
                return Some(Err(RemoteError::new(ErrorCode::UNAVAILABLE, why)));
            }
        };
        tokio::select! {
            biased;
            answer = rx => Some(answer.unwrap_or_else(|_| Err(unanswered()))),
            // The caller gave up (timeout or cancel): nobody waits for the answer, but the
            // request stays delivered, until its connection closes.
            _ = send.stopped() => {
                if let Some(caller_gone) = caller_gone {
                    caller_gone.cancel();
                }
                if let Some(queued) = queued.take() {
                    self.parked.park(queued);
                }
                None
            }
        }
    }

    async fn write_answer(&self, send: &mut SendStream, answer: Option<RpcResult>) {
        let Some(answer) = answer else { return };
        let frame = Frame::answer(answer);
        tokio::select! {
            // The write first: it usually completes at once, and then the shutdown token
            // (a waiter list behind a lock) is not looked at.
            biased;
            written = write_frame(send, &frame, self.max()) => match written {
                Ok(()) => {
                    let _ = send.finish();
                }
                Err(e) => tracing::debug!(peer = %self.peer, error = ?e, "answer not delivered"),
            },
            _ = self.server.shutdown.cancelled() => {
                let _ = send.reset(stream::SHUTDOWN);
            }
        }
    }

    /// The checks a snapshot request passes before anything is done with its data: the
    /// header's id and the decoded request's hold on the peer's budget. A refused request is
    /// answered here, and its data stream, which will never be claimed, freed at once rather
    /// than when it expires; `None` then.
    async fn admit_snapshot(
        &self,
        (send, recv): (&mut SendStream, &mut RecvStream),
        command: &Command,
        (transfer_id, rendezvous): (u64, &Rendezvous),
        held: Option<Reservation>,
        served: Served,
    ) -> Option<(Option<Reservation>, Served)> {
        let admitted = match self.identity_error(command) {
            Some(error) => Err(error),
            None => self.hold_decoded(held, command).await,
        };
        match admitted {
            Ok(held) => Some((held, served)),
            Err(error) => {
                rendezvous.abandon(transfer_id);
                self.record(served, ServeOutcome::Refused);
                self.refuse(send, recv, error).await;
                None
            }
        }
    }

    async fn serve_snapshot(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        (transfer_id, request): (u64, crate::command::InstallSnapshotRequest),
        rendezvous: Arc<Rendezvous>,
        held: Option<Reservation>,
        served: Served,
    ) {
        let size = request.size;
        let command = Command::InstallSnapshot(request);
        let streams = (&mut send, &mut recv);
        let Some((held, served)) = self
            .admit_snapshot(streams, &command, (transfer_id, &rendezvous), held, served)
            .await
        else {
            return;
        };
        let claimed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sender_gone = CancellationToken::new();
        let data = snapshot_data(
            rendezvous.clone(),
            claimed.clone(),
            transfer_id,
            (self.server.limits.rpc_timeout, sender_gone.clone()),
            FrameReader::with_budget(self.max(), self.budget.clone()),
            self.conn.metrics.snapshot_received_bytes(),
        );
        let reader = SnapshotReader::new(data, size);
        // When the sender stops waiting for the answer (its source failed, its deadline
        // passed), a data stream it reset before any of it was sent may never show up here,
        // so a reader still waiting for it must not wait out its timeout: `sender_gone`.
        let answer = self
            .dispatch(command, Some(reader), &send, held, Some(&sender_gone))
            .await;
        let outcome = serve_outcome(answer.as_ref());
        let claimed = claimed.load(std::sync::atomic::Ordering::Acquire);
        if claimed && outcome == ServeOutcome::Ok {
            self.conn.metrics.snapshot_received();
        }
        self.record(served, outcome);
        self.write_answer(&mut send, answer).await;
        if !claimed {
            // Answered without reading the data (e.g. a stale term): free its stream.
            rendezvous.abandon(transfer_id);
        }
    }
}

/// The data of a snapshot, read from the data stream `stream_id` once the consumer starts
/// reading: the stream is claimed, its `SnapshotData` header read with `header` (the
/// connection's budget applies to it as to any frame) and checked, then its bytes read
/// straight into the consumer's buffers. A data stream that never comes, or was reset, is a
/// read error: `UnexpectedEof` once `sender_gone` is cancelled (the sender stopped waiting for
/// the answer) or when the sender reset the stream, `TimedOut` after `timeout`.
fn snapshot_data(
    rendezvous: Arc<Rendezvous>,
    claimed: Arc<std::sync::atomic::AtomicBool>,
    stream_id: u64,
    (timeout, sender_gone): (std::time::Duration, CancellationToken),
    mut header: FrameReader,
    bytes: metrics::Counter,
) -> SnapshotData {
    SnapshotData::new(
        bytes,
        Box::pin(async move {
            claimed.store(true, std::sync::atomic::Ordering::Release);
            let claim = tokio::select! {
                biased;
                claim = rendezvous.claim(stream_id, timeout) => claim,
                _ = sender_gone.cancelled() => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the sender gave up the snapshot before its data arrived",
                    ));
                }
            };
            let mut recv = claim.ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("snapshot data stream {stream_id} did not arrive within {timeout:?}"),
                )
            })?;
            tracing::trace!(stream = stream_id, "snapshot data stream claimed");
            match header.next(&mut recv).await {
                Ok(Some(Frame::SnapshotData { transfer_id })) if transfer_id == stream_id => {}
                Ok(_) => {
                    let _ = recv.stop(stream::BAD_FRAME);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot data stream does not start with its SnapshotData header",
                    ));
                }
                Err(ReadFrameError::Read(e)) => return Err(data_read_error(e)),
                Err(e) => {
                    let _ = recv.stop(stream::BAD_FRAME);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
                }
            }
            // The reader took nothing past the header: the data follows on `recv`.
            Ok(recv)
        }),
    )
}
