//! What may leave a node before its fsync, and what must wait (thesis §10.2.1), on simulated
//! disks that lose everything not yet synced: a follower acknowledges an entry only once it
//! is on its disk, and a leader, which sends its entries while writing them, counts its own
//! copy toward a majority only once it is on its disk. Each test slows some disks down, so
//! that an acknowledgement given too early would be seen, and then cuts the power. A voter's
//! confirmation of a leader's read (thesis §6.4) depends on nothing on its disk, and does not
//! wait for it; a candidate's own vote counts only once it is on its disk.

mod common;

use common::*;
use kv_server::protocol::{NodeId, Op, Outcome, Reply, WriteOutcome};
use raft_election::durable::DurableStorage;
use raft_election::medium::SimDisk;
use raft_election::node::{Config, RaftNode};
use raft_log::types::Term;
use replication_naive::node::{Node, Outbox};
use replication_naive::sim::{NetConfig, for_each_seed};

/// Longer than the rest of a write's round trip: whatever waits for these disks is late.
const SLOW_SYNC_MS: u64 = 40;

/// Writes `key` through the leader and runs until it answers.
fn acknowledged_put(sim: &mut DurableCluster, leader: NodeId, key: &str) {
    let tag = sim.request(leader, Op::put(key, "v"));
    assert!(sim.run_until(2_000, |sim| sim.reply(tag).is_some()));
    assert_eq!(
        sim.reply(tag),
        Some(&Ok(Reply::Write(WriteOutcome::Put))),
        "seed {}",
        sim.seed()
    );
}

/// Reads `key` through whichever node leads once one does.
fn read_back(sim: &mut DurableCluster, key: &str) -> Outcome {
    let leader = leader_of(sim);
    let tag = sim.request(leader, Op::get(key));
    assert!(sim.run_until(2_000, |sim| sim.reply(tag).is_some()));
    sim.reply(tag).cloned().expect("answered")
}

/// Runs until a node leads, and names it.
fn leader_of(sim: &mut DurableCluster) -> NodeId {
    assert!(sim.run_until(5_000, |sim| stable_leader(sim).is_some()));
    stable_leader(sim).expect("a leader")
}

#[test]
fn followers_acknowledge_an_entry_only_once_it_is_on_their_disks() {
    for_each_seed(20, |seed| {
        let mut sim = durable_cluster(seed, 5, |_| {});
        let leader = leader_of(&mut sim);
        let others: Vec<NodeId> = sim.ids().into_iter().filter(|&id| id != leader).collect();
        let (slow, rest) = others.split_at(2);
        // Only the leader and two slow followers hear of the write: it commits only once
        // both followers have it on disk.
        for &id in slow {
            sim.set_sync_ms(id, SLOW_SYNC_MS);
        }
        sim.partition(&[&[leader, slow[0], slow[1]], rest]);
        acknowledged_put(&mut sim, leader, "k");
        // The power fails on both followers the moment the write is acknowledged, and the
        // leader is gone for good: the other four must still have the write.
        for &id in slow {
            sim.crash(id);
            sim.restart(id);
        }
        sim.crash(leader);
        sim.heal();
        assert_eq!(
            read_back(&mut sim, "k"),
            Ok(Reply::Value(Some("v".into()))),
            "an acknowledged write was lost (seed {seed})"
        );
    });
}

#[test]
fn a_leader_counts_its_own_copy_only_once_it_is_on_its_disk() {
    for_each_seed(20, |seed| {
        let mut sim = durable_cluster(seed, 3, |_| {});
        let leader = leader_of(&mut sim);
        let others: Vec<NodeId> = sim.ids().into_iter().filter(|&id| id != leader).collect();
        let (heard, unheard) = (others[0], others[1]);
        // The leader's disk is slow and one follower hears of the write: it commits only
        // once the leader has it on disk too.
        sim.set_sync_ms(leader, SLOW_SYNC_MS);
        sim.isolate(unheard);
        acknowledged_put(&mut sim, leader, "k");
        // The power fails on the leader the moment the write is acknowledged, and the only
        // follower that has it is cut off: the leader and the other must still have it.
        sim.crash(leader);
        sim.restart(leader);
        sim.heal();
        sim.isolate(heard);
        assert_eq!(
            read_back(&mut sim, "k"),
            Ok(Reply::Value(Some("v".into()))),
            "an acknowledged write was lost (seed {seed})"
        );
    });
}

#[test]
fn a_voter_confirms_a_leader_s_read_without_waiting_for_its_disk() {
    for_each_seed(20, |seed| {
        let mut sim = durable_cluster(seed, 3, |_| {});
        let leader = leader_of(&mut sim);
        acknowledged_put(&mut sim, leader, "k");
        // Let every sync of that write finish before the followers' disks turn slow.
        sim.run_for(100);
        for id in sim.ids().into_iter().filter(|&id| id != leader) {
            sim.set_sync_ms(id, SLOW_SYNC_MS);
        }
        // A write keeps both followers' disks busy while the leader confirms a read. With
        // one delay for every message, each follower hears the probe after the entry, so
        // while the entry's sync runs.
        sim.set_net(NetConfig {
            min_delay: 2,
            max_delay: 2,
            ..NetConfig::reliable()
        });
        let write = sim.request(leader, Op::put("k", "w"));
        let read = sim.request(leader, Op::get("k"));
        let asked = sim.now();
        assert!(sim.run_until(2_000, |sim| sim.reply(read).is_some()));
        let took = sim.now() - asked;
        assert!(
            took < SLOW_SYNC_MS,
            "the read took {took} ms: its confirmation waited for a disk (seed {seed})"
        );
        assert_eq!(sim.reply(write), None, "seed {seed}");
        assert_eq!(
            sim.reply(read),
            Some(&Ok(Reply::Value(Some("v".into())))),
            "seed {seed}"
        );
    });
}

#[test]
fn a_lone_voter_leads_only_once_its_vote_is_on_its_disk() {
    let storage = DurableStorage::open(SimDisk::default()).expect("an empty disk opens");
    let mut node = RaftNode::new(Config::new(NodeId(1), members(1), 7), storage);
    let mut out = Outbox::default();
    while node.term() == Term(0) {
        node.tick(&mut out);
    }
    // Elected by its own vote alone, which a crash now would take back: the node could
    // then win this term again, with other entries, and its first term's followers (a
    // learner being added, say) would keep entries no leader of the term has.
    assert!(!node.is_leader(), "it leads before its vote is on disk");
    let sync = node.start_sync().expect("the term and vote to write");
    node.synced(sync(), &mut out);
    assert!(node.is_leader());
}

#[test]
fn a_lone_voter_on_a_disk_slower_than_a_tick_is_still_elected() {
    // Its vote's sync takes many ticks. Campaigning again at each tick raised the term and
    // asked for a new vote to be synced: on a disk slower than a tick (10 ms), the node
    // never led.
    let storage = DurableStorage::open(SimDisk::default()).expect("an empty disk opens");
    let mut node = RaftNode::new(Config::new(NodeId(1), members(1), 7), storage);
    let mut out = Outbox::default();
    while node.term() == Term(0) {
        node.tick(&mut out);
    }
    let sync = node.start_sync().expect("the term and vote to write");
    let campaigned = node.term();
    for _ in 0..100 {
        node.tick(&mut out);
    }
    assert_eq!(
        node.term(),
        campaigned,
        "it campaigned again while its vote was syncing"
    );
    node.synced(sync(), &mut out);
    assert!(node.is_leader());
}
