//! The deterministic cluster simulator: whole clusters of any [`Node`] in one thread, with a
//! seeded network.
//!
//! Time is simulated milliseconds. Each node ticks every `tick_ms` (with a random phase, so
//! nodes are not in lockstep); each message is delivered after a random delay, and may be
//! dropped or duplicated, as [`NetConfig`] says. Tests partition, heal, crash and restart
//! nodes between steps. Everything random comes from one generator seeded with the test's
//! seed, so a failing run replays exactly: [`for_each_seed`] prints the seed on failure and
//! runs only that seed when `LIMECACHED_SEED` is set.
//!
//! A crash drops the node (its volatile state) and every message addressed to it; a restart
//! builds a new node with the factory, which receives the crashed node so it can carry over
//! whatever that node's kind keeps durably (nothing, before stage 6).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use kv_server::protocol::{NodeId, Op, Outcome};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::node::{Node, Outbox, RequestTag};
use crate::sync_gate::SyncGate;

/// How the simulated network behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetConfig {
    /// Shortest delivery delay, in ms.
    pub min_delay: u64,
    /// Longest delivery delay, in ms; a spread between the two reorders messages.
    pub max_delay: u64,
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
}

impl NetConfig {
    /// No loss, no duplicates; delays of 1-5 ms, so some reordering.
    pub fn reliable() -> Self {
        NetConfig {
            min_delay: 1,
            max_delay: 5,
            drop: 0.0,
            duplicate: 0.0,
        }
    }

    /// 10% loss, 5% duplicates, delays of 1-40 ms: heavy reordering.
    pub fn unreliable() -> Self {
        NetConfig {
            min_delay: 1,
            max_delay: 40,
            drop: 0.1,
            duplicate: 0.05,
        }
    }
}

enum Event<M> {
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    Deliver {
        from: NodeId,
        to: NodeId,
        message: M,
    },
    /// The sync a node started has finished.
    Synced {
        node: NodeId,
        incarnation: u64,
        result: std::io::Result<()>,
    },
}

/// The longest a node's sync takes, in simulated ms: long enough that a node takes more
/// inputs while one runs, as it does with a real fsync.
const MAX_SYNC_MS: u64 = 3;

struct Slot<N, M> {
    /// The running node; `None` while crashed.
    node: Option<N>,
    /// A crashed node, kept (not running) so that a restart can hand it to the factory,
    /// which takes from it what that kind of node keeps durably.
    remains: Option<N>,
    /// Bumped on every restart, so the ticks and syncs of an earlier life are ignored.
    incarnation: u64,
    /// The messages waiting for the node's sync.
    gate: SyncGate<M>,
    /// How long the node's syncs take, if set ([`Sim::set_sync_ms`]); else 0 to
    /// [`MAX_SYNC_MS`] at random.
    sync_ms: Option<u64>,
}

type Factory<N> = Box<dyn FnMut(NodeId, Option<N>) -> N>;
type Check<N> = Box<dyn FnMut(&Sim<N>)>;

/// A simulated cluster of nodes of kind `N`.
pub struct Sim<N: Node> {
    seed: u64,
    rng: StdRng,
    now: u64,
    tick_ms: u64,
    next_event: u64,
    events: BTreeMap<(u64, u64), Event<N::Message>>,
    slots: BTreeMap<NodeId, Slot<N, N::Message>>,
    factory: Factory<N>,
    net: NetConfig,
    cut: HashSet<(NodeId, NodeId)>,
    next_tag: u64,
    replies: HashMap<RequestTag, Outcome>,
    check: Option<Check<N>>,
    delivered: u64,
}

