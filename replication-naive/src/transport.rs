//! The peer transport: framed messages over TCP between nodes, reconnecting with backoff
//! (roadmap stage 5, "RPC reconnects").
//!
//! A node has one address (`--listen`) for clients and peers alike. A peer connection opens
//! with the byte [`PEER_PREAMBLE`] (`\0`, which never starts a JSON line), then a [`Hello`]
//! frame naming the sender, its cluster and the protocol version (a hello from another
//! cluster, or another version, is refused); after that, every frame is one message.
//! Frames are length-prefixed (`LengthDelimitedCodec`) and hold JSON, which keeps the peer
//! protocol readable in a packet capture and versionable by adding fields.
//!
//! Connections are one-way: node A sends to B over a connection A opened, and receives from B
//! over a connection B opened. Each peer gets an outbound task with a bounded queue; when the
//! queue is full, or the peer is unreachable for long, messages are dropped. That is the
//! contract every node here is written against: the network may lose messages, and the
//! protocol (Raft from stage 3 on) retransmits what matters.
//!
//! Links to the configured peers reconnect until the configuration drops the peer. A node
//! can also answer a node it knows only from that node's hello (one joining, or one removed
//! that does not know it yet): such a *learned* link connects once, and ends when its
//! connection fails or it has had nothing to send for [`TransportConfig::learned_idle`]; the
//! next message for that node opens a new one. So a removed node that has gone leaves
//! nothing behind that retries it for ever. A configuration that names the node replaces
//! its learned link with a configured one.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use kv_server::protocol::NodeId;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio_util::codec::{Encoder, FramedRead, FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::incarnation::{Incarnation, Incarnations};
use tracing::{debug, info, warn};

/// The first byte of every peer connection; client connections start with `{`.
pub const PEER_PREAMBLE: u8 = 0;

/// Bytes encoded and not yet written to a peer, past which a link takes no more messages
/// from its queue until the peer reads.
const WRITE_HIGH_WATER: usize = 1 << 20;

/// Bumped when the peer message format changes incompatibly (2: the hello carries the
/// sender's address; 3: leadership transfer's TimeoutNow; 4: ReadIndex's ReadProbe and
/// ReadAck; 5: a follower's Propose and ReadIndex, and their answers; 6: ReadAck names the
/// probe's term).
pub const PROTOCOL_VERSION: u32 = 6;

/// The first frame of a peer connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The sender's node id.
    pub from: NodeId,
    /// Where the sender listens: how a node that does not know the sender yet (one that is
    /// joining the cluster) can answer it.
    pub addr: String,
    /// The sender's cluster (absent when unknown, and from senders older than the field).
    #[serde(default, skip_serializing_if = "ClusterId::is_unknown")]
    pub cluster: ClusterId,
    /// The sender's data directory ([`crate::incarnation`]; absent without one).
    #[serde(default, skip_serializing_if = "Incarnation::is_none")]
    pub incarnation: Incarnation,
}

/// Which cluster a node belongs to. Chosen when the cluster is founded and carried by every
/// configuration after it (from the membership stage on), it lets a node refuse the peer
/// connections of another cluster's nodes: a node added to the wrong cluster, say. Without
/// it, such a peer's messages of a later term would make a node follow the other cluster's
/// leader and take its log. Founders started with the same `--peers` name the same cluster
/// (they cannot agree on anything else without talking), so two clusters founded with the
/// same `--peers` are not told apart. [`ClusterId::UNKNOWN`] matches any: a node that has
/// not learned its cluster yet (one joining), a stage without configurations in its log, or
/// a log written before the name existed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// Not known: matches any cluster.
    pub const UNKNOWN: ClusterId = ClusterId(0);

    /// Whether this is [`ClusterId::UNKNOWN`].
    pub fn is_unknown(&self) -> bool {
        *self == ClusterId::UNKNOWN
    }

    /// Whether a node of this cluster may take messages from a peer of cluster `peer`.
    pub fn admits(self, peer: ClusterId) -> bool {
        self.is_unknown() || peer.is_unknown() || self == peer
    }
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// What the receiving tasks share with the [`Transport`]: the addresses learned from the
/// hellos of inbound connections, and the node's cluster, which every hello must match.
#[derive(Debug, Default)]
pub struct Introductions {
    addrs: Mutex<HashMap<NodeId, String>>,
    cluster: AtomicU64,
    /// The members, each with the index of the configuration that made it one, as last
    /// configured: only they are held to their incarnation.
    members: Mutex<BTreeMap<NodeId, u64>>,
    /// Bumped by each change of `members`: a connection looks at them again only when it
    /// has moved, not at every message.
    members_version: AtomicU64,
    /// This node's incarnation and the members' (none without a data directory).
    incarnations: OnceLock<Arc<Incarnations>>,
}

