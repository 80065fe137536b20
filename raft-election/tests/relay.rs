//! A follower that relays its clients' writes and reads to the leader
//! (`Config::followers_relay`): exact outputs of the core, on both ends of the peer link.
//! The simulated clusters with a linearizability check are in the `tests` package
//! (`relay_sim.rs`).

mod common;

use common::*;
use kv_server::protocol::{Command, ErrorCode, NodeId, Op, Outcome, Reply, WriteOutcome};
use raft_election::message::{
    BatchId, Message, Propose, Proposed, ReadAck, ReadIndex, ReadIndexed, RequestVoteResponse,
};
use raft_election::node::{Config, RaftNode};
use raft_log::message::AppendEntries;
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::node::{Node, Outbox, RequestTag};

fn relaying(id: u64) -> Config {
    let mut config = Config::new(NodeId(id), members(3), 7);
    config.followers_relay = true;
    config.pre_vote = false;
    config
}

fn request(node: &mut RaftNode<MemStorage>, tag: u64, op: Op) -> Outbox<Message> {
    let mut out = Outbox::default();
    node.request(RequestTag(tag), op, &mut out);
    out
}

fn flush(node: &mut RaftNode<MemStorage>) -> Outbox<Message> {
    let mut out = Outbox::default();
    node.flush(&mut out);
    out
}

fn tags(out: &Outbox<Message>) -> Vec<u64> {
    out.replies.iter().map(|(tag, _)| tag.0).collect()
}

fn codes(out: &Outbox<Message>) -> Vec<ErrorCode> {
    out.replies
        .iter()
        .map(|(_, outcome)| outcome.as_ref().expect_err("a failure").code)
        .collect()
}

fn put(key: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: "v".into(),
    }
}

fn entry(index: u64, term: u64, command: Command) -> Entry {
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: Payload::Command(command),
    }
}

/// The leader's AppendEntries of term 2 carrying `entries` after index `prev` (of term 2),
/// with `commit` as its commit index.
fn append(prev: u64, entries: Vec<Entry>, commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(2),
        prev_log_index: LogIndex(prev),
        prev_log_term: Term(if prev == 0 { 0 } else { 2 }),
        entries,
        leader_commit: LogIndex(commit),
    })
}

/// Node 2 of 3, following node 1 in term 2, with an empty log.
fn follower() -> RaftNode<MemStorage> {
    let mut node = RaftNode::new(relaying(2), MemStorage::default());
    step(&mut node, 1, append(0, Vec::new(), 0));
    assert_eq!((node.leader(), node.term()), (Some(NodeId(1)), Term(2)));
    node
}

/// Node 1 of 3, elected leader of term 1 with node 2's vote; its no-op is at index 1.
fn leader() -> RaftNode<MemStorage> {
    leader_after(0)
}

/// Node 1 of 3, starting in term `term` with an empty log, elected leader of the next term
/// with node 2's vote.
fn leader_after(term: u64) -> RaftNode<MemStorage> {
    let hard_state = HardState {
        current_term: Term(term),
        voted_for: None,
    };
    let mut node = RaftNode::new(
        relaying(1),
        MemStorage::with_entries(Vec::new(), hard_state),
    );
    while node.term() == Term(term) {
        node.tick(&mut Outbox::default());
    }
    let vote = Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(term + 1),
        granted: true,
        pre_vote: false,
        removed_by: None,
    });
    step(&mut node, 2, vote);
    assert!(node.is_leader());
    node
}

/// The one Propose in `out`, to node `leader`.
fn proposal_to(leader: u64, out: &Outbox<Message>) -> Propose {
    match &out.messages[..] {
        [(to, Message::Propose(propose))] if *to == NodeId(leader) => propose.clone(),
        other => panic!("expected one Propose to node {leader}, got {other:?}"),
    }
}

/// The one Propose in `out`, to node 1.
fn proposal(out: &Outbox<Message>) -> Propose {
    proposal_to(1, out)
}

fn read_index(out: &Outbox<Message>) -> ReadIndex {
    match &out.messages[..] {
        [(NodeId(1), Message::ReadIndex(ask))] => *ask,
        other => panic!("expected one ReadIndex to the leader, got {other:?}"),
    }
}

