//! The core one input at a time, with exact outputs: what a campaign sends and persists,
//! when a vote is granted, and how a higher term is handled.

mod common;

use common::{accepted, members, step};
use kv_server::protocol::{NodeId, Op, Reply, Role, Status};
use raft_election::message::{Message, RequestVote, RequestVoteResponse, TimeoutNow};
use raft_election::node::{Config, RaftNode};
use raft_log::membership::Membership;
use raft_log::message::{AppendEntries, AppendEntriesResponse};
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::node::{Node, Outbox, RequestTag};

fn node(id: u64, log_terms: &[u64], term: u64, pre_vote: bool) -> RaftNode<MemStorage> {
    let entries = log_terms
        .iter()
        .enumerate()
        .map(|(i, &t)| Entry {
            index: LogIndex(i as u64 + 1),
            term: Term(t),
            payload: Payload::Noop,
        })
        .collect();
    let storage = MemStorage::with_entries(
        entries,
        HardState {
            current_term: Term(term),
            voted_for: None,
        },
    );
    let mut config = Config::new(NodeId(id), members(3), 1);
    config.pre_vote = pre_vote;
    RaftNode::new(config, storage)
}

/// Ticks until the node sends something, and returns that.
fn tick_until_it_speaks(node: &mut RaftNode<MemStorage>) -> Vec<(NodeId, Message)> {
    for _ in 0..1_000 {
        let mut out = Outbox::default();
        node.tick(&mut out);
        if !out.messages.is_empty() {
            return out.messages;
        }
    }
    panic!("the node never campaigned");
}

fn vote_request(term: u64, last: (u64, u64), pre_vote: bool) -> Message {
    Message::RequestVote(RequestVote {
        term: Term(term),
        last_log_index: LogIndex(last.0),
        last_log_term: Term(last.1),
        pre_vote,
        transfer: false,
        config_index: Some(LogIndex(0)),
    })
}

fn answer(node: &mut RaftNode<MemStorage>, from: u64, message: Message) -> Vec<(NodeId, Message)> {
    step(node, from, message).messages
}

fn vote(term: u64, granted: bool, pre_vote: bool) -> Message {
    Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(term),
        granted,
        pre_vote,
        removed_by: None,
    })
}

#[test]
fn a_campaign_raises_the_term_votes_for_itself_and_persists_both_before_asking() {
    // §5.2: increment currentTerm, vote for self, send RequestVote to all others. The
    // storage already holds the new term and vote when the messages are handed out.
    let mut n = node(1, &[1, 2], 2, false);
    let sent = tick_until_it_speaks(&mut n);
    let request = vote_request(3, (2, 2), false);
    assert_eq!(
        sent,
        vec![(NodeId(2), request.clone()), (NodeId(3), request)]
    );
    assert_eq!(
        n.log().hard_state(),
        HardState {
            current_term: Term(3),
            voted_for: Some(NodeId(1))
        }
    );
    assert_eq!(n.role(), Role::Candidate);
}

#[test]
fn a_pre_vote_campaign_changes_neither_term_nor_vote() {
    let mut n = node(1, &[1], 1, true);
    let sent = tick_until_it_speaks(&mut n);
    assert_eq!(sent[0], (NodeId(2), vote_request(2, (1, 1), true)));
    assert_eq!(
        n.log().hard_state(),
        HardState {
            current_term: Term(1),
            voted_for: None
        }
    );
    // Granted pre-votes from a majority start the real election, in term 2.
    let sent = answer(&mut n, 2, vote(2, true, true));
    assert_eq!(sent[0], (NodeId(2), vote_request(2, (1, 1), false)));
    assert_eq!(n.term(), Term(2));
}

#[test]
fn a_vote_is_refused_to_a_candidate_with_a_less_up_to_date_log() {
    // §5.4.1: the voter's last entry has term 3; a candidate whose last term is 2 loses,
    // however long its log.
    let mut n = node(2, &[1, 3], 3, false);
    assert_eq!(
        answer(&mut n, 1, vote_request(4, (9, 2), false)),
        vec![(NodeId(1), vote(4, false, false))]
    );
    assert_eq!(
        n.term(),
        Term(4),
        "the higher term is adopted even when the vote is refused"
    );
    assert_eq!(n.voted_for(), None);
    // Same last term and a log at least as long: granted, and persisted.
    assert_eq!(
        answer(&mut n, 3, vote_request(4, (2, 3), false)),
        vec![(NodeId(3), vote(4, true, false))]
    );
    assert_eq!(
        n.log().hard_state(),
        HardState {
            current_term: Term(4),
            voted_for: Some(NodeId(3))
        }
    );
}

