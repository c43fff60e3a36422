//! Serving resumable snapshots (`docs/PROTOCOL.md` §8.6): the first request, the resumes on
//! later connections, and the answer on whichever request stream is the transfer's latest.

use std::io;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};

use super::{CONSUMER_WAIT_FACTOR, Served, Stream, serve_outcome};
use crate::codec::Frame;
use crate::command::Command;
use crate::error::{ErrorCode, RemoteError};
use crate::quic::codes::stream;
use crate::quic::io::{FrameReader, ReadFrameError, Reservation, write_frame};
use crate::quic::metrics::ServeOutcome;
use crate::quic::rendezvous::Rendezvous;
use crate::quic::resume::{self, ClaimFailure, ResumableData, Transfer, Waited};
use crate::quic::snapshot_data::data_read_error;
use crate::transport::{Delivered, Held, Responder, Rpc, SnapshotReader};

impl Stream {
    /// A resumable InstallSnapshot (`docs/PROTOCOL.md` §8.6): registered under the peer and
    /// its resume id, delivered to the consumer with a reader that waits across a lost
    /// connection, answered on whichever request stream is the transfer's latest.
    pub(super) async fn serve_resumable(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        (transfer_id, resume_id, request): (u64, u64, crate::command::InstallSnapshotRequest),
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
        let (responder, rx) = Responder::new(command.kind());
        let claim = self.resumable_claim(rendezvous.clone(), transfer_id);
        let transfer = match self.server.resumable.register(
            &self.peer,
            (resume_id, size),
            rx,
            claim,
        ) {
            Ok(transfer) => transfer,
            Err(error) => {
                tracing::warn!(peer = %self.peer, resume_id, why = %error.message, "resumable snapshot refused");
                rendezvous.abandon(transfer_id);
                self.record(served, ServeOutcome::Refused);
                return self.write_answer(&mut send, Some(Err(error))).await;
            }
        };
        let generation = resume::FIRST_ATTACHMENT;
        let data = ResumableData::new(
            transfer.clone(),
            self.conn.metrics.snapshot_received_bytes(),
        );
        let rpc = Rpc::new(command, Some(SnapshotReader::new(data, size)), responder);
        // As `dispatch`: twice the RPC timeout for room in the consumer's queue.
        let wait = self
            .server
            .limits
            .rpc_timeout
            .saturating_mul(CONSUMER_WAIT_FACTOR);
        let held = held.map(|held| Box::new(held) as Held);
        let dispatched = tokio::select! {
            biased;
            dispatched = tokio::time::timeout(wait, self.server.dispatcher.dispatch_held(rpc, held)) => dispatched,
            // Never queued: the transfer goes with the request (a resume finds nothing).
            _ = self.conn.conn.closed() => return,
        };
        match dispatched {
            Ok(Ok(Delivered::Queued(queued))) => transfer.keep_queued(Some(queued)),
            // Handled, or refused (answered `UNAVAILABLE` through the transfer's answer).
            Ok(Ok(Delivered::Handled)) | Ok(Err(_)) => {}
            Err(_) => {
                let why = format!("consumer did not take the request within {wait:?}");
                let answer = Some(Err(RemoteError::new(ErrorCode::UNAVAILABLE, why)));
                self.record(served, serve_outcome(answer.as_ref()));
                return self.write_answer(&mut send, answer).await;
            }
        }
        let data = (rendezvous, transfer_id);
        self.answer_resumable(&transfer, generation, send, data, served)
            .await;
    }

