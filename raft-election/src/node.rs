//! [`RaftNode`]: Raft with elections. Stage 3's log, replication and state machine, with
//! terms, roles, votes and timers around them (§5.1, §5.2, §5.4), pre-vote (thesis §9.6) and
//! check-quorum (thesis §6.2).

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::Arc;

use kv_server::protocol::{Consistency, Failure, NodeId, Op, Reply, Role, Status};
use kv_server::store::KvMap;
use raft_log::apply::{Applier, Machine};
use raft_log::log::RaftLog;
use raft_log::membership::Membership;
use raft_log::message::{AppendEntries, AppendEntriesResponse};
use raft_log::replication::{FollowerLogs, Occasion, Replication};
use raft_log::snapshot::{
    InstallSnapshot, InstallSnapshotResponse, NoSnapshots, SnapshotMeta, Snapshots, Transfer,
};
use raft_log::storage::{HardState, Storage};
use raft_log::types::{LogIndex, Payload, Term};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replication_naive::incarnation::Incarnations;
use replication_naive::node::{Node, Outbox, RequestTag, SyncJob};
use replication_naive::transport::ClusterId;
use tracing::{debug, info, warn};

use crate::configs::Configs;
use crate::message::{Message, RequestVote, RequestVoteResponse};

mod membership;
mod reads;
mod relay;
mod transfer;

use membership::Change;
use reads::Reads;
use relay::{Relay, Write};
use transfer::Handoff;

/// How a node is set up. Times are in ticks (the driver's tick is 10 ms by default).
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id.
    pub id: NodeId,
    /// The voting members, with their addresses. Fixed until stage 8; from then on
    /// (`membership_changes`) the founding members of a new cluster, which a node starting
    /// with an empty log writes as its first entry, and ignored once its log or snapshot
    /// holds a configuration. Empty for a node that joins an existing cluster: it learns
    /// the members from its leader.
    pub members: BTreeMap<NodeId, String>,
    /// Whether `add_member` and `remove_member` are served (stage 8 on); before, the members
    /// are fixed and such requests are refused.
    pub membership_changes: bool,
    /// The election timeout's base: a follower that hears from no leader for a random time in
    /// `[election_ticks, 2 × election_ticks)` campaigns (§5.2).
    pub election_ticks: u64,
    /// Ticks between a leader's heartbeats.
    pub heartbeat_ticks: u64,
    /// Most entries carried by one AppendEntries.
    pub max_entries_per_message: usize,
    /// Ask for pre-votes before campaigning (thesis §9.6).
    pub pre_vote: bool,
    /// A leader that has not heard from a majority within an election timeout steps down
    /// (thesis §6.2).
    pub check_quorum: bool,
    /// Seeds the randomized election timeouts and the number that tells this run's relayed
    /// batches from an earlier run's: the only randomness in the core. A node restarted
    /// with `followers_relay` needs a new seed (the command lines draw one per start).
    pub seed: u64,
    /// When to snapshot the state machine and compact the log (stage 7); `None` never does.
    pub snapshots: Option<SnapshotPolicy>,
    /// A follower that knows its leader takes writes and linearizable reads itself, and
    /// relays them to the leader over the peer link (limecached; `node/relay.rs`). Off, it
    /// answers them with `not_leader`.
    pub followers_relay: bool,
}

/// When a node snapshots its state and compacts its log, and how it sends snapshots (§7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotPolicy {
    /// Snapshot once this many entries have been applied since the last snapshot.
    pub entries: u64,
    /// ... or once the entries applied since then carry this many bytes (roughly), whichever
    /// comes first: a few large values must not grow the log unbounded either.
    pub bytes: u64,
    /// ... but only once the entries applied since then carry at least this percentage of
    /// the state's bytes. A snapshot writes the whole state, so without this floor a large
    /// state would be rewritten every `entries` writes: at a million keys and 10,000 entries,
    /// about a hundred bytes serialized per byte written. With it, snapshot work stays proportional
    /// to the write traffic (at most 100 / `state_percent` bytes per byte applied), and the
    /// log held in memory stays proportional to the state, as redis bounds its AOF rewrites.
    pub state_percent: u64,
    /// Entries kept in the log before the snapshot's index, so that a follower only a little
    /// behind catches up from the log rather than from a whole snapshot.
    pub keep: u64,
    /// Most snapshot bytes per InstallSnapshot chunk.
    pub chunk_bytes: usize,
}

impl Default for SnapshotPolicy {
    /// Every 100,000 entries (etcd's default) or 64 MiB once the log since the last
    /// snapshot carries 10% of the state's bytes, keeping 1,000 entries, in 1 MiB chunks.
    fn default() -> Self {
        SnapshotPolicy {
            entries: 100_000,
            bytes: 64 << 20,
            state_percent: 10,
            keep: 1_000,
            chunk_bytes: 1 << 20,
        }
    }
}

impl Config {
    /// A member of `members` (fixed) with the defaults: elections after 20-40 ticks of silence,
    /// heartbeats every 5 ticks (with 10 ms ticks: 200-400 ms and 50 ms), pre-vote and
    /// check-quorum on.
    pub fn new(id: NodeId, members: BTreeMap<NodeId, String>, seed: u64) -> Config {
        Config {
            id,
            members,
            election_ticks: 20,
            heartbeat_ticks: 5,
            max_entries_per_message: 256,
            pre_vote: true,
            check_quorum: true,
            seed,
            snapshots: None,
            membership_changes: false,
            followers_relay: false,
        }
    }
}

/// What this node is doing in its current term.
#[derive(Debug)]
enum Duty {
    Follower,
    /// Asking for pre-votes for `term + 1`, without having changed its term.
    PreCandidate {
        votes: BTreeSet<NodeId>,
    },
    Candidate {
        votes: BTreeSet<NodeId>,
    },
    Leader {
        replication: Replication,
        /// Ticks since this node became leader.
        ticks: u64,
        /// For each follower, the value of `ticks` when it last answered.
        last_heard: BTreeMap<NodeId, u64>,
        /// Snapshots being sent, by follower.
        transfers: BTreeMap<NodeId, Outgoing>,
        /// For each follower's run, the last batch of relayed writes appended this term.
        relayed: BTreeMap<(NodeId, u64), u64>,
        /// The commit index as of the last heartbeat or commit broadcast.
        commit_sent: LogIndex,
    },
}

/// Election timeouts of silence after which a leader stops deferring its snapshots for a
/// follower that is receiving one ([`RaftNode::sending_snapshot`]).
const SNAPSHOT_TRANSFER_PATIENCE: u64 = 10;

/// Election timeouts without a leader after which a node stops calling it "an election
/// under way" and says that a majority of the voters cannot be reached: a first election
/// with a split vote or two takes a few.
const LEADERLESS_TIMEOUTS: u64 = 5;

/// How a node campaigns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Campaign {
    /// A pre-vote round, which changes no one's term (thesis §9.6).
    PreVote,
    /// A real election (§5.2).
    Election,
    /// A real election the leader asked for with TimeoutNow (thesis §3.10).
    Transfer,
}

/// A snapshot on its way to a follower: the chunk at `offset` is the one in flight.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    index: LogIndex,
    offset: u64,
    /// The follower answered since the last heartbeat; if not, the chunk is sent again (it,
    /// or its answer, may have been lost).
    answered: bool,
}

