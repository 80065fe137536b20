//! Membership changes in the simulator, under a continuous write load: growing, shrinking,
//! replacing every node, removing the leader, changes across a partition, and a leader
//! crashing at every point of a change. Figure 3's properties (at most one leader per term,
//! across configurations) are checked after every event; every acknowledged write must be
//! on every member at the end.

mod common;

use std::cell::Cell;

use common::{
    ELECTION_MS, Load, TICK_MS, a_follower, add, admin, cluster, cluster_with, remove, settled,
    voters,
};
use kv_server::protocol::{Consistency, ErrorCode, NodeId, Op, Reply, Role, WriteOutcome};
use raft_election::testkit::{assert_log_matching, assert_same_state, stable_leader};
use raft_log::snapshot::Snapshots;
use raft_log::storage::Storage;
use replication_naive::node::{Node, RequestTag};
use replication_naive::sim::{NetConfig, for_each_seed};
use replication_naive::transport::ClusterId;

#[test]
fn grow_1_3_5_and_shrink_5_3_1_under_writes() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 1);
        for id in 2..=5 {
            add(&mut sim, &mut load, id);
            if id == 3 || id == 5 {
                assert_eq!(voters(&sim), (1..=id).collect::<Vec<_>>(), "seed {seed}");
                load.assert_kept(&mut sim);
            }
        }
        for id in (2..=5).rev() {
            remove(&mut sim, &mut load, id);
            sim.crash(NodeId(id));
            if id == 4 || id == 2 {
                assert_eq!(voters(&sim), (1..id).collect::<Vec<_>>(), "seed {seed}");
                load.assert_kept(&mut sim);
            }
        }
        assert!(
            load.acked.len() > 100,
            "too few writes: {}",
            load.acked.len()
        );
        assert_log_matching(&sim);
    });
}

#[test]
fn every_original_node_replaced_one_by_one() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let founded = cluster_of(&sim, 1);
        for old in 1..=3 {
            add(&mut sim, &mut load, old + 3);
            remove(&mut sim, &mut load, old);
            sim.crash(NodeId(old));
        }
        assert_eq!(voters(&sim), [4, 5, 6], "seed {seed}");
        // The new members learned the cluster they joined, from the log or a snapshot, and
        // every member records the change that made each one a member.
        for id in 4..=6 {
            assert_eq!(cluster_of(&sim, id), founded, "node {id}, seed {seed}");
        }
        let since = |id: u64| sim.node(NodeId(id)).expect("runs").membership().since();
        let added = since(4);
        assert!(
            added[&NodeId(4)] > 1 && added[&NodeId(4)] < added[&NodeId(5)],
            "seed {seed}: {added:?}"
        );
        assert!(
            added[&NodeId(5)] < added[&NodeId(6)],
            "seed {seed}: {added:?}"
        );
        for id in [5, 6] {
            let theirs = since(id);
            for member in 4..=6 {
                let member = NodeId(member);
                assert_eq!(theirs.get(&member), added.get(&member), "seed {seed}");
            }
        }
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
    });
}

fn cluster_of(sim: &common::Cluster, id: u64) -> ClusterId {
    sim.node(NodeId(id)).expect("the node runs").cluster()
}

/// Founders started with the same `--peers` name one cluster without talking; a lone
/// founder (`--bootstrap`) names its own, so two clusters founded at one address differ.
#[test]
fn founders_agree_on_their_cluster_and_lone_founders_do_not_collide() {
    let sim = cluster(1, 3);
    let founded = cluster_of(&sim, 1);
    assert!(!founded.is_unknown());
    assert_eq!([2, 3].map(|id| cluster_of(&sim, id)), [founded, founded]);
    let since = sim.node(NodeId(1)).expect("runs").membership().since();
    assert_eq!(since.into_values().collect::<Vec<_>>(), [1, 1, 1]);
    let lone = |seed| cluster_of(&cluster(seed, 1), 1);
    assert_ne!(lone(1), lone(2));
    assert!(!lone(1).is_unknown());
}

