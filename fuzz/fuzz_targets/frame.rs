//! Arbitrary bytes as a stream of frames, fed to the production `FrameAssembler` in the pieces
//! it asks for, until it refuses them or they run out. Nothing may panic or allocate past the
//! limit; a bad header (unknown kind, oversize length) is refused by the piece that completes
//! it; every decoded frame re-encodes, no longer than it came, to bytes that decode to the
//! same frame.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use quicraft::CodecError;
use quicraft::fuzzing::{FrameAssembler, Need, encode, read_frames};
use quicraft_fuzz::{MAX, MAX_INPUT};

quicraft_fuzz::guard_allocations!();

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut frames = FrameAssembler::new(MAX);
    let mut rest = data;
    // Where the frame under way started in `data`.
    let mut start = 0;
    while !rest.is_empty() {
        let need = frames.need();
        let want = match need {
            Need::Header(want) => want,
            Need::Body { missing, .. } => missing,
        };
        let (piece, tail) = rest.split_at(want.min(rest.len()));
        rest = tail;
        match frames.push(Bytes::copy_from_slice(piece)) {
            Ok(Some(frame)) => {
                let consumed = data.len() - rest.len() - start;
                start = data.len() - rest.len();
                let mut again = BytesMut::new();
                encode(&frame, &mut again, MAX).expect("a decoded frame re-encodes");
                // postcard accepts over-long varints but writes the shortest form.
                assert!(again.len() <= consumed, "re-encoding grew the frame");
                let (decoded, end) = read_frames([&again[..]], MAX);
                assert_eq!(end, None, "a re-encoded frame does not decode");
                assert_eq!(decoded, [frame]);
            }
            Ok(None) => {}
            Err(CodecError::UnknownKind(_) | CodecError::Oversize { .. }) => {
                // Refused at the header, before the body is awaited.
                assert_eq!(need, Need::Header(piece.len()), "a header refused late");
                break;
            }
            // The stream is unusable after any error.
            Err(_) => break,
        }
    }
});
