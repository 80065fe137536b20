//! Linearizable reads without writing them to the log: ReadIndex (thesis §6.4).
//!
//! A leader may have been deposed without knowing it; answering from its own state could
//! then miss writes the new leader has committed. Instead of logging each read (a disk
//! write and a round of replication), the leader:
//!
//! 1. waits until an entry of its own term has committed (its no-op), so that its commit
//!    index is at least that of any earlier leader;
//! 2. records its commit index as the read index;
//! 3. confirms it is still the leader: it sends every voter a [`ReadProbe`] and waits for a
//!    majority (itself included) to acknowledge it in its term. No other leader can have
//!    been elected before those acknowledgements were sent (§5.2: one vote per term);
//! 4. waits until it has applied up to the read index, then answers from its state.
//!
//! Reads are batched: one round is in flight at a time, and every read that arrives
//! meanwhile joins the next, so a thousand concurrent reads cost two rounds, not a thousand.
//! A round whose probes or acknowledgements were lost is probed again with each heartbeat.
//!
//! No leader lease is used: a lease trades a clock-drift assumption for the round trip, and
//! a round trip on a LAN is cheap next to the risk of a paused or drifting leader serving a
//! stale read.

use std::collections::{BTreeMap, BTreeSet};

use kv_server::protocol::{Failure, NodeId, Reply};
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use raft_log::types::{LogIndex, Term};
use replication_naive::node::{Outbox, RequestTag};

use super::RaftNode;
use crate::message::{Message, ReadAck, ReadProbe};

/// A client's read of one key.
#[derive(Debug)]
struct Read {
    tag: RequestTag,
    key: String,
}

/// A confirmation round in flight.
#[derive(Debug)]
struct Round {
    number: u64,
    /// The commit index when the round started: the read index of its reads.
    index: LogIndex,
    /// Who has acknowledged it in the leader's term (the leader counts itself).
    acks: BTreeSet<NodeId>,
    reads: Vec<Read>,
}

/// The reads a leader is serving, all of one term.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// The term these reads were taken in; they are only ever served in it.
    term: Term,
    /// The number of the last round started.
    rounds: u64,
    in_flight: Option<Round>,
    /// Reads waiting for the next round.
    queued: Vec<Read>,
    /// Confirmed reads, by read index, waiting until it is applied.
    confirmed: BTreeMap<LogIndex, Vec<Read>>,
}

impl Reads {
    fn is_empty(&self) -> bool {
        self.in_flight.is_none() && self.queued.is_empty() && self.confirmed.is_empty()
    }

    fn drain(&mut self) -> impl Iterator<Item = Read> + use<> {
        let in_flight = self.in_flight.take().map(|r| r.reads).unwrap_or_default();
        let queued = std::mem::take(&mut self.queued);
        let confirmed = std::mem::take(&mut self.confirmed).into_values().flatten();
        in_flight.into_iter().chain(queued).chain(confirmed)
    }
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// A client's linearizable read of `key`. A node that is not the leader cannot serve it
    /// (a follower's state may be behind), and says who can.
    pub(super) fn read(&mut self, tag: RequestTag, key: String, out: &mut Outbox<Message>) {
        if !self.is_leader() {
            out.reply(tag, Err(self.not_leader()));
            return;
        }
        if self.reads.term != self.term {
            debug_assert!(self.reads.is_empty(), "reads of an old term are settled");
            self.reads = Reads {
                term: self.term,
                ..Reads::default()
            };
        }
        self.reads.queued.push(Read { tag, key });
        self.start_read_round(out);
    }