fn proposed(batch: BatchId, first: Option<u64>) -> Message {
    Message::Proposed(Proposed {
        term: Term(2),
        batch,
        first: first.map(LogIndex),
    })
}

/// Node 2's first batch (run 9), of one write, sent in `term`.
fn first_batch_of_one(term: u64) -> Message {
    Message::Propose(Propose {
        term: Term(term),
        batch: BatchId { run: 9, number: 1 },
        writes: vec![(put("a"), None)],
    })
}

const PUT: Outcome = Ok(Reply::Write(WriteOutcome::Put));

#[test]
fn a_follower_proposes_a_batch_of_writes_in_one_message_and_answers_once_they_apply() {
    let mut node = follower();
    for (tag, key) in [(1, "a"), (2, "b"), (3, "c")] {
        let out = request(&mut node, tag, Op::put(key, "v"));
        assert!(out.messages.is_empty() && out.replies.is_empty());
    }
    let propose = proposal(&flush(&mut node));
    assert_eq!(propose.term, Term(2));
    assert_eq!(
        propose.writes,
        vec![(put("a"), None), (put("b"), None), (put("c"), None)]
    );
    // The leader put them at 4, 5 and 6; nothing is answered before they apply.
    assert!(tags(&step(&mut node, 1, proposed(propose.batch, Some(4)))).is_empty());
    let earlier = (1..=3).map(|i| entry(i, 2, put("x"))).collect();
    assert!(tags(&step(&mut node, 1, append(0, earlier, 3))).is_empty());
    // Index 6 holds another write: the one proposed there did not happen.
    let entries = vec![entry(4, 2, put("a")), entry(5, 2, put("b"))];
    let out = step(&mut node, 1, append(3, entries, 5));
    assert_eq!(
        out.replies,
        vec![(RequestTag(1), PUT), (RequestTag(2), PUT)]
    );
    let replaced = Entry {
        term: Term(3),
        ..entry(6, 3, put("z"))
    };
    let out = step(
        &mut node,
        1,
        Message::AppendEntries(AppendEntries {
            term: Term(3),
            prev_log_index: LogIndex(5),
            prev_log_term: Term(2),
            entries: vec![replaced],
            leader_commit: LogIndex(6),
        }),
    );
    assert_eq!(tags(&out), [3]);
    assert_eq!(codes(&out), [ErrorCode::Unavailable], "a definite no");
    assert_eq!(node.state().get("c"), None);
}

#[test]
fn large_writes_are_proposed_in_several_batches_each_under_the_frame_budget() {
    // Three writes of 1.5 MiB: two fit one batch of at most MAX_BATCH_BYTES (4 MiB), the
    // third goes in the next. One Propose of them all could pass the peer transport's
    // frame limit with more writes, and end the link.
    let mut node = follower();
    let big = "v".repeat(3 << 19);
    for tag in 1..=3 {
        request(&mut node, tag, Op::put(&format!("k{tag}"), &big));
    }
    let out = flush(&mut node);
    let proposes: Vec<&Propose> = out
        .messages
        .iter()
        .map(|(to, m)| match m {
            Message::Propose(p) if *to == NodeId(1) => p,
            other => panic!("expected Proposes to the leader, got {other:?}"),
        })
        .collect();
    let sizes: Vec<usize> = proposes.iter().map(|p| p.writes.len()).collect();
    assert_eq!(sizes, [2, 1]);
    assert!(proposes[0].batch.number < proposes[1].batch.number);
    // Each is answered on its own.
    let first = step(&mut node, 1, proposed(proposes[0].batch, Some(1)));
    let second = step(&mut node, 1, proposed(proposes[1].batch, None));
    assert!(first.replies.is_empty(), "waits for its entries to apply");
    assert_eq!(tags(&second), [3]);
}

