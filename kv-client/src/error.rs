//! What can go wrong talking to a server.

use std::fmt;
use std::time::Duration;

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
    #[error("no answer within {}", Rounded(*.0))]
    RequestTimeout(Duration),
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

/// A duration as people read it in a message: `2s`, `1.5s`, `250ms`. Rounded to a tenth of a
/// second from one second up, to a millisecond below: a budget computed as "what is left of
/// the deadline" is a hair under the deadline (`1.999748705s`), and the digits past the
/// rounding are noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rounded(pub Duration);

impl fmt::Display for Rounded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.as_secs_f64();
        let millis = (secs * 1000.0).round();
        if millis >= 1000.0 {
            // f64's Display prints the shortest text that reads back as the same number:
            // 2.0 as `2`, 1.5 as `1.5`, never `1.5000000000000002`.
            write!(f, "{}s", (secs * 10.0).round() / 10.0)
        } else if millis >= 1.0 {
            write!(f, "{millis}ms")
        } else {
            write!(f, "{}µs", (secs * 1e6).round())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_messages_are_rounded_for_people() {
        // What a deadline's remainder looked like before: `1.999748705s`, `999.789445ms`.
        let cases = [
            (Duration::from_nanos(1_999_748_705), "2s"),
            (Duration::from_nanos(999_789_445), "1s"),
            (Duration::from_millis(1500), "1.5s"),
            (Duration::from_millis(1549), "1.5s"),
            (Duration::from_secs(10), "10s"),
            (Duration::from_secs(3), "3s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(20_400), "20ms"),
            (Duration::from_micros(999_400), "999ms"),
            (Duration::from_micros(120), "120µs"),
            (Duration::ZERO, "0µs"),
        ];
        for (duration, text) in cases {
            assert_eq!(Rounded(duration).to_string(), text, "{duration:?}");
        }
        assert_eq!(
            Error::RequestTimeout(Duration::from_nanos(1_999_748_705)).to_string(),
            "no answer within 2s"
        );
    }
}
