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
//! A follower that serves clients itself (`Config::followers_relay`) asks the leader for a
//! read index with a [`ReadIndex`]: the leader adds it to its next round and answers with
//! the round's index once confirmed, and the follower serves the reads once it has applied
//! up to it (thesis §6.4). A confirmed read index stays valid whatever happens next: the
//! entries up to it are committed, so any node that applies them serves the read correctly.
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

use super::{Duty, RaftNode};
use crate::message::{BatchId, Message, ReadAck, ReadIndex, ReadIndexed, ReadProbe};

/// A client's read of one key.
#[derive(Debug)]
pub(super) struct Read {
    pub(super) tag: RequestTag,
    pub(super) key: String,
}

/// Who waits for a round: a client of the leader's, or a follower's batch of reads.
#[derive(Debug)]
enum Reader {
    Client(Read),
    Follower { id: NodeId, batch: BatchId },
}

/// A confirmation round in flight.
#[derive(Debug)]
struct Round {
    number: u64,
    /// The commit index when the round started: the read index of its reads.
    index: LogIndex,
    /// Who has acknowledged it in the leader's term (the leader counts itself).
    acks: BTreeSet<NodeId>,
    readers: Vec<Reader>,
}

/// The reads a node is serving: those a leader is confirming, all of one term, and those
/// confirmed (by it, or by the leader a follower asked), waiting to be applied.
#[derive(Debug, Default)]
pub(super) struct Reads {
    /// The term the reads being confirmed were taken in; they are only confirmed in it.
    term: Term,
    /// The number of the last round started.
    rounds: u64,
    in_flight: Option<Round>,
    /// Reads waiting for the next round.
    queued: Vec<Reader>,
    /// Confirmed reads, by read index, waiting until it is applied.
    confirmed: BTreeMap<LogIndex, Vec<Read>>,
}

impl Reads {
    fn confirming(&self) -> bool {
        self.in_flight.is_some() || !self.queued.is_empty()
    }

    /// Readers still to be confirmed: in flight first, then queued.
    fn drain_unconfirmed(&mut self) -> impl Iterator<Item = Reader> + use<> {
        let in_flight = self.in_flight.take().map(|r| r.readers).unwrap_or_default();
        let queued = std::mem::take(&mut self.queued);
        in_flight.into_iter().chain(queued)
    }
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// A client's linearizable read of `key`. A follower cannot serve it from its state
    /// alone (it may be behind): it asks the leader for a read index when it relays, and
    /// otherwise says who can serve it.
    pub(super) fn read(&mut self, tag: RequestTag, key: String, out: &mut Outbox<Message>) {
        if self.is_leader() {
            self.queue_read(Reader::Client(Read { tag, key }), out);
        } else if self.can_relay() {
            self.relay.read(Read { tag, key });
        } else {
            out.reply(tag, Err(self.not_leader()));
        }
    }

    /// The leader: a follower asks for a read index for a batch of its clients' reads.
    pub(super) fn on_read_index(
        &mut self,
        from: NodeId,
        req: ReadIndex,
        out: &mut Outbox<Message>,
    ) {
        // §5.1: a request from a later term means this node is out of date.
        if req.term > self.term {
            self.become_follower(req.term, None);
        }
        let reader = Reader::Follower {
            id: from,
            batch: req.batch,
        };
        if self.is_leader() {
            self.queue_read(reader, out);
        } else {
            self.refuse_reader(reader, out);
        }
    }

    /// The leader: `reader` joins the next round.
    fn queue_read(&mut self, reader: Reader, out: &mut Outbox<Message>) {
        if self.reads.term != self.term {
            debug_assert!(!self.reads.confirming(), "reads of an old term are settled");
            self.reads.term = self.term;
            self.reads.rounds = 0;
        }
        self.reads.queued.push(reader);
        self.start_read_round(out);
    }

