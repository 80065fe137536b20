//! The cluster every naive-replication test starts from.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;

use kv_server::protocol::{Command, Consistency, NodeId, Op};
use replication_naive::naive::NaiveNode;
use replication_naive::sim::Sim;

pub const LEADER: NodeId = NodeId(1);

/// Three members with made-up addresses (the simulator never dials them).
pub fn members() -> BTreeMap<NodeId, String> {
    (1..=3)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
        .collect()
}

/// Three naive nodes led by node 1, ticking every 10 ms; a restarted node starts empty.
pub fn cluster(seed: u64) -> Sim<NaiveNode> {
    Sim::new(seed, members().into_keys(), 10, |id, _| {
        NaiveNode::new(id, members(), LEADER)
    })
}

pub fn put(key: &str, value: &str) -> Op {
    Op::Write {
        command: Command::Put {
            key: key.into(),
            value: value.into(),
        },
        session: None,
    }
}

pub fn stale_get(key: &str) -> Op {
    Op::Get {
        key: key.into(),
        consistency: Consistency::Stale,
    }
}
