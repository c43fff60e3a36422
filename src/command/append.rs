//! AppendEntries: log replication and heartbeats.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Log, RpcHeader};

/// The most entries one AppendEntries may carry. A decoded entry takes about 100 bytes of
/// memory whatever its encoded size (an empty entry encodes in 6), so without a bound a small
/// frame could make a receiver hold many times its size; 8,192 entries hold at most ~850 KB
/// beyond their payloads. Raft engines batch far fewer (hashicorp/raft: 64 by default, 1,024
/// at most recommended; openraft: 300). Larger requests fail to encode at the sender and are
/// refused as malformed by the receiver.
pub const MAX_ENTRIES_PER_APPEND: usize = 8192;

fn serialize_entries<S: Serializer>(entries: &[Log], serializer: S) -> Result<S::Ok, S::Error> {
    if entries.len() > MAX_ENTRIES_PER_APPEND {
        return Err(serde::ser::Error::custom(format!(
            "{} entries in one AppendEntries, more than {MAX_ENTRIES_PER_APPEND}",
            entries.len()
        )));
    }
    serializer.collect_seq(entries)
}

fn deserialize_entries<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Log>, D::Error> {
    struct Bounded;

    impl<'de> serde::de::Visitor<'de> for Bounded {
        type Value = Vec<Log>;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "at most {MAX_ENTRIES_PER_APPEND} log entries")
        }

        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Log>, A::Error> {
            // The length a peer declares is only a hint: refuse it before allocating for it.
            let declared = seq.size_hint().unwrap_or(0);
            if declared > MAX_ENTRIES_PER_APPEND {
                return Err(serde::de::Error::invalid_length(declared, &self));
            }
            let mut entries = Vec::with_capacity(declared);
            while let Some(entry) = seq.next_element()? {
                if entries.len() == MAX_ENTRIES_PER_APPEND {
                    return Err(serde::de::Error::invalid_length(entries.len() + 1, &self));
                }
                entries.push(entry);
            }
            Ok(entries)
        }
    }

    deserializer.deserialize_seq(Bounded)
}

/// Replicates log entries; with no entries it is a heartbeat (hashicorp/raft's
/// `AppendEntriesRequest`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesRequest {
    /// The leader's header.
    pub header: RpcHeader,
    /// The leader's term.
    pub term: u64,
    /// Index of the entry just before `entries`.
    pub prev_log_entry: u64,
    /// Term of the entry at `prev_log_entry`.
    pub prev_log_term: u64,
    /// Entries to append, in index order; at most [`MAX_ENTRIES_PER_APPEND`].
    #[serde(
        serialize_with = "serialize_entries",
        deserialize_with = "deserialize_entries"
    )]
    pub entries: Vec<Log>,
    /// The leader's commit index.
    pub leader_commit_index: u64,
}

impl AppendEntriesRequest {
    /// A heartbeat: the leader's term and nothing else.
    pub fn heartbeat(header: RpcHeader, term: u64) -> Self {
        Self {
            header,
            term,
            prev_log_entry: 0,
            prev_log_term: 0,
            entries: Vec::new(),
            leader_commit_index: 0,
        }
    }

    /// True when this request may take the heartbeat fast path: it carries a term and a sender
    /// but no entries and no log position (the rule hashicorp/raft's transports use).
    pub fn is_heartbeat(&self) -> bool {
        self.term != 0
            && !self.header.id.is_empty()
            && self.prev_log_entry == 0
            && self.prev_log_term == 0
            && self.entries.is_empty()
            && self.leader_commit_index == 0
    }
}

/// The follower's answer to an [`AppendEntriesRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's header.
    pub header: RpcHeader,
    /// The follower's current term, so a stale leader can step down.
    pub term: u64,
    /// The follower's last log index, a hint for the leader's next index.
    pub last_log: u64,
    /// Whether the entries were appended.
    pub success: bool,
    /// Set when the failure should not trigger the leader's backoff (e.g. a log mismatch).
    pub no_retry_backoff: bool,
}
