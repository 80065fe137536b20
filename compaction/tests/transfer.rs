//! The follower's side of InstallSnapshot, scripted chunk by chunk: only the chunk at the
//! expected offset is taken; duplicates, stale and out-of-order chunks are answered with the
//! offset wanted; the snapshot is finished off the node's task and installed at the next
//! tick, the leader told then; a transfer cut by a restart starts over; data that does not
//! decode is not installed.

use compaction::mem_store::MemSnapshots;
use compaction::state::write_state;
use kv_server::protocol::{Command, NodeId};
use kv_server::store::KvMap;
use raft_election::message::Message;
use raft_election::node::{Config, RaftNode};
use raft_log::apply::Machine;
use raft_log::membership::Membership;
use raft_log::message::AppendEntries;
use raft_log::snapshot::{
    InstallSnapshot, InstallSnapshotResponse, SnapshotMeta, Snapshots, Transfer,
};
use raft_log::storage::{MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::node::{Node, Outbox};
use replication_naive::sim::members;

type Follower = RaftNode<MemStorage, MemSnapshots>;

const LEADER: NodeId = NodeId(1);

fn follower(snapshots: MemSnapshots) -> Follower {
    let mut config = Config::new(NodeId(2), members(3), 1);
    config.snapshots = Some(Default::default());
    RaftNode::with_snapshots(config, MemStorage::new(), snapshots).unwrap()
}

fn meta() -> SnapshotMeta {
    SnapshotMeta {
        index: LogIndex(50),
        term: Term(2),
        members: Membership::voters(&members(3)),
    }
}

fn state() -> (KvMap, Vec<u8>) {
    let mut state = Machine::default();
    for i in 0..40 {
        let put = Command::Put {
            key: format!("key{i}"),
            value: format!("value{i}"),
        };
        state.apply(put, None, LogIndex(i + 1)).unwrap();
    }
    let mut data = Vec::new();
    write_state(&state, &mut data).unwrap();
    (state.map, data)
}

/// Sends the chunk `data[offset..offset + len]` in `term`; returns the follower's answer.
fn chunk(
    node: &mut Follower,
    term: u64,
    data: &[u8],
    offset: usize,
    len: usize,
) -> (Term, Transfer) {
    let end = (offset + len).min(data.len());
    let mut out = Outbox::default();
    node.step(
        LEADER,
        Message::InstallSnapshot(InstallSnapshot {
            term: Term(term),
            meta: meta(),
            offset: offset as u64,
            data: data[offset..end].to_vec(),
            done: end == data.len(),
        }),
        &mut out,
    );
    match out.messages.as_slice() {
        [(to, Message::InstallSnapshotResponse(resp))] => {
            assert_eq!((*to, resp.index), (LEADER, LogIndex(50)));
            (resp.term, resp.result)
        }
        other => panic!("expected one answer, got {other:?}"),
    }
}

/// Ticks the follower once; returns the answer about the snapshot it sends the leader then.
fn tick(node: &mut Follower) -> Option<InstallSnapshotResponse> {
    let mut out = Outbox::default();
    node.tick(&mut out);
    out.messages
        .into_iter()
        .find_map(|(to, message)| match message {
            Message::InstallSnapshotResponse(resp) => {
                assert_eq!(to, LEADER);
                Some(resp)
            }
            _ => None,
        })
}

/// Ticks the follower once and checks it tells the leader of `term` the snapshot is
/// installed.
fn installed_at_tick(node: &mut Follower, term: u64) {
    let answer = tick(node).expect("the leader is told at the next tick");
    assert_eq!(
        (answer.in_reply_to, answer.index, answer.result),
        (Term(term), LogIndex(50), Transfer::Installed)
    );
}

/// Sends the whole snapshot in one chunk in `term`: every byte is in, and it is installed
/// at the next tick.
fn whole_snapshot_installed(node: &mut Follower, term: u64, data: &[u8]) {
    let all = data.len() as u64;
    assert_eq!(
        chunk(node, term, data, 0, data.len()).1,
        Transfer::Next(all)
    );
    installed_at_tick(node, term);
}

#[test]
fn only_the_chunk_at_the_expected_offset_is_taken() {
    let (map, data) = state();
    let mut node = follower(MemSnapshots::new());
    assert_eq!(chunk(&mut node, 2, &data, 0, 100).1, Transfer::Next(100));
    // A duplicate of the first chunk, and one from further on (a gap): both ignored.
    assert_eq!(chunk(&mut node, 2, &data, 0, 100).1, Transfer::Next(100));
    assert_eq!(chunk(&mut node, 2, &data, 300, 100).1, Transfer::Next(100));
    let mut offset = 100;
    while offset + 100 < data.len() {
        assert_eq!(
            chunk(&mut node, 2, &data, offset, 100).1,
            Transfer::Next(offset as u64 + 100)
        );
        offset += 100;
    }
    // The last chunk: every byte is in, and the store finishes the snapshot.
    let all = data.len() as u64;
    assert_eq!(
        chunk(&mut node, 2, &data, offset, 100).1,
        Transfer::Next(all)
    );
    installed_at_tick(&mut node, 2);
    assert_eq!(node.state(), &map);
    assert_eq!(
        (node.last_applied(), node.commit_index()),
        (LogIndex(50), LogIndex(50))
    );
    assert_eq!(node.log().first_index(), LogIndex(51));
    assert_eq!(node.snapshots().latest(), Some(&meta()));
    // A late chunk of the same snapshot: it is already covered.
    assert_eq!(chunk(&mut node, 2, &data, 100, 100).1, Transfer::Installed);
}

#[test]
fn a_chunk_from_a_stale_term_is_refused_with_the_newer_term() {
    let (_, data) = state();
    let mut node = follower(MemSnapshots::new());
    assert_eq!(chunk(&mut node, 5, &data, 0, 100).1, Transfer::Next(100));
    assert_eq!(
        chunk(&mut node, 3, &data, 100, 100),
        (Term(5), Transfer::Next(0))
    );
    assert_eq!(chunk(&mut node, 5, &data, 100, 100).1, Transfer::Next(200));
}

#[test]
fn a_transfer_cut_by_a_restart_starts_over() {
    let (map, data) = state();
    let mut node = follower(MemSnapshots::new());
    assert_eq!(chunk(&mut node, 2, &data, 0, 100).1, Transfer::Next(100));
    let (_, snapshots) = node.into_parts();
    let mut node = follower(snapshots.after_crash());
    assert_eq!(chunk(&mut node, 2, &data, 100, 100).1, Transfer::Next(0));
    whole_snapshot_installed(&mut node, 2, &data);
    assert_eq!(node.state(), &map);
}

#[test]
fn until_the_store_has_finished_the_snapshot_nothing_is_installed_and_the_leader_waits() {
    let (map, data) = state();
    let all = data.len() as u64;
    let mut node = follower(MemSnapshots::new());
    assert_eq!(
        chunk(&mut node, 2, &data, 0, data.len()).1,
        Transfer::Next(all)
    );
    assert_eq!(
        node.last_applied(),
        LogIndex(0),
        "not installed before the tick"
    );
    assert_eq!(node.snapshots().latest(), None);
    // The last chunk again (the leader re-sends what is unanswered at a heartbeat), the
    // empty one after it, and another leader's first: the first two hear that every byte
    // is in, the third is told to start over later; none disturbs the snapshot.
    assert_eq!(
        chunk(&mut node, 2, &data, 0, data.len()).1,
        Transfer::Next(all)
    );
    assert_eq!(
        chunk(&mut node, 2, &data, data.len(), 0).1,
        Transfer::Next(all)
    );
    assert_eq!(chunk(&mut node, 3, &data, 0, 100).1, Transfer::Next(0));
    installed_at_tick(&mut node, 2);
    assert_eq!(node.state(), &map);
    assert_eq!(node.snapshots().latest(), Some(&meta()));
    assert_eq!(tick(&mut node), None, "the leader is told once");
}

#[test]
fn entries_committed_while_the_snapshot_finishes_are_not_rolled_back_by_it() {
    let (_, data) = state();
    let mut node = follower(MemSnapshots::new());
    chunk(&mut node, 2, &data, 0, data.len());
    // Meanwhile a leader of term 3 replicates and commits 60 entries of its own: past the
    // snapshot's index, 50.
    let entries = (1..=60)
        .map(|i| Entry {
            index: LogIndex(i),
            term: Term(3),
            payload: Payload::Command(Command::Put {
                key: format!("log{i}"),
                value: "v".into(),
            }),
        })
        .collect();
    let append = AppendEntries {
        term: Term(3),
        prev_log_index: LogIndex(0),
        prev_log_term: Term(0),
        entries,
        leader_commit: LogIndex(60),
    };
    node.step(
        NodeId(3),
        Message::AppendEntries(append),
        &mut Outbox::default(),
    );
    assert_eq!(node.last_applied(), LogIndex(60));
    // The finished snapshot is not installed over them, and the leader of the transfer
    // hears that the follower has what it covers.
    installed_at_tick(&mut node, 2);
    assert_eq!(node.last_applied(), LogIndex(60), "applied never goes back");
    assert_eq!(node.state().get("log60"), Some("v"));
    assert_eq!(
        node.state().get("key0"),
        None,
        "the snapshot's map was not restored"
    );
}

#[test]
fn a_crash_before_the_snapshot_is_finished_loses_the_transfer() {
    let (_, data) = state();
    let mut node = follower(MemSnapshots::new());
    chunk(&mut node, 2, &data, 0, data.len());
    let (_, snapshots) = node.into_parts();
    let mut node = follower(snapshots.after_crash());
    assert_eq!(node.snapshots().latest(), None);
    assert_eq!(tick(&mut node), None);
    assert_eq!(
        chunk(&mut node, 2, &data, data.len(), 0).1,
        Transfer::Next(0),
        "the leader starts over"
    );
}

#[test]
fn data_that_does_not_decode_is_not_installed() {
    let (_, mut data) = state();
    data.truncate(data.len() - 3);
    let mut node = follower(MemSnapshots::new());
    let all = data.len() as u64;
    assert_eq!(
        chunk(&mut node, 2, &data, 0, data.len()).1,
        Transfer::Next(all)
    );
    let answer = tick(&mut node).expect("the leader is told at the next tick");
    assert_eq!(answer.result, Transfer::Next(0), "start over");
    assert_eq!(node.last_applied(), LogIndex(0));
    assert!(node.state().is_empty());
    assert_eq!(node.snapshots().latest(), None);
}

#[test]
fn a_new_leaders_chunks_start_the_transfer_over() {
    // Two nodes' snapshots of one index hold the same state, not necessarily the same
    // bytes: a transfer is never continued from another leader's chunks.
    let (map, data) = state();
    let mut node = follower(MemSnapshots::new());
    assert_eq!(chunk(&mut node, 2, &data, 0, 100).1, Transfer::Next(100));
    assert_eq!(chunk(&mut node, 3, &data, 100, 100).1, Transfer::Next(0));
    whole_snapshot_installed(&mut node, 3, &data);
    assert_eq!(node.state(), &map);
}