#[test]
fn the_leader_appends_a_batch_once_and_refuses_what_it_cannot_take() {
    let mut leader = leader();
    let batch = |number| BatchId { run: 9, number };
    let propose = |number| {
        Message::Propose(Propose {
            term: Term(1),
            batch: batch(number),
            writes: vec![(put("a"), None), (put("b"), None)],
        })
    };
    let answer = |first: Option<u64>, number| {
        vec![(
            NodeId(2),
            Message::Proposed(Proposed {
                term: Term(1),
                batch: batch(number),
                first: first.map(LogIndex),
            }),
        )]
    };
    assert_eq!(
        step(&mut leader, 2, propose(1)).messages,
        answer(Some(2), 1)
    );
    assert_eq!(leader.log().last_index(), LogIndex(3));
    // A repeat, or an earlier batch overtaken by a later one, would apply its writes twice.
    // Neither is answered: a repeat's "appended nothing" could overtake the first copy's
    // answer and tell its clients their writes did not happen.
    assert!(step(&mut leader, 2, propose(1)).messages.is_empty());
    assert_eq!(
        step(&mut leader, 2, propose(3)).messages,
        answer(Some(4), 3)
    );
    assert!(step(&mut leader, 2, propose(2)).messages.is_empty());
    assert_eq!(leader.log().last_index(), LogIndex(5));
    // Another run of the same follower numbers its batches from 1 again.
    let other_run = Message::Propose(Propose {
        term: Term(1),
        batch: BatchId { run: 10, number: 1 },
        writes: vec![(put("c"), None)],
    });
    let out = step(&mut leader, 2, other_run);
    assert!(matches!(
        &out.messages[..],
        [(
            _,
            Message::Proposed(Proposed {
                first: Some(LogIndex(6)),
                ..
            })
        )]
    ));
    // A node of a later term takes no batch of an earlier term, and does not answer: the
    // batch may have been appended in its term (a copy appended now would be a second).
    let mut follower = follower();
    assert!(step(&mut follower, 3, propose(1)).messages.is_empty());
    // A node that never led the batch's term (its own was earlier) appends nothing, and
    // says so: that stays true.
    let later = first_batch_of_one(3);
    let out = step(&mut follower, 3, later);
    assert!(matches!(
        &out.messages[..],
        [(
            NodeId(3),
            Message::Proposed(Proposed {
                term: Term(3),
                first: None,
                ..
            })
        )]
    ));
    assert_eq!(follower.log().last_index(), LogIndex(0));
}

#[test]
fn a_later_term_s_leader_never_appends_a_batch_of_an_earlier_term() {
    let mut leader = leader_after(4);
    let last = leader.log().last_index();
    // A batch node 2 sent to term 4's leader, delivered late: that leader may have
    // appended it, so this one must neither append it again nor say it was not.
    let stale = first_batch_of_one(4);
    assert!(step(&mut leader, 2, stale).messages.is_empty());
    assert_eq!(leader.log().last_index(), last);
}

#[test]
fn a_leader_that_stepped_down_leaves_a_late_copy_of_an_appended_batch_unanswered() {
    let mut leader = leader();
    let propose = first_batch_of_one(1);
    let out = step(&mut leader, 2, propose.clone());
    assert!(matches!(
        &out.messages[..],
        [(_, Message::Proposed(Proposed { first: Some(_), .. }))]
    ));
    // Nothing heard from either follower: check-quorum steps it down, in the same term.
    while leader.is_leader() {
        leader.tick(&mut Outbox::default());
    }
    assert_eq!(leader.term(), Term(1));
    // A duplicate of the batch arrives: "appended nothing" would tell its clients that
    // writes it did append never happened.
    assert!(step(&mut leader, 2, propose).messages.is_empty());
}

#[test]
fn a_batch_refused_during_a_hand_off_is_never_appended_afterwards() {
    let mut leader = leader();
    let propose = first_batch_of_one(1);
    leader.hand_off(RequestTag(1), &mut Outbox::default());
    let out = step(&mut leader, 2, propose.clone());
    assert!(matches!(
        &out.messages[..],
        [(_, Message::Proposed(Proposed { first: None, .. }))]
    ));
    // The target (node 2) never answers, so the hand-off gives up; node 3 does, so this
    // node keeps its quorum and leads on.
    let mut answered = false;
    while !answered {
        let mut out = Outbox::default();
        leader.tick(&mut out);
        answered = out.replies.iter().any(|(tag, _)| *tag == RequestTag(1));
        step(&mut leader, 3, accepted(1, 1));
    }
    assert!(leader.is_leader());
    // A late copy of the refused batch must stay refused: its clients were told so.
    let last = leader.log().last_index();
    assert!(step(&mut leader, 2, propose).messages.is_empty());
    assert_eq!(leader.log().last_index(), last);
}

