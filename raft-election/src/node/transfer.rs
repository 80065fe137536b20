//! Leadership transfer (thesis §3.10): a leader hands over to a chosen voter, asked by a
//! client (`transfer_leader`), by a clean shutdown ([`Node::hand_off`]), or by its own
//! removal. The steps are the thesis's:
//!
//! 1. the leader stops taking writes and configuration changes;
//! 2. it brings the target's log up to its own through the usual replication;
//! 3. it sends the target TimeoutNow, and the target campaigns at once (no pre-vote, and
//!    voters set aside the live-leader check for it, §4.2.3);
//! 4. the target's vote request, in a higher term, makes the old leader step down.
//!
//! If no new leader has taken over within an election timeout, the leader gives up and
//! takes writes again (a target that crashed must not leave the cluster without a leader).
//!
//! [`Node::hand_off`]: replication_naive::node::Node::hand_off

use kv_server::protocol::{Failure, NodeId, Reply};
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use raft_log::types::Term;
use replication_naive::node::{Outbox, RequestTag};
use tracing::info;

use super::{Campaign, Duty, RaftNode};
use crate::message::{Message, TimeoutNow};

/// A leadership transfer under way.
#[derive(Debug)]
pub(super) struct Handoff {
    /// The voter that should lead next.
    target: NodeId,
    /// The term it started in; a leader of a later term ends it.
    term: Term,
    /// Ticks since it started.
    elapsed: u64,
    /// Whether TimeoutNow has gone to the target.
    sent: bool,
    /// Who waits for the outcome: a client, a stopping runner, both, or no one (a removed
    /// leader).
    waiting: Vec<RequestTag>,
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// A client asks that `target` lead. Answered once it does, or with `unavailable` when
    /// the transfer fails.
    pub(super) fn transfer_leader(
        &mut self,
        tag: RequestTag,
        target: NodeId,
        out: &mut Outbox<Message>,
    ) {
        if target == self.config.id && self.is_leader() {
            out.reply(tag, Ok(Reply::Done));
        } else if !self.is_leader() {
            out.reply(tag, Err(self.not_leader()));
        } else if !self.membership().is_voter(target) {
            let why = format!("node {target} is not a voter; only a voter can lead");
            out.reply(tag, Err(Failure::bad_request(why)));
        } else if let Some(handoff) = self.handoff.as_mut().filter(|h| h.target == target) {
            // The same transfer asked again (a client's retry after a lost connection): it
            // hears how the one under way ends.
            handoff.waiting.push(tag);
        } else if let Some(busy) = self.handing_off() {
            out.reply(tag, Err(busy));
        } else if !self.heard_lately(target) {
            // It could not take over, and trying would stop writes for an election
            // timeout: refused at once, with nothing stopped.
            let why = format!(
                "node {target} has not answered the leader since its election or within the last \
                 election timeout (down, paused or cut off?); it cannot take over"
            );
            out.reply(tag, Err(Failure::unavailable(why)));
        } else {
            self.start_handoff(target, vec![tag], out);
        }
    }

    /// The runner is stopping: a leader hands over to its most up-to-date voter first.
    pub(super) fn hand_off_before_stopping(&mut self, tag: RequestTag, out: &mut Outbox<Message>) {
        if !self.is_leader() {
            out.reply(tag, Ok(Reply::Done));
        } else if let Some(handoff) = &mut self.handoff {
            // One under way already (asked by a client, or after a removal): the runner
            // stops once it ends, as it would after its own.
            handoff.waiting.push(tag);
        } else if let Some(target) = self.most_up_to_date_voter() {
            self.start_handoff(target, vec![tag], out);
        } else {
            // The only voter: there is no one to hand over to.
            out.reply(tag, Ok(Reply::Done));
        }
    }

    /// Leader: why writes and configuration changes are refused, if a transfer is under way.
    pub(super) fn handing_off(&self) -> Option<Failure> {
        let handoff = self.handoff.as_ref().filter(|_| self.is_leader())?;
        Some(Failure::unavailable(format!(
            "leadership is moving to node {}; retry shortly",
            handoff.target
        )))
    }

    /// Leader, once a configuration that removes it has committed: hands over to the most
    /// up-to-date remaining voter, so the cluster does not wait out an election timeout
    /// (thesis §4.2.2 and §3.10), and steps down.
    pub(super) fn hand_off_when_removed(&mut self, out: &mut Outbox<Message>) {
        if self.handoff.is_some() {
            return;
        }
        match self.most_up_to_date_voter() {
            Some(target) => {
                info!(id = %self.config.id, term = %self.term, "removed from the cluster; handing over");
                self.start_handoff(target, Vec::new(), out)
            }
            None => self.step_down(out),
        }
    }

    fn start_handoff(
        &mut self,
        target: NodeId,
        waiting: Vec<RequestTag>,
        out: &mut Outbox<Message>,
    ) {
        info!(id = %self.config.id, term = %self.term, %target, "handing leadership over");
        self.handoff = Some(Handoff {
            target,
            term: self.term,
            elapsed: 0,
            sent: false,
            waiting,
        });
        self.send_timeout_now(out);
    }

