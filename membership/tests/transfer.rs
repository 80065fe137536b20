//! Leadership transfer (thesis §3.10) in the simulator: asked by a client, by a clean
//! shutdown and by the leader's own removal; to a lagging voter, to a dead one, under loss.
//! A transfer must hand over without waiting out an election timeout, never lose an
//! acknowledged write, and give up (the leader serving again) when the target cannot win.

mod common;

use common::{ELECTION_MS, Load, TICK_MS, a_follower, add, admin, remove, settled};
use kv_server::protocol::{ErrorCode, NodeId, Op, Outcome, Reply, WriteOutcome};
use raft_election::testkit::{assert_log_matching, stable_leader};
use raft_log::storage::Storage;
use raft_log::types::Term;
use replication_naive::sim::{NetConfig, for_each_seed};

/// Sends a transfer to `target` to the leader, and runs until it is answered: the answer
/// and how long it took, in simulated milliseconds.
fn transfer(sim: &mut common::Cluster, load: &mut Load, target: NodeId) -> (Outcome, u64) {
    let seed = sim.seed();
    let leader = stable_leader(sim).expect("a leader");
    let start = sim.now();
    let tag = sim.request(leader, Op::TransferLeader { id: target });
    let answered = load.run_until(sim, 10 * ELECTION_MS, |sim| sim.reply(tag).is_some());
    assert!(answered, "the transfer was never answered (seed {seed})");
    let outcome = sim.reply(tag).cloned().expect("answered");
    (outcome, sim.now() - start)
}

/// Stops `leader` cleanly: it must hand over within half an election timeout. The new
/// leader.
fn hand_off(sim: &mut common::Cluster, load: &mut Load, leader: NodeId) -> NodeId {
    let seed = sim.seed();
    let tag = sim.hand_off(leader);
    let answered = load.run_until(sim, ELECTION_MS / 2, |sim| sim.reply(tag).is_some());
    assert!(
        answered,
        "no handover within half an election timeout (seed {seed})"
    );
    assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
    let next = stable_leader(sim).expect("a new leader");
    assert_ne!(next, leader, "seed {seed}");
    next
}

#[test]
fn the_named_voter_takes_over_without_an_election_timeout() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let old = stable_leader(&sim).expect("a leader");
        let term = sim.node(old).expect("runs").term();
        let target = a_follower(&sim);
        let (outcome, took) = transfer(&mut sim, &mut load, target);
        assert_eq!(outcome, Ok(Reply::Done), "seed {seed}");
        assert!(
            took < ELECTION_MS / 2,
            "took {took} ms: the target waited for a timeout (seed {seed})"
        );
        assert_eq!(stable_leader(&sim), Some(target), "seed {seed}");
        assert_eq!(
            sim.node(target).expect("runs").term(),
            term.next(),
            "one election, no pre-vote round lost (seed {seed})"
        );
        load.run_for(&mut sim, 10 * ELECTION_MS);
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
    });
}

#[test]
fn a_lagging_target_is_brought_up_to_date_before_it_campaigns() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let target = a_follower(&sim);
        // Cut off while a few writes commit without it: fewer than the entries a snapshot
        // keeps (10), so it catches up from the log, within the transfer's time.
        sim.isolate(target);
        let writes: Vec<_> = (0..8)
            .map(|i| sim.request(leader, Op::put(&format!("missed {i}"), "v")))
            .collect();
        sim.run_until(ELECTION_MS, |sim| {
            writes.iter().all(|&w| sim.reply(w).is_some())
        });
        for w in writes {
            assert_eq!(
                sim.reply(w),
                Some(&Ok(Reply::Write(WriteOutcome::Put))),
                "seed {seed}"
            );
        }
        sim.heal();
        let log = |id| sim.node(id).expect("runs").log().last_index().0;
        assert!(log(leader) >= log(target) + 8, "seed {seed}");
        // Sent at once: the target's log is still behind when the transfer starts. A
        // TimeoutNow sent before it caught up would lose the election (§5.4.1) to the
        // third node, and the transfer would fail.
        let (outcome, _) = transfer(&mut sim, &mut load, target);
        assert_eq!(outcome, Ok(Reply::Done), "seed {seed}");
        assert_eq!(stable_leader(&sim), Some(target), "seed {seed}");
        load.assert_kept(&mut sim);
    });
}

