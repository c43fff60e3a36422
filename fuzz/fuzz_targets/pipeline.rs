//! A pipeline stream (`PipelineOpen`, then `AppendEntries` frames) fed in chunks: the first
//! two input bytes choose the chunk sizes, the rest is the stream. However the bytes are cut,
//! the requests read and the way the stream ends are those of reading it in one piece; and a
//! stream cut short is at worst truncated, never refused for bytes the whole stream accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quicraft::fuzzing::{StreamError, read_frames, read_pipeline};
use quicraft_fuzz::{MAX, MAX_INPUT, chunks, cut, split_seed};

quicraft_fuzz::guard_allocations!();

fuzz_target!(|data: &[u8]| {
    if data.len() > MAX_INPUT {
        return;
    }
    let Some((seed, stream)) = split_seed(data) else {
        return;
    };
    let pieces = chunks(seed, stream);

    let whole = read_pipeline([stream], MAX);
    let chunked = read_pipeline(pieces.iter().copied(), MAX);
    assert_eq!(chunked, whole, "chunking changed what the pipeline read");

    let (frames, end) = read_frames([stream], MAX);
    let (chunked_frames, chunked_end) = read_frames(pieces.iter().copied(), MAX);
    assert_eq!(chunked_frames, frames, "chunking changed the frames read");
    assert_eq!(chunked_end, end, "chunking changed how the stream ended");

    // A prefix of the stream: the frames it holds whole, then either a clean end, a partial
    // frame (truncated), or the very error the whole stream reports there.
    let prefix = &stream[..cut(seed, stream)];
    let (short, short_end) = read_frames(chunks(seed, prefix), MAX);
    assert!(short.len() <= frames.len());
    assert_eq!(
        short,
        frames[..short.len()],
        "a prefix decoded other frames"
    );
    match short_end {
        None => assert!(short.len() == frames.len() || prefix.len() < stream.len()),
        Some(StreamError::Truncated) => assert!(prefix.len() < stream.len() || end.is_some()),
        Some(e) => {
            assert_eq!(
                short.len(),
                frames.len(),
                "a partial frame was refused: {e:?}"
            );
            assert_eq!(Some(e), end, "a prefix was refused for another reason");
        }
    }
});
