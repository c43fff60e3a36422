//! The receiving end of a snapshot's data stream, as the consumer's `AsyncRead`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::future::BoxFuture;
use quinn::RecvStream;
use tokio::io::{AsyncRead, ReadBuf};

/// Snapshot data: first the stream is found (claimed from the rendezvous, its header checked)
/// by `claim`, which runs only when the consumer first reads; then reads go straight to the
/// QUIC stream, which copies as many received chunks as fit into the consumer's buffer per
/// call (no intermediate buffer, no per-packet step).
pub(super) struct SnapshotData {
    state: State,
}

enum State {
    Claiming(BoxFuture<'static, io::Result<RecvStream>>),
    Reading(RecvStream),
    /// The claim failed; its error was returned once, later reads repeat its kind.
    Failed(io::ErrorKind),
}

impl SnapshotData {
    pub(super) fn new(claim: BoxFuture<'static, io::Result<RecvStream>>) -> Self {
        Self {
            state: State::Claiming(claim),
        }
    }
}

impl AsyncRead for SnapshotData {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            match &mut self.state {
                State::Claiming(claim) => match ready!(claim.as_mut().poll(cx)) {
                    Ok(recv) => self.state = State::Reading(recv),
                    Err(e) => {
                        self.state = State::Failed(e.kind());
                        return Poll::Ready(Err(e));
                    }
                },
                State::Reading(recv) => return Pin::new(recv).poll_read(cx, buf),
                State::Failed(kind) => {
                    return Poll::Ready(Err(io::Error::new(
                        *kind,
                        "the snapshot data stream failed earlier",
                    )));
                }
            }
        }
    }
}
