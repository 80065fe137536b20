//! The Raft core of this stage: log replication with a fixed leader (§5.3, Figure 2).

use std::collections::BTreeMap;

use kv_server::protocol::{Failure, Member, NodeId, Op, Reply, Role, Status};
use kv_server::store::KvMap;
use replication_naive::node::{Node, Outbox, RequestTag};
use tracing::{debug, warn};

use crate::message::{AppendEntries, AppendEntriesResponse, Message, Rejection};
use crate::storage::{HardState, Storage};
use crate::types::{Entry, LogIndex, Payload, Term};

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

    fn majority(&self) -> usize {
        self.members.len() / 2 + 1
    }
}

/// How the leader sends to one follower (the two modes of etcd's raft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Where the follower's log matches is not known: one AppendEntries at a time, moving
    /// `next_index` back on each rejection until one is accepted.
    Probe {
        /// An AppendEntries is out and unanswered; the next goes out on its answer or at the
        /// next heartbeat (in case it was lost).
        waiting: bool,
    },
    /// The logs match up to `match_index`: new entries are sent as soon as they exist, and
    /// `next_index` moves ahead optimistically without waiting for answers.
    Pipeline,
}

/// The leader's view of one follower (Figure 2, "volatile state on leaders").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The next entry to send.
    pub next_index: LogIndex,
    /// The highest entry known to be replicated on the follower.
    pub match_index: LogIndex,
    /// Probing or pipelining.
    pub mode: Mode,
}

/// A Raft node with a fixed leader: replicates, commits and applies the log.
#[derive(Debug)]
pub struct RaftLogNode<S> {
    config: Config,
    log: S,
    term: Term,
    commit_index: LogIndex,
    last_applied: LogIndex,
    state: KvMap,
    /// Leader only: every follower's progress.
    progress: BTreeMap<NodeId, Progress>,
    /// Leader only: clients waiting for the entry at an index to be applied.
    waiting: BTreeMap<LogIndex, RequestTag>,
    ticks_since_heartbeat: u64,
}

impl<S: Storage> RaftLogNode<S> {
    /// A node with the log `log` (empty, or preset by a test).
    pub fn new(config: Config, mut log: S) -> RaftLogNode<S> {
        assert!(
            config.members.contains_key(&config.id),
            "a node must be a member"
        );
        assert!(
            config.members.contains_key(&config.leader),
            "the leader must be a member"
        );
        let mut term = log.hard_state().current_term;
        let mut progress = BTreeMap::new();
        if config.id == config.leader {
            term = term.max(config.term);
            log.save_hard_state(HardState {
                current_term: term,
                voted_for: Some(config.id),
            });
            let next_index = log.last_index().next();
            for &peer in config.members.keys().filter(|&&m| m != config.id) {
                let p = Progress {
                    next_index,
                    match_index: LogIndex(0),
                    mode: Mode::Probe { waiting: false },
                };
                progress.insert(peer, p);
            }
        }
        RaftLogNode {
            config,
            log,
            term,
            commit_index: LogIndex(0),
            last_applied: LogIndex(0),
            state: KvMap::default(),
            progress,
            waiting: BTreeMap::new(),
            ticks_since_heartbeat: 0,
        }
    }

    /// The log.
    pub fn log(&self) -> &S {
        &self.log
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// The highest index applied to the key/value map.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// The key/value map, as of `last_applied`.
    pub fn state(&self) -> &KvMap {
        &self.state
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        self.config.id == self.config.leader
    }

    /// The leader's view of `follower`.
    pub fn progress(&self, follower: NodeId) -> Option<&Progress> {
        self.progress.get(&follower)
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
            commit_index: Some(self.commit_index.0),
            last_applied: Some(self.last_applied.0),
            members: Some(
                members
                    .map(|(&id, addr)| Member {
                        id,
                        addr: addr.clone(),
                        voter: true,
                    })
                    .collect(),
            ),
        }
    }

    /// Leader: appends a client's write to the log and starts replicating it.
    fn propose(&mut self, tag: RequestTag, payload: Payload, out: &mut Outbox<Message>) {
        let index = self.log.last_index().next();
        self.log.append(vec![Entry {
            index,
            term: self.term,
            payload,
        }]);
        self.waiting.insert(index, tag);
        let followers: Vec<NodeId> = self.progress.keys().copied().collect();
        for follower in followers {
            self.send_append(follower, false, out);
        }
        // A cluster of one commits on its own.
        self.advance_commit(out);
    }