#[test]
fn the_leader_removes_itself_and_steps_down() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        remove(&mut sim, &mut load, leader.0);
        let new_leader = stable_leader(&sim).expect("a leader");
        assert_ne!(new_leader, leader, "seed {seed}");
        // The old leader keeps running, knows it is out, and never campaigns.
        let old = sim.node(leader).expect("still running");
        assert!(!old.is_leader() && !old.membership().contains(leader));
        assert_eq!(
            old.role(),
            Role::Follower,
            "not a learner: not a member at all"
        );
        assert!(says_removed(&mut sim, leader), "seed {seed}");
        // A write to it is sent elsewhere, to the members it knew at its removal.
        let write = sim.request(leader, Op::put("k", "v"));
        sim.run_for(TICK_MS);
        match sim.reply(write) {
            Some(Err(f)) if f.code == ErrorCode::NotLeader => assert!(
                f.message.contains("was removed")
                    && f.message.contains(&common::addr(new_leader.0)),
                "{} (seed {seed})",
                f.message
            ),
            other => panic!("{other:?} (seed {seed})"),
        }
        let term = sim.node(new_leader).expect("runs").term();
        load.run_for(&mut sim, 50 * ELECTION_MS);
        assert_eq!(stable_leader(&sim), Some(new_leader), "seed {seed}");
        assert_eq!(sim.node(new_leader).expect("runs").term(), term);
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_leader_that_removes_itself_answers_every_write_it_took() {
    // Once it has handed over, no one replicates to a removed leader: a write it took and
    // had not seen commit would wait for an outcome it can never learn (it used to, until
    // the client's request timeout, and then heard `timeout` for a write that was applied).
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let removal = sim.request(leader, Op::RemoveMember { id: leader });
        let mut writes = Vec::new();
        for i in 0..60 {
            let key = format!("to-the-removed-{i}");
            writes.push((sim.request(leader, Op::put(&key, "v")), key));
            sim.run_for(TICK_MS / 5);
        }
        load.run_until(&mut sim, 10 * ELECTION_MS, |sim| {
            sim.reply(removal).is_some() && writes.iter().all(|(t, _)| sim.reply(*t).is_some())
        });
        assert_eq!(sim.reply(removal), Some(&Ok(Reply::Done)), "seed {seed}");
        let unknown = answers_of_a_removed_leader(&sim, &mut load, &writes);
        assert_eq!(unknown, 0, "writes answered `timeout` (seed {seed})");
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_removed_leader_that_cannot_commit_its_last_writes_says_their_outcome_is_unknown() {
    // The leader removes itself with writes in flight to it, and a remaining voter is cut
    // off the moment the removal commits: the writes after it cannot commit, the leader
    // cannot hand over, and it steps down. Its clients hear `timeout` then, not after their
    // own wait runs out: no one will tell this node what became of their writes.
    let unknown = Cell::new(0);
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let other = a_follower(&sim);
        let removal = sim.request(leader, Op::RemoveMember { id: leader });
        let mut writes = Vec::new();
        while sim.reply(removal).is_none() && writes.len() < 1000 {
            let key = format!("to-the-removed-{}", writes.len());
            writes.push((sim.request(leader, Op::put(&key, "v")), key));
            sim.run_for(TICK_MS / 5);
        }
        assert_eq!(sim.reply(removal), Some(&Ok(Reply::Done)), "seed {seed}");
        sim.isolate(other);
        sim.run_until(3 * ELECTION_MS, |sim| {
            writes.iter().all(|(t, _)| sim.reply(*t).is_some())
        });
        unknown.set(unknown.get() + answers_of_a_removed_leader(&sim, &mut load, &writes));
        sim.heal();
        load.assert_kept(&mut sim);
    });
    assert!(
        unknown.get() > 0,
        "no seed left a write to answer as unknown"
    );
}

