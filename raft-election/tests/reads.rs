//! Linearizable reads (ReadIndex, thesis §6.4): exact outputs of the core, then clusters in
//! the simulator where leaders are deposed while reads are in flight.

mod common;

use common::*;
use kv_server::protocol::{ErrorCode, NodeId, Op, Outcome, Reply};
use raft_election::message::{Message, ReadAck, ReadProbe, RequestVoteResponse};
use raft_election::node::{Config, RaftNode};
use raft_log::storage::{HardState, MemStorage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::node::{Node, Outbox, RequestTag};
use replication_naive::sim::{NetConfig, for_each_seed};

/// Node 1 of 3, elected leader of term 2 (its log: one entry of term 1, then its no-op at
/// index 2, not yet committed).
fn fresh_leader() -> RaftNode<MemStorage> {
    let storage = MemStorage::with_entries(
        vec![Entry {
            index: LogIndex(1),
            term: Term(1),
            payload: Payload::Noop,
        }],
        HardState {
            current_term: Term(1),
            voted_for: None,
        },
    );
    let mut config = Config::new(NodeId(1), members(3), 1);
    config.pre_vote = false;
    let mut node = RaftNode::new(config, storage);
    while node.term() == Term(1) {
        node.tick(&mut Outbox::default());
    }
    let vote = Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(2),
        granted: true,
        pre_vote: false,
        removed_by: None,
    });
    node.step(NodeId(2), vote, &mut Outbox::default());
    assert!(node.is_leader());
    node
}

fn read(node: &mut RaftNode<MemStorage>, tag: u64) -> Outbox<Message> {
    let mut out = Outbox::default();
    node.request(RequestTag(tag), Op::get("k"), &mut out);
    out
}

fn probes(out: &Outbox<Message>) -> Vec<(NodeId, ReadProbe)> {
    out.messages
        .iter()
        .filter_map(|(to, m)| match m {
            Message::ReadProbe(p) => Some((*to, *p)),
            _ => None,
        })
        .collect()
}

/// A voter in `term` acknowledging round `round` of a probe of the same term.
fn ack(term: u64, round: u64) -> Message {
    late_ack(term, term, round)
}

/// A voter in `term` acknowledging round `round` of a probe of term `probed`.
fn late_ack(term: u64, probed: u64, round: u64) -> Message {
    Message::ReadAck(ReadAck {
        term: Term(term),
        in_reply_to: Term(probed),
        round,
    })
}

fn probe_round(term: u64, round: u64) -> Vec<(NodeId, ReadProbe)> {
    let probe = ReadProbe {
        term: Term(term),
        round,
    };
    vec![(NodeId(2), probe), (NodeId(3), probe)]
}

#[test]
fn read_acknowledgements_keep_a_leader_whose_followers_hold_their_other_answers() {
    // Followers whose fsync stalls hold their AppendEntries answers until it ends, but
    // answer read probes at once (they assert nothing written). An acknowledgement is
    // contact in the leader's term: check-quorum (§6.2) counts it, or a slow disk would
    // depose a leader that a majority still follows, failing every read and write in flight.
    let mut leader = fresh_leader();
    step(&mut leader, 2, accepted(2, 2));
    let mut answered = 0;
    for tag in 0..100 {
        // 100 ticks (five election timeouts of 20), a read each tick, and every probe
        // answered by both followers, nothing else.
        let mut out = read(&mut leader, tag);
        leader.tick(&mut out);
        let mut pending = probes(&out);
        answered += out.replies.len();
        while let Some((to, probe)) = pending.pop() {
            let out = step(&mut leader, to.0, ack(2, probe.round));
            pending.extend(probes(&out));
            answered += out.replies.len();
        }
        assert!(leader.is_leader(), "deposed at tick {tag}");
    }
    assert!(answered >= 99, "{answered} reads answered");
}

