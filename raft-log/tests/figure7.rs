//! Figure 7 of the paper: a leader of term 8 and six followers whose logs are missing
//! entries, hold extra uncommitted entries, or both. Each is brought into exact agreement
//! with the leader (§5.3), in few round trips thanks to the conflict hint.

mod common;

use common::{LEADER, log_of, members, terms};
use kv_server::protocol::{NodeId, Op};
use raft_log::message::{AppendEntriesResponse, Message};
use raft_log::node::{Config, RaftLogNode};
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{LogIndex, Term};
use replication_naive::node::{Node, Outbox, RequestTag};
use replication_naive::sim::{NetConfig, Sim, for_each_seed};

const FOLLOWER: NodeId = NodeId(2);
const LEADER_LOG: &[u64] = &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6];

/// (name, follower's log terms, follower's current term) for (a)-(f).
const CASES: &[(&str, &[u64], u64)] = &[
    ("a: missing one entry", &[1, 1, 1, 4, 4, 5, 5, 6, 6], 6),
    ("b: missing many", &[1, 1, 1, 4], 4),
    (
        "c: one extra uncommitted entry",
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6],
        6,
    ),
    (
        "d: extra entries from term 7",
        &[1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7],
        7,
    ),
    (
        "e: missing entries and extra term-4 entries",
        &[1, 1, 1, 4, 4, 4, 4],
        4,
    ),
    (
        "f: extra entries from terms 2 and 3",
        &[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3],
        3,
    ),
];

fn node(id: NodeId, log: &[u64], current_term: u64) -> RaftLogNode<MemStorage> {
    let mut config = Config::new(id, members(2), LEADER);
    config.term = Term(8);
    let hard = HardState {
        current_term: Term(current_term),
        voted_for: None,
    };
    RaftLogNode::new(config, MemStorage::with_entries(log_of(log), hard))
}

/// Runs leader and follower by passing messages by hand until the follower accepts; returns
/// how many AppendEntries it rejected on the way.
fn exchange(leader: &mut RaftLogNode<MemStorage>, follower: &mut RaftLogNode<MemStorage>) -> usize {
    let mut out = Outbox::default();
    leader.request(RequestTag(1), Op::put("new", "entry of term 8"), &mut out);
    let mut rejections = 0;
    for _ in 0..100 {
        let to_follower: Vec<Message> = out.messages.drain(..).map(|(_, m)| m).collect();
        if to_follower.is_empty() {
            return rejections;
        }
        let mut back = Outbox::default();
        for message in to_follower {
            follower.step(LEADER, message, &mut back);
        }
        for (_, answer) in back.messages {
            if let Message::AppendEntriesResponse(AppendEntriesResponse {
                result: Err(_), ..
            }) = answer
            {
                rejections += 1;
            }
            leader.step(FOLLOWER, answer, &mut out);
        }
    }
    panic!("leader and follower never settled");
}

#[test]
fn every_figure_7_follower_ends_with_exactly_the_leaders_log() {
    for &(name, log, term) in CASES {
        let mut leader = node(LEADER, LEADER_LOG, 7);
        let mut follower = node(FOLLOWER, log, term);
        let rejections = exchange(&mut leader, &mut follower);
        assert_eq!(terms(&follower), terms(&leader), "case {name}");
        assert_eq!(leader.log().term(LogIndex(11)), Some(Term(8)));
        // The new entry is from term 8 and stored by both: it commits, and all before it.
        assert_eq!(leader.commit_index(), LogIndex(11), "case {name}");
        assert!(
            rejections <= 3,
            "case {name}: {rejections} round trips rejected"
        );
    }
}

#[test]
fn the_conflict_hint_skips_a_whole_term_per_round_trip() {
    // A follower with 1,000 entries of term 2 where the leader has 1,000 of term 3: one
    // rejection names term 2 and its first index, and the next AppendEntries matches. Without
    // the hint this would take a round trip per entry.
    let leader_log = vec![3; 1000];
    let mut leader = node(LEADER, &leader_log, 3);
    let mut follower = node(FOLLOWER, &vec![2; 1000], 2);
    let rejections = exchange(&mut leader, &mut follower);
    assert_eq!(rejections, 1);
    assert_eq!(terms(&follower), terms(&leader));
}

#[test]
fn figure_7_followers_converge_over_a_lossy_reordering_network() {
    for &(name, log, term) in CASES {
        let log = log.to_vec();
        for_each_seed(30, |seed| {
            let log = log.clone();
            let mut sim = Sim::new(seed, [LEADER, FOLLOWER], 10, move |id, _| {
                if id == LEADER {
                    node(id, LEADER_LOG, 7)
                } else {
                    node(id, &log, term)
                }
            });
            sim.set_net(NetConfig::unreliable());
            let tag = sim.request(LEADER, Op::put("new", "v"));
            assert!(
                sim.run_until(30_000, |sim| sim.reply(tag).is_some()),
                "case {name}: never committed"
            );
            let agree = sim.run_until(10_000, |sim| {
                terms(sim.node(FOLLOWER).unwrap()) == terms(sim.node(LEADER).unwrap())
            });
            assert!(agree, "case {name}: the logs never agreed");
        });
    }
}
