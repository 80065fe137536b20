//! The peer transport on its own: it reconnects to a peer that comes up late, delivers in
//! order over one link, and refuses connections that do not speak its handshake.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use kv_server::protocol::NodeId;
use replication_naive::incarnation::{Incarnation, Incarnations};
use replication_naive::transport::{
    self, AddressBook, ClusterId, Hello, PEER_PREAMBLE, Transport, TransportConfig,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::{FramedWrite, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;

fn fast() -> TransportConfig {
    TransportConfig {
        min_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
        ..TransportConfig::default()
    }
}

/// Node 1's transport, with node 2 at `addr` its only peer.
fn node_1_sending_to<M: serde::Serialize + Send + 'static>(
    addr: std::net::SocketAddr,
    config: TransportConfig,
    stop: &CancellationToken,
) -> Transport<M> {
    let peers = BTreeMap::from([
        (NodeId(1), "unused:1".to_owned()),
        (NodeId(2), addr.to_string()),
    ]);
    Transport::start(NodeId(1), "unused:1".into(), &peers, config, stop.clone())
}

/// Accepts peer connections on `listener` and forwards their messages to the returned inbox.
fn receiver(listener: TcpListener, stop: CancellationToken) -> mpsc::Receiver<(NodeId, u64)> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let (tx, stop) = (tx.clone(), stop.clone());
            tokio::spawn(async move {
                assert!(transport::is_peer(&stream).await.unwrap());
                let book = AddressBook::default();
                let _ = transport::receive(stream, tx, &book, fast(), stop).await;
            });
        }
    });
    rx
}

#[tokio::test]
async fn messages_queued_while_a_peer_is_down_arrive_in_order_once_it_is_up() {
    // Reserve a port, free it, and point the transport at it before anyone listens.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let stop = CancellationToken::new();
    let mut sender: Transport<u64> = node_1_sending_to(addr, fast(), &stop);
    for n in 0..100 {
        sender.send(NodeId(2), n);
    }
    sender.send(NodeId(9), 999); // unknown peer: dropped, no panic

    let mut inbox = receiver(TcpListener::bind(addr).await.unwrap(), stop.clone());
    for n in 0..100 {
        assert_eq!(inbox.recv().await, Some((NodeId(1), n)));
    }
    stop.cancel();
}

/// Opens a peer connection to `addr` as node 5 listening at `127.0.0.1:5`, announcing
/// protocol `version`.
async fn hello_from_5(
    addr: std::net::SocketAddr,
    version: u32,
) -> FramedWrite<TcpStream, LengthDelimitedCodec> {
    hello_from(addr, version, NodeId(5), "127.0.0.1:5".into()).await
}

async fn hello_from(
    addr: std::net::SocketAddr,
    version: u32,
    from: NodeId,
    from_addr: String,
) -> FramedWrite<TcpStream, LengthDelimitedCodec> {
    let hello = Hello {
        version,
        from,
        addr: from_addr,
        cluster: ClusterId::UNKNOWN,
        incarnation: Incarnation::NONE,
    };
    say(addr, &hello).await
}

/// Connects to `addr` and says `hello`.
async fn say(
    addr: std::net::SocketAddr,
    hello: &Hello,
) -> FramedWrite<TcpStream, LengthDelimitedCodec> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[PEER_PREAMBLE]).await.unwrap();
    let mut frames = FramedWrite::new(stream, LengthDelimitedCodec::new());
    frames
        .send(Bytes::from(serde_json::to_vec(&hello).unwrap()))
        .await
        .unwrap();
    frames
}

#[tokio::test]
async fn a_peer_with_another_protocol_version_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshake = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (tx, _rx) = mpsc::channel::<(NodeId, u64)>(1);
        let book = AddressBook::default();
        transport::receive(stream, tx, &book, fast(), CancellationToken::new()).await
    });
    let _connection = hello_from_5(addr, transport::PROTOCOL_VERSION + 1).await;
    let error = handshake.await.unwrap().unwrap_err();
    assert!(error.to_string().contains("version"), "{error}");
}

/// Node 1 of cluster `sender`, linked to node 2 of cluster `receiver`, and node 2's reader of
/// the connection once node 1 has sent 42: what it hands on, and how it ended.
struct Across {
    node1: Transport<u64>,
    node2: Transport<u64>,
    heard: mpsc::Receiver<(NodeId, u64)>,
    reader: tokio::task::JoinHandle<Result<(), transport::InboundError>>,
    stop: CancellationToken,
}

