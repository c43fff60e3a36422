//! Hooks for the fuzz targets (`fuzz/`) and the round-trip tests (cargo feature `fuzzing`).
//!
//! Thin public wrappers over the decoders that read bytes a peer chose: the frame codec
//! ([`decode_frame`], [`encode_frame`]), a pipeline stream ([`read_pipeline`]), the header of
//! a snapshot data stream ([`read_snapshot_header`]) and the certificate identity parser
//! ([`spiffe_id_from_der`]). They call the crate's own code; nothing here decodes by itself.
//!
//! Not a stable API: it exists for testing and may change with any release.
#![doc(hidden)]

use bytes::{Bytes, BytesMut};
use rustls::pki_types::CertificateDer;

use crate::codec::{self, CodecError, Frame};
use crate::command::{
    AppendEntriesRequest, InstallSnapshotRequest, RequestPreVoteRequest, RequestVoteRequest,
    Response, TimeoutNowRequest,
};
use crate::error::RemoteError;
use crate::tls::{SpiffeId, TlsError};

/// A frame as the codec sees it: the crate-private frame type, one variant for one variant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireFrame {
    /// Kind `0x01`.
    AppendEntries(AppendEntriesRequest),
    /// Kind `0x02`.
    RequestVote(RequestVoteRequest),
    /// Kind `0x03`.
    RequestPreVote(RequestPreVoteRequest),
    /// Kind `0x05`.
    TimeoutNow(TimeoutNowRequest),
    /// Kind `0x04`: the request half of an InstallSnapshot.
    InstallSnapshot {
        /// Names the data stream that carries the snapshot.
        transfer_id: u64,
        /// The request.
        request: InstallSnapshotRequest,
    },
    /// Kind `0x06`: opens a pipeline stream.
    PipelineOpen,
    /// Kind `0x07`: opens a snapshot data stream.
    SnapshotData {
        /// The InstallSnapshot request this data belongs to.
        transfer_id: u64,
    },
    /// Kind `0x80`.
    Response(Response),
    /// Kind `0x81`.
    Error(RemoteError),
}

impl WireFrame {
    /// The frame kind's name, as the protocol document spells it.
    pub fn kind_name(&self) -> &'static str {
        Frame::from(self.clone()).kind().name()
    }
}

impl From<Frame> for WireFrame {
    fn from(frame: Frame) -> Self {
        match frame {
            Frame::AppendEntries(m) => Self::AppendEntries(m),
            Frame::RequestVote(m) => Self::RequestVote(m),
            Frame::RequestPreVote(m) => Self::RequestPreVote(m),
            Frame::TimeoutNow(m) => Self::TimeoutNow(m),
            Frame::InstallSnapshot {
                transfer_id,
                request,
            } => Self::InstallSnapshot {
                transfer_id,
                request,
            },
            Frame::PipelineOpen => Self::PipelineOpen,
            Frame::SnapshotData { transfer_id } => Self::SnapshotData { transfer_id },
            Frame::Response(m) => Self::Response(m),
            Frame::Error(m) => Self::Error(m),
        }
    }
}

impl From<WireFrame> for Frame {
    fn from(frame: WireFrame) -> Self {
        match frame {
            WireFrame::AppendEntries(m) => Self::AppendEntries(m),
            WireFrame::RequestVote(m) => Self::RequestVote(m),
            WireFrame::RequestPreVote(m) => Self::RequestPreVote(m),
            WireFrame::TimeoutNow(m) => Self::TimeoutNow(m),
            WireFrame::InstallSnapshot {
                transfer_id,
                request,
            } => Self::InstallSnapshot {
                transfer_id,
                request,
            },
            WireFrame::PipelineOpen => Self::PipelineOpen,
            WireFrame::SnapshotData { transfer_id } => Self::SnapshotData { transfer_id },
            WireFrame::Response(m) => Self::Response(m),
            WireFrame::Error(m) => Self::Error(m),
        }
    }
}

/// The codec's decoder: takes one whole frame off the front of `src`.
///
/// `Ok(Some(frame))` for a frame (its bytes are consumed), `Ok(None)` when `src` holds only
/// part of one (nothing consumed), `Err` for bytes that can never become a frame.
pub fn decode_frame(src: &mut BytesMut, max: usize) -> Result<Option<WireFrame>, CodecError> {
    codec::decode(src, max).map(|frame| frame.map(WireFrame::from))
}

/// The codec's encoder: appends `frame` to `dst`, or fails leaving `dst` as it was.
pub fn encode_frame(frame: &WireFrame, dst: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    codec::encode(&Frame::from(frame.clone()), dst, max)
}

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
    frames: codec::FrameAssembler,
    /// The part of the current chunk not yet taken.
    pending: &'a [u8],
}

impl<'a> ChunkReader<'a> {
    fn new(max: usize) -> Self {
        Self {
            frames: codec::FrameAssembler::new(max),
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
                codec::Need::Header(want) => want,
                codec::Need::Body { missing, .. } => missing,
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
) -> (Vec<WireFrame>, Option<StreamError>) {
    let mut chunks = chunks.into_iter();
    let mut reader = ChunkReader::new(max);
    let mut frames = Vec::new();
    loop {
        match reader.next(&mut chunks) {
            Ok(Some(frame)) => frames.push(frame.into()),
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
            Ok(Some(Frame::AppendEntries(request))) => requests.push(request),
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
