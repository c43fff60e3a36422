//! The frames of the protocol, their kinds, and encoding them (decoding is the
//! [`FrameAssembler`](super::FrameAssembler)'s).

use bytes::{BufMut, BytesMut};
use serde::{Deserialize, Serialize};

use super::CodecError;
use crate::command::{Command, InstallSnapshotRequest, Response, RpcKind};
use crate::error::RemoteError;

/// Bytes before the body: the kind and the length.
pub(crate) const HEADER_LEN: usize = 5;

/// The kind byte of a frame. Values are fixed by the protocol (`docs/PROTOCOL.md` §5.2).
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
    ResumableSnapshot = 0x08,
    SnapshotResume = 0x09,
    Response = 0x80,
    Error = 0x81,
    ResumeFrom = 0x82,
}

impl FrameKind {
    pub(crate) fn from_byte(byte: u8) -> Result<Self, CodecError> {
        Ok(match byte {
            0x01 => Self::AppendEntries,
            0x02 => Self::RequestVote,
            0x03 => Self::RequestPreVote,
            0x04 => Self::InstallSnapshot,
            0x05 => Self::TimeoutNow,
            0x06 => Self::PipelineOpen,
            0x07 => Self::SnapshotData,
            0x08 => Self::ResumableSnapshot,
            0x09 => Self::SnapshotResume,
            0x80 => Self::Response,
            0x81 => Self::Error,
            0x82 => Self::ResumeFrom,
            other => return Err(CodecError::UnknownKind(other)),
        })
    }

    /// The kind of a request frame of `rpc`.
    fn of(rpc: RpcKind) -> Self {
        match rpc {
            RpcKind::AppendEntries => Self::AppendEntries,
            RpcKind::RequestVote => Self::RequestVote,
            RpcKind::RequestPreVote => Self::RequestPreVote,
            RpcKind::InstallSnapshot => Self::InstallSnapshot,
            RpcKind::TimeoutNow => Self::TimeoutNow,
        }
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
            Self::ResumableSnapshot => "ResumableSnapshot",
            Self::SnapshotResume => "SnapshotResume",
            Self::Response => "Response",
            Self::Error => "Error",
            Self::ResumeFrom => "ResumeFrom",
        }
    }
}

/// Every message that travels on a stream (`docs/PROTOCOL.md` §5.2): a request, the frames
/// that open a pipeline or a snapshot data stream, and the two answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A request on a unary stream, or an append on a pipeline (kinds `01`, `02`, `03`, `05`).
    /// Decoding never yields an InstallSnapshot here: it travels as
    /// [`InstallSnapshot`](Self::InstallSnapshot), with its transfer id.
    Request(Command),
    /// Kind `04`: the request half of an InstallSnapshot; its data arrives on the
    /// unidirectional stream that opens with a `SnapshotData` frame of the same `transfer_id`.
    InstallSnapshot {
        /// The QUIC stream id of the data stream.
        transfer_id: u64,
        /// The request.
        request: InstallSnapshotRequest,
    },
    /// Kind `06`: the first frame of a pipeline stream; appends follow.
    PipelineOpen,
    /// Kind `07`: the first frame of a snapshot data stream; raw data follows until its end.
    SnapshotData {
        /// The stream's own QUIC stream id, which the request names.
        transfer_id: u64,
    },
    /// Kind `08`: the request half of a resumable InstallSnapshot (protocol version 3): as
    /// [`InstallSnapshot`](Self::InstallSnapshot), plus the id that outlives the connection.
    ResumableSnapshot {
        /// The QUIC stream id of the data stream, which carries the data from offset 0.
        transfer_id: u64,
        /// The sender's id for the whole transfer, unique per (sender, receiver) pair.
        resume_id: u64,
        /// The request.
        request: InstallSnapshotRequest,
    },
    /// Kind `09`: resumes the transfer `resume_id` on a new connection; the receiver answers
    /// [`ResumeFrom`](Self::ResumeFrom), then the snapshot's answer.
    SnapshotResume(SnapshotResume),
    /// Kind `80`: an answer.
    Response(Response),
    /// Kind `81`: an error answered instead of a response.
    Error(RemoteError),
    /// Kind `82`: the receiver's first answer to a [`SnapshotResume`](Self::SnapshotResume):
    /// the bytes of the snapshot it holds, from which the new data stream continues.
    ResumeFrom {
        /// The exact count of bytes the receiver accepted into its consumer's reader.
        offset: u64,
    },
}

/// The body of a `SnapshotResume` frame (kind `09`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotResume {
    /// The QUIC stream id of the new data stream (on the new connection).
    pub transfer_id: u64,
    /// The transfer being resumed, as its `ResumableSnapshot` named it.
    pub resume_id: u64,
    /// The snapshot's declared size, which must be the transfer's.
    pub size: u64,
}

/// The body of an InstallSnapshot frame.
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotOffer<R> {
    pub(crate) transfer_id: u64,
    pub(crate) request: R,
}

