//! 6.824-style snapshot tests in the simulator: nodes snapshot and compact as they go, a
//! follower that missed compacted entries catches up by InstallSnapshot (in many chunks), on
//! reliable and unreliable networks, across crashes; every check of stage 6 runs after
//! every event, and states are compared node by node.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Cluster, ELECTION_MS, cluster, log_len, small_policy};
use kv_server::protocol::{NodeId, Op, Reply, WriteOutcome};
use raft_election::node::SnapshotPolicy;
use raft_election::testkit::{
    assert_log_matching, assert_same_state, check_raft_properties, stable_leader,
};
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use replication_naive::sim::{NetConfig, for_each_seed};

/// Waits for a stable leader and commits `count` puts `{prefix}{i}` through it, one after
/// another (retrying on another leader if one changes).
fn write(sim: &mut Cluster, prefix: &str, count: usize) {
    write_values(sim, prefix, count, |key| format!("value of {key}"));
}

/// [`write`], each key set to `value(key)`.
fn write_values(sim: &mut Cluster, prefix: &str, count: usize, value: impl Fn(&str) -> String) {
    for i in 0..count {
        let key = format!("{prefix}{i}");
        let mut done = false;
        for _ in 0..50 {
            assert!(
                sim.run_until(50 * ELECTION_MS, |sim| stable_leader(sim).is_some()),
                "no leader (seed {})",
                sim.seed()
            );
            let leader = stable_leader(sim).expect("a leader");
            let tag = sim.request(leader, Op::put(&key, &value(&key)));
            if sim.run_until(20 * ELECTION_MS, |sim| sim.reply(tag).is_some())
                && sim.reply(tag) == Some(&Ok(Reply::Write(WriteOutcome::Put)))
            {
                done = true;
                break;
            }
        }
        assert!(done, "write {key} never committed (seed {})", sim.seed());
    }
}

