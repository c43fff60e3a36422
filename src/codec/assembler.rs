//! Reading frames: the header checked as soon as it is whole, then the body decoded, from
//! pieces a caller reads off a stream.

use bytes::{Bytes, BytesMut};
use serde::Deserialize;

use super::CodecError;
use super::frame::{Frame, FrameKind, HEADER_LEN, ResumableOffer, SnapshotOffer};
use crate::command::{Command, InstallSnapshotRequest, decoding_from};

/// Assembles the frames of one stream from pieces of exactly the sizes it asks for
/// ([`need`](Self::need)), so nothing past the frame under way is ever taken off the stream:
/// first the 5-byte header, checked as soon as it is whole (kind, length within `max`), then
/// the body. Pure: the caller does the reading (`quic::io::FrameReader` from a QUIC stream,
/// `fuzzing::read_frames` from chunks), and may do something between the header and the body (the QUIC
/// reader reserves the declared length from its connection's budget there).
///
/// A body that arrives in one piece is decoded from that piece, without a copy. A body that
/// arrives in parts is buffered in one allocation of exactly its declared length, made when
/// its first part arrives: a header alone allocates nothing.
#[derive(Debug)]
pub struct FrameAssembler {
    max: usize,
    header: [u8; HEADER_LEN],
    header_len: usize,
    /// The kind and body length of the frame under way, once its header is whole.
    declared: Option<(FrameKind, usize)>,
    body: BytesMut,
}

/// What a [`FrameAssembler`] takes next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// At most this many bytes of a header.
    Header(usize),
    /// At most `missing` more bytes of a body whose header declared `len` bytes.
    Body {
        /// The body's declared length.
        len: usize,
        /// The bytes of it still to come.
        missing: usize,
    },
}

impl FrameAssembler {
    /// An assembler of frames whose bodies are at most `max` bytes.
    pub fn new(max: usize) -> Self {
        Self {
            max,
            header: [0; HEADER_LEN],
            header_len: 0,
            declared: None,
            body: BytesMut::new(),
        }
    }

    /// What to feed [`push`](Self::push) next.
    pub fn need(&self) -> Need {
        match self.declared {
            None => Need::Header(HEADER_LEN - self.header_len),
            Some((_, len)) => Need::Body {
                len,
                missing: len - self.body.len(),
            },
        }
    }