/// Checks the answers to `writes` (tag, key), puts of "v" sent to a leader that removed
/// itself: acknowledged ones are added to `load`'s, refusals changed nothing, and
/// `timeout`s, the unknown outcomes, are counted and returned. Anything else, or no answer,
/// fails the test.
fn answers_of_a_removed_leader(
    sim: &common::Cluster,
    load: &mut Load,
    writes: &[(RequestTag, String)],
) -> usize {
    let seed = sim.seed();
    let mut unknown = 0;
    for (tag, key) in writes {
        match sim.reply(*tag) {
            Some(Ok(Reply::Write(WriteOutcome::Put))) => {
                load.acked.insert(key.clone(), "v".to_owned());
            }
            Some(Err(f)) if f.code == ErrorCode::Timeout => unknown += 1,
            // Refused while it handed over, or after: nothing happened.
            Some(Err(f)) if matches!(f.code, ErrorCode::Unavailable | ErrorCode::NotLeader) => {}
            other => panic!("{key}, taken by the removed leader: {other:?} (seed {seed})"),
        }
    }
    unknown
}

#[test]
fn a_follower_being_removed_answers_the_clients_it_relayed_for() {
    // An operator's walk-through: clients of a follower being removed waited for their
    // request timeout (5 s), and heard `timeout` for writes that had been applied. The
    // follower relays to the leader; once its removal commits, no one replicates to it.
    for_each_seed(20, |seed| {
        let mut sim = cluster_with(seed, 3, |config| config.followers_relay = true);
        let mut load = Load::default();
        load.run_for(&mut sim, 10 * ELECTION_MS);
        let leader = stable_leader(&sim).expect("a leader");
        let follower = a_follower(&sim);
        let removal = sim.request(leader, Op::RemoveMember { id: follower });
        let mut asked = Vec::new();
        while sim.reply(removal).is_none() && asked.len() < 2000 {
            let key = format!("through-{}", asked.len());
            asked.push(sim.request(follower, Op::put(&key, "v")));
            asked.push(sim.request(follower, Op::get(&key)));
            sim.run_for(TICK_MS / 5);
        }
        assert_eq!(sim.reply(removal), Some(&Ok(Reply::Done)), "seed {seed}");
        load.run_until(&mut sim, 3 * ELECTION_MS, |sim| {
            asked.iter().all(|&t| sim.reply(t).is_some())
        });
        for tag in &asked {
            match sim.reply(*tag) {
                Some(Ok(_)) => {}
                Some(Err(f))
                    if matches!(
                        f.code,
                        ErrorCode::Unavailable | ErrorCode::NotLeader | ErrorCode::Timeout
                    ) => {}
                other => panic!("a request to the removed follower: {other:?} (seed {seed})"),
            }
        }
    });
}

#[test]
fn the_leader_of_two_removes_itself_and_answers_before_handing_over() {
    // Thesis §4.2.2: the leader manages its own removal until the change commits, answers
    // its client, and hands over. Here the node left is the only voter of the new
    // configuration from the moment it takes it (the core test
    // `a_node_left_the_only_voter_by_its_leader_s_removal_keeps_following_it` pins that it
    // does not elect itself then).
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 2);
        let leader = stable_leader(&sim).expect("a leader");
        let tag = sim.request(leader, Op::RemoveMember { id: leader });
        load.run_until(&mut sim, 20 * ELECTION_MS, |sim| sim.reply(tag).is_some());
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        let rest = NodeId(leader.0 % 2 + 1);
        assert!(
            load.run_until(&mut sim, 20 * ELECTION_MS, |sim| {
                stable_leader(sim) == Some(rest)
            }),
            "seed {seed}"
        );
        load.assert_kept(&mut sim);
    });
}

