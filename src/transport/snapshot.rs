//! Snapshot data on the receiving side, and the size-scaled snapshot timeout.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

/// The default number of snapshot bytes allowed per base timeout (as in hashicorp/raft).
pub const SNAPSHOT_TIMEOUT_UNIT: u64 = 256 * 1024;

/// The deadline for an InstallSnapshot of `size` bytes: `base × size / bytes_per_base`, never
/// less than `base` (hashicorp/raft's rule, with `bytes_per_base` = [`SNAPSHOT_TIMEOUT_UNIT`]).
pub fn snapshot_timeout(base: Duration, size: u64, bytes_per_base: u64) -> Duration {
    let units = size / bytes_per_base.max(1);
    let factor = u32::try_from(units).unwrap_or(u32::MAX).max(1);
    base.saturating_mul(factor)
}

/// The data of an incoming InstallSnapshot: yields exactly the declared number of bytes, then
/// end of stream.
///
/// A stream that ends early is an [`io::ErrorKind::UnexpectedEof`] error, one that goes on past
/// the declared size an [`io::ErrorKind::InvalidData`] error: a short snapshot is never taken as
/// complete. Dropping the reader before the end tells the sender to stop.
pub struct SnapshotReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    declared: u64,
    remaining: u64,
}

impl SnapshotReader {
    /// Wraps the raw data stream of a snapshot of `declared` bytes.
    pub fn new(inner: impl AsyncRead + Send + 'static, declared: u64) -> Self {
        Self {
            inner: Box::pin(inner),
            declared,
            remaining: declared,
        }
    }

    /// The declared size, `InstallSnapshotRequest::size`.
    pub fn declared_size(&self) -> u64 {
        self.declared
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl AsyncRead for SnapshotReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.remaining == 0 {
            // Everything declared has arrived: the stream must now end, not carry more.
            let mut probe = [0u8; 1];
            let mut probe = ReadBuf::new(&mut probe);
            return match this.inner.as_mut().poll_read(cx, &mut probe) {
                Poll::Ready(Ok(())) if probe.filled().is_empty() => Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "snapshot stream is longer than its declared {} bytes",
                        this.declared
                    ),
                ))),
                Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            };
        }
        let limit = usize::try_from(this.remaining)
            .unwrap_or(usize::MAX)
            .min(buf.remaining());
        let before = buf.filled().len();
        let poll = if limit == buf.remaining() {
            this.inner.as_mut().poll_read(cx, buf)
        } else {
            // Only the last read of a snapshot gets here: hand the inner reader a view of
            // exactly `limit` bytes so it cannot read past the declared end.
            let view = buf.initialize_unfilled_to(limit);
            let mut limited = ReadBuf::new(view);
            let poll = this.inner.as_mut().poll_read(cx, &mut limited);
            let n = limited.filled().len();
            buf.advance(n);
            poll
        };
        match poll {
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len() - before;
                if n == 0 && limit > 0 {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!(
                            "snapshot stream ended after {} of {} bytes",
                            this.declared - this.remaining,
                            this.declared
                        ),
                    )));
                }
                this.remaining -= n as u64;
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl fmt::Debug for SnapshotReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SnapshotReader")
            .field("declared", &self.declared)
            .field("remaining", &self.remaining)
            .finish_non_exhaustive()
    }
}

/// Why [`copy_exact`] stopped short.
#[derive(Debug)]
pub(crate) enum CopyError {
    /// The source failed or ended before `size` bytes; `copied` bytes went out.
    Source {
        copied: u64,
        error: Option<io::Error>,
    },
    /// The destination refused more data (for a snapshot: the receiver stopped reading).
    Sink(io::Error),
}

impl CopyError {
    /// What one read of the source gave, `copied` bytes into the copy: the bytes read, or
    /// why the copy stops (the source ended before its declared size, or failed).
    pub(crate) fn check_read(copied: u64, read: io::Result<usize>) -> Result<usize, Self> {
        match read {
            Ok(0) => Err(Self::Source {
                copied,
                error: None,
            }),
            Ok(n) => Ok(n),
            Err(e) => Err(Self::Source {
                copied,
                error: Some(e),
            }),
        }
    }

    /// The error for the caller of `install_snapshot` when the source is at fault.
    pub(crate) fn into_source_error(self, declared: u64) -> Option<crate::Error> {
        match self {
            Self::Source { error: Some(e), .. } => Some(crate::Error::Io(e)),
            Self::Source {
                copied,
                error: None,
            } => Some(crate::Error::SnapshotSizeMismatch {
                declared,
                actual: copied,
            }),
            Self::Sink(e) => {
                tracing::debug!(error = %e, "snapshot receiver stopped reading; awaiting its answer");
                None
            }
        }
    }
}

/// Copies exactly `size` bytes from `source` to `sink` through a bounded buffer, so a snapshot
/// of any size uses the same memory. Bytes of `source` past `size` are left unread.
pub(crate) async fn copy_exact<R, W>(
    source: &mut R,
    size: u64,
    sink: &mut W,
) -> Result<(), CopyError>
where
    R: AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const CHUNK: usize = 64 * 1024;
    let mut buf = vec![0u8; CHUNK.min(usize::try_from(size).unwrap_or(CHUNK)).max(1)];
    let mut copied = 0u64;
    while copied < size {
        let want = usize::try_from(size - copied)
            .unwrap_or(usize::MAX)
            .min(buf.len());
        let n = CopyError::check_read(copied, source.read(&mut buf[..want]).await)?;
        sink.write_all(&buf[..n]).await.map_err(CopyError::Sink)?;
        copied += n as u64;
    }
    sink.flush().await.map_err(CopyError::Sink)?;
    Ok(())
}

/// Streams a snapshot's data while waiting for the receiver's answer, which may come before
/// the data is all sent (the receiver may stop reading and answer at once).
///
/// A source at fault ends the call with its error; a receiver that stopped reading does not:
/// its answer says why.
pub(crate) async fn stream_until_answer<A>(
    streaming: impl Future<Output = Result<(), CopyError>>,
    answer: impl Future<Output = A>,
    declared: u64,
) -> Result<A, crate::Error> {
    tokio::pin!(streaming, answer);
    let mut streaming_done = false;
    loop {
        tokio::select! {
            copied = &mut streaming, if !streaming_done => {
                streaming_done = true;
                if let Err(e) = copied
                    && let Some(e) = e.into_source_error(declared)
                {
                    return Err(e);
                }
            }
            answer = &mut answer => return Ok(answer),
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    async fn read_all(data: &'static [u8], declared: u64) -> io::Result<Vec<u8>> {
        let mut reader = SnapshotReader::new(data, declared);
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn exact_stream_reads_whole() {
        assert_eq!(read_all(b"hello", 5).await.unwrap(), b"hello");
        assert_eq!(read_all(b"", 0).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn short_stream_is_unexpected_eof() {
        let err = read_all(b"hel", 5).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn long_stream_is_invalid_data() {
        let err = read_all(b"hello!", 5).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn timeout_scales_with_size_with_a_floor() {
        let base = Duration::from_secs(1);
        assert_eq!(snapshot_timeout(base, 0, SNAPSHOT_TIMEOUT_UNIT), base);
        assert_eq!(snapshot_timeout(base, 100, SNAPSHOT_TIMEOUT_UNIT), base);
        assert_eq!(
            snapshot_timeout(base, 10 * SNAPSHOT_TIMEOUT_UNIT, SNAPSHOT_TIMEOUT_UNIT),
            base * 10
        );
        assert_eq!(
            snapshot_timeout(base, u64::MAX, 1),
            base.saturating_mul(u32::MAX)
        );
    }
}
