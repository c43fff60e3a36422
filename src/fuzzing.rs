//! The bridge to the fuzz targets (`fuzz/`) and the round-trip tests (cargo feature `fuzzing`).
//!
//! Re-exports the real frame type, encoder and assembler ([`Frame`], [`encode`],
//! [`FrameAssembler`]), and drives the assembler over chunks as the QUIC transport's reader
//! drives it over a stream: a stream of frames ([`read_frames`]), a pipeline stream
//! ([`read_pipeline`]), the header of a snapshot data stream ([`read_snapshot_header`]). Also
//! the certificate identity parser ([`spiffe_id_from_der`]). Nothing here decodes by itself.
//!
//! Not a stable API: it exists for testing and may change with any release.
#![doc(hidden)]

use bytes::Bytes;
use rustls::pki_types::CertificateDer;

use crate::codec::CodecError;
pub use crate::codec::{Frame, FrameAssembler, Need, SnapshotResume, encode};
use crate::command::{AppendEntriesRequest, Command};
use crate::tls::{SpiffeId, TlsError};

/// Why a stream of frames stopped before its end.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamError {
    /// The bytes are not a valid frame.
    Codec(CodecError),
    /// The stream ended inside a frame.
    Truncated,
    /// The stream ended before its first frame.
    Empty,
    /// A frame the stream does not allow there (its kind's name).
    Unexpected(&'static str),
}

/// Reads frames from a sequence of chunks as the QUIC transport's frame reader
/// (`quic::io::FrameReader`, bound to a QUIC stream) reads them from a stream: with the same
/// frame assembler, which asks for the header, then the body, never more than the frame under
/// way needs. A chunk longer than that is taken in the pieces it asks for, as quinn hands out
/// a longer chunk to reads with a smaller limit.
struct ChunkReader<'a> {
    frames: FrameAssembler,
    /// The part of the current chunk not yet taken.
    pending: &'a [u8],
}

impl<'a> ChunkReader<'a> {
    fn new(max: usize) -> Self {
        Self {
            frames: FrameAssembler::new(max),
            pending: &[],
        }
    }

    /// The next frame; `None` when the chunks ended cleanly between frames.
    fn next(
        &mut self,
        chunks: &mut impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<Frame>, StreamError> {
        loop {
            if self.pending.is_empty() {
                match chunks.next() {
                    Some(chunk) => self.pending = chunk,
                    None if self.frames.is_idle() => return Ok(None),
                    None => return Err(StreamError::Truncated),
                }
                continue;
            }
            let want = match self.frames.need() {
                Need::Header(want) => want,
                Need::Body { missing, .. } => missing,
            };
            let (piece, rest) = self.pending.split_at(want.min(self.pending.len()));
            self.pending = rest;
            let frame = self
                .frames
                .push(Bytes::copy_from_slice(piece))
                .map_err(StreamError::Codec)?;
            if frame.is_some() {
                return Ok(frame);
            }
        }
    }
}

/// Decodes every frame of a stream that arrives as `chunks`, until the stream ends or a frame
/// is bad. Returns the frames decoded and, if the stream did not end cleanly, why.
pub fn read_frames<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> (Vec<Frame>, Option<StreamError>) {
    let mut chunks = chunks.into_iter();
    let mut reader = ChunkReader::new(max);
    let mut frames = Vec::new();
    loop {
        match reader.next(&mut chunks) {
            Ok(Some(frame)) => frames.push(frame),
            Ok(None) => return (frames, None),
            Err(e) => return (frames, Some(e)),
        }
    }
}

/// Reads a pipeline stream that arrives as `chunks` by the receiver's rules: a `PipelineOpen`
/// frame, then `AppendEntries` frames until the stream ends. Returns the requests read before
/// the stream ended (`None`) or broke the rules (`Some(why)`).
pub fn read_pipeline<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    max: usize,
) -> (Vec<AppendEntriesRequest>, Option<StreamError>) {
    let mut chunks = chunks.into_iter();
    let mut reader = ChunkReader::new(max);
    match reader.next(&mut chunks) {
        Ok(Some(Frame::PipelineOpen)) => {}
        Ok(Some(other)) => {
            return (
                Vec::new(),
                Some(StreamError::Unexpected(other.kind().name())),
            );
        }
        Ok(None) => return (Vec::new(), Some(StreamError::Empty)),
        Err(e) => return (Vec::new(), Some(e)),
    }
    let mut requests = Vec::new();
    loop {
        match reader.next(&mut chunks) {
            Ok(Some(Frame::Request(Command::AppendEntries(request)))) => requests.push(request),
            Ok(Some(other)) => {
                return (requests, Some(StreamError::Unexpected(other.kind().name())));
            }
            Ok(None) => return (requests, None),
            Err(e) => return (requests, Some(e)),
        }
    }
}

/// The header of a snapshot data stream, and the data that arrived with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// The transfer the stream says it carries (the receiver also checks it against the
    /// stream's id).
    pub transfer_id: u64,
    /// Snapshot data read past the header (the rest comes from the remaining chunks).
    pub leftover: Bytes,
}

/// Reads the `SnapshotData` header off a snapshot data stream arriving as `chunks`, consuming
/// only the chunks needed; the caller reads the raw data that follows from the rest of
/// `chunks`, after [`SnapshotHeader::leftover`].
pub fn read_snapshot_header<'a>(
    chunks: &mut impl Iterator<Item = &'a [u8]>,
    max: usize,
) -> Result<SnapshotHeader, StreamError> {
    let mut reader = ChunkReader::new(max);
    match reader.next(chunks)? {
        Some(Frame::SnapshotData { transfer_id }) => Ok(SnapshotHeader {
            transfer_id,
            leftover: Bytes::copy_from_slice(reader.pending),
        }),
        Some(other) => Err(StreamError::Unexpected(other.kind().name())),
        None => Err(StreamError::Empty),
    }
}

/// The certificate identity parser, [`SpiffeId::from_certificate`], on DER bytes.
pub fn spiffe_id_from_der(der: &[u8]) -> Result<SpiffeId, TlsError> {
    SpiffeId::from_certificate(&CertificateDer::from(der))
}
