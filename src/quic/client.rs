//! The calling side: unary RPCs on their own bidirectional stream, and snapshots.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::AsyncRead;
use tokio::time::Instant;
use tracing::Instrument;

use super::codes::{self, stream};
use super::hedge::{self, HeartbeatHedge};
use super::io::{
    FrameReader, ReadFrameError, ResetOnDrop, WriteFrameError, copy_exact_to_stream, write_frame,
};
use super::metrics::{CallOutcome, CountingRead, Kind, PeerMetrics};
use super::pacing::{Pacer, SnapshotPacing};
use super::pool::{PeerConn, Pool};
use super::priority;
use super::stats::Counters;
use crate::codec::{self, Frame};
use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, Command, InstallSnapshotRequest,
    InstallSnapshotResponse, Request, Response, RpcKind, ServerAddress, ServerId,
};
use crate::error::{Error, ErrorCode};
use crate::transport::{
    AddressResolver, check_entries, check_request, encode_error, snapshot_timeout,
    stream_until_answer,
};

/// The calling side of a node: the pool it calls through, where it finds peers, and the
/// settings calls read.
pub(crate) struct Client {
    pub(crate) pool: Arc<Pool>,
    pub(crate) resolver: AddressResolver,
    pub(crate) settings: CallSettings,
    /// The node's counters (hedged heartbeats).
    pub(crate) stats: Arc<Counters>,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

/// The settings of [`QuicConfig`](super::QuicConfig) that calls read.
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallSettings {
    pub(crate) rpc_timeout: std::time::Duration,
    pub(crate) max_message_size: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) snapshot_bytes_per_timeout: u64,
    pub(crate) heartbeat_hedge: HeartbeatHedge,
    /// How a snapshot's data is paced.
    pub(crate) snapshot_pacing: SnapshotPacing,
    /// How long a resumable snapshot redials after losing its connection.
    pub(crate) snapshot_resume_grace: std::time::Duration,
}

impl Client {
    /// The connection to `id` if one is up and usable now (no dial, no wait).
    pub(super) fn ready(&self, id: &ServerId, target: &ServerAddress) -> Option<PeerConn> {
        self.pool.ready(id, &self.resolver.resolve(id, target))
    }

    /// The connection to `id`, dialled at the provider's address for it or at `target`, by
    /// `deadline`. A connection not up by then is [`Error::Unreachable`], never
    /// [`Error::Timeout`]: whichever of the dial's own timeout and the RPC's deadline comes
    /// first, a dial that never completed means the peer could not be reached. Callers run
    /// this before [`guarded`](Self::guarded) starts the rest of the RPC, so the two deadlines
    /// never race.
    pub(super) async fn connection(
        &self,
        id: &ServerId,
        target: &ServerAddress,
        deadline: Instant,
    ) -> Result<(PeerConn, ServerAddress), Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::Shutdown);
        }
        let target = self.resolver.resolve(id, target);
        if let Some(conn) = self.pool.ready(id, &target) {
            return Ok((conn, target));
        }
        let after = deadline.saturating_duration_since(Instant::now());
        let got = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(Error::Shutdown),
            got = tokio::time::timeout_at(deadline, self.pool.get(id, &target)) => got,
        };
        match got {
            Ok(conn) => Ok((conn?, target)),
            Err(_) => Err(Error::Unreachable {
                reason: format!("no connection within the RPC deadline ({after:?})"),
                peer: target,
            }),
        }
    }

    /// Runs `call`, made only of operations on one connection, under `deadline`. Closing the
    /// transport closes the connection, which ends `call` at once; that failure is reported
    /// as [`Error::Shutdown`]. `after` is the deadline's length, for [`Error::Timeout`].
    pub(super) async fn on_connection<T>(
        &self,
        rpc: RpcKind,
        (deadline, after): (Instant, std::time::Duration),
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Err(_)) if self.shutdown.is_cancelled() => Err(Error::Shutdown),
            Ok(result) => result,
            Err(_) => Err(Error::Timeout { rpc, after }),
        }
    }

    /// Runs `call` under `deadline`, failing with [`Error::Shutdown`] if the transport closes.
    pub(super) async fn guarded<T>(
        &self,
        rpc: RpcKind,
        deadline: Instant,
        call: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        let after = deadline.saturating_duration_since(Instant::now());
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => Err(Error::Shutdown),
            result = tokio::time::timeout_at(deadline, call) => match result {
                // A call that failed in the same poll in which the transport closed saw the
                // close (its connection closed locally), not the cause: report the cause.
                Ok(Err(_)) if self.shutdown.is_cancelled() => Err(Error::Shutdown),
                Ok(result) => result,
                Err(_) => Err(Error::Timeout { rpc, after }),
            }
        }
    }
}

