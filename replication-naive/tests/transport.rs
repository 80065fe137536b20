//! The peer transport on its own: it reconnects to a peer that comes up late, delivers in
//! order over one link, and refuses connections that do not speak its handshake.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use kv_server::protocol::NodeId;
use replication_naive::transport::{
    self, AddressBook, Hello, PEER_PREAMBLE, Transport, TransportConfig,
};
use tokio::io::AsyncWriteExt;
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
    let peers = BTreeMap::from([
        (NodeId(1), "unused:1".to_owned()),
        (NodeId(2), addr.to_string()),
    ]);
    let mut sender: Transport<u64> =
        Transport::start(NodeId(1), "unused:1".into(), &peers, fast(), stop.clone());
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
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[PEER_PREAMBLE]).await.unwrap();
    let mut frames = FramedWrite::new(stream, LengthDelimitedCodec::new());
    let hello = Hello {
        version,
        from,
        addr: from_addr,
    };
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
    let peers = BTreeMap::from([
        (NodeId(1), "unused:1".to_owned()),
        (NodeId(2), addr.to_string()),
    ]);
    let mut sender: Transport<Vec<u8>> =
        Transport::start(NodeId(1), "unused:1".into(), &peers, fast(), stop.clone());
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