#[test]
fn reads_wait_for_the_leader_s_first_commit_then_share_one_round_per_batch() {
    let mut leader = fresh_leader();
    // §6.4 step 1: until its no-op commits, a new leader's commit index may be behind the
    // last leader's, so no round starts and no read is answered.
    for tag in 1..=5 {
        let out = read(&mut leader, tag);
        assert!(probes(&out).is_empty() && out.replies.is_empty());
    }
    let committed = accepted(2, 2);
    let out = step(&mut leader, 2, committed);
    assert_eq!(leader.commit_index(), LogIndex(2));
    assert_eq!(
        probes(&out),
        probe_round(2, 1),
        "one round for the five reads"
    );
    assert!(out.replies.is_empty(), "not before a majority confirms");
    // Reads arriving while a round is in flight wait for the next one.
    for tag in 6..=105 {
        let out = read(&mut leader, tag);
        assert!(probes(&out).is_empty() && out.replies.is_empty());
    }
    // One acknowledgement and the leader itself are a majority of three.
    let out = step(&mut leader, 3, ack(2, 1));
    let answered: Vec<u64> = out.replies.iter().map(|(tag, _)| tag.0).collect();
    assert_eq!(answered, (1..=5).collect::<Vec<_>>());
    assert!(
        out.replies
            .iter()
            .all(|(_, o)| *o == Ok(Reply::Value(None)))
    );
    assert_eq!(
        probes(&out),
        probe_round(2, 2),
        "the hundred queued reads start the next round"
    );
    // A late acknowledgement of the finished round confirms nothing.
    assert!(step(&mut leader, 2, ack(2, 1)).replies.is_empty());
    assert_eq!(step(&mut leader, 2, ack(2, 2)).replies.len(), 100);
}

#[test]
fn an_answer_to_an_earlier_term_s_probe_confirms_nothing() {
    let mut leader = fresh_leader();
    let committed = accepted(2, 2);
    step(&mut leader, 2, committed);
    assert_eq!(probes(&read(&mut leader, 1)), probe_round(2, 1));
    // Node 3, now in term 2, answers a probe of round 1 that this node sent as leader of
    // an earlier term, delayed in the network. It says nothing about the round in flight:
    // it may have been sent before that round started, and node 3 may since have voted in
    // a later term.
    let out = step(&mut leader, 3, late_ack(2, 1, 1));
    assert!(out.replies.is_empty(), "{:?}", out.replies);
    assert!(leader.is_leader());
    assert_eq!(step(&mut leader, 3, ack(2, 1)).replies.len(), 1);
}

#[test]
fn an_acknowledgement_from_a_later_term_deposes_the_leader_and_fails_its_reads() {
    let mut leader = fresh_leader();
    let committed = accepted(2, 2);
    step(&mut leader, 2, committed);
    assert_eq!(probes(&read(&mut leader, 1)), probe_round(2, 1));
    // Node 3 has moved on to term 3: someone else may lead and have committed writes.
    let out = step(&mut leader, 3, ack(3, 1));
    assert!(!leader.is_leader());
    match &out.replies[..] {
        [(RequestTag(1), Err(failure))] => assert_eq!(failure.code, ErrorCode::Unavailable),
        other => panic!("the read must fail, got {other:?}"),
    }
}

#[test]
fn a_follower_answers_a_probe_of_its_leader_s_term_and_refuses_an_older_one() {
    let mut follower = RaftNode::new(Config::new(NodeId(2), members(3), 1), MemStorage::default());
    let probe = |term| {
        Message::ReadProbe(ReadProbe {
            term: Term(term),
            round: 7,
        })
    };
    let out = step(&mut follower, 1, probe(4));
    assert_eq!(out.messages, vec![(NodeId(1), ack(4, 7))]);
    assert_eq!(follower.leader(), Some(NodeId(1)), "a probe is a heartbeat");
    let out = step(&mut follower, 3, probe(3));
    assert_eq!(
        out.messages,
        vec![(NodeId(3), late_ack(4, 3, 7))],
        "a deposed leader learns the newer term"
    );
}

/// Runs until request `tag` is answered, for at most `ms`.
fn answer(sim: &mut Cluster, tag: RequestTag, ms: u64) -> Option<Outcome> {
    sim.run_until(ms, |s| s.reply(tag).is_some());
    sim.reply(tag).cloned()
}