    /// Tells `reader` that no read index can be confirmed here.
    fn refuse_reader(&self, reader: Reader, out: &mut Outbox<Message>) {
        match reader {
            Reader::Client(read) => {
                let failure = match self.not_leader() {
                    failure if self.leader.is_some() => failure,
                    _ => Failure::unavailable(
                        "leadership changed before the read was confirmed; retry",
                    ),
                };
                out.reply(read.tag, Err(failure));
            }
            Reader::Follower { id, batch } => {
                let answer = ReadIndexed {
                    term: self.term,
                    batch,
                    index: None,
                };
                out.send(id, Message::ReadIndexed(answer));
            }
        }
    }

    /// Reads whose read index `index` is confirmed: served once it is applied.
    pub(super) fn confirmed_reads(
        &mut self,
        index: LogIndex,
        reads: Vec<Read>,
        out: &mut Outbox<Message>,
    ) {
        self.reads.confirmed.entry(index).or_default().extend(reads);
        self.serve_confirmed_reads(out);
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
            readers: std::mem::take(&mut self.reads.queued),
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
            in_reply_to: probe.term,
            round: probe.round,
        };
        out.send(from, Message::ReadAck(ack));
    }

    /// The leader: a voter answered a probe.
    pub(super) fn on_read_ack(&mut self, from: NodeId, ack: ReadAck, out: &mut Outbox<Message>) {
        if self.answered_from_later_term(ack.term) {
            return;
        }
        // An answer to this term's probe, from a voter still in this term: it was sent after
        // the round started, and before the voter could help elect anyone else.
        let current = ack.term == self.term && ack.in_reply_to == self.term && self.is_leader();
        // Contact in this term, for check-quorum (§6.2) too: a follower whose fsync stalls
        // holds its AppendEntries answers, but not this one.
        if let (
            true,
            Duty::Leader {
                ticks, last_heard, ..
            },
        ) = (current, &mut self.duty)
        {
            last_heard.insert(from, *ticks);
        }
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
            let mut reads = Vec::new();
            for reader in round.readers {
                match reader {
                    Reader::Client(read) => reads.push(read),
                    // The follower serves them once it has applied up to the index.
                    Reader::Follower { id, batch } => {
                        let answer = ReadIndexed {
                            term: self.term,
                            batch,
                            index: Some(round.index),
                        };
                        out.send(id, Message::ReadIndexed(answer));
                    }
                }
            }
            self.confirmed_reads(round.index, reads, out);
        }
        self.start_read_round(out);
    }

    /// Answers the confirmed reads whose read index has been applied (step 4).
    pub(super) fn serve_confirmed_reads(&mut self, out: &mut Outbox<Message>) {
        let later = self.reads.confirmed.split_off(&self.last_applied().next());
        let ready = std::mem::replace(&mut self.reads.confirmed, later);
        for read in ready.into_values().flatten() {
            let value = self.state().get_text(&read.key);
            out.reply(read.tag, Ok(Reply::Value(value)));
        }
    }

    /// A node that left the cluster: the reads waiting for their read index to be applied
    /// are refused, as it will not catch up (nothing changed; they may go elsewhere).
    pub(super) fn abandon_confirmed_reads(&mut self, out: &mut Outbox<Message>) {
        let left = Failure::unavailable(
            "this node left the cluster and will not catch up; nothing changed, ask a member",
        );
        for read in std::mem::take(&mut self.reads.confirmed)
            .into_values()
            .flatten()
        {
            out.reply(read.tag, Err(left.clone()));
        }
    }

    /// Called after every input: reads taken as leader of a term this node no longer leads
    /// can never be confirmed; their clients are told to go elsewhere (nothing happened, so
    /// they may simply retry). Confirmed reads stay: they are served once applied.
    pub(super) fn settle_reads(&mut self, out: &mut Outbox<Message>) {
        if !self.reads.confirming() || (self.is_leader() && self.reads.term == self.term) {
            return;
        }
        for reader in self.reads.drain_unconfirmed() {
            self.refuse_reader(reader, out);
        }
    }
}
