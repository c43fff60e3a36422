//! Frame layout, kinds, and the encode/decode functions.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::CodecError;
use crate::command::{
    AppendEntriesRequest, Command, InstallSnapshotRequest, RequestPreVoteRequest,
    RequestVoteRequest, Response, TimeoutNowRequest,
};
use crate::error::RemoteError;

/// Bytes before the body: the kind and the length.
pub(crate) const HEADER_LEN: usize = 5;

/// The kind byte of a frame. Values are fixed by the protocol (`docs/PROTOCOL.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameKind {
    AppendEntries = 0x01,
    RequestVote = 0x02,
    RequestPreVote = 0x03,
    InstallSnapshot = 0x04,
    TimeoutNow = 0x05,
    PipelineOpen = 0x06,
    SnapshotData = 0x07,
    Response = 0x80,
    Error = 0x81,
}

impl FrameKind {
    fn from_byte(byte: u8) -> Result<Self, CodecError> {
        Ok(match byte {
            0x01 => Self::AppendEntries,
            0x02 => Self::RequestVote,
            0x03 => Self::RequestPreVote,
            0x04 => Self::InstallSnapshot,
            0x05 => Self::TimeoutNow,
            0x06 => Self::PipelineOpen,
            0x07 => Self::SnapshotData,
            0x80 => Self::Response,
            0x81 => Self::Error,
            other => return Err(CodecError::UnknownKind(other)),
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::AppendEntries => "AppendEntries",
            Self::RequestVote => "RequestVote",
            Self::RequestPreVote => "RequestPreVote",
            Self::InstallSnapshot => "InstallSnapshot",
            Self::TimeoutNow => "TimeoutNow",
            Self::PipelineOpen => "PipelineOpen",
            Self::SnapshotData => "SnapshotData",
            Self::Response => "Response",
            Self::Error => "Error",
        }
    }
}

/// Every message that travels on a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    AppendEntries(AppendEntriesRequest),
    RequestVote(RequestVoteRequest),
    RequestPreVote(RequestPreVoteRequest),
    TimeoutNow(TimeoutNowRequest),
    /// The request half of an InstallSnapshot; its data arrives on the unidirectional stream
    /// that opens with a `SnapshotData` frame of the same `transfer_id`.
    InstallSnapshot {
        transfer_id: u64,
        request: InstallSnapshotRequest,
    },
    /// First frame of a pipeline stream; `AppendEntries` frames follow.
    PipelineOpen,
    /// First frame of a snapshot data stream; raw data follows until the stream ends.
    SnapshotData {
        transfer_id: u64,
    },
    Response(Response),
    Error(RemoteError),
}

#[derive(Serialize, Deserialize)]
struct SnapshotOffer<R> {
    transfer_id: u64,
    request: R,
}

impl Frame {
    pub(crate) fn kind(&self) -> FrameKind {
        match self {
            Self::AppendEntries(_) => FrameKind::AppendEntries,
            Self::RequestVote(_) => FrameKind::RequestVote,
            Self::RequestPreVote(_) => FrameKind::RequestPreVote,
            Self::TimeoutNow(_) => FrameKind::TimeoutNow,
            Self::InstallSnapshot { .. } => FrameKind::InstallSnapshot,
            Self::PipelineOpen => FrameKind::PipelineOpen,
            Self::SnapshotData { .. } => FrameKind::SnapshotData,
            Self::Response(_) => FrameKind::Response,
            Self::Error(_) => FrameKind::Error,
        }
    }
}

/// A postcard output that appends to a `BytesMut` a slice at a time.
struct BytesMutFlavor<'a>(&'a mut BytesMut);

impl postcard::ser_flavors::Flavor for BytesMutFlavor<'_> {
    type Output = ();

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.put_u8(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

fn encode_body<T: Serialize + ?Sized>(value: &T, dst: &mut BytesMut) -> Result<(), CodecError> {
    postcard::serialize_with_flavor(value, BytesMutFlavor(dst))
        .map_err(|e| CodecError::Encode(e.to_string()))
}

/// A postcard output that only counts bytes.
#[derive(Default)]
struct CountingFlavor(usize);

impl postcard::ser_flavors::Flavor for CountingFlavor {
    type Output = usize;

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0 += data.len();
        Ok(())
    }

    fn try_push(&mut self, _data: u8) -> postcard::Result<()> {
        self.0 += 1;
        Ok(())
    }

    fn finalize(self) -> postcard::Result<usize> {
        Ok(self.0)
    }
}