impl Introductions {
    /// The node's cluster, as last set.
    pub fn cluster(&self) -> ClusterId {
        ClusterId(self.cluster.load(Ordering::Relaxed))
    }

    /// Where `id` said it listens, if it has connected.
    fn addr_of(&self, id: NodeId) -> Option<String> {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    /// Whether this node has a configuration yet (a joining node has none at first).
    fn has_members(&self) -> bool {
        !self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_empty()
    }

    /// This node's incarnation, said in its hellos.
    fn own_incarnation(&self) -> Incarnation {
        self.incarnations
            .get()
            .map_or(Incarnation::NONE, |known| known.own())
    }

    /// Holds a connection from `id`, which said it runs as `incarnation`, to what this node
    /// remembers, once `id` is a member: at the hello, and again at a message if the
    /// configuration has made `id` a member since the connection was last checked (`checked`
    /// says against what; the members are looked at only when they have changed). A node
    /// that is not a member is not checked, nor is any on a node without a data directory.
    async fn hold(
        &self,
        id: NodeId,
        incarnation: Incarnation,
        checked: &mut Checked,
    ) -> Result<(), InboundError> {
        let Some(known) = self.incarnations.get() else {
            return Ok(());
        };
        // Read before the members, so that a change made meanwhile is looked at next time.
        let version = self.members_version.load(Ordering::Acquire);
        if checked.version == Some(version) {
            return Ok(());
        }
        checked.version = Some(version);
        let since = self
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied();
        let Some(since) = since.filter(|&since| Some(since) != checked.since) else {
            return Ok(());
        };
        let known = known.clone();
        // A first incarnation is saved (a file write and two fsyncs), off the runtime.
        tokio::task::spawn_blocking(move || known.admit(id, incarnation, since))
            .await
            .map_err(|e| format!("cannot check node {id}'s incarnation: {e}"))
            .and_then(|admitted| admitted)
            .map_err(InboundError::Hello)?;
        checked.since = Some(since);
        Ok(())
    }

    fn learn(&self, id: NodeId, addr: String) {
        self.addrs
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, addr);
    }
}

/// [`Introductions`], shared.
pub type AddressBook = Arc<Introductions>;

/// Tuning of the transport.
#[derive(Debug, Clone, Copy)]
pub struct TransportConfig {
    /// Messages waiting per peer; past this, new messages to that peer are dropped.
    pub queue: usize,
    /// First pause after a failed connection attempt; doubled per failure, with jitter.
    pub min_backoff: Duration,
    /// Longest pause between connection attempts.
    pub max_backoff: Duration,
    /// Largest frame accepted.
    pub max_frame_bytes: usize,
    /// Longest wait for a connection (and its hello) to a peer before trying again.
    pub connect_timeout: Duration,
    /// How long a link to a node known only from its hello stays open with nothing to send.
    pub learned_idle: Duration,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            queue: 4096,
            min_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_secs(1),
            max_frame_bytes: 64 << 20,
            connect_timeout: Duration::from_secs(1),
            learned_idle: Duration::from_secs(30),
        }
    }
}

