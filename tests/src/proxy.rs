//! Network partitions without root: a TCP proxy in front of every node, which the test can
//! tell to cut links between nodes.
//!
//! Each node listens on its own address and advertises its proxy's (`--advertise`), so every
//! peer connection to node `j` goes through proxy `j`. A peer connection starts with the
//! peer preamble and a hello naming its sender (`replication_naive::transport`), so the proxy
//! knows which link it carries: `i → j`. Links the [`Network`] blocks are closed at once
//! (messages in flight are lost, as in a real partition) and refused while blocked; client
//! connections are never cut.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The links between nodes that are cut, as (from, to) pairs: shared by every proxy.
#[derive(Clone)]
pub struct Network {
    blocked: Arc<watch::Sender<BTreeSet<(u64, u64)>>>,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            blocked: Arc::new(watch::Sender::new(BTreeSet::new())),
        }
    }
}

impl Network {
    /// Cuts every link between `side` and the other nodes of `all`, both ways.
    pub fn isolate(&self, side: &[u64], all: &[u64]) {
        self.blocked.send_modify(|blocked| {
            for &a in side {
                for &b in all.iter().filter(|b| !side.contains(b)) {
                    blocked.insert((a, b));
                    blocked.insert((b, a));
                }
            }
        });
    }

    /// Cuts the link from `from` to `to` only: `to` stops hearing `from`.
    pub fn cut(&self, from: u64, to: u64) {
        self.blocked.send_modify(|blocked| {
            blocked.insert((from, to));
        });
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.blocked.send_modify(BTreeSet::clear);
    }

    /// Starts the proxy for node `to`, forwarding to `target`, on a free loopback port;
    /// returns its address. It runs until the runtime stops.
    pub async fn proxy(&self, to: u64, target: String) -> String {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener.local_addr().expect("bound").to_string();
        let network = self.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                tokio::spawn(network.clone().carry(inbound, to, target.clone()));
            }
        });
        addr
    }

    /// Carries one connection to node `to` until either side closes it or its link is cut.
    async fn carry(self, mut inbound: TcpStream, to: u64, target: String) {
        let Ok((head, from)) = read_hello(&mut inbound).await else {
            return;
        };
        let mut blocked = self.blocked.subscribe();
        let is_cut = |set: &BTreeSet<(u64, u64)>| from.is_some_and(|f| set.contains(&(f, to)));
        if is_cut(&blocked.borrow_and_update()) {
            return;
        }
        let Ok(mut outbound) = TcpStream::connect(&target).await else {
            return;
        };
        let _ = (inbound.set_nodelay(true), outbound.set_nodelay(true));
        if outbound.write_all(&head).await.is_err() {
            return;
        }
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
            _ = blocked.wait_for(|set| is_cut(set)) => {}
        }
    }
}

/// Reads the start of a connection: for a peer connection, the preamble and the hello
/// frame (4-byte big-endian length, then JSON with `from`), returned to be forwarded along
/// with the sender's id; for a client, its first byte.
async fn read_hello(stream: &mut TcpStream) -> std::io::Result<(Vec<u8>, Option<u64>)> {
    let first = stream.read_u8().await?;
    if first != replication_naive::transport::PEER_PREAMBLE {
        return Ok((vec![first], None));
    }
    let len = stream.read_u32().await?;
    let mut frame = vec![0; len as usize];
    stream.read_exact(&mut frame).await?;
    let hello: replication_naive::transport::Hello = serde_json::from_slice(&frame)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut head = vec![first];
    head.extend_from_slice(&len.to_be_bytes());
    head.extend_from_slice(&frame);
    Ok((head, Some(hello.from.0)))
}
