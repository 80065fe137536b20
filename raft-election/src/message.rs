//! What nodes say to each other from this stage on: stage 3's AppendEntries, plus
//! RequestVote (§5.2) and its pre-vote variant (thesis §9.6), InstallSnapshot (§7), which
//! only nodes that compact their logs send, and TimeoutNow (thesis §3.10), which only a
//! leader handing over sends.

use raft_log::message::{AppendEntries, AppendEntriesResponse};
use raft_log::snapshot::{InstallSnapshot, InstallSnapshotResponse};
use raft_log::types::{LogIndex, Term};
use serde::{Deserialize, Serialize};

/// A Raft message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader → follower: entries, heartbeat, commit index (stage 3).
    AppendEntries(AppendEntries),
    /// Follower → leader: the outcome of an AppendEntries (stage 3).
    AppendEntriesResponse(AppendEntriesResponse),
    /// Candidate → everyone: vote for me (or, as a pre-vote, would you?).
    RequestVote(RequestVote),
    /// The answer to a RequestVote.
    RequestVoteResponse(RequestVoteResponse),
    /// Leader → follower: a chunk of a snapshot, for a follower that needs entries the
    /// leader has compacted away (§7; sent only by nodes that take snapshots, stage 7).
    InstallSnapshot(InstallSnapshot),
    /// Follower → leader: where the snapshot transfer stands.
    InstallSnapshotResponse(InstallSnapshotResponse),
    /// Leader → the voter it hands leadership to, once that voter's log matches its own:
    /// campaign now, as if your election timer had fired (thesis §3.10).
    TimeoutNow(TimeoutNow),
}

/// Figure 2's RequestVote arguments, with the pre-vote flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVote {
    /// The candidate's term; for a pre-vote, the term it would campaign in (its current term
    /// + 1), which it has not adopted.
    pub term: Term,
    /// The index of the candidate's last entry (§5.4.1).
    pub last_log_index: LogIndex,
    /// The term of the candidate's last entry (§5.4.1).
    pub last_log_term: Term,
    /// A pre-vote: "would you vote for me?" Changes no one's term or vote.
    pub pre_vote: bool,
    /// The campaign of a voter the leader handed over to (TimeoutNow): voters set aside
    /// the check that protects a live leader (thesis §4.2.3), since that leader asked to
    /// be replaced. The election restriction (§5.4.1) still applies.
    #[serde(default)]
    pub transfer: bool,
}

/// The answer to a RequestVote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestVoteResponse {
    /// The voter's current term (for a granted pre-vote, the term asked about).
    pub term: Term,
    /// Whether the vote (or pre-vote) is granted.
    pub granted: bool,
    /// Whether this answers a pre-vote.
    pub pre_vote: bool,
}

/// The leader's "campaign now" (thesis §3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeoutNow {
    /// The leader's term: a voter that has moved past it ignores the message.
    pub term: Term,
}
