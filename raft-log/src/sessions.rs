//! Exactly-once writes (§8): the state machine remembers, per client, the `seq` of its
//! latest writes and what each did, so that a retry of the same (client, seq) is answered
//! with the first outcome instead of being applied twice.
//!
//! A client may pipeline its writes, so more than the last one may be retried after a lost
//! connection: the outcomes of a client's latest [`WINDOW`] writes are kept (the thesis,
//! §6.3, keeps several responses per client for the same reason). Every write a client had
//! applied from the oldest kept one on is kept, so a `seq` in that range that is not kept
//! was never applied, and is applied now. A `seq` below it may have been applied, and is
//! refused without being applied: its outcome is no longer known.
//!
//! The table is part of the replicated state: it changes only when a committed entry is
//! applied, so every node holds the same table at the same index, and snapshots carry it.
//! It is bounded the same way everywhere: past [`MAX_WRITES`] writes or [`MAX_BYTES`]
//! bytes kept (a failed `cas` keeps the value it saw), the client whose latest write is
//! oldest in the log is forgotten. Expiry thus depends on the log alone, never on a node's
//! clock (thesis §6.3). A client forgotten this way that retries a write of long ago has it
//! applied again, as a client without a session would: the protocol has no registration
//! that would let the cluster tell a forgotten client from a new one.

use imbl::{HashMap, OrdMap};
use kv_server::protocol::{CasOutcome, Session, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

/// Writes whose outcome is kept at most, over all clients.
pub const MAX_WRITES: usize = 100_000;

/// Writes whose outcome is kept per client: a client that pipelines can retry any of its
/// latest this many.
pub const WINDOW: usize = 64;

/// Bytes kept at most, over all clients: about what the table takes in memory.
pub const MAX_BYTES: usize = 64 << 20;

/// What one kept write costs in [`MAX_BYTES`], besides a value it holds.
const WRITE_BYTES: usize = 64;

/// A client's applied write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastWrite {
    /// Its sequence number.
    pub seq: u64,
    /// What it did.
    pub outcome: WriteOutcome,
    /// Where it was in the log.
    pub index: LogIndex,
}

impl LastWrite {
    /// What it costs in [`MAX_BYTES`].
    fn bytes(&self) -> usize {
        let value = match &self.outcome {
            WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some(value),
            }) => value.len(),
            _ => 0,
        };
        WRITE_BYTES + value
    }
}

/// What to do with a write that carries a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Not applied before: apply it.
    New,
    /// A retry of a kept write: answer this, apply nothing.
    Duplicate(WriteOutcome),
    /// Older than every kept write of the client, the oldest of which has this seq.
    Stale(u64),
}

/// One client's kept writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Client {
    /// By seq: every write it had applied from the first of them on.
    writes: Vec<LastWrite>,
    /// The index of its latest write: its place in the eviction order.
    latest: LogIndex,
}

/// The session table. Cheap to clone (persistent maps), as a snapshot's copy must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    by_client: HashMap<String, Client>,
    /// The same clients by the index of their latest write: the eviction order.
    by_index: OrdMap<LogIndex, String>,
    /// Writes kept, over all clients.
    writes: usize,
    /// Bytes kept (see [`MAX_BYTES`]).
    bytes: usize,
}

impl Sessions {
    /// How `session`'s write is to be treated.
    pub fn check(&self, session: &Session) -> Check {
        let Some(client) = self.by_client.get(&session.client) else {
            return Check::New;
        };
        match client.writes.binary_search_by_key(&session.seq, |w| w.seq) {
            Ok(at) => Check::Duplicate(client.writes[at].outcome.clone()),
            Err(0) => Check::Stale(client.writes[0].seq),
            Err(_) => Check::New,
        }
    }

    /// Records that `session`'s write, at `index`, did `outcome`; [`Sessions::check`] said
    /// it was new.
    pub fn record(&mut self, session: Session, outcome: WriteOutcome, index: LogIndex) {
        let Session { client: name, seq } = session;
        let mut client = match self.by_client.remove(&name) {
            Some(client) => {
                self.by_index.remove(&client.latest);
                client
            }
            None => {
                self.bytes += name.len();
                Client {
                    writes: Vec::new(),
                    latest: index,
                }
            }
        };
        let write = LastWrite {
            seq,
            outcome,
            index,
        };
        self.writes += 1;
        self.bytes += write.bytes();
        let at = client.writes.partition_point(|w| w.seq < seq);
        client.writes.insert(at, write);
        if client.writes.len() > WINDOW {
            let dropped = client.writes.remove(0);
            self.writes -= 1;
            self.bytes -= dropped.bytes();
        }
        client.latest = client.latest.max(index);
        self.by_index.insert(client.latest, name.clone());
        self.by_client.insert(name.clone(), client);
        while self.writes > MAX_WRITES || self.bytes > MAX_BYTES {
            match self.by_index.get_min().cloned() {
                Some((oldest, forgotten)) if forgotten != name => {
                    self.by_index.remove(&oldest);
                    self.forget(&forgotten);
                }
                // Only the client just recorded is left over the bounds: it is kept.
                _ => break,
            }
        }
    }