#[test]
fn writes_are_refused_while_leadership_moves() {
    for_each_seed(20, |seed| {
        let (mut sim, _) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let target = a_follower(&sim);
        let moving = sim.request(leader, Op::TransferLeader { id: target });
        let write = sim.request(leader, Op::put("during", "the transfer"));
        let change = sim.request(leader, Op::RemoveMember { id: target });
        for tag in [write, change] {
            match sim.reply(tag) {
                Some(Err(f)) if f.code == ErrorCode::Unavailable => {
                    assert!(f.message.contains("moving"), "{} (seed {seed})", f.message);
                }
                other => panic!("{other:?}: not refused during the transfer (seed {seed})"),
            }
        }
        sim.run_until(10 * ELECTION_MS, |sim| sim.reply(moving).is_some());
        assert_eq!(sim.reply(moving), Some(&Ok(Reply::Done)), "seed {seed}");
        assert!(
            sim.nodes().all(|n| n.state().get("during").is_none()),
            "a refused write was applied (seed {seed})"
        );
    });
}

#[test]
fn a_transfer_to_a_dead_voter_is_given_up_and_the_leader_serves_again() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let term = sim.node(leader).expect("runs").term();
        let target = a_follower(&sim);
        sim.crash(target);
        load.run_for(&mut sim, ELECTION_MS / 10);
        let (outcome, took) = transfer(&mut sim, &mut load, target);
        assert_unavailable(outcome, "did not take over", seed);
        assert!(
            (ELECTION_MS - TICK_MS..2 * ELECTION_MS).contains(&took),
            "given up after {took} ms (seed {seed})"
        );
        assert_still_serves(&mut sim, &mut load, leader, term);
    });
}

/// That `outcome` is `unavailable`, saying `says`.
fn assert_unavailable(outcome: Outcome, says: &str, seed: u64) {
    match outcome {
        Err(f) if f.code == ErrorCode::Unavailable => {
            assert!(f.message.contains(says), "{} (seed {seed})", f.message);
        }
        other => panic!("{other:?} (seed {seed})"),
    }
}

/// After a transfer that did not happen: `leader` still leads, in `term`, takes writes,
/// and kept every acknowledged one.
fn assert_still_serves(sim: &mut common::Cluster, load: &mut Load, leader: NodeId, term: Term) {
    let seed = sim.seed();
    assert_eq!(
        stable_leader(sim),
        Some(leader),
        "leadership stayed (seed {seed})"
    );
    assert_eq!(sim.node(leader).expect("runs").term(), term, "seed {seed}");
    let write = admin(sim, load, Op::put("after", "no transfer"));
    assert_eq!(write, Ok(Reply::Write(WriteOutcome::Put)), "seed {seed}");
    load.assert_kept(sim);
}

#[test]
fn a_transfer_to_a_voter_not_heard_from_is_refused_at_once_and_stops_nothing() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let term = sim.node(leader).expect("runs").term();
        let target = a_follower(&sim);
        sim.crash(target);
        load.run_for(&mut sim, 2 * ELECTION_MS);
        let (outcome, took) = transfer(&mut sim, &mut load, target);
        assert_unavailable(outcome, "has not answered", seed);
        assert_eq!(took, 0, "refused at once (seed {seed})");
        // No handover was started: a write is not refused at once.
        let tag = sim.request(leader, Op::put("during", "refusal"));
        assert_eq!(sim.reply(tag), None, "seed {seed}");
        assert_still_serves(&mut sim, &mut load, leader, term);
    });
}