/// The body of a ResumableSnapshot frame.
#[derive(Serialize, Deserialize)]
pub(crate) struct ResumableOffer<R> {
    pub(crate) transfer_id: u64,
    pub(crate) resume_id: u64,
    pub(crate) request: R,
}

impl Frame {
    /// The frame that answers with a handler's result.
    pub(crate) fn answer(result: Result<Response, RemoteError>) -> Self {
        match result {
            Ok(response) => Self::Response(response),
            Err(error) => Self::Error(error),
        }
    }

    pub(crate) fn kind(&self) -> FrameKind {
        match self {
            Self::Request(command) => FrameKind::of(command.kind()),
            Self::InstallSnapshot { .. } => FrameKind::InstallSnapshot,
            Self::PipelineOpen => FrameKind::PipelineOpen,
            Self::SnapshotData { .. } => FrameKind::SnapshotData,
            Self::ResumableSnapshot { .. } => FrameKind::ResumableSnapshot,
            Self::SnapshotResume(_) => FrameKind::SnapshotResume,
            Self::Response(_) => FrameKind::Response,
            Self::Error(_) => FrameKind::Error,
            Self::ResumeFrom { .. } => FrameKind::ResumeFrom,
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
/// bytes (the peer would refuse it), or for a [`Frame::Request`] of an InstallSnapshot, which
/// travels as a [`Frame::InstallSnapshot`] with its transfer id.
pub fn encode(frame: &Frame, dst: &mut BytesMut, max: usize) -> Result<(), CodecError> {
    let kind = frame.kind();
    match frame {
        Frame::Request(Command::AppendEntries(m)) => encode_message(kind, m, dst, max),
        Frame::Request(Command::RequestVote(m)) => encode_message(kind, m, dst, max),
        Frame::Request(Command::RequestPreVote(m)) => encode_message(kind, m, dst, max),
        Frame::Request(Command::TimeoutNow(m)) => encode_message(kind, m, dst, max),
        Frame::Request(Command::InstallSnapshot(_)) => Err(CodecError::Encode(
            "an InstallSnapshot request needs its transfer id (Frame::InstallSnapshot)".to_owned(),
        )),
        Frame::InstallSnapshot {
            transfer_id,
            request,
        } => {
            let offer = SnapshotOffer {
                transfer_id: *transfer_id,
                request,
            };
            encode_message(kind, &offer, dst, max)
        }
        Frame::PipelineOpen => encode_message(kind, &(), dst, max),
        Frame::SnapshotData { transfer_id } => encode_message(kind, transfer_id, dst, max),
        Frame::ResumableSnapshot {
            transfer_id,
            resume_id,
            request,
        } => {
            let offer = ResumableOffer {
                transfer_id: *transfer_id,
                resume_id: *resume_id,
                request,
            };
            encode_message(kind, &offer, dst, max)
        }
        Frame::SnapshotResume(m) => encode_message(kind, m, dst, max),
        Frame::Response(m) => encode_message(kind, m, dst, max),
        Frame::Error(m) => encode_message(kind, m, dst, max),
        Frame::ResumeFrom { offset } => encode_message(kind, offset, dst, max),
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

#[cfg(test)]
pub(super) mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::command::{
        AppendEntriesRequest, AppendEntriesResponse, Log, LogType, RequestPreVoteRequest,
        RequestVoteRequest, RequestVoteResponse, RpcHeader, TimeoutNowRequest, TimeoutNowResponse,
    };
    use crate::error::ErrorCode;

    pub(in crate::codec) const MAX: usize = 1 << 20;

    pub(in crate::codec) fn header() -> RpcHeader {
        RpcHeader::new("n1", "127.0.0.1:7000")
    }

    /// A frame of every kind.
    pub(in crate::codec) fn samples() -> Vec<Frame> {
        let mut log = Log::command(7, 2, Bytes::from_static(b"set x=1"));
        log.extensions = Bytes::from_static(b"ext");
        log.appended_at = Some(std::time::UNIX_EPOCH + std::time::Duration::from_nanos(1_234_567));
        let mut config = log.clone();
        config.log_type = LogType::Configuration;
        vec![
            Frame::Request(Command::AppendEntries(AppendEntriesRequest {
                header: header(),
                term: 2,
                prev_log_entry: 6,
                prev_log_term: 2,
                entries: vec![log, config],
                leader_commit_index: 5,
            })),
            Frame::Request(Command::RequestVote(RequestVoteRequest {
                header: header(),
                term: 3,
                last_log_index: 9,
                last_log_term: 2,
                leadership_transfer: true,
            })),
            Frame::Request(Command::RequestPreVote(RequestPreVoteRequest {
                header: header(),
                term: 3,
                last_log_index: 9,
                last_log_term: 2,
            })),
            Frame::Request(Command::TimeoutNow(TimeoutNowRequest { header: header() })),
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
            Frame::ResumableSnapshot {
                transfer_id: 2,
                resume_id: u64::MAX - 1,
                request: InstallSnapshotRequest {
                    header: header(),
                    snapshot_version: 1,
                    term: 4,
                    last_log_index: 100,
                    last_log_term: 4,
                    configuration: Bytes::from_static(b"cfg"),
                    configuration_index: 90,
                    size: 1 << 20,
                },
            },
            Frame::SnapshotResume(SnapshotResume {
                transfer_id: 6,
                resume_id: 0x0102_0304,
                size: 1 << 20,
            }),
            Frame::ResumeFrom { offset: 300 },
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
            Frame::Error(RemoteError::new(ErrorCode(0x4F52), "stopped").with_details(&b"\x01"[..])),
        ]
    }

    /// `request_body_len` measures exactly the body `encode` writes (for a snapshot request,
    /// the one with transfer id 0), so both transports compare the same figure to the limit.
    #[test]
    fn request_body_len_is_the_encoded_body_length() {
        for frame in samples() {
            let (command, as_frame) = match frame {
                Frame::Request(command) => (command.clone(), Frame::Request(command)),
                Frame::InstallSnapshot { request, .. } => (
                    Command::InstallSnapshot(request.clone()),
                    Frame::InstallSnapshot {
                        transfer_id: 0,
                        request,
                    },
                ),
                _ => continue,
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

    /// The `Error` frame of `docs/PROTOCOL.md` §6.6 and §7.2: code, message, then the details
    /// as an option (protocol version 2).
    #[test]
    fn error_frames_have_the_documented_layout() {
        let error = RemoteError::new(ErrorCode::IDENTITY_MISMATCH, "no");
        let mut buf = BytesMut::new();
        encode(&Frame::Error(error.clone()), &mut buf, MAX).unwrap();
        assert_eq!(buf[..], [0x81, 0, 0, 0, 5, 0x05, 0x02, b'n', b'o', 0x00]);
        let mut buf = BytesMut::new();
        let detailed = error.with_details(&[0xab, 0xcd][..]);
        encode(&Frame::Error(detailed), &mut buf, MAX).unwrap();
        assert_eq!(
            buf[..],
            [
                0x81, 0, 0, 0, 8, 0x05, 0x02, b'n', b'o', 0x01, 0x02, 0xab, 0xcd
            ]
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

    /// An InstallSnapshot request has no frame without its transfer id.
    #[test]
    fn a_snapshot_request_without_its_transfer_id_is_not_encoded() {
        let Some(Frame::InstallSnapshot { request, .. }) = samples().into_iter().nth(4) else {
            panic!("the fifth sample is an InstallSnapshot")
        };
        let mut buf = BytesMut::from(&b"keep"[..]);
        let frame = Frame::Request(Command::InstallSnapshot(request));
        assert!(matches!(
            encode(&frame, &mut buf, MAX),
            Err(CodecError::Encode(_))
        ));
        assert_eq!(&buf[..], b"keep");
    }
}

#[cfg(test)]
mod resume_layout {
    use bytes::{Bytes, BytesMut};

    use super::*;

    fn encoded(frame: &Frame) -> Vec<u8> {
        let mut buf = BytesMut::new();
        encode(frame, &mut buf, 1 << 20).unwrap();
        buf.to_vec()
    }

    fn bytes(hex: &str) -> Vec<u8> {
        hex.split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).unwrap())
            .collect()
    }

    /// The frames of a resumable snapshot as `docs/PROTOCOL.md` §7.3 shows them.
    #[test]
    fn resumable_snapshot_frames_have_the_documented_layout() {
        let header = crate::command::RpcHeader::new("n1", "127.0.0.1:7000");
        let request = InstallSnapshotRequest {
            header,
            snapshot_version: 1,
            term: 4,
            last_log_index: 100,
            last_log_term: 4,
            configuration: Bytes::from_static(b"cfg"),
            configuration_index: 90,
            size: 1 << 20,
        };
        let resume_id = 0x1234_5678_9abc_def0;
        let offer = Frame::ResumableSnapshot {
            transfer_id: 2,
            resume_id,
            request,
        };
        assert_eq!(
            encoded(&offer),
            bytes(
                "08 00 00 00 2a 02 f0 bd f3 d5 89 cf 95 9a 12 03 02 6e 31 0e 31 32 37 2e 30 2e \
                 30 2e 31 3a 37 30 30 30 00 01 04 64 04 03 63 66 67 5a 80 80 40"
            )
        );
        let resume = Frame::SnapshotResume(SnapshotResume {
            transfer_id: 6,
            resume_id,
            size: 1 << 20,
        });
        assert_eq!(
            encoded(&resume),
            bytes("09 00 00 00 0d 06 f0 bd f3 d5 89 cf 95 9a 12 80 80 40")
        );
        assert_eq!(
            encoded(&Frame::ResumeFrom { offset: 300_000 }),
            bytes("82 00 00 00 03 e0 a7 12")
        );
    }
}
