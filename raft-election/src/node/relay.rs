//! A follower that serves clients itself ([`super::Config::followers_relay`], on in
//! limecached): rather than turn a client away with `not_leader`, a follower relays its
//! request to the leader (thesis §6.2). It does so over the peer link, as etcd's followers
//! forward proposals, not over a second client connection: the leader takes a follower's
//! whole batch as one message, and the follower answers from its own state machine.
//!
//! - **Writes.** At the end of a batch ([`super::RaftNode::flush`]) the follower sends the
//!   writes it took in one [`Propose`] (several, for writes of more than [`MAX_BATCH_BYTES`]
//!   together). The leader appends them in its term and answers with
//!   the index of the first ([`Proposed`]). The follower then waits for the entry at that
//!   index and term to be applied, as a leader waits for its own clients' entries
//!   ([`raft_log::apply::Applier::wait`]), and answers with the outcome its state machine
//!   computed, which is every node's. Another entry at that index means the write did not
//!   happen.
//! - **Reads.** The follower asks for a read index with one [`ReadIndex`] at a time, for
//!   every read taken since the last, and serves the reads once it has applied up to it
//!   (thesis §6.4; [`super::reads`]).
//!
//! A batch not answered when the follower's leader or term changes, or within an election
//! timeout, is given up on: its writes may or may not take effect (`timeout`), its reads
//! changed nothing (`unavailable`). A leader appends each batch at most once: it ignores a
//! batch of a follower's run that is not later than the last it saw this term, and every
//! batch of an earlier term, so a duplicated or delayed Propose never applies a write twice;
//! and it says "appended nothing" only when that cannot turn out false
//! ([`RaftNode::on_propose`]).

use std::collections::BTreeMap;

use kv_server::protocol::{Command, Failure, NodeId, Session};
use raft_log::apply::Applier;
use raft_log::replication::MAX_BATCH_BYTES;
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use raft_log::types::{FRAMING, LogIndex, Payload, Term};
use replication_naive::node::{Outbox, RequestTag};

use super::reads::Read;
use super::{Duty, RaftNode};
use crate::message::{BatchId, Message, Propose, Proposed, ReadIndex, ReadIndexed};

/// A client's write, as a follower takes it.
#[derive(Debug)]
pub(super) struct Write {
    pub(super) tag: RequestTag,
    pub(super) command: Command,
    pub(super) session: Option<Session>,
}

/// What a follower has relayed, or will at the end of the batch.
#[derive(Debug)]
pub(super) struct Relay {
    /// This run's [`BatchId::run`].
    run: u64,
    /// The number of the last batch sent.
    batches: u64,
    /// Ticks since the node started: when batches were sent.
    ticks: u64,
    /// Writes taken since the last flush.
    writes: Vec<Write>,
    /// Reads taken since the last flush.
    reads: Vec<Read>,
    /// Batches sent and not yet answered, by number.
    sent: BTreeMap<u64, Sent>,
}

/// A batch sent to the leader.
#[derive(Debug)]
struct Sent {
    leader: NodeId,
    term: Term,
    /// [`Relay::ticks`] when it was sent.
    at: u64,
    clients: Clients,
}

/// Who waits for a batch's answer.
#[derive(Debug)]
enum Clients {
    Writes(Vec<RequestTag>),
    Reads(Vec<Read>),
}

impl Relay {
    /// A follower's relay, for the run that `run` names.
    pub(super) fn new(run: u64) -> Relay {
        Relay {
            run,
            batches: 0,
            ticks: 0,
            writes: Vec::new(),
            reads: Vec::new(),
            sent: BTreeMap::new(),
        }
    }

    /// Takes a client's write, to propose at the end of the batch.
    pub(super) fn write(&mut self, write: Write) {
        self.writes.push(write);
    }

    /// Takes a client's linearizable read, to ask a read index for at the end of the batch.
    pub(super) fn read(&mut self, read: Read) {
        self.reads.push(read);
    }

    fn next_batch(&mut self) -> BatchId {
        self.batches += 1;
        BatchId {
            run: self.run,
            number: self.batches,
        }
    }
}

impl Clients {
    /// Answers clients whose batch was given up: a write may or may not take effect, a read
    /// changed nothing.
    fn fail(self, out: &mut Outbox<Message>) {
        match self {
            Clients::Writes(tags) => fail_all(tags, &write_unanswered(), out),
            Clients::Reads(reads) => {
                fail_all(reads.iter().map(|r| r.tag), &read_unconfirmed(), out)
            }
        }
    }
}

fn fail_all(
    tags: impl IntoIterator<Item = RequestTag>,
    failure: &Failure,
    out: &mut Outbox<Message>,
) {
    for tag in tags {
        out.reply(tag, Err(failure.clone()));
    }
}

