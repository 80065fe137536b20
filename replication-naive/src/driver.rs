//! The node driver: runs any [`Node`] for real, on tokio.
//!
//! One task owns the node, so the node needs no locks: it `select!`s over a tick interval,
//! the peer inbox, client calls and the end of the node's sync, and after each batch of
//! inputs sends what the node's [`Outbox`] holds: replies to the waiting clients at once,
//! messages through the [`Transport`] once the [`SyncGate`] lets them go. The sync itself
//! (an fsync) runs on a blocking thread while the node goes on.
//!
//! ```text
//!   clients ─┐                            ┌─▶ Transport ─▶ peers
//!            ├─ accept_loop ─ route ─┐    │
//!   peers ───┘  (one port)           ▼    │
//!        serve_client ─ calls ─▶ node task (tick / step / request) ─▶ replies ─▶ clients
//!        receive ─────── inbox ─▶
//! ```

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::Either;
use kv_server::process::StartError;
use kv_server::protocol::{Failure, NodeId, Op, Outcome};
use kv_server::serve::{Handler, ServeConfig, accept_loop, serve_client};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, warn};

use crate::forward::{self, Forwarder};
use crate::node::{Node, Outbox, RequestTag};
use crate::sync_gate::SyncGate;
use crate::transport::{self, AddressBook, Transport, TransportConfig};

/// How the driver runs a node.
#[derive(Debug, Clone, Copy)]
pub struct DriverConfig {
    /// Real time per [`Node::tick`].
    pub tick: Duration,
    /// Client connections.
    pub serve: ServeConfig,
    /// Peer connections.
    pub transport: TransportConfig,
    /// Client requests waiting for the node task; past this, clients get `unavailable`.
    pub call_queue: usize,
    /// Longest wait for the node's answer to a client. Past it, a read or `status` is
    /// answered `unavailable` and a change `timeout` (it may yet take effect): whatever holds
    /// the node up (no quorum, a partition after a read was confirmed, a deposed leader
    /// waiting to learn its entry's fate), a client hears back.
    pub request_timeout: Duration,
    /// On a follower that knows its leader, a request only a leader serves is sent to the
    /// leader and its answer relayed ([`crate::forward`]); off, or with no leader known,
    /// the node answers `not_leader` and the client retries where it names.
    pub forward_to_leader: bool,
}

impl Default for DriverConfig {
    fn default() -> Self {
        DriverConfig {
            tick: Duration::from_millis(10),
            serve: ServeConfig::default(),
            transport: TransportConfig::default(),
            call_queue: 8192,
            request_timeout: Duration::from_secs(5),
            forward_to_leader: false,
        }
    }
}

impl DriverConfig {
    /// How many ticks make at least `ms` milliseconds (never fewer than one).
    pub fn ticks(&self, ms: u64) -> u64 {
        let tick_ms = (self.tick.as_millis() as u64).max(1);
        ms.div_ceil(tick_ms).max(1)
    }
}

/// What the node task is asked to do for the rest of the process.
enum Input {
    /// A client's request.
    Client(Op),
    /// The process is stopping: [`Node::hand_off`].
    HandOff,
}

type Call = (Input, oneshot::Sender<Outcome>);

/// Clients waiting for the node's answer, by the tag their request was given.
type Waiting = HashMap<RequestTag, oneshot::Sender<Outcome>>;

/// Most inputs the node task takes before it sends and starts a sync: bounds the latency one
/// batch adds to the first input in it.
const MAX_BATCH: usize = 512;

/// A batch of inputs, or an fsync, slower than this is logged: the first holds up every
/// message, heartbeats included; the second, every acknowledgement and vote.
const SLOW_BATCH: Duration = Duration::from_millis(50);

/// The node's task ended on its own: it panicked, typically because its storage could not
/// make a change durable. The process should exit rather than go on answering clients.
#[derive(Debug, thiserror::Error)]
#[error("the node stopped unexpectedly: {0}")]
pub struct NodeFailed(String);

impl From<NodeFailed> for StartError {
    /// A binary reports a failed node as it reports any failure to run: one line, exit 1.
    fn from(failed: NodeFailed) -> StartError {
        StartError::failure(failed.to_string())
    }
}