    /// Starts a round for the queued reads, unless one is in flight or the leader has not
    /// yet committed an entry of its term (step 1: until then its commit index may be
    /// behind an earlier leader's).
    pub(super) fn start_read_round(&mut self, out: &mut Outbox<Message>) {
        let committed_in_term = self.log.term(self.commit_index()) == Some(self.term);
        if !self.is_leader()
            || self.reads.in_flight.is_some()
            || self.reads.queued.is_empty()
            || !committed_in_term
        {
            return;
        }
        self.reads.rounds += 1;
        self.reads.in_flight = Some(Round {
            number: self.reads.rounds,
            index: self.commit_index(),
            acks: BTreeSet::from([self.config.id]),
            reads: std::mem::take(&mut self.reads.queued),
        });
        self.probe_for_reads(out);
        // A leader that is the only voter needs no one else's word.
        self.count_read_acks(out);
    }

    /// Sends the round in flight to every voter that has not acknowledged it. Called when
    /// the round starts and again with each heartbeat, in case a probe or its answer was
    /// lost.
    pub(super) fn probe_for_reads(&self, out: &mut Outbox<Message>) {
        let Some(round) = &self.reads.in_flight else {
            return;
        };
        let probe = ReadProbe {
            term: self.term,
            round: round.number,
        };
        let voters = self.membership().voter_ids();
        for voter in voters.filter(|v| *v != self.config.id && !round.acks.contains(v)) {
            out.send(voter, Message::ReadProbe(probe));
        }
    }

    /// A voter: the leader of `probe.term` asks whether it still leads. A probe from the
    /// current term's leader is also that leader's heartbeat.
    pub(super) fn on_read_probe(
        &mut self,
        from: NodeId,
        probe: ReadProbe,
        out: &mut Outbox<Message>,
    ) {
        if probe.term >= self.term {
            self.follow(from, probe.term, out);
        }
        let ack = ReadAck {
            term: self.term,
            round: probe.round,
        };
        out.send(from, Message::ReadAck(ack));
    }

    /// The leader: a voter answered a probe.
    pub(super) fn on_read_ack(&mut self, from: NodeId, ack: ReadAck, out: &mut Outbox<Message>) {
        if self.answered_from_later_term(ack.term) {
            return;
        }
        let current = ack.term == self.term && self.is_leader();
        let Some(round) = &mut self.reads.in_flight else {
            return;
        };
        if current && ack.round == round.number {
            round.acks.insert(from);
            self.count_read_acks(out);
        }
    }

    /// Confirms the round in flight once a majority of voters (under the latest
    /// configuration, as for commitment) has acknowledged it, and starts the next.
    fn count_read_acks(&mut self, out: &mut Outbox<Message>) {
        let membership = self.configs.latest();
        let Some(round) = &self.reads.in_flight else {
            return;
        };
        let votes = round.acks.iter().filter(|&&id| membership.is_voter(id));
        if votes.count() < membership.majority() {
            return;
        }
        if let Some(round) = self.reads.in_flight.take() {
            self.reads
                .confirmed
                .entry(round.index)
                .or_default()
                .extend(round.reads);
        }
        self.serve_confirmed_reads(out);
        self.start_read_round(out);
    }

    /// Answers the confirmed reads whose read index has been applied (step 4).
    pub(super) fn serve_confirmed_reads(&mut self, out: &mut Outbox<Message>) {
        let later = self.reads.confirmed.split_off(&self.last_applied().next());
        let ready = std::mem::replace(&mut self.reads.confirmed, later);
        for read in ready.into_values().flatten() {
            let value = self.state().get(&read.key).map(str::to_owned);
            out.reply(read.tag, Ok(Reply::Value(value)));
        }
    }

    /// Called after every input: reads taken as leader of a term this node no longer leads
    /// can never be served; their clients are told to go elsewhere (nothing happened, so
    /// they may simply retry).
    pub(super) fn settle_reads(&mut self, out: &mut Outbox<Message>) {
        if self.reads.is_empty() || (self.is_leader() && self.reads.term == self.term) {
            return;
        }
        let failure = match self.not_leader() {
            failure if self.leader.is_some() => failure,
            _ => Failure::unavailable("leadership changed before the read was confirmed; retry"),
        };
        for read in self.reads.drain() {
            out.reply(read.tag, Err(failure.clone()));
        }
    }
}