#[test]
fn a_refused_batch_fails_definitely_and_an_unanswered_one_is_unknown() {
    let mut node = follower();
    request(&mut node, 1, Op::put("a", "v"));
    let refused = proposal(&flush(&mut node));
    let out = step(&mut node, 1, proposed(refused.batch, None));
    assert_eq!(codes(&out), [ErrorCode::Unavailable]);

    request(&mut node, 2, Op::put("a", "v"));
    proposal(&flush(&mut node));
    // No answer within an election timeout (20 ticks): the write may have been appended.
    let mut answered = Vec::new();
    for _ in 0..20 {
        let mut out = Outbox::default();
        node.tick(&mut out);
        answered.extend(out.replies);
        if node.leader().is_none() {
            break; // the follower's own election timer may run out first
        }
    }
    let answered: Vec<_> = answered
        .into_iter()
        .map(|(tag, o)| (tag, o.map_err(|f| f.code)))
        .collect();
    assert_eq!(answered, [(RequestTag(2), Err(ErrorCode::Timeout))]);
}

#[test]
fn an_answer_of_the_wrong_kind_gives_the_batch_up_at_once() {
    // A confused peer answers a batch of writes as if it were reads, and one of reads as
    // if it were writes: the clients are answered as if the answer was lost (a write's
    // outcome is unknown), not left to the driver's timeout.
    let mut node = follower();
    request(&mut node, 1, Op::put("a", "v"));
    let writes = proposal(&flush(&mut node)).batch;
    let as_reads = Message::ReadIndexed(ReadIndexed {
        term: Term(2),
        batch: writes,
        index: Some(LogIndex(0)),
    });
    let out = step(&mut node, 1, as_reads);
    assert_eq!(tags(&out), [1]);
    assert_eq!(codes(&out), [ErrorCode::Timeout]);

    request(&mut node, 2, Op::get("a"));
    let reads = read_index(&flush(&mut node)).batch;
    let out = step(&mut node, 1, proposed(reads, Some(1)));
    assert_eq!(tags(&out), [2]);
    assert_eq!(codes(&out), [ErrorCode::Unavailable]);
}

#[test]
fn a_batch_is_given_up_when_the_leader_changes_and_stale_answers_are_ignored() {
    let mut node = follower();
    request(&mut node, 1, Op::put("a", "v"));
    let propose = proposal(&flush(&mut node));
    // Node 3 leads term 3 now: node 1's answer may never come.
    let heartbeat = Message::AppendEntries(AppendEntries {
        term: Term(3),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: Vec::new(),
        leader_commit: LogIndex(0),
    });
    let out = step(&mut node, 3, heartbeat);
    assert_eq!(tags(&out), [1]);
    assert_eq!(codes(&out), [ErrorCode::Timeout]);
    // Its answer, late, is about a batch no one waits for any more (had it been taken,
    // tag 1 would wait for entry 1, and be answered below).
    step(&mut node, 1, proposed(propose.batch, Some(1)));
    // An answer from another run of this node, with the same batch number, is not ours.
    request(&mut node, 2, Op::put("b", "v"));
    let ours = proposal_to(3, &flush(&mut node)).batch;
    let theirs = BatchId {
        run: ours.run ^ 1,
        ..ours
    };
    let late = Message::Proposed(Proposed {
        term: Term(3),
        batch: theirs,
        first: Some(LogIndex(1)),
    });
    step(&mut node, 3, late);
    let entries = vec![entry(1, 3, put("x"))];
    let commit = Message::AppendEntries(AppendEntries {
        term: Term(3),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries,
        leader_commit: LogIndex(1),
    });
    // Entry 1 is node 3's: neither tag 1 (node 1's late answer) nor tag 2 (the other run's
    // answer) was taken to wait for it.
    assert_eq!(tags(&step(&mut node, 3, commit)), [] as [u64; 0]);
}