async fn across(sender: ClusterId, receiver: ClusterId) -> Across {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node2_addr = listener.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let node2: Transport<u64> = Transport::start(
        NodeId(2),
        node2_addr.clone(),
        &BTreeMap::new(),
        fast(),
        stop.clone(),
    );
    node2.set_cluster(receiver);
    let mut node1: Transport<u64> = Transport::start(
        NodeId(1),
        "127.0.0.1:1".into(),
        &BTreeMap::new(),
        fast(),
        stop.clone(),
    );
    node1.set_cluster(sender);
    node1.set_peers(&BTreeMap::from([(NodeId(2), node2_addr)]));
    node1.send(NodeId(2), 42);
    let (stream, _) = guard("a connection", listener.accept()).await.unwrap();
    let (tx, heard) = mpsc::channel(8);
    let book = node2.address_book();
    let reader = tokio::spawn({
        let stop = stop.clone();
        async move { transport::receive(stream, tx, &book, fast(), stop).await }
    });
    Across {
        node1,
        node2,
        heard,
        reader,
        stop,
    }
}

impl Across {
    /// The next message node 2 hands on, or why its reader ended without one.
    async fn next(&mut self) -> Result<(NodeId, u64), String> {
        match guard("a message or a refusal", self.heard.recv()).await {
            Some(message) => Ok(message),
            None => Err(guard("the reader's end", &mut self.reader)
                .await
                .unwrap()
                .expect_err("the reader ended without a message and without an error")
                .to_string()),
        }
    }
}

/// Node 1 of cluster `sender` sends 42 to node 2 of cluster `receiver`: what node 2's reader
/// hands on, or why it refused the connection.
async fn sent_across(sender: ClusterId, receiver: ClusterId) -> Result<(NodeId, u64), String> {
    let mut link = across(sender, receiver).await;
    let heard = link.next().await;
    link.stop.cancel();
    heard
}

#[tokio::test]
async fn a_connection_admitted_before_the_node_knew_its_cluster_ends_once_it_knows_another() {
    // Node 2 is joining: it knows no cluster yet, and admits node 1's. Once its first
    // configuration names another, node 1's next message ends the connection.
    let mut link = across(ClusterId(7), ClusterId::UNKNOWN).await;
    assert_eq!(link.next().await, Ok((NodeId(1), 42)));
    link.node2.set_cluster(ClusterId(8));
    link.node1.send(NodeId(2), 43);
    let refused = link.next().await.unwrap_err();
    assert!(refused.contains("another cluster"), "{refused}");
    link.stop.cancel();
}

/// Node 2 (which keeps incarnations in `dir`) reading a connection from node 1 running as
/// `incarnation`: node 2's transport, node 1's end, and what node 2 hands on or why it ended.
async fn from_node_1_as(
    node2: &Transport<u64>,
    incarnation: u64,
) -> (
    FramedWrite<TcpStream, LengthDelimitedCodec>,
    mpsc::Receiver<(NodeId, u64)>,
    tokio::task::JoinHandle<Result<(), transport::InboundError>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hello = Hello {
        version: transport::PROTOCOL_VERSION,
        from: NodeId(1),
        addr: "127.0.0.1:1".into(),
        cluster: ClusterId::UNKNOWN,
        incarnation: Incarnation(incarnation),
    };
    let node1 = say(listener.local_addr().unwrap(), &hello).await;
    let (stream, _) = guard("a connection", listener.accept()).await.unwrap();
    let (tx, rx) = mpsc::channel(8);
    let book = node2.address_book();
    let reader = tokio::spawn(async move {
        transport::receive(stream, tx, &book, fast(), CancellationToken::new()).await
    });
    (node1, rx, reader)
}

