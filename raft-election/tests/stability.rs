//! Leadership that stays stable: pre-vote (thesis §9.6) and check-quorum (§6.2), each shown
//! beside the failure it prevents when switched off.

mod common;

use common::{TICK_MS, check_election_safety, cluster, cluster_with, stable_leader};
use kv_server::protocol::NodeId;
use replication_naive::sim::for_each_seed;

const ELECTION_MS: u64 = 20 * TICK_MS;

/// With pre-vote, a follower cut off for a long time never raises its term (its pre-votes
/// fail), so when it returns nobody's term moves and the leader stays.
#[test]
fn a_long_partitioned_node_rejoins_without_raising_any_term() {
    for_each_seed(100, |seed| {
        let mut sim = cluster(seed, 5);
        check_election_safety(&mut sim);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let leader = stable_leader(&sim).unwrap();
        let term = sim.node(leader).unwrap().term();
        let loner = sim.ids().into_iter().find(|&id| id != leader).unwrap();
        // Its own term when cut off: it may not have heard of the leader's term yet.
        let loner_term = sim.node(loner).unwrap().term();
        sim.isolate(loner);
        sim.run_for(100 * ELECTION_MS);
        assert_eq!(
            sim.node(loner).unwrap().term(),
            loner_term,
            "pre-votes do not raise the term"
        );
        sim.heal();
        sim.run_for(20 * ELECTION_MS);
        assert_eq!(
            stable_leader(&sim),
            Some(leader),
            "the returning node disturbed the leader"
        );
        assert!(
            sim.nodes().all(|n| n.term() == term),
            "a term moved when the node returned"
        );
        assert_eq!(sim.node(loner).unwrap().leader(), Some(leader));
    });
}

/// The failure pre-vote prevents: without it, the cut-off follower campaigns again and again,
/// each time in a higher term; on its return its term forces the healthy leader to step down
/// (it "bullies" its way into an election it may not even win).
#[test]
fn without_pre_vote_a_returning_node_forces_an_election() {
    let mut sim = cluster_with(7, 5, |c| {
        c.pre_vote = false;
        c.check_quorum = false;
    });
    assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
    let leader = stable_leader(&sim).unwrap();
    let term = sim.node(leader).unwrap().term();
    let loner = sim.ids().into_iter().find(|&id| id != leader).unwrap();
    sim.isolate(loner);
    sim.run_for(100 * ELECTION_MS);
    assert!(
        sim.node(loner).unwrap().term() > term,
        "it campaigned alone, term after term"
    );
    sim.heal();
    assert!(
        sim.run_until(20 * ELECTION_MS, |sim| sim.node(leader).unwrap().term()
            > term)
    );
}

/// With check-quorum, a leader cut off from the majority steps down within one election
/// timeout: it stops taking writes it could never commit.
#[test]
fn an_isolated_leader_steps_down_within_an_election_timeout() {
    for_each_seed(100, |seed| {
        let mut sim = cluster(seed, 3);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let leader = stable_leader(&sim).unwrap();
        sim.isolate(leader);
        let isolated_at = sim.now();
        assert!(sim.run_until(2 * ELECTION_MS, |sim| {
            !sim.node(leader).unwrap().is_leader()
        }));
        let took = sim.now() - isolated_at;
        assert!(
            took <= ELECTION_MS + TICK_MS,
            "stepped down after {took} ms (seed {seed})"
        );
    });
}

/// The failure check-quorum prevents: without it, the cut-off leader goes on believing it
/// leads (and on answering as a leader) while the others have elected another.
#[test]
fn without_check_quorum_an_isolated_leader_lingers() {
    let mut sim = cluster_with(9, 3, |c| c.check_quorum = false);
    assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
    let leader = stable_leader(&sim).unwrap();
    sim.isolate(leader);
    sim.run_for(50 * ELECTION_MS);
    assert!(
        sim.node(leader).unwrap().is_leader(),
        "it still believes it leads"
    );
    let others: Vec<NodeId> = sim.ids().into_iter().filter(|&id| id != leader).collect();
    assert!(
        others.iter().any(|&id| sim.node(id).unwrap().is_leader()),
        "and the others elected a new leader"
    );
}