impl<N: Node> Sim<N> {
    /// A cluster of `ids`, each built by `factory(id, None)`, ticking every `tick_ms`, on a
    /// reliable network.
    pub fn new(
        seed: u64,
        ids: impl IntoIterator<Item = NodeId>,
        tick_ms: u64,
        factory: impl FnMut(NodeId, Option<N>) -> N + 'static,
    ) -> Sim<N> {
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            now: 0,
            tick_ms: tick_ms.max(1),
            next_event: 0,
            events: BTreeMap::new(),
            slots: BTreeMap::new(),
            factory: Box::new(factory),
            net: NetConfig::reliable(),
            cut: HashSet::new(),
            next_tag: 0,
            replies: HashMap::new(),
            check: None,
            delivered: 0,
        };
        for id in ids {
            sim.add(id);
        }
        sim
    }

    /// Starts a new node `id`, built by `factory(id, None)` (a node that has never run). Does
    /// nothing if `id` is already in the cluster.
    pub fn add(&mut self, id: NodeId) {
        if self.slots.contains_key(&id) {
            return;
        }
        let node = (self.factory)(id, None);
        self.slots.insert(
            id,
            Slot {
                node: Some(node),
                remains: None,
                incarnation: 0,
                gate: SyncGate::default(),
                sync_ms: None,
            },
        );
        self.schedule_first_tick(id);
    }

    /// The seed this run was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated milliseconds since the start.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The run's random generator, for tests that pick random faults: drawing from it keeps
    /// the run replayable.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// Every node id, up or down.
    pub fn ids(&self) -> Vec<NodeId> {
        self.slots.keys().copied().collect()
    }

    /// The node `id`, unless it is crashed.
    pub fn node(&self, id: NodeId) -> Option<&N> {
        self.slots.get(&id)?.node.as_ref()
    }

    /// Every running node.
    pub fn nodes(&self) -> impl Iterator<Item = &N> {
        self.slots.values().filter_map(|slot| slot.node.as_ref())
    }

    /// How many messages have been delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// Changes how the network behaves from now on.
    pub fn set_net(&mut self, net: NetConfig) {
        self.net = net;
    }

    /// Runs `check` after every event from now on (and once right away): the place for
    /// invariants that must hold at every step.
    pub fn check_every_step(&mut self, check: impl FnMut(&Sim<N>) + 'static) {
        self.check = Some(Box::new(check));
        self.run_check();
    }

    /// Processes events for `ms` simulated milliseconds.
    pub fn run_for(&mut self, ms: u64) {
        let until = self.now + ms;
        while self.step_before(until) {}
        self.now = until;
    }

    /// Processes events until `done` holds (checked after each event) or `max_ms` pass.
    /// Returns whether `done` held.
    pub fn run_until(&mut self, max_ms: u64, mut done: impl FnMut(&Sim<N>) -> bool) -> bool {
        let until = self.now + max_ms;
        loop {
            if done(self) {
                return true;
            }
            if !self.step_before(until) {
                self.now = until;
                return done(self);
            }
        }
    }

    /// Sends a client request to node `id`; its answer, if any, appears under the returned
    /// tag in [`Sim::reply`]. A crashed node never answers.
    pub fn request(&mut self, id: NodeId, op: Op) -> RequestTag {
        self.call(id, |node, tag, out| node.request(tag, op, out))
    }

    /// Tells node `id` it is about to stop cleanly ([`Node::hand_off`]); the answer appears
    /// under the returned tag. The node keeps running: stopping it is [`Sim::crash`].
    pub fn hand_off(&mut self, id: NodeId) -> RequestTag {
        self.call(id, |node, tag, out| node.hand_off(tag, out))
    }

    fn call(
        &mut self,
        id: NodeId,
        input: impl FnOnce(&mut N, RequestTag, &mut Outbox<N::Message>),
    ) -> RequestTag {
        self.next_tag += 1;
        let tag = RequestTag(self.next_tag);
        let mut out = Outbox::default();
        if let Some(node) = self.slots.get_mut(&id).and_then(|slot| slot.node.as_mut()) {
            input(node, tag, &mut out);
            self.end_batch(id, out);
            self.run_check();
        }
        tag
    }

    /// The answer to request `tag`, once given.
    pub fn reply(&self, tag: RequestTag) -> Option<&Outcome> {
        self.replies.get(&tag)
    }

    /// Crashes node `id`: it stops, and messages to it are lost, as are those it held for a
    /// sync that had not finished. What it keeps durably is handed to the factory when it
    /// restarts; the rest is gone.
    pub fn crash(&mut self, id: NodeId) {
        if let Some(slot) = self.slots.get_mut(&id) {
            if let Some(node) = slot.node.take() {
                slot.remains = Some(node);
            }
            slot.gate = SyncGate::default();
        }
    }

    /// Restarts node `id` (crashing it first if it is up) through the factory, which gets the
    /// old node so it can keep what that kind of node keeps durably.
    pub fn restart(&mut self, id: NodeId) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let old = slot.node.take().or_else(|| slot.remains.take());
        slot.incarnation += 1;
        slot.gate = SyncGate::default();
        slot.node = Some((self.factory)(id, old));
        self.schedule_first_tick(id);
        self.run_check();
    }

    /// How many times node `id` has been restarted: per-node invariants that only hold within
    /// one life of a node (a commit index never going back) compare values of the same
    /// incarnation.
    pub fn incarnation(&self, id: NodeId) -> u64 {
        self.slots.get(&id).map_or(0, |slot| slot.incarnation)
    }

    /// Makes node `id`'s syncs take `ms` from now on (across restarts): a slow disk, for
    /// tests of what must wait for it.
    pub fn set_sync_ms(&mut self, id: NodeId, ms: u64) {
        if let Some(slot) = self.slots.get_mut(&id) {
            slot.sync_ms = Some(ms);
        }
    }

    /// Whether node `id` is running.
    pub fn is_up(&self, id: NodeId) -> bool {
        self.node(id).is_some()
    }

    /// Cuts every link between different groups: messages sent across a cut are lost, and so
    /// are those in flight when it is made. Links inside a group, and to nodes in no group,
    /// are left as they are.
    pub fn partition(&mut self, groups: &[&[NodeId]]) {
        for (i, a) in groups.iter().enumerate() {
            for b in groups.iter().skip(i + 1) {
                for &x in a.iter() {
                    for &y in b.iter() {
                        self.cut.insert((x, y));
                        self.cut.insert((y, x));
                    }
                }
            }
        }
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&mut self, id: NodeId) {
        let others: Vec<NodeId> = self.ids().into_iter().filter(|&o| o != id).collect();
        self.partition(&[&[id], &others]);
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Whether messages from `from` reach `to`.
    pub fn connected(&self, from: NodeId, to: NodeId) -> bool {
        !self.cut.contains(&(from, to))
    }

    fn schedule_first_tick(&mut self, id: NodeId) {
        let phase = self.rng.gen_range(0..self.tick_ms);
        let incarnation = self.slots[&id].incarnation;
        self.schedule(
            self.now + phase,
            Event::Tick {
                node: id,
                incarnation,
            },
        );
    }

    fn schedule(&mut self, at: u64, event: Event<N::Message>) {
        self.next_event += 1;
        self.events.insert((at, self.next_event), event);
    }

    /// Processes the next event if it is due before `until`.
    fn step_before(&mut self, until: u64) -> bool {
        let Some(entry) = self.events.first_entry() else {
            return false;
        };
        let (at, _) = *entry.key();
        if at > until {
            return false;
        }
        let event = entry.remove();
        self.now = at;
        let mut out = Outbox::default();
        let source = match event {
            Event::Tick {
                node: id,
                incarnation,
            } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return true;
                };
                if slot.incarnation != incarnation {
                    return true;
                }
                let Some(node) = slot.node.as_mut() else {
                    return true;
                };
                node.tick(&mut out);
                self.schedule(
                    at + self.tick_ms,
                    Event::Tick {
                        node: id,
                        incarnation,
                    },
                );
                id
            }
            Event::Deliver { from, to, message } => {
                if !self.connected(from, to) {
                    return true;
                }
                let Some(node) = self.slots.get_mut(&to).and_then(|slot| slot.node.as_mut()) else {
                    return true;
                };
                self.delivered += 1;
                node.step(from, message, &mut out);
                to
            }
            Event::Synced {
                node: id,
                incarnation,
                result,
            } => {
                let Some(slot) = self.slots.get_mut(&id) else {
                    return true;
                };
                let Some(node) = slot.node.as_mut() else {
                    return true;
                };
                if slot.incarnation != incarnation {
                    return true;
                }
                node.synced(result, &mut out);
                let mut covered = Outbox::default();
                slot.gate.finished(|to, message| covered.send(to, message));
                self.dispatch(id, covered);
                id
            }
        };
        self.end_batch(source, out);
        self.run_check();
        true
    }

    /// Ends a batch of inputs to node `id` as the driver does: the node flushes, the
    /// messages that may leave go on the network, the others wait in the node's
    /// [`SyncGate`], and a sync starts if none is running. It finishes (an
    /// [`Event::Synced`]) up to [`MAX_SYNC_MS`] later.
    fn end_batch(&mut self, id: NodeId, mut out: Outbox<N::Message>) {
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        let Some(node) = slot.node.as_mut() else {
            return;
        };
        node.flush(&mut out);
        let (mut sent, mut job) = (Vec::new(), None);
        slot.gate.after_batch(
            node,
            out.messages.drain(..),
            |to, message| sent.push((to, message)),
            |started| job = Some(started),
        );
        out.messages = sent;
        let (incarnation, sync_ms) = (slot.incarnation, slot.sync_ms);
        if let Some(job) = job {
            let result = job();
            let at = self.now + sync_ms.unwrap_or_else(|| self.rng.gen_range(0..=MAX_SYNC_MS));
            self.schedule(
                at,
                Event::Synced {
                    node: id,
                    incarnation,
                    result,
                },
            );
        }
        self.dispatch(id, out);
    }

    /// Puts a node's outbox on the network and records its replies.
    fn dispatch(&mut self, from: NodeId, out: Outbox<N::Message>) {
        for (to, message) in out.messages {
            // Lost if sent across a cut, even should the cut heal before it would arrive.
            if !self.connected(from, to) || self.rng.gen_bool(self.net.drop) {
                continue;
            }
            if self.rng.gen_bool(self.net.duplicate) {
                let delay = self.rng.gen_range(self.net.min_delay..=self.net.max_delay);
                self.schedule(
                    self.now + delay,
                    Event::Deliver {
                        from,
                        to,
                        message: message.clone(),
                    },
                );
            }
            let delay = self.rng.gen_range(self.net.min_delay..=self.net.max_delay);
            self.schedule(self.now + delay, Event::Deliver { from, to, message });
        }
        self.replies.extend(out.replies);
    }

    fn run_check(&mut self) {
        if let Some(mut check) = self.check.take() {
            check(self);
            self.check = Some(check);
        }
    }
}

/// Members `1..=n` with made-up loopback addresses: a simulated cluster never dials them,
/// but nodes hand them out (as `not_leader` hints, in `status`), so tests can check them.
pub fn members(n: u64) -> BTreeMap<NodeId, String> {
    (1..=n)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
        .collect()
}

/// Runs `test` once per seed in `0..count`, or only for `LIMECACHED_SEED` when that is set.
/// `LIMECACHED_SEEDS=N` runs `N` seeds instead of `count`, for longer soak runs. When a run
/// fails, prints its seed and how to replay it, then fails the test.
pub fn for_each_seed(count: u64, test: impl Fn(u64)) {
    if let Ok(seed) = std::env::var("LIMECACHED_SEED") {
        let seed = seed.parse().expect("LIMECACHED_SEED must be a number");
        eprintln!("replaying seed {seed}");
        test(seed);
        return;
    }
    let count = std::env::var("LIMECACHED_SEEDS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(count);
    for seed in 0..count {
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| test(seed))) {
            eprintln!("\n*** failed with seed {seed}; replay it with LIMECACHED_SEED={seed}\n");
            resume_unwind(panic);
        }
    }
}
