//! The peer transport on its own: it reconnects to a peer that comes up late, delivers in
//! order over one link, and refuses connections that do not speak its handshake.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use futures::SinkExt;
use kv_server::protocol::NodeId;
use replication_naive::transport::{self, Hello, PEER_PREAMBLE, Transport, TransportConfig};
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
                let _ = transport::receive(stream, tx, fast(), stop).await;
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
    let sender: Transport<u64> = Transport::start(NodeId(1), &peers, fast(), stop.clone());
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

/// Opens a peer connection to `addr` as node 5, announcing protocol `version`.
async fn hello_from_5(
    addr: std::net::SocketAddr,
    version: u32,
) -> FramedWrite<TcpStream, LengthDelimitedCodec> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(&[PEER_PREAMBLE]).await.unwrap();
    let mut frames = FramedWrite::new(stream, LengthDelimitedCodec::new());
    let hello = Hello {
        version,
        from: NodeId(5),
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
        transport::receive(stream, tx, fast(), CancellationToken::new()).await
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
        transport::receive(stream, tx, fast(), CancellationToken::new()).await
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
    let sender: Transport<Vec<u8>> = Transport::start(NodeId(1), &peers, fast(), stop.clone());
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
