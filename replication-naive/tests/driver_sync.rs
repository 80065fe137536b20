//! The driver on real sockets: a node's answer that waits for its sync comes once the sync
//! has finished, a failed sync stops the node loudly instead of answering, a client whose
//! request the node never answers hears back when the request timeout runs out, and a
//! request in flight when the node is asked to stop is answered with what a peer says
//! during the drain.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_server::protocol::{NodeId, Op, Reply};
use replication_naive::driver::{self, DriverConfig};
use replication_naive::node::{Node, Outbox, RequestTag, SyncJob};
use replication_naive::transport::{Transport, TransportConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// A node whose every request is a change it answers only once a sync has covered it, on a
/// disk whose syncs fail when `broken`.
struct Disk {
    broken: bool,
    /// Requests changed since the last sync started.
    unsynced: Vec<RequestTag>,
    /// Requests the sync under way covers.
    syncing: Vec<RequestTag>,
}

impl Node for Disk {
    type Message = u8;

    fn id(&self) -> NodeId {
        NodeId(1)
    }

    fn tick(&mut self, _out: &mut Outbox<u8>) {}

    fn step(&mut self, _from: NodeId, _message: u8, _out: &mut Outbox<u8>) {}

    fn request(&mut self, tag: RequestTag, _op: Op, _out: &mut Outbox<u8>) {
        self.unsynced.push(tag);
    }

    fn start_sync(&mut self) -> Option<SyncJob> {
        if self.unsynced.is_empty() {
            return None;
        }
        self.syncing = std::mem::take(&mut self.unsynced);
        let broken = self.broken;
        Some(Box::new(move || {
            if broken {
                Err(std::io::Error::other("injected: no space left on device"))
            } else {
                Ok(())
            }
        }))
    }

    fn synced(&mut self, result: std::io::Result<()>, out: &mut Outbox<u8>) {
        if let Err(error) = result {
            panic!("cannot sync ({error}); stopping");
        }
        for tag in self.syncing.drain(..) {
            out.reply(tag, Ok(Reply::Done));
        }
    }
}

/// A node that never answers; it follows the leader at `leader`, if any.
#[derive(Default)]
struct Silent {
    leader: Option<String>,
}

impl Node for Silent {
    type Message = u8;

    fn id(&self) -> NodeId {
        NodeId(1)
    }

    fn tick(&mut self, _out: &mut Outbox<u8>) {}

    fn step(&mut self, _from: NodeId, _message: u8, _out: &mut Outbox<u8>) {}

    fn request(&mut self, _tag: RequestTag, _op: Op, _out: &mut Outbox<u8>) {}

    fn leader_elsewhere(&self) -> Option<&str> {
        self.leader.as_deref()
    }
}

/// A [`Disk`] node whose syncs fail when `broken`.
fn disk(broken: bool) -> Disk {
    Disk {
        broken,
        unsynced: Vec::new(),
        syncing: Vec::new(),
    }
}

const PUT: &str = r#"{"id":1,"op":"put","key":"k","value":"v"}"#;

/// Runs `node`, sends it the request `line`, and returns its answer line (if any) and how
/// the driver ended.
async fn one_request<N: Node + Send + 'static>(
    node: N,
    config: DriverConfig,
    line: &str,
) -> (String, Result<(), driver::NodeFailed>) {
    let (mut answers, ended) = requests(node, config, &[line]).await;
    (answers.remove(0), ended)
}

/// Runs `node`, sends it the requests `lines` one after the other on one connection, each
/// once the one before is answered, and returns the answer lines and how the driver ended.
async fn requests<N: Node + Send + 'static>(
    node: N,
    config: DriverConfig,
    lines: &[&str],
) -> (Vec<String>, Result<(), driver::NodeFailed>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peers = BTreeMap::from([(NodeId(1), addr.clone())]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(driver::run(node, listener, peers, config, async {
        let _ = stopped.await;
    }));
    let mut reader = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    let mut answers = Vec::new();
    for line in lines {
        reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut answer))
            .await
            .expect("the node answers or hangs up")
            .unwrap();
        answers.push(answer);
    }
    let _ = stop.send(());
    let ended = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the driver ends")
        .unwrap();
    (answers, ended)
}

#[tokio::test]
async fn an_answer_that_waits_for_a_sync_comes_once_it_has_finished() {
    let (answer, ended) = one_request(disk(false), DriverConfig::default(), PUT).await;
    assert!(answer.contains("\"ok\":true"), "{answer}");
    assert!(ended.is_ok());
}

#[tokio::test]
async fn a_failed_sync_stops_the_node_and_answers_nothing_as_done() {
    let (answer, ended) = one_request(disk(true), DriverConfig::default(), PUT).await;
    assert!(!answer.contains("\"ok\":true"), "{answer}");
    let failure = ended.expect_err("the node stops").to_string();
    assert!(failure.contains("no space left"), "{failure}");
}

/// A driver that gives up on the node's answer after 50 ms.
fn impatient() -> DriverConfig {
    DriverConfig {
        request_timeout: Duration::from_millis(50),
        ..DriverConfig::default()
    }
}

