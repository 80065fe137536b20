//! Clusters of snapshotting nodes in the simulator.
#![allow(dead_code)] // each test file uses its own subset

use compaction::mem_store::MemSnapshots;
use raft_election::node::{Config, RaftNode, SnapshotPolicy};
use raft_log::storage::{MemStorage, Storage};
use replication_naive::sim::{Sim, members};

pub type Node = RaftNode<MemStorage, MemSnapshots>;
pub type Cluster = Sim<Node>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;
/// The default base election timeout, in simulated milliseconds.
pub const ELECTION_MS: u64 = 20 * TICK_MS;

/// Snapshots every 20 entries, keeping 5, sent in 64-byte chunks: every transfer takes
/// many chunks.
pub fn small_policy() -> SnapshotPolicy {
    SnapshotPolicy {
        entries: 20,
        bytes: 1 << 20,
        keep: 5,
        chunk_bytes: 64,
    }
}

/// `n` nodes snapshotting by `policy`. A restarted node keeps its log storage and its saved
/// snapshots, and restarts from them.
pub fn cluster(seed: u64, n: u64, policy: SnapshotPolicy) -> Cluster {
    cluster_with(seed, n, move |config| config.snapshots = Some(policy))
}

/// Like [`cluster`], with every node's configuration set by `tweak`.
pub fn cluster_with(seed: u64, n: u64, tweak: impl Fn(&mut Config) + 'static) -> Cluster {
    Sim::new(
        seed,
        members(n).into_keys(),
        TICK_MS,
        move |id, old: Option<Node>| {
            let mut config = Config::new(id, members(n), seed);
            tweak(&mut config);
            let (storage, snapshots) = old
                .map(|node| {
                    let (storage, snapshots) = node.into_parts();
                    (storage, snapshots.after_crash())
                })
                .unwrap_or_default();
            RaftNode::with_snapshots(config, storage, snapshots).expect("memory snapshots load")
        },
    )
}

/// How many entries `node`'s log holds.
pub fn log_len(node: &Node) -> u64 {
    let log = node.log();
    log.last_index().0 + 1 - log.first_index().0
}
