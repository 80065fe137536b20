//! The shape every replicated node has: a synchronous, deterministic state machine.
//!
//! A [`Node`] never touches sockets, clocks, threads or global randomness. Time arrives as
//! [`Node::tick`], messages as [`Node::step`], client requests as [`Node::request`]; what the
//! node wants done (messages to send, replies to give) it writes into an [`Outbox`]. The same
//! node therefore runs unchanged under the tokio [`crate::driver`] and inside the
//! deterministic [`crate::sim`], where a seed fixes every delay, loss and crash.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use kv_server::protocol::{NodeId, Op, Outcome, Reply};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::incarnation::Incarnations;
use crate::transport::ClusterId;

/// Names one client request inside a node, so the reply can find its way back. Assigned by
/// whoever runs the node (driver or simulator), unique per node run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestTag(pub u64);

/// What a node asks its runner to do after an input.
#[derive(Debug)]
pub struct Outbox<M> {
    /// Messages to send: (destination, message). Delivery is best effort: the network may
    /// drop, delay, duplicate or reorder them, and the node must cope.
    pub messages: Vec<(NodeId, M)>,
    /// Answers to client requests.
    pub replies: Vec<(RequestTag, Outcome)>,
    /// The peers and their addresses, when they changed (stage 8: the members come from
    /// the log). The runner connects to new peers and drops links to those gone.
    pub peers: Option<BTreeMap<NodeId, String>>,
}

impl<M> Default for Outbox<M> {
    fn default() -> Self {
        Outbox {
            messages: Vec::new(),
            replies: Vec::new(),
            peers: None,
        }
    }
}

impl<M> Outbox<M> {
    /// Queues `message` for `to`.
    pub fn send(&mut self, to: NodeId, message: M) {
        self.messages.push((to, message));
    }

    /// Queues the answer to request `tag`.
    pub fn reply(&mut self, tag: RequestTag, outcome: Outcome) {
        self.replies.push((tag, outcome));
    }

    /// Tells the runner that the peers are now `peers` (this node included or not).
    pub fn set_peers(&mut self, peers: BTreeMap<NodeId, String>) {
        self.peers = Some(peers);
    }
}

/// A replicated node: a deterministic state machine driven from outside.
pub trait Node {
    /// What nodes of this kind say to each other.
    type Message: Clone + Debug + Serialize + DeserializeOwned + Send + 'static;

    /// This node's id.
    fn id(&self) -> NodeId;

    /// One unit of time has passed (the runner decides how long a unit is).
    fn tick(&mut self, out: &mut Outbox<Self::Message>);

    /// A message from peer `from` has arrived.
    fn step(&mut self, from: NodeId, message: Self::Message, out: &mut Outbox<Self::Message>);

    /// A client asks for `op`; the answer goes into `out.replies` under `tag`, now or later.
    fn request(&mut self, tag: RequestTag, op: Op, out: &mut Outbox<Self::Message>);

    /// The runner is about to stop cleanly. A node that leads hands leadership to another
    /// member first, so the cluster need not wait out an election timeout (thesis §3.10),
    /// and answers `tag` once that is done or given up; the runner waits for the answer,
    /// still running the node and serving clients, before it stops. A node with nothing
    /// to hand off answers at once.
    fn hand_off(&mut self, tag: RequestTag, out: &mut Outbox<Self::Message>) {
        out.reply(tag, Ok(Reply::Done));
    }

    /// The address of the leader, when this node follows another it knows: requests only a
    /// leader serves may be sent there without asking this node first (the driver's
    /// forwarding, [`crate::forward`]). `None` when this node leads, or knows no leader.
    fn leader_elsewhere(&self) -> Option<&str> {
        None
    }

    /// The cluster this node belongs to, as its configuration says: the runner's transport
    /// refuses peers of another. Unknown for nodes whose log holds no configuration.
    fn cluster(&self) -> ClusterId {
        ClusterId::UNKNOWN
    }

    /// This node's data directory's incarnation and the members' it remembers
    /// ([`crate::incarnation`]): the runner's transport says the one and checks the others.
    /// None for nodes that do not check them.
    fn incarnations(&self) -> Option<Arc<Incarnations>> {
        None
    }

    /// The members, each with the index of the configuration that made it one: a member
    /// made one again (after a removal) may come with a new data directory. Empty for nodes
    /// whose configuration is fixed.
    fn members_since(&self) -> BTreeMap<NodeId, u64> {
        BTreeMap::new()
    }

    /// The runner has taken every input waiting for now: the node sends what is worth
    /// sending once per batch of inputs rather than once per input (a leader, the entries
    /// proposed in the batch, in one AppendEntries per follower). The runner calls it before
    /// [`Node::start_sync`].
    fn flush(&mut self, _out: &mut Outbox<Self::Message>) {}

    /// Starts making durable what the outputs produced so far depend on, and returns the
    /// work (a write and an fsync) for the runner to run off the node's task; `None` when
    /// nothing is waiting to be made durable. The runner calls it once for a whole batch of
    /// inputs, so one fsync covers every write in the batch (group commit), and at most one
    /// runs at a time. Until [`Node::synced`], the runner holds back every message that may
    /// depend on the changes, except those [`Node::sends_before_sync`] lets go
    /// ([`crate::sync_gate`]).
    /// Replies are never held: a node answers a client only with what is already safe (a
    /// committed write). Nodes that keep nothing durable need not do anything.
    fn start_sync(&mut self) -> Option<SyncJob> {
        None
    }

    /// The work from [`Node::start_sync`] has finished with `result`: the node may count
    /// what it made durable (a leader, its own copy of the entries, toward a majority).
    fn synced(&mut self, _result: std::io::Result<()>, _out: &mut Outbox<Self::Message>) {}

    /// Whether `message` may leave before the node's changes so far are durable, because it
    /// asserts nothing about them. A Raft leader's AppendEntries may: the leader writes its
    /// log in parallel with replicating it (thesis §10.2.1). A vote or an acknowledgement
    /// may not.
    fn sends_before_sync(_message: &Self::Message) -> bool {
        false
    }
}

/// The work that makes a node's changes durable: run on any thread, its result handed back
/// to [`Node::synced`].
pub type SyncJob = Box<dyn FnOnce() -> std::io::Result<()> + Send>;