/// A snapshot being received from the leader of `term`: `received` bytes of it so far.
/// Two nodes' snapshots of the same index hold the same state but not necessarily the same
/// bytes, so a transfer is one leader's: chunks from another term start it over.
#[derive(Debug)]
struct Incoming {
    meta: SnapshotMeta,
    term: Term,
    received: u64,
    /// Every chunk has arrived, from this leader: the store is making the snapshot durable
    /// and reading its state back, off the node's task ([`Snapshots::start_finish_receive`]).
    finishing: Option<NodeId>,
}

/// A Raft node with elections, keeping its log in `S` and, from stage 7, its snapshots in
/// `P`.
#[derive(Debug)]
pub struct RaftNode<S, P = NoSnapshots> {
    config: Config,
    log: RaftLog<S>,
    /// The configurations in the log; the latest is in force.
    configs: Configs,
    applier: Applier,
    snapshots: P,
    /// The snapshot being received from the leader.
    incoming: Option<Incoming>,
    /// `Applier::applied_bytes` when the last snapshot was started (the size trigger).
    applied_bytes_at_snapshot: u64,
    term: Term,
    voted_for: Option<NodeId>,
    duty: Duty,
    leader: Option<NodeId>,
    rng: StdRng,
    /// Ticks since the last election-timer reset (hearing from a leader, granting a vote,
    /// campaigning). A leader keeps it at 0: it is its own fresh leader.
    election_elapsed: u64,
    /// This round's randomized timeout, in `[election_ticks, 2 × election_ticks)`.
    election_timeout: u64,
    heartbeat_elapsed: u64,
    /// Ticks since this node last knew a leader (itself included): how long its elections
    /// have gone without one.
    leaderless_ticks: u64,
    /// Whether this stretch without a leader has been logged ([`RaftNode::majority_missing`]).
    leaderless_logged: bool,
    /// The leadership transfer under way, if any.
    handoff: Option<Handoff>,
    /// Linearizable reads being confirmed (leader) and waiting to be applied.
    reads: Reads,
    /// Writes and reads relayed to the leader (follower).
    relay: Relay,
    /// A voter said that a committed configuration at least as recent as this node's
    /// latest leaves it out (`RequestVoteResponse::removed_by`): it is not needed, and does
    /// not campaign until its configuration changes.
    removal_confirmed: bool,
    /// Whether a committed configuration (or, after a restart, any configuration it
    /// recovered) has included this node. Until then, a configuration that leaves it out
    /// means it has not joined yet, not that it was removed: a joining node caught up by a
    /// snapshot taken before the entry that added it first holds the older configuration.
    been_member: bool,
    /// [`RaftNode::set_incarnations`].
    incarnations: Option<Arc<Incarnations>>,
}

impl<S: Storage> RaftNode<S> {
    /// A node recovering its term, vote and log from `storage` (empty for a new node). It
    /// starts as a follower that knows no leader. It keeps no snapshots, so `storage` must
    /// never have been compacted.
    pub fn new(config: Config, storage: S) -> RaftNode<S> {
        assert!(
            config.snapshots.is_none(),
            "a node that takes snapshots needs somewhere to keep them"
        );
        match RaftNode::with_snapshots(config, storage, NoSnapshots) {
            Ok(node) => node,
            // NoSnapshots loads nothing; only a compacted log, whose snapshot is missing,
            // can fail.
            Err(error) => panic!("a node without snapshots given a compacted log: {error}"),
        }
    }

    /// Gives back the storage: what survives a crash.
    pub fn into_storage(self) -> S {
        self.log.into_storage()
    }
}

