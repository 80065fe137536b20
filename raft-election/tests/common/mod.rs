//! Clusters of election-stage nodes in the simulator, and the checks every test runs.
#![allow(dead_code)] // each test file uses its own subset

use kv_server::protocol::NodeId;
use raft_election::durable::DurableStorage;
use raft_election::medium::SimDisk;
use raft_election::message::Message;
use raft_election::node::{Config, RaftNode};
use raft_log::message::AppendEntriesResponse;
use raft_log::storage::MemStorage;
use raft_log::types::{LogIndex, Term};
use replication_naive::node::{Node, Outbox};
use replication_naive::sim::Sim;

pub type Cluster = Sim<RaftNode<MemStorage>>;

/// Nodes whose log is on a simulated disk.
pub type DurableCluster = Sim<RaftNode<DurableStorage<SimDisk>>>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;

#[allow(unused_imports)] // each test file uses its own subset
pub use raft_election::testkit::*;
pub use replication_naive::sim::members;

/// `n` nodes with default settings. A restarted node keeps its storage (term, vote, log:
/// what the durable storage keeps) and loses everything else.
pub fn cluster(seed: u64, n: u64) -> Cluster {
    cluster_with(seed, n, |_| {})
}

/// Like [`cluster`], with `tweak` applied to every node's configuration.
pub fn cluster_with(seed: u64, n: u64, tweak: impl Fn(&mut Config) + 'static) -> Cluster {
    Sim::new(
        seed,
        members(n).into_keys(),
        TICK_MS,
        move |id, old: Option<RaftNode<MemStorage>>| {
            let mut config = Config::new(id, members(n), seed);
            tweak(&mut config);
            let storage = old.map(RaftNode::into_storage).unwrap_or_default();
            RaftNode::new(config, storage)
        },
    )
}

/// `n` nodes whose storage is [`raft_election::durable::DurableStorage`] on simulated disks:
/// every restart is a power loss, and replays the node's log from the bytes its disk had
/// synced. Whatever a node had not synced, a sync under way included, is gone.
pub fn durable_cluster(seed: u64, n: u64, tweak: impl Fn(&mut Config) + 'static) -> DurableCluster {
    Sim::new(
        seed,
        members(n).into_keys(),
        TICK_MS,
        move |id, old: Option<RaftNode<DurableStorage<SimDisk>>>| {
            let mut config = Config::new(id, members(n), seed);
            tweak(&mut config);
            let disk = old
                .map(|node| node.into_storage().into_medium().crash())
                .unwrap_or_default();
            RaftNode::new(
                config,
                DurableStorage::open(disk).expect("a simulated disk replays"),
            )
        },
    )
}

/// A follower's answer to the leader of `term`: its log matches up to `index`.
pub fn accepted(term: u64, index: u64) -> Message {
    Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(term),
        in_reply_to: Term(term),
        result: Ok(LogIndex(index)),
    })
}

/// What `node` outputs for one `message` from node `from`.
pub fn step(node: &mut RaftNode<MemStorage>, from: u64, message: Message) -> Outbox<Message> {
    let mut out = Outbox::default();
    node.step(NodeId(from), message, &mut out);
    out
}