fn body_len<T: Serialize + ?Sized>(value: &T) -> postcard::Result<usize> {
    postcard::serialize_with_flavor(value, CountingFlavor::default())
}

/// The length of the body `command` has as a request frame (for an InstallSnapshot, with a
/// transfer id of 0), computed without encoding it; the same figure `encode` checks against
/// its `max`.
pub(crate) fn request_body_len(command: &Command) -> Result<usize, CodecError> {
    let size = match command {
        Command::AppendEntries(m) => body_len(m),
        Command::RequestVote(m) => body_len(m),
        Command::RequestPreVote(m) => body_len(m),
        Command::TimeoutNow(m) => body_len(m),
        Command::InstallSnapshot(request) => body_len(&SnapshotOffer {
            transfer_id: 0,
            request,
        }),
    };
    size.map_err(|e| CodecError::Encode(e.to_string()))
}

/// Appends `frame` to `dst`. Fails, leaving `dst` as it was, if the body would exceed `max`
/// bytes (the peer would refuse it).
pub(crate) fn encode(frame: &Frame, dst: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    match frame {
        Frame::AppendEntries(m) => encode_message(FrameKind::AppendEntries, m, dst, max),
        Frame::RequestVote(m) => encode_message(FrameKind::RequestVote, m, dst, max),
        Frame::RequestPreVote(m) => encode_message(FrameKind::RequestPreVote, m, dst, max),
        Frame::TimeoutNow(m) => encode_message(FrameKind::TimeoutNow, m, dst, max),
        Frame::InstallSnapshot {
            transfer_id,
            request,
        } => {
            let offer = SnapshotOffer {
                transfer_id: *transfer_id,
                request,
            };
            encode_message(FrameKind::InstallSnapshot, &offer, dst, max)
        }
        Frame::PipelineOpen => encode_message(FrameKind::PipelineOpen, &(), dst, max),
        Frame::SnapshotData { transfer_id } => {
            encode_message(FrameKind::SnapshotData, transfer_id, dst, max)
        }
        Frame::Response(m) => encode_message(FrameKind::Response, m, dst, max),
        Frame::Error(m) => encode_message(FrameKind::Error, m, dst, max),
    }
}

/// Appends a frame of `kind` whose body is `body`, encoded from a reference (no copy of the
/// message is needed to send it). `body` must be the type `kind` names.
pub(crate) fn encode_message<T: Serialize + ?Sized>(
    kind: FrameKind,
    body: &T,
    dst: &mut BytesMut,
    max: usize,
) -> Result<(), CodecError> {
    let start = dst.len();
    dst.put_u8(kind as u8);
    dst.put_u32(0);
    let encoded = encode_body(body, dst);
    let len = dst.len() - start - HEADER_LEN;
    let result = encoded.and_then(|()| match u32::try_from(len) {
        Ok(len32) if len <= max => {
            dst[start + 1..start + HEADER_LEN].copy_from_slice(&len32.to_be_bytes());
            Ok(())
        }
        _ => Err(CodecError::Oversize {
            len: len as u64,
            max,
        }),
    });
    if result.is_err() {
        dst.truncate(start);
    }
    result
}

fn decode_body<'a, T: Deserialize<'a>>(kind: FrameKind, body: &'a [u8]) -> Result<T, CodecError> {
    let malformed = |reason: String| CodecError::Malformed {
        kind: kind.name(),
        reason,
    };
    let (value, rest) = postcard::take_from_bytes(body).map_err(|e| {
        malformed(match e {
            // postcard keeps no text of the types' own refusals; these are the ones.
            postcard::Error::SerdeDeCustom => format!(
                "a value out of range (an unknown variant, or a header id over {} bytes)",
                crate::command::MAX_HEADER_ID_LEN
            ),
            e => e.to_string(),
        })
    })?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes left over", rest.len())));
    }
    Ok(value)
}

