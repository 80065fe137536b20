//! Forwarding a client's request to the leader (used from the limecached stage on): a node
//! that is not the leader, and knows who is ([`crate::node::Node::leader_elsewhere`], which
//! the driver publishes after every batch), sends the request there itself and relays the
//! answer, so a client given any member is served without a redirect.
//!
//! Each leader address gets one pipelined connection (kv-client's [`Connection`]), shared by
//! every forwarded request: the requests of one client connection keep their order, and a
//! burst of them costs one connection, not one each. A forwarded request carries
//! `"forwarded":true`, and the receiver answers it itself (`not_leader` if it no longer
//! leads) rather than forward it again: no request goes round in circles, and a client
//! whose request could not be served still hears where to retry.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kv_client::{Connection, Error};
use kv_server::protocol::{Consistency, Failure, Op, Outcome, Request};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

/// Requests queued for one leader before new ones are refused with `unavailable`.
const QUEUE: usize = 4096;

/// How long to wait for a connection to the leader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

type Forwarded = (Op, oneshot::Sender<Outcome>);

/// Whether a follower must forward `op` to the leader: what only a leader serves (writes,
/// linearizable reads, configuration changes), except what a node that `relays` sends the
/// leader itself (writes and linearizable reads, [`crate::node::Node::relays`]). Status and
/// stale reads are every node's own to answer.
pub fn needs_leader(op: &Op, relays: bool) -> bool {
    match op {
        Op::Get { consistency, .. } => *consistency == Consistency::Linearizable && !relays,
        Op::Write { .. } => !relays,
        Op::Status => false,
        Op::AddMember { .. } | Op::RemoveMember { .. } | Op::TransferLeader { .. } => true,
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
        let is_write = matches!(op, Op::Write { .. });
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
        rx.await.unwrap_or_else(|_| Err(lost(is_write, &leader)))
    }
}

/// The answer for a forwarded request whose connection failed before its answer came.
fn lost(is_write: bool, leader: &str) -> Failure {
    if is_write {
        Failure::timeout(format!(
            "the connection to the leader at {leader} failed; the write may or may not have taken effect"
        ))
    } else {
        Failure::unavailable(format!(
            "the connection to the leader at {leader} failed; retry"
        ))
    }
}

/// One leader's link: sends what is queued, pipelined, and hands back the answers in order.
/// Connects on demand, and again after a failure.
async fn carry(leader: String, mut queue: mpsc::Receiver<Forwarded>) {
    let mut connection: Option<Connection> = None;
    let mut waiting: VecDeque<(bool, oneshot::Sender<Outcome>)> = VecDeque::new();
    loop {
        tokio::select! {
            next = queue.recv() => {
                let Some((op, reply)) = next else { return };
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
                let is_write = matches!(op, Op::Write { .. });
                let request = Request { id: None, op, forwarded: true };
                let sent = connection.as_mut().map(|c| c.send(&request));
                if let Some(Err(error)) = sent {
                    debug!(%leader, %error, "forwarding failed");
                    let _ = reply.send(Err(lost(is_write, &leader)));
                    fail_all(&mut waiting, &leader);
                    connection = None;
                    continue;
                }
                waiting.push_back((is_write, reply));
            }
            answer = next_answer(&mut connection), if !waiting.is_empty() => match answer {
                Ok(outcome) => {
                    if let Some((_, reply)) = waiting.pop_front() {
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

fn fail_all(waiting: &mut VecDeque<(bool, oneshot::Sender<Outcome>)>, leader: &str) {
    for (is_write, reply) in waiting.drain(..) {
        let _ = reply.send(Err(lost(is_write, leader)));
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::{Command, NodeId};

    use super::*;

    #[test]
    fn only_what_a_leader_serves_is_forwarded() {
        let get = |consistency| Op::Get {
            key: "k".into(),
            consistency,
        };
        let write = Op::Write {
            command: Command::Delete { key: "k".into() },
            session: None,
        };
        let linearizable = get(Consistency::Linearizable);
        assert!(needs_leader(&write, false));
        assert!(needs_leader(&linearizable, false));
        assert!(
            !needs_leader(&write, true),
            "a node that relays proposes it itself"
        );
        assert!(!needs_leader(&linearizable, true));
        for relays in [false, true] {
            assert!(needs_leader(&Op::TransferLeader { id: NodeId(2) }, relays));
            assert!(needs_leader(&Op::RemoveMember { id: NodeId(2) }, relays));
            assert!(!needs_leader(&get(Consistency::Stale), relays));
            assert!(!needs_leader(&Op::Status, relays));
        }
    }
}