#[tokio::test]
async fn a_change_the_node_never_answers_times_out_as_of_unknown_outcome() {
    let (answer, ended) = one_request(Silent::default(), impatient(), PUT).await;
    assert!(answer.contains(r#""error":"timeout""#), "{answer}");
    assert!(answer.contains("no answer within 50 ms"), "{answer}");
    assert!(ended.is_ok());
}

#[tokio::test]
async fn a_read_the_node_never_answers_is_unavailable_nothing_changed() {
    let get = r#"{"id":1,"op":"get","key":"k"}"#;
    let (answer, ended) = one_request(Silent::default(), impatient(), get).await;
    assert!(answer.contains(r#""error":"unavailable""#), "{answer}");
    assert!(ended.is_ok());
}

#[tokio::test]
async fn a_change_forwarded_to_a_leader_that_never_answers_times_out() {
    // The "leader" reads the forwarded request and never answers it.
    let leader = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let leader_addr = leader.local_addr().unwrap().to_string();
    let (forwarded_tx, forwarded) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = leader.accept().await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let _ = forwarded_tx.send(line);
        std::future::pending::<()>().await;
    });
    let node = Silent {
        leader: Some(leader_addr),
    };
    let config = DriverConfig {
        forward_to_leader: true,
        ..impatient()
    };
    // The status request's batch publishes the leader before the node's silence times out,
    // so the membership change after it is forwarded.
    let status = r#"{"id":1,"op":"status"}"#;
    // A membership request's "id" is the node's (the contract's choice).
    let add = r#"{"op":"add_member","id":2,"addr":"127.0.0.1:9"}"#;
    let (answers, ended) = requests(node, config, &[status, add]).await;
    assert!(
        answers[0].contains(r#""error":"unavailable""#),
        "{}",
        answers[0]
    );
    assert!(
        answers[1].contains(r#""error":"timeout""#),
        "{}",
        answers[1]
    );
    assert!(
        answers[1].contains("no answer within 50 ms"),
        "{}",
        answers[1]
    );
    let forwarded = forwarded.await.unwrap();
    assert!(
        forwarded.contains("add_member") && forwarded.contains(r#""forwarded":true"#),
        "{forwarded}"
    );
    assert!(ended.is_ok());
}

/// What a [`Follower`] tells the test.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Message,
    Request,
    HandOff,
}

/// A follower whose requests wait for word from its leader: it answers every waiting
/// request when a peer message arrives, and tells the test what it sees.
struct Follower {
    waiting: Vec<RequestTag>,
    seen: tokio::sync::mpsc::UnboundedSender<Seen>,
}

impl Node for Follower {
    type Message = u8;

    fn id(&self) -> NodeId {
        NodeId(1)
    }

    fn tick(&mut self, _out: &mut Outbox<u8>) {}

    fn step(&mut self, _from: NodeId, _message: u8, out: &mut Outbox<u8>) {
        for tag in self.waiting.drain(..) {
            out.reply(tag, Ok(Reply::Done));
        }
        let _ = self.seen.send(Seen::Message);
    }

    fn request(&mut self, tag: RequestTag, _op: Op, _out: &mut Outbox<u8>) {
        self.waiting.push(tag);
        let _ = self.seen.send(Seen::Request);
    }

    fn hand_off(&mut self, tag: RequestTag, out: &mut Outbox<u8>) {
        out.reply(tag, Ok(Reply::Done));
        let _ = self.seen.send(Seen::HandOff);
    }
}

/// `what`, or a panic after 10 s.
async fn until<F: std::future::Future>(what: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(10), what)
        .await
        .expect("in time")
}

#[tokio::test]
async fn a_request_in_flight_at_shutdown_is_answered_with_what_a_peer_says_during_the_drain() {
    // A follower's relayed write, say: the leader's answer comes over the peer link after
    // the follower began to stop. The drain must still hear it.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let node = Follower {
        waiting: Vec::new(),
        seen: seen_tx,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let peers = BTreeMap::from([(NodeId(1), addr.clone())]);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = DriverConfig::default();
    let run = tokio::spawn(driver::run(node, listener, peers.clone(), config, async {
        let _ = stopped.await;
    }));
    // The leader's link to the node is up before the node stops listening.
    let leader_stop = CancellationToken::new();
    let mut leader = Transport::start(
        NodeId(2),
        "127.0.0.1:9".into(),
        &peers,
        TransportConfig::default(),
        leader_stop.clone(),
    );
    leader.send(NodeId(1), 0);
    assert_eq!(until(seen.recv()).await, Some(Seen::Message));
    let mut client = BufReader::new(TcpStream::connect(&addr).await.unwrap());
    client
        .get_mut()
        .write_all(format!("{PUT}\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(until(seen.recv()).await, Some(Seen::Request));
    let _ = stop.send(());
    assert_eq!(until(seen.recv()).await, Some(Seen::HandOff));
    leader.send(NodeId(1), 1);
    let mut answer = String::new();
    until(client.read_line(&mut answer)).await.unwrap();
    assert!(answer.contains(r#""ok":true"#), "{answer:?}");
    assert!(until(run).await.unwrap().is_ok());
    leader_stop.cancel();
    leader.stopped().await;
}