#[test]
fn the_leader_of_two_removes_itself_unheard_and_is_still_replaced() {
    // Thesis §4.2.2: a node left out of its latest configuration campaigns while that
    // configuration may not have committed. The leader of two removes itself while its
    // follower is cut off, and steps down (check-quorum: its new majority is the follower
    // alone). The follower, which never heard of the change, still needs the old leader's
    // vote, and the old leader's longer log refuses it: only the old leader can be elected,
    // to commit its removal and hand over. On odd seeds it also restarts meanwhile, and
    // forgets its commit index.
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 2);
        let leader = stable_leader(&sim).expect("a leader");
        let rest = NodeId(leader.0 % 2 + 1);
        sim.isolate(rest);
        let tag = sim.request(leader, Op::RemoveMember { id: leader });
        load.run_for(&mut sim, 3 * ELECTION_MS);
        assert_eq!(sim.reply(tag), None, "seed {seed}");
        assert!(!sim.node(leader).expect("runs").is_leader(), "seed {seed}");
        if seed % 2 == 1 {
            sim.crash(leader);
            sim.restart(leader);
        }
        sim.heal();
        assert!(
            load.run_until(&mut sim, 50 * ELECTION_MS, |sim| {
                stable_leader(sim) == Some(rest)
                    && sim
                        .node(rest)
                        .is_some_and(|n| n.membership().voter_ids().count() == 1)
            }),
            "no leader after the heal (seed {seed})"
        );
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_removed_leader_that_restarts_stops_campaigning_once_told_its_removal_committed() {
    // Restarted the moment its removal commits, it has lost its commit index and cannot
    // tell that the removal committed, so it campaigns (§4.2.2); no leader replicates to
    // it any more, and the voters it asks tell it instead. The cluster's term never moves,
    // with pre-vote off too (odd seeds), and with a follower restarted meanwhile (it is
    // seldom asked before it hears the leader again; `core.rs` pins that a node left out
    // of its configuration asks for pre-votes only).
    for_each_seed(20, |seed| {
        let mut sim = if seed % 2 == 1 {
            cluster_with(seed, 3, |config| config.pre_vote = false)
        } else {
            cluster(seed, 3)
        };
        let mut load = Load::default();
        load.run_for(&mut sim, 10 * ELECTION_MS);
        let removed = stable_leader(&sim).expect("a leader");
        let tag = sim.request(removed, Op::RemoveMember { id: removed });
        load.run_until(&mut sim, 20 * ELECTION_MS, |sim| sim.reply(tag).is_some());
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        sim.crash(removed);
        sim.restart(removed);
        let leader_ran = load.run_until(&mut sim, 20 * ELECTION_MS, |sim| {
            stable_leader(sim).is_some_and(|l| l != removed)
        });
        assert!(leader_ran, "seed {seed}");
        let leader = stable_leader(&sim).expect("a leader");
        let term = sim.node(leader).expect("runs").term();
        let follower = NodeId(6 - removed.0 - leader.0);
        sim.crash(follower);
        sim.restart(follower);
        load.run_for(&mut sim, 5 * ELECTION_MS);
        let campaigned = load.run_until(&mut sim, 20 * ELECTION_MS, |sim| {
            sim.node(removed)
                .is_some_and(|n| n.role() == Role::Candidate)
        });
        assert!(!campaigned, "it still campaigns (seed {seed})");
        assert_eq!(stable_leader(&sim), Some(leader), "seed {seed}");
        assert_eq!(sim.node(leader).expect("runs").term(), term, "seed {seed}");
    });
}

