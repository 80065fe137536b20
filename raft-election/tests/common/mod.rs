//! Clusters of election-stage nodes in the simulator, and the checks every test runs.
#![allow(dead_code)] // each test file uses its own subset

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use kv_server::protocol::{Command, NodeId, Op};
use raft_election::node::{Config, RaftNode};
use raft_log::storage::{MemStorage, Storage};
use raft_log::types::Term;
use replication_naive::sim::Sim;

pub type Cluster = Sim<RaftNode<MemStorage>>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;

pub use replication_naive::sim::members;

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
pub fn leaders<S: Storage>(sim: &Sim<RaftNode<S>>) -> Vec<(NodeId, Term)> {
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
pub fn stable_leader<S: Storage>(sim: &Sim<RaftNode<S>>) -> Option<NodeId> {
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

/// What the per-step checker remembers between events.
#[derive(Default)]
struct History {
    /// Election safety: the leader of each term.
    leader_of: BTreeMap<Term, NodeId>,
    /// Every entry known committed (by some node's commit index): index → term.
    committed: BTreeMap<u64, Term>,
    /// Every entry applied by some node: index → term.
    applied: BTreeMap<u64, Term>,
    /// Per node and incarnation: commit and apply progress already recorded, and, while it
    /// leads, the (term, last index, last term) of its log.
    seen: BTreeMap<NodeId, NodeSeen>,
}

#[derive(Default, Clone, Copy)]
struct NodeSeen {
    incarnation: u64,
    commit: u64,
    applied: u64,
    leading: Option<(Term, u64, Term)>,
}

/// Checks after every simulated event the properties of Figure 3:
///
/// - **election safety**: at most one leader per term;
/// - **leader append-only**: while it leads, a leader's log only grows (its last entry stays);
/// - **leader completeness**: a node that becomes leader holds every entry known committed;
/// - **state machine safety**: no two nodes apply different entries at one index;
///
/// and that committed entries are never seen with two different terms. Log matching is
/// checked by [`assert_log_matching`] at the end of each phase of a test (it is quadratic).
pub fn check_raft_properties<S: Storage + 'static>(sim: &mut Sim<RaftNode<S>>) {
    use raft_log::types::LogIndex;
    let history: Rc<RefCell<History>> = Rc::default();
    sim.check_every_step(move |sim| {
        let mut h = history.borrow_mut();
        let seed = sim.seed();
        for id in sim.ids() {
            let Some(node) = sim.node(id) else { continue };
            let log = node.log();
            let term_at = |i: u64| log.term(LogIndex(i)).expect("committed and applied entries are in the log");
            let life = sim.incarnation(id);
            let mut seen = *h.seen.get(&id).filter(|s| s.incarnation == life).unwrap_or(&NodeSeen { incarnation: life, ..NodeSeen::default() });
            if node.is_leader() {
                let term = node.term();
                let first = *h.leader_of.entry(term).or_insert(id);
                assert_eq!(first, id, "election safety: two leaders in term {term} (seed {seed})");
                let last = (log.last_index().0, log.term(log.last_index()).unwrap());
                match seen.leading {
                    Some((t, index, entry_term)) if t == term => {
                        assert!(last.0 >= index && log.term(LogIndex(index)) == Some(entry_term),
                            "leader append-only: node {id} lost entry {index} while leading term {term} (seed {seed})");
                    }
                    _ => {
                        for (&index, &t) in h.committed.iter() {
                            assert_eq!(log.term(LogIndex(index)), Some(t),
                                "leader completeness: node {id}, leader of term {term}, lacks committed entry {index} (seed {seed})");
                        }
                    }
                }
                seen.leading = Some((term, last.0, last.1));
            } else {
                seen.leading = None;
            }
            for index in seen.commit + 1..=node.commit_index().0 {
                let t = term_at(index);
                let first = *h.committed.entry(index).or_insert(t);
                assert_eq!(first, t, "entry {index} committed with terms {first} and {t} (seed {seed})");
            }
            seen.commit = seen.commit.max(node.commit_index().0);
            for index in seen.applied + 1..=node.last_applied().0 {
                let t = term_at(index);
                let first = *h.applied.entry(index).or_insert(t);
                assert_eq!(first, t, "state machine safety: entry {index} applied with terms {first} and {t} (seed {seed})");
            }
            seen.applied = seen.applied.max(node.last_applied().0);
            h.seen.insert(id, seen);
        }
    });
}

/// Log matching (§5.3): if two running nodes hold an entry with the same index and term,
/// their logs are identical up to it.
pub fn assert_log_matching<S: Storage>(sim: &Sim<RaftNode<S>>) {
    use raft_log::types::LogIndex;
    type Log = Vec<(u64, Term, String)>;
    let logs: Vec<(NodeId, Log)> = sim
        .ids()
        .into_iter()
        .filter_map(|id| {
            let log = sim.node(id)?.log();
            let entries = log.entries(LogIndex(1), log.last_index(), usize::MAX);
            Some((
                id,
                entries
                    .into_iter()
                    .map(|e| (e.index.0, e.term, format!("{:?}", e.payload)))
                    .collect(),
            ))
        })
        .collect();
    for (i, (a, la)) in logs.iter().enumerate() {
        for (b, lb) in &logs[i + 1..] {
            let common = la.len().min(lb.len());
            if let Some(k) = (0..common).rev().find(|&k| la[k].1 == lb[k].1) {
                assert_eq!(
                    la[..=k],
                    lb[..=k],
                    "log matching: nodes {a} and {b} agree on entry {} but not before (seed {})",
                    k + 1,
                    sim.seed()
                );
            }
        }
    }
}

/// `n` nodes whose storage is [`raft_election::durable::DurableStorage`] on simulated disks:
/// every restart replays the node's log from the bytes its disk kept.
pub fn durable_cluster(
    seed: u64,
    n: u64,
    tweak: impl Fn(&mut Config) + 'static,
) -> Sim<RaftNode<raft_election::durable::DurableStorage<raft_election::medium::SimDisk>>> {
    use raft_election::durable::DurableStorage;
    use raft_election::medium::SimDisk;
    Sim::new(
        seed,
        members(n).into_keys(),
        TICK_MS,
        move |id, old: Option<RaftNode<DurableStorage<SimDisk>>>| {
            let mut config = Config::new(id, members(n), seed);
            tweak(&mut config);
            let disk = old
                .map(|node| node.into_storage().into_medium())
                .unwrap_or_default();
            RaftNode::new(
                config,
                DurableStorage::open(disk).expect("a simulated disk replays"),
            )
        },
    )
}