/// The sending side: one queue and one task per peer.
#[derive(Debug)]
pub struct Transport<M> {
    me: NodeId,
    addr: String,
    config: TransportConfig,
    stop: CancellationToken,
    links: HashMap<NodeId, LinkHandle<M>>,
    learned: AddressBook,
    tasks: TaskTracker,
}

/// The transport's end of one link.
#[derive(Debug)]
struct LinkHandle<M> {
    addr: String,
    queue: mpsc::Sender<M>,
    /// Ends the link's task.
    stop: CancellationToken,
    lifetime: Lifetime,
}

/// How long a link lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifetime {
    /// To a configured peer: reconnects until stopped.
    Configured,
    /// To a node known only from its hello: connects once, and ends when the connection
    /// fails or has been idle for [`TransportConfig::learned_idle`].
    Learned,
}

impl<M: Serialize + Send + 'static> Transport<M> {
    /// A transport for node `me`, which listens at `addr`, with a link to every peer in
    /// `peers` other than `me`. The links stop when `stop` is cancelled or the transport is
    /// dropped.
    pub fn start(
        me: NodeId,
        addr: String,
        peers: &BTreeMap<NodeId, String>,
        config: TransportConfig,
        stop: CancellationToken,
    ) -> Transport<M> {
        let mut transport = Transport {
            me,
            addr,
            config,
            stop,
            links: HashMap::new(),
            learned: AddressBook::default(),
            tasks: TaskTracker::new(),
        };
        transport.set_peers(peers);
        transport
    }

    /// Where inbound connections record the addresses their hellos carry, and find the
    /// node's cluster.
    pub fn address_book(&self) -> AddressBook {
        self.learned.clone()
    }

    /// Sets the members whose hellos are checked against their incarnation, each with the
    /// index of the configuration that made it a member.
    pub fn set_members(&self, members: BTreeMap<NodeId, u64>) {
        *self
            .learned
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = members;
        self.learned.members_version.fetch_add(1, Ordering::Release);
    }

    /// Gives the transport this node's incarnation (said in every hello from now on) and
    /// the members' it remembers (each member's hello is checked against them). Once: a
    /// node has one data directory.
    pub fn set_incarnations(&self, incarnations: Arc<Incarnations>) {
        let _ = self.learned.incarnations.set(incarnations);
    }

    /// Sets the node's cluster: said in every hello from now on, and checked against every
    /// inbound hello. A node learns it from its configuration (a joining node, once the
    /// leader's reaches it).
    pub fn set_cluster(&self, cluster: ClusterId) {
        let previous = self.learned.cluster.swap(cluster.0, Ordering::Relaxed);
        if previous != cluster.0 {
            info!(%cluster, "this node's cluster");
        }
    }

    /// Makes `peers` the set of peers: links start to new ones (and restart to ones whose
    /// address changed, or that were learned); links to configured peers not in `peers`
    /// stop. Learned links to nodes outside `peers` are left to end by themselves: a
    /// joining node replaying old configurations that lack its leader keeps the link it
    /// answers that leader over.
    pub fn set_peers(&mut self, peers: &BTreeMap<NodeId, String>) {
        let peers: BTreeMap<NodeId, String> = peers
            .iter()
            .filter(|&(&id, _)| id != self.me)
            .map(|(&id, addr)| (id, addr.clone()))
            .collect();
        self.links.retain(|id, link| {
            let keep = peers.contains_key(id) || link.lifetime == Lifetime::Learned;
            if !keep {
                link.stop.cancel();
            }
            keep
        });
        for (id, addr) in &peers {
            let current = self
                .links
                .get(id)
                .is_some_and(|link| &link.addr == addr && link.lifetime == Lifetime::Configured);
            if !current {
                self.open(*id, addr.clone(), Lifetime::Configured);
            }
        }
    }

    /// Starts the link to `to` at `addr`, replacing any other.
    fn open(&mut self, to: NodeId, addr: String, lifetime: Lifetime) {
        let (queue, rx) = mpsc::channel(self.config.queue);
        let stop = self.stop.child_token();
        let link = Link {
            me: self.me,
            me_addr: self.addr.clone(),
            introductions: self.learned.clone(),
            to,
            addr: addr.clone(),
            config: self.config,
            lifetime,
        };
        self.tasks.spawn(link.run(rx, stop.clone()));
        let handle = LinkHandle {
            addr,
            queue,
            stop,
            lifetime,
        };
        if let Some(old) = self.links.insert(to, handle) {
            old.stop.cancel();
        }
    }

    /// Completes once every link's task has ended (after `stop` is cancelled).
    pub async fn stopped(&self) {
        self.tasks.close();
        self.tasks.wait().await;
    }

    /// Queues `message` for `to`; drops it (best effort) when the queue is full or `to`'s
    /// address is unknown (neither a configured peer nor one that has connected to us).
    pub fn send(&mut self, to: NodeId, message: M) {
        let ended = self
            .links
            .get(&to)
            .is_some_and(|link| link.queue.is_closed());
        if ended {
            self.links.remove(&to);
        }
        if !self.links.contains_key(&to) {
            match self.learned.addr_of(to) {
                Some(addr) => self.open(to, addr, Lifetime::Learned),
                None => {
                    debug!(%to, "message for an unknown peer dropped");
                    return;
                }
            }
        }
        if let Some(link) = self.links.get(&to) {
            if link.queue.try_send(message).is_err() {
                debug!(%to, "peer queue full; message dropped");
            }
        }
    }

    /// Completes once the link to `to` this transport holds has ended (a learned link that
    /// failed or went idle; a stopped one): at once if it holds none. A link that
    /// [`Transport::set_peers`] stopped is no longer held, and its task may still be
    /// finishing.
    pub async fn link_ended(&self, to: NodeId) {
        if let Some(link) = self.links.get(&to) {
            link.queue.closed().await;
        }
    }
}