#[tokio::test]
async fn a_member_back_with_another_data_directory_is_refused_even_if_it_connected_first() {
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let node2: Transport<u64> = Transport::start(
        NodeId(2),
        "127.0.0.1:2".into(),
        &BTreeMap::new(),
        fast(),
        stop.clone(),
    );
    node2.set_incarnations(Arc::new(Incarnations::open(dir.path()).unwrap()));
    // Node 1 connects before node 2 knows it as a member (node 2 is joining, say): admitted
    // unchecked; once node 2's configuration names it, its next message records it.
    let (mut node1, mut heard, _reader) = from_node_1_as(&node2, 7).await;
    node1.send(Bytes::from_static(b"42")).await.unwrap();
    assert_eq!(guard("42", heard.recv()).await, Some((NodeId(1), 42)));
    node2.set_members(BTreeMap::from([(NodeId(1), 1)]));
    node1.send(Bytes::from_static(b"43")).await.unwrap();
    assert_eq!(guard("43", heard.recv()).await, Some((NodeId(1), 43)));
    // Back with another data directory: refused, and told why.
    let (mut node1, mut heard, reader) = from_node_1_as(&node2, 8).await;
    assert_eq!(guard("the refusal", heard.recv()).await, None);
    let refused = guard("the reader's end", reader)
        .await
        .unwrap()
        .unwrap_err()
        .to_string();
    assert!(refused.contains("another data directory"), "{refused}");
    let mut told = String::new();
    guard("the reason", node1.get_mut().read_to_string(&mut told))
        .await
        .unwrap();
    assert_eq!(told, refused);
    // Made a member again by a later change: its new directory is taken.
    node2.set_members(BTreeMap::from([(NodeId(1), 9)]));
    let (mut node1, mut heard, _reader) = from_node_1_as(&node2, 8).await;
    node1.send(Bytes::from_static(b"44")).await.unwrap();
    assert_eq!(guard("44", heard.recv()).await, Some((NodeId(1), 44)));
    stop.cancel();
}

#[tokio::test]
async fn a_peer_of_another_cluster_is_refused() {
    let refused = sent_across(ClusterId(7), ClusterId(8)).await.unwrap_err();
    assert!(refused.contains("another cluster"), "{refused}");
    for (sender, receiver) in [
        (ClusterId(7), ClusterId(7)),
        (ClusterId::UNKNOWN, ClusterId(7)),
        (ClusterId(7), ClusterId::UNKNOWN),
    ] {
        assert_eq!(
            sent_across(sender, receiver).await,
            Ok((NodeId(1), 42)),
            "from {sender} to {receiver}"
        );
    }
}

/// The result of `receive` on the server side of a connection to which `greet` writes
/// its first bytes and then waits (the connection stays open until stopped).
async fn received_after(
    greet: &'static [u8],
    stop: CancellationToken,
) -> Result<(), transport::InboundError> {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(greet).await.unwrap();
    let (stream, _) = listener.accept().await.unwrap();
    let (tx, _rx) = mpsc::channel::<(NodeId, u64)>(1);
    let book = AddressBook::default();
    let received = transport::receive(stream, tx, &book, fast(), stop).await;
    drop(client);
    received
}

#[tokio::test]
async fn a_connection_that_never_says_hello_is_refused_within_the_connect_timeout() {
    // A preamble and then nothing (or half a hello): the reader must end, or shutdown,
    // which waits for every reader, would hang.
    for greet in [&[PEER_PREAMBLE][..], &[PEER_PREAMBLE, 0, 0]] {
        let received = received_after(greet, CancellationToken::new());
        let error = tokio::time::timeout(10 * fast().connect_timeout, received)
            .await
            .expect("the reader waited for a hello for ever")
            .unwrap_err();
        assert!(error.to_string().contains("no hello"), "{error}");
    }
    // Stopping ends it at once.
    let stop = CancellationToken::new();
    stop.cancel();
    assert!(received_after(&[PEER_PREAMBLE], stop).await.is_ok());
}

#[tokio::test]
async fn a_hello_frame_larger_than_a_hello_is_refused_at_once() {
    // Five bytes announcing a 60 MiB frame: refused before any of it is awaited or
    // reserved, not after the connect timeout.
    let mut greet = vec![PEER_PREAMBLE];
    greet.extend_from_slice(&(60u32 << 20).to_be_bytes());
    let greet: &'static [u8] = greet.leak();
    let received = received_after(greet, CancellationToken::new());
    let error = tokio::time::timeout(fast().connect_timeout / 2, received)
        .await
        .expect("the reader waited for a 60 MiB hello")
        .unwrap_err();
    assert!(matches!(error, transport::InboundError::Io(_)), "{error}");
}

