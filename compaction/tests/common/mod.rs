//! Clusters of snapshotting nodes in the simulator.
#![allow(dead_code)] // each test file uses its own subset

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::rc::Rc;

use compaction::mem_store::MemSnapshots;
use kv_server::protocol::NodeId;
use raft_election::node::{Config, RaftNode, SnapshotPolicy};
use raft_log::storage::{MemStorage, Storage};
use replication_naive::sim::{Sim, members};

pub type Node = RaftNode<MemStorage, MemSnapshots>;
pub type Cluster = Sim<Node>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;
/// The default base election timeout, in simulated milliseconds.
pub const ELECTION_MS: u64 = 20 * TICK_MS;

/// Snapshots every 20 entries whatever the state's size, keeping 5, sent in 64-byte chunks:
/// every transfer takes many chunks.
pub fn small_policy() -> SnapshotPolicy {
    SnapshotPolicy {
        entries: 20,
        bytes: 1 << 20,
        state_percent: 0,
        keep: 5,
        chunk_bytes: 64,
    }
}

/// `n` nodes snapshotting by `policy`. A restarted node keeps its log storage and its saved
/// snapshots, and restarts from them.
pub fn cluster(seed: u64, n: u64, policy: SnapshotPolicy) -> Cluster {
    wipeable_cluster(seed, n, policy).0
}

/// Nodes whose disks the test can wipe: a node in the set restarts with nothing.
pub type Wiped = Rc<RefCell<BTreeSet<NodeId>>>;

/// Like [`cluster`]; a node whose id is in the returned set when it restarts comes back
/// with an empty disk.
pub fn wipeable_cluster(seed: u64, n: u64, policy: SnapshotPolicy) -> (Cluster, Wiped) {
    let wiped = Wiped::default();
    let wipe = wiped.clone();
    let factory = move |id, old: Option<Node>| {
        let mut config = Config::new(id, members(n), seed);
        config.snapshots = Some(policy);
        let (storage, snapshots) = old
            .filter(|_| !wipe.borrow_mut().remove(&id))
            .map(|node| {
                let (storage, snapshots) = node.into_parts();
                (storage, snapshots.after_crash())
            })
            .unwrap_or_default();
        RaftNode::with_snapshots(config, storage, snapshots).expect("memory snapshots load")
    };
    (
        Sim::new(seed, members(n).into_keys(), TICK_MS, factory),
        wiped,
    )
}

/// How many entries `node`'s log holds.
pub fn log_len(node: &Node) -> u64 {
    let log = node.log();
    log.last_index().0 + 1 - log.first_index().0
}
