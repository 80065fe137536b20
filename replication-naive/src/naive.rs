//! Naive broadcast replication, deliberately unsafe.
//!
//! The leader (fixed by configuration) answers a write by broadcasting it to every follower;
//! each follower applies it at once and acknowledges; once a majority (counting the leader)
//! has acknowledged, the leader applies it too and answers the client. Reads are answered
//! from the local map of whichever node is asked.
//!
//! It looks reasonable and works on a quiet network. It is wrong in at least three ways,
//! each shown by a test in `tests/naive_flaws.rs`:
//!
//! 1. **Nothing is retransmitted.** A follower that misses a write (a lost message, a brief
//!    partition, a restart) never learns of it: it stays divergent forever.
//! 2. **Followers apply before anything is decided.** If the leader crashes after one
//!    follower applied a write and before the others did, the followers disagree, and the
//!    client that sent the write never hears whether it happened.
//! 3. **No order.** Writes travel as independent messages; two writes to one key that arrive
//!    in the other order leave a follower with the older value, for good.
//!
//! Stage 3 (`raft-log`) fixes all three with a log: writes are numbered, a follower accepts
//! entry *n* only if it holds entry *n−1*, the leader retransmits until it does, and nothing
//! is applied until it is committed.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use kv_server::protocol::{Command, Failure, Member, NodeId, Op, Reply, Role, Status};
use kv_server::store::KvMap;
use serde::{Deserialize, Serialize};

use crate::node::{Node, Outbox, RequestTag};

/// What naive nodes say to each other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Leader → follower: apply this write now.
    Replicate {
        /// The leader's number for the write, echoed in the ack.
        write: u64,
        /// The write itself.
        command: Command,
    },
    /// Follower → leader: write `write` is applied here.
    Ack {
        /// The write's number.
        write: u64,
    },
}

/// A write the leader has broadcast and not yet answered.
#[derive(Debug)]
struct InFlight {
    tag: RequestTag,
    command: Command,
    acked: BTreeSet<NodeId>,
    age_ticks: u64,
}

/// A naive replication node.
#[derive(Debug)]
pub struct NaiveNode {
    id: NodeId,
    /// Every member (this node included) and its address.
    members: BTreeMap<NodeId, String>,
    leader: NodeId,
    map: KvMap,
    next_write: u64,
    in_flight: HashMap<u64, InFlight>,
    /// Ticks after which an unacknowledged write is answered `timeout`.
    write_timeout_ticks: u64,
}

impl NaiveNode {
    /// A node `id` of the cluster `members` (id → address) whose leader is `leader`.
    pub fn new(id: NodeId, members: BTreeMap<NodeId, String>, leader: NodeId) -> NaiveNode {
        assert!(
            members.contains_key(&id) && members.contains_key(&leader),
            "id and leader must be members"
        );
        NaiveNode {
            id,
            members,
            leader,
            map: KvMap::default(),
            next_write: 0,
            in_flight: HashMap::new(),
            write_timeout_ticks: 100,
        }
    }

    /// This node's copy of the data.
    pub fn map(&self) -> &KvMap {
        &self.map
    }

    fn is_leader(&self) -> bool {
        self.id == self.leader
    }

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }

    fn status(&self) -> Status {
        Status {
            id: Some(self.id),
            role: if self.is_leader() {
                Role::Leader
            } else {
                Role::Follower
            },
            term: None,
            leader: Some(self.leader),
            leader_addr: self.members.get(&self.leader).cloned(),
            commit_index: None,
            last_applied: None,
            members: Some(
                self.members
                    .iter()
                    .map(|(&id, addr)| Member {
                        id,
                        addr: addr.clone(),
                        voter: true,
                    })
                    .collect(),
            ),
            removed: false,
        }
    }

    /// Applies and answers every in-flight write acknowledged by a majority.
    fn finish_acknowledged(&mut self, write: u64, out: &mut Outbox<Message>) {
        let majority = self.majority();
        if self
            .in_flight
            .get(&write)
            .is_some_and(|w| w.acked.len() >= majority)
        {
            let done = self.in_flight.remove(&write).expect("checked above");
            let outcome = self.map.apply(done.command);
            out.reply(done.tag, Ok(Reply::Write(outcome)));
        }
    }
}

impl Node for NaiveNode {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.id
    }

    fn tick(&mut self, out: &mut Outbox<Message>) {
        // The only thing time does here: give up on writes a majority never acknowledged.
        // Some followers may have applied them, so the outcome is unknown to the client.
        let limit = self.write_timeout_ticks;
        let expired: Vec<u64> = self
            .in_flight
            .iter_mut()
            .filter_map(|(&write, w)| {
                w.age_ticks += 1;
                (w.age_ticks > limit).then_some(write)
            })
            .collect();
        for write in expired {
            let w = self.in_flight.remove(&write).expect("just listed");
            out.reply(
                w.tag,
                Err(Failure::timeout(
                    "no majority acknowledged the write in time",
                )),
            );
        }
    }

    fn step(&mut self, from: NodeId, message: Message, out: &mut Outbox<Message>) {
        match message {
            Message::Replicate { write, command } => {
                // Flaw 2 and 3: applied on arrival, in arrival order, before anything is
                // decided.
                self.map.apply(command);
                out.send(from, Message::Ack { write });
            }
            Message::Ack { write } => {
                if let Some(w) = self.in_flight.get_mut(&write) {
                    w.acked.insert(from);
                    self.finish_acknowledged(write, out);
                }
            }
        }
    }

    fn request(&mut self, tag: RequestTag, op: Op, out: &mut Outbox<Message>) {
        match op {
            Op::Get { key, .. } => {
                out.reply(tag, Ok(Reply::Value(self.map.get_text(&key))))
            }
            Op::Status => out.reply(tag, Ok(Reply::Status(Box::new(self.status())))),
            Op::Write { .. } if !self.is_leader() => out.reply(
                tag,
                Err(Failure::not_leader(self.members.get(&self.leader).cloned())),
            ),
            Op::Write { command, .. } => {
                self.next_write += 1;
                let write = self.next_write;
                for &peer in self.members.keys().filter(|&&m| m != self.id) {
                    // Flaw 1: sent once; if it is lost, it is lost.
                    out.send(
                        peer,
                        Message::Replicate {
                            write,
                            command: command.clone(),
                        },
                    );
                }
                let acked = BTreeSet::from([self.id]);
                self.in_flight.insert(
                    write,
                    InFlight {
                        tag,
                        command,
                        acked,
                        age_ticks: 0,
                    },
                );
                self.finish_acknowledged(write, out);
            }
            Op::AddMember { .. } | Op::RemoveMember { .. } | Op::TransferLeader { .. } => out
                .reply(
                    tag,
                    Err(Failure::bad_request(
                        "membership changes arrive in stage 8, leadership transfer with elections in stage 6",
                    )),
                ),
        }
    }
}