#[test]
fn a_new_leader_refuses_a_transfer_to_a_voter_that_died_before_its_election() {
    // A new leader used to count every voter as heard at its election, so in its first
    // election timeout a transfer to a dead voter stopped writes for an election timeout.
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 5);
        let old = stable_leader(&sim).expect("a leader");
        let target = a_follower(&sim);
        sim.crash(target);
        sim.crash(old);
        let elected = load.run_until(&mut sim, 10 * ELECTION_MS, |sim| {
            stable_leader(sim).is_some_and(|l| l != old)
        });
        assert!(elected, "no new leader (seed {seed})");
        let leader = stable_leader(&sim).expect("a leader");
        let term = sim.node(leader).expect("runs").term();
        let (outcome, took) = transfer(&mut sim, &mut load, target);
        assert_unavailable(outcome, "has not answered", seed);
        assert_eq!(took, 0, "refused at once (seed {seed})");
        assert_still_serves(&mut sim, &mut load, leader, term);
    });
}

#[test]
fn the_same_transfer_asked_again_hears_how_the_first_ends() {
    // A client that lost its connection asks again: before, it got "leadership is moving
    // to node N" for its own transfer.
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let target = a_follower(&sim);
        let first = sim.request(leader, Op::TransferLeader { id: target });
        let again = sim.request(leader, Op::TransferLeader { id: target });
        let answered = load.run_until(&mut sim, 10 * ELECTION_MS, |sim| {
            sim.reply(first).is_some() && sim.reply(again).is_some()
        });
        assert!(answered, "seed {seed}");
        assert_eq!(sim.reply(first), Some(&Ok(Reply::Done)), "seed {seed}");
        assert_eq!(sim.reply(again), Some(&Ok(Reply::Done)), "seed {seed}");
        assert_eq!(stable_leader(&sim), Some(target), "seed {seed}");
    });
}

#[test]
fn a_transfer_to_a_learner_a_stranger_or_the_leader_itself() {
    let (mut sim, mut load) = settled(7, 3);
    let leader = stable_leader(&sim).expect("a leader");
    let (outcome, _) = transfer(&mut sim, &mut load, NodeId(9));
    let failure = outcome.expect_err("a stranger is refused");
    assert_eq!(failure.code, ErrorCode::BadRequest);
    assert!(
        failure.message.contains("not a voter"),
        "{}",
        failure.message
    );
    let (outcome, took) = transfer(&mut sim, &mut load, leader);
    assert_eq!(outcome, Ok(Reply::Done));
    assert_eq!(took, 0, "the leader already leads");
    let follower = a_follower(&sim);
    let tag = sim.request(follower, Op::TransferLeader { id: follower });
    match sim.reply(tag) {
        Some(Err(f)) if f.code == ErrorCode::NotLeader => {}
        other => panic!("a follower must point at the leader: {other:?}"),
    }
    // A learner: node 4, added while cut off, cannot catch up and stays a learner.
    sim.add(NodeId(4));
    sim.isolate(NodeId(4));
    let tag = sim.request(
        leader,
        Op::AddMember {
            id: NodeId(4),
            addr: common::addr(4),
        },
    );
    load.run_until(&mut sim, 10 * ELECTION_MS, |sim| sim.reply(tag).is_some());
    assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)));
    let (outcome, _) = transfer(&mut sim, &mut load, NodeId(4));
    assert_eq!(outcome.expect_err("refused").code, ErrorCode::BadRequest);
}