/// An open outbound connection: frames go out on the write half; the read half only tells
/// when the peer has gone.
struct Outbound {
    frames: FramedWrite<OwnedWriteHalf, LengthDelimitedCodec>,
    reader: OwnedReadHalf,
}

/// One outbound link to one peer.
struct Link {
    me: NodeId,
    me_addr: String,
    /// Where the node's cluster is found, for the hello.
    introductions: AddressBook,
    to: NodeId,
    addr: String,
    config: TransportConfig,
    lifetime: Lifetime,
}

impl Link {
    async fn run<M: Serialize>(self, mut queue: mpsc::Receiver<M>, stop: CancellationToken) {
        let mut backoff = self.config.min_backoff;
        let mut was_up = None;
        loop {
            let connected = tokio::select! {
                _ = stop.cancelled() => return,
                connected = self.connect() => connected,
            };
            let error = match connected {
                Ok(mut outbound) => {
                    if was_up != Some(true) {
                        info!(peer = %self.to, addr = %self.addr, "peer link up");
                    }
                    was_up = Some(true);
                    let up_since = tokio::time::Instant::now();
                    let ended = self.pump(&mut outbound, &mut queue, &stop).await;
                    // Backing off starts over only after a link that stayed up a while: a
                    // peer that accepts and closes at once (it refuses our version, say)
                    // must not be redialled every few milliseconds.
                    if up_since.elapsed() >= self.config.max_backoff {
                        backoff = self.config.min_backoff;
                    }
                    match ended {
                        Ok(()) => return,
                        Err(error) => error,
                    }
                }
                Err(error) => error,
            };
            if self.lifetime == Lifetime::Learned {
                debug!(peer = %self.to, addr = %self.addr, %error, "learned peer link ended");
                return;
            }
            if was_up != Some(false) {
                info!(peer = %self.to, addr = %self.addr, %error, "peer link down; retrying");
            }
            was_up = Some(false);
            let pause = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            backoff = (backoff * 2).min(self.config.max_backoff);
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// Connects and says hello, within the connect timeout: after a partition that
    /// silently dropped packets heals, the OS would otherwise retry a lost SYN for minutes.
    async fn connect(&self) -> std::io::Result<Outbound> {
        let timed_out = || std::io::Error::from(std::io::ErrorKind::TimedOut);
        let connecting = async {
            let mut stream = TcpStream::connect(&self.addr).await?;
            stream.set_nodelay(true)?;
            notice_dead_peers(&stream);
            stream.write_all(&[PEER_PREAMBLE]).await?;
            let (reader, writer) = stream.into_split();
            let mut frames = FramedWrite::new(writer, self.codec());
            let hello = Hello {
                version: PROTOCOL_VERSION,
                from: self.me,
                addr: self.me_addr.clone(),
                cluster: self.introductions.cluster(),
                incarnation: self.introductions.own_incarnation(),
            };
            frames
                .send(Bytes::from(serde_json::to_vec(&hello)?))
                .await?;
            Ok(Outbound { frames, reader })
        };
        tokio::time::timeout(self.config.connect_timeout, connecting)
            .await
            .map_err(|_| timed_out())?
    }

    /// Writes queued messages until the queue closes, the link is stopped or (a learned
    /// link) idle (`Ok`), or the connection fails (`Err`).
    ///
    /// Every wait is a branch of one `select!`, so neither `stop` nor a dead peer can be
    /// stuck behind a write. Messages are encoded into the write buffer (up to a high-water
    /// mark, past which the queue backs up and then drops) and written by the flush branch.
    /// The peer never writes on this connection, so anything readable means it closed or
    /// reset it (it restarted, say): that is noticed at once, instead of losing the next
    /// batch to a write into a socket that is already gone.
    async fn pump<M: Serialize>(
        &self,
        link: &mut Outbound,
        queue: &mut mpsc::Receiver<M>,
        stop: &CancellationToken,
    ) -> std::io::Result<()> {
        let mut encoder = self.codec();
        // A peer never writes here, except why it refuses this node (`receive`).
        let mut probe = [0u8; MAX_REFUSAL_BYTES];
        let learned = self.lifetime == Lifetime::Learned;
        let idle = tokio::time::sleep(self.config.learned_idle);
        tokio::pin!(idle);
        loop {
            let room = link.frames.write_buffer().len() < WRITE_HIGH_WATER;
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = &mut idle, if learned => {
                    debug!(peer = %self.to, "learned peer link idle; closing it");
                    return Ok(());
                }
                closed = link.reader.read(&mut probe) => {
                    let said = closed?;
                    if said > 0 {
                        let why = String::from_utf8_lossy(&probe[..said]);
                        if learned && self.introductions.has_members() {
                            // Not a member in this node's configuration (a removed node whose
                            // view is out of date, say): its advice is not for an operator
                            // of this node. (A joining node, with no configuration yet,
                            // reaches every member this way: their refusals are.)
                            debug!(peer = %self.to, %why, "a node outside the configuration refuses this node");
                        } else {
                            warn!(peer = %self.to, %why, "the peer refuses this node");
                        }
                    }
                    return Err(std::io::ErrorKind::ConnectionAborted.into());
                }
                message = queue.recv(), if room => match message {
                    Some(message) => {
                        let frame = Bytes::from(serde_json::to_vec(&message)?);
                        if frame.len() > self.config.max_frame_bytes {
                            // The peer would refuse it and the link would end, losing what
                            // is queued behind it. Raft tolerates a lost message.
                            warn!(peer = %self.to, bytes = frame.len(), "a message over the frame limit was dropped");
                        } else {
                            encoder.encode(frame, link.frames.write_buffer_mut())?;
                        }
                        if learned {
                            idle.as_mut().reset(tokio::time::Instant::now() + self.config.learned_idle);
                        }
                    }
                    None => return Ok(()),
                },
                flushed = SinkExt::<Bytes>::flush(&mut link.frames), if !link.frames.write_buffer().is_empty() => flushed?,
            }
        }
    }

    fn codec(&self) -> LengthDelimitedCodec {
        LengthDelimitedCodec::builder()
            .max_frame_length(self.config.max_frame_bytes)
            .new_codec()
    }
}

/// The largest hello a peer may send: it names a node and an address.
const MAX_HELLO_BYTES: usize = 4 << 10;

/// Makes a peer socket notice a dead or cut-off peer within seconds instead of the
/// kernel's minutes: keepalive probes on an idle link, and (on Linux) at most
/// [`PEER_USER_TIMEOUT`] for sent data to stay unacknowledged, or a window to stay closed,
/// or an idle peer to stay silent to probes. After a partition that silently dropped
/// packets, the link fails, reconnects with backoff, and is back within seconds of the
/// network; without this it stayed stuck until TCP's retransmission timer (which doubles up
/// to 120 s) next fired, or for about 15 minutes until TCP gave up, and a cut-off peer's
/// inbound readers were never closed. Best effort: an option the system refuses is logged
/// and left out, and the link works as before.
fn notice_dead_peers(stream: &TcpStream) {
    use rustix::net::sockopt;
    let second = Duration::from_secs(1);
    let applied = sockopt::set_socket_keepalive(stream, true)
        .and_then(|()| sockopt::set_tcp_keepidle(stream, second))
        .and_then(|()| sockopt::set_tcp_keepintvl(stream, second));
    #[cfg(target_os = "linux")]
    let applied = applied.and_then(|()| {
        let ms = PEER_USER_TIMEOUT.as_millis() as u32;
        sockopt::set_tcp_user_timeout(stream, ms)
    });
    if let Err(error) = applied {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            warn!(%error, "cannot set keepalive on peer sockets; a silently cut link will be noticed late");
        });
    }
}

