//! kv-server itself: the serve loop with a handler that works on one shared [`Store`].

use std::future::{self, Future};
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::protocol::{Failure, Op, Outcome, Reply, Status};
use crate::serve::{Handler, ServeConfig, serve};
use crate::store::Store;

/// Answers every operation from a single in-memory [`Store`].
///
/// Writes carrying `client`/`seq` are applied like any other: a single server has no retries
/// of its own to deduplicate, and a client retrying after a lost connection may apply a write
/// twice here. Exactly-once writes arrive with the replicated node (see the roadmap).
#[derive(Debug, Default)]
pub struct Standalone {
    store: Store,
}

impl Standalone {
    /// A server with an empty store.
    pub fn new() -> Self {
        Standalone::default()
    }

    /// The store this server answers from.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn execute(&self, op: Op) -> Outcome {
        match op {
            Op::Get { key, .. } => Ok(Reply::Value(self.store.get(&key))),
            Op::Write { command, .. } => Ok(Reply::Write(self.store.apply(command))),
            Op::Status => Ok(Reply::Status(Box::new(Status::standalone()))),
            Op::AddMember { .. } | Op::RemoveMember { .. } | Op::TransferLeader { .. } => {
                Err(Failure::bad_request(
                    "kv-server is a single server without members or a leader; membership arrives in stage 8",
                ))
            }
        }
    }
}

impl Handler for Standalone {
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        future::ready(self.execute(op))
    }
}

/// Runs kv-server, starting empty, on `listener` until `shutdown` completes. Returns once every
/// connection has been answered and closed.
pub async fn run(listener: TcpListener, config: ServeConfig, shutdown: impl Future<Output = ()>) {
    serve(listener, Arc::new(Standalone::new()), config, shutdown).await
}
