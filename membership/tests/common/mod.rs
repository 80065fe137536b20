//! Clusters whose membership changes, in the simulator, and a write load that runs through
//! the changes and remembers every acknowledged write.
#![allow(dead_code)] // each test file uses its own subset

use std::collections::BTreeMap;

use compaction::mem_store::MemSnapshots;
use kv_server::protocol::{ErrorCode, NodeId, Op, Outcome, Reply, WriteOutcome};
use raft_election::node::{Config, RaftNode, SnapshotPolicy};
use raft_election::testkit::{check_raft_properties, stable_leader};
use raft_log::storage::{MemStorage, Storage};
use replication_naive::node::RequestTag;
use replication_naive::sim::{Sim, members};

pub type Node = RaftNode<MemStorage, MemSnapshots>;
pub type Cluster = Sim<Node>;

/// Simulated milliseconds per tick, as the driver's default.
pub const TICK_MS: u64 = 10;
/// The default base election timeout, in simulated milliseconds.
pub const ELECTION_MS: u64 = 20 * TICK_MS;

/// Where node `id` listens (what `members` gives the initial nodes).
pub fn addr(id: u64) -> String {
    members(id)[&NodeId(id)].clone()
}

/// A cluster of voters `1..=initial`, with membership changes on and snapshots every 50
/// entries (so a new member often catches up by snapshot). A node added later with
/// [`Sim::add`] starts empty, knowing no members, as a node started with `--join` does.
/// The Figure 3 properties are checked after every event.
pub fn cluster(seed: u64, initial: u64) -> Cluster {
    cluster_with(seed, initial, |_| {})
}

/// A [`cluster`] whose nodes' configuration `tweak` changes.
pub fn cluster_with(seed: u64, initial: u64, tweak: fn(&mut Config)) -> Cluster {
    let factory = move |id: NodeId, old: Option<Node>| {
        let founders = if id.0 <= initial {
            members(initial)
        } else {
            BTreeMap::new()
        };
        let mut config = Config::new(id, founders, seed);
        config.membership_changes = true;
        config.snapshots = Some(SnapshotPolicy {
            entries: 50,
            state_percent: 0,
            keep: 10,
            chunk_bytes: 256,
            ..SnapshotPolicy::default()
        });
        tweak(&mut config);
        let (storage, snapshots) = old
            .map(|node| {
                let (storage, snapshots) = node.into_parts();
                (storage, snapshots.after_crash())
            })
            .unwrap_or_default();
        RaftNode::with_snapshots(config, storage, snapshots).expect("memory snapshots load")
    };
    let mut sim = Sim::new(seed, members(initial).into_keys(), TICK_MS, factory);
    check_raft_properties(&mut sim);
    sim
}

/// A [`cluster`] of `initial` voters that has run for ten election timeouts with writes
/// flowing: it has a leader, and a log long enough to have been snapshotted.
pub fn settled(seed: u64, initial: u64) -> (Cluster, Load) {
    let mut sim = cluster(seed, initial);
    let mut load = Load::default();
    load.run_for(&mut sim, 10 * ELECTION_MS);
    (sim, load)
}

/// Writes kept flowing while a test changes the cluster: a few puts in flight at a time,
/// each to the current leader, and every acknowledged one remembered.
#[derive(Default)]
pub struct Load {
    next: u64,
    in_flight: Vec<(RequestTag, String)>,
    /// Every write a client was told succeeded: key → value.
    pub acked: BTreeMap<String, String>,
}

impl Load {
    /// Runs the cluster for up to `max_ms` with writes flowing, until `done` holds.
    pub fn run_until(
        &mut self,
        sim: &mut Cluster,
        max_ms: u64,
        mut done: impl FnMut(&Cluster) -> bool,
    ) -> bool {
        let deadline = sim.now() + max_ms;
        while sim.now() < deadline {
            if done(sim) {
                return true;
            }
            self.step(sim);
            sim.run_for(TICK_MS / 2);
        }
        done(sim)
    }

    /// Runs the cluster for `ms` with writes flowing.
    pub fn run_for(&mut self, sim: &mut Cluster, ms: u64) {
        self.run_until(sim, ms, |_| false);
    }

    fn step(&mut self, sim: &mut Cluster) {
        let acked = &mut self.acked;
        self.in_flight.retain(|(tag, key)| match sim.reply(*tag) {
            None => true,
            Some(Ok(Reply::Write(WriteOutcome::Put))) => {
                acked.insert(key.clone(), format!("value of {key}"));
                false
            }
            // Refused, or of unknown outcome: not acknowledged, so not checked.
            Some(_) => false,
        });
        if self.in_flight.len() < 4 {
            if let Some(leader) = stable_leader(sim) {
                let key = format!("w{:05}", self.next);
                self.next += 1;
                let tag = sim.request(leader, Op::put(&key, &format!("value of {key}")));
                self.in_flight.push((tag, key));
            }
        }
    }