#[test]
fn a_voter_that_missed_an_add_still_votes_for_the_added_node() {
    // A voter cut off while node 4 was added knows only the old configuration, committed,
    // without 4. It must not take 4 for a removed node: here the leader's peer (node 4,
    // unless 4 leads) alone has the latest entry, so only it can be elected, and it needs
    // that voter.
    let (runs, four_needed_the_lagger) = (Cell::new(0), Cell::new(0));
    for_each_seed(20, |seed| {
        runs.set(runs.get() + 1);
        let (mut sim, mut load) = settled(seed, 3);
        let first = stable_leader(&sim).expect("a leader");
        let lagger = NodeId(first.0 % 3 + 1);
        sim.isolate(lagger);
        add(&mut sim, &mut load, 4);
        let leader = stable_leader(&sim).expect("a leader");
        let peer = if leader == NodeId(4) {
            first
        } else {
            NodeId(4)
        };
        let third = [1, 2, 3, 4]
            .map(NodeId)
            .into_iter()
            .find(|id| ![leader, peer, lagger].contains(id))
            .expect("a fourth node");
        // Everything up to the promotion of 4 committed on the three: the third voter
        // knows 4 as a voter, so only the lagger's view is old (without this, the third
        // could lack the promotion and win with the lagger's vote alone, legitimately).
        let promoted = sim.node(leader).map(|n| n.log().last_index());
        let commit = |sim: &common::Cluster, id| sim.node(id).map(|n| n.commit_index());
        let known = sim.run_until(10 * ELECTION_MS, |sim| {
            commit(sim, third) >= promoted && commit(sim, peer) >= promoted
        });
        assert!(
            known,
            "the promotion of 4 never committed on all three (seed {seed})"
        );
        sim.partition(&[&[leader, peer], &[third], &[lagger]]);
        sim.request(leader, Op::put("latest", "only on two"));
        let last = |sim: &common::Cluster, id| sim.node(id).map(|n| n.log().last_index());
        let reached = sim.run_until(ELECTION_MS, |sim| {
            last(sim, peer) == last(sim, leader) && last(sim, peer) > last(sim, third)
        });
        assert!(
            reached,
            "the latest entry never reached the peer (seed {seed})"
        );
        sim.crash(leader);
        sim.heal();
        assert!(
            load.run_until(&mut sim, 30 * ELECTION_MS, |sim| stable_leader(sim)
                .is_some()),
            "no leader (seed {seed})"
        );
        assert_eq!(stable_leader(&sim), Some(peer), "seed {seed}");
        if peer == NodeId(4) {
            four_needed_the_lagger.set(four_needed_the_lagger.get() + 1);
        }
    });
    // Node 4 needs the lagger's vote only when it is the peer (not when it led).
    if runs.get() >= 10 {
        assert!(
            four_needed_the_lagger.get() > 0,
            "node 4 was never the peer"
        );
    }
}

#[test]
fn a_learner_that_never_answered_is_not_promoted() {
    // §4.2.1: a learner becomes a voter once it has caught up. While the log is short, one
    // that was never reached (node 2 is never started here: a mistyped address, say) is
    // within one AppendEntries of the leader's log, yet has not caught up at all; as a
    // voter it would leave the cluster without a majority.
    for_each_seed(10, |seed| {
        let mut sim = cluster(seed, 1);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let leader = stable_leader(&sim).expect("a leader");
        let op = Op::AddMember {
            id: NodeId(2),
            addr: common::addr(2),
        };
        let tag = sim.request(leader, op);
        assert!(sim.run_until(ELECTION_MS, |sim| sim.reply(tag).is_some()));
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        sim.run_for(5 * ELECTION_MS);
        let membership = sim.node(leader).expect("runs").membership();
        assert!(!membership.is_voter(NodeId(2)), "promoted (seed {seed})");
        let put = sim.request(leader, Op::put("k", "v"));
        assert!(sim.run_until(ELECTION_MS, |sim| sim.reply(put).is_some()));
        assert_eq!(
            sim.reply(put),
            Some(&Ok(Reply::Write(WriteOutcome::Put))),
            "seed {seed}"
        );
    });
}

