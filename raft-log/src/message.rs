//! What Raft nodes say to each other in this stage: AppendEntries and its answer (§5.3).

use kv_server::protocol::NodeId;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

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

impl AppendEntries {
    /// Whether the entries are what an AppendEntries carries: consecutive indexes from
    /// `prev_log_index + 1`, terms never decreasing, none after the request's own term. A
    /// peer that sends anything else is broken; its message is dropped, not obeyed.
    pub fn is_well_formed(&self) -> bool {
        let mut expected = self.prev_log_index;
        let mut last_term = self.prev_log_term;
        self.entries.iter().all(|e| {
            expected = expected.next();
            let ok = e.index == expected && e.term >= last_term && e.term <= self.term;
            last_term = e.term;
            ok
        }) && self.prev_log_term <= self.term
    }

    /// What a node in `current_term` does with this request before anything else: `Ok` to
    /// go on; `Err(None)` to drop it (malformed: a broken peer is not obeyed); `Err(Some)`
    /// to answer a refusal without touching its log (Figure 2, step 1: an older term).
    pub fn screen(
        &self,
        from: NodeId,
        current_term: Term,
    ) -> Result<(), Option<AppendEntriesResponse>> {
        if !self.is_well_formed() {
            warn!(%from, "malformed AppendEntries dropped");
            return Err(None);
        }
        if self.term < current_term {
            debug!(%from, term = %self.term, "stale AppendEntries refused");
            return Err(Some(self.refuse_stale(current_term)));
        }
        Ok(())
    }

    /// The answer of a node whose term, `term`, is newer than this request's (Figure 2,
    /// step 1): refused, and the sender learns its term is stale.
    fn refuse_stale(&self, term: Term) -> AppendEntriesResponse {
        let rejection = Rejection {
            prev_log_index: self.prev_log_index,
            conflict_term: None,
            conflict_index: LogIndex(0),
        };
        AppendEntriesResponse {
            term,
            in_reply_to: self.term,
            result: Err(rejection),
        }
    }
}

/// The answer to an AppendEntries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendEntriesResponse {
    /// The follower's current term.
    pub term: Term,
    /// The term of the AppendEntries this answers. A leader acts only on answers to its own
    /// term's requests: a refusal of an older leader's request (by a node already in the
    /// new term) must not pass for a log mismatch.
    pub in_reply_to: Term,
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
