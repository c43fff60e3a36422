//! Serving a pipeline stream: AppendEntries frames in, answers out in the same order.

use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};

use super::{Stream, serve_outcome};
use crate::codec::Frame;
use crate::command::Command;
use crate::error::{ErrorCode, RemoteError};
use crate::quic::codes::stream;
use crate::quic::io::{FrameReader, ReadFrameError, write_frame};
use crate::quic::metrics::Kind;
use crate::sanitize::untrusted;
use crate::transport::{Delivered, Held, Responder, Rpc, RpcResult, unanswered};

impl Stream {
    /// A pipeline: AppendEntries frames in, answers out in the same order. Requests reach
    /// the consumer one at a time in stream order, which is the order the leader sent them.
    pub(super) async fn serve_pipeline(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        mut reader: FrameReader,
    ) {
        // Answers in request order: either waiting on the consumer, or known at once.
        enum Queued {
            // With its place in the consumer's queue: dropped, it withdraws the request.
            Pending(
                oneshot::Receiver<RpcResult>,
                Option<crate::transport::Queued>,
            ),
            Ready(RpcResult),
        }
        let (tx, mut rx) = mpsc::channel::<Queued>(self.server.limits.max_in_flight.max(1));
        let read_requests = async move {
            loop {
                let refuse = |what: String| {
                    tracing::warn!(peer = %self.peer, error = %what, "bad input on a pipeline");
                    Queued::Ready(Err(RemoteError::new(ErrorCode::BAD_REQUEST, what)))
                };
                let request = match reader.next(&mut recv).await {
                    Ok(Some(Frame::Request(Command::AppendEntries(request)))) => request,
                    Ok(None) => return,
                    Err(ReadFrameError::Read(e)) => {
                        tracing::debug!(peer = %self.peer, error = %untrusted(&e), "pipeline stream failed");
                        return;
                    }
                    Ok(Some(other)) => {
                        let _ = recv.stop(stream::BAD_FRAME);
                        let what = format!("a {} frame on a pipeline", other.kind().name());
                        let _ = tx.send(refuse(what)).await;
                        return;
                    }
                    Err(e) => {
                        let _ = recv.stop(stream::BAD_FRAME);
                        let _ = tx.send(refuse(e.to_string())).await;
                        return;
                    }
                };
                // Counted until the consumer takes it; the next request is read only once this
                // one is queued, so a pipeline waits on its own peer's budget and queue.
                let held = reader.take_reservation();
                let command = Command::AppendEntries(request);
                if let Some(error) = self.identity_error(&command) {
                    let _ = tx.send(Queued::Ready(Err(error))).await;
                    continue;
                }
                let held = match self.hold_decoded(held, &command).await {
                    Ok(held) => held.map(|held| Box::new(held) as Held),
                    Err(error) => {
                        let _ = recv.stop(stream::BAD_FRAME);
                        let _ = tx.send(Queued::Ready(Err(error))).await;
                        return;
                    }
                };
                let (responder, answer) = Responder::new(command.kind());
                // Dispatch in order here; the answer is awaited on its own, so the next
                // request does not wait for this one's handler.
                let rpc = Rpc::new(command, None, responder);
                match self.server.dispatcher.dispatch_held(rpc, held).await {
                    Ok(delivered) => {
                        let queued = match delivered {
                            Delivered::Queued(queued) => Some(queued),
                            Delivered::Handled => None,
                        };
                        let _ = tx.send(Queued::Pending(answer, queued)).await;
                    }
                    Err(_) => {
                        let unavailable =
                            RemoteError::new(ErrorCode::UNAVAILABLE, "node is shutting down");
                        let _ = tx.send(Queued::Ready(Err(unavailable))).await;
                        return;
                    }
                }
            }
        };
        let write_answers = async {
            while let Some(queued) = rx.recv().await {
                let answer = match queued {
                    Queued::Ready(answer) => answer,
                    Queued::Pending(answer, _queued) => {
                        answer.await.unwrap_or_else(|_| Err(unanswered()))
                    }
                };
                let outcome = serve_outcome(Some(&answer));
                self.conn.metrics.served(Kind::AppendEntries, outcome, None);
                if let Err(e) = write_frame(&mut send, &Frame::answer(answer), self.max()).await {
                    tracing::debug!(peer = %self.peer, error = ?e, "pipeline answer not delivered");
                    return;
                }
            }
            let _ = send.finish();
        };
        let _active = self.conn.active();
        tokio::select! {
            _ = self.server.shutdown.cancelled() => {}
            // What the pipeline holds, read or queued for the consumer, goes with its
            // connection (dropping the two halves withdraws their queued requests).
            _ = self.conn.conn.closed() => {}
            _ = async { tokio::join!(read_requests, write_answers) } => {}
        }
    }
}