/// Opens a request stream to `peer` on `conn`, sent at `priority`.
pub(super) async fn open_request(
    conn: &PeerConn,
    peer: &ServerAddress,
    priority: i32,
) -> Result<(quinn::SendStream, quinn::RecvStream), Error> {
    let (send, recv) = conn
        .conn
        .open_bi()
        .await
        .map_err(|e| codes::connection_error(peer, &e))?;
    // Cannot fail: the stream was just opened and is not finished.
    let _ = send.set_priority(priority);
    Ok((send, recv))
}

/// The caller-facing error for a frame that could not be read as an answer.
pub(super) fn answer_read_error(peer: &ServerAddress, error: ReadFrameError) -> Error {
    match error {
        ReadFrameError::Codec(e) => {
            Error::protocol_by(format!("bad answer from {peer}"), crate::error::cause(e))
        }
        ReadFrameError::Read(e) => codes::read_error(peer, &e),
        ReadFrameError::Truncated => {
            Error::protocol(format!("{peer} ended the stream inside a frame"))
        }
    }
}

/// The caller-facing error for a request of kind `rpc` that could not be written.
pub(super) fn request_write_error(
    peer: &ServerAddress,
    rpc: RpcKind,
    error: WriteFrameError,
) -> Error {
    match error {
        WriteFrameError::Codec(e) => encode_error(rpc, e),
        WriteFrameError::Write(e) => codes::write_error(peer, &e),
    }
}

/// Turns the answer frame to a request of `kind` into the caller's result: a response that
/// is not the `T` that answers it is the peer's protocol violation.
pub(super) fn answer<T: TryFrom<Response, Error = Response>>(
    peer: &ServerAddress,
    kind: RpcKind,
    frame: Option<Frame>,
) -> Result<T, Error> {
    match frame {
        Some(Frame::Response(response)) => T::try_from(response).map_err(|other| {
            Error::protocol(format!(
                "{peer} answered {kind} with a {} response",
                other.kind()
            ))
        }),
        Some(Frame::Error(e)) if e.code == ErrorCode::IDENTITY_MISMATCH => Err(
            Error::Authentication(format!("{peer} refused the request: {}", e.message)),
        ),
        Some(Frame::Error(e)) => Err(Error::Remote(e)),
        Some(other) => Err(Error::protocol(format!(
            "{peer} answered {kind} with a {} frame",
            other.kind().name()
        ))),
        None => Err(Error::lost(peer, "stream ended without an answer")),
    }
}

/// The term a request carries (0 for TimeoutNow, which has none), for its span.
pub(super) fn term_of(frame: &Frame) -> u64 {
    match frame {
        Frame::Request(command) => command.term(),
        Frame::InstallSnapshot { request, .. } | Frame::ResumableSnapshot { request, .. } => {
            request.term
        }
        _ => 0,
    }
}

/// Records a call's outcome and latency in the peer's metrics: those its connection carries,
/// or (when it failed before it had one) the peer's from the registry.
pub(super) fn record_call<T>(
    client: &Client,
    id: &ServerId,
    metrics: Option<Arc<PeerMetrics>>,
    kind: Kind,
    started: Instant,
    result: &Result<T, Error>,
) {
    let metrics = metrics.unwrap_or_else(|| client.pool.peer_metrics(id));
    metrics.call(kind, CallOutcome::of(result), started.elapsed());
}