#[test]
fn a_removed_node_that_missed_its_removal_does_not_disrupt_the_cluster() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let gone = NodeId(leader.0 % 3 + 1);
        // Cut off, it never hears that it was removed: it still thinks it is a voter, and
        // times out and campaigns (pre-vote) again and again.
        sim.isolate(gone);
        remove(&mut sim, &mut load, gone.0);
        load.run_for(&mut sim, 20 * ELECTION_MS);
        assert!(sim.node(gone).expect("runs").membership().is_voter(gone));
        assert!(!says_removed(&mut sim, gone), "seed {seed}");
        sim.heal();
        let leader = stable_leader(&sim).expect("a leader");
        let term = sim.node(leader).expect("runs").term();
        load.run_for(&mut sim, 50 * ELECTION_MS);
        assert_eq!(stable_leader(&sim), Some(leader), "seed {seed}");
        assert_eq!(
            sim.node(leader).expect("runs").term(),
            term,
            "the removed node forced a new term (seed {seed})"
        );
        load.assert_kept(&mut sim);
        // Its first pre-vote after the heal was answered with its removal: it knows, and
        // has stopped campaigning, though its own configuration still names it a voter.
        assert!(sim.node(gone).expect("runs").membership().is_voter(gone));
        assert!(says_removed(&mut sim, gone), "seed {seed}");
        assert_eq!(sim.node(gone).expect("runs").role(), Role::Follower);
        // Its state is out of date for good: it serves no stale read either.
        let stale = Op::Get {
            key: "k".into(),
            consistency: Consistency::Stale,
        };
        let tag = sim.request(gone, stale);
        match sim.reply(tag) {
            Some(Err(f)) if f.code == ErrorCode::Unavailable => {}
            other => panic!("a removed node answered a stale read with {other:?}"),
        }
    });
}

/// Whether node `id`'s `status` says it was removed.
fn says_removed(sim: &mut common::Cluster, id: NodeId) -> bool {
    let tag = sim.request(id, Op::Status);
    match sim.reply(tag) {
        Some(Ok(Reply::Status(status))) => status.removed,
        other => panic!("status answered {other:?}"),
    }
}

#[test]
fn a_node_is_added_while_a_partition_splits_the_cluster() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 5);
        let leader = stable_leader(&sim).expect("a leader").0;
        // The leader and one follower on one side; the other three, and the new node, on
        // the other: the old leader steps down (check-quorum), the majority side elects a
        // leader and adds node 6.
        let buddy = leader % 5 + 1;
        let rest: Vec<NodeId> = (1..=5)
            .filter(|&i| i != leader && i != buddy)
            .chain([6])
            .map(NodeId)
            .collect();
        sim.partition(&[&[NodeId(leader), NodeId(buddy)], &rest]);
        add(&mut sim, &mut load, 6);
        assert!(voters(&sim).contains(&6), "seed {seed}");
        sim.heal();
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
    });
}

#[test]
fn changes_survive_an_unreliable_network() {
    for_each_seed(10, |seed| {
        let mut sim = cluster(seed, 3);
        sim.set_net(NetConfig::unreliable());
        let mut load = Load::default();
        add(&mut sim, &mut load, 4);
        add(&mut sim, &mut load, 5);
        remove(&mut sim, &mut load, 1);
        sim.set_net(NetConfig::reliable());
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
    });
}