/// Every running node catches up with the leader's commit index, and then all hold the
/// same map, with every key written.
fn converge(sim: &mut Cluster, keys: &[(&str, usize)]) {
    let seed = sim.seed();
    assert!(sim.run_until(50 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
    let leader = stable_leader(sim).expect("a leader");
    let target = sim.node(leader).expect("up").commit_index();
    assert!(
        sim.run_until(100 * ELECTION_MS, |sim| sim
            .nodes()
            .all(|n| n.last_applied() >= target)),
        "nodes did not catch up to {target} (seed {seed})"
    );
    assert_same_state(sim);
    assert_log_matching(sim);
    for node in sim.nodes() {
        for &(prefix, count) in keys {
            for i in 0..count {
                let key = format!("{prefix}{i}");
                assert_eq!(
                    node.state().get(&key),
                    Some(format!("value of {key}").as_str()),
                    "{key} missing on node {} (seed {seed})",
                    node_id(node)
                );
            }
        }
    }
}

fn node_id(node: &common::Node) -> NodeId {
    replication_naive::node::Node::id(node)
}

/// A follower down while its missing entries are compacted away.
fn follower_down_while_compacting(sim: &mut Cluster) -> NodeId {
    write(sim, "a", 10);
    let leader = stable_leader(sim).expect("a leader");
    let follower = sim
        .ids()
        .into_iter()
        .find(|&id| id != leader)
        .expect("3 nodes");
    sim.crash(follower);
    write(sim, "b", 100);
    let leader = stable_leader(sim).expect("a leader");
    let first = sim.node(leader).expect("up").log().first_index();
    assert!(
        first.0 > 11,
        "the leader compacted past what the follower holds (first index {first})"
    );
    follower
}

#[test]
fn snapshot_basic_every_node_snapshots_and_the_log_stays_short() {
    for_each_seed(20, |seed| {
        let mut sim = cluster(seed, 3, small_policy());
        check_raft_properties(&mut sim);
        write(&mut sim, "k", 120);
        converge(&mut sim, &[("k", 120)]);
        for node in sim.nodes() {
            let snapshot = node.snapshots().latest().expect("every node snapshotted");
            assert!(snapshot.index.0 >= 100, "seed {seed}");
            assert!(
                log_len(node) <= 20 + 5 + 1,
                "log of {} entries (seed {seed})",
                log_len(node)
            );
        }
    });
}

#[test]
fn a_follower_that_was_down_catches_up_by_snapshot() {
    for_each_seed(20, |seed| {
        let mut sim = cluster(seed, 3, small_policy());
        check_raft_properties(&mut sim);
        let follower = follower_down_while_compacting(&mut sim);
        sim.restart(follower);
        converge(&mut sim, &[("a", 10), ("b", 100)]);
        let installed = sim.node(follower).unwrap().snapshots().latest().cloned();
        assert!(
            installed.is_some_and(|m| m.index.0 > 11),
            "the follower got a snapshot (seed {seed})"
        );
    });
}

#[test]
fn a_wiped_follower_rejoins_by_snapshot() {
    for_each_seed(20, |seed| {
        let (mut sim, wiped) = common::wipeable_cluster(seed, 3, small_policy());
        check_raft_properties(&mut sim);
        write(&mut sim, "a", 60);
        converge(&mut sim, &[("a", 60)]);
        let leader = stable_leader(&sim).expect("a leader");
        let follower = sim
            .ids()
            .into_iter()
            .find(|&id| id != leader)
            .expect("3 nodes");
        wiped.borrow_mut().insert(follower);
        sim.restart(follower);
        assert_eq!(sim.node(follower).unwrap().log().last_index().0, 0, "wiped");
        // With no writes, the follower only refuses heartbeats at its old match index.
        converge(&mut sim, &[("a", 60)]);
        write(&mut sim, "b", 5);
        converge(&mut sim, &[("a", 60), ("b", 5)]);
    });
}

#[test]
fn install_on_an_unreliable_network() {
    for_each_seed(30, |seed| {
        let mut sim = cluster(seed, 5, small_policy());
        check_raft_properties(&mut sim);
        let follower = follower_down_while_compacting(&mut sim);
        sim.set_net(NetConfig::unreliable());
        sim.restart(follower);
        write(&mut sim, "c", 40);
        sim.set_net(NetConfig::reliable());
        converge(&mut sim, &[("a", 10), ("b", 100), ("c", 40)]);
    });
}

#[test]
fn install_then_crash_restarts_from_the_installed_snapshot() {
    for_each_seed(20, |seed| {
        let mut sim = cluster(seed, 3, small_policy());
        check_raft_properties(&mut sim);
        let follower = follower_down_while_compacting(&mut sim);
        sim.restart(follower);
        assert!(sim.run_until(50 * ELECTION_MS, |sim| {
            sim.node(follower)
                .is_some_and(|n| n.snapshots().latest().is_some_and(|m| m.index.0 > 11))
        }));
        let installed = sim
            .node(follower)
            .unwrap()
            .snapshots()
            .latest()
            .cloned()
            .unwrap();
        sim.crash(follower);
        sim.restart(follower);
        // Before it hears from anyone, it is back at its snapshot.
        let node = sim.node(follower).unwrap();
        assert!(node.last_applied() >= installed.index, "seed {seed}");
        assert!(node.state().get("b0").is_some(), "seed {seed}");
        write(&mut sim, "c", 10);
        converge(&mut sim, &[("a", 10), ("b", 100), ("c", 10)]);
    });
}

#[test]
fn all_nodes_crash_and_restart_from_their_snapshots() {
    for_each_seed(20, |seed| {
        let mut sim = cluster(seed, 3, small_policy());
        check_raft_properties(&mut sim);
        write(&mut sim, "a", 90);
        let before: Vec<_> = sim
            .nodes()
            .map(|n| n.snapshots().latest().cloned())
            .collect();
        for id in sim.ids() {
            sim.crash(id);
        }
        for id in sim.ids() {
            sim.restart(id);
        }
        for (node, snapshot) in sim.nodes().zip(before) {
            let snapshot = snapshot.expect("every node had snapshotted");
            assert!(node.last_applied() >= snapshot.index, "seed {seed}");
            assert!(
                node.log().first_index() > raft_log::types::LogIndex(1),
                "seed {seed}"
            );
        }
        assert_same_state(&sim);
        write(&mut sim, "b", 10);
        converge(&mut sim, &[("a", 90), ("b", 10)]);
    });
}

#[test]
fn the_log_stays_bounded_under_a_long_write_stream() {
    let policy = small_policy();
    let mut sim = cluster(7, 3, policy);
    let bound = policy.entries + policy.keep + 1;
    let seed = sim.seed();
    sim.check_every_step(move |sim| {
        for node in sim.nodes() {
            assert!(
                log_len(node) <= bound + 50,
                "a log of {} entries (seed {seed})",
                log_len(node)
            );
        }
    });
    write(&mut sim, "k", 1500);
    for node in sim.nodes() {
        assert!(log_len(node) <= bound, "a log of {} entries", log_len(node));
    }
}

#[test]
fn a_growing_state_is_snapshotted_in_proportion_to_the_writes() {
    // Every write adds a key of 200 bytes, so the state grows with the log. With a floor of
    // 100% of the state's bytes, a snapshot waits until the log since the last one carries
    // as many bytes as the state: snapshot indexes grow about fourfold (20, 84, 353), three
    // or so in 400 writes rather than one every 20 entries.
    let policy = SnapshotPolicy {
        state_percent: 100,
        ..small_policy()
    };
    let mut sim = cluster(11, 3, policy);
    let mut taken: BTreeMap<NodeId, BTreeSet<u64>> = BTreeMap::new();
    let value = "v".repeat(200);
    for i in 0..400 {
        let leader = {
            assert!(sim.run_until(50 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
            stable_leader(&sim).expect("a leader")
        };
        let tag = sim.request(leader, Op::put(&format!("k{i:03}"), &value));
        assert!(sim.run_until(20 * ELECTION_MS, |sim| sim.reply(tag).is_some()));
        for node in sim.nodes() {
            if let Some(meta) = node.snapshots().latest() {
                taken.entry(node_id(node)).or_default().insert(meta.index.0);
            }
        }
    }
    for (id, indexes) in taken {
        assert!(
            (2..=5).contains(&indexes.len()),
            "node {id} took snapshots at {indexes:?}"
        );
    }
}

#[test]
fn a_multi_megabyte_snapshot_crosses_a_lossy_network_intact() {
    for_each_seed(5, |seed| {
        // 48 values of 100 KiB: about 4.8 MB of state, five chunks of 1 MiB.
        let policy = SnapshotPolicy {
            entries: 30,
            chunk_bytes: 1 << 20,
            ..small_policy()
        };
        let mut sim = cluster(seed, 3, policy);
        check_raft_properties(&mut sim);
        let big = "x".repeat(100 << 10);
        write(&mut sim, "warmup", 1);
        assert!(sim.run_until(50 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let leader = stable_leader(&sim).expect("a leader");
        let follower = sim.ids().into_iter().find(|&id| id != leader).unwrap();
        sim.crash(follower);
        // A leader may change meanwhile (seed 2322): each put is retried until it commits.
        write_values(&mut sim, "big", 48, |_| big.clone());
        write(&mut sim, "pad", 40);
        // A leader that started sending the crashed follower a snapshot defers its own next
        // one until that follower has been silent for ten election timeouts (it could be a
        // live one, pausing mid-transfer): let that pass, writing on, until the leader's
        // snapshot holds the big values.
        let leader_snapshot = |sim: &Cluster| {
            let leader = stable_leader(sim)?;
            sim.node(leader)?.snapshots().latest_len()
        };
        for round in 0..30 {
            if leader_snapshot(&sim).is_some_and(|len| len > 4 << 20) {
                break;
            }
            sim.run_for(ELECTION_MS);
            write(&mut sim, &format!("more{round}-"), 1);
        }
        let snapshot = leader_snapshot(&sim).unwrap_or(0);
        assert!(
            snapshot > 4 << 20,
            "a {snapshot}-byte snapshot (seed {seed})"
        );
        sim.set_net(NetConfig::unreliable());
        sim.restart(follower);
        assert!(
            sim.run_until(200 * ELECTION_MS, |sim| {
                sim.node(follower)
                    .is_some_and(|n| n.state().get("big47").is_some())
            }),
            "the follower never installed the snapshot (seed {seed})"
        );
        sim.set_net(NetConfig::reliable());
        converge(&mut sim, &[("pad", 40)]);
        assert_eq!(
            sim.node(follower).unwrap().state().get("big0"),
            Some(big.as_str())
        );
    });
}