impl<S: Storage, P: Snapshots> RaftNode<S, P> {
    /// A node recovering from its newest snapshot in `snapshots` and the log after it in
    /// `storage`. Fails if the snapshot cannot be read (a damaged one is never loaded), or
    /// if the log was compacted past it (the entries between are lost).
    pub fn with_snapshots(config: Config, storage: S, mut snapshots: P) -> io::Result<Self> {
        assert!(
            config.election_ticks > config.heartbeat_ticks,
            "heartbeats must come more often than elections"
        );
        let log = RaftLog::new(storage);
        let HardState {
            current_term,
            voted_for,
        } = log.hard_state();
        let rng =
            StdRng::seed_from_u64(config.seed ^ config.id.0.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let run = config.seed.rotate_left(32) ^ config.id.0.wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let restored = snapshots.load_latest()?;
        // The log is compacted only once a snapshot covering what it drops is saved: a
        // newer compaction than the newest snapshot means that snapshot was lost (deleted,
        // or a partial restore of the directory), and with it the entries between.
        let snapshot_index = restored
            .as_ref()
            .map_or(LogIndex(0), |(meta, _)| meta.index);
        let compacted = LogIndex(log.storage().first_index().0.saturating_sub(1));
        if compacted > snapshot_index {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the log starts after entry {compacted}, but the newest snapshot ends at entry {snapshot_index}: the entries between are lost"
                ),
            ));
        }
        let fixed = if config.membership_changes {
            Membership::default()
        } else {
            Membership::voters(&config.members)
        };
        let configs = Configs::new(fixed);
        let mut node = RaftNode {
            config,
            log,
            configs,
            applier: Applier::new(),
            snapshots,
            incoming: None,
            applied_bytes_at_snapshot: 0,
            term: current_term,
            voted_for,
            duty: Duty::Follower,
            leader: None,
            rng,
            election_elapsed: 0,
            election_timeout: 0,
            heartbeat_elapsed: 0,
            leaderless_ticks: 0,
            leaderless_logged: false,
            handoff: None,
            reads: Reads::default(),
            relay: Relay::new(run),
            removal_confirmed: false,
            been_member: false,
            incarnations: None,
        };
        node.reset_election_timer();
        if let Some((meta, state)) = restored {
            // A crash may have come between saving a snapshot and compacting the log.
            node.log.install_snapshot(meta.index, meta.term);
            node.applier.restore(state, meta.index);
            node.configs
                .restored(meta.index, meta.members.clone(), &node.log);
            info!(id = %node.config.id, index = %meta.index, "restored from snapshot");
        }
        if node.config.membership_changes
            && node.log.last_index() == LogIndex(0)
            && !node.config.members.is_empty()
        {
            node.bootstrap();
        }
        let from = (node.configs.latest_index().next()).max(node.log.storage().first_index());
        let entries = node.log.entries(from, node.log.last_index(), usize::MAX);
        node.configs.appended(&entries);
        node.been_member = node.configs.any_contains(node.config.id);
        Ok(node)
    }

    /// A new cluster's first entry: its founding members, in term 1, the same entry on every
    /// founding node (so Log Matching holds), and committed by the first leader's no-op.
    /// The node starts in term 1 too: no leader of term 1 can exist, so this entry is the
    /// only one of its term.
    fn bootstrap(&mut self) {
        let salt = match self.config.members.len() {
            1 => self.rng.r#gen(),
            _ => 0,
        };
        let founders = Membership::founding(&self.config.members, salt);
        self.term = Term(1);
        self.save_hard_state();
        self.log.append_new(Term(1), Payload::Config(founders));
        self.log.sync();
        info!(id = %self.config.id, members = ?self.config.members.keys().collect::<Vec<_>>(), "new cluster bootstrapped");
    }

    /// Gives back the log's storage and the snapshots: what survives a crash.
    pub fn into_parts(self) -> (S, P) {
        (self.log.into_storage(), self.snapshots)
    }

    /// The snapshots.
    pub fn snapshots(&self) -> &P {
        &self.snapshots
    }

    /// The log's storage.
    pub fn log(&self) -> &S {
        self.log.storage()
    }

    /// Gives the node its data directory's incarnation and the members' it remembers
    /// ([`replication_naive::incarnation`]), for the runner's transport to say and check.
    /// Only with membership changes and a data directory; without, nothing is checked.
    pub fn set_incarnations(&mut self, incarnations: Arc<Incarnations>) {
        self.incarnations = Some(incarnations);
    }

    /// The current term.
    pub fn term(&self) -> Term {
        self.term
    }

    /// Whom this node voted for in the current term.
    pub fn voted_for(&self) -> Option<NodeId> {
        self.voted_for
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        match self.duty {
            Duty::Follower
                if self.membership().contains(self.config.id)
                    && !self.membership().is_voter(self.config.id) =>
            {
                Role::Learner
            }
            Duty::Follower => Role::Follower,
            Duty::PreCandidate { .. } | Duty::Candidate { .. } => Role::Candidate,
            Duty::Leader { .. } => Role::Leader,
        }
    }

    /// Whether this node is the leader.
    pub fn is_leader(&self) -> bool {
        matches!(self.duty, Duty::Leader { .. })
    }

    /// The leader this node knows of in its current term.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.log.commit_index()
    }

    /// The highest index applied to the key/value map.
    pub fn last_applied(&self) -> LogIndex {
        self.applier.last_applied()
    }

    /// The key/value map, as of `last_applied`.
    pub fn state(&self) -> &KvMap {
        self.applier.state()
    }

    fn addr(&self, id: NodeId) -> Option<String> {
        self.membership().addr(id).map(str::to_owned)
    }

    /// Every other member, voting or not.
    fn peers(&self) -> Vec<NodeId> {
        self.membership()
            .ids()
            .filter(|&id| id != self.config.id)
            .collect()
    }

    /// What this node answers a `status` request with.
    pub fn status(&self) -> Status {
        Status {
            id: Some(self.config.id),
            role: self.role(),
            term: Some(self.term.0),
            leader: self.leader,
            leader_addr: self.leader.and_then(|id| self.addr(id)),
            commit_index: Some(self.commit_index().0),
            last_applied: Some(self.last_applied().0),
            members: Some(self.membership().to_members()),
            removed: self.removed(),
        }
    }

    /// Whether this node knows that a committed configuration leaves it out: a voter told
    /// it so (`removal_confirmed`), or it applied its removal itself. (A node that has not
    /// been added yet has no configuration, or one from before it was added: `been_member`.)
    fn removed(&self) -> bool {
        let membership = self.membership();
        let applied_removal = self.been_member
            && !membership.contains(self.config.id)
            && self.configs.latest_index() <= self.commit_index();
        self.removal_confirmed || applied_removal
    }

    /// Why a node that is not the leader cannot take a write: that it was removed, or the
    /// leader's address when it knows one, or an election under way, or, once elections
    /// have gone on without a leader for [`LEADERLESS_TIMEOUTS`] election timeouts, that a
    /// majority is missing.
    fn not_leader(&self) -> Failure {
        if self.removed() {
            // It hears from no leader again: where to go instead is all it can say.
            let membership = self.membership();
            let members: Vec<&str> = membership
                .ids()
                .filter(|&id| id != self.config.id)
                .filter_map(|id| membership.addr(id))
                .collect();
            return Failure {
                message: format!(
                    "this node was removed from the cluster; send requests to its members (at its removal: {})",
                    members.join(", ")
                ),
                ..Failure::not_leader(None)
            };
        }
        match self.duty {
            Duty::PreCandidate { .. } | Duty::Candidate { .. } => Failure::unavailable(
                self.majority_missing()
                    .unwrap_or_else(|| "an election is under way; retry shortly".to_owned()),
            ),
            _ => Failure::not_leader(self.leader.and_then(|id| self.addr(id))),
        }
    }

    /// What a node campaigning without a leader for [`LEADERLESS_TIMEOUTS`] election
    /// timeouts or more says of it; `None` before that.
    fn majority_missing(&self) -> Option<String> {
        let timeouts = self.leaderless_ticks / self.config.election_ticks;
        if timeouts < LEADERLESS_TIMEOUTS {
            return None;
        }
        let membership = self.membership();
        Some(format!(
            "no leader for {timeouts} election timeouts: electing one takes {} of the {} \
             voters able to reach each other; check that they are running and connected",
            membership.majority(),
            membership.voter_ids().count()
        ))
    }

    /// Leader: appends `payload` to the log in the current term; `tag`, if any, is answered
    /// when it is applied. The caller sends it and advances the commit index.
    fn propose(
        &mut self,
        tag: Option<RequestTag>,
        payload: Payload,
        out: &mut Outbox<Message>,
    ) -> LogIndex {
        let index = self.log.append_new(self.term, payload);
        if let Some(tag) = tag {
            if let Some(displaced) = self.applier.wait(index, self.term, tag) {
                out.reply(displaced, Applier::displaced());
            }
        }
        index
    }

    /// A client's write: a leader proposes it (sent with the rest of the batch's writes, by
    /// `flush`), a follower that relays takes it to the leader, any other node says who
    /// can serve it.
    fn write(&mut self, write: Write, out: &mut Outbox<Message>) {
        if self.is_leader() {
            match self.handing_off() {
                Some(busy) => out.reply(write.tag, Err(busy)),
                None => {
                    let payload = Payload::write(write.command, write.session);
                    self.propose(Some(write.tag), payload, out);
                    self.advance_commit(out);
                }
            }
        } else if self.can_relay() {
            self.relay.write(write);
        } else {
            out.reply(write.tag, Err(self.not_leader()));
        }
    }

    /// Called after every input: answers the reads and relayed requests that can no longer
    /// be served where they wait.
    fn settle(&mut self, out: &mut Outbox<Message>) {
        if !self.been_member
            && self.membership().contains(self.config.id)
            && self.configs.latest_index() <= self.commit_index()
        {
            self.been_member = true;
        }
        self.settle_reads(out);
        self.settle_relay(out);
        if self.removed() && !self.is_leader() {
            self.left_cluster(out);
        }
    }

    /// A node whose removal has committed, and that no longer leads, hears of no entry
    /// again: the clients waiting for its entries are told now that their writes' outcome
    /// is unknown, and those waiting for it to apply a confirmed read index, or for the
    /// leader's answer to a relayed batch, that they should go elsewhere, rather than wait
    /// until their request times out.
    fn left_cluster(&mut self, out: &mut Outbox<Message>) {
        let unknown = Failure::timeout(
            "this node left the cluster before it learned whether the write committed; it may or may not take effect",
        );
        for tag in self.applier.abandon() {
            out.reply(tag, Err(unknown.clone()));
        }
        self.abandon_confirmed_reads(out);
        self.abandon_relay(out);
    }

    fn reset_election_timer(&mut self) {
        self.election_elapsed = 0;
        let base = self.config.election_ticks;
        self.election_timeout = self.rng.gen_range(base..2 * base);
    }

    /// Records the term and vote in storage. Every message that depends on them (a vote, a
    /// vote request) leaves only once a sync covers them: the driver's `SyncGate` holds it,
    /// as it holds everything [`Node::sends_before_sync`] does not let go.
    fn save_hard_state(&mut self) {
        self.log.save_hard_state(HardState {
            current_term: self.term,
            voted_for: self.voted_for,
        });
    }

    /// Adopts `term` (if newer) and follows `leader` (if known). §5.1: a node that sees a
    /// higher term updates its own and reverts to follower.
    fn become_follower(&mut self, term: Term, leader: Option<NodeId>) {
        if term > self.term {
            self.term = term;
            self.voted_for = None;
            self.save_hard_state();
        }
        let was = self.role();
        let leader_changed = self.leader != leader;
        self.duty = Duty::Follower;
        self.leader = leader;
        if leader.is_some() {
            self.leaderless_ticks = 0;
        }
        self.reset_election_timer();
        if was != Role::Follower || leader_changed {
            let leader = leader.map_or_else(|| "unknown".to_owned(), |l| l.to_string());
            info!(id = %self.config.id, term = %self.term, %leader, "follower");
        }
    }

    /// §5.1 for answers: one that carries a later term means this node is out of date. It
    /// adopts the term and steps down; the caller drops the answer.
    fn answered_from_later_term(&mut self, term: Term) -> bool {
        let later = term > self.term;
        if later {
            self.become_follower(term, None);
        }
        later
    }

    /// Steps down to follower in the current term, knowing no leader (and a node whose
    /// removal has committed answers its waiting clients, [`RaftNode::left_cluster`]).
    fn step_down(&mut self, out: &mut Outbox<Message>) {
        let term = self.term;
        self.become_follower(term, None);
        self.settle(out);
    }

    /// Starts an election: a pre-vote round (when enabled), then a real one (§5.2).
    fn campaign(&mut self, campaign: Campaign, out: &mut Outbox<Message>) {
        self.reset_election_timer();
        self.leader = None;
        let votes = BTreeSet::from([self.config.id]);
        let pre_vote = campaign == Campaign::PreVote;
        let term = if pre_vote {
            self.duty = Duty::PreCandidate { votes };
            debug!(id = %self.config.id, term = %self.term, "pre-candidate");
            self.term.next()
        } else {
            self.term = self.term.next();
            self.voted_for = Some(self.config.id);
            self.save_hard_state();
            self.duty = Duty::Candidate { votes };
            info!(id = %self.config.id, term = %self.term, "candidate");
            self.term
        };
        let request = RequestVote {
            term,
            last_log_index: self.log.last_index(),
            last_log_term: self.log.last_term(),
            pre_vote,
            transfer: campaign == Campaign::Transfer,
            config_index: Some(self.configs.latest_index()),
        };
        for peer in self.peers() {
            out.send(peer, Message::RequestVote(request));
        }
        // A cluster of one elects itself.
        self.count_votes(pre_vote, out);
    }

    fn count_votes(&mut self, pre_vote: bool, out: &mut Outbox<Message>) {
        let membership = self.configs.latest();
        // A candidate's own vote counts only once it is on disk: a crash before that would
        // take it back, and the node could be elected again in this term, with other
        // entries (§5.2). Other voters' answers leave only after that sync; a lone voter
        // waits for it here (`synced`).
        let me = self.config.id;
        let own_vote = HardState {
            current_term: self.term,
            voted_for: Some(me),
        };
        let own_vote_durable = pre_vote || self.log.storage().durable_hard_state() == own_vote;
        // Only the votes of voters in this node's configuration count (a learner, or a
        // node that has been removed, may still answer).
        let won = |votes: &BTreeSet<NodeId>| {
            let counted = votes
                .iter()
                .filter(|&&v| membership.is_voter(v) && (v != me || own_vote_durable));
            counted.count() >= membership.majority()
        };
        let won = match &self.duty {
            Duty::PreCandidate { votes } if pre_vote => won(votes),
            Duty::Candidate { votes } if !pre_vote => won(votes),
            _ => false,
        };
        if won && pre_vote {
            self.campaign(Campaign::Election, out);
        } else if won {
            self.become_leader(out);
        }
    }

    fn become_leader(&mut self, out: &mut Outbox<Message>) {
        let replication = Replication::new(
            self.peers(),
            self.log.last_index(),
            self.config.max_entries_per_message,
            FollowerLogs::Durable,
        );
        self.duty = Duty::Leader {
            replication,
            ticks: 0,
            last_heard: BTreeMap::new(),
            transfers: BTreeMap::new(),
            relayed: BTreeMap::new(),
            commit_sent: self.log.commit_index(),
        };
        self.leader = Some(self.config.id);
        self.leaderless_ticks = 0;
        self.election_elapsed = 0;
        self.heartbeat_elapsed = 0;
        info!(id = %self.config.id, term = %self.term, "leader");
        self.leader_elected(self.config.id, self.term, out);
        // §8: an entry of the new term, so that it, and every entry before it, can commit.
        self.log.append_new(self.term, Payload::Noop);
        self.broadcast(false, out);
        self.advance_commit(out);
    }

    /// Whether this node heard from a leader within the base election timeout: then it
    /// refuses to help anyone unseat that leader (thesis §4.2.3 and §9.6). A leader counts
    /// itself.
    fn leader_is_fresh(&self) -> bool {
        self.leader.is_some() && self.election_elapsed < self.config.election_ticks
    }

    fn on_request_vote(&mut self, from: NodeId, req: RequestVote, out: &mut Outbox<Message>) {
        // A candidate that this node's committed configuration, at least as recent as the
        // candidate's own, leaves out was removed, and is not needed (§4.2.2): its term is
        // not adopted, which would depose the leader, and it is told to stop.
        let committed = self.configs.latest_index();
        let removed_by = (!self.membership().contains(from)
            && committed <= self.commit_index()
            && req.config_index.is_some_and(|index| committed >= index))
        .then_some(committed);
        let refuse = |term| RequestVoteResponse {
            term,
            granted: false,
            pre_vote: req.pre_vote,
            removed_by,
        };
        if req.term < self.term || removed_by.is_some() {
            out.send(from, Message::RequestVoteResponse(refuse(self.term)));
            return;
        }
        if self.leader_is_fresh() && self.leader != Some(from) && !req.transfer {
            // Ignored, term included: a node that was cut off, or restarted, must not depose
            // a leader that a majority still hears from (unless that leader asked for it).
            debug!(%from, term = %req.term, "vote refused: the current leader is alive");
            out.send(from, Message::RequestVoteResponse(refuse(self.term)));
            return;
        }
        // §5.4.1 election restriction: vote only for a candidate whose log is at least as
        // up to date as ours (later last term, or same last term and at least as long).
        let up_to_date = (req.last_log_term, req.last_log_index)
            >= (self.log.last_term(), self.log.last_index());
        if req.pre_vote {
            // A pre-vote changes nothing here: no term, no vote, no timer.
            let granted = req.term > self.term && up_to_date;
            let term = if granted { req.term } else { self.term };
            out.send(
                from,
                Message::RequestVoteResponse(RequestVoteResponse {
                    term,
                    granted,
                    pre_vote: true,
                    removed_by,
                }),
            );
            return;
        }
        if req.term > self.term {
            self.become_follower(req.term, None);
        }
        let granted = up_to_date && self.voted_for.is_none_or(|v| v == from);
        if granted {
            self.voted_for = Some(from);
            self.save_hard_state();
            self.reset_election_timer();
        }
        out.send(
            from,
            Message::RequestVoteResponse(RequestVoteResponse {
                term: self.term,
                granted,
                pre_vote: false,
                removed_by,
            }),
        );
    }

    fn on_vote_response(
        &mut self,
        from: NodeId,
        resp: RequestVoteResponse,
        out: &mut Outbox<Message>,
    ) {
        // Checked against this node's configuration now, not when it asked: a late answer
        // about an older configuration proves nothing about the current one. A committed
        // configuration at least as recent as this node's latest that leaves it out means
        // it was removed (§4.2.2), even if it never received the entry that removed it (it
        // was down, or cut off): adding it again takes a later entry, which a leader then
        // sends it, and which makes it campaign again (`membership_changed`). A
        // configuration at index 0 is a fixed one, in no log: a peer's that leaves out a
        // node whose own lists it is a misconfiguration (different `--peers`), not a removal.
        let me = self.config.id;
        let removed = resp.removed_by.is_some_and(|at| {
            at >= self.configs.latest_index()
                && (at > LogIndex(0) || !self.membership().contains(me))
        });
        if removed {
            if !self.removal_confirmed {
                info!(id = %self.config.id, %from, "removed from the cluster, and the removal has committed; campaigning no more");
            }
            self.removal_confirmed = true;
            // A leader managing its own removal hands over as it would (a late answer to
            // its campaign changes nothing there); a campaign ends.
            if matches!(
                self.duty,
                Duty::PreCandidate { .. } | Duty::Candidate { .. }
            ) {
                self.become_follower(self.term.max(resp.term), None);
            }
            return;
        }
        if resp.term > self.term && !resp.granted {
            self.become_follower(resp.term, None);
            return;
        }
        let expected_term = if resp.pre_vote {
            self.term.next()
        } else {
            self.term
        };
        if !resp.granted || resp.term != expected_term {
            return;
        }
        match &mut self.duty {
            Duty::PreCandidate { votes } if resp.pre_vote => {
                votes.insert(from);
            }
            Duty::Candidate { votes } if !resp.pre_vote => {
                votes.insert(from);
            }
            _ => return,
        }
        self.count_votes(resp.pre_vote, out);
    }

    /// `leader` spoke in `term` (not older than ours): a leader of this term or a later one
    /// exists, so follow it (a candidate of the same term steps down, §5.2), and hear it as
    /// the heartbeat that keeps this node from campaigning.
    fn follow(&mut self, leader: NodeId, term: Term, out: &mut Outbox<Message>) {
        if term > self.term || !matches!(self.duty, Duty::Follower) || self.leader != Some(leader) {
            self.become_follower(term, Some(leader));
            self.leader_elected(leader, term, out);
        }
        self.reset_election_timer();
    }

    fn on_append_entries(&mut self, from: NodeId, req: AppendEntries, out: &mut Outbox<Message>) {
        if let Err(answer) = req.screen(from, self.term) {
            if let Some(refusal) = answer {
                out.send(from, Message::AppendEntriesResponse(refusal));
            }
            return;
        }
        self.follow(from, req.term, out);
        let configs: Vec<_> = req
            .entries
            .iter()
            .filter(|e| matches!(e.payload, Payload::Config(_)))
            .cloned()
            .collect();
        let before = self.configs.latest_index();
        let response = self.log.append_from_leader(req, self.term);
        // A cut-back log may have taken the latest configuration with it.
        self.configs.truncated(&self.log);
        let kept = configs
            .iter()
            .filter(|e| self.log.term(e.index) == Some(e.term));
        self.configs.appended(kept);
        if self.configs.latest_index() != before || !configs.is_empty() {
            self.membership_changed(out);
        }
        self.apply_committed(out);
        out.send(from, Message::AppendEntriesResponse(response));
    }

    fn on_append_response(
        &mut self,
        from: NodeId,
        resp: AppendEntriesResponse,
        out: &mut Outbox<Message>,
    ) {
        if self.answered_from_later_term(resp.term) {
            return;
        }
        let Duty::Leader {
            replication,
            ticks,
            last_heard,
            ..
        } = &mut self.duty
        else {
            return;
        };
        if resp.term < self.term || resp.in_reply_to != self.term {
            // An answer to an earlier term's request: it says nothing about this term's log.
            return;
        }
        last_heard.insert(from, *ticks);
        let more = replication.on_response(from, resp.result, &self.log);
        if more {
            if let Some(append) =
                replication.append_for(from, &self.log, self.term, Occasion::Entries)
            {
                out.send(from, Message::AppendEntries(append));
            }
        }
        self.start_transfer(from, out);
        self.advance_commit(out);
        self.promote_caught_up(out);
        self.send_timeout_now(out);
    }

    /// Leader: sends each follower what it lacks; with `heartbeat`, every follower hears
    /// from the leader even with nothing new. So does every follower when the commit index
    /// has moved since they last heard it (as etcd broadcasts after a commit): a follower
    /// answering a relayed write or read waits for it, and would otherwise wait for the
    /// next write or heartbeat.
    fn broadcast(&mut self, heartbeat: bool, out: &mut Outbox<Message>) {
        let commit = self.log.commit_index();
        let Duty::Leader {
            replication,
            transfers,
            commit_sent,
            ..
        } = &mut self.duty
        else {
            return;
        };
        let occasion = if heartbeat {
            Occasion::Heartbeat
        } else if *commit_sent < commit {
            Occasion::Commit
        } else {
            Occasion::Entries
        };
        if occasion != Occasion::Entries {
            *commit_sent = commit;
        }
        for (follower, append) in replication.broadcast(&self.log, self.term, occasion) {
            out.send(follower, Message::AppendEntries(append));
        }
        if heartbeat {
            // A chunk not answered since the last heartbeat is sent again: it or its answer
            // may have been lost. It also keeps the follower from campaigning.
            let unanswered: Vec<NodeId> = transfers
                .iter_mut()
                .filter_map(|(&id, t)| (!std::mem::replace(&mut t.answered, false)).then_some(id))
                .collect();
            for follower in unanswered {
                self.send_chunk(follower, out);
            }
        }
        for follower in self.peers() {
            self.start_transfer(follower, out);
        }
    }

    /// Leader: starts sending the newest snapshot to `follower` if it needs one and is not
    /// already getting one.
    fn start_transfer(&mut self, follower: NodeId, out: &mut Outbox<Message>) {
        let Duty::Leader {
            replication,
            transfers,
            ..
        } = &mut self.duty
        else {
            return;
        };
        if !replication.needs_snapshot(follower) || transfers.contains_key(&follower) {
            return;
        }
        let Some(index) = self.snapshots.latest().map(|meta| meta.index) else {
            return;
        };
        info!(id = %self.config.id, %follower, %index, "sending a snapshot");
        let transfer = Outgoing {
            index,
            offset: 0,
            answered: true,
        };
        transfers.insert(follower, transfer);
        self.send_chunk(follower, out);
    }

    /// Leader: sends `follower` the chunk its transfer is at. If that snapshot has been
    /// replaced by a newer one, the transfer starts over with the newer one.
    fn send_chunk(&mut self, follower: NodeId, out: &mut Outbox<Message>) {
        let Duty::Leader { transfers, .. } = &mut self.duty else {
            return;
        };
        let Some(transfer) = transfers.get_mut(&follower) else {
            return;
        };
        let Some(meta) = self.snapshots.latest().cloned() else {
            return;
        };
        if meta.index != transfer.index {
            // Replaced by a newer snapshot: start over with that one.
            info!(id = %self.config.id, %follower, index = %meta.index, "snapshot replaced; sending the new one from the start");
            transfer.index = meta.index;
            transfer.offset = 0;
        }
        let max = self.config.snapshots.map_or(1 << 20, |p| p.chunk_bytes);
        let chunk = match self.snapshots.read_chunk(meta.index, transfer.offset, max) {
            Ok(Some(chunk)) => chunk,
            Ok(None) => panic!("the newest snapshot, {}, cannot be read", meta.index),
            Err(error) => panic!("cannot read this node's own snapshot ({error}); stopping"),
        };
        let (data, total) = chunk;
        let done = transfer.offset + data.len() as u64 >= total;
        out.send(
            follower,
            Message::InstallSnapshot(InstallSnapshot {
                term: self.term,
                meta,
                offset: transfer.offset,
                data,
                done,
            }),
        );
    }

    /// Leader: a follower's answer about a snapshot transfer.
    fn on_snapshot_response(
        &mut self,
        from: NodeId,
        resp: InstallSnapshotResponse,
        out: &mut Outbox<Message>,
    ) {
        if self.answered_from_later_term(resp.term) {
            return;
        }
        let Duty::Leader {
            replication,
            ticks,
            last_heard,
            transfers,
            ..
        } = &mut self.duty
        else {
            return;
        };
        if resp.in_reply_to != self.term {
            return;
        }
        last_heard.insert(from, *ticks);
        let Some(transfer) = transfers.get_mut(&from).filter(|t| t.index == resp.index) else {
            return; // about a transfer that has ended or been replaced
        };
        transfer.answered = true;
        match resp.result {
            Transfer::Installed => {
                transfers.remove(&from);
                replication.snapshot_installed(from, resp.index);
                info!(id = %self.config.id, follower = %from, index = %resp.index, "snapshot installed");
                if let Some(append) =
                    replication.append_for(from, &self.log, self.term, Occasion::Entries)
                {
                    out.send(from, Message::AppendEntries(append));
                }
                self.advance_commit(out);
            }
            // The chunk in flight is the one asked for: its answer is on the way, or the
            // next heartbeat re-sends it. Sending it again now would answer every duplicate
            // answer with another duplicate.
            Transfer::Next(offset) if offset == transfer.offset => {}
            Transfer::Next(offset) => {
                transfer.offset = offset;
                self.send_chunk(from, out);
            }
        }
    }

    /// Follower: a chunk of the leader's snapshot (Figure 13, InstallSnapshot receiver).
    fn on_install_snapshot(
        &mut self,
        from: NodeId,
        req: InstallSnapshot,
        out: &mut Outbox<Message>,
    ) {
        let (in_reply_to, index) = (req.term, req.meta.index);
        let answer = |term, result| {
            Message::InstallSnapshotResponse(InstallSnapshotResponse {
                term,
                in_reply_to,
                index,
                result,
            })
        };
        // 1. Reply immediately if term < currentTerm.
        if req.term < self.term {
            out.send(from, answer(self.term, Transfer::Next(0)));
            return;
        }
        self.follow(from, req.term, out);
        let result = self.receive_chunk(from, req);
        out.send(from, answer(self.term, result));
    }

    /// Follower: steps 2-5 of the InstallSnapshot receiver, with chunks that may come twice,
    /// late or out of order: only the chunk at the offset expected next is taken. After the
    /// last, the snapshot is finished off the node's task, and [`Self::finish_install`]
    /// installs it.
    fn receive_chunk(&mut self, from: NodeId, chunk: InstallSnapshot) -> Transfer {
        let InstallSnapshot {
            term,
            meta,
            offset,
            data,
            done,
        } = chunk;
        let same = |incoming: &Incoming| {
            (incoming.term, incoming.meta.index, incoming.meta.term)
                == (term, meta.index, meta.term)
        };
        if let Some(incoming) = self.incoming.as_ref().filter(|i| i.finishing.is_some()) {
            // Every chunk is in: the store is busy with them. Any other transfer waits.
            return match same(incoming) {
                true => Transfer::Next(incoming.received),
                false => Transfer::Next(0),
            };
        }
        if meta.index <= self.commit_index() {
            // Every entry it covers is already committed here (and so is the leader's).
            self.incoming = None;
            return Transfer::Installed;
        }
        let incoming = match &mut self.incoming {
            Some(incoming) if same(incoming) && offset != incoming.received => {
                return Transfer::Next(incoming.received);
            }
            Some(incoming) if same(incoming) => incoming,
            // 2. Create a new snapshot file if first chunk; any other is out of place.
            _ if offset != 0 => return Transfer::Next(0),
            _ => {
                if let Err(error) = self.snapshots.begin_receive(&meta) {
                    panic!("cannot store a received snapshot ({error}); stopping");
                }
                self.incoming.insert(Incoming {
                    meta: meta.clone(),
                    term,
                    received: 0,
                    finishing: None,
                })
            }
        };
        // 3. Write data into the snapshot file at the given offset.
        if let Err(error) = self.snapshots.append_received(&data) {
            panic!("cannot store a received snapshot ({error}); stopping");
        }
        incoming.received += data.len() as u64;
        // 4. Reply and wait for more data chunks if done is false.
        if done {
            // 5. Save the snapshot file (the store drops older ones): off the node's task.
            // Until it is installed, the leader hears that every byte has arrived.
            incoming.finishing = Some(from);
            self.snapshots.start_finish_receive();
        }
        Transfer::Next(incoming.received)
    }

    /// Follower: once the store has finished the snapshot received (made it durable and read
    /// its state back), installs it (steps 6-8) and tells the leader it sent it.
    fn finish_install(&mut self, out: &mut Outbox<Message>) {
        let Some(leader) = self.finishing_from() else {
            return;
        };
        let Some(finished) = self.snapshots.poll_received() else {
            return;
        };
        let Some(Incoming { meta, term, .. }) = self.incoming.take() else {
            return;
        };
        let result = match finished {
            // Entries committed meanwhile may already cover it.
            Ok(_) if meta.index <= self.commit_index() => Transfer::Installed,
            Ok(state) => {
                self.install(&meta, state, out);
                Transfer::Installed
            }
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                warn!(%error, index = %meta.index, "received snapshot does not verify; starting over");
                Transfer::Next(0)
            }
            Err(error) => panic!("cannot store a received snapshot ({error}); stopping"),
        };
        let answer = InstallSnapshotResponse {
            term: self.term,
            in_reply_to: term,
            index: meta.index,
            result,
        };
        out.send(leader, Message::InstallSnapshotResponse(answer));
    }

    /// Follower: the leader whose snapshot the store is finishing, if it is.
    fn finishing_from(&self) -> Option<NodeId> {
        self.incoming.as_ref().and_then(|i| i.finishing)
    }

    /// Follower: steps 6-8 with a received snapshot's `state`, durable now.
    fn install(&mut self, meta: &SnapshotMeta, state: Machine, out: &mut Outbox<Message>) {
        // 6-7. Keep the log after the snapshot if it matches there, else discard it.
        self.log.install_snapshot(meta.index, meta.term);
        self.configs
            .restored(meta.index, meta.members.clone(), &self.log);
        self.membership_changed(out);
        // 8. Reset the state machine using the snapshot.
        for (tag, outcome) in self.applier.restore(state, meta.index) {
            out.reply(tag, outcome);
        }
        self.serve_confirmed_reads(out);
        self.applied_bytes_at_snapshot = self.applier.applied_bytes();
        info!(id = %self.config.id, index = %meta.index, "installed a snapshot from the leader");
    }

    /// Starts a snapshot of the state machine if the policy says it is time and none is
    /// being saved. Only the copy of the map happens here; the store writes it meanwhile.
    fn maybe_snapshot(&mut self) {
        let Some(policy) = self.config.snapshots else {
            return;
        };
        let applied = self.last_applied();
        let since = self.snapshots.latest().map_or(LogIndex(0), |m| m.index);
        let bytes = self.applier.applied_bytes() - self.applied_bytes_at_snapshot;
        let state_bytes = self.applier.state().bytes() as u64;
        // Not while a received snapshot is finishing either: one of the same index and term
        // would be written to the same file.
        if self.snapshots.saving()
            || self.finishing_from().is_some()
            || self.sending_snapshot()
            || applied <= since
            || (applied.0 - since.0 < policy.entries && bytes < policy.bytes)
            || bytes.saturating_mul(100) < state_bytes.saturating_mul(policy.state_percent)
        {
            return;
        }
        let meta = SnapshotMeta {
            index: applied,
            term: self
                .log
                .term(applied)
                .expect("the last applied entry is in the log"),
            members: self.configs.at(applied).clone(),
        };
        debug!(id = %self.config.id, index = %applied, "taking a snapshot");
        self.applied_bytes_at_snapshot = self.applier.applied_bytes();
        self.snapshots
            .start_save(meta, self.applier.machine().clone());
    }

    /// Leader: whether a follower that answered recently is receiving a snapshot. A new
    /// snapshot replaces the one being sent, and the transfer restarts with it, so taking
    /// snapshots faster than one crosses the network would keep a follower from ever
    /// catching up: the next snapshot waits until the transfer ends, and the log grows by
    /// what is written meanwhile. Only a follower silent for
    /// [`SNAPSHOT_TRANSFER_PATIENCE`] election timeouts is given up on, so that a dead one
    /// cannot hold compaction back forever: a live receiver can pause for longer than one
    /// timeout (a 124 MB transfer under load showed pauses past 200 ms, and restarted).
    fn sending_snapshot(&self) -> bool {
        let Duty::Leader {
            ticks,
            last_heard,
            transfers,
            ..
        } = &self.duty
        else {
            return false;
        };
        transfers.keys().any(|follower| {
            last_heard.get(follower).is_some_and(|&at| {
                ticks - at < SNAPSHOT_TRANSFER_PATIENCE * self.config.election_ticks
            })
        })
    }

    /// Compacts the log once a snapshot is durable, keeping `policy.keep` entries before it.
    fn finish_snapshot(&mut self) {
        let Some(saved) = self.snapshots.poll_saved() else {
            return;
        };
        let meta = match saved {
            Ok(meta) => meta,
            Err(error) => panic!("cannot save a snapshot ({error}); stopping"),
        };
        let keep = self.config.snapshots.map_or(0, |p| p.keep);
        let upto = LogIndex(meta.index.0.saturating_sub(keep));
        if upto >= self.log.storage().first_index() {
            self.log.compact(upto);
            self.configs.compacted(upto);
        }
        info!(id = %self.config.id, index = %meta.index, first_index = %self.log.storage().first_index(), "snapshot saved; log compacted");
    }

    fn advance_commit(&mut self, out: &mut Outbox<Message>) {
        let Duty::Leader { replication, .. } = &self.duty else {
            return;
        };
        let voters = self.configs.latest().voter_ids();
        // §5.4.2: only an entry of the current term commits by counting replicas. A leader
        // that is being removed does not count itself (thesis §4.2.2).
        if replication.advance_commit(&mut self.log, self.config.id, voters, self.term) {
            self.apply_committed(out);
            self.membership_committed(out);
            self.start_read_round(out);
        }
    }

    fn apply_committed(&mut self, out: &mut Outbox<Message>) {
        for (tag, outcome) in self.applier.apply_committed(&self.log) {
            out.reply(tag, outcome);
        }
        self.serve_confirmed_reads(out);
        self.maybe_snapshot();
    }

    fn tick_leader(&mut self, out: &mut Outbox<Message>) {
        self.heartbeat_elapsed += 1;
        if self.heartbeat_elapsed >= self.config.heartbeat_ticks {
            self.heartbeat_elapsed = 0;
            self.broadcast(true, out);
            self.probe_for_reads(out);
        }
        let window = self.config.election_ticks;
        let membership = self.configs.latest();
        let majority = membership.majority();
        let Duty::Leader {
            ticks, last_heard, ..
        } = &mut self.duty
        else {
            return;
        };
        *ticks += 1;
        // Thesis §6.2 (check-quorum): a leader that has not heard from a majority (itself
        // included) within an election timeout may have been deposed, and cannot commit
        // anyway; it steps down rather than keep accepting writes. Checked every tick over a
        // sliding window, so it happens within one election timeout of losing contact.
        let heard = usize::from(membership.is_voter(self.config.id))
            + last_heard
                .iter()
                .filter(|&(&id, &at)| membership.is_voter(id) && *ticks - at < window)
                .count();
        // A new leader gets one election timeout to hear from its followers.
        if self.config.check_quorum && *ticks >= window && heard < majority {
            info!(id = %self.config.id, term = %self.term, heard, "lost contact with a majority; stepping down");
            self.step_down(out);
        }
    }

    /// A follower or candidate: campaigns once its election timer runs out, or at once when
    /// it is the only voter and follows no leader. The timeout gives a leader's heartbeats
    /// time to arrive; with no other voter and no leader known there is none to wait for,
    /// so a one-node cluster (a node started with `--bootstrap`, say) leads from its first
    /// tick, or as soon as its vote is on disk: a lone candidate waits for that sync rather
    /// than campaign again. A node left the only voter by a leader removing itself still follows that
    /// leader until it hands over (§4.2.2: the leader manages its own removal).
    ///
    /// A node that its latest configuration leaves out campaigns too, until it knows that
    /// configuration committed (thesis §4.2.2: "it might still be needed"): a leader that
    /// removed itself may be the only node with its removal in its log, and, in a cluster
    /// of two, the other cannot be elected without its vote, which that longer log
    /// refuses. Its own vote does not count (`count_votes`), and it always asks for
    /// pre-votes first. Leaders do not replicate to non-members, so a removed node may never
    /// hear that its removal committed (after a restart, or if it stepped down first): the
    /// voters it asks tell it (`RequestVoteResponse::removed_by`), and it stops. Learners,
    /// nodes that know their removal committed, and nodes that have not joined never
    /// campaign; their timer keeps running, so that they stop counting a silent leader as
    /// fresh (§4.2.3) and stop naming it to clients.
    fn tick_election_timer(&mut self, out: &mut Outbox<Message>) {
        self.election_elapsed += 1;
        let membership = self.membership();
        let me = self.config.id;
        // A voter told that its removal committed is one no more, whatever its own
        // configuration (which may lack the entry that removed it) says.
        let voter = membership.is_voter(me) && !self.removal_confirmed;
        let maybe_needed = !membership.contains(me)
            && !self.removal_confirmed
            && self.configs.latest_index() > self.commit_index();
        let alone = voter && self.leader.is_none() && membership.voter_ids().count() == 1;
        if alone && matches!(self.duty, Duty::Candidate { .. }) {
            // A lone voter's campaign ends when its own vote is on disk (`synced`), and no
            // one else can end it sooner. Campaigning again would raise the term and ask
            // for a new vote to be synced: on a disk slower than a tick, for ever.
            return;
        }
        if !alone && self.election_elapsed < self.election_timeout {
            return;
        }
        if voter || maybe_needed {
            // A node outside its configuration always asks first: it may well have been
            // removed for good, and must not raise the terms of those who go on without it.
            let campaign = if self.config.pre_vote || !voter {
                Campaign::PreVote
            } else {
                Campaign::Election
            };
            self.campaign(campaign, out);
        } else {
            self.leader = None;
        }
    }
}

