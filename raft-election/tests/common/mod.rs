//! Clusters of election-stage nodes in the simulator, and the checks every test runs.
#![allow(dead_code)] // each test file uses its own subset

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use kv_server::protocol::{Command, NodeId, Op};
use raft_election::node::{Config, RaftNode};
use raft_log::storage::MemStorage;
use raft_log::types::Term;
use replication_naive::sim::Sim;

pub type Cluster = Sim<RaftNode<MemStorage>>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;

pub fn members(n: u64) -> BTreeMap<NodeId, String> {
    (1..=n)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
        .collect()
}

/// `n` nodes with default settings. A restarted node keeps its storage (term, vote, log:
/// what the durable storage keeps) and loses everything else.
pub fn cluster(seed: u64, n: u64) -> Cluster {
    cluster_with(seed, n, |_| {})
}

/// Like [`cluster`], with `tweak` applied to every node's configuration.
pub fn cluster_with(seed: u64, n: u64, tweak: impl Fn(&mut Config) + 'static) -> Cluster {
    Sim::new(
        seed,
        members(n).into_keys(),
        TICK_MS,
        move |id, old: Option<RaftNode<MemStorage>>| {
            let mut config = Config::new(id, members(n), seed);
            tweak(&mut config);
            let storage = old.map(RaftNode::into_storage).unwrap_or_default();
            RaftNode::new(config, storage)
        },
    )
}

pub fn put(key: &str, value: &str) -> Op {
    Op::Write {
        command: Command::Put {
            key: key.into(),
            value: value.into(),
        },
        session: None,
    }
}

/// The running nodes that believe they lead, with their terms.
pub fn leaders(sim: &Cluster) -> Vec<(NodeId, Term)> {
    sim.ids()
        .into_iter()
        .filter_map(|id| {
            sim.node(id)
                .filter(|n| n.is_leader())
                .map(|n| (id, n.term()))
        })
        .collect()
}

/// The one leader of the highest term among running nodes, if every running node of a
/// majority agrees it is the leader (it leads, or they follow it in its term).
pub fn stable_leader(sim: &Cluster) -> Option<NodeId> {
    let (leader, term) = leaders(sim).into_iter().max_by_key(|&(_, t)| t)?;
    let followers = sim
        .nodes()
        .filter(|n| n.term() == term && n.leader() == Some(leader))
        .count();
    (followers > sim.ids().len() / 2).then_some(leader)
}

/// Election safety (§5.2, Figure 3): at most one leader per term, over the whole run,
/// checked after every simulated event.
pub fn check_election_safety(sim: &mut Cluster) {
    let seen: Rc<RefCell<BTreeMap<Term, NodeId>>> = Rc::default();
    sim.check_every_step(move |sim| {
        let mut seen = seen.borrow_mut();
        for (id, term) in leaders(sim) {
            let first = *seen.entry(term).or_insert(id);
            assert_eq!(
                first,
                id,
                "two leaders in term {term}: {first} and {id} (seed {})",
                sim.seed()
            );
        }
    });
}