/// How long a peer link may go without its data acknowledged, its receive window open, or an
/// answer to keepalive probes before it is dropped and dialled again. Well above any stall
/// of a live node's task (the longest seen: about half a second, BENCHMARKS.md), since a
/// receiver that stops reading closes its window: it must be a dead or cut-off one.
const PEER_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `stream` is a peer connection: its first byte is [`PEER_PREAMBLE`]. Waits for that
/// byte without consuming it.
pub async fn is_peer(stream: &TcpStream) -> std::io::Result<bool> {
    let mut first = [0u8; 1];
    let n = stream.peek(&mut first).await?;
    Ok(n == 1 && first[0] == PEER_PREAMBLE)
}

/// Why an inbound peer connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum InboundError {
    /// The socket failed or a frame was too long.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The first frame was not a valid [`Hello`] of our version.
    #[error("bad hello: {0}")]
    Hello(String),
    /// A frame did not hold a valid message.
    #[error("undecodable message from {from}: {error}")]
    Message {
        /// The sender.
        from: NodeId,
        /// What was wrong.
        error: serde_json::Error,
    },
}

/// Reads one inbound peer connection (preamble, hello, messages) and hands each message to
/// `inbox` as `(sender, message)`, until the peer closes it, it breaks, `stop` is cancelled
/// or the inbox is gone. The sender's address, from its hello, goes into `book`.
pub async fn receive<M: DeserializeOwned>(
    mut stream: TcpStream,
    inbox: mpsc::Sender<(NodeId, M)>,
    book: &AddressBook,
    config: TransportConfig,
    stop: CancellationToken,
) -> Result<(), InboundError> {
    notice_dead_peers(&stream);
    // The preamble and hello, small and within the connect timeout: a connection that sends
    // a byte and then nothing must not hold a reader (and shutdown, which waits for the
    // readers) for ever, nor reserve a full frame's memory before it has said who it is.
    let greeting = async {
        let mut preamble = [0u8; 1];
        stream.read_exact(&mut preamble).await?;
        if preamble[0] != PEER_PREAMBLE {
            return Err(InboundError::Hello("not a peer connection".into()));
        }
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(MAX_HELLO_BYTES)
            .new_codec();
        let mut frames = FramedRead::new(stream, codec);
        match frames.next().await {
            Some(frame) => {
                let hello: Hello = serde_json::from_slice(&frame?)
                    .map_err(|e| InboundError::Hello(e.to_string()))?;
                Ok(Some((hello, frames)))
            }
            None => Ok(None),
        }
    };
    let (hello, mut frames) = tokio::select! {
        _ = stop.cancelled() => return Ok(()),
        greeted = tokio::time::timeout(config.connect_timeout, greeting) => match greeted {
            Ok(greeted) => match greeted? {
                Some(greeted) => greeted,
                None => return Ok(()),
            },
            Err(_) => return Err(InboundError::Hello("no hello within the connect timeout".into())),
        },
    };
    frames
        .decoder_mut()
        .set_max_frame_length(config.max_frame_bytes);
    if hello.version != PROTOCOL_VERSION {
        return Err(InboundError::Hello(format!(
            "peer {} speaks version {}, we speak {PROTOCOL_VERSION}",
            hello.from, hello.version
        )));
    }
    let from = hello.from;
    let foreign = || {
        let ours = book.cluster();
        (!ours.admits(hello.cluster)).then(|| {
            InboundError::Hello(format!(
                "node {from} at {} belongs to another cluster ({}, this node's is {ours})",
                hello.addr, hello.cluster
            ))
        })
    };
    if let Some(refused) = foreign() {
        return Err(refusing(frames.get_mut(), refused).await);
    }
    let mut checked = Checked::default();
    if let Err(refused) = book.hold(from, hello.incarnation, &mut checked).await {
        return Err(refusing(frames.get_mut(), refused).await);
    }
    debug!(%from, addr = %hello.addr, "peer connected");
    book.learn(from, hello.addr.clone());
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            frame = frames.next() => match frame {
                Some(frame) => frame?,
                None => return Ok(()),
            },
        };
        // A node that did not know its cluster at the hello (one joining) may have learned
        // it since: a connection from another cluster ends then.
        if let Some(refused) = foreign() {
            return Err(refusing(frames.get_mut(), refused).await);
        }
        // Made a member since the hello (the connection of a node being added, say, opened
        // before this node knew of the change): checked now.
        if let Err(refused) = book.hold(from, hello.incarnation, &mut checked).await {
            return Err(refusing(frames.get_mut(), refused).await);
        }
        let message = serde_json::from_slice(&frame)
            .map_err(|error| InboundError::Message { from, error })?;
        if inbox.send((from, message)).await.is_err() {
            return Ok(());
        }
    }
}

