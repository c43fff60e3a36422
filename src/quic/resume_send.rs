//! The sending side of a resumable snapshot (`docs/PROTOCOL.md` §8.6): the transfer opens
//! like a plain one with a `ResumableSnapshot` request, and when its connection is lost it is
//! resumed on the next one: `SnapshotResume`, the receiver's `ResumeFrom` offset, the source
//! sought there, the rest of the data on a new data stream.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::RecvStream;
use tokio::io::{AsyncRead, AsyncSeek, AsyncSeekExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::{
    Client, answer, answer_read_error, open_request, record_call, request_write_error,
};
use super::codes::{self, stream};
use super::io::{FrameReader, ResetOnDrop, copy_range_to_stream, write_frame};
use super::metrics::{Kind, PeerMetrics};
use super::pacing::Pacer;
use super::pool::PeerConn;
use super::priority;
use crate::codec::{Frame, SnapshotResume};
use crate::command::{
    Command, InstallSnapshotRequest, InstallSnapshotResponse, RpcKind, ServerAddress, ServerId,
};
use crate::error::Error;
use crate::transport::{check_request, snapshot_timeout, stream_until_answer};

/// The first pause between dials while a lost snapshot connection is redialled; it doubles
/// up to [`REDIAL_MAX`].
const REDIAL_FIRST: Duration = Duration::from_millis(50);
const REDIAL_MAX: Duration = Duration::from_secs(1);

/// A resumable InstallSnapshot: as `client::install_snapshot`, and when the connection is
/// lost, resumed on a new one from the offset the receiver confirms, within the snapshot's
/// deadline. `session` is cancelled by `disconnect_peer`, which ends the call instead.
///
/// In a `rpc` span (debug level) and recorded in the peer's metrics like the other calls.
pub(super) async fn install_snapshot_resumable<R>(
    client: &Arc<Client>,
    session: CancellationToken,
    id: &ServerId,
    target: &ServerAddress,
    request: InstallSnapshotRequest,
    data: R,
) -> Result<InstallSnapshotResponse, Error>
where
    R: AsyncRead + AsyncSeek + Send + Unpin + 'static,
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
    let call = Sender {
        client,
        session,
        id,
        target,
        span: &span,
    };
    let result = call
        .send(request, data, &mut metrics)
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

/// One resumable snapshot call.
struct Sender<'a> {
    client: &'a Arc<Client>,
    session: CancellationToken,
    id: &'a ServerId,
    target: &'a ServerAddress,
    span: &'a tracing::Span,
}

/// Where the data stands, shared by the copy and the resume logic.
struct Progress {
    /// The source's position when the call began: offset 0 of the snapshot.
    base: u64,
    size: u64,
    /// The furthest offset handed to QUIC on any data stream so far.
    sent: AtomicU64,
}

