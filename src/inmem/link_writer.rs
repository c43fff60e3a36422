//! The writing end of a snapshot's pipe on a link: it takes no byte once the link is cut or
//! the session with the peer ends. The sender's task only notices a cut between polls, and a
//! single poll of the copy loop can go on writing for as long as the reader keeps draining
//! the pipe on another thread; without this check, a snapshot could cross a cut link whole.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

/// `inner`, failing with `BrokenPipe` once `cut` or `session` is cancelled.
pub(super) struct LinkWriter<W> {
    inner: W,
    cut: CancellationToken,
    session: CancellationToken,
}

impl<W> LinkWriter<W> {
    pub(super) fn new(inner: W, cut: &CancellationToken, session: &CancellationToken) -> Self {
        Self {
            inner,
            cut: cut.clone(),
            session: session.clone(),
        }
    }

    fn check(&self) -> io::Result<()> {
        if self.cut.is_cancelled() || self.session.is_cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the link carrying the snapshot was cut",
            ));
        }
        Ok(())
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for LinkWriter<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// A cut link does not end the stream cleanly: the reader must not take a cut for the end.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn writes_stop_at_the_cut() {
        let (writer, mut reader) = tokio::io::duplex(1024);
        let (cut, session) = (CancellationToken::new(), CancellationToken::new());
        let mut writer = LinkWriter::new(writer, &cut, &session);
        writer.write_all(b"before").await.unwrap();
        cut.cancel();
        let err = writer.write_all(b"after").await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(writer.shutdown().await.is_err(), "a cut is not a clean end");
        drop(writer);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"before");
    }
}