impl<S: Storage, P: Snapshots> Node for RaftNode<S, P> {
    type Message = Message;

    fn id(&self) -> NodeId {
        self.config.id
    }

    fn tick(&mut self, out: &mut Outbox<Message>) {
        if self.is_leader() || self.leader.is_some() {
            self.leaderless_ticks = 0;
            self.leaderless_logged = false;
        } else {
            self.leaderless_ticks += 1;
            // Said once per stretch without a leader, by a node that campaigns (a learner or
            // a removed node does not); clients hear it with every request.
            let campaigning = matches!(
                self.duty,
                Duty::PreCandidate { .. } | Duty::Candidate { .. }
            );
            if campaigning && !self.leaderless_logged {
                if let Some(why) = self.majority_missing() {
                    warn!(id = %self.config.id, term = %self.term, "{why}");
                    self.leaderless_logged = true;
                }
            }
        }
        self.finish_snapshot();
        self.finish_install(out);
        self.tick_handoff(out);
        self.tick_relay(out);
        if self.is_leader() {
            self.tick_leader(out);
        } else {
            self.tick_election_timer(out);
        }
        self.settle(out);
    }

    fn step(&mut self, from: NodeId, message: Message, out: &mut Outbox<Message>) {
        // Messages from nodes outside this node's configuration are handled too (thesis
        // §4.1): a node being added hears from a leader it does not know yet, and a vote
        // may come from a member this node has not learned of. A removed node cannot
        // disrupt: pre-vote and the fresh-leader check keep its elections from going anywhere.
        if message.term() >= Term::UNREACHABLE {
            warn!(id = %self.config.id, %from, term = %message.term(), "a message with an impossible term dropped");
            return;
        }
        match message {
            Message::AppendEntries(req) => self.on_append_entries(from, req, out),
            Message::AppendEntriesResponse(resp) => self.on_append_response(from, resp, out),
            Message::RequestVote(req) => self.on_request_vote(from, req, out),
            Message::RequestVoteResponse(resp) => self.on_vote_response(from, resp, out),
            Message::InstallSnapshot(req) => self.on_install_snapshot(from, req, out),
            Message::InstallSnapshotResponse(resp) => self.on_snapshot_response(from, resp, out),
            Message::TimeoutNow(msg) => self.on_timeout_now(from, msg, out),
            Message::ReadProbe(probe) => self.on_read_probe(from, probe, out),
            Message::ReadAck(ack) => self.on_read_ack(from, ack, out),
            Message::Propose(propose) => self.on_propose(from, propose, out),
            Message::Proposed(answer) => self.on_proposed(from, answer, out),
            Message::ReadIndex(ask) => self.on_read_index(from, ask, out),
            Message::ReadIndexed(answer) => self.on_read_indexed(from, answer, out),
        }
        self.settle(out);
    }