#[tokio::test]
async fn a_message_over_the_frame_limit_is_dropped_and_the_link_goes_on() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = TransportConfig {
        max_frame_bytes: 100,
        ..fast()
    };
    let stop = CancellationToken::new();
    let mut sender: Transport<String> = node_1_sending_to(addr, config, &stop);
    sender.send(NodeId(2), "x".repeat(500));
    sender.send(NodeId(2), "small".to_owned());
    let (stream, _) = listener.accept().await.unwrap();
    let (tx, mut inbox) = mpsc::channel::<(NodeId, String)>(8);
    let book = AddressBook::default();
    let receiving = tokio::spawn({
        let stop = stop.clone();
        async move { transport::receive(stream, tx, &book, config, stop).await }
    });
    // On the first connection (the only one accepted): the link did not end over the
    // large message.
    let small = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
        .await
        .expect("the message after the large one never came on the first connection");
    assert_eq!(small, Some((NodeId(1), "small".to_owned())));
    stop.cancel();
    assert!(receiving.await.unwrap().is_ok());
}

#[tokio::test]
async fn a_peer_that_accepts_and_closes_at_once_is_redialled_ever_more_slowly() {
    // A peer that refuses us after accepting (another protocol version, say): backing off
    // must not start over at each connection, or the link redials every few milliseconds.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let config = TransportConfig {
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_secs(1),
        ..TransportConfig::default()
    };
    let stop = CancellationToken::new();
    let mut sender: Transport<u64> = node_1_sending_to(addr, config, &stop);
    sender.send(NodeId(2), 1);
    let mut accepted = 0;
    let _ = tokio::time::timeout(Duration::from_millis(600), async {
        loop {
            // Takes the preamble and the hello, then closes: the link was up.
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted += 1;
            let mut greeting = [0u8; 64];
            let _ = stream.read(&mut greeting).await;
            drop(stream);
        }
    })
    .await;
    stop.cancel();
    // Pauses of at least 5, 10, 20, 40, 80, 160 and 320 ms (half of each backoff, the
    // jitter's floor): eight connections at most in 600 ms. Starting over each time, it
    // made dozens.
    assert!(
        (2..=8).contains(&accepted),
        "{accepted} connections in 600 ms"
    );
}

#[tokio::test]
async fn an_undecodable_message_closes_the_connection_with_an_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (tx, _rx) = mpsc::channel::<(NodeId, u64)>(1);
        let book = AddressBook::default();
        transport::receive(stream, tx, &book, fast(), CancellationToken::new()).await
    });
    let mut frames = hello_from_5(addr, transport::PROTOCOL_VERSION).await;
    frames
        .send(Bytes::from_static(b"\"not a number\""))
        .await
        .unwrap();
    let error = receiving.await.unwrap().unwrap_err();
    assert!(
        matches!(
            error,
            transport::InboundError::Message {
                from: NodeId(5),
                ..
            }
        ),
        "{error}"
    );
}

#[tokio::test]
async fn a_peer_that_never_reads_cannot_hold_up_stopping() {
    // The peer accepts and then reads nothing: writes to it block once the socket buffers
    // fill. Stopping must still end the link at once.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move { silent.accept().await.unwrap() });
    let stop = CancellationToken::new();
    let mut sender: Transport<Vec<u8>> = node_1_sending_to(addr, fast(), &stop);
    for _ in 0..64 {
        sender.send(NodeId(2), vec![7; 1 << 20]);
    }
    let _connection = held.await.unwrap();
    stop.cancel();
    // Guard only: a link stuck in a write would never end.
    tokio::time::timeout(Duration::from_secs(10), sender.stopped())
        .await
        .expect("a link was stuck writing");
}

/// Awaits `future`, failing the test if it takes longer than 10 s: a guard against a bug
/// that would hang, never a wait for an event.
async fn guard<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

/// Node 1, which knows no peers (it is joining, say), after node 7 has connected to it and
/// said in its hello where it listens.
struct Introduced {
    sender: Transport<u64>,
    node7: TcpListener,
    node7_addr: String,
    stop: CancellationToken,
    _hello: FramedWrite<TcpStream, LengthDelimitedCodec>,
}

async fn introduced(config: TransportConfig) -> Introduced {
    let node1 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node1_addr = node1.local_addr().unwrap();
    let node7 = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let node7_addr = node7.local_addr().unwrap().to_string();
    let stop = CancellationToken::new();
    let mut sender: Transport<u64> = Transport::start(
        NodeId(1),
        node1_addr.to_string(),
        &BTreeMap::new(),
        config,
        stop.clone(),
    );
    sender.send(NodeId(7), 1); // unknown yet: dropped
    let book = sender.address_book();
    let (tx, mut from7) = mpsc::channel::<(NodeId, u64)>(8);
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let (stream, _) = node1.accept().await.unwrap();
            transport::receive(stream, tx, &book, config, stop).await
        }
    });
    let mut hello = hello_from(
        node1_addr,
        transport::PROTOCOL_VERSION,
        NodeId(7),
        node7_addr.clone(),
    )
    .await;
    hello.send(Bytes::from_static(b"42")).await.unwrap();
    // The hello is in the address book before its connection's first message is handed on.
    assert_eq!(from7.recv().await, Some((NodeId(7), 42)));
    Introduced {
        sender,
        node7,
        node7_addr,
        stop,
        _hello: hello,
    }
}

