//! What nodes say to each other from this stage on: stage 3's AppendEntries, plus
//! RequestVote (§5.2) and its pre-vote variant (thesis §9.6), InstallSnapshot (§7), which
//! only nodes that compact their logs send, and TimeoutNow (thesis §3.10), which only a
//! leader handing over sends, and the ReadProbe/ReadAck round that confirms a leader
//! before it serves a linearizable read (thesis §6.4).

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
    /// Leader → voters: confirm that I still lead, so that reads can be served without
    /// writing them to the log (ReadIndex, thesis §6.4).
    ReadProbe(ReadProbe),
    /// Voter → leader: the answer to a ReadProbe.
    ReadAck(ReadAck),
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

/// Leader → voters: "am I still your leader?", one round of ReadIndex (thesis §6.4). A
/// voter still in `term` acknowledges it, and hears it as a heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadProbe {
    /// The leader's term.
    pub term: Term,
    /// Which round this is; the acknowledgement echoes it.
    pub round: u64,
}

/// The answer to a [`ReadProbe`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadAck {
    /// The voter's current term: the probe's when it still follows that leader, a later one
    /// when it has moved on (and the leader learns it is deposed).
    pub term: Term,
    /// The round acknowledged.
    pub round: u64,
}
