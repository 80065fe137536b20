//! The core, one message at a time, with exact outputs: the AppendEntries receiver rules of
//! Figure 2 and the leader's commit rule (§5.4.2).

mod common;

use common::{LEADER, entry, log_of, members};
use kv_server::protocol::{NodeId, Op};
use raft_log::message::{AppendEntries, AppendEntriesResponse, Message, Rejection};
use raft_log::node::{Config, RaftLogNode};
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Term};
use replication_naive::node::{Node, Outbox};

const FOLLOWER: NodeId = NodeId(2);

fn follower(terms: &[u64], current_term: u64) -> RaftLogNode<MemStorage> {
    let hard = HardState {
        current_term: Term(current_term),
        voted_for: None,
    };
    let config = Config::new(FOLLOWER, members(3), LEADER);
    RaftLogNode::new(config, MemStorage::with_entries(log_of(terms), hard))
}

/// The fixed leader, in term 3, of a log with the given terms (its last saved term 2).
fn leader_of_term_3_over(log_terms: &[u64]) -> RaftLogNode<MemStorage> {
    let hard = HardState {
        current_term: Term(2),
        voted_for: None,
    };
    let mut config = Config::new(LEADER, members(3), LEADER);
    config.term = Term(3);
    RaftLogNode::new(config, MemStorage::with_entries(log_of(log_terms), hard))
}

fn append(term: u64, prev: (u64, u64), entries: Vec<Entry>, commit: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_index: LogIndex(prev.0),
        prev_log_term: Term(prev.1),
        entries,
        leader_commit: LogIndex(commit),
    })
}

/// Steps `message` from the leader into `node` and returns what it sent back.
fn answer(node: &mut RaftLogNode<MemStorage>, message: Message) -> Vec<(NodeId, Message)> {
    let mut out = Outbox::default();
    node.step(LEADER, message, &mut out);
    out.messages
}

fn accepted(term: u64, matched: u64) -> Vec<(NodeId, Message)> {
    let response = AppendEntriesResponse {
        term: Term(term),
        in_reply_to: Term(term),
        result: Ok(LogIndex(matched)),
    };
    vec![(LEADER, Message::AppendEntriesResponse(response))]
}

fn rejected(
    term: u64,
    prev: u64,
    conflict_term: Option<u64>,
    conflict_index: u64,
) -> Vec<(NodeId, Message)> {
    let rejection = Rejection {
        prev_log_index: LogIndex(prev),
        conflict_term: conflict_term.map(Term),
        conflict_index: LogIndex(conflict_index),
    };
    vec![(
        LEADER,
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term: Term(term),
            in_reply_to: Term(term),
            result: Err(rejection),
        }),
    )]
}

#[test]
fn a_gap_is_refused_with_the_followers_log_length() {
    // §5.3: no entry at prev_log_index → false; the hint says where the log ends.
    let mut node = follower(&[1, 1], 1);
    assert_eq!(
        answer(&mut node, append(1, (5, 1), vec![entry(6, 1)], 0)),
        rejected(1, 5, None, 3)
    );
    assert_eq!(node.log().last_index(), LogIndex(2));
}

#[test]
fn a_term_mismatch_is_refused_with_the_first_index_of_the_conflicting_term() {
    // Figure 7 (f) against a term-8 leader whose entry 11 is... absent: prev (10, 6) meets
    // the follower's term 3, which started at index 7.
    let mut node = follower(&[1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3], 3);
    assert_eq!(
        answer(&mut node, append(8, (10, 6), vec![], 0)),
        rejected(8, 10, Some(3), 7)
    );
    assert_eq!(
        node.term(),
        Term(8),
        "the follower adopts the newer term (Figure 2, all servers)"
    );
}

#[test]
fn a_stale_term_is_refused_and_changes_nothing() {
    let mut node = follower(&[1, 2], 2);
    let refused = AppendEntriesResponse {
        term: Term(2),
        in_reply_to: Term(1),
        result: Err(Rejection {
            prev_log_index: LogIndex(1),
            conflict_term: None,
            conflict_index: LogIndex(0),
        }),
    };
    assert_eq!(
        answer(&mut node, append(1, (1, 1), vec![entry(2, 1)], 2)),
        vec![(LEADER, Message::AppendEntriesResponse(refused))]
    );
    assert_eq!(
        (node.log().last_index(), node.commit_index()),
        (LogIndex(2), LogIndex(0))
    );
}

#[test]
fn a_conflicting_suffix_is_cut_and_replaced() {
    // §5.3 step 3: same index, different term → delete it and everything after.
    let mut node = follower(&[1, 1, 2, 2, 2], 2);
    let replies = answer(&mut node, append(3, (2, 1), vec![entry(3, 3)], 0));
    assert_eq!(replies, accepted(3, 3));
    assert_eq!(common::terms(&node), vec![(1, 1), (2, 1), (3, 3)]);
}

#[test]
fn a_late_shorter_append_does_not_cut_what_a_newer_one_added() {
    // Reordering: the append carrying entries 2..=3 arrives after the one carrying 2..=4.
    let mut node = follower(&[1], 1);
    answer(
        &mut node,
        append(1, (1, 1), vec![entry(2, 1), entry(3, 1), entry(4, 1)], 0),
    );
    assert_eq!(
        answer(
            &mut node,
            append(1, (1, 1), vec![entry(2, 1), entry(3, 1)], 0)
        ),
        accepted(1, 3)
    );
    assert_eq!(
        node.log().last_index(),
        LogIndex(4),
        "entry 4 must survive the late append"
    );
}