    /// Every acknowledged write is in the state of every running member of the leader's
    /// configuration, once they have applied the leader's commit index.
    pub fn assert_kept(&mut self, sim: &mut Cluster) {
        let seed = sim.seed();
        // A write through the current leader first: once it is acknowledged, the leader has
        // committed an entry of its own term, and with it every entry committed before.
        let barrier = admin(
            sim,
            self,
            Op::put("barrier", &format!("after {}", self.next)),
        );
        assert_eq!(barrier, Ok(Reply::Write(WriteOutcome::Put)), "seed {seed}");
        let caught_up = self.run_until(sim, 100 * ELECTION_MS, |sim| {
            stable_leader(sim).is_some_and(|leader| {
                let leader = sim.node(leader).expect("the leader runs");
                let commit = leader.commit_index();
                leader
                    .membership()
                    .ids()
                    .filter_map(|id| sim.node(id))
                    .all(|n| n.last_applied() >= commit)
            })
        });
        assert!(caught_up, "members never caught up (seed {seed})");
        let leader = stable_leader(sim).expect("a leader");
        for id in sim
            .node(leader)
            .expect("the leader runs")
            .membership()
            .ids()
        {
            let Some(node) = sim.node(id) else { continue };
            for (key, value) in &self.acked {
                assert_eq!(
                    node.state().get(key),
                    Some(value.as_str()),
                    "node {id} lost acknowledged write {key} (seed {seed})"
                );
            }
        }
    }
}

/// Sends `op` to the leader until it is answered with anything but "not the leader" or
/// "unavailable" (an election, or a change still in progress), writes flowing meanwhile.
pub fn admin(sim: &mut Cluster, load: &mut Load, op: Op) -> Outcome {
    let seed = sim.seed();
    let mut last = None;
    for _ in 0..100 {
        assert!(
            load.run_until(sim, 50 * ELECTION_MS, |sim| stable_leader(sim).is_some()),
            "no leader (seed {seed})"
        );
        let leader = stable_leader(sim).expect("a leader");
        let tag = sim.request(leader, op.clone());
        load.run_until(sim, 20 * ELECTION_MS, |sim| sim.reply(tag).is_some());
        match sim.reply(tag) {
            // Not the leader any more, an election, a change still in progress, or an
            // unknown outcome: add and remove are idempotent, so ask again.
            Some(Err(f))
                if matches!(
                    f.code,
                    ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout
                ) =>
            {
                last = Some(f.clone());
                load.run_for(sim, ELECTION_MS / 2);
            }
            Some(outcome) => return outcome.clone(),
            None => {}
        }
    }
    dump(sim);
    panic!("{op:?} never succeeded; last answer {last:?} (seed {seed})");
}

/// The voter with the lowest id that is not the leader.
pub fn a_follower(sim: &Cluster) -> NodeId {
    let leader = stable_leader(sim).expect("a leader");
    let members = sim.node(leader).expect("runs").membership();
    members
        .voter_ids()
        .find(|&id| id != leader)
        .expect("another voter")
}

/// Adds node `id` (starting it empty) and waits until the leader has made it a voter.
pub fn add(sim: &mut Cluster, load: &mut Load, id: u64) {
    sim.add(NodeId(id));
    let op = Op::AddMember {
        id: NodeId(id),
        addr: addr(id),
    };
    assert_eq!(admin(sim, load, op), Ok(Reply::Done));
    wait_for_voters(sim, load, |m| m.is_voter(NodeId(id)));
}

/// Removes node `id` and waits until the leader's configuration no longer has it.
pub fn remove(sim: &mut Cluster, load: &mut Load, id: u64) {
    let op = Op::RemoveMember { id: NodeId(id) };
    assert_eq!(admin(sim, load, op), Ok(Reply::Done));
    wait_for_voters(sim, load, |m| !m.contains(NodeId(id)));
}

/// Waits until a stable leader that is a voter (not one handing over after its own
/// removal) has a configuration that satisfies `ok`, with no learner pending.
pub fn wait_for_voters(
    sim: &mut Cluster,
    load: &mut Load,
    mut ok: impl FnMut(&raft_log::membership::Membership) -> bool,
) {
    let seed = sim.seed();
    let done = load.run_until(sim, 200 * ELECTION_MS, |sim| {
        stable_leader(sim)
            .and_then(|leader| Some((leader, sim.node(leader)?.membership())))
            .is_some_and(|(leader, m)| {
                m.is_voter(leader) && ok(m) && m.learner_ids().next().is_none()
            })
    });
    if !done {
        dump(sim);
    }
    assert!(done, "the configuration never got there (seed {seed})");
}

/// The voters of the stable leader's configuration.
pub fn voters(sim: &Cluster) -> Vec<u64> {
    let leader = stable_leader(sim).expect("a leader");
    sim.node(leader)
        .expect("the leader runs")
        .membership()
        .voter_ids()
        .map(|id| id.0)
        .collect()
}

/// Prints every running node's view, for a failing test.
pub fn dump(sim: &Cluster) {
    for id in sim.ids() {
        let Some(node) = sim.node(id) else { continue };
        eprintln!(
            "node {id}: {:?} term {} leader {:?} commit {} applied {} log {}..={} members {:?}",
            node.role(),
            node.term(),
            node.leader(),
            node.commit_index(),
            node.last_applied(),
            node.log().first_index(),
            node.log().last_index(),
            node.membership().to_members()
        );
    }
}
