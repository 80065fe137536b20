//! [`RaftLogNode`]: this stage's node — the log, replication and the state machine, put
//! together with a leader fixed by configuration.

use std::collections::BTreeMap;

use kv_server::protocol::{Failure, Member, NodeId, Op, Reply, Role, Status};
use kv_server::store::KvMap;
use replication_naive::node::{Node, Outbox, RequestTag, SyncJob};
use tracing::{debug, warn};

use crate::apply::Applier;
use crate::log::RaftLog;
use crate::message::{AppendEntries, AppendEntriesResponse, Message};
use crate::replication::{FollowerLogs, Occasion, Progress, Replication};
use crate::storage::{HardState, Storage};
use crate::types::{LogIndex, Payload, Term};

/// How a node of this stage is set up.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// Every member, this node included, with its address.
    pub members: BTreeMap<NodeId, String>,
    /// The fixed leader (there are no elections until stage 6).
    pub leader: NodeId,
    /// The leader's term. Followers learn it from the leader.
    pub term: Term,
    /// Ticks between heartbeats (AppendEntries sent even with nothing new).
    pub heartbeat_ticks: u64,
    /// Most entries carried by one AppendEntries.
    pub max_entries_per_message: usize,
}

impl Config {
    /// A member of `members` led by `leader` in term 1, with a heartbeat every 5 ticks.
    pub fn new(id: NodeId, members: BTreeMap<NodeId, String>, leader: NodeId) -> Config {
        Config {
            id,
            members,
            leader,
            term: Term(1),
            heartbeat_ticks: 5,
            max_entries_per_message: 256,
        }
    }
}

/// A Raft node with a fixed leader: replicates, commits and applies the log.
#[derive(Debug)]
pub struct RaftLogNode<S> {
    config: Config,
    log: RaftLog<S>,
    term: Term,
    applier: Applier,
    /// Leader only: progress with every follower.
    replication: Option<Replication>,
    ticks_since_heartbeat: u64,
}

impl<S: Storage> RaftLogNode<S> {
    /// A node with the log `storage` (empty, or preset by a test).
    pub fn new(config: Config, storage: S) -> RaftLogNode<S> {
        assert!(
            config.members.contains_key(&config.id),
            "a node must be a member"
        );
        assert!(
            config.members.contains_key(&config.leader),
            "the leader must be a member"
        );
        let mut log = RaftLog::new(storage);
        let mut term = log.hard_state().current_term;
        let mut replication = None;
        if config.id == config.leader {
            term = term.max(config.term);
            log.save_hard_state(HardState {
                current_term: term,
                voted_for: Some(config.id),
            });
            let followers = config.members.keys().copied().filter(|&m| m != config.id);
            replication = Some(Replication::new(
                followers,
                log.last_index(),
                config.max_entries_per_message,
                FollowerLogs::Volatile,
            ));
        }
        RaftLogNode {
            config,
            log,
            term,
            applier: Applier::new(),
            replication,
            ticks_since_heartbeat: 0,
        }
    }

    /// The log's storage.
    pub fn log(&self) -> &S {
        self.log.storage()
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit_index()
    }

    /// The highest index applied to the key/value map.
    pub fn last_applied(&self) -> LogIndex {
        self.applier.last_applied()
    }

    /// The key/value map, as of `last_applied`.
    pub fn state(&self) -> &KvMap {
        self.applier.state()
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.config.id == self.config.leader
    }

    /// The leader's view of `follower`.
    pub fn progress(&self, follower: NodeId) -> Option<&Progress> {
        self.replication.as_ref()?.progress(follower)
    }

    fn leader_addr(&self) -> Option<String> {
        self.config.members.get(&self.config.leader).cloned()
    }