    /// The voter (other than this node) to hand over to: one the leader has heard from
    /// lately before one it has not (a dead voter cannot take over, however up to date its
    /// log), then the one whose log matches the leader's furthest, the lowest id among
    /// equals.
    fn most_up_to_date_voter(&self) -> Option<NodeId> {
        let Duty::Leader { replication, .. } = &self.duty else {
            return None;
        };
        self.membership()
            .voter_ids()
            .filter(|&id| id != self.config.id)
            .max_by_key(|&id| {
                let matched = replication.progress(id).map_or(0, |p| p.match_index.0);
                (self.heard_lately(id), matched, std::cmp::Reverse(id))
            })
    }

    /// Leader: whether `peer` has answered it within the last election timeout (the window
    /// check-quorum uses). A peer that has not answered this leader yet has not been heard:
    /// a transfer to a voter that died before the election is refused from the first tick.
    fn heard_lately(&self, peer: NodeId) -> bool {
        let Duty::Leader {
            ticks, last_heard, ..
        } = &self.duty
        else {
            return false;
        };
        last_heard
            .get(&peer)
            .is_some_and(|&at| ticks - at < self.config.election_ticks)
    }

    /// Leader: sends TimeoutNow once the target's log matches its own. The target can then
    /// win: every voter's log is at most as up to date as the leader's (§5.4.1). A removed
    /// leader also waits until every entry it appended has committed: no one replicates to
    /// it once it has handed over, so it would never learn the outcome of a write it took,
    /// and its client would hear "unknown" for a write that was applied.
    pub(super) fn send_timeout_now(&mut self, out: &mut Outbox<Message>) {
        let Duty::Leader { replication, .. } = &self.duty else {
            return;
        };
        let last_index = self.log.last_index();
        let removed = !self.membership().is_voter(self.config.id);
        let all_committed = self.commit_index() == last_index;
        let Some(handoff) = self.handoff.as_mut().filter(|h| !h.sent) else {
            return;
        };
        let caught_up = replication
            .progress(handoff.target)
            .is_some_and(|p| p.match_index == last_index);
        if !caught_up || (removed && !all_committed) {
            // Replication brings the target up to date and commits the rest; each answer
            // calls this again.
            return;
        }
        handoff.sent = true;
        let term = self.term;
        out.send(handoff.target, Message::TimeoutNow(TimeoutNow { term }));
        if removed {
            // A removed leader has nothing to go back to.
            self.step_down(out);
        }
    }

    /// Voter: the leader hands over to this node. It campaigns at once (thesis §3.10).
    pub(super) fn on_timeout_now(
        &mut self,
        from: NodeId,
        msg: TimeoutNow,
        out: &mut Outbox<Message>,
    ) {
        if msg.term != self.term || self.leader != Some(from) {
            return; // from an earlier term, or from no leader this node follows
        }
        if self.membership().is_voter(self.config.id) {
            info!(id = %self.config.id, term = %self.term, leader = %from, "asked to take over; campaigning");
            self.campaign(Campaign::Transfer, out);
        }
    }

    /// Every tick: a leader whose target has not taken over within an election timeout
    /// gives up and takes writes again; a node that stepped down for the transfer but has
    /// not heard of a new leader within two answers its waiter anyway.
    pub(super) fn tick_handoff(&mut self, out: &mut Outbox<Message>) {
        let election_ticks = self.config.election_ticks;
        let leading = self.is_leader();
        let removed = !self.membership().is_voter(self.config.id);
        let Some(handoff) = &mut self.handoff else {
            return;
        };
        handoff.elapsed += 1;
        let why = if leading && handoff.elapsed >= election_ticks {
            format!(
                "node {} did not take over within an election timeout; node {} still leads",
                handoff.target, self.config.id
            )
        } else if !leading && handoff.elapsed >= 2 * election_ticks {
            let target = handoff.target;
            if removed {
                format!(
                    "this node handed over to node {target} as it left the cluster; it hears from the cluster no more, so whether node {target} took over is not known here"
                )
            } else {
                format!(
                    "this node stepped down for node {target}, but no new leader has been heard of yet"
                )
            }
        } else {
            return;
        };
        info!(id = %self.config.id, %why, "leadership transfer given up");
        self.end_handoff(Err(Failure::unavailable(why)), out);
        if leading && removed {
            self.step_down(out);
        }
    }

    /// This node learned that `leader` leads in `term`: a transfer started in an earlier
    /// term is over, whoever won.
    pub(super) fn leader_elected(&mut self, leader: NodeId, term: Term, out: &mut Outbox<Message>) {
        let Some(handoff) = &self.handoff else {
            return;
        };
        if term <= handoff.term {
            return;
        }
        let outcome = if leader == handoff.target {
            Ok(Reply::Done)
        } else {
            Err(Failure::unavailable(format!(
                "node {leader} was elected instead of node {}; retry",
                handoff.target
            )))
        };
        self.end_handoff(outcome, out);
    }

    fn end_handoff(&mut self, outcome: Result<Reply, Failure>, out: &mut Outbox<Message>) {
        for tag in self.handoff.take().map(|h| h.waiting).unwrap_or_default() {
            out.reply(tag, outcome.clone());
        }
    }
}