/// The deposed leader's read: never answered from its old state, whether it steps down by
/// itself (check-quorum) or only learns of the new term when the partition heals.
fn isolated_leader_read(seed: u64, check_quorum: bool) {
    let mut sim = cluster_with(seed, 3, move |c| c.check_quorum = check_quorum);
    sim.run_until(5_000, |s| stable_leader(s).is_some());
    let old = stable_leader(&sim).expect("a leader");
    let tag = sim.request(old, Op::put("k", "old"));
    assert_eq!(
        answer(&mut sim, tag, 2_000),
        Some(Ok(Reply::Write(kv_server::protocol::WriteOutcome::Put))),
        "seed {seed}"
    );
    let tag = sim.request(old, Op::get("k"));
    assert_eq!(
        answer(&mut sim, tag, 2_000),
        Some(Ok(Reply::Value(Some("old".into())))),
        "seed {seed}"
    );

    sim.isolate(old);
    let stale = sim.request(old, Op::get("k"));
    let new = loop {
        sim.run_for(TICK_MS);
        if let Some(new) = stable_leader(&sim).filter(|&l| l != old) {
            break new;
        }
        assert!(sim.now() < 60_000, "seed {seed}: no new leader");
    };
    let tag = sim.request(new, Op::put("k", "new"));
    assert!(
        matches!(answer(&mut sim, tag, 5_000), Some(Ok(_))),
        "seed {seed}"
    );
    let late = sim.request(old, Op::get("k"));
    sim.run_for(10 * 200);
    if !check_quorum {
        assert_eq!(sim.reply(stale), None, "seed {seed}: no quorum, no answer");
        sim.heal();
    }
    for tag in [stale, late] {
        match answer(&mut sim, tag, 5_000) {
            Some(Err(failure)) => assert!(
                matches!(failure.code, ErrorCode::NotLeader | ErrorCode::Unavailable),
                "seed {seed}: {failure:?}"
            ),
            other => panic!("seed {seed}: the deposed leader answered {other:?}"),
        }
    }
}

#[test]
fn a_deposed_leader_never_serves_a_read_from_its_old_state() {
    for_each_seed(10, |seed| {
        isolated_leader_read(seed, true);
        isolated_leader_read(seed, false);
    });
}

/// One writer and one reader of a counter on a lossy network whose leader is cut off now
/// and then. The writer follows the new leader at once; the reader, like a real client,
/// keeps to the node it found leading until that node refuses it, so it often asks a
/// leader that has just been deposed. Every read
/// answered must see at least the last write acknowledged before it was sent, and no write
/// not yet sent.
#[test]
fn reads_see_every_write_acknowledged_before_them_through_leader_changes() {
    for_each_seed(10, |seed| {
        // Without check-quorum, a cut-off leader keeps leading while another is elected:
        // only the ReadIndex round stands between the reader and a stale value. With it,
        // the old leader usually steps down first; both must hold.
        let mut sim = cluster_with(seed, 3, move |c| c.check_quorum = seed % 2 == 0);
        sim.set_net(NetConfig::unreliable());
        let value = |n: u64| format!("{n:08}");
        let (mut written, mut acked) = (0u64, 0u64);
        let mut write: Option<RequestTag> = None;
        let mut reading: Option<(RequestTag, u64)> = None;
        let (mut writer_at, mut reader_at) = (NodeId(1), NodeId(1));
        let mut served = 0;
        for turn in 0..3_000u64 {
            sim.run_for(TICK_MS);
            if turn % 300 == 150 {
                if let Some(leader) = stable_leader(&sim) {
                    sim.isolate(leader);
                }
            } else if turn % 300 == 250 {
                sim.heal();
            }
            let leader = stable_leader(&sim);
            if leader.is_some_and(|l| l != writer_at) {
                // The writer gives up on a write stuck at a deposed leader: its outcome is
                // unknown, but it can only be applied before the writes that follow it.
                write = None;
            }
            match write.map(|tag| sim.reply(tag).cloned()) {
                Some(None) => {}
                Some(Some(Ok(_))) => {
                    acked = written;
                    write = None;
                }
                // Refused, or unknown: the next write's value is higher either way.
                Some(Some(Err(_))) | None => {
                    writer_at = leader.unwrap_or(writer_at);
                    written += 1;
                    write = Some(sim.request(writer_at, Op::put("k", &value(written))));
                }
            }
            match reading.map(|(tag, floor)| (sim.reply(tag).cloned(), floor)) {
                Some((None, _)) => continue,
                Some((Some(Ok(Reply::Value(seen))), floor)) => {
                    let seen: u64 = seen.map_or(0, |s| s.parse().expect("a counter"));
                    assert!(
                        seen >= floor,
                        "seed {seed}: read {seen} after {floor} was acknowledged"
                    );
                    assert!(seen <= written, "seed {seed}: read {seen}, never written");
                    served += 1;
                }
                Some((Some(other), _)) => {
                    assert!(other.is_err(), "seed {seed}: {other:?}");
                    reader_at = leader.unwrap_or(reader_at);
                }
                None => {}
            }
            reading = Some((sim.request(reader_at, Op::get("k")), acked));
        }
        assert!(served > 100, "seed {seed}: only {served} reads served");
    });
}