/// Accepts one peer connection on `listener` and hands its messages to the returned inbox,
/// which closes when the connection does; cancelling the returned token closes it from
/// this end.
async fn accept_one(listener: &TcpListener) -> (mpsc::Receiver<(NodeId, u64)>, CancellationToken) {
    let (stream, _) = guard("a connection", listener.accept()).await.unwrap();
    let (tx, rx) = mpsc::channel(64);
    let close = CancellationToken::new();
    tokio::spawn({
        let close = close.clone();
        async move {
            let book = AddressBook::default();
            transport::receive(stream, tx, &book, fast(), close).await
        }
    });
    (rx, close)
}

/// [`introduced`], after node 1 has answered node 7 once (the message 2) over a learned
/// link: node 7's end of that connection, and what closes it.
async fn answered(
    config: TransportConfig,
) -> (Introduced, mpsc::Receiver<(NodeId, u64)>, CancellationToken) {
    let mut node1 = introduced(config).await;
    node1.sender.send(NodeId(7), 2);
    let (mut inbox, close) = accept_one(&node1.node7).await;
    assert_eq!(guard("a message", inbox.recv()).await, Some((NodeId(1), 2)));
    (node1, inbox, close)
}

#[tokio::test]
async fn a_peer_known_only_from_its_hello_can_be_answered() {
    // `answered` checks the message arrives.
    let (node1, _inbox, _close) = answered(fast()).await;
    node1.stop.cancel();
}

#[tokio::test]
async fn a_learned_link_ends_with_its_connection_and_the_next_message_opens_another() {
    // Were it to reconnect like a configured link, a removed node that has gone would be
    // retried for ever.
    let (mut node1, _inbox, close) = answered(fast()).await;
    close.cancel();
    guard("the link's end", node1.sender.link_ended(NodeId(7))).await;
    node1.sender.send(NodeId(7), 3);
    let (mut inbox, _close) = accept_one(&node1.node7).await;
    assert_eq!(guard("a message", inbox.recv()).await, Some((NodeId(1), 3)));
    node1.stop.cancel();
}

#[tokio::test]
async fn a_learned_link_with_nothing_to_send_closes_its_connection() {
    // A removed node that is still up but has stopped asking for pre-votes: the link that
    // answered it does not stay open for ever.
    let config = TransportConfig {
        learned_idle: Duration::from_millis(50),
        ..fast()
    };
    let (node1, mut inbox, _close) = answered(config).await;
    guard("the link's end", node1.sender.link_ended(NodeId(7))).await;
    assert_eq!(guard("the connection's end", inbox.recv()).await, None);
    node1.stop.cancel();
}

#[tokio::test]
async fn a_new_configuration_without_the_peer_leaves_its_learned_link_alone() {
    // A joining node replays configurations older than its leader's arrival: the link it
    // answers that leader over must not be torn down (and its queue lost) by each of them.
    let (mut node1, mut inbox, _close) = answered(fast()).await;
    node1
        .sender
        .set_peers(&BTreeMap::from([(NodeId(1), "unused:1".to_owned())]));
    node1.sender.send(NodeId(7), 3);
    // Over the same connection.
    assert_eq!(guard("a message", inbox.recv()).await, Some((NodeId(1), 3)));
    node1.stop.cancel();
}

#[tokio::test]
async fn a_learned_peer_that_is_configured_gets_a_link_that_reconnects() {
    let (mut node1, _inbox, _close) = answered(fast()).await;
    // Same address, now configured: the learned link gives way to a configured one.
    let peers = BTreeMap::from([(NodeId(7), node1.node7_addr.clone())]);
    node1.sender.set_peers(&peers);
    let (_inbox, close) = accept_one(&node1.node7).await;
    close.cancel();
    // It connects again by itself, with nothing to send.
    let (mut inbox, _close) = accept_one(&node1.node7).await;
    node1.sender.send(NodeId(7), 3);
    assert_eq!(guard("a message", inbox.recv()).await, Some((NodeId(1), 3)));
    node1.stop.cancel();
}
