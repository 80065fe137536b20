//! The naive node doing its job on a quiet network: writes through the leader reach every
//! node, followers redirect writes, reads are local, status describes the cluster.

mod common;

use common::{LEADER, cluster};
use kv_server::protocol::{Consistency, ErrorCode, Failure, NodeId, Op, Reply, Role, WriteOutcome};
use replication_naive::sim::for_each_seed;

#[test]
fn a_write_acknowledged_by_a_majority_reaches_every_node_on_a_quiet_network() {
    for_each_seed(50, |seed| {
        let mut sim = cluster(seed);
        let tag = sim.request(LEADER, Op::put("k", "v"));
        assert!(sim.run_until(1000, |sim| sim.reply(tag).is_some()));
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Write(WriteOutcome::Put))));
        sim.run_for(100);
        for node in sim.nodes() {
            use replication_naive::node::Node;
            assert_eq!(node.map().get("k"), Some("v"), "node {}", node.id());
        }
    });
}

#[test]
fn followers_redirect_writes_to_the_leaders_address() {
    let mut sim = cluster(1);
    let tag = sim.request(NodeId(2), Op::put("k", "v"));
    assert_eq!(
        sim.reply(tag),
        Some(&Err(Failure::not_leader(Some("127.0.0.1:7001".into()))))
    );
    assert_eq!(
        sim.reply(tag).unwrap().as_ref().unwrap_err().code,
        ErrorCode::NotLeader
    );
}

#[test]
fn a_write_no_majority_acknowledges_times_out_with_an_unknown_outcome() {
    let mut sim = cluster(2);
    sim.isolate(LEADER);
    let tag = sim.request(LEADER, Op::put("k", "v"));
    assert!(sim.run_until(5_000, |sim| sim.reply(tag).is_some()));
    assert_eq!(
        sim.reply(tag).unwrap().as_ref().unwrap_err().code,
        ErrorCode::Timeout
    );
}

#[test]
fn status_names_the_role_the_leader_and_the_members() {
    let mut sim = cluster(3);
    let tag = sim.request(NodeId(3), Op::Status);
    let Some(Ok(Reply::Status(status))) = sim.reply(tag) else {
        panic!("no status")
    };
    assert_eq!(status.id, Some(NodeId(3)));
    assert_eq!(status.role, Role::Follower);
    assert_eq!(status.leader, Some(LEADER));
    assert_eq!(status.leader_addr.as_deref(), Some("127.0.0.1:7001"));
    assert_eq!(status.members.as_ref().map(Vec::len), Some(3));
    assert_eq!(status.term, None);
    let tag = sim.request(
        LEADER,
        Op::Get {
            key: "k".into(),
            consistency: Consistency::Linearizable,
        },
    );
    assert_eq!(sim.reply(tag), Some(&Ok(Reply::Value(None))));
}