#[test]
fn a_removed_leader_hands_over_without_an_election_timeout() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let tag = sim.request(leader, Op::RemoveMember { id: leader });
        load.run_until(&mut sim, 10 * ELECTION_MS, |sim| sim.reply(tag).is_some());
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        // Committed: from here, without a handover, the others would wait out at least
        // an election timeout less a heartbeat interval before campaigning.
        let committed = sim.now();
        let elected = sim.run_until(ELECTION_MS, |sim| {
            stable_leader(sim).is_some_and(|l| l != leader)
        });
        assert!(elected, "no new leader (seed {seed})");
        let took = sim.now() - committed;
        assert!(
            took < ELECTION_MS / 2,
            "a new leader after {took} ms: no handover (seed {seed})"
        );
        assert!(!sim.node(leader).expect("runs").is_leader(), "seed {seed}");
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_clean_shutdown_hands_leadership_over_first() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let follower = a_follower(&sim);
        // A follower has nothing to hand over.
        let tag = sim.hand_off(follower);
        assert_eq!(sim.reply(tag), Some(&Ok(Reply::Done)), "seed {seed}");
        let next = hand_off(&mut sim, &mut load, leader);
        sim.crash(leader);
        load.run_for(&mut sim, 10 * ELECTION_MS);
        assert_eq!(
            stable_leader(&sim),
            Some(next),
            "no election after the stop (seed {seed})"
        );
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_clean_shutdown_hands_over_to_a_voter_that_answers_not_to_a_dead_one() {
    // In an idle cluster both followers' logs match the leader's; the dead one has the
    // lower id, which used to break the tie.
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let dead = a_follower(&sim);
        // Idle (no load): nothing new reaches the live follower either.
        sim.run_for(ELECTION_MS);
        sim.crash(dead);
        sim.run_for(2 * ELECTION_MS);
        let next = hand_off(&mut sim, &mut load, leader);
        assert_ne!(next, dead, "seed {seed}");
        load.assert_kept(&mut sim);
    });
}

#[test]
fn a_shutdown_during_a_client_s_transfer_waits_for_it() {
    for_each_seed(20, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        let leader = stable_leader(&sim).expect("a leader");
        let target = a_follower(&sim);
        // A client's transfer to a voter cut off behind a write: no TimeoutNow can go yet.
        sim.isolate(target);
        let write = sim.request(leader, Op::put("missed", "v"));
        sim.run_until(ELECTION_MS, |sim| sim.reply(write).is_some());
        let asked = sim.request(leader, Op::TransferLeader { id: target });
        sim.run_for(TICK_MS);
        // The node is told to stop meanwhile: it stops once the transfer ends, not at once
        // (the cluster would wait out an election timeout).
        let stopping = sim.hand_off(leader);
        sim.run_for(ELECTION_MS / 4);
        assert_eq!(sim.reply(stopping), None, "seed {seed}");
        sim.heal();
        let answered = load.run_until(&mut sim, 10 * ELECTION_MS, |sim| {
            sim.reply(asked).is_some() && sim.reply(stopping).is_some()
        });
        assert!(answered, "seed {seed}");
        assert_eq!(sim.reply(asked), Some(&Ok(Reply::Done)), "seed {seed}");
        assert_eq!(sim.reply(stopping), Some(&Ok(Reply::Done)), "seed {seed}");
        assert_eq!(stable_leader(&sim), Some(target), "seed {seed}");
    });
}

#[test]
fn transfers_under_loss_crashes_and_changes_keep_every_write() {
    for_each_seed(10, |seed| {
        let (mut sim, mut load) = settled(seed, 3);
        add(&mut sim, &mut load, 4);
        add(&mut sim, &mut load, 5);
        sim.set_net(NetConfig::unreliable());
        for round in 0..10u64 {
            let target = NodeId(1 + (seed + round) % 5);
            let tag = match stable_leader(&sim) {
                Some(leader) => sim.request(leader, Op::TransferLeader { id: target }),
                None => sim.request(target, Op::Status),
            };
            if round % 3 == 2 {
                // The target crashes in the middle of its transfer.
                load.run_for(&mut sim, (seed + round) % 20);
                sim.crash(target);
                load.run_for(&mut sim, 3 * ELECTION_MS);
                sim.restart(target);
            }
            load.run_until(&mut sim, 20 * ELECTION_MS, |sim| sim.reply(tag).is_some());
        }
        sim.set_net(NetConfig::reliable());
        remove(&mut sim, &mut load, 5);
        load.assert_kept(&mut sim);
        assert_log_matching(&sim);
    });
}
