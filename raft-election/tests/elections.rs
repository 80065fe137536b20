//! Elections in the simulator (§5.2): one leader emerges and stays; a lost leader is
//! replaced; the old one rejoins as a follower and loses what it could not commit. Election
//! safety is checked after every event of every run.

mod common;

use common::{TICK_MS, check_election_safety, cluster, leaders, stable_leader};
use kv_server::protocol::{ErrorCode, NodeId, Op, Reply, Role};
use raft_log::storage::Storage;
use raft_log::types::{LogIndex, Term};
use rand::Rng;
use replication_naive::sim::{NetConfig, Sim, for_each_seed};

/// The base election timeout of the default configuration, in simulated ms.
const ELECTION_MS: u64 = 20 * TICK_MS;

#[test]
fn one_leader_emerges_and_no_further_election_happens_in_a_long_quiet_stretch() {
    for_each_seed(200, |seed| {
        let mut sim = cluster(seed, 5);
        check_election_safety(&mut sim);
        assert!(
            sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()),
            "no leader"
        );
        let leader = stable_leader(&sim).unwrap();
        let term = sim.node(leader).unwrap().term();
        // 200 heartbeat intervals (heartbeats every 50 ms) without faults.
        sim.run_for(200 * 50);
        assert_eq!(
            stable_leader(&sim),
            Some(leader),
            "leadership changed without a fault"
        );
        assert!(
            sim.nodes().all(|n| n.term() == term),
            "a term moved in a quiet cluster"
        );
    });
}

#[test]
fn a_single_node_cluster_elects_itself() {
    let mut sim = cluster(1, 1);
    assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim)
        == Some(NodeId(1))));
    let tag = sim.request(NodeId(1), Op::put("k", "v"));
    assert!(sim.run_until(100, |sim| sim.reply(tag).is_some()));
}

#[test]
fn an_isolated_leader_is_replaced_and_rejoins_as_a_follower_losing_its_uncommitted_entries() {
    for_each_seed(200, |seed| {
        let mut sim = cluster(seed, 3);
        check_election_safety(&mut sim);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let old = stable_leader(&sim).unwrap();
        let first = sim.request(old, Op::put("committed", "1"));
        assert!(sim.run_until(1_000, |sim| sim.reply(first).is_some()));

        sim.isolate(old);
        // Accepted by the old leader, but it cannot commit it: no majority.
        let lost = sim.request(old, Op::put("uncommitted", "x"));
        assert!(
            sim.run_until(20 * ELECTION_MS, |sim| stable_leader(sim)
                .is_some_and(|l| l != old)),
            "the majority never elected a new leader"
        );
        let new = stable_leader(&sim).unwrap();
        let after = sim.request(new, Op::put("after", "2"));
        assert!(sim.run_until(1_000, |sim| sim.reply(after).is_some()));

        sim.heal();
        assert!(sim.run_until(20 * ELECTION_MS, |sim| {
            let n = sim.node(old).unwrap();
            !n.is_leader() && n.leader() == Some(new) && n.state().get("after") == Some("2")
        }));
        let old_node = sim.node(old).unwrap();
        assert_eq!(
            old_node.state().get("uncommitted"),
            None,
            "an uncommitted entry survived"
        );
        assert_eq!(old_node.state().get("committed"), Some("1"));
        assert!(
            matches!(sim.reply(lost), None | Some(Err(_))),
            "the lost write must not be acknowledged: {:?}",
            sim.reply(lost)
        );
        let lead = sim.node(new).unwrap().log();
        let old_log = sim.node(old).unwrap().log();
        let entries =
            |l: &raft_log::storage::MemStorage| l.entries(LogIndex(1), l.last_index(), usize::MAX);
        assert_eq!(
            entries(old_log)[..],
            entries(lead)[..entries(old_log).len()],
            "logs disagree"
        );
    });
}