    /// A `SnapshotResume`: attaches its data stream to the transfer it names, tells the
    /// sender where to continue (`ResumeFrom`), then answers as the transfer's latest request
    /// stream. A transfer not held here (never, expired, ended) is answered `TRANSFER_UNKNOWN`.
    pub(super) async fn serve_resume(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        resume: crate::codec::SnapshotResume,
        rendezvous: Arc<Rendezvous>,
        served: Served,
    ) {
        let Some(transfer) = self.server.resumable.get(&self.peer, resume.resume_id) else {
            rendezvous.abandon(resume.transfer_id);
            tracing::debug!(peer = %self.peer, resume_id = resume.resume_id, "resume of an unknown snapshot");
            let why = format!("no resumable snapshot {} is held here", resume.resume_id);
            let answer = Some(Err(RemoteError::new(ErrorCode::TRANSFER_UNKNOWN, why)));
            self.record(served, ServeOutcome::Refused);
            return self.write_answer(&mut send, answer).await;
        };
        if transfer.declared() != resume.size {
            rendezvous.abandon(resume.transfer_id);
            self.record(served, ServeOutcome::Refused);
            let what = format!(
                "resume of snapshot {} declares {} bytes; it has {}",
                resume.resume_id,
                resume.size,
                transfer.declared()
            );
            return self.bad_input(&mut send, &mut recv, what).await;
        }
        let claim = self.resumable_claim(rendezvous.clone(), resume.transfer_id);
        let Some((offset, generation)) = transfer.attach(claim) else {
            rendezvous.abandon(resume.transfer_id);
            let why = format!(
                "resumable snapshot {} failed or was not resumed in time",
                resume.resume_id
            );
            let answer = Some(Err(RemoteError::new(ErrorCode::TRANSFER_UNKNOWN, why)));
            self.record(served, ServeOutcome::Refused);
            return self.write_answer(&mut send, answer).await;
        };
        tracing::debug!(peer = %self.peer, resume_id = resume.resume_id, offset, "snapshot resumed");
        if let Err(e) = write_frame(&mut send, &Frame::ResumeFrom { offset }, self.max()).await {
            tracing::debug!(peer = %self.peer, error = ?e, "resume answer not delivered");
            transfer.lost(generation);
            return;
        }
        let data = (rendezvous, resume.transfer_id);
        self.answer_resumable(&transfer, generation, send, data, served)
            .await;
    }

    /// Waits for the consumer's answer to a resumable transfer on the request stream of
    /// attachment `generation`, and writes it there; leaves it to a newer attachment if one
    /// takes over or this connection is lost. Once answered, the attachment's data stream
    /// (`data`: its rendezvous and stream id) is let go if it was never read.
    async fn answer_resumable(
        &self,
        transfer: &Transfer,
        generation: u64,
        mut send: SendStream,
        (rendezvous, data_stream): (Arc<Rendezvous>, u64),
        served: Served,
    ) {
        let _active = self.conn.active();
        match transfer.wait_answer(generation, &send).await {
            Waited::Answer(answer) => {
                let answer = Some(answer);
                let outcome = serve_outcome(answer.as_ref());
                if outcome == ServeOutcome::Ok {
                    self.conn.metrics.snapshot_received();
                }
                self.record(served, outcome);
                self.write_answer(&mut send, answer).await;
                rendezvous.abandon(data_stream);
            }
            Waited::Superseded => {
                let _ = send.reset(stream::STOPPED);
            }
            Waited::SenderGone => transfer.fail(
                Some(generation),
                io::ErrorKind::UnexpectedEof,
                "the sender gave up the snapshot",
            ),
            Waited::Lost => transfer.lost(generation),
        }
    }

    /// Finds the data stream `stream_id` of one attachment of a resumable transfer on this
    /// connection and checks its header, as [`snapshot_data`] does; a lost connection parks
    /// the transfer instead of failing it.
    fn resumable_claim(&self, rendezvous: Arc<Rendezvous>, stream_id: u64) -> resume::Claim {
        let conn = self.conn.conn.clone();
        let timeout = self.server.limits.rpc_timeout;
        let mut header = FrameReader::with_budget(self.max(), self.budget.clone());
        Box::pin(async move {
            let claim = tokio::select! {
                biased;
                claim = rendezvous.claim(stream_id, timeout) => claim,
                _ = conn.closed() => return Err(ClaimFailure::Lost),
            };
            let mut recv = claim.ok_or_else(|| {
                ClaimFailure::Failed(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("snapshot data stream {stream_id} did not arrive within {timeout:?}"),
                ))
            })?;
            match header.next(&mut recv).await {
                Ok(Some(Frame::SnapshotData { transfer_id })) if transfer_id == stream_id => {
                    Ok(recv)
                }
                Err(ReadFrameError::Read(quinn::ReadError::ConnectionLost(_))) => {
                    Err(ClaimFailure::Lost)
                }
                Err(ReadFrameError::Read(e)) => Err(ClaimFailure::Failed(data_read_error(e))),
                Ok(_) => {
                    let _ = recv.stop(stream::BAD_FRAME);
                    Err(ClaimFailure::Failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "snapshot data stream does not start with its SnapshotData header",
                    )))
                }
                Err(e) => {
                    let _ = recv.stop(stream::BAD_FRAME);
                    Err(ClaimFailure::Failed(io::Error::new(
                        io::ErrorKind::InvalidData,
                        e.to_string(),
                    )))
                }
            }
        })
    }
}