/// One request on a new bidirectional stream, and its answer, in a `rpc` span (debug level:
/// peer, kind, term, and the stream once opened), recorded in the peer's metrics.
pub(super) async fn unary<Q: Request>(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
    priority: i32,
    request: Q,
) -> Result<Q::Answer, Error> {
    let started = Instant::now();
    let request: Command = request.into();
    let metric_kind = Kind::of(request.kind(), request.is_heartbeat());
    let span = tracing::debug_span!(
        "rpc",
        peer = %id,
        kind = metric_kind.label(),
        term = request.term(),
        stream = tracing::field::Empty,
    );
    let mut metrics = None;
    let call = unary_call(
        client,
        (id, target),
        priority,
        request,
        started,
        (&span, &mut metrics),
    );
    // Wrapped only when enabled: the wrapper is one more move of the call's state, and boxed
    // so that the call's own future does not hold the state twice.
    let result = if span.is_disabled() {
        call.await
    } else {
        Box::pin(call.instrument(span.clone())).await
    };
    record_call(client, id, metrics, metric_kind, started, &result);
    result
}

/// [`unary`] without the span and the metrics. The request is checked against the limits and
/// encoded before anything else, so one that exceeds them dials nothing. Leaves the
/// connection's metric handles in `metrics` once it has one.
async fn unary_call<T: TryFrom<Response, Error = Response>>(
    client: &Arc<Client>,
    (id, target): (&ServerId, &ServerAddress),
    priority: i32,
    request: Command,
    started: Instant,
    (span, metrics): (&tracing::Span, &mut Option<Arc<PeerMetrics>>),
) -> Result<T, Error> {
    let deadline = started + client.settings.rpc_timeout;
    let max = client.settings.max_message_size;
    let kind = request.kind();
    if let Command::AppendEntries(append) = &request {
        check_entries(append)?;
    }
    let mut encoded = BytesMut::with_capacity(256);
    codec::encode(&Frame::Request(request), &mut encoded, max)
        .map_err(|e| encode_error(kind, e))?;
    let encoded = encoded.freeze();
    let (conn, peer) = client.connection(id, target, deadline).await?;
    *metrics = Some(conn.metrics.clone());
    let after = client.settings.rpc_timeout;
    client
        .on_connection(kind, (deadline, after), async {
            let _active = conn.active();
            let watchdog = client.pool.watchdog(&conn.conn, deadline);
            let (mut send, mut recv) = open_request(&conn, &peer, priority).await?;
            span.record("stream", u64::from(send.id()));
            send.write_chunk(encoded)
                .await
                .map_err(|e| codes::write_error(&peer, &e))?;
            // The request is whole; the peer reads to the end of the stream.
            let _ = send.finish();
            let frame = FrameReader::new(max).next(&mut recv).await;
            watchdog.answered();
            answer(&peer, kind, frame.map_err(|e| answer_read_error(&peer, e))?)
        })
        .await
}

/// RequestVote, RequestPreVote or TimeoutNow on its own stream, at the priority of votes and
/// heartbeats.
pub(super) async fn control<Q: Request>(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
    request: Q,
) -> Result<Q::Answer, Error> {
    unary(client, id, target, priority::CONTROL, request).await
}

/// AppendEntries on its own stream; a heartbeat hedged as `QuicConfig::heartbeat_hedge` says.
pub(super) async fn append_entries(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
    request: AppendEntriesRequest,
) -> Result<AppendEntriesResponse, Error> {
    if !request.is_heartbeat() {
        return unary(client, id, target, priority::APPEND, request).await;
    }
    let hedge = client.settings.heartbeat_hedge;
    if hedge == HeartbeatHedge::Off {
        return unary(client, id, target, priority::CONTROL, request).await;
    }
    // The hedge's delay counts from when the request can go out, not from a dial; and
    // whether the path is long is known only on a connection. `dialled`: the call's deadline,
    // which a dial has started to use up.
    let (conn, dialled) = match client.ready(id, target) {
        Some(conn) => (conn, None),
        None => {
            let deadline = Instant::now() + client.settings.rpc_timeout;
            (
                client.connection(id, target, deadline).await?.0,
                Some(deadline),
            )
        }
    };
    match (hedge.delay(|rtt| conn.path_at_least(rtt)), dialled) {
        // Boxed: it holds two calls, which would otherwise make every heartbeat's future
        // (and the copy of it into the caller's box) twice as large.
        (Some(delay), _) => {
            let deadline = dialled.unwrap_or_else(|| Instant::now() + client.settings.rpc_timeout);
            let call =
                hedge::hedged_heartbeat(client, (id, target), request, conn, deadline, delay);
            Box::pin(call).await
        }
        // The call's own deadline would start after the dial: the one from the start holds.
        (None, Some(deadline)) => {
            let call = unary(client, id, target, priority::CONTROL, request);
            Box::pin(client.guarded(RpcKind::AppendEntries, deadline, call)).await
        }
        (None, None) => unary(client, id, target, priority::CONTROL, request).await,
    }
}

