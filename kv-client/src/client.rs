//! [`Client`]: a handle to one connection that many tasks can use at once.
//!
//! A background task owns the [`Connection`]. Each call hands the task a request and a
//! oneshot for the answer; the task writes requests as they come (one flush per batch) and
//! hands answers back in order. Concurrent calls are therefore pipelined on one socket.
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
    addr: String,
}

impl Client {
    /// Connects to `addr` and starts the connection's task.
    pub async fn connect(addr: &str) -> Result<Client, Error> {
        let connection = Connection::connect(addr).await?;
        let (calls, rx) = mpsc::channel(1024);
        tokio::spawn(drive(connection, rx));
        Ok(Client {
            calls,
            addr: addr.to_owned(),
        })
    }

    /// The address this client is connected to.
    pub fn addr(&self) -> &str {
        &self.addr
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

/// The connection's task: writes calls as they arrive, answers them in order, and fails every
/// waiting call when the connection breaks.
async fn drive(mut connection: Connection, mut calls: mpsc::Receiver<Call>) {
    let mut waiting: VecDeque<oneshot::Sender<Result<Outcome, Error>>> = VecDeque::new();
    let mut accepting = true;
    let error = loop {
        tokio::select! {
            call = calls.recv(), if accepting => match call {
                Some((request, reply)) => {
                    if let Err(error) = connection.send(&request).await {
                        let _ = reply.send(Err(Error::ConnectionLost(error.to_string())));
                        break error;
                    }
                    waiting.push_back(reply);
                    // Batch: flush only when no further call is already queued.
                    if calls.is_empty() {
                        if let Err(error) = connection.flush().await {
                            break error;
                        }
                    }
                }
                // Every handle is gone: finish what is outstanding, then close.
                None => accepting = false,
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
