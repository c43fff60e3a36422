//! The wire as a raw client writes it (`docs/PROTOCOL.md` §5): frame kinds and framing.

use quicraft::{RequestVoteRequest, RpcHeader};

pub const APPEND_ENTRIES: u8 = 0x01;
pub const REQUEST_VOTE: u8 = 0x02;
pub const INSTALL_SNAPSHOT: u8 = 0x04;
pub const PIPELINE_OPEN: u8 = 0x06;
pub const SNAPSHOT_DATA: u8 = 0x07;
pub const RESPONSE: u8 = 0x80;
pub const ERROR: u8 = 0x81;

/// `kind | len u32 BE | body`.
pub fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(body.len()).expect("a test frame fits a u32 length");
    let mut out = vec![kind];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A RequestVote from the node `id` (at a placeholder address), as a raw client sends it.
pub fn vote(id: &str, term: u64) -> RequestVoteRequest {
    RequestVoteRequest {
        header: RpcHeader::new(id, "127.0.0.1:1"),
        term,
        last_log_index: 10,
        last_log_term: 2,
        leadership_transfer: false,
    }
}
