//! What can go wrong talking to a server.

use kv_server::protocol::{ErrorCode, Failure};

/// Errors of [`crate::Connection`], [`crate::Client`] and [`crate::ClusterClient`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to `addr`.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address tried.
        addr: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The connection failed or closed with requests unanswered: their outcome is unknown.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// No answer within the request timeout: the outcome is unknown.
    #[error("no answer within {0:?}")]
    RequestTimeout(std::time::Duration),
    /// The server answered something that does not fit the contract.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server answered with an error response.
    #[error("{0}")]
    Server(#[from] Failure),
}

impl Error {
    /// The server's error code, if the server answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server(failure) => Some(failure.code),
            _ => None,
        }
    }

    /// Whether a write that failed this way may still have taken effect.
    pub fn outcome_unknown(&self) -> bool {
        match self {
            // An answer that cannot be read answered a request that was sent: it says
            // nothing of what the request did.
            Error::ConnectionLost(_) | Error::RequestTimeout(_) | Error::Protocol(_) => true,
            Error::Server(failure) => failure.code == ErrorCode::Timeout,
            Error::Connect { .. } => false,
        }
    }
}
