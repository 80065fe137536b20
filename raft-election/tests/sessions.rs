//! Exactly-once writes (§8): a retried (client, seq) gets its first outcome, from the
//! leader that applied it or from the next one, and is not applied again.

mod common;

use common::*;
use kv_server::protocol::{CasOutcome, Command, Op, Outcome, Reply, Session, WriteOutcome};
use replication_naive::node::RequestTag;
use replication_naive::sim::for_each_seed;

fn cas(expected: &str, value: &str, seq: u64) -> Op {
    Op::Write {
        command: Command::Cas {
            key: "counter".into(),
            expected: Some(expected.into()),
            value: value.into(),
        },
        session: Some(Session {
            client: "c1".into(),
            seq,
        }),
    }
}

fn answer(sim: &mut Cluster, tag: RequestTag) -> Outcome {
    sim.run_until(5_000, |s| s.reply(tag).is_some());
    sim.reply(tag).cloned().expect("an answer")
}

fn leader(sim: &mut Cluster) -> kv_server::protocol::NodeId {
    assert!(sim.run_until(10_000, |s| stable_leader(s).is_some()));
    stable_leader(sim).expect("a leader")
}

const SWAPPED: Outcome = Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Swapped)));

#[test]
fn a_retried_cas_gets_its_first_outcome_from_the_next_leader_and_is_not_applied_twice() {
    for_each_seed(10, |seed| {
        let mut sim = cluster(seed, 3);
        let first = leader(&mut sim);
        let put = sim.request(first, Op::put("counter", "0"));
        assert!(answer(&mut sim, put).is_ok(), "seed {seed}");
        let once = sim.request(first, cas("0", "1", 1));
        assert_eq!(answer(&mut sim, once), SWAPPED, "seed {seed}");

        // The client never saw that answer (say), and retries elsewhere after a crash.
        sim.crash(first);
        let second = leader(&mut sim);
        let retry = sim.request(second, cas("0", "1", 1));
        assert_eq!(
            answer(&mut sim, retry),
            SWAPPED,
            "seed {seed}: the first outcome"
        );
        // Without the session table, the retry would have found "1" and failed to swap.
        let next = sim.request(second, cas("1", "2", 2));
        assert_eq!(answer(&mut sim, next), SWAPPED, "seed {seed}");

        // A retry of the older write too (a client that pipelined both): its first
        // outcome, and nothing changes.
        let again = sim.request(second, cas("0", "1", 1));
        assert_eq!(answer(&mut sim, again), SWAPPED, "seed {seed}");
        sim.restart(first);
        sim.run_for(2_000);
        assert_same_state(&sim);
        let node = sim.node(second).expect("running");
        assert_eq!(node.state().get("counter"), Some("2"), "seed {seed}");
    });
}
