//! The paper's vocabulary as types: a term passed where an index is expected does not
//! compile.

use std::fmt;

use kv_server::protocol::{Command, Session};
use serde::{Deserialize, Serialize};

use crate::membership::Membership;

/// A Raft term (§5.1): a logical clock that only grows. Term 0 precedes every real term.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Term(pub u64);

/// A position in the log. Entries start at index 1; index 0 is the empty prefix before them.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct LogIndex(pub u64);

impl Term {
    /// A term no cluster reaches by elections (at one a millisecond, it would take 290
    /// million years): a message that carries one is from a broken peer, and adopting it
    /// would bring [`Term::next`] within reach of overflow, and a term that goes back to 0.
    pub const UNREACHABLE: Term = Term(u64::MAX / 2);

    /// The term after this one.
    pub fn next(self) -> Term {
        Term(self.0 + 1)
    }
}

impl LogIndex {
    /// The index after this one.
    pub fn next(self) -> LogIndex {
        LogIndex(self.0 + 1)
    }

    /// The index before this one (index 0 stays 0).
    pub fn prev(self) -> LogIndex {
        LogIndex(self.0.saturating_sub(1))
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for LogIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What a log entry carries. An enum so that later stages can log more than client writes
/// (a leader's no-op in stage 6, configuration changes in stage 8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A client's write, applied to the key/value map when committed.
    Command(Command),
    /// A client's write that must be applied at most once: a retry of the same
    /// (client, seq) gets the first outcome ([`crate::sessions`]).
    SessionCommand {
        /// Who wrote it, and which of its writes this is.
        session: Session,
        /// What to change.
        command: Command,
    },
    /// Nothing: what a new leader appends at the start of its term so that an entry of its
    /// own term commits, and with it every earlier entry (§5.4.2, §8). Used from stage 6.
    Noop,
    /// A new cluster configuration (stage 8). It takes effect on every node as soon as the
    /// node's log holds it, committed or not (thesis §4.1).
    Config(Membership),
}

/// What a payload or relayed write costs on the wire beyond its keys and values (roughly).
pub const FRAMING: usize = 64;

impl Payload {
    /// About how many bytes the payload takes on the wire (keys and values, plus a little
    /// for framing), for bounding batches.
    pub fn approx_bytes(&self) -> usize {
        match self {
            Payload::Command(command) => FRAMING + command.data_bytes(),
            Payload::SessionCommand { session, command } => {
                FRAMING + session.client.len() + command.data_bytes()
            }
            Payload::Noop => FRAMING,
            Payload::Config(membership) => FRAMING + membership.ids().count() * FRAMING,
        }
    }

    /// The payload of a client's write: with its session when it has one.
    pub fn write(command: Command, session: Option<Session>) -> Payload {
        match session {
            Some(session) => Payload::SessionCommand { session, command },
            None => Payload::Command(command),
        }
    }
}

/// One log entry: where it is, the term of the leader that created it, and what it carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Its position.
    pub index: LogIndex,
    /// The term in which a leader created it.
    pub term: Term,
    /// What it carries.
    pub payload: Payload,
}
