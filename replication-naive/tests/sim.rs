//! The simulator itself: a seed fixes the whole run; partitions, crashes and restarts do what
//! they say. The naive node serves as a small, deterministic subject.

mod common;

use common::{LEADER, cluster, stale_get as get};
use kv_server::protocol::{NodeId, Op, Reply, WriteOutcome};
use replication_naive::naive::NaiveNode;
use replication_naive::sim::NetConfig;

/// A digest of a run: every node's data after a fixed workload on a lossy network.
fn run_digest(seed: u64) -> (u64, Vec<Vec<(String, String)>>) {
    let mut sim = cluster(seed);
    sim.set_net(NetConfig::unreliable());
    for i in 0..50 {
        sim.request(LEADER, Op::put(&format!("k{}", i % 5), &i.to_string()));
        sim.run_for(3);
    }
    sim.run_for(1000);
    let maps = sim
        .nodes()
        .map(|n| {
            let mut entries: Vec<_> = n
                .map()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
            entries.sort();
            entries
        })
        .collect();
    (sim.delivered(), maps)
}

#[test]
fn the_same_seed_replays_the_same_run_and_another_seed_differs() {
    assert_eq!(run_digest(7), run_digest(7));
    assert_ne!(run_digest(7), run_digest(8));
}

#[test]
fn a_partition_stops_messages_and_heal_restores_them() {
    let mut sim = cluster(1);
    sim.partition(&[&[NodeId(1), NodeId(2)], &[NodeId(3)]]);
    assert!(!sim.connected(NodeId(1), NodeId(3)) && !sim.connected(NodeId(3), NodeId(2)));
    assert!(sim.connected(NodeId(1), NodeId(2)));
    let tag = sim.request(LEADER, Op::put("a", "1"));
    sim.run_for(100);
    assert_eq!(sim.reply(tag), Some(&Ok(Reply::Write(WriteOutcome::Put))));
    assert_eq!(sim.node(NodeId(3)).unwrap().map().get("a"), None);

    sim.heal();
    sim.request(LEADER, Op::put("b", "2"));
    sim.run_for(100);
    assert_eq!(sim.node(NodeId(3)).unwrap().map().get("b"), Some("2"));
}

#[test]
fn a_crashed_node_answers_nothing_and_a_restarted_one_starts_afresh() {
    let mut sim = cluster(2);
    sim.request(LEADER, Op::put("a", "1"));
    sim.run_for(100);
    sim.crash(NodeId(2));
    assert!(!sim.is_up(NodeId(2)));
    let unanswered = sim.request(NodeId(2), get("a"));
    sim.run_for(100);
    assert_eq!(sim.reply(unanswered), None);

    sim.restart(NodeId(2));
    let tag = sim.request(NodeId(2), get("a"));
    assert_eq!(
        sim.reply(tag),
        Some(&Ok(Reply::Value(None))),
        "the naive node keeps nothing"
    );
}

#[test]
fn restarting_does_not_leave_the_old_incarnation_ticking() {
    // An unanswered write times out after 100 ticks of 10 ms. If a restart left the old
    // tick chain running next to the new one, the node would tick twice as fast and time out
    // in about half the simulated time.
    let mut sim = cluster(3);
    sim.isolate(LEADER);
    for _ in 0..5 {
        sim.restart(LEADER);
    }
    let tag = sim.request(LEADER, Op::put("a", "1"));
    let answered = sim.run_until(900, |sim| sim.reply(tag).is_some());
    assert!(
        !answered,
        "timed out too early: ticks are running more than once"
    );
    assert!(sim.run_until(300, |sim| sim.reply(tag).is_some()));
}

#[test]
fn every_step_check_sees_every_event() {
    use std::cell::Cell;
    use std::rc::Rc;
    let mut sim = cluster(4);
    let calls = Rc::new(Cell::new(0u64));
    let seen = calls.clone();
    sim.check_every_step(move |_| seen.set(seen.get() + 1));
    sim.request(LEADER, Op::put("a", "1"));
    sim.run_for(50);
    // 3 nodes × 5 ticks, 2 Replicate + 2 Ack deliveries, the request, and the first call.
    assert!(calls.get() >= 15 + 4 + 2, "check ran {} times", calls.get());
}

#[test]
fn a_restart_after_a_crash_hands_the_crashed_node_to_the_factory() {
    // The factory sees the node that crashed, however long ago, so a kind of node with
    // durable state can recover it. (Naive nodes keep nothing, so the test factory records.)
    use std::cell::RefCell;
    use std::rc::Rc;
    let handed: Rc<RefCell<Vec<bool>>> = Rc::default();
    let record = handed.clone();
    let mut sim: replication_naive::sim::Sim<NaiveNode> =
        replication_naive::sim::Sim::new(1, common::members(3).into_keys(), 10, move |id, old| {
            record.borrow_mut().push(old.is_some());
            NaiveNode::new(id, common::members(3), LEADER)
        });
    sim.crash(NodeId(2));
    sim.run_for(100);
    sim.restart(NodeId(2));
    sim.restart(NodeId(3));
    assert_eq!(*handed.borrow(), vec![false, false, false, true, true]);
}