/// Assembles the frames of one stream from pieces of exactly the sizes it asks for
/// ([`need`](Self::need)), so nothing past the frame under way is ever taken off the stream:
/// first the 5-byte header, checked as soon as it is whole (kind, length within `max`), then
/// the body. Pure: the caller does the reading (`quic::io::FrameReader` from a QUIC stream,
/// `fuzzing` from chunks), and may do something between the header and the body (the QUIC
/// reader reserves the declared length from its connection's budget there).
///
/// A body that arrives in one piece is decoded from that piece, without a copy. A body that
/// arrives in parts is buffered in one allocation of exactly its declared length, made when
/// its first part arrives: a header alone allocates nothing.
#[derive(Debug)]
pub(crate) struct FrameAssembler {
    max: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The kind and body length of the frame under way, once its header is whole.
    declared: Option<(FrameKind, usize)>,
    body: BytesMut,
}

/// What a [`FrameAssembler`] takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Need {
    /// At most this many bytes of a header.
    Header(usize),
    /// At most `missing` more bytes of a body whose header declared `len` bytes.
    Body { len: usize, missing: usize },
}

impl FrameAssembler {
    pub(crate) fn new(max: usize) -> Self {
        Self {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            declared: None,
            body: BytesMut::new(),
        }
    }

    /// What to feed [`push`](Self::push) next.
    pub(crate) fn need(&self) -> Need {
        match self.declared {
            None => Need::Header(HEADER_LEN - self.header_len),
            Some((_, len)) => Need::Body {
                len,
                missing: len - self.body.len(),
            },
        }
    }

    /// True between frames: no byte of the next one has been taken, so the stream may end.
    pub(crate) fn is_idle(&self) -> bool {
        self.header_len == 0
    }

    /// Takes `piece`, at most what [`need`](Self::need) asks for, and returns the frame once
    /// it is whole. A bad header (unknown kind, length over `max`) is refused as soon as it
    /// is whole, a bad body once it is whole; a piece larger than asked for is refused as
    /// malformed. After an error the stream is unusable.
    pub(crate) fn push(&mut self, piece: Bytes) -> Result<Option<Frame>, CodecError> {
        let Some((kind, len)) = self.declared else {
            let end = self.header_len + piece.len();
            let Some(room) = self.header.get_mut(self.header_len..end) else {
                return Err(self.overrun(piece.len()));
            };
            room.copy_from_slice(&piece);
            self.header_len = end;
            if self.header_len < HEADER_LEN {
                return Ok(None);
            }
            let (kind, len) = decode_header(&self.header, self.max)?;
            self.declared = Some((kind, len));
            return if len == 0 {
                self.finish(kind, Bytes::new(), Payloads::Copied).map(Some)
            } else {
                Ok(None)
            };
        };
        let missing = len - self.body.len();
        if piece.len() > missing {
            return Err(self.overrun(piece.len()));
        }
        if piece.len() == len {
            // The whole body in one piece: no buffer, no copy. The piece may be a slice of a
            // larger receive buffer (a datagram, or several), which entry payloads sharing it
            // would keep alive for as long as the engine keeps them: they are copied.
            return self.finish(kind, piece, Payloads::Copied).map(Some);
        }
        if self.body.is_empty() {
            // The declared length at once: the buffer never regrows, and holds no more than
            // what the header announced.
            self.body.reserve(len);
        }
        self.body.extend_from_slice(&piece);
        if piece.len() < missing {
            return Ok(None);
        }
        // A buffer of exactly this frame: its entries' payloads share it, without a copy.
        let body = std::mem::take(&mut self.body).freeze();
        self.finish(kind, body, Payloads::Shared).map(Some)
    }

    fn finish(
        &mut self,
        kind: FrameKind,
        body: Bytes,
        payloads: Payloads,
    ) -> Result<Frame, CodecError> {
        self.header_len = 0;
        self.declared = None;
        decode_body_of(kind, &body, payloads)
    }

    fn overrun(&self, got: usize) -> CodecError {
        CodecError::Malformed {
            kind: self
                .declared
                .map_or("frame header", |(kind, _)| kind.name()),
            reason: format!(
                "{got} bytes pushed where at most {:?} was asked for",
                self.need()
            ),
        }
    }
}

