//! The wire codec (layer 3): frames as bytes, no I/O.
//!
//! A frame is `kind: u8 | length: u32 big-endian | body: length bytes`, the body a postcard
//! encoding of the message ([`Frame`], [`encode`]). The [`FrameAssembler`] decodes, from pieces
//! of exactly the sizes it asks for: a partial frame is `Ok(None)`, not an error, and a length
//! over the limit is refused before anything is allocated for it. `docs/PROTOCOL.md` is the full specification.

// The frame types, the encoder and the assembler are `pub` so that the `fuzzing` feature's
// bridge (`crate::fuzzing`) can hand the real ones to the fuzz targets; without that feature
// nothing outside the crate can name them.
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
mod assembler;
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
mod frame;

#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub use assembler::{FrameAssembler, Need};
#[cfg_attr(not(feature = "fuzzing"), allow(unreachable_pub))]
pub use frame::{Frame, SnapshotResume, encode};
pub(crate) use frame::{FrameKind, encode_message, request_body_len};

/// What is wrong with bytes that claim to be a frame.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CodecError {
    /// The kind byte names no frame this protocol version knows.
    #[error("unknown frame kind 0x{0:02x}")]
    UnknownKind(u8),
    /// The length prefix exceeds the configured maximum message size.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize {
        /// The length the frame declared.
        len: u64,
        /// The configured limit.
        max: usize,
    },
    /// The body does not decode as the message its kind names, or has bytes left over.
    #[error("malformed {kind} frame: {reason}")]
    Malformed {
        /// The frame's kind.
        kind: &'static str,
        /// What the decoder reported.
        reason: String,
    },
    /// A message could not be encoded (only an encoder bug or a message over the limit).
    #[error("cannot encode frame: {0}")]
    Encode(String),
}