    /// Leader: sends `follower` what it is missing, as its mode allows. A heartbeat goes out
    /// even with nothing new, and re-sends a probe whose answer may have been lost.
    fn send_append(&mut self, follower: NodeId, heartbeat: bool, out: &mut Outbox<Message>) {
        let last = self.log.last_index();
        let max = self.config.max_entries_per_message;
        let Some(p) = self.progress.get_mut(&follower) else {
            return;
        };
        if p.mode == (Mode::Probe { waiting: true }) && !heartbeat {
            return;
        }
        if p.mode == Mode::Pipeline && p.next_index > last && !heartbeat {
            return;
        }
        let prev_log_index = p.next_index.prev();
        let Some(prev_log_term) = self.log.term(prev_log_index) else {
            warn!(%follower, %prev_log_index, "no term for the entry before next_index; not sending");
            return;
        };
        let entries = self.log.entries(p.next_index, last, max);
        match &mut p.mode {
            Mode::Probe { waiting } => *waiting = true,
            Mode::Pipeline => {
                if let Some(sent) = entries.last() {
                    p.next_index = sent.index.next();
                }
            }
        }
        let append = AppendEntries {
            term: self.term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: self.commit_index,
        };
        out.send(follower, Message::AppendEntries(append));
    }

    /// Follower: Figure 2's AppendEntries receiver.
    fn on_append_entries(&mut self, from: NodeId, req: AppendEntries, out: &mut Outbox<Message>) {
        let reject = |term, conflict_term, conflict_index| AppendEntriesResponse {
            term,
            result: Err(Rejection {
                prev_log_index: req.prev_log_index,
                conflict_term,
                conflict_index,
            }),
        };
        // 1. Reply false if term < currentTerm (§5.1).
        if req.term < self.term {
            debug!(%from, term = %req.term, "stale AppendEntries refused");
            out.send(
                from,
                Message::AppendEntriesResponse(reject(self.term, None, LogIndex(0))),
            );
            return;
        }
        if req.term > self.term {
            self.term = req.term;
            self.log.save_hard_state(HardState {
                current_term: self.term,
                voted_for: None,
            });
        }
        // 2. Reply false if the log has no entry at prev_log_index whose term is
        //    prev_log_term (§5.3), with the hint that skips the conflicting term at once.
        match self.log.term(req.prev_log_index) {
            None => {
                let hint = reject(self.term, None, self.log.last_index().next());
                out.send(from, Message::AppendEntriesResponse(hint));
                return;
            }
            Some(term) if term != req.prev_log_term => {
                let first = self.first_index_of_term(req.prev_log_index, term);
                out.send(
                    from,
                    Message::AppendEntriesResponse(reject(self.term, Some(term), first)),
                );
                return;
            }
            Some(_) => {}
        }
        // 3. If an existing entry conflicts with a new one (same index, different term),
        //    delete it and all that follow; 4. append entries not already in the log. Entries
        //    already held are left alone, so a late, shorter AppendEntries cannot truncate
        //    what a newer one appended.
        let last_new = LogIndex(req.prev_log_index.0 + req.entries.len() as u64);
        let mut entries = req.entries;
        let new_from = entries
            .iter()
            .position(|e| self.log.term(e.index) != Some(e.term));
        if let Some(i) = new_from {
            let first_new = entries[i].index;
            if first_new <= self.log.last_index() {
                assert!(
                    first_new > self.commit_index,
                    "§5.3: a committed entry is never overwritten"
                );
                self.log.truncate_after(first_new.prev());
            }
            self.log.append(entries.split_off(i));
        }
        // 5. If leader_commit > commit_index, commit_index = min(leader_commit, index of last
        //    new entry). Never backwards: an old AppendEntries may carry an older leader_commit.
        let commit = req.leader_commit.min(last_new);
        if commit > self.commit_index {
            self.commit_index = commit;
            self.apply_committed(out);
        }
        out.send(
            from,
            Message::AppendEntriesResponse(AppendEntriesResponse {
                term: self.term,
                result: Ok(last_new),
            }),
        );
    }

    /// The first index of the run of `term` entries that ends at `index`.
    fn first_index_of_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut first = index;
        while first.prev() >= self.log.first_index() && self.log.term(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }

    /// Leader: an answer to an AppendEntries.
    fn on_append_response(
        &mut self,
        from: NodeId,
        resp: AppendEntriesResponse,
        out: &mut Outbox<Message>,
    ) {
        if resp.term > self.term {
            // Another leader with a higher term cannot exist while leadership is fixed.
            warn!(%from, term = %resp.term, "a follower reports a higher term; ignored until elections exist");
            return;
        }
        let Some(p) = self.progress.get_mut(&from) else {
            return;
        };
        match resp.result {
            Ok(matched) => {
                p.match_index = p.match_index.max(matched);
                p.next_index = p.next_index.max(matched.next());
                p.mode = Mode::Pipeline;
                self.advance_commit(out);
                self.send_append(from, false, out);
            }
            Err(rejection) => {
                let stale = match p.mode {
                    Mode::Probe { .. } => rejection.prev_log_index != p.next_index.prev(),
                    Mode::Pipeline => rejection.prev_log_index < p.match_index,
                };
                if stale || resp.term < self.term {
                    debug!(%from, prev = %rejection.prev_log_index, "stale rejection ignored");
                    return;
                }
                let next = self
                    .next_index_after(rejection)
                    .min(rejection.prev_log_index)
                    .max(LogIndex(1));
                let p = self.progress.get_mut(&from).expect("checked above");
                if next <= p.match_index {
                    // The follower lost entries it had acknowledged: in this stage a restarted
                    // node comes back empty.
                    p.match_index = next.prev();
                }
                debug!(%from, %next, "log mismatch; probing");
                p.next_index = next;
                p.mode = Mode::Probe { waiting: false };
                self.send_append(from, false, out);
            }
        }
    }

    /// Where to retry after a rejection: past the leader's last entry of the conflicting term
    /// if it has that term, else at the follower's first entry of it (§5.3, last paragraphs).
    fn next_index_after(&self, rejection: Rejection) -> LogIndex {
        let Some(conflict_term) = rejection.conflict_term else {
            return rejection.conflict_index;
        };
        let mut index = rejection.prev_log_index.min(self.log.last_index());
        while index >= self.log.first_index() {
            match self.log.term(index) {
                Some(term) if term == conflict_term => return index.next(),
                Some(term) if term < conflict_term => break,
                _ => index = index.prev(),
            }
        }
        rejection.conflict_index
    }

    /// Leader: commits the highest index a majority stores, if it is from the current term.
    fn advance_commit(&mut self, out: &mut Outbox<Message>) {
        let mut stored: Vec<LogIndex> = self.progress.values().map(|p| p.match_index).collect();
        stored.push(self.log.last_index());
        stored.sort_unstable_by(|a, b| b.cmp(a));
        let candidate = stored[self.config.majority() - 1];
        // §5.4.2: only entries from the current term are committed by counting replicas;
        // earlier ones commit with them (Figure 8).
        if candidate > self.commit_index && self.log.term(candidate) == Some(self.term) {
            self.commit_index = candidate;
            self.apply_committed(out);
        }
    }

    /// Applies committed entries in log order, answering the clients that wait for them.
    fn apply_committed(&mut self, out: &mut Outbox<Message>) {
        while self.last_applied < self.commit_index {
            let from = self.last_applied.next();
            let batch = self.log.entries(from, self.commit_index, 1024);
            assert!(
                !batch.is_empty(),
                "committed entries {from}..={} must be in the log",
                self.commit_index
            );
            for entry in batch {
                assert_eq!(
                    entry.index,
                    self.last_applied.next(),
                    "entries are applied once, in order"
                );
                self.last_applied = entry.index;
                let outcome = match entry.payload {
                    Payload::Command(command) => self.state.apply(command),
                };
                if let Some(tag) = self.waiting.remove(&entry.index) {
                    out.reply(tag, Ok(Reply::Write(outcome)));
                }
            }
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
            let followers: Vec<NodeId> = self.progress.keys().copied().collect();
            for follower in followers {
                self.send_append(follower, true, out);
            }
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

    fn request(&mut self, tag: RequestTag, op: Op, out: &mut Outbox<Message>) {
        match op {
            // Local reads: stale on a follower, and not linearizable even on this leader
            // (it cannot tell whether it is still the leader). The limecached node does better.
            Op::Get { key, .. } => out.reply(
                tag,
                Ok(Reply::Value(self.state.get(&key).map(str::to_owned))),
            ),
            Op::Status => out.reply(tag, Ok(Reply::Status(Box::new(self.status())))),
            Op::Write { .. } if !self.is_leader() => {
                out.reply(tag, Err(Failure::not_leader(self.leader_addr())))
            }
            Op::Write { command, .. } => self.propose(tag, Payload::Command(command), out),
            Op::AddMember { .. } | Op::RemoveMember { .. } => out.reply(
                tag,
                Err(Failure::bad_request("membership changes arrive in stage 8")),
            ),
        }
    }
}
