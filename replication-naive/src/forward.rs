//! Forwarding a client's membership change or leadership transfer to the leader (used from
//! the limecached stage on): a node that is not the leader, and knows who is
//! ([`crate::node::Node::leader_elsewhere`], which the driver publishes after every batch),
//! sends the request there itself and relays the answer, so a client given any member is
//! served without a redirect. Writes and linearizable reads are not forwarded: the Raft
//! node relays those to its leader over the peer link itself (raft-election's
//! `node/relay.rs`), in batches, and answers from its own state.
//!
//! Each leader address gets one pipelined connection (kv-client's [`Connection`]), shared by
//! every forwarded request. A forwarded request carries
//! `"forwarded":true`, and the receiver answers it itself (`not_leader` if it no longer
//! leads) rather than forward it again: no request goes round in circles, and a client
//! whose request could not be served still hears where to retry.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_client::{Connection, Error};
use kv_server::protocol::{Failure, Op, Outcome, Request};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Requests queued for one leader before new ones are refused with `unavailable`.
const QUEUE: usize = 4096;

/// How long to wait for a connection to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Forwarded = (Op, oneshot::Sender<Outcome>);

/// Whether a follower forwards `op` to the leader: membership changes and leadership
/// transfers, which only the leader serves. Everything else goes to the node: status and
/// stale reads are every node's own to answer, and writes and linearizable reads a node
/// that forwards relays itself.
pub fn is_forwarded(op: &Op) -> bool {
    match op {
        Op::AddMember { .. } | Op::RemoveMember { .. } | Op::TransferLeader { .. } => true,
        Op::Get { .. } | Op::Write { .. } | Op::Status => false,
    }
}

/// The links to the leaders a node has forwarded to.
#[derive(Debug, Default)]
pub struct Forwarder {
    links: Mutex<HashMap<String, mpsc::Sender<Forwarded>>>,
}

impl Forwarder {
    /// Sends `op` to the leader at `leader` and returns its answer. Must run inside a tokio
    /// runtime.
    pub async fn forward(self: Arc<Self>, leader: String, op: Op) -> Outcome {
        let (tx, rx) = oneshot::channel();
        let link = {
            let mut links = self.links.lock().unwrap_or_else(|e| e.into_inner());
            links
                .entry(leader.clone())
                .or_insert_with(|| {
                    let (link, queue) = mpsc::channel(QUEUE);
                    tokio::spawn(carry(leader.clone(), queue));
                    link
                })
                .clone()
        };
        if link.try_send((op, tx)).is_err() {
            return Err(Failure::unavailable(format!(
                "too many requests waiting for the leader at {leader}; retry"
            )));
        }
        rx.await.unwrap_or_else(|_| Err(lost(&leader)))
    }
}

/// The answer for a forwarded request whose connection failed after it was sent: every
/// request forwarded changes the cluster, and whether this one did is unknown.
fn lost(leader: &str) -> Failure {
    Failure::timeout(format!(
        "the connection to the leader at {leader} failed; the change may or may not have taken effect"
    ))
}

/// One leader's link: sends what is queued, pipelined, and hands back the answers in order.
/// Connects on demand, and again after a failure.
async fn carry(leader: String, mut queue: mpsc::Receiver<Forwarded>) {
    let mut connection: Option<Connection> = None;
    let mut waiting: VecDeque<oneshot::Sender<Outcome>> = VecDeque::new();
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((op, reply)) = next else { return };
                if reply.is_closed() {
                    // Its client was answered already (the driver's 5 s): no need to send it,
                    // nor to spend a connect attempt on it.
                    continue;
                }
                if connection.is_none() {
                    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&leader)).await {
                        Ok(Ok(opened)) => connection = Some(opened),
                        _ => {
                            let why = format!("cannot reach the leader at {leader}; retry");
                            let _ = reply.send(Err(Failure::unavailable(why)));
                            continue;
                        }
                    }
                }
                let request = Request { id: None, op, forwarded: true };
                let sent = connection.as_mut().map(|c| c.send(&request));
                if let Some(Err(error)) = sent {
                    debug!(%leader, %error, "forwarding failed");
                    let _ = reply.send(Err(lost(&leader)));
                    fail_all(&mut waiting, &leader);
                    connection = None;
                    continue;
                }
                waiting.push_back(reply);
            }
            answer = next_answer(&mut connection), if !waiting.is_empty() => match answer {
                Ok(outcome) => {
                    if let Some(reply) = waiting.pop_front() {
                        let _ = reply.send(outcome);
                    }
                }
                Err(error) => {
                    debug!(%leader, %error, "connection to the leader lost");
                    fail_all(&mut waiting, &leader);
                    connection = None;
                }
            },
        }
    }
}

async fn next_answer(connection: &mut Option<Connection>) -> Result<Outcome, Error> {
    match connection {
        Some(connection) => connection.recv().await,
        None => std::future::pending().await,
    }
}

fn fail_all(waiting: &mut VecDeque<oneshot::Sender<Outcome>>, leader: &str) {
    for reply in waiting.drain(..) {
        let _ = reply.send(Err(lost(leader)));
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::{Command, Consistency, NodeId};

    use super::*;

    #[test]
    fn only_membership_changes_and_transfers_are_forwarded() {
        let get = |consistency| Op::Get {
            key: "k".into(),
            consistency,
        };
        let write = Op::Write {
            command: Command::Delete { key: "k".into() },
            session: None,
        };
        let add = Op::AddMember {
            id: NodeId(4),
            addr: "127.0.0.1:7004".into(),
        };
        assert!(is_forwarded(&add));
        assert!(is_forwarded(&Op::RemoveMember { id: NodeId(2) }));
        assert!(is_forwarded(&Op::TransferLeader { id: NodeId(2) }));
        assert!(!is_forwarded(&write), "the node relays it");
        assert!(!is_forwarded(&get(Consistency::Linearizable)));
        assert!(!is_forwarded(&get(Consistency::Stale)));
        assert!(!is_forwarded(&Op::Status));
    }
}