#[test]
fn one_vote_per_term() {
    let mut n = node(2, &[], 0, false);
    assert_eq!(
        answer(&mut n, 1, vote_request(1, (0, 0), false)),
        vec![(NodeId(1), vote(1, true, false))]
    );
    assert_eq!(
        answer(&mut n, 3, vote_request(1, (0, 0), false)),
        vec![(NodeId(3), vote(1, false, false))]
    );
    // A repeated request from the one it voted for is granted again (its answer may be lost).
    assert_eq!(
        answer(&mut n, 1, vote_request(1, (0, 0), false)),
        vec![(NodeId(1), vote(1, true, false))]
    );
}

#[test]
fn a_leader_that_learns_of_a_higher_term_steps_down() {
    let mut n = node(1, &[], 0, false);
    tick_until_it_speaks(&mut n);
    answer(&mut n, 2, vote(1, true, false));
    assert!(n.is_leader());
    let stale = AppendEntriesResponse {
        term: Term(5),
        in_reply_to: Term(1),
        result: Err(raft_log::message::Rejection {
            prev_log_index: LogIndex(0),
            conflict_term: None,
            conflict_index: LogIndex(0),
        }),
    };
    answer(&mut n, 3, Message::AppendEntriesResponse(stale));
    assert!(!n.is_leader());
    assert_eq!((n.term(), n.leader()), (Term(5), None));
}

#[test]
fn a_candidate_that_hears_from_a_leader_of_its_term_follows_it() {
    let mut n = node(1, &[], 0, false);
    tick_until_it_speaks(&mut n);
    let heartbeat = AppendEntries {
        term: Term(1),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![],
        leader_commit: LogIndex(0),
    };
    let sent = answer(&mut n, 2, Message::AppendEntries(heartbeat));
    assert_eq!(n.role(), Role::Follower);
    assert_eq!(n.leader(), Some(NodeId(2)));
    assert_eq!(sent, vec![(NodeId(2), accepted(1, 0))]);
}

#[test]
fn a_node_that_hears_from_its_leader_refuses_to_help_depose_it() {
    // Thesis §4.2.3: within an election timeout of the leader's last word, a vote request,
    // even of a higher term, is refused and the term left alone.
    let mut n = node(2, &[], 0, false);
    let heartbeat = AppendEntries {
        term: Term(1),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![],
        leader_commit: LogIndex(0),
    };
    answer(&mut n, 1, Message::AppendEntries(heartbeat));
    assert_eq!(
        answer(&mut n, 3, vote_request(7, (5, 5), false)),
        vec![(NodeId(3), vote(1, false, false))]
    );
    assert_eq!(n.term(), Term(1));
}

#[test]
fn a_node_outside_a_committed_configuration_is_refused_without_its_term_and_told_so() {
    // §4.2.2/§4.2.3: node 9 is in no configuration of this cluster (a node removed long
    // ago). Its term is not adopted, even by a node that follows no leader yet, since that
    // would depose the leader; the refusal says it was removed, so that it stops.
    let mut n = node(1, &[1], 1, false);
    let answers = answer(&mut n, 9, vote_request(5, (9, 9), false));
    let refused = Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(1),
        granted: false,
        pre_vote: false,
        removed_by: Some(LogIndex(0)),
    });
    assert_eq!(answers, vec![(NodeId(9), refused)]);
    assert_eq!(n.term(), Term(1));
}

/// Node 1, whose log holds the founding configuration {1, 2, 3} and then its own removal
/// (index 2), neither known to be committed.
fn left_out(pre_vote: bool) -> RaftNode<MemStorage> {
    let founders = Membership::voters(&members(3));
    with_configs(
        vec![founders.clone(), founders.without(NodeId(1))],
        pre_vote,
    )
}

/// Node 1, whose log holds `configs` at indexes 1, 2, ..., in term 1.
fn with_configs(configs: Vec<Membership>, pre_vote: bool) -> RaftNode<MemStorage> {
    let entries = configs
        .into_iter()
        .enumerate()
        .map(|(i, membership)| Entry {
            index: LogIndex(i as u64 + 1),
            term: Term(1),
            payload: Payload::Config(membership),
        })
        .collect();
    let hard = HardState {
        current_term: Term(1),
        voted_for: None,
    };
    let mut config = Config::new(NodeId(1), members(3), 1);
    config.pre_vote = pre_vote;
    config.membership_changes = true;
    RaftNode::new(config, MemStorage::with_entries(entries, hard))
}

