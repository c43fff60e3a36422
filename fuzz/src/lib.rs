//! What the fuzz targets share: the decoders' size limit, an allocation guard, and the chunk
//! splitter that feeds a stream's bytes the way a QUIC stream might deliver them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The `max_message_size` the targets decode with (1 MiB; the transport's default is 16 MiB).
pub const MAX: usize = 1 << 20;

/// The largest single allocation a target may make: the configured maximum. A decoder that
/// sizes a buffer from a length it read would cross it.
pub const ALLOC_LIMIT: usize = MAX;

/// The longest input the targets decode (longer ones are skipped; libFuzzer's default
/// `-max_len` is 4096). The targets' own buffers (a copy of the input, a stream reader's buffer
/// that may double) then stay under [`ALLOC_LIMIT`], so only a decoder can cross it: one
/// allocation over the limit means more than 4 times amplification.
pub const MAX_INPUT: usize = MAX / 4;

/// The most heap a target may hold at once (as libFuzzer's `-malloc_limit_mb=64`).
pub const LIVE_LIMIT: usize = 64 << 20;

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// Set by the first refused allocation.
static TRIPPED: AtomicBool = AtomicBool::new(false);

/// The system allocator, refusing any allocation over [`ALLOC_LIMIT`] or that would take the
/// heap over [`LIVE_LIMIT`]. A refused allocation aborts the process ("memory allocation of N
/// bytes failed"), which libFuzzer reports as a crash with the input saved.
///
/// libFuzzer's own `-malloc_limit_mb` needs a sanitizer's malloc hooks; this guard also works
/// with `--sanitizer none`, the only mode of the stable toolchain.
pub struct GuardedAlloc;

impl GuardedAlloc {
    /// Whether an allocation of `size` bytes that grows the heap by `growth` is allowed, and
    /// if so counts the growth. Once a panic is under way, or an allocation has been refused
    /// (the process is aborting), everything is allowed: printing the backtrace reads debug
    /// info in large buffers, and the first failure is the report that matters.
    fn admit(size: usize, growth: usize) -> bool {
        let live = LIVE.fetch_add(growth, Ordering::Relaxed) + growth;
        if (size > ALLOC_LIMIT || live > LIVE_LIMIT)
            && !std::thread::panicking()
            && !TRIPPED.swap(true, Ordering::Relaxed)
        {
            LIVE.fetch_sub(growth, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn release(bytes: usize) {
        LIVE.fetch_sub(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` with the same arguments; the guard only refuses
// (returns null, which `GlobalAlloc` allows) and counts sizes.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let ptr = unsafe { System.alloc(layout) };
        if ptr.is_null() {
            Self::release(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::admit(layout.size(), layout.size()) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if ptr.is_null() {
            Self::release(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) };
        Self::release(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size();
        let growth = new_size.saturating_sub(old);
        if !Self::admit(new_size, growth) {
            return std::ptr::null_mut();
        }
        // SAFETY: forwarded as given.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if new.is_null() {
            Self::release(growth);
        } else {
            Self::release(old.saturating_sub(new_size));
        }
        new
    }
}

/// Installs [`GuardedAlloc`] as the target's global allocator.
#[macro_export]
macro_rules! guard_allocations {
    () => {
        #[global_allocator]
        static ALLOC: $crate::GuardedAlloc = $crate::GuardedAlloc;
    };
}

/// Splits off the first two bytes of a fuzz input as the seed of a chunking, and returns the
/// seed and the stream bytes.
pub fn split_seed(data: &[u8]) -> Option<([u8; 2], &[u8])> {
    match data {
        [a, b, rest @ ..] => Some(([*a, *b], rest)),
        _ => None,
    }
}

/// Cuts `stream` into consecutive chunks (some empty) whose sizes follow from `seed`: the
/// first byte picks the largest chunk (1 to 256 bytes, so frames straddle chunk boundaries at
/// every offset), the second seeds the sizes. The chunks concatenate to `stream`.
pub fn chunks(seed: [u8; 2], stream: &[u8]) -> Vec<&[u8]> {
    let largest = usize::from(seed[0]) + 1;
    let mut state = u32::from(seed[1]) | 0x9e37_0000;
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        // xorshift32
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        // One chunk in 16 is empty: a read that returned nothing new must not matter.
        let size = if state % 16 == 0 {
            0
        } else {
            (state as usize >> 4) % largest + 1
        };
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        out.push(chunk);
        rest = tail;
    }
    out
}

/// Where a prefix of `stream` ends, chosen by `seed` (for the truncation checks).
pub fn cut(seed: [u8; 2], stream: &[u8]) -> usize {
    if stream.is_empty() {
        0
    } else {
        usize::from(u16::from_le_bytes(seed)) % (stream.len() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_to_the_stream() {
        let stream: Vec<u8> = (0..=255).cycle().take(5000).collect();
        for a in [0, 1, 7, 255] {
            for b in [0, 3, 200] {
                let joined: Vec<u8> = chunks([a, b], &stream).concat();
                assert_eq!(joined, stream);
            }
        }
    }
}
