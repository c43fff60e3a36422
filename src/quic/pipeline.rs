//! The calling side of a pipeline: one bidirectional stream per pipeline. QUIC delivers a
//! stream's bytes in order, so the follower reads the appends in the order they were sent,
//! and answers them in that order on the same stream.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use quinn::{RecvStream, SendStream};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::client::Client;
use super::client::{answer, answer_read_error, open_request, request_write_error};
use super::codes::{self, stream};
use super::io::{FrameReader, write_frame};
use super::metrics::{CallOutcome, Kind};
use super::pool::{ActiveGuard, PeerConn};
use super::priority;
use bytes::BytesMut;

use crate::codec::{self, Frame, FrameKind};
use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, RpcKind, ServerAddress, ServerId,
};
use crate::error::{Error, Shared};
use crate::transport::{
    AppendPipeline, BoxFuture, PipelineSink, ResponseFuture, check_entries, encode_error,
};

type Answer = oneshot::Sender<Result<AppendEntriesResponse, Error>>;

struct QuicSink {
    client: Arc<Client>,
    id: ServerId,
    target: ServerAddress,
    lane: Mutex<Lane>,
    closed: CancellationToken,
    max: usize,
}

/// The stream a pipeline currently sends on, and the task reading its answers.
struct Lane {
    conn: PeerConn,
    peer: ServerAddress,
    send: SendStream,
    /// Answer slots, in send order, for the task reading the answers.
    answers: mpsc::UnboundedSender<Answer>,
    /// Cancelled when the reading task ends.
    reader_done: CancellationToken,
    /// Set by the reading task if it failed an append still waiting for its answer.
    failed: Arc<AtomicBool>,
}

/// Opens a pipeline stream to `id` (its first frame is `PipelineOpen`) and starts reading
/// its answers.
async fn open_lane(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
    closed: &CancellationToken,
) -> Result<Lane, Error> {
    let config = &client.settings;
    let deadline = tokio::time::Instant::now() + config.rpc_timeout;
    let (conn, peer) = client.connection(id, target, deadline).await?;
    let (send, recv, active) = client
        .guarded(RpcKind::AppendEntries, deadline, async {
            let active = conn.active();
            let (mut send, recv) = open_request(&conn, &peer, priority::APPEND).await?;
            write_frame(&mut send, &Frame::PipelineOpen, config.max_message_size)
                .await
                .map_err(|e| request_write_error(&peer, RpcKind::AppendEntries, e))?;
            Ok((send, recv, active))
        })
        .await?;
    let (answers, answers_rx) = mpsc::unbounded_channel();
    let reader_done = CancellationToken::new();
    let failed = Arc::new(AtomicBool::new(false));
    client.tasks.spawn(read_answers(
        recv,
        answers_rx,
        closed.clone(),
        peer.clone(),
        config.max_message_size,
        (active, reader_done.clone(), failed.clone()),
    ));
    Ok(Lane {
        conn,
        peer,
        send,
        answers,
        reader_done,
        failed,
    })
}

/// Opens a pipeline to `id`: a stream whose first frame is `PipelineOpen`.
pub(super) async fn open(
    client: &Arc<Client>,
    id: &ServerId,
    target: &ServerAddress,
) -> Result<AppendPipeline, Error> {
    let config = &client.settings;
    if config.max_in_flight < 2 {
        return Err(Error::PipelineNotSupported);
    }
    let closed = client.shutdown.child_token();
    let lane = open_lane(client, id, target, &closed).await?;
    let sink = QuicSink {
        client: client.clone(),
        id: id.clone(),
        target: target.clone(),
        lane: Mutex::new(lane),
        closed,
        max: config.max_message_size,
    };
    AppendPipeline::new(
        sink,
        config.max_in_flight,
        config.rpc_timeout,
        &client.shutdown,
    )
}

impl QuicSink {
    /// Moves the pipeline off a connection that lost the tie-break (and will be closed) onto
    /// the one kept. The old stream is finished and every append on it answered before
    /// anything is sent on the new one, so the follower still sees the appends in order.
    async fn move_lane(&self, lane: &mut Lane) -> Result<(), Error> {
        let _ = lane.send.finish();
        let timeout = self.client.settings.rpc_timeout;
        tokio::select! {
            _ = lane.reader_done.cancelled() => {}
            _ = self.closed.cancelled() => return Err(Error::PipelineClosed),
            _ = tokio::time::sleep(timeout) => {
                return Err(Error::Timeout { rpc: RpcKind::AppendEntries, after: timeout });
            }
        }
        if lane.failed.load(Ordering::Acquire) {
            // Appends on the old stream failed: the pipeline is broken, as on any failure.
            return Err(Error::PipelineClosed);
        }
        tracing::debug!(peer = %lane.peer, "pipeline moved off a retired connection");
        *lane = open_lane(&self.client, &self.id, &self.target, &self.closed).await?;
        Ok(())
    }
}