#[test]
fn many_elections_a_leader_emerges_whenever_a_majority_is_connected() {
    // ManyElections: isolate random nodes, repeatedly; whenever at most two of seven are cut
    // off, a leader must emerge among the rest.
    for_each_seed(100, |seed| {
        let mut sim = cluster(seed, 7);
        check_election_safety(&mut sim);
        for _ in 0..8 {
            sim.heal();
            let cut: Vec<NodeId> = (0..2).map(|_| NodeId(sim.rng().gen_range(1..=7))).collect();
            for &id in &cut {
                sim.isolate(id);
            }
            let ok = sim.run_until(30 * ELECTION_MS, |sim| {
                stable_leader(sim).is_some_and(|l| !cut.contains(&l))
            });
            assert!(ok, "no leader among the connected majority (cut {cut:?})");
        }
    });
}

#[test]
fn candidates_answer_unavailable_and_followers_name_the_leader() {
    let mut sim = cluster(3, 3);
    assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
    let leader = stable_leader(&sim).unwrap();
    let follower = sim.ids().into_iter().find(|&id| id != leader).unwrap();
    let tag = sim.request(follower, Op::put("k", "v"));
    let failure = sim.reply(tag).unwrap().clone().unwrap_err();
    assert_eq!(failure.code, ErrorCode::NotLeader);
    assert_eq!(
        failure.leader,
        Some(format!("127.0.0.1:{}", 7000 + leader.0))
    );

    // Cut off, the follower eventually campaigns; while it does, writes get unavailable.
    sim.isolate(follower);
    assert!(sim.run_until(10 * ELECTION_MS, |sim| {
        sim.node(follower).unwrap().leader().is_none()
    }));
    let tag = sim.request(follower, Op::put("k", "v"));
    let code = sim.reply(tag).unwrap().as_ref().unwrap_err().code;
    assert!(
        matches!(code, ErrorCode::Unavailable | ErrorCode::NotLeader),
        "{code:?}"
    );
    let tag = sim.request(follower, Op::Status);
    assert!(matches!(sim.reply(tag), Some(Ok(Reply::Status(_)))));
}

#[test]
fn a_node_without_a_leader_for_long_says_a_majority_is_missing() {
    for_each_seed(20, |seed| {
        let mut sim = cluster(seed, 3);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| stable_leader(sim).is_some()));
        let leader = stable_leader(&sim).unwrap();
        let follower = sim.ids().into_iter().find(|&id| id != leader).unwrap();
        assert!(sim.run_until(10 * ELECTION_MS, |sim| {
            sim.node(follower).unwrap().leader() == Some(leader)
        }));
        sim.isolate(follower);
        assert!(sim.run_until(10 * ELECTION_MS, |sim| {
            sim.node(follower).unwrap().role() == Role::Candidate
        }));
        let message = |sim: &mut Sim<_>| {
            let tag = sim.request(follower, Op::put("k", "v"));
            let failure = sim.reply(tag).unwrap().clone().unwrap_err();
            assert_eq!(failure.code, ErrorCode::Unavailable);
            failure.message
        };
        assert_eq!(message(&mut sim), "an election is under way; retry shortly");

        // Five election timeouts later, it still has no leader, and says why.
        sim.run_for(5 * ELECTION_MS);
        assert!(sim.node(follower).unwrap().leader().is_none());
        let said = message(&mut sim);
        assert!(
            said.starts_with("no leader for 5 election timeouts"),
            "{said}"
        );
        assert!(said.contains("takes 2 of the 3 voters"), "{said}");
    });
}

#[test]
fn elections_survive_an_unreliable_network() {
    for_each_seed(100, |seed| {
        let mut sim = cluster(seed, 5);
        sim.set_net(NetConfig::unreliable());
        check_election_safety(&mut sim);
        assert!(
            sim.run_until(50 * ELECTION_MS, |sim| stable_leader(sim).is_some()),
            "no leader"
        );
        assert!(leaders(&sim).iter().all(|&(_, t)| t > Term(0)));
    });
}