/// Takes one whole frame off the front of `src`.
///
/// `Ok(None)` when `src` holds only part of a frame (nothing is consumed; read more and call
/// again). An unknown kind or a length over `max` is reported as soon as the 5-byte header has
/// arrived, before the body is awaited or buffered; nothing is consumed then. A body that does
/// not decode has been consumed by the time it is refused. After any error the stream is
/// unusable.
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn decode(src: &mut BytesMut, max: usize) -> Result<Option<Frame>, CodecError> {
    use bytes::Buf;

    let Some(header) = src.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let (kind, len) = decode_header(header, max)?;
    if src.len() < HEADER_LEN + len {
        // Nothing is reserved for the declared length: the buffer grows only with bytes that
        // actually arrive, so a header alone cannot make this node allocate.
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let body: Bytes = src.split_to(len).freeze();
    decode_body_of(kind, &body, Payloads::Copied).map(Some)
}

/// The kind and body length a frame's header declares: an unknown kind, or a length over
/// `max`, is refused here, before anything is read or reserved for the body.
pub(crate) fn decode_header(
    header: &[u8; HEADER_LEN],
    max: usize,
) -> Result<(FrameKind, usize), CodecError> {
    let kind = FrameKind::from_byte(header[0])?;
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    match usize::try_from(len) {
        Ok(len) if len <= max => Ok((kind, len)),
        _ => Err(CodecError::Oversize {
            len: len.into(),
            max,
        }),
    }
}

/// Whether the entry payloads of a decoded AppendEntries share the frame's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Payloads {
    /// Slices of the body (`command::decoding_from`): no copy. For a body in a buffer of its
    /// own, which the entries then keep alive, and nothing else.
    Shared,
    /// Copies: for a body that is part of a larger buffer.
    Copied,
}

