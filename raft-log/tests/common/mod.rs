//! Cluster builders and the invariant checker for raft-log's simulator tests.
#![allow(dead_code)] // each test file uses its own subset

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use kv_server::protocol::{Command, NodeId};
use raft_log::node::{Config, RaftLogNode};
use raft_log::storage::{MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::sim::Sim;

pub type Cluster = Sim<RaftLogNode<MemStorage>>;

pub const LEADER: NodeId = NodeId(1);

pub use replication_naive::sim::members;

/// `n` nodes with empty logs, node 1 leading; a restarted node comes back empty.
pub fn cluster(seed: u64, n: u64) -> Cluster {
    Sim::new(seed, members(n).into_keys(), 10, move |id, _| {
        RaftLogNode::new(Config::new(id, members(n), LEADER), MemStorage::new())
    })
}

/// An entry that puts `k<index>` = `t<term>`.
pub fn entry(index: u64, term: u64) -> Entry {
    let command = Command::Put {
        key: format!("k{index}"),
        value: format!("t{term}"),
    };
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: Payload::Command(command),
    }
}

/// A log whose entries have the given terms.
pub fn log_of(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(i, &t)| entry(i as u64 + 1, t))
        .collect()
}

/// The (index, term) pairs of a node's whole log.
pub fn terms(node: &RaftLogNode<MemStorage>) -> Vec<(u64, u64)> {
    let log = node.log();
    log.entries(LogIndex(1), log.last_index(), usize::MAX)
        .iter()
        .map(|e| (e.index.0, e.term.0))
        .collect()
}

/// Checks, after every simulator event: a node's commit index never moves backwards within
/// one life; a node's commit index only moves to an entry a majority of nodes stores at
/// that moment (skipped when `restarts` is set: in this stage a restarted node loses the
/// entries it acknowledged, which the leader may still count); `last_applied <= commit`.
pub fn check_invariants(sim: &mut Cluster, restarts: bool) {
    let seen: Rc<RefCell<HashMap<NodeId, (u64, LogIndex)>>> = Rc::default();
    sim.check_every_step(move |sim| {
        let mut seen = seen.borrow_mut();
        let majority = sim.ids().len() / 2 + 1;
        for id in sim.ids() {
            let Some(node) = sim.node(id) else { continue };
            let life = sim.incarnation(id);
            let commit = node.commit_index();
            assert!(
                node.last_applied() <= commit,
                "node {id} applied past its commit index"
            );
            let before = match seen.get(&id) {
                Some(&(l, c)) if l == life => c,
                _ => LogIndex(0),
            };
            assert!(
                commit >= before,
                "node {id}: commit index went back from {before} to {commit}"
            );
            if commit > before && !restarts {
                let term = node.log().term(commit);
                let storing = sim.nodes().filter(|n| n.log().term(commit) == term).count();
                assert!(
                    storing >= majority,
                    "node {id} committed {commit}, stored by {storing} nodes only"
                );
            }
            seen.insert(id, (life, commit));
        }
    });
}

/// Asserts every running node holds the same log and the same data, as applied up to the
/// same index.
pub fn assert_all_agree(sim: &Cluster) {
    let leader = sim.node(LEADER).expect("the leader is up");
    for node in sim.nodes() {
        assert_eq!(
            terms(node),
            terms(leader),
            "logs differ (seed {})",
            sim.seed()
        );
        assert_eq!(
            node.last_applied(),
            leader.last_applied(),
            "applied indexes differ"
        );
        assert_eq!(
            node.state(),
            leader.state(),
            "data differs (seed {})",
            sim.seed()
        );
    }
}
