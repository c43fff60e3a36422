//! The protocol's limits on a request, checked the same way by every transport before anything
//! is sent.

use crate::codec::{self, CodecError};
use crate::command::{AppendEntriesRequest, Command, MAX_ENTRIES_PER_APPEND, RpcKind};
use crate::error::{Error, Limit};

/// The largest encoded message both transports send or accept by default: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 16 * 1024 * 1024;

/// Refuses an AppendEntries of more than [`MAX_ENTRIES_PER_APPEND`] entries.
pub(crate) fn check_entries(request: &AppendEntriesRequest) -> Result<(), Error> {
    let actual = request.entries.len();
    if actual > MAX_ENTRIES_PER_APPEND {
        return Err(Error::LimitExceeded {
            rpc: RpcKind::AppendEntries,
            limit: Limit::EntriesPerAppend,
            max: MAX_ENTRIES_PER_APPEND as u64,
            actual: actual as u64,
        });
    }
    Ok(())
}

/// The caller's error for a request of kind `rpc` that the codec refused to encode: a body
/// over the size limit is [`Error::LimitExceeded`], anything else a local encoding failure.
pub(crate) fn encode_error(rpc: RpcKind, error: CodecError) -> Error {
    match error {
        CodecError::Oversize { len, max } => Error::LimitExceeded {
            rpc,
            limit: Limit::MessageSize,
            max: max as u64,
            actual: len,
        },
        other => Error::protocol_by(format!("{rpc} not sent"), crate::error::cause(other)),
    }
}

/// Checks `command` against every limit: its entries, then its encoded size against
/// `max_message_size` (measured without encoding it).
pub(crate) fn check_request(command: &Command, max_message_size: usize) -> Result<(), Error> {
    if let Command::AppendEntries(request) = command {
        check_entries(request)?;
    }
    let rpc = command.kind();
    let len = codec::request_body_len(command).map_err(|e| encode_error(rpc, e))?;
    if len > max_message_size {
        return Err(encode_error(
            rpc,
            CodecError::Oversize {
                len: len as u64,
                max: max_message_size,
            },
        ));
    }
    Ok(())
}