/// Runs `node` on `listener` (clients and peers both connect there) until `shutdown`
/// completes; `peers` maps every member's id to its address. On shutdown, client connections
/// are drained first, while the node still runs and still hears its peers, so requests in
/// flight can be answered: they wait for the leader's acknowledgements, or for a follower's
/// leader to say where their writes went and what has committed. If the node itself fails,
/// stops serving at once and returns the failure.
pub async fn run<N>(
    node: N,
    listener: TcpListener,
    peers: BTreeMap<NodeId, String>,
    config: DriverConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), NodeFailed>
where
    N: Node + Send + 'static,
{
    let stop_node = CancellationToken::new();
    // What this node tells peers it connects to: its address in the configuration, else
    // the one it listens on.
    let addr = match peers.get(&node.id()) {
        Some(addr) => addr.clone(),
        None => listener
            .local_addr()
            .map_or_else(|_| String::new(), |a| a.to_string()),
    };
    // The cluster is set before any link starts, so that every hello says it.
    let mut transport = Transport::start(
        node.id(),
        addr,
        &BTreeMap::new(),
        config.transport,
        stop_node.clone(),
    );
    transport.set_cluster(node.cluster());
    if let Some(incarnations) = node.incarnations() {
        transport.set_incarnations(incarnations);
    }
    transport.set_members(node.members_since());
    transport.set_peers(&peers);
    let (inbox_tx, inbox) = mpsc::channel(config.transport.queue);
    let inbound = Inbound {
        inbox: inbox_tx,
        book: transport.address_book(),
        readers: TaskTracker::new(),
        stop: stop_node.clone(),
    };
    let readers = inbound.readers.clone();
    let (calls_tx, calls) = mpsc::channel(config.call_queue);
    let (leader_tx, leader) = watch::channel(None);
    let mut node_task = tokio::spawn(drive(
        node,
        transport,
        inbox,
        calls,
        config.forward_to_leader.then_some(leader_tx),
        config.tick,
        stop_node.clone(),
    ));

    // Clients are served until the node has handed off whatever it must (a leader, its
    // leadership); only then are connections drained and the node stopped.
    let hand_off = calls_tx.clone();
    let shutdown = async move {
        shutdown.await;
        let (tx, rx) = oneshot::channel();
        if hand_off.send((Input::HandOff, tx)).await.is_ok() {
            if let Ok(Err(failure)) = rx.await {
                warn!(why = %failure.message, "stopping without handing off");
            }
        }
    };
    let calls = Arc::new(Calls {
        node: calls_tx,
        forwarder: config.forward_to_leader.then(Arc::default),
        leader,
        request_timeout: config.request_timeout,
    });
    let serving = accept_loop(listener, shutdown, move |stream, stop| {
        route(stream, calls.clone(), inbound.clone(), config, stop)
    });
    tokio::select! {
        () = serving => {
            stop_node.cancel();
            readers.close();
            readers.wait().await;
            let _ = node_task.await;
            Ok(())
        }
        ended = &mut node_task => {
            stop_node.cancel();
            let why = match ended {
                Err(error) if error.is_panic() => {
                    let panic = error.into_panic();
                    panic.downcast_ref::<String>().cloned()
                        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                        .unwrap_or_else(|| "panic".to_owned())
                }
                Err(error) => error.to_string(),
                Ok(()) => "the node task returned".to_owned(),
            };
            tracing::error!(%why, "node failed; stopping");
            Err(NodeFailed(why))
        }
    }
}

/// Where connections from peers go: the node's inbox, through readers that end with the
/// node (`stop`), not with the clients' drain.
#[derive(Clone)]
struct Inbound<M> {
    inbox: mpsc::Sender<(NodeId, M)>,
    book: AddressBook,
    readers: TaskTracker,
    stop: CancellationToken,
}

/// Sends a connection to the client protocol or the peer protocol by its first byte. A
/// client connection is served here, until `stop`; a peer connection is handed to a reader
/// of its own, and this returns.
async fn route<M: serde::de::DeserializeOwned + Send + 'static>(
    stream: TcpStream,
    calls: Arc<Calls>,
    inbound: Inbound<M>,
    config: DriverConfig,
    stop: CancellationToken,
) {
    let peer = tokio::select! {
        _ = stop.cancelled() => return,
        peer = transport::is_peer(&stream) => peer,
    };
    match peer {
        Ok(true) => {
            let Inbound {
                inbox,
                book,
                readers,
                stop,
            } = inbound;
            let read = async move {
                let ended = transport::receive(stream, inbox, &book, config.transport, stop);
                transport::log_inbound_end(ended.await);
            };
            readers.spawn(read.in_current_span());
        }
        Ok(false) => serve_client(stream, calls, config.serve, stop).await,
        Err(error) => debug!(%error, "connection closed before its first byte"),
    }
}

