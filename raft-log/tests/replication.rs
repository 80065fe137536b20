//! 6.824-style scenarios in the simulator, each over 200 seeds, with the invariants of
//! `common::check_invariants` checked after every event: basic agreement, a follower failing
//! and returning, no agreement without a majority, many concurrent proposals, and an
//! unreliable network with partitions.

mod common;

use common::{LEADER, assert_all_agree, check_invariants, cluster};
use kv_server::protocol::{NodeId, Op, Reply, WriteOutcome};
use raft_log::types::LogIndex;
use rand::Rng;
use replication_naive::node::RequestTag;
use replication_naive::sim::{NetConfig, for_each_seed};

const SEEDS: u64 = 200;

fn acknowledged(sim: &common::Cluster, tag: RequestTag) -> bool {
    sim.reply(tag) == Some(&Ok(Reply::Write(WriteOutcome::Put)))
}

#[test]
fn basic_agreement() {
    // Each write is acknowledged, and then every node holds it at the same index.
    for_each_seed(SEEDS, |seed| {
        let mut sim = cluster(seed, 3);
        check_invariants(&mut sim, false);
        for i in 1..=10u64 {
            let tag = sim.request(LEADER, Op::put(&format!("k{i}"), &i.to_string()));
            assert!(
                sim.run_until(1_000, |sim| acknowledged(sim, tag)),
                "write {i} not acknowledged"
            );
            assert!(sim.run_until(1_000, |sim| {
                sim.nodes().all(|n| n.last_applied() == LogIndex(i))
            }));
        }
        assert_all_agree(&sim);
    });
}

#[test]
fn follower_failure_and_return() {
    // With one follower down the other two still commit; the failed follower comes back
    // empty (this stage keeps the log in memory) and the leader brings it to the full log.
    for_each_seed(SEEDS, |seed| {
        let mut sim = cluster(seed, 3);
        check_invariants(&mut sim, true);
        let first = sim.request(LEADER, Op::put("before", "1"));
        assert!(sim.run_until(1_000, |sim| acknowledged(sim, first)));
        sim.crash(NodeId(3));
        for i in 0..5 {
            let tag = sim.request(LEADER, Op::put(&format!("during{i}"), "2"));
            assert!(
                sim.run_until(1_000, |sim| acknowledged(sim, tag)),
                "a majority is still up"
            );
        }
        sim.restart(NodeId(3));
        let last = sim.request(LEADER, Op::put("after", "3"));
        assert!(sim.run_until(1_000, |sim| acknowledged(sim, last)));
        assert!(sim.run_until(2_000, |sim| {
            sim.nodes().all(|n| n.last_applied() == LogIndex(7))
        }));
        assert_all_agree(&sim);
        assert_eq!(
            sim.node(NodeId(3)).unwrap().state().get("before"),
            Some("1")
        );
    });
}

#[test]
fn fail_no_agree() {
    // Three of five followers cut off: the leader appends but cannot commit, and must not
    // answer. Once they return, the entry commits and the client is answered.
    for_each_seed(SEEDS, |seed| {
        let mut sim = cluster(seed, 5);
        check_invariants(&mut sim, false);
        let first = sim.request(LEADER, Op::put("a", "1"));
        assert!(sim.run_until(1_000, |sim| acknowledged(sim, first)));
        sim.partition(&[&[LEADER, NodeId(2)], &[NodeId(3), NodeId(4), NodeId(5)]]);
        let blocked = sim.request(LEADER, Op::put("b", "2"));
        sim.run_for(3_000);
        assert_eq!(sim.reply(blocked), None, "answered without a majority");
        assert_eq!(sim.node(LEADER).unwrap().commit_index(), LogIndex(1));
        assert!(
            sim.nodes().all(|n| n.state().get("b").is_none()),
            "applied without a majority"
        );
        sim.heal();
        assert!(sim.run_until(2_000, |sim| acknowledged(sim, blocked)));
        assert!(sim.run_until(2_000, |sim| {
            sim.nodes().all(|n| n.last_applied() == LogIndex(2))
        }));
        assert_all_agree(&sim);
    });
}

#[test]
fn many_concurrent_proposals() {
    // Fifty writes proposed at once, several to the same keys: all are acknowledged, and all
    // nodes apply them in the same order (same final values).
    for_each_seed(SEEDS, |seed| {
        let mut sim = cluster(seed, 3);
        check_invariants(&mut sim, false);
        let tags: Vec<RequestTag> = (0..50)
            .map(|i| sim.request(LEADER, Op::put(&format!("k{}", i % 7), &i.to_string())))
            .collect();
        assert!(sim.run_until(5_000, |sim| tags.iter().all(|&t| acknowledged(sim, t))));
        assert!(sim.run_until(1_000, |sim| {
            sim.nodes().all(|n| n.last_applied() == LogIndex(50))
        }));
        assert_all_agree(&sim);
        // Proposals were appended in arrival order, so the last write to each key wins.
        for k in 0..7 {
            let last = (0..50).filter(|i| i % 7 == k).max().unwrap();
            assert_eq!(
                sim.node(LEADER).unwrap().state().get(&format!("k{k}")),
                Some(last.to_string().as_str())
            );
        }
    });
}

#[test]
fn unreliable_network_with_partitions_loses_no_acknowledged_write() {
    // Loss, duplication, heavy reordering, and followers cut off and healed at random. After
    // healing, every acknowledged write is on every node and all nodes agree.
    for_each_seed(SEEDS, |seed| {
        let mut sim = cluster(seed, 5);
        sim.set_net(NetConfig::unreliable());
        check_invariants(&mut sim, false);
        let mut writes = Vec::new();
        for i in 0..60 {
            writes.push((
                i,
                sim.request(LEADER, Op::put(&format!("k{i}"), &format!("v{i}"))),
            ));
            let action = sim.rng().gen_range(0..10);
            if action == 0 {
                let follower = NodeId(sim.rng().gen_range(2..=5));
                sim.isolate(follower);
            } else if action == 1 {
                sim.heal();
            }
            let pause = sim.rng().gen_range(0..30);
            sim.run_for(pause);
        }
        sim.heal();
        sim.set_net(NetConfig::reliable());
        assert!(
            sim.run_until(20_000, |sim| writes
                .iter()
                .all(|&(_, t)| acknowledged(sim, t))),
            "some writes never committed"
        );
        assert!(sim.run_until(5_000, |sim| {
            sim.nodes().all(|n| n.last_applied() == LogIndex(60))
        }));
        assert_all_agree(&sim);
        for node in sim.nodes() {
            for &(i, _) in &writes {
                assert_eq!(
                    node.state().get(&format!("k{i}")),
                    Some(format!("v{i}").as_str())
                );
            }
        }
    });
}