#[test]
fn commit_follows_the_leader_but_never_past_the_entries_it_verified_nor_backwards() {
    let mut node = follower(&[1, 1, 1, 1, 1], 1);
    // The follower holds 5 entries, but this append only verified the log up to 2.
    answer(&mut node, append(1, (1, 1), vec![entry(2, 1)], 5));
    assert_eq!(node.commit_index(), LogIndex(2));
    assert_eq!(node.last_applied(), LogIndex(2));
    answer(&mut node, append(1, (4, 1), vec![], 4));
    assert_eq!(node.commit_index(), LogIndex(4));
    // An old heartbeat with an older leader_commit does not move it back.
    answer(&mut node, append(1, (1, 1), vec![], 1));
    assert_eq!(node.commit_index(), LogIndex(4));
}

#[test]
fn the_leader_does_not_commit_an_earlier_terms_entry_by_counting_replicas() {
    // §5.4.2 / Figure 8: the leader of term 3 holds entry 2 from term 2. Even once a majority
    // stores entry 2, it stays uncommitted until an entry of term 3 is stored by a majority.
    let mut leader = leader_of_term_3_over(&[1, 2]);
    let mut out = Outbox::default();
    let ok = |matched| {
        Message::AppendEntriesResponse(AppendEntriesResponse {
            term: Term(3),
            in_reply_to: Term(3),
            result: Ok(LogIndex(matched)),
        })
    };
    leader.step(FOLLOWER, ok(2), &mut out);
    assert_eq!(
        leader.commit_index(),
        LogIndex(0),
        "entry 2 is from term 2: counting replicas must not commit it"
    );

    let tag = replication_naive::node::RequestTag(1);
    leader.request(tag, Op::put("x", "1"), &mut out);
    leader.step(FOLLOWER, ok(3), &mut out);
    assert_eq!(
        leader.commit_index(),
        LogIndex(3),
        "entry 3 is from term 3 and commits entry 2 with it"
    );
    assert_eq!(leader.last_applied(), LogIndex(3));
    assert!(
        out.replies
            .iter()
            .any(|(t, outcome)| *t == tag && outcome.is_ok()),
        "the client is answered once applied"
    );
}

#[test]
fn the_leader_answers_a_client_only_when_its_entry_is_applied() {
    let mut leader = RaftLogNode::new(Config::new(LEADER, members(3), LEADER), MemStorage::new());
    let mut out = Outbox::default();
    let tag = replication_naive::node::RequestTag(7);
    leader.request(tag, Op::put("k", "v"), &mut out);
    assert!(
        out.replies.is_empty(),
        "not answered before a majority stores it"
    );
    assert_eq!(out.messages.len(), 2, "sent to both followers at once");
    let ok = Message::AppendEntriesResponse(AppendEntriesResponse {
        term: Term(1),
        in_reply_to: Term(1),
        result: Ok(LogIndex(1)),
    });
    leader.step(NodeId(3), ok, &mut out);
    assert_eq!(out.replies.len(), 1);
    assert_eq!(leader.state().get("k"), Some("v"));
}

#[test]
fn a_follower_redirects_writes_and_serves_reads_locally() {
    let mut node = follower(&[], 0);
    let mut out = Outbox::default();
    node.request(
        replication_naive::node::RequestTag(1),
        Op::put("k", "v"),
        &mut out,
    );
    let failure = out.replies[0].1.clone().unwrap_err();
    assert_eq!(failure.leader.as_deref(), Some("127.0.0.1:7001"));
    assert_eq!(node.log().last_index(), LogIndex(0));
}

#[test]
fn a_malformed_append_entries_is_dropped_not_obeyed() {
    // Entries must follow prev_log_index one by one, with terms that never go back and
    // never pass the request's term. Anything else comes from a broken peer.
    let mut node = follower(&[1], 1);
    for bad in [
        append(1, (1, 1), vec![entry(3, 1)], 0),
        append(1, (1, 1), vec![entry(2, 1), entry(2, 1)], 0),
        append(1, (1, 1), vec![entry(2, 2)], 0),
        append(2, (1, 1), vec![entry(2, 2), entry(3, 1)], 0),
    ] {
        assert_eq!(answer(&mut node, bad), vec![]);
    }
    assert_eq!(node.log().last_index(), LogIndex(1));
}

#[test]
fn a_refusal_of_an_older_terms_request_is_not_taken_for_a_log_mismatch() {
    // The leader (term 3) gets a refusal of its own term-2 request from a follower already
    // in term 3: it must not move next_index back for it.
    let mut leader = leader_of_term_3_over(&[1, 2]);
    let before = *leader.progress(FOLLOWER).unwrap();
    let old_refusal = AppendEntriesResponse {
        term: Term(3),
        in_reply_to: Term(2),
        result: Err(Rejection {
            prev_log_index: LogIndex(2),
            conflict_term: None,
            conflict_index: LogIndex(0),
        }),
    };
    let mut out = Outbox::default();
    leader.step(
        FOLLOWER,
        Message::AppendEntriesResponse(old_refusal),
        &mut out,
    );
    assert_eq!(*leader.progress(FOLLOWER).unwrap(), before);
    assert!(out.messages.is_empty());
}
