//! Snapshot data generated as it is read, so a test can stream gigabytes without holding
//! them and the receiver can check every byte.

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncSeek, ReadBuf};

/// The length of the random block the pattern repeats.
pub const BLOCK: usize = 64 * 1024;

/// One 64 KiB block of pseudo-random bytes, shared by every [`Pattern`].
fn block() -> &'static [u8] {
    static BLOCK_BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BLOCK_BYTES.get_or_init(|| {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..BLOCK)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
            })
            .collect()
    })
}

/// `len` bytes of snapshot data, generated as read: the shared random block, each copy's
/// first 8 bytes replaced by its index xor `seed`, so a lost, repeated or reordered block
/// changes the data (and its hash). Holds no buffer of its own.
pub struct Pattern {
    seed: u64,
    pos: u64,
    len: u64,
}

impl Pattern {
    pub fn new(seed: u64, len: u64) -> Self {
        Self { seed, pos: 0, len }
    }

    /// The next `out.len()` bytes; past the end the pattern simply goes on (a reader that
    /// must stop at `len` asks for no more, as [`AsyncRead`] does).
    pub fn fill(&mut self, out: &mut [u8]) {
        let mut done = 0;
        while done < out.len() {
            let offset = (self.pos % BLOCK as u64) as usize;
            let n = if offset < 8 {
                let stamp = ((self.pos / BLOCK as u64) ^ self.seed).to_le_bytes();
                let n = (8 - offset).min(out.len() - done);
                out[done..done + n].copy_from_slice(&stamp[offset..offset + n]);
                n
            } else {
                let n = (BLOCK - offset).min(out.len() - done);
                out[done..done + n].copy_from_slice(&block()[offset..offset + n]);
                n
            };
            done += n;
            self.pos += n as u64;
        }
    }
}

impl AsyncSeek for Pattern {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        let target = match position {
            io::SeekFrom::Start(at) => Some(at),
            io::SeekFrom::Current(delta) => self.pos.checked_add_signed(delta),
            io::SeekFrom::End(delta) => self.len.checked_add_signed(delta),
        };
        self.pos = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the pattern's start",
            )
        })?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

/// FNV-1a over a byte stream, fed in pieces of any size (the same bytes give the same hash
/// however they are cut).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// The hash of the first `len` bytes of `Pattern::new(seed, _)`.
    pub fn of_pattern(seed: u64, len: u64) -> Self {
        let mut pattern = Pattern::new(seed, len);
        let mut hash = Self::default();
        let mut buf = vec![0u8; BLOCK];
        let mut left = len;
        while left > 0 {
            let n = (left as usize).min(BLOCK);
            pattern.fill(&mut buf[..n]);
            hash.update(&buf[..n]);
            left -= n as u64;
        }
        hash
    }
}

impl AsyncRead for Pattern {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = usize::try_from(self.len.saturating_sub(self.pos)).unwrap_or(usize::MAX);
        let n = buf.remaining().min(left);
        let out = buf.initialize_unfilled_to(n);
        self.fill(out);
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}
