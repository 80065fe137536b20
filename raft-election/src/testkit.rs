//! What the simulator tests of this stage and the later ones use on a cluster of
//! [`RaftNode`]s: who leads, the properties of Figure 3 after every simulated event, and the
//! Figure 8 random schedule.
//! Compaction-aware: an entry a node has compacted into a snapshot is not compared, its
//! state is.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use kv_server::protocol::{NodeId, Op, Reply, WriteOutcome};
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use raft_log::types::{LogIndex, Term};
use rand::Rng;
use replication_naive::node::RequestTag;
use replication_naive::sim::{NetConfig, Sim};

use crate::node::RaftNode;

/// The base election timeout of the default [`crate::node::Config`] with 10 ms ticks.
const SCHEDULE_ELECTION_MS: u64 = 200;

/// The running nodes that believe they lead, with their terms.
pub fn leaders<S: Storage, P: Snapshots>(sim: &Sim<RaftNode<S, P>>) -> Vec<(NodeId, Term)> {
    sim.ids()
        .into_iter()
        .filter_map(|id| {
            sim.node(id)
                .filter(|n| n.is_leader())
                .map(|n| (id, n.term()))
        })
        .collect()
}

/// The one leader of the highest term among running nodes, if a majority of the voters in
/// its configuration agree it is the leader (it leads, or they follow it in its term).
pub fn stable_leader<S: Storage, P: Snapshots>(sim: &Sim<RaftNode<S, P>>) -> Option<NodeId> {
    let (leader, term) = leaders(sim).into_iter().max_by_key(|&(_, t)| t)?;
    let membership = sim.node(leader)?.membership();
    let followers = membership
        .voter_ids()
        .filter_map(|id| sim.node(id))
        .filter(|n| n.term() == term && n.leader() == Some(leader))
        .count();
    (followers >= membership.majority()).then_some(leader)
}

