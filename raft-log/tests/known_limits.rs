//! What this stage cannot survive, demonstrated. These tests pass when the limit shows; each
//! names the stage that removes it.

mod common;

use common::{LEADER, cluster};
use kv_server::protocol::{NodeId, Op};
use raft_log::types::LogIndex;

/// The leader restarts with an empty in-memory log in the same fixed term 1. Its next write
/// lands at index 1, term 1 — the same (index, term) as a different, committed entry the
/// followers hold — so they take it for one they already have (Log Matching assumes an
/// (index, term) pair names one entry). The leader applies its new write; the followers keep
/// the old one. Stage 6 removes this: the term and log are durable, and a restarted node
/// must win an election in a new, higher term before it leads.
#[test]
fn restarting_the_fixed_leader_breaks_log_matching() {
    let mut sim = cluster(1, 3);
    let first = sim.request(LEADER, Op::put("k", "old"));
    assert!(sim.run_until(1_000, |sim| sim.reply(first).is_some()));
    assert!(sim.run_until(1_000, |sim| {
        sim.nodes().all(|n| n.last_applied() == LogIndex(1))
    }));

    sim.restart(LEADER);
    let second = sim.request(LEADER, Op::put("k", "new"));
    assert!(
        sim.run_until(1_000, |sim| sim.reply(second).is_some()),
        "the new write is acknowledged"
    );
    sim.run_for(1_000);
    assert_eq!(sim.node(LEADER).unwrap().state().get("k"), Some("new"));
    assert_eq!(
        sim.node(NodeId(2)).unwrap().state().get("k"),
        Some("old"),
        "the follower kept the old entry 1"
    );
}