#[test]
fn a_node_left_out_of_its_configuration_asks_for_pre_votes_even_with_pre_vote_off() {
    // §4.2.2: its removal has not committed as far as it knows, so it campaigns; but it
    // may well be gone for good, so it must not raise anyone's term unless a majority of
    // its configuration would elect it.
    let mut n = left_out(false);
    let sent = tick_until_it_speaks(&mut n);
    let request = Message::RequestVote(RequestVote {
        term: Term(2),
        last_log_index: LogIndex(2),
        last_log_term: Term(1),
        pre_vote: true,
        transfer: false,
        config_index: Some(LogIndex(2)),
    });
    assert_eq!(
        sent,
        vec![(NodeId(2), request.clone()), (NodeId(3), request)]
    );
    assert_eq!(n.term(), Term(1));
}

#[test]
fn a_node_left_out_stops_campaigning_only_when_told_of_a_configuration_as_recent_as_its_own() {
    let mut n = left_out(true);
    tick_until_it_speaks(&mut n);
    // A committed configuration older than its removal says nothing about the removal.
    answer(&mut n, 2, removed_by(1));
    tick_until_it_speaks(&mut n);
    answer(&mut n, 2, removed_by(2));
    assert_campaigns_no_more(&mut n);
}

/// A pre-vote refused by a voter whose committed configuration at `index` leaves the
/// candidate out.
fn removed_by(index: u64) -> Message {
    Message::RequestVoteResponse(RequestVoteResponse {
        term: Term(1),
        granted: false,
        pre_vote: true,
        removed_by: Some(LogIndex(index)),
    })
}

/// Ticks `n` through many election timeouts: it must stay a silent follower.
fn assert_campaigns_no_more(n: &mut RaftNode<MemStorage>) {
    for _ in 0..1_000 {
        let mut out = Outbox::default();
        n.tick(&mut out);
        assert!(out.messages.is_empty(), "it still campaigns");
    }
    assert_eq!(n.role(), Role::Follower);
}

#[test]
fn a_voter_that_missed_its_own_removal_stops_campaigning_when_told_it_committed() {
    // Node 1 was down while {2, 3} removed it at index 2: its log ends at the founding
    // configuration (index 1), which it is a voter of. A voter's committed configuration
    // older than that (index 0) says nothing; one at index 2 says it was removed.
    let mut n = with_configs(vec![Membership::voters(&members(3))], true);
    tick_until_it_speaks(&mut n);
    answer(&mut n, 2, removed_by(0));
    assert!(!status(&mut n).removed);
    tick_until_it_speaks(&mut n);
    answer(&mut n, 2, removed_by(2));
    assert_campaigns_no_more(&mut n);
    assert!(status(&mut n).removed);

    // A fixed configuration (index 0, in no log) that leaves a node out is another
    // `--peers`, not a removal: a voter of its own fixed configuration goes on.
    let mut fixed = node(1, &[], 0, true);
    tick_until_it_speaks(&mut fixed);
    answer(&mut fixed, 2, removed_by(0));
    tick_until_it_speaks(&mut fixed);
    assert!(!status(&mut fixed).removed);
}

/// What `status` says of `node`.
fn status(node: &mut RaftNode<MemStorage>) -> Status {
    let mut out = Outbox::default();
    node.request(RequestTag(1), Op::Status, &mut out);
    match out.replies.pop() {
        Some((_, Ok(Reply::Status(status)))) => *status,
        other => panic!("status answered {other:?}"),
    }
}

#[test]
fn a_voter_tells_a_candidate_it_was_removed_only_from_a_configuration_as_recent_as_its_own() {
    // Node 9 is outside this node's committed (fixed) configuration, index 0. With a more
    // recent configuration of its own, it may have been added since, as far as this node
    // can tell; and a request from an older version says nothing. Both get the usual
    // answer: here a vote, its log being the longer.
    for config_index in [Some(LogIndex(3)), None] {
        let mut n = node(1, &[1], 1, false);
        let request = RequestVote {
            term: Term(5),
            last_log_index: LogIndex(9),
            last_log_term: Term(9),
            pre_vote: false,
            transfer: false,
            config_index,
        };
        let answers = answer(&mut n, 9, Message::RequestVote(request));
        let granted = Message::RequestVoteResponse(RequestVoteResponse {
            term: Term(5),
            granted: true,
            pre_vote: false,
            removed_by: None,
        });
        assert_eq!(answers, vec![(NodeId(9), granted)], "{config_index:?}");
        assert_eq!(n.term(), Term(5));
    }
}

fn heartbeat(term: u64) -> Message {
    Message::AppendEntries(AppendEntries {
        term: Term(term),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries: vec![],
        leader_commit: LogIndex(0),
    })
}

