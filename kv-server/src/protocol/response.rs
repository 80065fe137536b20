//! Responses: what a server answers, and how a client reads the answer back.

use std::fmt;

use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use super::request::{OpKind, RequestId, present};
use super::status::Status;
use super::text::Text;

/// The contract's error codes, and no others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is malformed; nothing happened.
    BadRequest,
    /// A key, value or line is over the limit; nothing happened.
    TooLarge,
    /// This node cannot serve the request; the response names the leader when known.
    NotLeader,
    /// No leader, no quorum, or shutting down; nothing happened.
    Unavailable,
    /// The outcome is unknown: a write may or may not take effect.
    Timeout,
}

impl ErrorCode {
    /// The code as written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::NotLeader => "not_leader",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Timeout => "timeout",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error response: a code, a message for humans and, for `not_leader`, the leader's address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Failure {
    /// What kind of failure, and so what the client should do.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
    /// For `not_leader`: the leader's client address, when known.
    pub leader: Option<String>,
}

impl Failure {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
            leader: None,
        }
    }

    /// `bad_request`: the request is malformed.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Failure::new(ErrorCode::BadRequest, message)
    }

    /// `too_large`: a key, value or line over its limit.
    pub fn too_large(message: impl Into<String>) -> Self {
        Failure::new(ErrorCode::TooLarge, message)
    }

    /// `not_leader`, naming the leader's client address when known.
    pub fn not_leader(leader: Option<String>) -> Self {
        let message = match &leader {
            Some(addr) => format!("not the leader; the leader is at {addr}"),
            None => "not the leader, and the leader is unknown".to_owned(),
        };
        Failure {
            code: ErrorCode::NotLeader,
            message,
            leader,
        }
    }

    /// `unavailable`: nothing happened; retry later or elsewhere.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Failure::new(ErrorCode::Unavailable, message)
    }

    /// `timeout`: the outcome is unknown.
    pub fn timeout(message: impl Into<String>) -> Self {
        Failure::new(ErrorCode::Timeout, message)
    }
}

/// What a successful `cas` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CasOutcome {
    /// The key held the expected value (or was absent, as expected) and now holds the new one.
    Swapped,
    /// Nothing changed; the key holds `current` (`None`: absent).
    Mismatch {
        /// The key's value at the time of the comparison.
        current: Option<String>,
    },
}

/// What a successful write did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// `put` stored the value.
    Put,
    /// `delete` removed the key, or found it absent.
    Delete {
        /// Whether the key existed.
        existed: bool,
    },
    /// `cas` swapped, or did not.
    Cas(CasOutcome),
}

impl WriteOutcome {
    /// The operation that answers this way.
    pub fn kind(&self) -> OpKind {
        match self {
            WriteOutcome::Put => OpKind::Put,
            WriteOutcome::Delete { .. } => OpKind::Delete,
            WriteOutcome::Cas(_) => OpKind::Cas,
        }
    }
}

/// A successful response's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `get`: the value, or `None` when the key is absent.
    Value(Option<Text>),
    /// `put`, `delete`, `cas`.
    Write(WriteOutcome),
    /// `status`.
    Status(Box<Status>),
    /// A request that succeeds with nothing to report (`add_member`, `remove_member`,
    /// `transfer_leader`).
    Done,
}

/// What a request came to.
pub type Outcome = Result<Reply, Failure>;

/// One response line: the echoed id and the outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The request's id, echoed; `None` when it had none (or could not be read).
    pub id: Option<RequestId>,
    /// Success or failure.
    pub outcome: Outcome,
}

impl Serialize for Response {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        if let Some(id) = &self.id {
            map.serialize_entry("id", id)?;
        }
        map.serialize_entry("ok", &self.outcome.is_ok())?;
        match &self.outcome {
            Ok(Reply::Value(value)) => map.serialize_entry("value", value)?,
            Ok(Reply::Write(WriteOutcome::Put)) | Ok(Reply::Done) => {}
            Ok(Reply::Write(WriteOutcome::Delete { existed })) => {
                map.serialize_entry("existed", existed)?
            }
            Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Swapped))) => {
                map.serialize_entry("swapped", &true)?
            }
            Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Mismatch { current }))) => {
                map.serialize_entry("swapped", &false)?;
                map.serialize_entry("value", current)?;
            }
            Ok(Reply::Status(status)) => map.serialize_entry("status", status)?,
            Err(failure) => {
                map.serialize_entry("error", &failure.code)?;
                map.serialize_entry("message", &failure.message)?;
                if failure.code == ErrorCode::NotLeader {
                    map.serialize_entry("leader", &failure.leader)?;
                }
            }
        }
        map.end()
    }
}

/// A response line as a client reads it. The contract's responses do not name their
/// operation, so [`WireResponse::into_outcome`] is told which kind of request it answers.
#[derive(Debug, Deserialize)]
pub struct WireResponse {
    /// The echoed id.
    #[serde(default)]
    pub id: Option<RequestId>,
    ok: bool,
    #[serde(default, deserialize_with = "present")]
    value: Option<Option<String>>,
    existed: Option<bool>,
    swapped: Option<bool>,
    status: Option<Box<Status>>,
    error: Option<ErrorCode>,
    message: Option<String>,
    leader: Option<String>,
}

/// A response line that does not fit the contract.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed response to `{}`: {reason}", kind.as_str())]
pub struct WireResponseError {
    kind: OpKind,
    reason: &'static str,
}

impl WireResponse {
    /// Reads the outcome of a request of kind `kind` out of this response.
    pub fn into_outcome(self, kind: OpKind) -> Result<Outcome, WireResponseError> {
        let missing = |reason| WireResponseError { kind, reason };
        if !self.ok {
            let code = self
                .error
                .ok_or(missing("an error response without `error`"))?;
            return Ok(Err(Failure {
                code,
                message: self.message.unwrap_or_default(),
                leader: self.leader,
            }));
        }
        let reply = match kind {
            OpKind::Get => Reply::Value(self.value.ok_or(missing("no `value`"))?.map(Text::Owned)),
            OpKind::Put => Reply::Write(WriteOutcome::Put),
            OpKind::Delete => Reply::Write(WriteOutcome::Delete {
                existed: self.existed.ok_or(missing("no `existed`"))?,
            }),
            OpKind::Cas => Reply::Write(WriteOutcome::Cas(
                match self.swapped.ok_or(missing("no `swapped`"))? {
                    true => CasOutcome::Swapped,
                    false => CasOutcome::Mismatch {
                        current: self.value.ok_or(missing("no `value`"))?,
                    },
                },
            )),
            OpKind::Status => Reply::Status(self.status.ok_or(missing("no `status`"))?),
            OpKind::AddMember | OpKind::RemoveMember | OpKind::TransferLeader => Reply::Done,
        };
        Ok(Ok(reply))
    }
}
