//! Property tests: every message type survives encode then decode unchanged.
//!
//! Always: through postcard, the encoding every frame body uses (docs/PROTOCOL.md §6).
//! With `--features fuzzing`: also through the frame codec itself (kind byte, length prefix,
//! body), including frames split across arbitrary chunk boundaries, pipeline streams and
//! snapshot data stream headers, through the production encoder and assembler that
//! `quicraft::fuzzing` hands the fuzz targets.
//!
//! `Log::appended_at` is drawn at or after the UNIX epoch only: serde encodes a `SystemTime`
//! as the duration since the epoch and refuses earlier times (see
//! `times_before_the_epoch_cannot_be_encoded`).
#![allow(clippy::unwrap_used)]

use std::fmt::Debug;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use proptest::prelude::*;
use quicraft::{
    AppendEntriesRequest, AppendEntriesResponse, Command, ErrorCode, InstallSnapshotRequest,
    InstallSnapshotResponse, Log, LogType, RemoteError, RequestPreVoteRequest,
    RequestPreVoteResponse, RequestVoteRequest, RequestVoteResponse, Response, RpcHeader,
    ServerAddress, ServerId, TimeoutNowRequest, TimeoutNowResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Cases per property: enough to cover every variant and field shape, few enough that this
/// file runs in well under a second.
const CASES: u32 = 48;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: CASES,
        // Do not write `proptest-regressions/` files next to the tests on failure.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---- strategies ------------------------------------------------------------------------

fn bytes(max: usize) -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

/// Any UTF-8, including multi-byte characters and the empty string.
fn text() -> impl Strategy<Value = String> {
    "\\PC{0,12}"
}

fn header() -> impl Strategy<Value = RpcHeader> {
    (any::<u32>(), text(), text(), bytes(24)).prop_map(|(version, id, addr, extensions)| {
        RpcHeader {
            protocol_version: version,
            id: ServerId::from(id),
            addr: ServerAddress::from(addr),
            extensions,
        }
    })
}

/// Every variant (the enum is `#[non_exhaustive]`, so a new one must be added here).
const LOG_TYPES: [LogType; 4] = [
    LogType::Command,
    LogType::Noop,
    LogType::Barrier,
    LogType::Configuration,
];

fn log_type() -> impl Strategy<Value = LogType> {
    prop::sample::select(&LOG_TYPES[..])
}

/// A time at or after the UNIX epoch: near "now", or anywhere up to the largest second a
/// `SystemTime` holds here (`i64::MAX` seconds after the epoch).
fn appended_at() -> impl Strategy<Value = Option<SystemTime>> {
    let secs = prop_oneof![1_600_000_000u64..1_900_000_000, 0..=i64::MAX as u64];
    let time = (secs, 0..1_000_000_000u32)
        .prop_map(|(secs, nanos)| UNIX_EPOCH.checked_add(Duration::new(secs, nanos)).unwrap());
    prop::option::of(time)
}

fn log() -> impl Strategy<Value = Log> {
    (
        any::<u64>(),
        any::<u64>(),
        log_type(),
        bytes(64),
        bytes(16),
        appended_at(),
    )
        .prop_map(
            |(index, term, log_type, data, extensions, appended_at)| Log {
                index,
                term,
                log_type,
                data,
                extensions,
                appended_at,
            },
        )
}

fn append_entries_request() -> impl Strategy<Value = AppendEntriesRequest> {
    (
        header(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(log(), 0..4),
        any::<u64>(),
    )
        .prop_map(
            |(header, term, prev_log_entry, prev_log_term, entries, leader_commit_index)| {
                AppendEntriesRequest {
                    header,
                    term,
                    prev_log_entry,
                    prev_log_term,
                    entries,
                    leader_commit_index,
                }
            },
        )
}

fn append_entries_response() -> impl Strategy<Value = AppendEntriesResponse> {
    (
        header(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(header, term, last_log, success, no_retry_backoff)| {
            AppendEntriesResponse {
                header,
                term,
                last_log,
                success,
                no_retry_backoff,
            }
        })
}

fn request_vote_request() -> impl Strategy<Value = RequestVoteRequest> {
    (
        header(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(header, term, last_log_index, last_log_term, leadership_transfer)| {
                RequestVoteRequest {
                    header,
                    term,
                    last_log_index,
                    last_log_term,
                    leadership_transfer,
                }
            },
        )
}

fn request_vote_response() -> impl Strategy<Value = RequestVoteResponse> {
    (header(), any::<u64>(), any::<bool>()).prop_map(|(header, term, granted)| {
        RequestVoteResponse {
            header,
            term,
            granted,
        }
    })
}

fn request_pre_vote_request() -> impl Strategy<Value = RequestPreVoteRequest> {
    (header(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(header, term, last_log_index, last_log_term)| RequestPreVoteRequest {
            header,
            term,
            last_log_index,
            last_log_term,
        },
    )
}

fn request_pre_vote_response() -> impl Strategy<Value = RequestPreVoteResponse> {
    (header(), any::<u64>(), any::<bool>()).prop_map(|(header, term, granted)| {
        RequestPreVoteResponse {
            header,
            term,
            granted,
        }
    })
}

fn install_snapshot_request() -> impl Strategy<Value = InstallSnapshotRequest> {
    (
        header(),
        any::<u32>(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        bytes(48),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(
            |(
                header,
                snapshot_version,
                term,
                last_log_index,
                last_log_term,
                configuration,
                configuration_index,
                size,
            )| InstallSnapshotRequest {
                header,
                snapshot_version,
                term,
                last_log_index,
                last_log_term,
                configuration,
                configuration_index,
                size,
            },
        )
}

fn install_snapshot_response() -> impl Strategy<Value = InstallSnapshotResponse> {
    (header(), any::<u64>(), any::<bool>()).prop_map(|(header, term, success)| {
        InstallSnapshotResponse {
            header,
            term,
            success,
        }
    })
}

fn timeout_now_request() -> impl Strategy<Value = TimeoutNowRequest> {
    header().prop_map(|header| TimeoutNowRequest { header })
}

fn timeout_now_response() -> impl Strategy<Value = TimeoutNowResponse> {
    header().prop_map(|header| TimeoutNowResponse { header })
}

fn remote_error() -> impl Strategy<Value = RemoteError> {
    (any::<u32>(), "\\PC{0,40}", prop::option::of(bytes(24))).prop_map(
        |(code, message, details)| {
            let error = RemoteError::new(ErrorCode(code), message);
            match details {
                Some(details) => error.with_details(details),
                None => error,
            }
        },
    )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        append_entries_request().prop_map(Command::from),
        request_vote_request().prop_map(Command::from),
        request_pre_vote_request().prop_map(Command::from),
        install_snapshot_request().prop_map(Command::from),
        timeout_now_request().prop_map(Command::from),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        append_entries_response().prop_map(Response::from),
        request_vote_response().prop_map(Response::from),
        request_pre_vote_response().prop_map(Response::from),
        install_snapshot_response().prop_map(Response::from),
        timeout_now_response().prop_map(Response::from),
    ]
}

// ---- postcard (always) -----------------------------------------------------------------

/// Encodes `value` with postcard, decodes it back, and checks nothing changed and nothing was
/// left over.
fn postcard_round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let encoded = postcard::to_stdvec(value).unwrap();
    let (decoded, rest): (T, _) = postcard::take_from_bytes(&encoded).unwrap();
    prop_assert_eq!(&decoded, value);
    prop_assert!(rest.is_empty(), "{} bytes left over", rest.len());
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn postcard_rpc_header(value in header()) {
        postcard_round_trip(&value)?;
    }

    #[test]
    fn postcard_log(value in log()) {
        postcard_round_trip(&value)?;
    }

    #[test]
    fn postcard_append_entries(req in append_entries_request(), resp in append_entries_response()) {
        postcard_round_trip(&req)?;
        postcard_round_trip(&resp)?;
    }

    #[test]
    fn postcard_request_vote(req in request_vote_request(), resp in request_vote_response()) {
        postcard_round_trip(&req)?;
        postcard_round_trip(&resp)?;
    }

    #[test]
    fn postcard_request_pre_vote(
        req in request_pre_vote_request(),
        resp in request_pre_vote_response(),
    ) {
        postcard_round_trip(&req)?;
        postcard_round_trip(&resp)?;
    }

    #[test]
    fn postcard_install_snapshot(
        req in install_snapshot_request(),
        resp in install_snapshot_response(),
    ) {
        postcard_round_trip(&req)?;
        postcard_round_trip(&resp)?;
    }

    #[test]
    fn postcard_timeout_now(req in timeout_now_request(), resp in timeout_now_response()) {
        postcard_round_trip(&req)?;
        postcard_round_trip(&resp)?;
    }

    #[test]
    fn postcard_remote_error(value in remote_error()) {
        postcard_round_trip(&value)?;
    }

    #[test]
    fn postcard_command_and_response(cmd in command(), resp in response()) {
        postcard_round_trip(&cmd)?;
        postcard_round_trip(&resp)?;
    }
}

#[test]
fn every_log_type_round_trips() {
    for log_type in LOG_TYPES {
        let mut log = Log::command(1, 1, Bytes::from_static(b"x"));
        log.log_type = log_type;
        let decoded: Log = postcard::from_bytes(&postcard::to_stdvec(&log).unwrap()).unwrap();
        assert_eq!(decoded, log);
    }
}

#[test]
fn the_epoch_and_the_last_representable_second_round_trip() {
    for at in [
        UNIX_EPOCH,
        UNIX_EPOCH + Duration::new(i64::MAX as u64, 999_999_999),
    ] {
        let mut log = Log::command(1, 1, Bytes::new());
        log.appended_at = Some(at);
        let decoded: Log = postcard::from_bytes(&postcard::to_stdvec(&log).unwrap()).unwrap();
        assert_eq!(decoded, log);
    }
}

/// serde encodes a `SystemTime` as the duration since the UNIX epoch, so an earlier time
/// cannot be sent at all: encoding fails (it never silently changes the value).
#[test]
fn times_before_the_epoch_cannot_be_encoded() {
    let mut log = Log::command(1, 1, Bytes::new());
    log.appended_at = Some(UNIX_EPOCH - Duration::from_secs(1));
    assert!(postcard::to_stdvec(&log).is_err());
}

/// A time further from the epoch than a `SystemTime` can hold is refused when decoded, not a
/// panic (the body is hand-made: no sender can produce it).
#[test]
fn times_beyond_system_time_are_refused_when_decoded() {
    let mut body = postcard::to_stdvec(&Log::command(1, 1, Bytes::new())).unwrap();
    // The last byte is `appended_at: None`; make it Some(u64::MAX seconds, 0 nanoseconds).
    body.pop();
    body.push(1);
    body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]);
    body.push(0);
    assert!(postcard::from_bytes::<Log>(&body).is_err());
}

// ---- regressions from fuzzing ----------------------------------------------------------

/// The postcard body of an `AppendEntriesRequest` (empty header, zero positions) holding
/// `count` empty log entries, 6 bytes each: the most entries a body of its size can hold.
fn body_of_empty_entries(count: usize) -> Vec<u8> {
    // protocol_version, id, addr, extensions, term, prev_log_entry, prev_log_term
    let mut body = vec![0u8; 7];
    let mut n = count;
    while n >= 0x80 {
        body.push((n as u8) | 0x80);
        n >>= 7;
    }
    body.push(n as u8);
    // Each entry: index, term, log_type, data, extensions, appended_at (None).
    body.extend(std::iter::repeat_n([0u8; 6], count).flatten());
    body.push(0); // leader_commit_index
    body
}

/// Fuzzing finding 1 (memory amplification): a 1 MiB AppendEntries body of 174 760 empty
/// entries decoded into a 322 624-entry `Vec<Log>` (104 bytes each: 33.5 MB, a 48x peak over
/// the body). Fixed by `MAX_ENTRIES_PER_APPEND`: such a body is now refused.
#[test]
fn empty_entries_do_not_amplify_memory() {
    const MAX: usize = 1 << 20;
    let body = body_of_empty_entries((MAX - 16) / 6);
    assert!(body.len() <= MAX);
    if let Ok(request) = postcard::from_bytes::<AppendEntriesRequest>(&body) {
        let held = request.entries.capacity() * size_of::<Log>();
        assert!(
            held <= MAX,
            "{} bytes of body held {held} bytes of entries",
            body.len()
        );
    }
}

// ---- the frame codec (feature `fuzzing`) -------------------------------------------------

#[cfg(feature = "fuzzing")]
mod frames {
    use bytes::BytesMut;
    use proptest::prelude::*;
    use quicraft::fuzzing::{
        Frame, StreamError, encode, read_frames, read_pipeline, read_snapshot_header,
    };
    use quicraft::{CodecError, Response};

    use super::*;

    const MAX: usize = 1 << 20;

    fn wire_frame() -> impl Strategy<Value = Frame> {
        prop_oneof![
            append_entries_request().prop_map(|r| Frame::Request(r.into())),
            request_vote_request().prop_map(|r| Frame::Request(r.into())),
            request_pre_vote_request().prop_map(|r| Frame::Request(r.into())),
            timeout_now_request().prop_map(|r| Frame::Request(r.into())),
            (any::<u64>(), install_snapshot_request()).prop_map(|(transfer_id, request)| {
                Frame::InstallSnapshot {
                    transfer_id,
                    request,
                }
            }),
            Just(Frame::PipelineOpen),
            any::<u64>().prop_map(|transfer_id| Frame::SnapshotData { transfer_id }),
            response().prop_map(Frame::Response),
            remote_error().prop_map(Frame::Error),
        ]
    }

    /// Cuts `bytes` into chunks of the given sizes (cycled; a size of 0 is an empty chunk).
    fn cut<'a>(bytes: &'a [u8], sizes: &[usize]) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        let mut rest = bytes;
        for size in sizes.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (chunk, tail) = rest.split_at((*size).min(rest.len()));
            out.push(chunk);
            rest = tail;
        }
        out
    }

    fn chunk_sizes() -> impl Strategy<Value = Vec<usize>> {
        prop::collection::vec(0usize..40, 1..8)
            .prop_filter("some progress", |sizes| sizes.iter().any(|size| *size > 0))
    }

    fn encode_all(frames: &[Frame]) -> BytesMut {
        let mut buf = BytesMut::new();
        for frame in frames {
            encode(frame, &mut buf, MAX).unwrap();
        }
        buf
    }

    proptest! {
        #![proptest_config(config())]

        /// One frame of every kind: encode, then decode the same frame with nothing left.
        #[test]
        fn frame_round_trip(frame in wire_frame()) {
            let buf = encode_all(std::slice::from_ref(&frame));
            let (decoded, end) = read_frames([&buf[..]], MAX);
            prop_assert_eq!(decoded, vec![frame]);
            prop_assert_eq!(end, None);
        }

        /// Every strict prefix of a frame is "need more" (a stream ending there is truncated),
        /// never an error or a frame.
        #[test]
        fn partial_frames_wait_for_more(frame in wire_frame(), cut_at in any::<prop::sample::Index>()) {
            let whole = encode_all(std::slice::from_ref(&frame));
            let prefix = &whole[..cut_at.index(whole.len())];
            let (decoded, end) = read_frames([prefix], MAX);
            prop_assert!(decoded.is_empty());
            let expected = (!prefix.is_empty()).then_some(StreamError::Truncated);
            prop_assert_eq!(end, expected);
        }

        /// Back-to-back frames cut into arbitrary chunks decode as the same sequence.
        #[test]
        fn frame_sequences_survive_any_chunking(
            frames in prop::collection::vec(wire_frame(), 0..5),
            sizes in chunk_sizes(),
        ) {
            let bytes = encode_all(&frames);
            let (decoded, end) = read_frames(cut(&bytes, &sizes), MAX);
            prop_assert_eq!(decoded, frames);
            prop_assert_eq!(end, None);
        }

        /// A pipeline stream: `PipelineOpen` and appends, in any chunking.
        #[test]
        fn pipeline_round_trip(
            requests in prop::collection::vec(append_entries_request(), 0..5),
            sizes in chunk_sizes(),
        ) {
            let mut frames = vec![Frame::PipelineOpen];
            frames.extend(requests.iter().cloned().map(|r| Frame::Request(r.into())));
            let bytes = encode_all(&frames);
            let (read, end) = read_pipeline(cut(&bytes, &sizes), MAX);
            prop_assert_eq!(read, requests);
            prop_assert_eq!(end, None);
        }

        /// A snapshot data stream: the header names the transfer, and the data after it comes
        /// out byte-exact whatever the chunking.
        #[test]
        fn snapshot_header_round_trip(
            transfer_id in any::<u64>(),
            data in prop::collection::vec(any::<u8>(), 0..200),
            sizes in chunk_sizes(),
        ) {
            let mut bytes = encode_all(&[Frame::SnapshotData { transfer_id }]);
            bytes.extend_from_slice(&data);
            let mut chunks = cut(&bytes, &sizes).into_iter();
            let header = read_snapshot_header(&mut chunks, MAX).unwrap();
            prop_assert_eq!(header.transfer_id, transfer_id);
            let mut rest = header.leftover.to_vec();
            chunks.for_each(|chunk| rest.extend_from_slice(chunk));
            prop_assert_eq!(rest, data);
        }
    }

    #[test]
    fn a_time_before_the_epoch_fails_to_encode_and_leaves_the_buffer() {
        let mut log = Log::command(1, 1, Bytes::new());
        log.appended_at = Some(UNIX_EPOCH - Duration::from_nanos(1));
        let mut request = AppendEntriesRequest::heartbeat(RpcHeader::new("n1", "a"), 1);
        request.entries.push(log);
        let mut buf = BytesMut::from(&b"kept"[..]);
        let result = encode(&Frame::Request(request.into()), &mut buf, MAX);
        assert!(matches!(result, Err(CodecError::Encode(_))), "{result:?}");
        assert_eq!(&buf[..], b"kept");
    }

    /// Fuzzing finding 1, the input that crashed the `frame` target (the smallest entry count
    /// that did): an AppendEntries frame of 10 083 empty entries (60 513 bytes) grew the entry
    /// list past 10 082 x 104 bytes to a 2 MiB allocation, over the target's 1 MiB limit.
    /// Fixed by `MAX_ENTRIES_PER_APPEND`.
    #[test]
    fn the_frame_targets_amplification_input_stays_under_the_limit() {
        let body = body_of_empty_entries(10_083);
        let mut frame = BytesMut::from(&[0x01][..]);
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap().to_be_bytes());
        frame.extend_from_slice(&body);
        assert_eq!(frame.len(), 60_513);
        let (decoded, _) = read_frames([&frame[..]], MAX);
        if let Some(Frame::Request(Command::AppendEntries(request))) = decoded.first() {
            let held = request.entries.capacity() * size_of::<Log>();
            assert!(held <= MAX, "held {held} bytes of entries");
        }
    }

    #[test]
    fn a_pipeline_must_open_with_pipeline_open() {
        let bytes = encode_all(&[Frame::Response(Response::TimeoutNow(TimeoutNowResponse {
            header: RpcHeader::new("n1", "a"),
        }))]);
        let (read, end) = read_pipeline([&bytes[..]], MAX);
        assert!(read.is_empty());
        assert_eq!(end, Some(StreamError::Unexpected("Response")));
    }
}