/// InstallSnapshot: the request on a bidirectional stream, `size` bytes of data on a
/// unidirectional stream bound to it by a transfer id, streamed with bounded memory.
///
/// In a `rpc` span (debug level) and recorded in the peer's metrics like the unary calls; the
/// data's bytes are counted as they are read from `data`.
pub(super) async fn install_snapshot<R>(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
    request: InstallSnapshotRequest,
    data: R,
) -> Result<InstallSnapshotResponse, Error>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let started = Instant::now();
    let span = tracing::debug_span!(
        "rpc",
        peer = %id,
        kind = Kind::InstallSnapshot.label(),
        term = request.term,
        stream = tracing::field::Empty,
    );
    let mut metrics = None;
    // Snapshots are rare and long: always wrapped.
    let result = send_snapshot(client, (id, target), request, data, (&span, &mut metrics))
        .instrument(span.clone())
        .await;
    if result.is_ok()
        && let Some(metrics) = &metrics
    {
        metrics.snapshot_sent();
    }
    record_call(client, id, metrics, Kind::InstallSnapshot, started, &result);
    result
}

/// [`install_snapshot`] without the span and the call's metrics.
async fn send_snapshot<R>(
    client: &Arc<Client>,
    (id, target): (&ServerId, &ServerAddress),
    request: InstallSnapshotRequest,
    data: R,
    (span, metrics): (&tracing::Span, &mut Option<Arc<PeerMetrics>>),
) -> Result<InstallSnapshotResponse, Error>
where
    R: AsyncRead + Send + Unpin + 'static,
{
    let size = request.size;
    let timeout = snapshot_timeout(
        client.settings.rpc_timeout,
        size,
        client.settings.snapshot_bytes_per_timeout,
    );
    let deadline = Instant::now() + timeout;
    let max = client.settings.max_message_size;
    check_request(&Command::InstallSnapshot(request.clone()), max)?;
    let (conn, peer) = client.connection(id, target, deadline).await?;
    *metrics = Some(conn.metrics.clone());
    let mut data = CountingRead::new(data, conn.metrics.snapshot_sent_bytes());
    client
        .guarded(RpcKind::InstallSnapshot, deadline, async {
            let _active = conn.active();
            let data_stream = conn
                .conn
                .open_uni()
                .await
                .map_err(|e| codes::connection_error(&peer, &e))?;
            // The request names its data stream by the stream's id.
            let transfer_id = u64::from(data_stream.id());
            // Until every byte is written, an early exit must not look like a complete snapshot.
            let mut data_stream = ResetOnDrop::new(data_stream, stream::SNAPSHOT_ABORTED);
            let _ = data_stream.set_priority(priority::SNAPSHOT_DATA);
            write_frame(&mut data_stream, &Frame::SnapshotData { transfer_id }, max)
                .await
                .map_err(|e| request_write_error(&peer, RpcKind::InstallSnapshot, e))?;

            let (mut send, mut recv) = open_request(&conn, &peer, priority::APPEND).await?;
            span.record("stream", u64::from(send.id()));
            write_frame(
                &mut send,
                &Frame::InstallSnapshot {
                    transfer_id,
                    request,
                },
                max,
            )
            .await
            .map_err(|e| request_write_error(&peer, RpcKind::InstallSnapshot, e))?;
            let _ = send.finish();

            let streaming = async {
                let pacer = Pacer::new(client.settings.snapshot_pacing).map(|p| (p, &conn.conn));
                let copied = copy_exact_to_stream(&mut data, size, &mut data_stream, pacer).await;
                if copied.is_ok() {
                    data_stream.finish();
                }
                copied
            };
            let answer_frame = async { FrameReader::new(max).next(&mut recv).await };
            let frame = stream_until_answer(streaming, answer_frame, size).await?;
            let frame = frame.map_err(|e| answer_read_error(&peer, e))?;
            answer(&peer, RpcKind::InstallSnapshot, frame)
        })
        .await
}
