//! Membership changes (stage 8): one server at a time (thesis §4.1), a new server first as
//! a learner that catches up before it votes (§4.2.1), and a leader that removes itself
//! stepping down once the change commits (§4.2.2).

use std::collections::BTreeSet;

use kv_server::protocol::{Failure, NodeId, Reply};
use raft_log::membership::Membership;
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use raft_log::types::Payload;
use replication_naive::node::{Outbox, RequestTag};
use tracing::info;

use super::{Duty, RaftNode};
use crate::message::Message;

/// A change a client asked for.
#[derive(Debug)]
pub(super) enum Change {
    /// Add this node, at this address, as a learner.
    Add(NodeId, String),
    /// Remove this node.
    Remove(NodeId),
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// The configuration in force: the latest in this node's log, committed or not.
    pub fn membership(&self) -> &Membership {
        self.configs.latest()
    }

    /// Leader: appends the configuration `change` asks for, and answers `tag` once it
    /// commits. Refuses, changing nothing, while another change is under way.
    pub(super) fn change_membership(
        &mut self,
        tag: RequestTag,
        change: Change,
        out: &mut Outbox<Message>,
    ) {
        if !self.is_leader() {
            out.reply(tag, Err(self.not_leader()));
            return;
        }
        let current = self.membership();
        let next = match &change {
            Change::Add(id, addr) => match current.addr(*id) {
                // Already added (a retry): nothing to do.
                Some(known) if known == addr => None,
                Some(known) => {
                    let why = format!("node {id} is already a member at {known}; remove it first");
                    out.reply(tag, Err(Failure::bad_request(why)));
                    return;
                }
                None => match current
                    .ids()
                    .find(|&other| current.addr(other) == Some(addr))
                {
                    // Two ids at one address: every message to either would reach one node.
                    Some(other) => {
                        let why =
                            format!("node {other} is already a member at {addr}; remove it first");
                        out.reply(tag, Err(Failure::bad_request(why)));
                        return;
                    }
                    // Made a member by the entry about to be appended.
                    None => Some(current.with_learner(
                        *id,
                        addr.clone(),
                        self.log.last_index().next().0,
                    )),
                },
            },
            Change::Remove(id) if !current.contains(*id) => None,
            Change::Remove(id) if current.is_voter(*id) && current.voter_ids().count() == 1 => {
                let why =
                    format!("node {id} is the only voter; a cluster cannot remove its last voter");
                out.reply(tag, Err(Failure::bad_request(why)));
                return;
            }
            Change::Remove(id) => Some(current.without(*id)),
        };
        let Some(next) = next else {
            // Already in force (a retry, or another client's same change): done only once
            // committed (§4.1: a change is acknowledged when its entry commits), as the
            // first request is answered; until then it could still be cut from the log.
            let outcome = match self.config_pending() {
                Some(pending) => Err(Failure::unavailable(pending)),
                None => Ok(Reply::Done),
            };
            out.reply(tag, outcome);
            return;
        };
        if let Err(busy) = self.ready_for_change(&change) {
            out.reply(tag, Err(Failure::unavailable(busy)));
            return;
        }
        info!(id = %self.config.id, ?change, "membership change");
        self.propose_config(Some(tag), next, out);
    }

    /// Whether a client's change may be appended now: one change at a time.
    fn ready_for_change(&self, change: &Change) -> Result<(), String> {
        self.ready_for_config()?;
        // A learner still catching up is the first half of an add: only its own removal
        // (giving up on it) may come before its promotion.
        match (self.membership().learner_ids().next(), change) {
            (Some(learner), Change::Remove(id)) if *id == learner => Ok(()),
            (Some(learner), _) => Err(format!(
                "node {learner} is still catching up as a learner; one membership change at a time"
            )),
            (None, _) => Ok(()),
        }
    }

