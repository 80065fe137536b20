//! [`Client`]: a handle to one connection that many tasks can use at once.
//!
//! A background task owns the [`Connection`]. Each call hands the task a request and a
//! oneshot for the answer; the task queues requests as they come, writes them while waiting
//! for answers, and hands answers back in order. Concurrent calls are therefore pipelined on
//! one socket.
//!
//! `Client` is transport only; the typed API (`get`, `put`, ...) with leader finding and
//! retries is [`crate::ClusterClient`], which works just as well with a single address.

use std::collections::VecDeque;

use kv_server::protocol::{Op, Outcome, Reply, Request, RequestId};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::{Connection, Error};

type Call = (Request, oneshot::Sender<Result<Outcome, Error>>);

/// A pipelined client over one connection. Cheap to clone; clones share the connection.
#[derive(Debug, Clone)]
pub struct Client {
    calls: mpsc::Sender<Call>,
}

impl Client {
    /// Connects to `addr` and starts the connection's task.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let connection = Connection::connect(addr).await?;
        let (calls, rx) = mpsc::channel(1024);
        tokio::spawn(drive(connection, rx));
        Ok(Client { calls })
    }

    /// Sends `op` and waits for its outcome. A server error response is `Ok(Err(failure))`;
    /// `Err` means the request got no answer.
    pub async fn send(&self, op: Op) -> Result<Outcome, Error> {
        let (tx, rx) = oneshot::channel();
        // Ids are not needed to match answers (they come back in order), but the connection
        // checks the echo, which catches a desynchronised stream early.
        let request = Request {
            id: Some(RequestId::from(0)),
            op,
            forwarded: false,
        };
        let closed = || Error::ConnectionLost("the connection's task has ended".into());
        self.calls.send((request, tx)).await.map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }

    /// Like [`Client::send`], with a server error response turned into [`Error::Server`].
    pub async fn request(&self, op: Op) -> Result<Reply, Error> {
        Ok(self.send(op).await??)
    }
}

/// Past this many bytes of requests not yet written, the connection's task takes no new
/// calls until the server has read some.
const QUEUE_HIGH_WATER: usize = 64 << 10;

/// The connection's task: queues calls as they arrive, writes them while waiting for
/// answers, answers in order, and fails every waiting call when the connection breaks. It
/// ends when the connection breaks or the last handle is dropped; then the socket closes, so
/// a request abandoned by a timed-out caller does not keep a task and a socket alive.
async fn drive(mut connection: Connection, mut calls: mpsc::Receiver<Call>) {
    let mut waiting: VecDeque<oneshot::Sender<Result<Outcome, Error>>> = VecDeque::new();
    // Ids are not needed to match answers (they come back in order), but the connection
    // checks each echo, which catches a desynchronised stream at once.
    let mut next_id = 0u64;
    let error = loop {
        tokio::select! {
            call = calls.recv(), if connection.queued_bytes() < QUEUE_HIGH_WATER => match call {
                Some((mut request, reply)) => {
                    next_id += 1;
                    request.id = Some(RequestId::from(next_id));
                    if let Err(error) = connection.send(&request) {
                        let _ = reply.send(Err(Error::ConnectionLost(error.to_string())));
                        break error;
                    }
                    waiting.push_back(reply);
                }
                None => return,
            },
            answer = connection.recv(), if !waiting.is_empty() => {
                let reply = waiting.pop_front().expect("an answer implies a waiting call");
                let failed = answer.as_ref().err().map(|e| Error::ConnectionLost(e.to_string()));
                let _ = reply.send(answer);
                if let Some(error) = failed {
                    break error;
                }
            }
            else => return,
        }
    };
    debug!(addr = connection.addr(), %error, "client connection ended");
    for reply in waiting {
        let _ = reply.send(Err(Error::ConnectionLost(error.to_string())));
    }
}
