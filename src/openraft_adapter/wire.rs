//! How openraft's messages map onto quicraft's hashicorp-shaped commands, both ways.
//!
//! Every hashicorp field is filled as faithfully as openraft's message allows (terms, indexes,
//! log types, commit index), so logs, metrics and tools that read quicraft's commands see the
//! real Raft positions. What those fields cannot express travels, postcard-encoded, in
//! [`RpcHeader::extensions`]:
//!
//! | RPC | `header.extensions` of the request | of the response |
//! | --- | --- | --- |
//! | AppendEntries | the vote, `prev_log_id` and `leader_commit` (with their `None`-ness) | openraft's `AppendEntriesResponse` |
//! | RequestVote | openraft's `VoteRequest` | openraft's `VoteResponse` |
//! | InstallSnapshot | the vote, the snapshot's `last_log_id` and id (the membership is in `configuration`) | openraft's `SnapshotResponse` |
//!
//! Each openraft log entry is one [`Log`] whose `data` is the postcard-encoded entry.

use bytes::Bytes;
use openraft::entry::RaftPayload;
use openraft::error::Fatal;
use openraft::raft::{
    AppendEntriesRequest as OrAppendRequest, AppendEntriesResponse as OrAppendResponse,
    SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{
    LogId, NodeId, RaftLogId, RaftTypeConfig, SnapshotId, SnapshotMeta, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};

use crate::command::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    Log, LogType, RequestVoteRequest, RequestVoteResponse, RpcHeader,
};
use crate::error::{ErrorCode, RemoteError};

/// The [`RemoteError`] code with which a node answers when its `openraft::Raft` returned an
/// error: the error's [`details`](RemoteError::details) are the encoded openraft error, so the
/// caller can rebuild it as an `RPCError::RemoteError` (bytes `O`, `R`: 0x4F52).
pub const OPENRAFT_ERROR: ErrorCode = ErrorCode(0x4F52);

/// Version of the snapshot format sent in `InstallSnapshotRequest::snapshot_version`.
pub(crate) const SNAPSHOT_VERSION: u32 = 1;

/// An openraft message that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// postcard failed to encode or decode a part of a message.
    #[error("cannot encode or decode the {what} of an openraft message: {source}")]
    Codec {
        /// Which part.
        what: &'static str,
        /// postcard's error.
        #[source]
        source: postcard::Error,
    },
    /// A log entry's quicraft index disagrees with the openraft entry it carries.
    #[error("log entry at index {index} carries openraft entry {entry_index}")]
    EntryMismatch {
        /// `Log::index`.
        index: u64,
        /// The index in the decoded entry.
        entry_index: u64,
    },
    /// An InstallSnapshot arrived without its data stream.
    #[error("InstallSnapshot without snapshot data")]
    MissingSnapshotData,
    /// openraft asked for the chunked `install_snapshot`, which this adapter replaces by
    /// `full_snapshot` over a snapshot stream.
    #[error("chunked install_snapshot is not used: snapshots travel whole on a snapshot stream")]
    ChunkedSnapshot,
}

fn encode<T: Serialize>(what: &'static str, value: &T) -> Result<Bytes, WireError> {
    postcard::to_stdvec(value)
        .map(Bytes::from)
        .map_err(|source| WireError::Codec { what, source })
}

fn decode<'a, T: Deserialize<'a>>(what: &'static str, bytes: &'a [u8]) -> Result<T, WireError> {
    postcard::from_bytes(bytes).map_err(|source| WireError::Codec { what, source })
}

fn term_of<NID: NodeId>(log_id: Option<&LogId<NID>>) -> u64 {
    log_id.map_or(0, |id| id.leader_id.term)
}

fn index_of<NID: NodeId>(log_id: Option<&LogId<NID>>) -> u64 {
    log_id.map_or(0, |id| id.index)
}

/// What AppendEntries' hashicorp fields cannot express.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct AppendExtensions<NID: NodeId> {
    vote: Vote<NID>,
    prev_log_id: Option<LogId<NID>>,
    leader_commit: Option<LogId<NID>>,
}

/// What InstallSnapshot's hashicorp fields cannot express.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
struct SnapshotExtensions<NID: NodeId> {
    vote: Vote<NID>,
    last_log_id: Option<LogId<NID>>,
    snapshot_id: SnapshotId,
}