    /// True between frames: no byte of the next one has been taken, so the stream may end.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0
    }

    /// Takes `piece`, at most what [`need`](Self::need) asks for, and returns the frame once
    /// it is whole. A bad header (unknown kind, length over `max`) is refused as soon as it
    /// is whole, a bad body once it is whole; a piece larger than asked for is refused as
    /// malformed. After an error the stream is unusable.
    pub fn push(&mut self, piece: Bytes) -> Result<Option<Frame>, CodecError> {
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

/// The kind and body length a frame's header declares: an unknown kind, or a length over
/// `max`, is refused here, before anything is read or reserved for the body.
fn decode_header(header: &[u8; HEADER_LEN], max: usize) -> Result<(FrameKind, usize), CodecError> {
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
enum Payloads {
    /// Slices of the body (`command::decoding_from`): no copy. For a body in a buffer of its
    /// own, which the entries then keep alive, and nothing else.
    Shared,
    /// Copies: for a body that is part of a larger buffer.
    Copied,
}

/// Decodes the whole body of a frame whose header declared `kind` (and `body.len()`).
fn decode_body_of(kind: FrameKind, body: &Bytes, payloads: Payloads) -> Result<Frame, CodecError> {
    let request = |command| Ok(Frame::Request(command));
    match kind {
        FrameKind::AppendEntries if payloads == Payloads::Shared => {
            request(Command::AppendEntries(decoding_from(body, || {
                decode_body(kind, body)
            })?))
        }
        FrameKind::AppendEntries => request(Command::AppendEntries(decode_body(kind, body)?)),
        FrameKind::RequestVote => request(Command::RequestVote(decode_body(kind, body)?)),
        FrameKind::RequestPreVote => request(Command::RequestPreVote(decode_body(kind, body)?)),
        FrameKind::TimeoutNow => request(Command::TimeoutNow(decode_body(kind, body)?)),
        FrameKind::InstallSnapshot => {
            let offer: SnapshotOffer<InstallSnapshotRequest> = decode_body(kind, body)?;
            Ok(Frame::InstallSnapshot {
                transfer_id: offer.transfer_id,
                request: offer.request,
            })
        }
        FrameKind::PipelineOpen if body.is_empty() => Ok(Frame::PipelineOpen),
        FrameKind::PipelineOpen => Err(CodecError::Malformed {
            kind: kind.name(),
            reason: format!("{} bytes of body, expected none", body.len()),
        }),
        FrameKind::SnapshotData => Ok(Frame::SnapshotData {
            transfer_id: decode_body(kind, body)?,
        }),
        FrameKind::ResumableSnapshot => {
            let offer: ResumableOffer<InstallSnapshotRequest> = decode_body(kind, body)?;
            Ok(Frame::ResumableSnapshot {
                transfer_id: offer.transfer_id,
                resume_id: offer.resume_id,
                request: offer.request,
            })
        }
        FrameKind::SnapshotResume => Ok(Frame::SnapshotResume(decode_body(kind, body)?)),
        FrameKind::Response => Ok(Frame::Response(decode_body(kind, body)?)),
        FrameKind::Error => Ok(Frame::Error(decode_body(kind, body)?)),
        FrameKind::ResumeFrom => Ok(Frame::ResumeFrom {
            offset: decode_body(kind, body)?,
        }),
    }
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

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::codec::encode;
    use crate::codec::frame::tests::{MAX, header, samples};
    use crate::command::{AppendEntriesRequest, Log, RequestVoteRequest};

    /// Feeds `bytes` to an assembler of frames up to `max` in pieces of at most `piece` bytes
    /// (and never more than it asks for): the frames, and the assembler where the bytes ended.
    fn feed(
        bytes: &[u8],
        piece: usize,
        max: usize,
    ) -> Result<(Vec<Frame>, FrameAssembler), CodecError> {
        let mut frames = FrameAssembler::new(max);
        let mut out = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let want = match frames.need() {
                Need::Header(want) => want,
                Need::Body { missing, .. } => missing,
            };
            let (taken, left) = rest.split_at(want.min(piece).min(rest.len()));
            rest = left;
            out.extend(frames.push(Bytes::copy_from_slice(taken))?);
        }
        Ok((out, frames))
    }

    fn encoded(frames: &[Frame], max: usize) -> BytesMut {
        let mut buf = BytesMut::new();
        for frame in frames {
            encode(frame, &mut buf, max).unwrap();
        }
        buf
    }

    #[test]
    fn entry_payloads_share_an_own_buffer_and_copy_a_borrowed_one() {
        let mut request = AppendEntriesRequest::heartbeat(header(), 3);
        request.entries = (1..=3)
            .map(|i| Log::command(i, 3, vec![i as u8; 500]))
            .collect();
        let body = Bytes::from(postcard::to_stdvec(&request).unwrap());
        let inside = |data: &Bytes| {
            let (start, end) = (body.as_ptr() as usize, body.as_ptr() as usize + body.len());
            (start..end).contains(&(data.as_ptr() as usize))
        };
        for (payloads, shared) in [(Payloads::Shared, true), (Payloads::Copied, false)] {
            let Frame::Request(Command::AppendEntries(decoded)) =
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

    /// A header id up to the node-id limit decodes; one byte more is refused at decode, and
    /// the refusal carries none of the id.
    #[test]
    fn header_ids_over_the_node_id_limit_are_refused_at_decode() {
        use crate::command::MAX_HEADER_ID_LEN;
        let vote = |id: &str| {
            let mut header = header();
            header.id = id.into();
            Frame::Request(Command::RequestVote(RequestVoteRequest {
                header,
                term: 1,
                last_log_index: 0,
                last_log_term: 0,
                leadership_transfer: false,
            }))
        };
        let longest = "n".repeat(MAX_HEADER_ID_LEN);
        let bytes = encoded(&[vote(&longest)], MAX);
        let (frames, _) = feed(&bytes, usize::MAX, MAX).unwrap();
        assert_eq!(frames, [vote(&longest)]);
        for id in ["x".repeat(MAX_HEADER_ID_LEN + 1), "x".repeat(8 << 20)] {
            let bytes = encoded(&[vote(&id)], 16 << 20);
            let error = feed(&bytes, usize::MAX, 16 << 20).unwrap_err();
            assert!(matches!(error, CodecError::Malformed { .. }), "{error}");
            assert!(error.to_string().len() < 200, "{error}");
            assert!(!error.to_string().contains("xxx"), "{error}");
        }
    }

    #[test]
    fn every_frame_round_trips() {
        for frame in samples() {
            let bytes = encoded(std::slice::from_ref(&frame), MAX);
            let (frames, rest) = feed(&bytes, usize::MAX, MAX).unwrap();
            assert_eq!(frames, [frame]);
            assert!(rest.is_idle());
        }
    }

    #[test]
    fn the_assembler_reads_every_frame_whatever_the_piece_size() {
        let whole = encoded(&samples(), MAX);
        for piece in [1, 2, 3, 5, 7, 64, usize::MAX] {
            let (frames, rest) = feed(&whole, piece, MAX).unwrap();
            assert_eq!(frames, samples(), "pieces of {piece}");
            assert!(rest.is_idle());
        }
    }

    /// Every strict prefix of a frame is "more to come": neither a frame nor an error, and
    /// the assembler is idle only before the first byte.
    #[test]
    fn partial_frames_wait_for_more_bytes() {
        for frame in samples() {
            let bytes = encoded(std::slice::from_ref(&frame), MAX);
            for cut in 0..bytes.len() {
                let (frames, rest) = feed(&bytes[..cut], usize::MAX, MAX).unwrap();
                assert!(frames.is_empty(), "{cut} bytes of {frame:?}");
                assert_eq!(rest.is_idle(), cut == 0);
            }
        }
    }

    #[test]
    fn the_assembler_asks_for_the_header_then_exactly_the_body() {
        let mut bytes = encoded(&samples()[..1], MAX);
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
    fn unknown_kind_is_refused_at_the_header() {
        for header in [[0x42, 0, 0, 0, 1], [0x42, 0, 0, 0, 0]] {
            let mut frames = FrameAssembler::new(MAX);
            assert_eq!(
                frames.push(Bytes::copy_from_slice(&header)),
                Err(CodecError::UnknownKind(0x42))
            );
        }
    }

    #[test]
    fn oversize_length_is_refused_before_the_body_arrives() {
        for (header, len) in [
            ([0x01, 0xff, 0xff, 0xff, 0xff], u32::MAX),
            ([0x01, 0x7f, 0xff, 0xff, 0xff], 0x7fff_ffff),
        ] {
            let mut frames = FrameAssembler::new(MAX);
            assert_eq!(
                frames.push(Bytes::copy_from_slice(&header)),
                Err(CodecError::Oversize {
                    len: len.into(),
                    max: MAX
                })
            );
            assert_eq!(frames.body.capacity(), 0, "allocated for an oversize frame");
        }
    }

    #[test]
    fn a_header_alone_reserves_nothing_for_its_body() {
        let mut frames = FrameAssembler::new(MAX);
        assert_eq!(
            frames.push(Bytes::from_static(&[0x01, 0x00, 0x0f, 0xff, 0xff])),
            Ok(None)
        );
        assert_eq!(
            frames.body.capacity(),
            0,
            "reserved room for a body that has not arrived"
        );
    }

    #[test]
    fn malformed_and_trailing_bodies_are_refused() {
        // A RequestVote body of garbage.
        let garbage = [0x02, 0, 0, 0, 3, 0xff, 0xff, 0xff];
        let refused = feed(&garbage, usize::MAX, MAX);
        assert!(matches!(refused, Err(CodecError::Malformed { .. })));
        // A valid body followed by an extra byte inside the declared length.
        let mut buf = encoded(&[Frame::SnapshotData { transfer_id: 1 }], MAX);
        buf[4] += 1;
        buf.put_u8(0);
        let refused = feed(&buf, usize::MAX, MAX);
        assert!(matches!(refused, Err(CodecError::Malformed { .. })));
        // PipelineOpen carries no body.
        let refused = feed(&[0x06, 0, 0, 0, 1, 0], usize::MAX, MAX);
        assert!(matches!(refused, Err(CodecError::Malformed { .. })));
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
        let bytes = encoded(&samples()[..1], MAX);
        let (frames, rest) = feed(&bytes[..bytes.len() - 1], usize::MAX, MAX).unwrap();
        assert!(frames.is_empty());
        assert!(!rest.is_idle());
    }
}