/// Reads answers in order and completes each request's slot; on any failure, fails every
/// slot still open.
async fn read_answers(
    mut recv: RecvStream,
    mut slots: mpsc::UnboundedReceiver<Answer>,
    closed: CancellationToken,
    peer: ServerAddress,
    max: usize,
    (_active, done, failed): (ActiveGuard, CancellationToken, Arc<AtomicBool>),
) {
    // Tells the sink when this reader is finished with the stream.
    let _done = done.drop_guard();
    let mut reader = FrameReader::new(max);
    let mut waiting: VecDeque<Answer> = VecDeque::new();
    let failure = loop {
        let frame = tokio::select! {
            _ = closed.cancelled() => break Error::PipelineClosed,
            frame = reader.next(&mut recv) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                break Error::lost(&peer, "pipeline ended");
            }
            Err(e) => break answer_read_error(&peer, e),
        };
        // Every slot is queued before its request is written, so it is here by now.
        while let Ok(slot) = slots.try_recv() {
            waiting.push_back(slot);
        }
        let Some(slot) = waiting.pop_front() else {
            break Error::protocol(format!(
                "{peer} answered a pipelined append that was never sent"
            ));
        };
        let _ = slot.send(answer(&peer, RpcKind::AppendEntries, Some(frame)));
    };
    let _ = recv.stop(stream::STOPPED);
    slots.close();
    while let Ok(slot) = slots.try_recv() {
        waiting.push_back(slot);
    }
    if !waiting.is_empty() {
        failed.store(true, Ordering::Release);
    }
    // Any other failure is shared by every append it fails, as their cause.
    let (closed_by, cause): (fn() -> Error, Option<Shared>) = match failure {
        Error::PipelineClosed => (|| Error::PipelineClosed, None),
        Error::Shutdown => (|| Error::Shutdown, None),
        other => (|| Error::PipelineClosed, Some(Shared(Arc::new(other)))),
    };
    for slot in waiting {
        let error = match &cause {
            None => closed_by(),
            Some(cause) => Error::lost_by(&peer, "the pipeline failed", cause.clone()),
        };
        let _ = slot.send(Err(error));
    }
}

impl PipelineSink for QuicSink {
    fn start<'a>(
        &'a self,
        request: &'a AppendEntriesRequest,
    ) -> BoxFuture<'a, Result<ResponseFuture, Error>> {
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            let kind = Kind::of(RpcKind::AppendEntries, request.is_heartbeat());
            // Encode first: a request that cannot be encoded is refused before its answer slot
            // is queued, so slots and answers stay in step.
            check_entries(request)?;
            let mut bytes = BytesMut::with_capacity(append_size_hint(request));
            codec::encode_message(FrameKind::AppendEntries, request, &mut bytes, self.max)
                .map_err(|e| encode_error(RpcKind::AppendEntries, e))?;
            let (slot, rx) = oneshot::channel();
            let mut lane = self.lane.lock().await;
            if lane.conn.is_retiring() && !self.closed.is_cancelled() {
                self.move_lane(&mut lane).await?;
            }
            lane.answers.send(slot).map_err(|_| Error::PipelineClosed)?;
            if let Err(e) = lane.send.write_chunk(bytes.freeze()).await {
                // The stream is broken mid-pipeline: nothing after this can be matched.
                self.closed.cancel();
                return Err(codes::write_error(&lane.peer, &e));
            }
            let peer = lane.peer.clone();
            let metrics = lane.conn.metrics.clone();
            let response: ResponseFuture = Box::pin(async move {
                let result = rx
                    .await
                    .unwrap_or_else(|_| Err(Error::lost(&peer, "pipeline reader stopped")));
                metrics.call(kind, CallOutcome::of(&result), started.elapsed());
                result
            });
            Ok(response)
        })
    }

    fn close(&self) {
        self.closed.cancel();
        if let Ok(mut lane) = self.lane.try_lock() {
            let _ = lane.send.finish();
        }
    }
}

/// About the encoded size of an append, so its buffer is allocated once.
fn append_size_hint(request: &AppendEntriesRequest) -> usize {
    let entries: usize = request
        .entries
        .iter()
        .map(|e| e.data.len() + e.extensions.len() + 32)
        .sum();
    128 + request.header.extensions.len() + entries
}
