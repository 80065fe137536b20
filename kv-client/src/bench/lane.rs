//! [`Lane`]: one bench client's requests, sent on a pipelined [`Connection`] for speed and
//! handed to a [`ClusterClient`] when that goes wrong.
//!
//! The fast path is what the load generator always had: requests written back to back on one
//! socket to the leader, no task and no channel per request. Everything else is the cluster
//! client's, so that `bench` finds leaders and retries exactly as `put` and `get` do:
//!
//! - an error answer a retry can fix (`not_leader`, `unavailable`, `timeout`), a lost
//!   connection, or no answer within the request timeout makes the lane drop its connection
//!   and hand the request to [`ClusterClient::execute_until`], with its deadline counted from
//!   the request's first send. The requests still unanswered on the dropped connection follow
//!   one by one, each with the error that left its outcome unknown;
//! - once the cluster client has answered one, the lane opens a connection to the leader it
//!   now knows, if it knows one, and the requests queued meanwhile go out on it. It does not
//!   retry that connect itself: if it fails, the next request goes through the cluster client
//!   again. There is one retry loop, [`ClusterClient`]'s.
//! - `bad_request` and `too_large` are answers, as they are to the cluster client.

use std::collections::VecDeque;

use kv_server::protocol::{ErrorCode, Op, Reply, Request, RequestId};
use tokio::time::{Instant, timeout, timeout_at};

use crate::{ClusterClient, Connection, Error, RetryPolicy};

/// A bench client's connection to the cluster, with one [`ClusterClient`] behind it.
#[derive(Debug)]
pub(super) struct Lane {
    cluster: ClusterClient,
    policy: RetryPolicy,
    /// The fast path, to the leader as last known. Invariant: the requests of `queue` that are
    /// [`Where::OnConnection`] are exactly the ones sent on it and not yet answered, in order,
    /// and they come after every other request of the queue.
    conn: Option<Connection>,
    queue: VecDeque<Pending>,
    next_id: u64,
}

/// A request given to the lane and not yet answered.
#[derive(Debug)]
struct Pending {
    op: Op,
    /// When it was handed to the lane: its latency and its deadline count from here.
    issued: Instant,
    at: Where,
}

/// Where a pending request is.
#[derive(Debug)]
enum Where {
    /// Sent on the lane's current connection.
    OnConnection {
        /// When it was written there: its wait for the answer counts from here.
        sent: Instant,
    },
    /// Sent on a connection the lane has dropped since, which left it with this error.
    Abandoned(Error),
    /// Not sent yet: it came while the lane had no connection.
    Unsent,
}

impl Lane {
    /// A lane to the cluster at `addrs`, its fast path opened to `target` (normally the leader
    /// found at the start). If that fails, the first request goes through the cluster client,
    /// which looks for the leader itself.
    pub(super) async fn open(
        addrs: Vec<String>,
        target: Option<&str>,
        policy: RetryPolicy,
    ) -> Lane {
        let mut lane = Lane {
            cluster: ClusterClient::new(addrs, policy),
            policy,
            conn: None,
            queue: VecDeque::new(),
            next_id: 0,
        };
        if let Some(target) = target {
            lane.conn = lane.connect(target).await;
        }
        lane
    }

    /// How many requests were given to the lane and not yet answered.
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Queues `op`: on the connection when there is one, else for the cluster client.
    pub(super) fn send(&mut self, op: Op) {
        let issued = Instant::now();
        let at = match &mut self.conn {
            Some(conn) => {
                self.next_id += 1;
                match write(conn, self.next_id, &op) {
                    Ok(()) => Where::OnConnection { sent: issued },
                    Err(error) => {
                        self.abandon_connection();
                        Where::Abandoned(error)
                    }
                }
            }
            None => Where::Unsent,
        };
        self.queue.push_back(Pending { op, issued, at });
    }