    /// A follower relays the writes and reads taken since the last batch; a leader sends
    /// the entries proposed since then: one AppendEntries per follower carries them all.
    fn flush(&mut self, out: &mut Outbox<Message>) {
        self.flush_relay(out);
        self.broadcast(false, out);
    }

    /// A follower's leader: what `not_leader` would name.
    fn leader_elsewhere(&self) -> Option<&str> {
        match self.duty {
            Duty::Follower => self.leader.and_then(|id| self.membership().addr(id)),
            _ => None,
        }
    }

    fn cluster(&self) -> ClusterId {
        self.membership().cluster()
    }

    fn incarnations(&self) -> Option<Arc<Incarnations>> {
        self.incarnations.clone()
    }

    fn members_since(&self) -> BTreeMap<NodeId, u64> {
        self.membership().since()
    }

    fn start_sync(&mut self) -> Option<SyncJob> {
        self.log.start_sync()
    }

    /// A leader's own copy of its entries now counts toward a majority, and a candidate's
    /// own vote toward its election.
    fn synced(&mut self, result: std::io::Result<()>, out: &mut Outbox<Message>) {
        self.log.finish_sync(result);
        if matches!(self.duty, Duty::Candidate { .. }) {
            self.count_votes(false, out);
        }
        self.advance_commit(out);
        self.settle(out);
    }