/// The client side's way into the node task.
struct Calls {
    node: mpsc::Sender<Call>,
    /// Set when requests for the leader are forwarded to it.
    forwarder: Option<Arc<Forwarder>>,
    /// The leader's address while the node follows it ([`Node::leader_elsewhere`]), as the
    /// node task last published it (only when forwarding).
    leader: watch::Receiver<Option<String>>,
    /// [`DriverConfig::request_timeout`].
    request_timeout: Duration,
}

impl Handler for Calls {
    /// A follower that knows its leader sends it what only a leader serves straight away,
    /// without a round through the node task. Everything else goes to the node, which
    /// answers `not_leader` for such a request in the moment before a new leader is
    /// published.
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let known_leader = self
            .forwarder
            .as_ref()
            .filter(|_| forward::is_forwarded(&op))
            .and_then(|forwarder| Some((forwarder.clone(), self.leader.borrow().clone()?)));
        let changes = op.changes_state();
        let answer = match known_leader {
            Some((forwarder, leader)) => Either::Left(forwarder.forward(leader, op)),
            None => Either::Right(self.ask_node(op)),
        };
        answer_within(self.request_timeout, changes, answer)
    }

    fn handle_forwarded(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let changes = op.changes_state();
        answer_within(self.request_timeout, changes, self.ask_node(op))
    }
}

/// The failure for a request left unanswered because of `why`.
fn unanswered(changes: bool, why: &str) -> Failure {
    if changes {
        Failure::timeout(format!("{why}; the change may or may not take effect"))
    } else {
        Failure::unavailable(format!("{why}; nothing changed"))
    }
}

/// `answer`, or a failure once [`DriverConfig::request_timeout`] has passed without it
/// (the node's, or the leader's a request was forwarded to).
async fn answer_within(
    patience: Duration,
    changes: bool,
    answer: impl Future<Output = Outcome>,
) -> Outcome {
    match tokio::time::timeout(patience, answer).await {
        Ok(outcome) => outcome,
        Err(_) => {
            let why = format!("no answer within {} ms", patience.as_millis());
            Err(unanswered(changes, &why))
        }
    }
}

impl Calls {
    /// Hands `op` to the node task; the future is its answer, or a failure if the node stops
    /// first.
    fn ask_node(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let changes = op.changes_state();
        let (tx, rx) = oneshot::channel();
        // Sent now, not in the future, so requests reach the node in the order they were read.
        let queued = self.node.try_send((Input::Client(op), tx));
        async move {
            match queued {
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Failure::unavailable("the node is overloaded; retry later"));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    return Err(Failure::unavailable("the node is shutting down"));
                }
                Ok(()) => {}
            }
            // A change the node has not answered may still be replicated and applied, so
            // its outcome is unknown; a read changed nothing.
            rx.await
                .unwrap_or_else(|_| Err(unanswered(changes, "the node stopped before answering")))
        }
    }
}