    /// The outcome of the oldest pending request, with when it was issued; `None` when none
    /// is pending. Every request ends here, answered or failed for good within its deadline.
    pub(super) async fn recv(&mut self) -> Option<(Instant, Result<Reply, Error>)> {
        let pending = self.queue.pop_front()?;
        // Whether this request failed on the lane's current connection.
        let on_connection = matches!(pending.at, Where::OnConnection { .. });
        let earlier = match (pending.at, &mut self.conn) {
            (Where::OnConnection { sent }, Some(conn)) => {
                // A request queued during an outage and sent since gets a whole request
                // timeout on the new connection, within its deadline.
                let wait = (sent + self.policy.request_timeout)
                    .min(pending.issued + self.policy.deadline)
                    .saturating_duration_since(pending.issued);
                // `recv` is cancel-safe: a timeout loses no answer that a later read needs,
                // and the connection is dropped anyway.
                match timeout_at(pending.issued + wait, conn.recv()).await {
                    Ok(Ok(Ok(reply))) => return Some((pending.issued, Ok(reply))),
                    Ok(Ok(Err(failure))) => match failure.code {
                        // Answers about the request itself: the cluster client would give
                        // up on them at once too.
                        ErrorCode::BadRequest | ErrorCode::TooLarge => {
                            return Some((pending.issued, Err(Error::Server(failure))));
                        }
                        ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::Timeout => {
                            Some(Error::Server(failure))
                        }
                    },
                    Ok(Err(error)) => Some(error),
                    Err(_) => Some(Error::RequestTimeout(wait)),
                }
            }
            // Kept from happening by the invariant; the cluster client copes either way.
            (Where::OnConnection { .. }, None) => None,
            (Where::Abandoned(error), _) => Some(error),
            (Where::Unsent, _) => None,
        };
        if earlier.is_some() && on_connection {
            // The node is gone, slow, or no longer the one to ask: the requests behind this
            // one on its connection go to the cluster client too. (A request abandoned with
            // an earlier connection says nothing of the current one: dropping it for that,
            // each pipelined request left from the old connection dropped the new one, and
            // the lane opened a connection per request from then on.)
            self.abandon_connection();
        }
        let deadline = pending.issued + self.policy.deadline;
        let result = self
            .cluster
            .execute_until(pending.op, deadline, earlier)
            .await;
        self.reconnect().await;
        Some((pending.issued, result))
    }

    /// Drops the connection; what was sent on it and is unanswered is now of unknown outcome.
    fn abandon_connection(&mut self) {
        if self.conn.take().is_none() {
            return;
        }
        for pending in &mut self.queue {
            if matches!(pending.at, Where::OnConnection { .. }) {
                pending.at = Where::Abandoned(Error::ConnectionLost(
                    "abandoned after an earlier request on it failed".into(),
                ));
            }
        }
    }

    /// Without a connection, opens one to the leader the cluster client knows, if any, and
    /// sends it the requests queued meanwhile. One connect, no retry: see the module
    /// documentation.
    async fn reconnect(&mut self) {
        if self.conn.is_some() {
            return;
        }
        let Some(leader) = self.cluster.leader().map(str::to_owned) else {
            return;
        };
        let Some(conn) = self.connect(&leader).await else {
            return;
        };
        let Lane {
            conn: current,
            queue,
            next_id,
            ..
        } = self;
        let conn = current.insert(conn);
        for pending in queue.iter_mut() {
            if matches!(pending.at, Where::Unsent) {
                *next_id += 1;
                if let Err(error) = write(conn, *next_id, &pending.op) {
                    // Nothing of the queue may stay marked as sent on a dropped connection.
                    pending.at = Where::Abandoned(error);
                    self.abandon_connection();
                    return;
                }
                pending.at = Where::OnConnection {
                    sent: Instant::now(),
                };
            }
        }
    }

    /// A connection to `addr`, or `None` if none opens within a request timeout.
    async fn connect(&self, addr: &str) -> Option<Connection> {
        let wait = self.policy.request_timeout.min(self.policy.deadline);
        timeout(wait, Connection::connect(addr)).await.ok()?.ok()
    }
}

/// Queues `op` on `conn` with request id `id`.
fn write(conn: &mut Connection, id: u64, op: &Op) -> Result<(), Error> {
    conn.send(&Request {
        id: Some(RequestId::from(id)),
        op: op.clone(),
        forwarded: false,
    })
}
