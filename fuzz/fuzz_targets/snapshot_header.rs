//! The start of a snapshot data stream (a `SnapshotData` frame, then raw bytes), fed in
//! chunks: the first two input bytes choose the chunk sizes, the rest is the stream. However
//! the bytes are cut, the header read is the same, and the data after it (leftover plus the
//! chunks not consumed) is exactly the bytes after the header.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicraft::fuzzing::read_snapshot_header;
use quicraft_fuzz::{MAX, MAX_INPUT, chunks, split_seed};

quicraft_fuzz::guard_allocations!();

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((seed, stream)) = split_seed(data) else {
        return;
    };
    let whole = read_snapshot_header(&mut [stream].into_iter(), MAX);
    let pieces = chunks(seed, stream);
    let mut rest = pieces.iter().copied();
    let chunked = read_snapshot_header(&mut rest, MAX);
    match (whole, chunked) {
        (Ok(whole), Ok(chunked)) => {
            assert_eq!(chunked.transfer_id, whole.transfer_id);
            assert!(
                stream.ends_with(&whole.leftover),
                "leftover is not the stream's tail"
            );
            let mut data = chunked.leftover.to_vec();
            rest.for_each(|chunk| data.extend_from_slice(chunk));
            assert_eq!(
                data, whole.leftover,
                "chunking changed the data after the header"
            );
        }
        (Err(whole), Err(chunked)) => assert_eq!(chunked, whole),
        (whole, chunked) => panic!("whole: {whole:?}, chunked: {chunked:?}"),
    }
});
