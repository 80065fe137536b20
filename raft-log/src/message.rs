//! What Raft nodes say to each other in this stage: AppendEntries and its answer (§5.3).

use serde::{Deserialize, Serialize};

use crate::types::{Entry, LogIndex, Term};

/// A Raft message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader → follower: store these entries after `prev_log_index`, if your log matches
    /// there; also a heartbeat (with no entries) and the carrier of the commit index.
    AppendEntries(AppendEntries),
    /// Follower → leader: the outcome of an AppendEntries.
    AppendEntriesResponse(AppendEntriesResponse),
}

/// Figure 2's AppendEntries RPC arguments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntries {
    /// The leader's term.
    pub term: Term,
    /// The index of the entry just before `entries`.
    pub prev_log_index: LogIndex,
    /// The term of that entry: the follower must hold the same for the check to pass.
    pub prev_log_term: Term,
    /// Entries to store (empty for a heartbeat).
    pub entries: Vec<Entry>,
    /// The leader's commit index.
    pub leader_commit: LogIndex,
}

/// The answer to an AppendEntries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's current term.
    pub term: Term,
    /// `Ok(match_index)`: the log matches the leader's up to `match_index`. `Err`: the
    /// consistency check failed.
    pub result: Result<LogIndex, Rejection>,
}

/// Why the consistency check failed, with the hint that lets the leader skip a whole
/// conflicting term per round trip instead of one entry (the optimization at the end of §5.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The `prev_log_index` that was refused, so the leader can ignore stale rejections.
    pub prev_log_index: LogIndex,
    /// The term of the follower's entry at `prev_log_index`, or `None` if its log is shorter.
    pub conflict_term: Option<Term>,
    /// The first index the follower holds for `conflict_term`, or its `last_index + 1` when its
    /// log is too short.
    pub conflict_index: LogIndex,
}