#[test]
fn the_leader_crashes_at_every_point_of_a_change() {
    // The add of node 4 takes its learner entry, replication (by snapshot: the log is
    // compacted), the promotion and their commits: a few hundred simulated milliseconds.
    // Crash the leader after each 5 ms of it, restart it later, and finish the change.
    for delay in (0..400).step_by(5) {
        let seed = delay;
        let mut sim = cluster(seed, 3);
        let mut load = Load::default();
        load.run_for(&mut sim, 20 * ELECTION_MS); // past the first snapshot
        sim.add(NodeId(4));
        let leader = stable_leader(&sim).expect("a leader");
        let tag = sim.request(
            leader,
            Op::AddMember {
                id: NodeId(4),
                addr: common::addr(4),
            },
        );
        load.run_for(&mut sim, delay);
        sim.crash(leader);
        load.run_for(&mut sim, 5 * ELECTION_MS);
        sim.restart(leader);
        if let Some(Err(f)) = sim.reply(tag) {
            assert!(
                matches!(f.code, ErrorCode::Timeout | ErrorCode::Unavailable),
                "{f:?} (delay {delay})"
            );
        }
        // Whatever state the change was left in, asking again completes it.
        add(&mut sim, &mut load, 4);
        assert_eq!(voters(&sim), [1, 2, 3, 4], "delay {delay}");
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
        assert_same_state(&sim);
    }
}

#[test]
fn a_second_change_while_one_is_in_progress_is_refused_and_changes_nothing() {
    let (mut sim, mut load) = settled(1, 3);
    // Node 4 is never started: it stays a learner that cannot catch up.
    let op = Op::AddMember {
        id: NodeId(4),
        addr: common::addr(4),
    };
    assert_eq!(admin(&mut sim, &mut load, op), Ok(Reply::Done));
    let leader = stable_leader(&sim).expect("a leader");
    let before = sim.node(leader).expect("runs").membership().clone();
    let tag = sim.request(leader, Op::RemoveMember { id: NodeId(2) });
    load.run_until(&mut sim, ELECTION_MS, |sim| sim.reply(tag).is_some());
    match sim.reply(tag) {
        Some(Err(f)) => {
            assert_eq!(f.code, ErrorCode::Unavailable);
            assert!(
                f.message.contains("node 4 is still catching up"),
                "{}",
                f.message
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(sim.node(leader).expect("runs").membership(), &before);
    // Giving up on the learner is allowed, and then the other change goes through.
    remove(&mut sim, &mut load, 4);
    remove(&mut sim, &mut load, 2);
    assert_eq!(voters(&sim), [1, 3]);
}

#[test]
fn bad_changes_are_refused_and_retries_are_harmless() {
    let (mut sim, mut load) = settled(2, 1);
    let remove_last = admin(&mut sim, &mut load, Op::RemoveMember { id: NodeId(1) });
    assert!(
        matches!(&remove_last, Err(f) if f.code == ErrorCode::BadRequest && f.message.contains("only voter")),
        "{remove_last:?}"
    );
    add(&mut sim, &mut load, 2);
    // The same add again is a no-op; the same id at another address is refused.
    let again = Op::AddMember {
        id: NodeId(2),
        addr: common::addr(2),
    };
    assert_eq!(admin(&mut sim, &mut load, again), Ok(Reply::Done));
    let moved = Op::AddMember {
        id: NodeId(2),
        addr: "127.0.0.1:9999".into(),
    };
    let moved = admin(&mut sim, &mut load, moved);
    assert!(
        matches!(&moved, Err(f) if f.code == ErrorCode::BadRequest && f.message.contains("already a member")),
        "{moved:?}"
    );
    // Another id at a member's address too: both would be one node to every peer.
    let shared = Op::AddMember {
        id: NodeId(3),
        addr: common::addr(2),
    };
    let shared = admin(&mut sim, &mut load, shared);
    assert!(
        matches!(&shared, Err(f) if f.code == ErrorCode::BadRequest && f.message.contains("node 2 is already a member at")),
        "{shared:?}"
    );
    // Removing a node that is not a member is a no-op.
    let absent = Op::RemoveMember { id: NodeId(9) };
    assert_eq!(admin(&mut sim, &mut load, absent), Ok(Reply::Done));
    assert_eq!(voters(&sim), [1, 2]);
}

#[test]
fn an_uncommitted_change_cut_from_the_log_is_undone() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let old = stable_leader(&sim).expect("a leader");
        // Cut off, the leader still takes the change (it has committed in its term) but can
        // never commit it; it is in force on that node alone.
        sim.isolate(old);
        let op = Op::AddMember {
            id: NodeId(4),
            addr: common::addr(4),
        };
        let tag = sim.request(old, op.clone());
        sim.run_for(ELECTION_MS / 4);
        assert!(
            sim.node(old)
                .expect("runs")
                .membership()
                .contains(NodeId(4))
        );
        // A retry finds the change in force, but not committed: not done yet.
        let retry = sim.request(old, op);
        sim.run_for(ELECTION_MS / 4);
        match sim.reply(retry) {
            Some(Err(f)) if f.code == ErrorCode::Unavailable => {
                assert!(f.message.contains("has not committed yet"), "{}", f.message)
            }
            other => panic!("a retry of an uncommitted add: {other:?} (seed {seed})"),
        }
        // The others elect a leader and write on; back, the old leader's log is cut back.
        load.run_for(&mut sim, 20 * ELECTION_MS);
        sim.heal();
        load.assert_kept(&mut sim);
        assert_ne!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        let leader = stable_leader(&sim).expect("a leader");
        let expected = sim.node(leader).expect("runs").membership().clone();
        assert!(!expected.contains(NodeId(4)), "seed {seed}");
        assert_eq!(
            sim.node(old).expect("runs").membership(),
            &expected,
            "the cut-back change is still in force on node {old} (seed {seed})"
        );
    });
}

