//! Arbitrary bytes as a stream of frames: decode until the decoder wants more bytes or
//! refuses them. Nothing may panic or allocate past the limit; "need more" and a header
//! refused consume nothing; every decoded frame re-encodes, no longer than it came, to bytes that
//! decode to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use quicraft::CodecError;
use quicraft::fuzzing::{decode_frame, encode_frame};
use quicraft_fuzz::{MAX, MAX_INPUT};

quicraft_fuzz::guard_allocations!();

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match decode_frame(&mut buf, MAX) {
            Ok(Some(frame)) => {
                let consumed = before - buf.len();
                let mut again = BytesMut::new();
                encode_frame(&frame, &mut again, MAX).expect("a decoded frame re-encodes");
                // postcard accepts over-long varints but writes the shortest form.
                assert!(again.len() <= consumed, "re-encoding grew the frame");
                let decoded = decode_frame(&mut again, MAX)
                    .expect("a re-encoded frame decodes")
                    .expect("a re-encoded frame is whole");
                assert_eq!(decoded, frame);
                assert!(again.is_empty(), "re-encoding left bytes over");
            }
            Ok(None) => {
                assert_eq!(buf.len(), before, "a partial frame consumed bytes");
                break;
            }
            Err(CodecError::UnknownKind(_) | CodecError::Oversize { .. }) => {
                // Refused at the header, before the body is awaited.
                assert_eq!(buf.len(), before, "a refused header consumed bytes");
                break;
            }
            // A malformed body has been taken off the buffer by then; the stream is unusable
            // after any error, so that is harmless.
            Err(_) => break,
        }
    }
});