    /// Forgets `name`'s writes (its place in the eviction order is already gone).
    fn forget(&mut self, name: &str) {
        if let Some(client) = self.by_client.remove(name) {
            self.writes -= client.writes.len();
            self.bytes -= name.len() + client.writes.iter().map(LastWrite::bytes).sum::<usize>();
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

    /// Every kept write with its client: clients by their latest write, oldest first, and
    /// each client's writes by seq. The same order on every node; recording them in this
    /// order into an empty table rebuilds this one.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &LastWrite)> {
        self.by_index
            .values()
            .filter_map(|name| self.by_client.get(name).map(|client| (name, client)))
            .flat_map(|(name, client)| client.writes.iter().map(move |w| (name.as_str(), w)))
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
    fn a_retry_of_any_kept_write_gets_its_first_outcome() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(&session("a", 1)), Check::New);
        sessions.record(session("a", 1), WriteOutcome::Put, LogIndex(3));
        let deleted = WriteOutcome::Delete { existed: true };
        sessions.record(session("a", 2), deleted.clone(), LogIndex(4));
        // Pipelined, both unanswered, both retried.
        assert_eq!(
            sessions.check(&session("a", 1)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(sessions.check(&session("a", 2)), Check::Duplicate(deleted));
        assert_eq!(sessions.check(&session("a", 3)), Check::New);
        assert_eq!(sessions.check(&session("b", 2)), Check::New);
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn past_the_window_an_older_seq_is_stale_and_one_never_applied_is_new() {
        let mut sessions = Sessions::default();
        let last = WINDOW as u64 + 2; // one over the window, seq 10 left out
        for seq in (1..=last).filter(|&seq| seq != 10) {
            sessions.record(session("a", seq), WriteOutcome::Put, LogIndex(seq));
        }
        // Seq 1 was dropped from the window: whether it was applied cannot be told.
        assert_eq!(sessions.check(&session("a", 1)), Check::Stale(2));
        assert_eq!(
            sessions.check(&session("a", 2)),
            Check::Duplicate(WriteOutcome::Put)
        );
        // Seq 10 never was (a relayed batch lost, say): every write from seq 2 on is kept.
        assert_eq!(sessions.check(&session("a", 10)), Check::New);
        sessions.record(session("a", 10), WriteOutcome::Put, LogIndex(last + 1));
        assert_eq!(
            sessions.check(&session("a", 10)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(sessions.check(&session("a", 2)), Check::Stale(3));
        assert_eq!(sessions.iter().count(), WINDOW);
    }

    #[test]
    fn past_the_limit_the_client_idle_longest_in_the_log_is_forgotten() {
        let mut sessions = Sessions::default();
        for i in 0..MAX_WRITES as u64 {
            sessions.record(
                session(&format!("c{i}"), 1),
                WriteOutcome::Put,
                LogIndex(i + 1),
            );
        }
        // c0 writes again, so c1 is now the one idle longest; c0's two writes make one too
        // many, so c1 goes, and so does c2 when "new" comes.
        let at = LogIndex(MAX_WRITES as u64 + 1);
        sessions.record(session("c0", 2), WriteOutcome::Put, at);
        sessions.record(session("new", 1), WriteOutcome::Put, at.next());
        assert_eq!(sessions.len(), MAX_WRITES - 1);
        assert_eq!(sessions.iter().count(), MAX_WRITES);
        assert_eq!(sessions.check(&session("c1", 1)), Check::New, "forgotten");
        assert_eq!(sessions.check(&session("c2", 1)), Check::New, "forgotten");
        assert_eq!(
            sessions.check(&session("c0", 1)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(
            sessions.iter().next().map(|(c, _)| c.to_owned()),
            Some("c3".to_owned())
        );
    }

    #[test]
    fn the_values_failed_cas_writes_saw_are_bounded_in_bytes() {
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        let saw = WriteOutcome::Cas(CasOutcome::Mismatch {
            current: Some(big.clone()),
        });
        let clients = MAX_BYTES / big.len() + 10;
        for i in 0..clients as u64 {
            sessions.record(session(&format!("c{i}"), 1), saw.clone(), LogIndex(i + 1));
        }
        assert!(sessions.len() < MAX_BYTES / big.len(), "{}", sessions.len());
        assert!(sessions.bytes <= MAX_BYTES);
        assert_eq!(sessions.check(&session("c0", 1)), Check::New, "forgotten");
        let newest = format!("c{}", clients - 1);
        assert_eq!(sessions.check(&session(&newest, 1)), Check::Duplicate(saw));
    }

    #[test]
    fn recording_what_iter_lists_rebuilds_the_table() {
        // What a snapshot does; it must hold with windows, gaps and evictions behind.
        let mut sessions = Sessions::default();
        let mut index = 0;
        for round in 0..3 {
            for (client, seqs) in [("a", 0..70), ("b", 5..9), ("c", 1..2)] {
                for seq in seqs.filter(|seq| seq % 3 != round) {
                    index += 1;
                    if sessions.check(&session(client, seq)) == Check::New {
                        sessions.record(session(client, seq), WriteOutcome::Put, LogIndex(index));
                    }
                }
            }
        }
        let mut rebuilt = Sessions::default();
        for (client, write) in sessions.iter() {
            rebuilt.record(
                session(client, write.seq),
                write.outcome.clone(),
                write.index,
            );
        }
        assert_eq!(rebuilt, sessions);
    }
}