/// Decodes the whole body of a frame whose header declared `kind` (and `body.len()`).
pub(crate) fn decode_body_of(
    kind: FrameKind,
    body: &Bytes,
    payloads: Payloads,
) -> Result<Frame, CodecError> {
    Ok(match kind {
        FrameKind::AppendEntries if payloads == Payloads::Shared => {
            Frame::AppendEntries(crate::command::decoding_from(body, || {
                decode_body(kind, body)
            })?)
        }
        FrameKind::AppendEntries => Frame::AppendEntries(decode_body(kind, body)?),
        FrameKind::RequestVote => Frame::RequestVote(decode_body(kind, body)?),
        FrameKind::RequestPreVote => Frame::RequestPreVote(decode_body(kind, body)?),
        FrameKind::TimeoutNow => Frame::TimeoutNow(decode_body(kind, body)?),
        FrameKind::InstallSnapshot => {
            let offer: SnapshotOffer<InstallSnapshotRequest> = decode_body(kind, body)?;
            Frame::InstallSnapshot {
                transfer_id: offer.transfer_id,
                request: offer.request,
            }
        }
        FrameKind::PipelineOpen if body.is_empty() => Frame::PipelineOpen,
        FrameKind::PipelineOpen => {
            return Err(CodecError::Malformed {
                kind: kind.name(),
                reason: format!("{} bytes of body, expected none", body.len()),
            });
        }
        FrameKind::SnapshotData => Frame::SnapshotData {
            transfer_id: decode_body(kind, body)?,
        },
        FrameKind::Response => Frame::Response(decode_body(kind, body)?),
        FrameKind::Error => Frame::Error(decode_body(kind, body)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_payloads_share_an_own_buffer_and_copy_a_borrowed_one() {
        use crate::command::{AppendEntriesRequest, Log, RpcHeader};
        let mut request = AppendEntriesRequest::heartbeat(RpcHeader::new("n1", "n1"), 3);
        request.entries = (1..=3)
            .map(|i| Log::command(i, 3, vec![i as u8; 500]))
            .collect();
        let body = Bytes::from(postcard::to_stdvec(&request).unwrap());
        let inside = |data: &Bytes| {
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            (start..end).contains(&(data.as_ptr() as usize))
        };
        for (payloads, shared) in [(Payloads::Shared, true), (Payloads::Copied, false)] {
            let Frame::AppendEntries(decoded) =
                decode_body_of(FrameKind::AppendEntries, &body, payloads).unwrap()
            else {
                panic!("not an append")
            };
            assert_eq!(decoded, request);
            assert!(
                decoded.entries.iter().all(|e| inside(&e.data) == shared),
                "{payloads:?}"
            );
        }
    }
    use crate::command::{
        AppendEntriesResponse, Log, LogType, RequestVoteResponse, RpcHeader, TimeoutNowResponse,
    };
    use crate::error::ErrorCode;

    const MAX: usize = 1 << 20;

    fn header() -> RpcHeader {
        RpcHeader::new("n1", "127.0.0.1:7000")
    }

    /// `request_body_len` measures exactly the body `encode` writes (for a snapshot request,
    /// the one with transfer id 0), so both transports compare the same figure to the limit.
    #[test]
    fn request_body_len_is_the_encoded_body_length() {
        for frame in samples() {
            let command = match frame {
                Frame::AppendEntries(m) => Command::AppendEntries(m),
                Frame::RequestVote(m) => Command::RequestVote(m),
                Frame::RequestPreVote(m) => Command::RequestPreVote(m),
                Frame::TimeoutNow(m) => Command::TimeoutNow(m),
                Frame::InstallSnapshot { request, .. } => Command::InstallSnapshot(request),
                _ => continue,
            };
            let as_frame = match command.clone() {
                Command::AppendEntries(m) => Frame::AppendEntries(m),
                Command::RequestVote(m) => Frame::RequestVote(m),
                Command::RequestPreVote(m) => Frame::RequestPreVote(m),
                Command::TimeoutNow(m) => Frame::TimeoutNow(m),
                Command::InstallSnapshot(request) => Frame::InstallSnapshot {
                    transfer_id: 0,
                    request,
                },
            };
            let mut buf = BytesMut::new();
            encode(&as_frame, &mut buf, MAX).unwrap();
            assert_eq!(
                request_body_len(&command).unwrap(),
                buf.len() - HEADER_LEN,
                "{:?}",
                command.kind()
            );
        }
    }

    /// A header id up to the node-id limit decodes; one byte more is refused at decode, and
    /// the refusal carries none of the id.
    #[test]
    fn header_ids_over_the_node_id_limit_are_refused_at_decode() {
        use crate::command::{MAX_HEADER_ID_LEN, RequestVoteRequest};
        let vote = |id: &str| {
            let mut header = header();
            header.id = id.into();
            Frame::RequestVote(RequestVoteRequest {
                header,
                term: 1,
                last_log_index: 0,
                last_log_term: 0,
                leadership_transfer: false,
            })
        };
        let longest = "n".repeat(MAX_HEADER_ID_LEN);
        let mut buf = BytesMut::new();
        encode(&vote(&longest), &mut buf, MAX).unwrap();
        assert_eq!(decode(&mut buf, MAX).unwrap(), Some(vote(&longest)));
        for id in ["x".repeat(MAX_HEADER_ID_LEN + 1), "x".repeat(8 << 20)] {
            let mut buf = BytesMut::new();
            encode(&vote(&id), &mut buf, 16 << 20).unwrap();
            let error = decode(&mut buf, 16 << 20).unwrap_err();
            assert!(matches!(error, CodecError::Malformed { .. }), "{error}");
            assert!(error.to_string().len() < 200, "{error}");
            assert!(!error.to_string().contains("xxx"), "{error}");
        }
    }

    fn samples() -> Vec<Frame> {
        let mut log = Log::command(7, 2, Bytes::from_static(b"set x=1"));
        log.extensions = Bytes::from_static(b"ext");
        log.appended_at = Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567));
        let mut config = log.clone();
        config.log_type = LogType::Configuration;
        vec![
            Frame::AppendEntries(AppendEntriesRequest {
                header: header(),
                term: 2,
                prev_log_entry: 6,
                prev_log_term: 2,
                entries: vec![log, config],
                leader_commit_index: 5,
            }),
            Frame::RequestVote(RequestVoteRequest {
                header: header(),
                term: 3,
                last_log_index: 9,
                last_log_term: 2,
                leadership_transfer: true,
            }),
            Frame::RequestPreVote(RequestPreVoteRequest {
                header: header(),
                term: 3,
                last_log_index: 9,
                last_log_term: 2,
            }),
            Frame::TimeoutNow(TimeoutNowRequest { header: header() }),
            Frame::InstallSnapshot {
                transfer_id: u64::MAX,
                request: InstallSnapshotRequest {
                    header: header(),
                    snapshot_version: 1,
                    term: 4,
                    last_log_index: 100,
                    last_log_term: 4,
                    configuration: Bytes::from_static(b"cfg"),
                    configuration_index: 90,
                    size: 1 << 40,
                },
            },
            Frame::PipelineOpen,
            Frame::SnapshotData { transfer_id: 42 },
            Frame::Response(Response::AppendEntries(AppendEntriesResponse {
                header: header(),
                term: 2,
                last_log: 7,
                success: true,
                no_retry_backoff: true,
            })),
            Frame::Response(Response::RequestVote(RequestVoteResponse {
                header: header(),
                term: 3,
                granted: false,
            })),
            Frame::Response(Response::TimeoutNow(TimeoutNowResponse {
                header: header(),
            })),
            Frame::Error(RemoteError::new(ErrorCode::HANDLER, "no")),
        ]
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let mut buf = BytesMut::new();
            encode(&frame, &mut buf, MAX).unwrap();
            let decoded = decode(&mut buf, MAX).unwrap().expect("a whole frame");
            assert_eq!(decoded, frame);
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut whole = BytesMut::new();
        for frame in samples() {
            encode(&frame, &mut whole, MAX).unwrap();
        }
        // Feed one byte at a time: every prefix is either a frame or "need more", never an error.
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in whole.iter() {
            buf.put_u8(*byte);
            while let Some(frame) = decode(&mut buf, MAX).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, samples());
    }

    #[test]
    fn unknown_kind_is_refused_at_the_header() {
        let mut buf = BytesMut::from(&[0x42, 0, 0, 0, 1][..]);
        assert_eq!(decode(&mut buf, MAX), Err(CodecError::UnknownKind(0x42)));
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        let mut buf = BytesMut::from(&[0x01, 0xff, 0xff, 0xff, 0xff][..]);
        let err = decode(&mut buf, MAX).unwrap_err();
        assert_eq!(
            err,
            CodecError::Oversize {
                len: u32::MAX.into(),
                max: MAX
            }
        );
        assert!(buf.capacity() < 1024, "allocated for an oversize frame");
    }

    #[test]
    fn a_header_alone_reserves_nothing_for_its_body() {
        let mut buf = BytesMut::from(&[0x01, 0x00, 0x0f, 0xff, 0xff][..]);
        let before = buf.capacity();
        assert_eq!(decode(&mut buf, MAX), Ok(None));
        assert_eq!(
            buf.capacity(),
            before,
            "reserved room for a body that has not arrived"
        );
    }

    #[test]
    fn encoding_over_the_limit_fails_and_leaves_the_buffer() {
        let big = Frame::Error(RemoteError::new(ErrorCode::HANDLER, "x".repeat(100)));
        let mut buf = BytesMut::from(&b"keep"[..]);
        assert!(matches!(
            encode(&big, &mut buf, 50),
            Err(CodecError::Oversize { .. })
        ));
        assert_eq!(&buf[..], b"keep");
    }

    #[test]
    fn malformed_and_trailing_bodies_are_refused() {
        // A RequestVote body of garbage.
        let mut buf = BytesMut::from(&[0x02, 0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(CodecError::Malformed { .. })
        ));
        // A valid body followed by an extra byte inside the declared length.
        let mut buf = BytesMut::new();
        encode(&Frame::SnapshotData { transfer_id: 1 }, &mut buf, MAX).unwrap();
        buf[4] += 1;
        buf.put_u8(0);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(CodecError::Malformed { .. })
        ));
        // PipelineOpen carries no body.
        let mut buf = BytesMut::from(&[0x06, 0, 0, 0, 1, 0][..]);
        assert!(matches!(
            decode(&mut buf, MAX),
            Err(CodecError::Malformed { .. })
        ));
    }

    /// Feeds `bytes` to an assembler in pieces of at most `piece` bytes (and never more than
    /// it asks for), collecting the frames.
    fn assemble(bytes: &[u8], piece: usize) -> (Vec<Frame>, FrameAssembler) {
        let mut frames = FrameAssembler::new(MAX);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = match frames.need() {
                Need::Header(want) => want,
                Need::Body { missing, .. } => missing,
            };
            let (taken, left) = rest.split_at(want.min(piece).min(rest.len()));
            rest = left;
            if let Some(frame) = frames.push(Bytes::copy_from_slice(taken)).unwrap() {
                out.push(frame);
            }
        }
        (out, frames)
    }

    #[test]
    fn the_assembler_reads_every_frame_whatever_the_piece_size() {
        let mut whole = BytesMut::new();
        for frame in samples() {
            encode(&frame, &mut whole, MAX).unwrap();
        }
        for piece in [1, 2, 3, 5, 7, 64, usize::MAX] {
            let (frames, rest) = assemble(&whole, piece);
            assert_eq!(frames, samples(), "pieces of {piece}");
            assert!(rest.is_idle());
        }
    }

    #[test]
    fn the_assembler_asks_for_the_header_then_exactly_the_body() {
        let mut bytes = BytesMut::new();
        encode(&samples()[0], &mut bytes, MAX).unwrap();
        let body_len = bytes.len() - HEADER_LEN;
        let mut frames = FrameAssembler::new(MAX);
        assert_eq!(frames.need(), Need::Header(HEADER_LEN));
        assert!(frames.is_idle());
        frames.push(bytes.split_to(2).freeze()).unwrap();
        assert_eq!(frames.need(), Need::Header(3));
        assert!(!frames.is_idle());
        frames.push(bytes.split_to(3).freeze()).unwrap();
        assert_eq!(
            frames.need(),
            Need::Body {
                len: body_len,
                missing: body_len
            }
        );
        // A header alone allocates nothing; the first part of the body allocates the whole
        // declared length, once.
        assert_eq!(frames.body.capacity(), 0);
        assert_eq!(frames.push(bytes.split_to(1).freeze()), Ok(None));
        assert_eq!(frames.body.capacity(), body_len);
        assert_eq!(
            frames.need(),
            Need::Body {
                len: body_len,
                missing: body_len - 1
            }
        );
        let frame = frames.push(bytes.split().freeze()).unwrap();
        assert_eq!(frame, Some(samples()[0].clone()));
        assert_eq!(frames.need(), Need::Header(HEADER_LEN));
        assert!(frames.is_idle());
    }

    #[test]
    fn the_assembler_refuses_a_bad_header_as_soon_as_it_is_whole() {
        let mut frames = FrameAssembler::new(MAX);
        assert_eq!(
            frames.push(Bytes::from_static(&[0x01, 0x7f, 0xff, 0xff, 0xff])),
            Err(CodecError::Oversize {
                len: 0x7fff_ffff,
                max: MAX
            })
        );
        assert_eq!(frames.body.capacity(), 0);
        let mut frames = FrameAssembler::new(MAX);
        assert_eq!(
            frames.push(Bytes::from_static(&[0x42, 0, 0, 0, 0])),
            Err(CodecError::UnknownKind(0x42))
        );
    }

    #[test]
    fn the_assembler_refuses_more_than_it_asked_for() {
        let mut frames = FrameAssembler::new(MAX);
        assert!(matches!(
            frames.push(Bytes::from_static(&[0x06, 0, 0, 0, 0, 0])),
            Err(CodecError::Malformed { .. })
        ));
        let mut frames = FrameAssembler::new(MAX);
        frames
            .push(Bytes::from_static(&[0x07, 0, 0, 0, 1]))
            .unwrap();
        assert!(matches!(
            frames.push(Bytes::from_static(&[1, 2])),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn truncated_body_is_never_a_frame() {
        let mut buf = BytesMut::new();
        encode(&samples()[0], &mut buf, MAX).unwrap();
        buf.truncate(buf.len() - 1);
        assert_eq!(decode(&mut buf, MAX), Ok(None));
    }
}