#[test]
fn a_follower_serves_a_batch_of_reads_once_it_has_applied_the_read_index() {
    let mut node = follower();
    step(&mut node, 1, append(0, vec![entry(1, 2, put("k"))], 0));
    for tag in 1..=3 {
        assert!(request(&mut node, tag, Op::get("k")).replies.is_empty());
    }
    let ask = read_index(&flush(&mut node));
    // Reads taken while a read index is asked for wait for the next one.
    request(&mut node, 4, Op::get("k"));
    assert!(
        flush(&mut node).messages.is_empty(),
        "one ReadIndex at a time"
    );
    let confirmed = Message::ReadIndexed(ReadIndexed {
        term: Term(2),
        batch: ask.batch,
        index: Some(LogIndex(1)),
    });
    assert!(
        step(&mut node, 1, confirmed).replies.is_empty(),
        "entry 1 is not applied yet"
    );
    let next = read_index(&flush(&mut node));
    assert_ne!(next.batch, ask.batch);
    let out = step(&mut node, 1, append(1, Vec::new(), 1));
    assert_eq!(tags(&out), [1, 2, 3]);
    assert!(
        out.replies
            .iter()
            .all(|(_, o)| *o == Ok(Reply::Value(Some("v".into()))))
    );
    let confirmed = Message::ReadIndexed(ReadIndexed {
        term: Term(2),
        batch: next.batch,
        index: Some(LogIndex(1)),
    });
    assert_eq!(tags(&step(&mut node, 1, confirmed)), [4]);
    // A read index the leader could not confirm: the reads changed nothing; retry.
    request(&mut node, 5, Op::get("k"));
    let ask = read_index(&flush(&mut node));
    let refused = Message::ReadIndexed(ReadIndexed {
        term: Term(2),
        batch: ask.batch,
        index: None,
    });
    assert_eq!(
        codes(&step(&mut node, 1, refused)),
        [ErrorCode::Unavailable]
    );
}

#[test]
fn the_leader_confirms_a_follower_s_read_index_with_its_next_round() {
    let mut leader = leader();
    let committed = accepted(1, 1);
    step(&mut leader, 2, committed);
    assert_eq!(leader.commit_index(), LogIndex(1));
    let batch = BatchId { run: 4, number: 1 };
    let ask = Message::ReadIndex(ReadIndex {
        term: Term(1),
        batch,
    });
    let out = step(&mut leader, 3, ask);
    assert!(
        out.messages
            .iter()
            .all(|(_, m)| matches!(m, Message::ReadProbe(_))),
        "a round of probes, and no answer yet: {:?}",
        out.messages
    );
    let out = step(
        &mut leader,
        2,
        Message::ReadAck(ReadAck {
            term: Term(1),
            in_reply_to: Term(1),
            round: 1,
        }),
    );
    let answer = ReadIndexed {
        term: Term(1),
        batch,
        index: Some(LogIndex(1)),
    };
    assert_eq!(
        out.messages,
        vec![(NodeId(3), Message::ReadIndexed(answer))]
    );
}

#[test]
fn without_relaying_a_follower_still_answers_not_leader() {
    let mut config = Config::new(NodeId(2), members(3), 7);
    config.pre_vote = false;
    let mut node = RaftNode::new(config, MemStorage::default());
    step(&mut node, 1, append(0, Vec::new(), 0));
    let out = request(&mut node, 1, Op::put("a", "v"));
    assert_eq!(codes(&out), [ErrorCode::NotLeader]);
    assert!(flush(&mut node).messages.is_empty());
}

#[test]
fn the_leader_tells_every_follower_a_new_commit_index_at_once() {
    let mut leader = leader();
    flush(&mut leader);
    let acked = |index| accepted(1, index);
    // Node 3 matches up to 0 (the no-op goes to it again); node 2 has it: committed.
    step(&mut leader, 3, acked(0));
    step(&mut leader, 2, acked(1));
    assert_eq!(leader.commit_index(), LogIndex(1));
    // Nothing new to send, but both followers hear the commit index now rather than at the
    // next heartbeat: a follower answering a relayed write waits for it.
    let commits: Vec<(NodeId, LogIndex)> = flush(&mut leader)
        .messages
        .into_iter()
        .filter_map(|(to, m)| match m {
            Message::AppendEntries(append) => Some((to, append.leader_commit)),
            _ => None,
        })
        .collect();
    assert_eq!(
        commits,
        [(NodeId(2), LogIndex(1)), (NodeId(3), LogIndex(1))]
    );
    assert!(flush(&mut leader).messages.is_empty(), "told once");
}
