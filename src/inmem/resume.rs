//! Resumable snapshots in memory: what the QUIC transport does across a lost connection
//! (`docs/PROTOCOL.md` §8.6), done across a cut link. Each attachment is a pipe; a cut drops
//! the pipe with whatever the consumer had not read yet, and a resume continues from the
//! exact count of bytes the reader yielded.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::time::Instant;

use super::link_writer::LinkWriter;
use crate::transport::GraceTimer;

enum Source {
    Reading(DuplexStream),
    /// The link was cut at this instant.
    Parked(Instant),
    Failed(io::ErrorKind, String),
}

struct State {
    accepted: u64,
    source: Source,
    waker: Option<Waker>,
}

/// One resumable snapshot, shared by its sender and the receiver's reader.
pub(super) struct Transfer {
    grace: Duration,
    state: Mutex<State>,
}

impl Transfer {
    /// A transfer whose first attachment is `pipe`.
    pub(super) fn new(pipe: DuplexStream, grace: Duration) -> Arc<Self> {
        Arc::new(Self {
            grace,
            state: Mutex::new(State {
                accepted: 0,
                source: Source::Reading(pipe),
                waker: None,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Each critical section leaves the state whole: a poisoned lock is still sound.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(state: &mut State, source: Source) {
        state.source = source;
        if let Some(waker) = state.waker.take() {
            waker.wake();
        }
    }

    fn not_resumed(&self) -> String {
        format!(
            "the link carrying the snapshot was cut and it was not resumed within {:?}",
            self.grace
        )
    }

    /// The link was cut: the bytes in the pipe are lost, the reader waits for a resume.
    pub(super) fn lost(&self) {
        let mut state = self.state();
        if matches!(state.source, Source::Reading(_)) {
            Self::set(&mut state, Source::Parked(Instant::now()));
        }
    }

    /// Attaches a new pipe: the offset the sender continues from, or `None` when the transfer
    /// failed or its grace period passed.
    pub(super) fn attach(&self, pipe: DuplexStream) -> Option<u64> {
        let mut state = self.state();
        if let Source::Parked(since) = state.source
            && since.elapsed() >= self.grace
        {
            Self::set(
                &mut state,
                Source::Failed(io::ErrorKind::TimedOut, self.not_resumed()),
            );
        }
        if matches!(state.source, Source::Failed(..)) {
            return None;
        }
        Self::set(&mut state, Source::Reading(pipe));
        Some(state.accepted)
    }
}

/// The consumer's view of a [`Transfer`]: the pipes' bytes in order, waiting while parked.
pub(super) struct Reader {
    transfer: Arc<Transfer>,
    grace: GraceTimer,
}

impl Reader {
    pub(super) fn new(transfer: Arc<Transfer>) -> Self {
        Self {
            transfer,
            grace: GraceTimer::default(),
        }
    }
}

impl AsyncRead for Reader {
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
                Source::Reading(pipe) => {
                    let before = buf.filled().len();
                    match Pin::new(pipe).poll_read(cx, buf) {
                        Poll::Pending => break,
                        Poll::Ready(Ok(())) => {
                            state.accepted += buf.filled().len().saturating_sub(before) as u64;
                            return Poll::Ready(Ok(()));
                        }
                        Poll::Ready(Err(e)) => {
                            let failed = Source::Failed(e.kind(), e.to_string());
                            Transfer::set(&mut state, failed);
                            return Poll::Ready(Err(e));
                        }
                    }
                }
                Source::Parked(since) => {
                    if !this.grace.poll_passed(cx, *since, transfer.grace) {
                        break;
                    }
                    let failed = Source::Failed(io::ErrorKind::TimedOut, transfer.not_resumed());
                    Transfer::set(&mut state, failed);
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

/// A pipe's writing end on a link that counts the snapshot offset of what it has taken.
pub(super) struct Counted {
    inner: LinkWriter<DuplexStream>,
    /// The snapshot offset of the next byte written.
    pub(super) position: u64,
}

impl Counted {
    pub(super) fn new(inner: LinkWriter<DuplexStream>, position: u64) -> Self {
        Self { inner, position }
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.position += n as u64;
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
