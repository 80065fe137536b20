//! The known flaws of naive replication, each demonstrated. These tests pass when the flaw
//! shows: they document why stage 3 (`raft-log`) exists, and each names what fixes it there.

mod common;

use common::{LEADER, cluster};
use kv_server::protocol::{NodeId, Op};
use replication_naive::naive::NaiveNode;
use replication_naive::sim::{NetConfig, Sim};

const F1: NodeId = NodeId(2);
const F2: NodeId = NodeId(3);

fn value(sim: &Sim<NaiveNode>, id: NodeId, key: &str) -> Option<String> {
    sim.node(id).unwrap().map().get(key).map(str::to_owned)
}

/// Flaw 1: a follower that misses a write never gets it. Fixed in raft-log by the
/// AppendEntries consistency check (§5.3): the follower refuses entries past a gap, and the
/// leader backs `next_index` up and resends until the logs match.
#[test]
fn a_follower_that_misses_a_write_stays_divergent_forever() {
    let mut sim = cluster(1);
    sim.isolate(F2);
    let tag = sim.request(LEADER, Op::put("k", "v"));
    sim.run_until(1000, |sim| sim.reply(tag).is_some());
    assert!(
        sim.reply(tag).unwrap().is_ok(),
        "acknowledged by the leader and F1"
    );

    sim.heal();
    sim.request(LEADER, Op::put("other", "x"));
    sim.run_for(60_000);
    assert_eq!(value(&sim, LEADER, "k").as_deref(), Some("v"));
    assert_eq!(value(&sim, F1, "k").as_deref(), Some("v"));
    assert_eq!(
        value(&sim, F2, "k"),
        None,
        "F2 missed the acknowledged write for good"
    );
    assert_eq!(
        value(&sim, F2, "other").as_deref(),
        Some("x"),
        "yet it takes later writes"
    );
}

/// Flaw 2: followers apply a write before anything is decided. The leader crashes after F1
/// applied it and before F2 got it: the survivors disagree, and the client was never told.
/// Fixed in raft-log by applying only committed entries, and in raft-election by the
/// election restriction (§5.4.1), which makes any new leader hold every committed entry.
#[test]
fn a_leader_crash_between_acknowledgements_leaves_the_followers_disagreeing() {
    let mut sim = cluster(2);
    sim.partition(&[&[LEADER, F1], &[F2]]);
    let tag = sim.request(LEADER, Op::put("k", "v"));
    assert!(sim.run_until(1000, |sim| value(sim, F1, "k").is_some()));
    sim.crash(LEADER);
    sim.heal();
    sim.run_for(60_000);
    assert_eq!(sim.reply(tag), None, "the client never learns the outcome");
    assert_eq!(value(&sim, F1, "k").as_deref(), Some("v"));
    assert_eq!(value(&sim, F2, "k"), None);
}

/// Flaw 3: no order. Two writes to one key travel independently; where the network reorders
/// them, a follower ends with the older value. Fixed in raft-log: entries have log indexes and
/// are applied strictly in index order.
#[test]
fn reordered_writes_leave_a_follower_with_the_older_value() {
    let diverged = (0..100u64).filter(|&seed| {
        let mut sim = cluster(seed);
        sim.set_net(NetConfig {
            min_delay: 1,
            max_delay: 40,
            drop: 0.0,
            duplicate: 0.0,
        });
        sim.request(LEADER, Op::put("k", "first"));
        sim.request(LEADER, Op::put("k", "second"));
        sim.run_for(10_000);
        let leader = value(&sim, LEADER, "k");
        [F1, F2].iter().any(|&f| value(&sim, f, "k") != leader)
    });
    // Deterministic: the same seeds diverge on every run.
    let diverged = diverged.count();
    eprintln!("{diverged} of 100 seeds left a follower with the older value");
    assert!(
        diverged > 10,
        "reordering should leave followers behind in many seeds"
    );
}