    /// What a leader sends to replicate and to confirm its leadership asserts nothing about
    /// its own unsynced changes, so it goes out while the leader writes its log (thesis
    /// §10.2.1); its term and vote were made durable before it could lead. Nor do the
    /// messages that relay clients' requests and their answers: no client is answered
    /// until what it asked is committed.
    ///
    /// Nor does a voter's ReadAck (thesis §6.4). It says only that, when it was sent, the
    /// voter had not moved past the probe's term, so had helped no later leader to power:
    /// every vote it ever granted was durable before it was sent, and its term in memory is
    /// at least the term of each. A crash that loses an unsynced term takes nothing back
    /// from that; the read it confirms is ordered before any leader the voter elects next.
    /// Waiting for the voter's disk would only hold every linearizable read behind
    /// the fsyncs of concurrent writes.
    ///
    /// Everything else a follower or candidate says (acknowledgements of entries, votes,
    /// vote requests) waits.
    fn sends_before_sync(message: &Message) -> bool {
        matches!(
            message,
            Message::AppendEntries(_)
                | Message::ReadProbe(_)
                | Message::ReadAck(_)
                | Message::Propose(_)
                | Message::Proposed(_)
                | Message::ReadIndex(_)
                | Message::ReadIndexed(_)
        )
    }

