//! Stage 6's Figure 8 random schedules (crashes, restarts, partitions, loss and
//! reordering, the properties of Figure 3 after every event, every acknowledged write in
//! every node's state at the end) with compaction switched on at a small threshold: logs
//! are cut and snapshots installed all through them.

mod common;

use common::{cluster, small_policy};
use raft_election::node::SnapshotPolicy;
use raft_election::testkit::{assert_same_state, run_schedule};
use replication_naive::sim::{NetConfig, for_each_seed};

/// Snapshots every 4 entries, keeping 1, in 16-byte chunks: nearly every catch-up is a
/// transfer.
fn tiny_policy() -> SnapshotPolicy {
    SnapshotPolicy {
        entries: 4,
        keep: 1,
        chunk_bytes: 16,
        ..small_policy()
    }
}

#[test]
fn figure_8_with_compaction_reliable_network() {
    for_each_seed(300, |seed| {
        let mut sim = cluster(seed, 5, tiny_policy());
        run_schedule(&mut sim, NetConfig::reliable());
        assert_same_state(&sim);
    });
}

#[test]
fn figure_8_with_compaction_unreliable_network() {
    for_each_seed(300, |seed| {
        let mut sim = cluster(seed, 5, tiny_policy());
        run_schedule(&mut sim, NetConfig::unreliable());
        assert_same_state(&sim);
    });
}