/// The answer to a relayed write that the leader did not answer in time, or whose leader
/// changed first.
fn write_unanswered() -> Failure {
    Failure::timeout("the leader did not say where it put the write; it may or may not take effect")
}

/// The answer to a relayed read the leader did not confirm.
fn read_unconfirmed() -> Failure {
    Failure::unavailable("the leader did not confirm the read; retry")
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// Whether this node takes writes and linearizable reads from clients as a follower:
    /// it relays them ([`super::Config::followers_relay`]), and knows whom to.
    pub(super) fn can_relay(&self) -> bool {
        self.config.followers_relay
            && matches!(self.duty, Duty::Follower)
            && self.leader.is_some()
            && !self.removed()
    }

    /// End of a batch: sends the writes and reads taken in it to the leader, one message
    /// for the reads and one for the writes (or several, each under [`MAX_BATCH_BYTES`]).
    /// A node that has become leader meanwhile serves them itself; one that has lost its
    /// leader refuses them (nothing was sent, so nothing happened).
    pub(super) fn flush_relay(&mut self, out: &mut Outbox<Message>) {
        let writes = std::mem::take(&mut self.relay.writes);
        let reads = std::mem::take(&mut self.relay.reads);
        if self.is_leader() {
            for write in writes {
                self.write(write, out);
            }
            for read in reads {
                self.read(read.tag, read.key, out);
            }
            return;
        }
        let Some(leader) = self.leader.filter(|_| self.can_relay()) else {
            let tags = writes
                .iter()
                .map(|w| w.tag)
                .chain(reads.iter().map(|r| r.tag));
            fail_all(tags, &self.not_leader(), out);
            return;
        };
        // Large writes go in several batches, each, like an AppendEntries, well under the
        // peer transport's frame limit: one frame over it would end the link.
        let mut chunks: Vec<Vec<_>> = Vec::new();
        let mut bytes = 0;
        for write in writes {
            let client = write.session.as_ref().map_or(0, |s| s.client.len());
            let size = FRAMING + client + write.command.data_bytes();
            match chunks.last_mut() {
                Some(chunk) if bytes + size <= MAX_BATCH_BYTES => {
                    bytes += size;
                    chunk.push(write);
                }
                _ => {
                    bytes = size;
                    chunks.push(vec![write]);
                }
            }
        }
        for chunk in chunks {
            let batch = self.relay.next_batch();
            let (tags, writes) = chunk
                .into_iter()
                .map(|w| (w.tag, (w.command, w.session)))
                .unzip();
            let propose = Propose {
                term: self.term,
                batch,
                writes,
            };
            out.send(leader, Message::Propose(propose));
            self.sent(batch, leader, Clients::Writes(tags));
        }
        let reading = self
            .relay
            .sent
            .values()
            .any(|s| matches!(s.clients, Clients::Reads(_)));
        if reading {
            // One read index in flight at a time, as the leader runs one round at a time:
            // the reads taken meanwhile share the next one.
            self.relay.reads = reads;
        } else if !reads.is_empty() {
            let batch = self.relay.next_batch();
            let ask = ReadIndex {
                term: self.term,
                batch,
            };
            out.send(leader, Message::ReadIndex(ask));
            self.sent(batch, leader, Clients::Reads(reads));
        }
    }

    fn sent(&mut self, batch: BatchId, leader: NodeId, clients: Clients) {
        let sent = Sent {
            leader,
            term: self.term,
            at: self.relay.ticks,
            clients,
        };
        self.relay.sent.insert(batch.number, sent);
    }

    /// The leader: a follower's clients' writes, appended in this term unless this node
    /// is handing leadership over. Each batch of a follower's run is taken or refused once
    /// a term: a batch not later than the last one seen this term is not answered at all.
    /// It is either a repeat, and the first copy's answer stands (answering "appended
    /// nothing" could overtake it and tell the clients a falsehood), or was overtaken by a
    /// later batch, and the follower gives it up as unknown.
    ///
    /// "Appended nothing" is said only when it is sure to stay true: by this term's leader
    /// of a batch it has not seen, and by a node that never led the batch's term (its own
    /// was earlier: a follower sends only to the node it heard leading that term, so this
    /// happens only when that node lost its disk, wiped, say). A node that led the batch's
    /// term and has stepped down may have appended an earlier copy, and a batch of an
    /// earlier term may have been appended then, by this node or another: neither is
    /// answered, and the follower, which gives up its batches when its leader or term
    /// changes, answers its clients "unknown".
    pub(super) fn on_propose(&mut self, from: NodeId, propose: Propose, out: &mut Outbox<Message>) {
        if propose.term < self.term {
            return;
        }
        // §5.1: a request from a later term means this node is out of date.
        let never_led_its_term = propose.term > self.term;
        if never_led_its_term {
            self.become_follower(propose.term, None);
        }
        let Propose { batch, writes, .. } = propose;
        let busy = self.handing_off().is_some();
        let first = match &mut self.duty {
            Duty::Leader { relayed, .. } => {
                let last = relayed.entry((from, batch.run)).or_default();
                if batch.number <= *last {
                    return;
                }
                *last = batch.number;
                if busy {
                    None
                } else {
                    let first = self.log.last_index().next();
                    for (command, session) in writes {
                        self.propose(None, Payload::write(command, session), out);
                    }
                    self.advance_commit(out);
                    Some(first)
                }
            }
            _ if never_led_its_term => None,
            _ => return,
        };
        let answer = Proposed {
            term: self.term,
            batch,
            first,
        };
        out.send(from, Message::Proposed(answer));
    }

    /// A follower: the leader says where it put a batch of writes. Each client waits for
    /// its entry; one whose entry this node has already applied cannot tell its outcome.
    pub(super) fn on_proposed(
        &mut self,
        from: NodeId,
        answer: Proposed,
        out: &mut Outbox<Message>,
    ) {
        let tags = match self.take_sent(from, answer.batch) {
            Some(Clients::Writes(tags)) => tags,
            // An answer of the wrong kind (a confused peer): given up as a lost one is.
            Some(reads) => return reads.fail(out),
            None => return,
        };
        let Some(first) = answer.first else {
            let refused = Failure::unavailable("the leader took no writes; retry");
            fail_all(tags, &refused, out);
            return;
        };
        for (offset, tag) in (0..).zip(tags) {
            let index = LogIndex(first.0 + offset);
            if index <= self.last_applied() {
                out.reply(tag, Err(write_unanswered()));
            } else if let Some(displaced) = self.applier.wait(index, answer.term, tag) {
                out.reply(displaced, Applier::displaced());
            }
        }
    }

    /// A follower: the leader confirmed (or could not confirm) a read index for a batch of
    /// reads.
    pub(super) fn on_read_indexed(
        &mut self,
        from: NodeId,
        answer: ReadIndexed,
        out: &mut Outbox<Message>,
    ) {
        let reads = match self.take_sent(from, answer.batch) {
            Some(Clients::Reads(reads)) => reads,
            Some(writes) => return writes.fail(out),
            None => return,
        };
        match answer.index {
            Some(index) => self.confirmed_reads(index, reads, out),
            None => Clients::Reads(reads).fail(out),
        }
    }

    /// The batch an answer from `from` is about, if it is this run's, still waiting, and
    /// was sent to `from`.
    fn take_sent(&mut self, from: NodeId, batch: BatchId) -> Option<Clients> {
        if batch.run != self.relay.run || self.relay.sent.get(&batch.number)?.leader != from {
            return None;
        }
        self.relay.sent.remove(&batch.number).map(|s| s.clients)
    }

    /// Counts a tick; gives up on batches the leader has not answered within an election
    /// timeout (it, or its answer, may have been lost).
    pub(super) fn tick_relay(&mut self, out: &mut Outbox<Message>) {
        self.relay.ticks += 1;
        let now = self.relay.ticks;
        let patience = self.config.election_ticks;
        self.give_up(|sent| now - sent.at >= patience, out);
    }

    /// Called after every input: gives up on batches sent to a leader this node no longer
    /// follows, or in an earlier term.
    pub(super) fn settle_relay(&mut self, out: &mut Outbox<Message>) {
        let (leader, term) = (self.leader, self.term);
        self.give_up(|sent| Some(sent.leader) != leader || sent.term != term, out);
    }

    /// A node that left the cluster: every batch sent is given up (its clients go
    /// elsewhere), as no leader will answer it.
    pub(super) fn abandon_relay(&mut self, out: &mut Outbox<Message>) {
        self.give_up(|_| true, out);
    }

    /// Called after every input, so it only rebuilds the map when a batch is lost.
    fn give_up(&mut self, lost: impl Fn(&Sent) -> bool, out: &mut Outbox<Message>) {
        if !self.relay.sent.values().any(&lost) {
            return;
        }
        let sent = std::mem::take(&mut self.relay.sent);
        let (lost, kept): (BTreeMap<_, _>, _) = sent.into_iter().partition(|(_, s)| lost(s));
        self.relay.sent = kept;
        for sent in lost.into_values() {
            sent.clients.fail(out);
        }
    }
}