/// The node task.
async fn drive<N: Node>(
    mut node: N,
    mut transport: Transport<N::Message>,
    mut inbox: mpsc::Receiver<(NodeId, N::Message)>,
    mut calls: mpsc::Receiver<Call>,
    leader: Option<watch::Sender<Option<String>>>,
    tick: Duration,
    stop: CancellationToken,
) {
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut waiting = Waiting::new();
    let mut next_tag = 0;
    let mut out = Outbox::default();
    let mut call = |node: &mut N, (input, reply): Call, waiting: &mut Waiting, out: &mut _| {
        next_tag += 1;
        let tag = RequestTag(next_tag);
        waiting.insert(tag, reply);
        match input {
            Input::Client(op) => node.request(tag, op, out),
            Input::HandOff => node.hand_off(tag, out),
        }
    };
    let mut gate: SyncGate<_, Syncing> = SyncGate::default();
    loop {
        let started;
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {
                started = Instant::now();
                node.tick(&mut out);
                if let Some(sync) = gate.running() {
                    sync.warn_if_stuck();
                }
            }
            Some((from, message)) = inbox.recv() => {
                started = Instant::now();
                node.step(from, message, &mut out);
            }
            Some(c) = calls.recv() => {
                started = Instant::now();
                call(&mut node, c, &mut waiting, &mut out);
            }
            result = finished(gate.running()) => {
                started = Instant::now();
                node.synced(result, &mut out);
                gate.finished(|to, message| transport.send(to, message));
            }
        }
        // Group commit: take whatever else has already arrived; one sync covers it all.
        for _ in 0..MAX_BATCH {
            if let Ok((from, message)) = inbox.try_recv() {
                node.step(from, message, &mut out);
            } else if let Ok(c) = calls.try_recv() {
                call(&mut node, c, &mut waiting, &mut out);
            } else {
                break;
            }
        }
        node.flush(&mut out);
        let working = started.elapsed();
        if working > SLOW_BATCH {
            // etcd warns the same way ("apply took too long"): nothing leaves the node
            // meanwhile, heartbeats included, so this can cost an election.
            warn!(
                work_ms = working.as_millis() as u64,
                "slow batch: the node task was held up"
            );
        }
        if let Some(peers) = out.peers.take() {
            // The cluster first, so that links to new peers say it in their hellos.
            transport.set_cluster(node.cluster());
            transport.set_members(node.members_since());
            transport.set_peers(&peers);
        }
        if let Some(leader) = &leader {
            leader.send_if_modified(|published| {
                let now = node.leader_elsewhere();
                let changed = published.as_deref() != now;
                if changed {
                    *published = now.map(str::to_owned);
                }
                changed
            });
        }
        for (tag, outcome) in out.replies.drain(..) {
            if let Some(reply) = waiting.remove(&tag) {
                let _ = reply.send(outcome);
            }
        }
        gate.after_batch(
            &mut node,
            out.messages.drain(..),
            |to, message| transport.send(to, message),
            |job| Syncing {
                job: tokio::task::spawn_blocking(job),
                started: Instant::now(),
                warned: None,
            },
        );
    }
    // The links end with `stop`; wait for them so nothing outlives the run.
    transport.stopped().await;
}

/// A sync running on a blocking thread.
struct Syncing {
    job: tokio::task::JoinHandle<std::io::Result<()>>,
    /// When it was handed to the blocking pool: the node waits for it from then.
    started: Instant,
    /// When it was last said to be stuck.
    warned: Option<Instant>,
}

/// A sync running this long is stuck (a failing disk, a full blocking pool): said every
/// so often while it lasts.
const STUCK_SYNC: Duration = Duration::from_secs(5);

impl Syncing {
    /// Says, every [`STUCK_SYNC`], that the sync has not finished. Nothing it covers is
    /// acknowledged meanwhile, so the node serves nothing that depends on its disk, but
    /// without this it would do so in silence: a failed fsync stops the node, a hung one
    /// only holds it.
    fn warn_if_stuck(&mut self) {
        let running = self.started.elapsed();
        let due = self.warned.is_none_or(|at| at.elapsed() >= STUCK_SYNC);
        if running >= STUCK_SYNC && due {
            self.warned = Some(Instant::now());
            warn!(
                running_ms = running.as_millis() as u64,
                "an fsync has not finished: acknowledgements and votes wait for it"
            );
        }
    }
}

/// Waits for the sync under way; never finishes while none runs.
async fn finished(syncing: Option<&mut Syncing>) -> std::io::Result<()> {
    let Some(running) = syncing else {
        return std::future::pending().await;
    };
    let ended = (&mut running.job).await;
    let took = running.started.elapsed();
    match ended {
        Ok(result) => {
            if took > SLOW_BATCH {
                // etcd's "slow fdatasync": acknowledgements and votes wait meanwhile.
                warn!(sync_ms = took.as_millis() as u64, "slow fsync");
            }
            result
        }
        Err(error) => Err(std::io::Error::other(format!("the sync failed: {error}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_up_to_whole_ticks_and_never_to_zero() {
        let config = DriverConfig::default(); // 10 ms ticks
        assert_eq!(
            [1, 10, 11, 200, 205].map(|ms| config.ticks(ms)),
            [1, 1, 2, 20, 21]
        );
        assert_eq!(config.ticks(0), 1);
    }
}