/// Election safety (§5.2, Figure 3): at most one leader per term, over the whole run,
/// checked after every simulated event.
pub fn check_election_safety<S: Storage + 'static, P: Snapshots + 'static>(
    sim: &mut Sim<RaftNode<S, P>>,
) {
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
/// - **leader completeness**: a node that becomes leader holds every entry known committed,
///   or a snapshot covering it whose last entry has the committed term;
/// - **state machine safety**: no two nodes apply different entries at one index;
///
/// and that committed entries are never seen with two different terms. An entry that a node
/// passed over by installing a snapshot, or compacted before the check saw it, is not
/// compared; [`assert_same_state`] compares what it led to. Log matching is checked by
/// [`assert_log_matching`] at the end of each phase of a test (it is quadratic).
pub fn check_raft_properties<S: Storage + 'static, P: Snapshots + 'static>(
    sim: &mut Sim<RaftNode<S, P>>,
) {
    let history: Rc<RefCell<History>> = Rc::default();
    sim.check_every_step(move |sim| {
        let mut h = history.borrow_mut();
        let seed = sim.seed();
        for id in sim.ids() {
            let Some(node) = sim.node(id) else { continue };
            let log = node.log();
            let compacted = log.first_index().prev().0;
            let life = sim.incarnation(id);
            let mut seen = *h
                .seen
                .get(&id)
                .filter(|s| s.incarnation == life)
                .unwrap_or(&NodeSeen {
                    incarnation: life,
                    ..NodeSeen::default()
                });
            if node.is_leader() {
                let term = node.term();
                let first = *h.leader_of.entry(term).or_insert(id);
                assert_eq!(
                    first, id,
                    "election safety: two leaders in term {term} (seed {seed})"
                );
                let last = (log.last_index().0, log.term(log.last_index()).unwrap_or_default());
                match seen.leading {
                    Some((t, index, entry_term)) if t == term => {
                        assert!(
                            last.0 >= index && log.term(LogIndex(index)) == Some(entry_term),
                            "leader append-only: node {id} lost entry {index} while leading term {term} (seed {seed})"
                        );
                    }
                    _ => {
                        for (&index, &t) in h.committed.range(compacted..) {
                            assert_eq!(
                                log.term(LogIndex(index)),
                                Some(t),
                                "leader completeness: node {id}, leader of term {term}, lacks committed entry {index} (seed {seed})"
                            );
                        }
                    }
                }
                seen.leading = Some((term, last.0, last.1));
            } else {
                seen.leading = None;
            }
            for index in seen.commit.max(compacted) + 1..=node.commit_index().0 {
                let Some(t) = log.term(LogIndex(index)) else {
                    continue; // installed from a snapshot, never in this log
                };
                let first = *h.committed.entry(index).or_insert(t);
                assert_eq!(
                    first, t,
                    "entry {index} committed with terms {first} and {t} (seed {seed})"
                );
            }
            seen.commit = seen.commit.max(node.commit_index().0);
            for index in seen.applied.max(compacted) + 1..=node.last_applied().0 {
                let Some(t) = log.term(LogIndex(index)) else {
                    continue;
                };
                let first = *h.applied.entry(index).or_insert(t);
                assert_eq!(
                    first, t,
                    "state machine safety: entry {index} applied with terms {first} and {t} (seed {seed})"
                );
            }
            seen.applied = seen.applied.max(node.last_applied().0);
            h.seen.insert(id, seen);
        }
    });
}

/// Log matching (§5.3): if two running nodes hold an entry with the same index and term,
/// they hold the same entries at every index both still hold up to it.
pub fn assert_log_matching<S: Storage, P: Snapshots>(sim: &Sim<RaftNode<S, P>>) {
    type Log = BTreeMap<u64, (Term, String)>;
    let logs: Vec<(NodeId, Log)> = sim
        .ids()
        .into_iter()
        .filter_map(|id| {
            let log = sim.node(id)?.log();
            let entries = log.entries(log.first_index(), log.last_index(), usize::MAX);
            Some((
                id,
                entries
                    .into_iter()
                    .map(|e| (e.index.0, (e.term, format!("{:?}", e.payload))))
                    .collect(),
            ))
        })
        .collect();
    for (i, (a, la)) in logs.iter().enumerate() {
        for (b, lb) in &logs[i + 1..] {
            let agreed = la
                .iter()
                .rev()
                .find(|(index, (term, _))| lb.get(index).is_some_and(|(t, _)| t == term));
            let Some((&upto, _)) = agreed else { continue };
            for (index, entry) in la.range(..=upto) {
                if let Some(other) = lb.get(index) {
                    assert_eq!(
                        entry,
                        other,
                        "log matching: nodes {a} and {b} agree on entry {upto} but not on {index} (seed {})",
                        sim.seed()
                    );
                }
            }
        }
    }
}

/// Every running node that has applied up to the same index holds the same key/value map:
/// whether it got there by applying entries or by installing a snapshot.
pub fn assert_same_state<S: Storage, P: Snapshots>(sim: &Sim<RaftNode<S, P>>) {
    let mut by_index: BTreeMap<LogIndex, (NodeId, Vec<(String, String)>)> = BTreeMap::new();
    for id in sim.ids() {
        let Some(node) = sim.node(id) else { continue };
        let mut state: Vec<(String, String)> = node
            .state()
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        state.sort_unstable();
        match by_index.get(&node.last_applied()) {
            Some((other, expected)) => assert!(
                *expected == state,
                "nodes {other} and {id} applied up to {} but hold different maps (seed {})",
                node.last_applied(),
                sim.seed()
            ),
            None => {
                by_index.insert(node.last_applied(), (id, state));
            }
        }
    }
}

/// 6.824's Figure 8 schedule on a cluster of five: 25 rounds of writes (to the leader and
/// to a random node), random pauses, crashes, restarts and isolations, with `net`'s loss
/// and reordering; the properties of [`check_raft_properties`] after every event, log
/// matching after every round. Then the cluster is healed, and every acknowledged write must
/// be in every node's state.
pub fn run_schedule<S: Storage + 'static, P: Snapshots + 'static>(
    sim: &mut Sim<RaftNode<S, P>>,
    net: NetConfig,
) {
    let seed = sim.seed();
    sim.set_net(net);
    check_raft_properties(sim);
    let mut writes: Vec<(String, RequestTag)> = Vec::new();
    for round in 0..25 {
        // Propose to whoever leads now (if anyone), and to a random node too.
        for target in [stable_leader(sim), Some(NodeId(sim.rng().gen_range(1..=5)))]
            .into_iter()
            .flatten()
        {
            let key = format!("r{round}n{}", target.0);
            writes.push((key.clone(), sim.request(target, Op::put(&key, "v"))));
        }
        let pause = sim.rng().gen_range(0..2 * SCHEDULE_ELECTION_MS);
        sim.run_for(pause);
        match sim.rng().gen_range(0..10) {
            0..=2 => {
                if let Some(leader) = stable_leader(sim) {
                    sim.crash(leader);
                }
            }
            3 => {
                let id = NodeId(sim.rng().gen_range(1..=5));
                sim.crash(id);
            }
            4 | 5 => {
                let id = NodeId(sim.rng().gen_range(1..=5));
                sim.restart(id);
            }
            6 => {
                let id = NodeId(sim.rng().gen_range(1..=5));
                sim.isolate(id);
            }
            7 => sim.heal(),
            _ => {}
        }
        // Never more than two down at once, so a majority can always form again.
        let down: Vec<NodeId> = sim.ids().into_iter().filter(|&id| !sim.is_up(id)).collect();
        for &id in down.iter().skip(2) {
            sim.restart(id);
        }
        assert_log_matching(sim);
    }
    for id in sim.ids() {
        if !sim.is_up(id) {
            sim.restart(id);
        }
    }
    sim.heal();
    sim.set_net(NetConfig::reliable());
    // A write on the healed cluster commits everything acknowledged before it.
    let mut settled = None;
    for _ in 0..20 {
        if !sim.run_until(50 * SCHEDULE_ELECTION_MS, |sim| {
            stable_leader(sim).is_some()
        }) {
            continue;
        }
        let leader = stable_leader(sim).expect("run_until saw one");
        let tag = sim.request(leader, Op::put("final", "v"));
        if sim.run_until(20 * SCHEDULE_ELECTION_MS, |sim| {
            matches!(sim.reply(tag), Some(Ok(_)))
        }) {
            settled = Some(leader);
            break;
        }
    }
    let Some(leader) = settled else {
        panic!("the healed cluster never committed a write (seed {seed})");
    };
    // What the leader that acknowledged it had committed: it may have been replaced
    // since (without pre-vote and check-quorum, elections come easily), but committed
    // entries stay committed.
    let target = sim
        .node(leader)
        .expect("no node crashes after the heal")
        .commit_index();
    assert!(sim.run_until(50 * SCHEDULE_ELECTION_MS, |sim| {
        sim.nodes().all(|n| n.last_applied() >= target)
    }));
    assert_log_matching(sim);
    for (key, tag) in &writes {
        if sim.reply(*tag) == Some(&Ok(Reply::Write(WriteOutcome::Put))) {
            for node in sim.nodes() {
                assert_eq!(
                    node.state().get(key),
                    Some("v"),
                    "acknowledged write {key} lost (seed {seed})"
                );
            }
        }
    }
}