/// openraft's AppendEntries as quicraft's, sent with `header`.
pub(crate) fn encode_append_request<C: RaftTypeConfig>(
    header: RpcHeader,
    request: &OrAppendRequest<C>,
) -> Result<AppendEntriesRequest, WireError> {
    let entries = request
        .entries
        .iter()
        .map(|entry| {
            let log_id = entry.get_log_id();
            let log_type = if entry.is_blank() {
                LogType::Noop
            } else if entry.get_membership().is_some() {
                LogType::Configuration
            } else {
                LogType::Command
            };
            Ok(Log {
                index: log_id.index,
                term: log_id.leader_id.term,
                log_type,
                data: encode("log entry", entry)?,
                extensions: Bytes::new(),
                appended_at: None,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    let extensions = AppendExtensions {
        vote: request.vote.clone(),
        prev_log_id: request.prev_log_id.clone(),
        leader_commit: request.leader_commit.clone(),
    };
    Ok(AppendEntriesRequest {
        header: header.with_extensions(encode("vote and log ids", &extensions)?),
        term: request.vote.leader_id().get_term(),
        prev_log_entry: index_of(request.prev_log_id.as_ref()),
        prev_log_term: term_of(request.prev_log_id.as_ref()),
        entries,
        leader_commit_index: index_of(request.leader_commit.as_ref()),
    })
}

/// quicraft's AppendEntries back as openraft's.
pub(crate) fn decode_append_request<C: RaftTypeConfig>(
    request: &AppendEntriesRequest,
) -> Result<OrAppendRequest<C>, WireError> {
    let ext: AppendExtensions<C::NodeId> = decode("vote and log ids", &request.header.extensions)?;
    let entries = request
        .entries
        .iter()
        .map(|log| {
            let entry: C::Entry = decode("log entry", &log.data)?;
            let entry_index = entry.get_log_id().index;
            if entry_index != log.index {
                return Err(WireError::EntryMismatch {
                    index: log.index,
                    entry_index,
                });
            }
            Ok(entry)
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(OrAppendRequest {
        vote: ext.vote,
        prev_log_id: ext.prev_log_id,
        entries,
        leader_commit: ext.leader_commit,
    })
}

/// The index of the last entry an AppendEntries carries (or its `prev_log_id`): where the
/// follower's log ends when it succeeds, the hint in `AppendEntriesResponse::last_log`.
pub(crate) fn append_last_index<C: RaftTypeConfig>(request: &OrAppendRequest<C>) -> u64 {
    request.entries.last().map_or_else(
        || index_of(request.prev_log_id.as_ref()),
        |entry| entry.get_log_id().index,
    )
}

/// openraft's AppendEntries answer as quicraft's; `request_term` and `last_index` are those of
/// the request it answers.
pub(crate) fn encode_append_response<NID: NodeId>(
    header: RpcHeader,
    request_term: u64,
    last_index: u64,
    response: &OrAppendResponse<NID>,
) -> Result<AppendEntriesResponse, WireError> {
    let (term, last_log, success) = match response {
        OrAppendResponse::Success => (request_term, last_index, true),
        OrAppendResponse::PartialSuccess(matching) => {
            (request_term, index_of(matching.as_ref()), true)
        }
        OrAppendResponse::Conflict => (request_term, 0, false),
        OrAppendResponse::HigherVote(vote) => (vote.leader_id().get_term(), 0, false),
    };
    Ok(AppendEntriesResponse {
        header: header.with_extensions(encode("append response", response)?),
        term,
        last_log,
        success,
        // A log mismatch is not a failure of the peer: the leader should just step back.
        no_retry_backoff: matches!(response, OrAppendResponse::Conflict),
    })
}

/// quicraft's AppendEntries answer back as openraft's.
pub(crate) fn decode_append_response<NID: NodeId>(
    response: &AppendEntriesResponse,
) -> Result<OrAppendResponse<NID>, WireError> {
    decode("append response", &response.header.extensions)
}

/// openraft's vote request as quicraft's RequestVote.
pub(crate) fn encode_vote_request<NID: NodeId>(
    header: RpcHeader,
    request: &VoteRequest<NID>,
) -> Result<RequestVoteRequest, WireError> {
    Ok(RequestVoteRequest {
        header: header.with_extensions(encode("vote request", request)?),
        term: request.vote.leader_id().get_term(),
        last_log_index: index_of(request.last_log_id.as_ref()),
        last_log_term: term_of(request.last_log_id.as_ref()),
        leadership_transfer: false,
    })
}

/// quicraft's RequestVote back as openraft's vote request.
pub(crate) fn decode_vote_request<NID: NodeId>(
    request: &RequestVoteRequest,
) -> Result<VoteRequest<NID>, WireError> {
    decode("vote request", &request.header.extensions)
}

/// openraft's vote answer as quicraft's.
pub(crate) fn encode_vote_response<NID: NodeId>(
    header: RpcHeader,
    response: &VoteResponse<NID>,
) -> Result<RequestVoteResponse, WireError> {
    Ok(RequestVoteResponse {
        header: header.with_extensions(encode("vote response", response)?),
        term: response.vote.leader_id().get_term(),
        granted: response.vote_granted,
    })
}

/// quicraft's RequestVote answer back as openraft's.
pub(crate) fn decode_vote_response<NID: NodeId>(
    response: &RequestVoteResponse,
) -> Result<VoteResponse<NID>, WireError> {
    decode("vote response", &response.header.extensions)
}

/// The InstallSnapshot offering a snapshot of `size` bytes described by `meta`, sent by the
/// leader holding `vote`.
pub(crate) fn encode_snapshot_request<C: RaftTypeConfig>(
    header: RpcHeader,
    vote: &Vote<C::NodeId>,
    meta: &SnapshotMeta<C::NodeId, C::Node>,
    size: u64,
) -> Result<InstallSnapshotRequest, WireError> {
    let extensions = SnapshotExtensions {
        vote: vote.clone(),
        last_log_id: meta.last_log_id.clone(),
        snapshot_id: meta.snapshot_id.clone(),
    };
    Ok(InstallSnapshotRequest {
        header: header.with_extensions(encode("snapshot vote and id", &extensions)?),
        snapshot_version: SNAPSHOT_VERSION,
        term: vote.leader_id().get_term(),
        last_log_index: index_of(meta.last_log_id.as_ref()),
        last_log_term: term_of(meta.last_log_id.as_ref()),
        configuration: encode("snapshot membership", &meta.last_membership)?,
        configuration_index: index_of(meta.last_membership.log_id().as_ref()),
        size,
    })
}

/// What an InstallSnapshot offers: the leader's vote and the snapshot's meta.
pub(crate) type SnapshotOffer<C> = (
    Vote<<C as RaftTypeConfig>::NodeId>,
    SnapshotMeta<<C as RaftTypeConfig>::NodeId, <C as RaftTypeConfig>::Node>,
);

/// The leader's vote and the snapshot's meta from an InstallSnapshot.
pub(crate) fn decode_snapshot_request<C: RaftTypeConfig>(
    request: &InstallSnapshotRequest,
) -> Result<SnapshotOffer<C>, WireError> {
    let ext: SnapshotExtensions<C::NodeId> =
        decode("snapshot vote and id", &request.header.extensions)?;
    let last_membership: StoredMembership<C::NodeId, C::Node> =
        decode("snapshot membership", &request.configuration)?;
    let meta = SnapshotMeta {
        last_log_id: ext.last_log_id,
        last_membership,
        snapshot_id: ext.snapshot_id,
    };
    Ok((ext.vote, meta))
}

/// openraft's snapshot answer as quicraft's; `installed` says whether the follower took it.
pub(crate) fn encode_snapshot_response<NID: NodeId>(
    header: RpcHeader,
    response: &SnapshotResponse<NID>,
    installed: bool,
) -> Result<InstallSnapshotResponse, WireError> {
    Ok(InstallSnapshotResponse {
        header: header.with_extensions(encode("snapshot response", response)?),
        term: response.vote.leader_id().get_term(),
        success: installed,
    })
}

/// quicraft's InstallSnapshot answer back as openraft's.
pub(crate) fn decode_snapshot_response<NID: NodeId>(
    response: &InstallSnapshotResponse,
) -> Result<SnapshotResponse<NID>, WireError> {
    decode("snapshot response", &response.header.extensions)
}

/// The error a node answers with when its `Raft` failed: code [`OPENRAFT_ERROR`], the error's
/// text as the message, and the error itself, postcard-encoded, as the details.
pub(crate) fn encode_fatal<NID: NodeId>(fatal: &Fatal<NID>) -> RemoteError {
    let error = RemoteError::new(OPENRAFT_ERROR, fatal.to_string());
    match postcard::to_stdvec(fatal) {
        Ok(bytes) => error.with_details(bytes),
        // Not decodable then: the caller sees a plain handler error with the text.
        Err(_) => RemoteError::handler(fatal.to_string()),
    }
}

/// The openraft error in a remote error of code [`OPENRAFT_ERROR`], if it carries one.
pub(crate) fn decode_fatal<NID: NodeId>(error: &RemoteError) -> Option<Fatal<NID>> {
    if error.code != OPENRAFT_ERROR {
        return None;
    }
    postcard::from_bytes(error.details.as_ref()?).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use openraft::{BasicNode, CommittedLeaderId, Entry, EntryPayload, Membership};

    use super::*;
    use crate::openraft_adapter::mem::{KvRequest, KvTypeConfig};

    type C = KvTypeConfig;

    fn header() -> RpcHeader {
        RpcHeader::new("1", "127.0.0.1:7001")
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId<u64> {
        LogId::new(CommittedLeaderId::new(term, node), index)
    }

    fn membership() -> Membership<u64, BasicNode> {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|id| (id, BasicNode::new(format!("127.0.0.1:700{id}"))))
            .collect();
        Membership::new(vec![nodes.keys().copied().collect()], nodes)
    }

    fn entries() -> Vec<Entry<C>> {
        vec![
            Entry {
                log_id: log_id(2, 1, 5),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 1, 6),
                payload: EntryPayload::Membership(membership()),
            },
            Entry {
                log_id: log_id(2, 1, 7),
                payload: EntryPayload::Normal(KvRequest::Put {
                    key: "k".into(),
                    value: "v".into(),
                }),
            },
        ]
    }

    #[test]
    fn append_request_round_trips_and_fills_hashicorp_fields() {
        let mut vote = Vote::new(2, 1);
        vote.commit();
        let request = OrAppendRequest::<C> {
            vote,
            prev_log_id: Some(log_id(1, 3, 4)),
            entries: entries(),
            leader_commit: Some(log_id(2, 1, 5)),
        };
        let wire = encode_append_request(header(), &request).unwrap();
        assert_eq!(wire.term, 2);
        assert_eq!((wire.prev_log_entry, wire.prev_log_term), (4, 1));
        assert_eq!(wire.leader_commit_index, 5);
        let shape: Vec<_> = wire
            .entries
            .iter()
            .map(|l| (l.index, l.term, l.log_type))
            .collect();
        assert_eq!(
            shape,
            vec![
                (5, 2, LogType::Noop),
                (6, 2, LogType::Configuration),
                (7, 2, LogType::Command)
            ]
        );
        // Through the real wire codec too, as a peer would receive it.
        let bytes = postcard::to_stdvec(&wire).unwrap();
        let received: AppendEntriesRequest = postcard::from_bytes(&bytes).unwrap();
        let back = decode_append_request::<C>(&received).unwrap();
        assert_eq!(back.vote, request.vote);
        assert_eq!(back.prev_log_id, request.prev_log_id);
        assert_eq!(back.leader_commit, request.leader_commit);
        assert_eq!(back.entries, request.entries);
        assert_eq!(append_last_index(&request), 7);
    }

    #[test]
    fn append_request_keeps_none_apart_from_zero() {
        let request = OrAppendRequest::<C> {
            vote: Vote::new(1, 2),
            prev_log_id: None,
            entries: vec![],
            leader_commit: None,
        };
        let wire = encode_append_request(header(), &request).unwrap();
        assert!(
            wire.is_heartbeat(),
            "an empty first append looks like a heartbeat"
        );
        let back = decode_append_request::<C>(&wire).unwrap();
        assert_eq!(back.prev_log_id, None);
        assert_eq!(back.leader_commit, None);
        assert_eq!(back.vote, request.vote);
    }

    #[test]
    fn append_request_with_a_mismatched_entry_is_refused() {
        let request = OrAppendRequest::<C> {
            vote: Vote::new(1, 2),
            prev_log_id: None,
            entries: entries(),
            leader_commit: None,
        };
        let mut wire = encode_append_request(header(), &request).unwrap();
        wire.entries[0].index = 99;
        assert!(matches!(
            decode_append_request::<C>(&wire),
            Err(WireError::EntryMismatch {
                index: 99,
                entry_index: 5
            })
        ));
        wire.header.extensions = Bytes::from_static(&[0xff]);
        assert!(matches!(
            decode_append_request::<C>(&wire),
            Err(WireError::Codec { .. })
        ));
    }

    #[test]
    fn append_responses_round_trip() {
        let cases = [
            (OrAppendResponse::Success, 2, 9, true),
            (
                OrAppendResponse::PartialSuccess(Some(log_id(2, 1, 8))),
                2,
                8,
                true,
            ),
            (OrAppendResponse::Conflict, 2, 0, false),
            (OrAppendResponse::HigherVote(Vote::new(5, 3)), 5, 0, false),
        ];
        for (response, term, last_log, success) in cases {
            let wire = encode_append_response(header(), 2, 9, &response).unwrap();
            assert_eq!(
                (wire.term, wire.last_log, wire.success),
                (term, last_log, success)
            );
            assert_eq!(
                wire.no_retry_backoff,
                matches!(response, OrAppendResponse::Conflict)
            );
            assert_eq!(decode_append_response::<u64>(&wire).unwrap(), response);
        }
    }

    #[test]
    fn votes_round_trip() {
        let request = VoteRequest::new(Vote::new(4, 2), Some(log_id(3, 1, 10)));
        let wire = encode_vote_request(header(), &request).unwrap();
        assert_eq!(
            (wire.term, wire.last_log_index, wire.last_log_term),
            (4, 10, 3)
        );
        assert_eq!(decode_vote_request::<u64>(&wire).unwrap(), request);

        let empty = VoteRequest::new(Vote::new(1, 2), None);
        let wire = encode_vote_request(header(), &empty).unwrap();
        assert_eq!(decode_vote_request::<u64>(&wire).unwrap(), empty);

        let response = VoteResponse::new(Vote::new(4, 2), Some(log_id(3, 1, 9)), true);
        let wire = encode_vote_response(header(), &response).unwrap();
        assert_eq!((wire.term, wire.granted), (4, true));
        assert_eq!(decode_vote_response::<u64>(&wire).unwrap(), response);
    }

    #[test]
    fn snapshot_request_round_trips() {
        let mut vote = Vote::new(3, 1);
        vote.commit();
        let meta = SnapshotMeta::<u64, BasicNode> {
            last_log_id: Some(log_id(3, 1, 42)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 1)), membership()),
            snapshot_id: "3-42-1".to_string(),
        };
        let wire = encode_snapshot_request::<C>(header(), &vote, &meta, 1234).unwrap();
        assert_eq!(
            (
                wire.term,
                wire.last_log_index,
                wire.last_log_term,
                wire.configuration_index,
                wire.size
            ),
            (3, 42, 3, 1, 1234)
        );
        let (back_vote, back_meta) = decode_snapshot_request::<C>(&wire).unwrap();
        assert_eq!(back_vote, vote);
        assert_eq!(back_meta, meta);

        let response = SnapshotResponse::new(vote);
        let wire = encode_snapshot_response(header(), &response, true).unwrap();
        assert!(wire.success);
        assert_eq!(decode_snapshot_response::<u64>(&wire).unwrap(), response);
    }

    #[test]
    fn fatal_errors_round_trip_through_a_remote_error() {
        for fatal in [Fatal::<u64>::Stopped, Fatal::Panicked] {
            let remote = encode_fatal(&fatal);
            assert_eq!(remote.code, OPENRAFT_ERROR);
            assert_eq!(remote.message, fatal.to_string());
            assert_eq!(decode_fatal::<u64>(&remote), Some(fatal));
        }
        assert_eq!(decode_fatal::<u64>(&RemoteError::handler("x")), None);
        let bare = RemoteError::new(OPENRAFT_ERROR, "raft stopped");
        assert_eq!(decode_fatal::<u64>(&bare), None);
        let garbled = bare.with_details(&b"\xff\xff"[..]);
        assert_eq!(decode_fatal::<u64>(&garbled), None);
        // Details of another code are not openraft's.
        let other = RemoteError::handler("x")
            .with_details(encode_fatal(&Fatal::<u64>::Stopped).details.unwrap());
        assert_eq!(decode_fatal::<u64>(&other), None);
    }
}
