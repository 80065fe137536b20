//! Exactly-once writes (§8): the state machine remembers, per client, the last `seq` it
//! applied and what that write did, so that a retry of the same (client, seq) is answered
//! with the first outcome instead of being applied twice.
//!
//! The table is part of the replicated state: it changes only when a committed entry is
//! applied, so every node holds the same table at the same index, and snapshots carry it.
//! It is bounded the same way everywhere: past [`MAX_SESSIONS`] clients, the one whose last
//! write is oldest in the log is forgotten. Expiry thus depends on the log alone, never on
//! a node's clock (thesis §6.3). A client forgotten this way that retries a write of long
//! ago has it applied again, as a client without a session would.
//!
//! A client's writes are expected one at a time, `seq` increasing: a `seq` below the last
//! one applied is a retry of a write whose outcome is no longer kept, and is refused
//! without being applied.

use imbl::{HashMap, OrdMap};
use kv_server::protocol::{Session, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

/// Clients remembered at most.
pub const MAX_SESSIONS: usize = 100_000;

/// A client's last applied write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWrite {
    /// Its sequence number.
    pub seq: u64,
    /// What it did.
    pub outcome: WriteOutcome,
    /// Where it was in the log.
    pub index: LogIndex,
}

/// What to do with a write that carries a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not applied before: apply it.
    New,
    /// A retry of the last write: answer this, apply nothing.
    Duplicate(WriteOutcome),
    /// Older than the client's last applied write, whose seq this is.
    Stale(u64),
}

/// The session table. Cheap to clone (persistent maps), as a snapshot's copy must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    by_client: HashMap<String, LastWrite>,
    /// The same clients by the index of their last write: the eviction order.
    by_index: OrdMap<LogIndex, String>,
}

impl Sessions {
    /// How `session`'s write is to be treated.
    pub fn check(&self, session: &Session) -> Check {
        match self.by_client.get(&session.client) {
            Some(last) if last.seq == session.seq => Check::Duplicate(last.outcome.clone()),
            Some(last) if last.seq > session.seq => Check::Stale(last.seq),
            _ => Check::New,
        }
    }

    /// Records that `session`'s write, at `index`, did `outcome`.
    pub fn record(&mut self, session: Session, outcome: WriteOutcome, index: LogIndex) {
        let last = LastWrite {
            seq: session.seq,
            outcome,
            index,
        };
        if let Some(old) = self.by_client.insert(session.client.clone(), last) {
            self.by_index.remove(&old.index);
        }
        self.by_index.insert(index, session.client);
        while self.by_client.len() > MAX_SESSIONS {
            let Some((oldest, client)) = self.by_index.get_min().cloned() else {
                break;
            };
            self.by_index.remove(&oldest);
            self.by_client.remove(&client);
        }
    }

    /// How many clients are remembered.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Every client with its last write, oldest first: the same order on every node.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LastWrite)> {
        self.by_index.values().filter_map(|client| {
            self.by_client
                .get(client)
                .map(|last| (client.as_str(), last))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(client: &str, seq: u64) -> Session {
        Session {
            client: client.into(),
            seq,
        }
    }

    #[test]
    fn a_retry_gets_the_first_outcome_and_an_older_seq_is_stale() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(&session("a", 1)), Check::New);
        sessions.record(session("a", 1), WriteOutcome::Put, LogIndex(3));
        let deleted = WriteOutcome::Delete { existed: true };
        sessions.record(session("a", 2), deleted.clone(), LogIndex(4));
        assert_eq!(sessions.check(&session("a", 2)), Check::Duplicate(deleted));
        assert_eq!(sessions.check(&session("a", 1)), Check::Stale(2));
        assert_eq!(sessions.check(&session("a", 3)), Check::New);
        assert_eq!(sessions.check(&session("b", 2)), Check::New);
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn past_the_limit_the_client_idle_longest_in_the_log_is_forgotten() {
        let mut sessions = Sessions::default();
        for i in 0..MAX_SESSIONS as u64 {
            sessions.record(
                session(&format!("c{i}"), 1),
                WriteOutcome::Put,
                LogIndex(i + 1),
            );
        }
        // c0 writes again, so c1 is now the one idle longest.
        let at = LogIndex(MAX_SESSIONS as u64 + 1);
        sessions.record(session("c0", 2), WriteOutcome::Put, at);
        sessions.record(session("new", 1), WriteOutcome::Put, at.next());
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(sessions.check(&session("c1", 1)), Check::New, "forgotten");
        assert_eq!(
            sessions.check(&session("c0", 2)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(
            sessions.iter().next().map(|(c, _)| c.to_owned()),
            Some("c2".to_owned())
        );
    }
}
