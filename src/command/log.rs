//! Replicated log entries.

use std::time::SystemTime;

use std::cell::RefCell;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize};

/// What a log entry holds (hashicorp/raft's `LogType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LogType {
    /// A command for the state machine.
    Command,
    /// A no-op, written by a new leader to commit entries of earlier terms.
    Noop,
    /// A barrier: applied once every earlier entry is applied.
    Barrier,
    /// A cluster membership configuration.
    Configuration,
}

/// One replicated log entry (hashicorp/raft's `Log`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Log {
    /// Position in the log.
    pub index: u64,
    /// Election term in which the entry was created.
    pub term: u64,
    /// What the entry holds.
    pub log_type: LogType,
    /// The payload, opaque to the transport.
    #[serde(deserialize_with = "payload")]
    pub data: Bytes,
    /// Extra metadata for the engine or application, opaque to the transport.
    #[serde(deserialize_with = "payload")]
    pub extensions: Bytes,
    /// When the leader appended the entry, if it recorded that.
    pub appended_at: Option<SystemTime>,
}

impl Log {
    /// A [`LogType::Command`] entry with `data` and no extensions.
    pub fn command(index: u64, term: u64, data: impl Into<Bytes>) -> Self {
        Self {
            index,
            term,
            log_type: LogType::Command,
            data: data.into(),
            extensions: Bytes::new(),
            appended_at: None,
        }
    }
}

thread_local! {
    /// The frame being decoded on this thread, if any (see [`decoding_from`]).
    static SOURCE: RefCell<Option<Bytes>> = const { RefCell::new(None) };
}

/// Runs `decode` with `frame` as the buffer entry payloads are decoded from: a [`Log`]'s data
/// and extensions borrowed from it become slices of it (sharing its memory) instead of copies.
/// A frame's payloads then cost no copy, and the frame is held until the last of its entries
/// is dropped.
pub(crate) fn decoding_from<R>(frame: &Bytes, decode: impl FnOnce() -> R) -> R {
    /// Puts back what was there before, even if `decode` panics.
    struct Restore(Option<Bytes>);

    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            SOURCE.with(|source| *source.borrow_mut() = previous);
        }
    }

    let previous = SOURCE.with(|source| source.borrow_mut().replace(frame.clone()));
    let _restore = Restore(previous);
    decode()
}

/// A payload: a slice of the frame being decoded when the bytes are borrowed from it, else a
/// copy (other formats, other buffers).
fn payload<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    struct Payload;

    impl<'de> serde::de::Visitor<'de> for Payload {
        type Value = Bytes;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }

        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Bytes, E> {
            if v.is_empty() {
                return Ok(Bytes::new());
            }
            Ok(SOURCE.with(|source| match &*source.borrow() {
                Some(frame) if contains(frame, v) => frame.slice_ref(v),
                _ => Bytes::copy_from_slice(v),
            }))
        }

        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Bytes, E> {
            Ok(Bytes::copy_from_slice(v))
        }

        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Bytes, E> {
            Ok(Bytes::from(v))
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Bytes, A::Error> {
            // Formats without byte strings (JSON) send a sequence of numbers; the hint is the
            // peer's word, so it only sizes the first allocation, capped.
            let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(byte) = seq.next_element()? {
                bytes.push(byte);
            }
            Ok(Bytes::from(bytes))
        }
    }

    deserializer.deserialize_bytes(Payload)
}

/// Whether `part` lies inside `whole`'s memory (what `Bytes::slice_ref` requires).
fn contains(whole: &Bytes, part: &[u8]) -> bool {
    let start = whole.as_ptr() as usize;
    let part_start = part.as_ptr() as usize;
    part_start >= start && part_start + part.len() <= start + whole.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_decoded_from_a_frame_share_its_memory() {
        let entry = Log::command(7, 2, vec![0xab; 1000]);
        let frame = Bytes::from(postcard::to_stdvec(&entry).unwrap());
        let decoded: Log = decoding_from(&frame, || postcard::from_bytes(&frame)).unwrap();
        assert_eq!(decoded, entry);
        assert!(
            contains(&frame, &decoded.data),
            "a slice of the frame, not a copy"
        );
        // Outside a frame's decoding: a copy.
        let copied: Log = postcard::from_bytes(&frame).unwrap();
        assert_eq!(copied, entry);
        assert!(!contains(&frame, &copied.data));
    }
}