/// What a connection's reader last held its sender to ([`Introductions::hold`]).
#[derive(Debug, Default)]
struct Checked {
    /// The version of the members it looked at.
    version: Option<u64>,
    /// The change that made the sender a member, when it was one then.
    since: Option<u64>,
}

/// The most of a refusal's reason sent back to the refused node.
const MAX_REFUSAL_BYTES: usize = 1024;

/// Tells the node at the other end of `stream` why this node refuses it (another cluster,
/// a lost data directory), on the direction it otherwise never reads, so that its own log
/// says so too; best effort, within a second. Returns `refused`.
async fn refusing(stream: &mut TcpStream, refused: InboundError) -> InboundError {
    let why = refused.to_string();
    let mut end = why.len().min(MAX_REFUSAL_BYTES);
    while !why.is_char_boundary(end) {
        end -= 1;
    }
    let said = tokio::time::timeout(
        Duration::from_secs(1),
        stream.write_all(&why.as_bytes()[..end]),
    );
    let _ = said.await;
    refused
}

/// Logs why an inbound peer connection ended, at a level that fits.
pub fn log_inbound_end(result: Result<(), InboundError>) {
    match result {
        Ok(()) => debug!("peer connection closed"),
        Err(InboundError::Io(error)) => debug!(%error, "peer connection broke"),
        Err(error) => warn!(%error, "peer connection refused"),
    }
}
