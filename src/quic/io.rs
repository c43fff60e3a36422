//! Frames on QUIC streams: reading with a size limit, writing without extra copies.

use bytes::{Bytes, BytesMut};
use quinn::{ReadError, RecvStream, SendStream, WriteError};

use crate::codec::{self, CodecError, Frame};

/// Why no frame could be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadFrameError {
    /// The bytes are not a valid frame.
    #[error(transparent)]
    Codec(CodecError),
    /// The stream or connection failed.
    #[error(transparent)]
    Read(ReadError),
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
}

/// Reads frames from one stream, buffering at most one frame of `max` bytes.
pub(crate) struct FrameReader {
    buf: BytesMut,
    max: usize,
}

impl FrameReader {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max,
        }
    }

    /// The next frame; `None` when the stream ended cleanly between frames.
    ///
    /// Cancel-safe: bytes already read stay in the buffer for the next call.
    pub(crate) async fn next(
        &mut self,
        recv: &mut RecvStream,
    ) -> Result<Option<Frame>, ReadFrameError> {
        loop {
            if let Some(frame) =
                codec::decode(&mut self.buf, self.max).map_err(ReadFrameError::Codec)?
            {
                return Ok(Some(frame));
            }
            // A chunk may run past this frame; the rest stays buffered for the next call (or,
            // on a snapshot data stream, is handed on by `into_leftover`).
            match recv
                .read_chunk(64 * 1024, true)
                .await
                .map_err(ReadFrameError::Read)?
            {
                Some(chunk) => self.buf.extend_from_slice(&chunk.bytes),
                None if self.buf.is_empty() => return Ok(None),
                None => return Err(ReadFrameError::Truncated),
            }
        }
    }

    /// Bytes read past the last frame (for a snapshot data stream: the first data bytes).
    pub(crate) fn into_leftover(self) -> Bytes {
        self.buf.freeze()
    }
}

/// Encodes `frame` and writes it as one chunk.
pub(crate) async fn write_frame(
    send: &mut SendStream,
    frame: &Frame,
    max: usize,
) -> Result<(), WriteFrameError> {
    // Room for a typical control message at once, so encoding does not regrow the buffer
    // field by field; large appends grow it by doubling.
    let mut buf = BytesMut::with_capacity(256);
    codec::encode(frame, &mut buf, max).map_err(WriteFrameError::Codec)?;
    send.write_chunk(buf.freeze())
        .await
        .map_err(WriteFrameError::Write)
}

/// Why a frame could not be written.
#[derive(Debug)]
pub(crate) enum WriteFrameError {
    /// The frame could not be encoded (over the size limit).
    Codec(CodecError),
    /// The stream or connection failed.
    Write(WriteError),
}

/// A send stream that is reset with `code` when dropped before [`finish`](Self::finish), so
/// the reader sees an error instead of a clean (and short) end.
pub(crate) struct ResetOnDrop {
    stream: SendStream,
    code: quinn::VarInt,
    finished: bool,
}

impl ResetOnDrop {
    pub(crate) fn new(stream: SendStream, code: quinn::VarInt) -> Self {
        Self {
            stream,
            code,
            finished: false,
        }
    }

    /// Ends the stream cleanly: everything was written.
    pub(crate) fn finish(&mut self) {
        self.finished = true;
        // Already reset by the peer's STOP_SENDING is the only failure; nothing to do then.
        let _ = self.stream.finish();
    }
}

impl std::ops::Deref for ResetOnDrop {
    type Target = SendStream;

    fn deref(&self) -> &SendStream {
        &self.stream
    }
}

impl std::ops::DerefMut for ResetOnDrop {
    fn deref_mut(&mut self) -> &mut SendStream {
        &mut self.stream
    }
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.stream.reset(self.code);
        }
    }
}

/// Copies exactly `size` bytes from `source` onto a QUIC stream, a chunk at a time. Each chunk
/// is read into its own buffer and handed to quinn as `Bytes`, so quinn keeps it without a
/// second copy; memory stays bounded by quinn's send window.
pub(crate) async fn copy_exact_to_stream<R>(
    source: &mut R,
    size: u64,
    stream: &mut SendStream,
) -> Result<(), crate::transport::CopyError>
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
{
    use crate::transport::CopyError;
    use tokio::io::AsyncReadExt;

    const CHUNK: usize = 64 * 1024;
    let mut copied = 0u64;
    while copied < size {
        let want = usize::try_from(size - copied)
            .unwrap_or(usize::MAX)
            .min(CHUNK);
        let mut chunk = BytesMut::with_capacity(want);
        // `take` stops the read at `want` bytes even if the source has more.
        let n = match (&mut *source).take(want as u64).read_buf(&mut chunk).await {
            Ok(0) => {
                return Err(CopyError::Source {
                    copied,
                    error: None,
                });
            }
            Ok(n) => n,
            Err(e) => {
                return Err(CopyError::Source {
                    copied,
                    error: Some(e),
                });
            }
        };
        stream
            .write_chunk(chunk.freeze())
            .await
            .map_err(|e| CopyError::Sink(std::io::Error::from(e)))?;
        copied += n as u64;
    }
    Ok(())
}
