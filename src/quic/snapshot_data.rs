//! The receiving end of a snapshot's data stream, as the consumer's `AsyncRead`.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use super::codes::stream;

use futures_util::future::BoxFuture;
use quinn::{ReadError, RecvStream};
use tokio::io::{AsyncRead, ReadBuf};

/// Snapshot data: first the stream is found (claimed from the rendezvous, its header checked)
/// by `claim`, which runs only when the consumer first reads; then reads go straight to the
/// QUIC stream, which copies as many received chunks as fit into the consumer's buffer per
/// call (no intermediate buffer, no per-packet step).
pub(super) struct SnapshotData {
    state: State,
    /// Bytes read, in the peer's metrics.
    bytes: metrics::Counter,
}

enum State {
    Claiming(BoxFuture<'static, io::Result<RecvStream>>),
    Reading(RecvStream),
    /// The claim failed; its error was returned once, later reads repeat its kind.
    Failed(io::ErrorKind),
}

impl SnapshotData {
    pub(super) fn new(
        bytes: metrics::Counter,
        claim: BoxFuture<'static, io::Result<RecvStream>>,
    ) -> Self {
        Self {
            state: State::Claiming(claim),
            bytes,
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
                State::Reading(recv) => {
                    let before = buf.filled().len();
                    let polled = recv.poll_read_buf(cx, buf).map_err(data_read_error);
                    let read = buf.filled().len().saturating_sub(before);
                    if read > 0 {
                        self.bytes.increment(read as u64);
                    }
                    return polled;
                }
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

/// The consumer's error for a failed read of a snapshot's data stream. A stream the sender
/// reset with `SNAPSHOT_ABORTED` (its source failed or ended before the declared size) is
/// [`io::ErrorKind::UnexpectedEof`], as the in-memory transport's reader reports a sender that
/// stopped short; anything else keeps quinn's mapping.
pub(super) fn data_read_error(error: ReadError) -> io::Error {
    match error {
        ReadError::Reset(code) if code == stream::SNAPSHOT_ABORTED => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the sender aborted the snapshot: its source failed or ended before the declared size",
        ),
        other => io::Error::from(other),
    }
}