    fn status(&self) -> Status {
        let members = self.config.members.iter();
        Status {
            id: Some(self.config.id),
            role: if self.is_leader() {
                Role::Leader
            } else {
                Role::Follower
            },
            term: Some(self.term.0),
            leader: Some(self.config.leader),
            leader_addr: self.leader_addr(),
            commit_index: Some(self.commit_index().0),
            last_applied: Some(self.last_applied().0),
            members: Some(
                members
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

    /// Leader: appends a client's write to the log and starts replicating it.
    fn propose(&mut self, tag: RequestTag, payload: Payload, out: &mut Outbox<Message>) {
        let index = self.log.append_new(self.term, payload);
        if let Some(displaced) = self.applier.wait(index, self.term, tag) {
            out.reply(displaced, Applier::displaced());
        }
        self.broadcast(Occasion::Entries, out);
        // A cluster of one commits on its own.
        self.advance_commit(out);
    }

    /// Leader: sends every follower what it is missing (on a heartbeat, even if nothing).
    fn broadcast(&mut self, occasion: Occasion, out: &mut Outbox<Message>) {
        let Some(replication) = self.replication.as_mut() else {
            return;
        };
        for (follower, append) in replication.broadcast(&self.log, self.term, occasion) {
            out.send(follower, Message::AppendEntries(append));
        }
    }

    /// Follower: an AppendEntries from the leader.
    fn on_append_entries(&mut self, from: NodeId, req: AppendEntries, out: &mut Outbox<Message>) {
        if let Err(answer) = req.screen(from, self.term) {
            if let Some(refusal) = answer {
                out.send(from, Message::AppendEntriesResponse(refusal));
            }
            return;
        }
        if req.term > self.term {
            self.term = req.term;
            self.log.save_hard_state(HardState {
                current_term: self.term,
                voted_for: None,
            });
        }
        let response = self.log.append_from_leader(req, self.term);
        self.apply_committed(out);
        out.send(from, Message::AppendEntriesResponse(response));
    }

    /// Leader: an answer to an AppendEntries.
    fn on_append_response(
        &mut self,
        from: NodeId,
        resp: AppendEntriesResponse,
        out: &mut Outbox<Message>,
    ) {
        if resp.term != self.term || resp.in_reply_to != self.term {
            // Higher: another leader cannot exist while leadership is fixed. Lower, or an
            // answer to another term's request: stale.
            warn!(%from, term = %resp.term, "an answer from another term ignored");
            return;
        }
        let Some(replication) = self.replication.as_mut() else {
            return;
        };
        let more = replication.on_response(from, resp.result, &self.log);
        self.advance_commit(out);
        if more {
            let replication = self.replication.as_mut().expect("leader");
            if let Some(append) =
                replication.append_for(from, &self.log, self.term, Occasion::Entries)
            {
                out.send(from, Message::AppendEntries(append));
            }
        }
    }

    /// Leader: commits the highest index a majority stores, if it is from this term.
    fn advance_commit(&mut self, out: &mut Outbox<Message>) {
        let Some(replication) = self.replication.as_ref() else {
            return;
        };
        let voters = self.config.members.keys().copied();
        if replication.advance_commit(&mut self.log, self.config.id, voters, self.term) {
            self.apply_committed(out);
        }
    }

    fn apply_committed(&mut self, out: &mut Outbox<Message>) {
        for (tag, outcome) in self.applier.apply_committed(&self.log) {
            out.reply(tag, outcome);
        }
    }
}

impl<S: Storage> Node for RaftLogNode<S> {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self, out: &mut Outbox<Message>) {
        if !self.is_leader() {
            return;
        }
        self.ticks_since_heartbeat += 1;
        if self.ticks_since_heartbeat >= self.config.heartbeat_ticks {
            self.ticks_since_heartbeat = 0;
            self.broadcast(Occasion::Heartbeat, out);
        }
    }

    fn step(&mut self, from: NodeId, message: Message, out: &mut Outbox<Message>) {
        match message {
            Message::AppendEntries(req) if !self.is_leader() => {
                self.on_append_entries(from, req, out)
            }
            Message::AppendEntriesResponse(resp) if self.is_leader() => {
                self.on_append_response(from, resp, out)
            }
            other => debug!(%from, ?other, "message for the other role ignored"),
        }
    }

    fn start_sync(&mut self) -> Option<SyncJob> {
        self.log.start_sync()
    }

    /// The leader's own copy now counts toward a majority.
    fn synced(&mut self, result: std::io::Result<()>, out: &mut Outbox<Message>) {
        self.log.finish_sync(result);
        self.advance_commit(out);
    }

    /// The leader's AppendEntries go out while it writes its own log (thesis §10.2.1).
    fn sends_before_sync(message: &Message) -> bool {
        matches!(message, Message::AppendEntries(_))
    }

    fn request(&mut self, tag: RequestTag, op: Op, out: &mut Outbox<Message>) {
        match op {
            // Local reads: stale on a follower, and not linearizable even on this leader
            // (it cannot tell whether it is still the leader). The limecached node does better.
            Op::Get { key, .. } => out.reply(
                tag,
                Ok(Reply::Value(self.state().get_text(&key))),
            ),
            Op::Status => out.reply(tag, Ok(Reply::Status(Box::new(self.status())))),
            Op::Write { .. } if !self.is_leader() => {
                out.reply(tag, Err(Failure::not_leader(self.leader_addr())))
            }
            Op::Write { command, session } => {
                self.propose(tag, Payload::write(command, session), out)
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