    /// Whether any new configuration may be appended now.
    fn ready_for_config(&self) -> Result<(), String> {
        if let Some(busy) = self.handing_off() {
            return Err(busy.message);
        }
        if let Some(pending) = self.config_pending() {
            return Err(pending);
        }
        // Thesis §4.1, with the correction Ongaro posted to raft-dev in 2015: a new leader
        // may not change the configuration until an entry of its own term has committed,
        // or two leaders of different terms could each commit a change the other never saw.
        if self.log.term(self.commit_index()) != Some(self.term) {
            return Err("the leader was just elected; retry shortly".to_owned());
        }
        Ok(())
    }

    /// Why the configuration in force is not final yet, if it has not committed.
    fn config_pending(&self) -> Option<String> {
        let pending = self.configs.latest_index();
        (pending > self.commit_index()).then(|| {
            format!(
                "a membership change is in progress (the configuration at index {pending} has not committed yet); retry shortly"
            )
        })
    }

    /// Leader: appends `membership` to the log, in force from now on.
    fn propose_config(
        &mut self,
        tag: Option<RequestTag>,
        membership: Membership,
        out: &mut Outbox<Message>,
    ) {
        let index = self.propose(tag, Payload::Config(membership.clone()), out);
        self.configs.push(index, self.term, membership);
        self.membership_changed(out);
        self.broadcast(false, out);
        self.advance_commit(out);
    }

    /// The configuration in force changed (appended, cut back, installed from a snapshot):
    /// the runner connects to the members as they now are, and a leader starts or stops
    /// replicating to the members that came or went.
    pub(super) fn membership_changed(&mut self, out: &mut Outbox<Message>) {
        out.set_peers(self.membership().addrs());
        self.removal_confirmed = false;
        let members: BTreeSet<NodeId> = self.peers().into_iter().collect();
        let last_index = self.log.last_index();
        let Duty::Leader {
            replication,
            ticks,
            last_heard,
            transfers,
            ..
        } = &mut self.duty
        else {
            return;
        };
        for gone in replication.followers() {
            if !members.contains(&gone) {
                replication.remove_follower(gone);
                last_heard.remove(&gone);
                transfers.remove(&gone);
            }
        }
        for id in members {
            if replication.progress(id).is_none() {
                replication.add_follower(id, last_index);
                // A new member counts as just heard from, as every follower does when a
                // leader is elected.
                last_heard.insert(id, *ticks);
            }
        }
    }

    /// Leader, after its commit index moved: once the latest configuration has committed,
    /// a leader that it removed steps down (thesis §4.2.2: until then it manages the
    /// cluster without counting itself), and a learner that has caught up is promoted.
    pub(super) fn membership_committed(&mut self, out: &mut Outbox<Message>) {
        if !self.is_leader() || self.configs.latest_index() > self.commit_index() {
            return;
        }
        if !self.membership().is_voter(self.config.id) {
            self.hand_off_when_removed(out);
            return;
        }
        self.promote_caught_up(out);
    }

    /// Leader: promotes a learner whose log is within one AppendEntries of the leader's, so
    /// that adding it as a voter does not stall commits while it catches up (§4.2.1). It
    /// must have answered at least once (its match index is past 0): while the log is
    /// short, a learner that was never reached (not started yet, or at a mistyped address)
    /// would otherwise count as caught up, and become a voter that cannot vote.
    pub(super) fn promote_caught_up(&mut self, out: &mut Outbox<Message>) {
        let Duty::Leader { replication, .. } = &self.duty else {
            return;
        };
        let near = self.config.max_entries_per_message as u64;
        let last = self.log.last_index();
        let caught_up = self.membership().learner_ids().find(|&id| {
            replication
                .progress(id)
                .is_some_and(|p| p.match_index.0 > 0 && p.match_index.0 + near >= last.0)
        });
        let Some(learner) = caught_up else {
            return;
        };
        if self.ready_for_config().is_err() {
            return;
        }
        info!(id = %self.config.id, %learner, "learner caught up; promoting it to voter");
        let next = self.membership().with_promoted(learner);
        self.propose_config(None, next, out);
    }
}