impl Sender<'_> {
    async fn send<R>(
        &self,
        request: InstallSnapshotRequest,
        mut data: R,
        metrics: &mut Option<Arc<PeerMetrics>>,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin,
    {
        let settings = &self.client.settings;
        let size = request.size;
        let timeout = snapshot_timeout(
            settings.rpc_timeout,
            size,
            settings.snapshot_bytes_per_timeout,
        );
        let deadline = Instant::now() + timeout;
        check_request(
            &Command::InstallSnapshot(request.clone()),
            settings.max_message_size,
        )?;
        let base = data.stream_position().await.map_err(Error::Io)?;
        let progress = Progress {
            base,
            size,
            sent: AtomicU64::new(0),
        };
        // Unique per (this node, the receiver) with overwhelming probability; the receiver
        // refuses a duplicate of a transfer it still holds.
        let resume_id = fastrand::u64(..);
        let (mut conn, mut peer) = self
            .client
            .connection(self.id, self.target, deadline)
            .await?;
        *metrics = Some(conn.metrics.clone());
        let mut request = Some(request);
        self.client
            .guarded(RpcKind::InstallSnapshot, deadline, async {
                loop {
                    let attempt = match request.take() {
                        Some(request) => {
                            self.first(&conn, &peer, (resume_id, request), &mut data, &progress)
                                .await
                        }
                        None => {
                            self.resume(&conn, &peer, resume_id, &mut data, &progress)
                                .await
                        }
                    };
                    let error = match attempt {
                        Ok(answer) => return Ok(answer),
                        Err(error) if self.resumable(&conn, &error) => error,
                        Err(error) => return Err(error),
                    };
                    tracing::info!(
                        peer = %self.id,
                        resume_id,
                        sent = progress.sent.load(Ordering::Relaxed),
                        error = %error,
                        "connection lost under a snapshot: resuming on a new connection"
                    );
                    (conn, peer) = self.redial(deadline, error).await?;
                }
            })
            .await
    }

    /// Whether a failed attempt on `conn` may resume: its connection was lost (not closed by
    /// `disconnect_peer`, nor by a peer shutting down), the call was not given up, and the
    /// failure was the connection's, not an answer.
    fn resumable(&self, conn: &PeerConn, error: &Error) -> bool {
        if self.session.is_cancelled() || self.client.shutdown.is_cancelled() {
            return false;
        }
        let Some(reason) = conn.conn.close_reason() else {
            return false;
        };
        let peer_shut_down = matches!(&reason, quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code == codes::conn::SHUTDOWN);
        matches!(error, Error::ConnectionLost { .. })
            && !peer_shut_down
            && !codes::is_authentication_failure(&reason)
    }

    /// A connection to the peer again, dialled through the pool as any call does, retried
    /// while the peer is unreachable for at most the resume grace period (after which the
    /// receiver no longer holds the transfer) and within `deadline`.
    async fn redial(
        &self,
        deadline: Instant,
        lost: Error,
    ) -> Result<(PeerConn, ServerAddress), Error> {
        let give_up = deadline.min(Instant::now() + self.client.settings.snapshot_resume_grace);
        let mut pause = REDIAL_FIRST;
        let mut last = lost;
        loop {
            if self.session.is_cancelled() {
                return Err(last);
            }
            match self.client.connection(self.id, self.target, give_up).await {
                Ok(got) => return Ok(got),
                Err(e @ Error::Unreachable { .. }) => last = e,
                Err(e) => return Err(e),
            }
            if Instant::now() + pause >= give_up {
                return Err(last);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(REDIAL_MAX);
        }
    }

    /// The first attempt: a data stream from offset 0 and the `ResumableSnapshot` request.
    async fn first<R>(
        &self,
        conn: &PeerConn,
        peer: &ServerAddress,
        (resume_id, request): (u64, InstallSnapshotRequest),
        data: &mut R,
        progress: &Progress,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin,
    {
        let max = self.client.settings.max_message_size;
        let _active = conn.active();
        let (transfer_id, data_stream) = open_data_stream(conn, peer, max).await?;
        let (mut send, recv) = open_request(conn, peer, priority::APPEND).await?;
        self.span.record("stream", u64::from(send.id()));
        let frame = Frame::ResumableSnapshot {
            transfer_id,
            resume_id,
            request,
        };
        write_frame(&mut send, &frame, max)
            .await
            .map_err(|e| request_write_error(peer, RpcKind::InstallSnapshot, e))?;
        let _ = send.finish();
        let answers = (recv, FrameReader::new(max));
        self.stream_from(conn, peer, 0, data, progress, data_stream, answers)
            .await
    }

    /// A resume: a new data stream, `SnapshotResume`, the receiver's offset, the rest.
    async fn resume<R>(
        &self,
        conn: &PeerConn,
        peer: &ServerAddress,
        resume_id: u64,
        data: &mut R,
        progress: &Progress,
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + AsyncSeek + Send + Unpin,
    {
        let max = self.client.settings.max_message_size;
        let _active = conn.active();
        let (transfer_id, data_stream) = open_data_stream(conn, peer, max).await?;
        let (mut send, mut recv) = open_request(conn, peer, priority::APPEND).await?;
        self.span.record("stream", u64::from(send.id()));
        let frame = Frame::SnapshotResume(SnapshotResume {
            transfer_id,
            resume_id,
            size: progress.size,
        });
        write_frame(&mut send, &frame, max)
            .await
            .map_err(|e| request_write_error(peer, RpcKind::InstallSnapshot, e))?;
        let _ = send.finish();
        let mut answers = FrameReader::new(max);
        let first = answers
            .next(&mut recv)
            .await
            .map_err(|e| answer_read_error(peer, e))?;
        let offset = match first {
            Some(Frame::ResumeFrom { offset }) => offset,
            // An `Error` (the transfer is not held, or the request was refused), or a
            // violation: the caller's answer.
            other => {
                return answer::<InstallSnapshotResponse>(peer, RpcKind::InstallSnapshot, other);
            }
        };
        let sent = progress.sent.load(Ordering::Relaxed);
        if offset > progress.size || offset > sent {
            return Err(Error::protocol(format!(
                "{peer} resumes the snapshot at offset {offset}, past the {sent} bytes sent"
            )));
        }
        let resent = sent - offset;
        self.client.stats.snapshot_resumed(resent);
        tracing::debug!(peer = %self.id, resume_id, offset, resent, "snapshot resumed");
        let source = progress.base.checked_add(offset).ok_or_else(|| {
            Error::protocol(format!("{peer} resumes the snapshot at offset {offset}"))
        })?;
        data.seek(std::io::SeekFrom::Start(source))
            .await
            .map_err(Error::Io)?;
        self.stream_from(
            conn,
            peer,
            offset,
            data,
            progress,
            data_stream,
            (recv, answers),
        )
        .await
    }

    /// Streams the data from `offset` to the end on `data_stream` while waiting for the
    /// answer on `recv`.
    #[allow(clippy::too_many_arguments)]
    async fn stream_from<R>(
        &self,
        conn: &PeerConn,
        peer: &ServerAddress,
        offset: u64,
        data: &mut R,
        progress: &Progress,
        mut data_stream: ResetOnDrop,
        (mut recv, mut answers): (RecvStream, FrameReader),
    ) -> Result<InstallSnapshotResponse, Error>
    where
        R: AsyncRead + Send + Unpin,
    {
        let size = progress.size;
        let bytes = conn.metrics.snapshot_sent_bytes();
        let streaming = async {
            let pacer = Pacer::new(self.client.settings.snapshot_pacing).map(|p| (p, &conn.conn));
            // How far QUIC has taken the bytes, partial writes included: a resume after this
            // connection sends again exactly what may not have arrived.
            let mut counted = offset;
            let record = |position: u64| {
                bytes.increment(position - counted);
                counted = position;
                progress.sent.fetch_max(position, Ordering::Relaxed);
            };
            let copied =
                copy_range_to_stream(data, offset..progress.size, &mut data_stream, pacer, record)
                    .await;
            if copied.is_ok() {
                data_stream.finish();
            }
            copied
        };
        let answer_frame = async { answers.next(&mut recv).await };
        let frame = stream_until_answer(streaming, answer_frame, size).await?;
        let frame = frame.map_err(|e| answer_read_error(peer, e))?;
        answer(peer, RpcKind::InstallSnapshot, frame)
    }
}

/// Opens a data stream and writes its `SnapshotData` header; returns its transfer id (its
/// QUIC stream id) and the stream, reset with `SNAPSHOT_ABORTED` unless finished.
async fn open_data_stream(
    conn: &PeerConn,
    peer: &ServerAddress,
    max: usize,
) -> Result<(u64, ResetOnDrop), Error> {
    let data_stream = conn
        .conn
        .open_uni()
        .await
        .map_err(|e| codes::connection_error(peer, &e))?;
    let transfer_id = u64::from(data_stream.id());
    let mut data_stream = ResetOnDrop::new(data_stream, stream::SNAPSHOT_ABORTED);
    let _ = data_stream.set_priority(priority::SNAPSHOT_DATA);
    write_frame(&mut data_stream, &Frame::SnapshotData { transfer_id }, max)
        .await
        .map_err(|e| request_write_error(peer, RpcKind::InstallSnapshot, e))?;
    Ok((transfer_id, data_stream))
}