#[test]
fn the_leader_s_timeout_now_starts_a_real_election_that_voters_help_despite_their_leader() {
    // Thesis §3.10: TimeoutNow has the effect of the election timer firing, with no
    // pre-vote round (the leader vouches for the target), and the vote request says so.
    let mut target = node(2, &[], 0, true);
    answer(&mut target, 1, heartbeat(1));
    let timeout_now = Message::TimeoutNow(TimeoutNow { term: Term(1) });
    assert_eq!(
        answer(&mut target, 3, timeout_now.clone()),
        vec![],
        "only the leader it follows can hand over"
    );
    let sent = answer(&mut target, 1, timeout_now);
    let Message::RequestVote(request) = sent[0].1 else {
        panic!("no campaign: {sent:?}");
    };
    assert_eq!(
        (request.term, request.pre_vote, request.transfer),
        (Term(2), false, true)
    );
    assert_eq!(target.role(), Role::Candidate);
    // A voter that still hears from leader 1 grants it (§4.2.3's check is set aside)...
    let mut voter = node(3, &[], 0, false);
    answer(&mut voter, 1, heartbeat(1));
    assert_eq!(
        answer(&mut voter, 2, Message::RequestVote(request)),
        vec![(NodeId(2), vote(2, true, false))]
    );
    // ... but not the election restriction (§5.4.1).
    let mut ahead = node(3, &[1], 1, false);
    answer(&mut ahead, 1, heartbeat(1));
    assert_eq!(
        answer(&mut ahead, 2, Message::RequestVote(request)),
        vec![(NodeId(2), vote(2, false, false))]
    );
}

#[test]
fn a_timeout_now_of_an_earlier_term_is_ignored() {
    let mut n = node(2, &[], 0, false);
    answer(&mut n, 1, heartbeat(1));
    answer(&mut n, 3, heartbeat(2));
    let stale = Message::TimeoutNow(TimeoutNow { term: Term(1) });
    assert_eq!(answer(&mut n, 1, stale), vec![]);
    assert_eq!((n.term(), n.role()), (Term(2), Role::Follower));
}

#[test]
fn the_only_voter_leads_from_its_first_tick() {
    // §5.2's election timeout waits for a leader's heartbeat; a node that is its cluster's
    // only voter and follows no one has none to wait for.
    for pre_vote in [true, false] {
        let mut config = Config::new(NodeId(1), members(1), 1);
        config.pre_vote = pre_vote;
        let mut n = RaftNode::new(config, MemStorage::default());
        n.tick(&mut Outbox::default());
        assert!(n.is_leader(), "pre-vote {pre_vote}");
        assert_eq!(n.term(), Term(1));
    }
    // One of three waits for its election timeout (at least `election_ticks`).
    let mut n = node(1, &[], 0, true);
    n.tick(&mut Outbox::default());
    assert_eq!(n.role(), Role::Follower);
}

#[test]
fn a_node_left_the_only_voter_by_its_leader_s_removal_keeps_following_it() {
    // Of {1, 2}, leader 1 removes itself: node 2 takes the configuration {2} before it
    // commits (§4.2.2), and must not elect itself while leader 1 still manages the change.
    let mut config = Config::new(NodeId(2), members(2), 1);
    config.membership_changes = true;
    let mut n = RaftNode::new(config, MemStorage::default());
    let only_2 = Membership::voters(&members(2).into_iter().filter(|(id, _)| id.0 == 2).collect());
    let removal = Message::AppendEntries(AppendEntries {
        term: Term(2),
        prev_log_index: LogIndex(1),
        prev_log_term: Term(1),
        entries: vec![Entry {
            index: LogIndex(2),
            term: Term(2),
            payload: Payload::Config(only_2),
        }],
        leader_commit: LogIndex(1),
    });
    assert_eq!(
        answer(&mut n, 1, removal),
        vec![(NodeId(1), accepted(2, 2))]
    );
    assert!(n.membership().is_voter(NodeId(2)) && !n.membership().contains(NodeId(1)));
    n.tick(&mut Outbox::default());
    assert_eq!(
        (n.role(), n.leader(), n.term()),
        (Role::Follower, Some(NodeId(1)), Term(2))
    );
}

#[test]
fn a_message_with_an_impossible_term_is_dropped_and_the_term_kept() {
    // Adopting u64::MAX would make the next campaign's term wrap to 0 (§5.1: terms only grow).
    let mut n = node(2, &[1], 1, false);
    for term in [Term::UNREACHABLE.0, u64::MAX] {
        let heartbeat = AppendEntries {
            term: Term(term),
            prev_log_index: LogIndex(1),
            prev_log_term: Term(1),
            entries: vec![],
            leader_commit: LogIndex(1),
        };
        assert_eq!(answer(&mut n, 1, Message::AppendEntries(heartbeat)), vec![]);
        assert_eq!(answer(&mut n, 3, vote_request(term, (9, 9), false)), vec![]);
        assert_eq!(n.term(), Term(1));
    }
}