#[test]
fn a_receiver_that_pauses_mid_snapshot_keeps_its_transfer() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let latest = |sim: &common::Cluster| {
            let snapshots = sim.node(leader).expect("runs").snapshots();
            snapshots.latest().map(|meta| meta.index)
        };
        sim.add(NodeId(4));
        let op = Op::AddMember {
            id: NodeId(4),
            addr: common::addr(4),
        };
        sim.request(leader, op);
        load.run_for(&mut sim, ELECTION_MS / 10);
        assert_eq!(
            sim.node(NodeId(4)).expect("runs").last_applied().0,
            0,
            "the snapshot is still on its way (seed {seed})"
        );
        // Silent for longer than an election timeout, with writes that would otherwise
        // trigger several snapshots: the leader keeps the one it is sending.
        let sending = latest(&sim);
        sim.isolate(NodeId(4));
        load.run_for(&mut sim, 3 * ELECTION_MS);
        assert_eq!(latest(&sim), sending, "seed {seed}");
        sim.heal();
        common::wait_for_voters(&mut sim, &mut load, |m| m.is_voter(NodeId(4)));
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_node_caught_up_by_a_snapshot_older_than_its_addition_never_says_it_was_removed() {
    // The leader's latest snapshot predates the entry that adds the node, so the first
    // configuration the node holds leaves it out: it has not joined yet. It used to report
    // `removed` and turn its clients away until the entries after the snapshot arrived.
    let left_out_seeds = Cell::new(0);
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        sim.add(NodeId(4));
        let op = Op::AddMember {
            id: NodeId(4),
            addr: common::addr(4),
        };
        sim.request(leader, op);
        let (mut left_out, mut said_removed) = (false, false);
        let added = load.run_until(&mut sim, 200 * ELECTION_MS, |sim| {
            let Some(node) = sim.node(NodeId(4)) else {
                return false;
            };
            let membership = node.membership();
            left_out |= membership.ids().next().is_some() && !membership.contains(NodeId(4));
            said_removed |= node.status().removed;
            membership.is_voter(NodeId(4))
        });
        assert!(added, "node 4 never became a voter (seed {seed})");
        assert!(!said_removed, "node 4 said it was removed (seed {seed})");
        left_out_seeds.set(left_out_seeds.get() + usize::from(left_out));
    });
    // The case the test is about happened: without it, it proves nothing.
    assert!(
        left_out_seeds.get() > 0,
        "no seed caught node 4 up by an older snapshot"
    );
}
