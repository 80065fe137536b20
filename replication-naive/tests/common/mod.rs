//! The cluster every naive-replication test starts from.
#![allow(dead_code)] // each test file uses its own subset

use kv_server::protocol::{Consistency, NodeId, Op};
use replication_naive::naive::NaiveNode;
use replication_naive::sim::Sim;

pub const LEADER: NodeId = NodeId(1);

pub use replication_naive::sim::members;

/// Three naive nodes led by node 1, ticking every 10 ms; a restarted node starts empty.
pub fn cluster(seed: u64) -> Sim<NaiveNode> {
    Sim::new(seed, members(3).into_keys(), 10, |id, _| {
        NaiveNode::new(id, members(3), LEADER)
    })
}

pub fn stale_get(key: &str) -> Op {
    Op::Get {
        key: key.into(),
        consistency: Consistency::Stale,
    }
}