    fn request(&mut self, tag: RequestTag, op: Op, out: &mut Outbox<Message>) {
        match op {
            Op::Get {
                key,
                consistency: Consistency::Linearizable,
            } => self.read(tag, key, out),
            // A local read, possibly stale: any member serves it from its own state. A node
            // that knows it was removed hears of no write again, and refuses: a client that
            // asks every member takes another's answer.
            Op::Get {
                consistency: Consistency::Stale,
                ..
            } if self.removed() => out.reply(
                tag,
                Err(Failure::unavailable(
                    "this node was removed from the cluster, and its state is out of date; ask a member",
                )),
            ),
            Op::Get {
                key,
                consistency: Consistency::Stale,
            } => out.reply(
                tag,
                Ok(Reply::Value(
                    self.state().get_text(&key),
                )),
            ),
            Op::Status => out.reply(tag, Ok(Reply::Status(Box::new(self.status())))),
            Op::Write { command, session } => self.write(
                Write {
                    tag,
                    command,
                    session,
                },
                out,
            ),
            Op::AddMember { .. } | Op::RemoveMember { .. } if !self.config.membership_changes => {
                out.reply(
                    tag,
                    Err(Failure::bad_request("membership changes arrive in stage 8")),
                );
            }
            Op::AddMember { id, addr } => self.change_membership(tag, Change::Add(id, addr), out),
            Op::RemoveMember { id } => self.change_membership(tag, Change::Remove(id), out),
            Op::TransferLeader { id } => self.transfer_leader(tag, id, out),
        }
        self.settle(out);
    }

    fn hand_off(&mut self, tag: RequestTag, out: &mut Outbox<Message>) {
        self.hand_off_before_stopping(tag, out);
        // A removed leader steps down as it sends TimeoutNow: its reads are refused now,
        // not a tick later.
        self.settle(out);
    }
}
