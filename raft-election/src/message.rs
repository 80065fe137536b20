//! What nodes say to each other from this stage on: stage 3's AppendEntries, plus
//! RequestVote (§5.2) and its pre-vote variant (thesis §9.6), InstallSnapshot (§7), which
//! only nodes that compact their logs send, and TimeoutNow (thesis §3.10), which only a
//! leader handing over sends, and the ReadProbe/ReadAck round that confirms a leader
//! before it serves a linearizable read (thesis §6.4). A follower that serves clients
//! itself ([`crate::node::Config::followers_relay`]) proposes their writes with Propose and
//! asks for a read index with ReadIndex.

use kv_server::protocol::{Command, Session};
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
    /// Follower → leader: append these clients' writes (thesis §6.2, a follower relaying
    /// requests to the leader).
    Propose(Propose),
    /// Leader → follower: where the proposed writes went.
    Proposed(Proposed),
    /// Follower → leader: confirm a read index for these clients' reads (thesis §6.4).
    ReadIndex(ReadIndex),
    /// Leader → follower: the confirmed read index.
    ReadIndexed(ReadIndexed),
}

impl Message {
    /// The sender's term, which every message carries (§5.1).
    pub fn term(&self) -> Term {
        match self {
            Message::AppendEntries(m) => m.term,
            Message::AppendEntriesResponse(m) => m.term,
            Message::RequestVote(m) => m.term,
            Message::RequestVoteResponse(m) => m.term,
            Message::InstallSnapshot(m) => m.term,
            Message::InstallSnapshotResponse(m) => m.term,
            Message::TimeoutNow(m) => m.term,
            Message::ReadProbe(m) => m.term,
            Message::ReadAck(m) => m.term,
            Message::Propose(m) => m.term,
            Message::Proposed(m) => m.term,
            Message::ReadIndex(m) => m.term,
            Message::ReadIndexed(m) => m.term,
        }
    }
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
    /// The index of the candidate's latest configuration (or of the snapshot it was
    /// restored from; 0 when it has only the fixed one, or none yet). A voter whose
    /// committed configuration is at least as recent and leaves the candidate out knows
    /// the candidate was removed; one that lags behind it may not even know the candidate
    /// was added, and votes by the usual rules, as it does when this is missing (a request
    /// from an older version).
    #[serde(default)]
    pub config_index: Option<LogIndex>,
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
    /// The index of the voter's committed configuration, when it is at least as recent as
    /// the candidate's and leaves the candidate out: the candidate was removed and is not
    /// needed (thesis §4.2.2), and, if its own configuration is no more recent than this,
    /// stops campaigning. A removed node learns it no other way, since leaders do not
    /// replicate to non-members.
    #[serde(default)]
    pub removed_by: Option<LogIndex>,
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
    /// The term of the probe answered. Round numbers start again in every term, so only an
    /// answer to a probe of the leader's current term speaks for its round: a delayed probe
    /// of an earlier term, answered late, must not confirm a later term's round.
    pub in_reply_to: Term,
    /// The round acknowledged.
    pub round: u64,
}

/// Follower → leader: writes its clients sent it, to be appended in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    /// The follower's term.
    pub term: Term,
    /// Names the batch; the answer echoes it.
    pub batch: BatchId,
    /// The writes, each with the client's session if it has one.
    pub writes: Vec<(Command, Option<Session>)>,
}

/// Leader → follower: the answer to a [`Propose`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposed {
    /// The leader's term: the term of the entries it appended.
    pub term: Term,
    /// The batch answered.
    pub batch: BatchId,
    /// The index of the batch's first write (the others follow it, in order); `None` when
    /// the receiver appended none of it and never will (it is handing leadership over, or
    /// never led the batch's term): its clients may retry.
    pub first: Option<LogIndex>,
}

/// Follower → leader: "what may my clients read from?" (thesis §6.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndex {
    /// The follower's term.
    pub term: Term,
    /// Names the batch of reads; the answer echoes it.
    pub batch: BatchId,
}

/// Leader → follower: the answer to a [`ReadIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadIndexed {
    /// The leader's term.
    pub term: Term,
    /// The batch answered.
    pub batch: BatchId,
    /// The leader's commit index when the round that took the reads started, confirmed by a
    /// round of ReadProbes: the follower serves the reads once it has applied up to it.
    /// `None` when the receiver could not confirm one (it does not lead, or was deposed).
    pub index: Option<LogIndex>,
}

/// Names a follower's batch of relayed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BatchId {
    /// Drawn when the follower started, so that an answer meant for an earlier run of it
    /// (delayed in the network, or in the leader's queue) is never taken for one of this
    /// run's, and the leader can tell a new run's batches from a repeat of the old one's.
    pub run: u64,
    /// Counts the run's batches from 1.
    pub number: u64,
}
