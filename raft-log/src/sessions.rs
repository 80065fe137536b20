//! Exactly-once writes (§8): the state machine remembers, per client, the last `seq` it
//! applied and what that write did, so that a retry of the same (client, seq) is answered
//! with the first outcome instead of being applied twice.
//!
//! What is applied depends on the last `seq` alone, as it always has: a write is applied
//! only if its `seq` is above the client's last, so a session's writes take effect in `seq`
//! order, and a stray old copy never lands after a later write. A client that pipelines
//! may retry more than its last write after a lost connection, so the outcomes of its
//! earlier writes are kept too, up to [`WINDOW`] in all (the thesis, §6.3, keeps several
//! responses per client for the same reason). They only change the answer to such a
//! retry, the first outcome instead of a refusal, never what is applied: nodes of older
//! versions, which keep the last write alone, apply the same writes.
//!
//! The table is part of the replicated state: it changes only when a committed entry is
//! applied, so every node holds the same table at the same index, and snapshots carry it.
//! It is bounded the same way everywhere: past [`MAX_SESSIONS`] clients, the one whose last
//! write is oldest in the log is forgotten; past [`MAX_EARLIER`] earlier writes or
//! [`MAX_EARLIER_BYTES`] of them (a failed `cas` keeps the value it saw), the oldest in the
//! log is. The values failed `cas` writes saw are bounded in bytes among last writes too
//! ([`MAX_LAST_VALUE_BYTES`]): past it, the oldest such last write keeps its seq but lets
//! its outcome go, and a retry of it is refused instead of answered. What is applied never
//! depends on these bounds. Expiry thus depends on the log alone, never on a node's clock
//! (thesis §6.3). A forgotten client that retries a write of long ago has it applied again,
//! as a client without a session would: the protocol has no registration that would let
//! the cluster tell a forgotten client from a new one.

use imbl::{HashMap, OrdMap};
use kv_server::protocol::{CasOutcome, Session, WriteOutcome};
use serde::{Deserialize, Serialize};

use crate::types::LogIndex;

/// Clients remembered at most.
pub const MAX_SESSIONS: usize = 100_000;

/// Writes whose outcome is kept per client, its last included: a client that pipelines
/// can retry any of its latest this many.
pub const WINDOW: usize = 64;

/// Earlier writes (all but each client's last) kept at most, over all clients.
pub const MAX_EARLIER: usize = 100_000;

/// Bytes of earlier writes kept at most, over all clients, their clients' names included:
/// about what they take in memory.
pub const MAX_EARLIER_BYTES: usize = 64 << 20;

/// Bytes of the values that clients' last writes (failed `cas` writes) saw, kept at most.
/// With the earlier writes' bound, this keeps the table's memory bounded, and its snapshot
/// under the 4 GiB the format allows even when JSON escapes every byte six-fold: 64 MiB of
/// last values, 64 MiB of earlier writes with their names, and 100,000 names of at most
/// 4 KiB (the key limit) with the last writes, about 3.3 GB in all.
pub const MAX_LAST_VALUE_BYTES: usize = 64 << 20;

/// What one kept write costs in [`MAX_EARLIER_BYTES`], besides a value it holds.
const WRITE_BYTES: usize = 64;

/// A client's applied write whose outcome the table keeps: its last, or an earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeptWrite {
    /// Its sequence number.
    pub seq: u64,
    /// What it did.
    pub outcome: WriteOutcome,
    /// Where it was in the log.
    pub index: LogIndex,
    /// Its outcome was let go (past [`MAX_LAST_VALUE_BYTES`]): `outcome` is not the
    /// write's, and a retry is refused instead of answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub let_go: bool,
}

impl KeptWrite {
    /// A write that did `outcome`, at `index`.
    pub fn new(seq: u64, outcome: WriteOutcome, index: LogIndex) -> KeptWrite {
        KeptWrite {
            seq,
            outcome,
            index,
            let_go: false,
        }
    }

    /// The length of the value a failed `cas` saw, if that is what it did.
    fn value_bytes(&self) -> usize {
        match &self.outcome {
            WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some(value),
            }) => value.len(),
            _ => 0,
        }
    }

    /// What it costs in [`MAX_EARLIER_BYTES`].
    fn bytes(&self) -> usize {
        WRITE_BYTES + self.value_bytes()
    }

    /// What a retry of it gets.
    fn retried(&self) -> Check {
        if self.let_go {
            Check::LetGo
        } else {
            Check::Duplicate(self.outcome.clone())
        }
    }
}

/// What to do with a write that carries a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Above the client's last write: apply it.
    New,
    /// A retry of a kept write: answer this, apply nothing.
    Duplicate(WriteOutcome),
    /// Below the client's last write, whose seq this is, and not kept: whether it was
    /// applied is not known. Nothing is applied.
    Stale(u64),
    /// Applied before, but its outcome was let go: nothing is applied.
    LetGo,
}

/// One client's kept writes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Client {
    /// Its last write: the highest seq applied.
    last: KeptWrite,
    /// Some of its earlier writes, by seq.
    earlier: OrdMap<u64, KeptWrite>,
}

/// The session table. Cheap to clone (persistent maps), as a snapshot's copy must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sessions {
    by_client: HashMap<String, Client>,
    /// The same clients by the index of their last write: the eviction order.
    by_index: OrdMap<LogIndex, String>,
    /// Every kept earlier write's index, with its client: the order they are let go in.
    earlier: OrdMap<LogIndex, (String, u64)>,
    /// Bytes of the kept earlier writes (see [`MAX_EARLIER_BYTES`]).
    earlier_bytes: usize,
    /// The last writes that hold a value, by index, with their client: the order in which
    /// their outcomes are let go.
    last_values: OrdMap<LogIndex, String>,
    /// The bytes of those values (see [`MAX_LAST_VALUE_BYTES`]).
    last_value_bytes: usize,
}

impl Sessions {
    /// How `session`'s write is to be treated.
    pub fn check(&self, session: &Session) -> Check {
        let Some(client) = self.by_client.get(&session.client) else {
            return Check::New;
        };
        let last = &client.last;
        if session.seq > last.seq {
            Check::New
        } else if session.seq == last.seq {
            last.retried()
        } else if let Some(write) = client.earlier.get(&session.seq) {
            write.retried()
        } else {
            Check::Stale(last.seq)
        }
    }

    /// Records `write` of client `name`; [`Sessions::check`] said it was new, so its seq
    /// is above the client's last.
    pub fn record(&mut self, name: String, write: KeptWrite) {
        self.insert(name, write);
        self.within_bounds();
    }

    /// The table whose [`Sessions::iter`] listed `writes` (a snapshot's). Every write goes
    /// in before the bounds are applied: while they go in, a client's earlier write is for a
    /// moment its last, and the bounds could let go what the listed table kept.
    pub fn rebuilt(writes: impl IntoIterator<Item = (String, KeptWrite)>) -> Sessions {
        let mut sessions = Sessions::default();
        for (name, write) in writes {
            sessions.insert(name, write);
        }
        sessions.within_bounds();
        sessions
    }

    /// Records `write` of client `name`, whatever the bounds.
    fn insert(&mut self, name: String, write: KeptWrite) {
        if write.value_bytes() > 0 {
            self.last_values.insert(write.index, name.clone());
            self.last_value_bytes += write.value_bytes();
        }
        let client = match self.by_client.remove(&name) {
            Some(mut client) => {
                self.by_index.remove(&client.last.index);
                let previous = std::mem::replace(&mut client.last, write);
                self.no_longer_last(&previous);
                self.keep_earlier(&name, &mut client, previous);
                client
            }
            None => Client {
                last: write,
                earlier: OrdMap::new(),
            },
        };
        self.by_index.insert(client.last.index, name.clone());
        self.by_client.insert(name, client);
    }

    /// Forgets clients, and lets go earlier writes and last writes' outcomes, past the
    /// bounds, oldest first.
    fn within_bounds(&mut self) {
        while self.by_client.len() > MAX_SESSIONS {
            let Some((index, oldest)) = self.by_index.get_min().cloned() else {
                break;
            };
            self.by_index.remove(&index);
            if let Some(client) = self.by_client.remove(&oldest) {
                self.no_longer_last(&client.last);
                for write in client.earlier.values() {
                    self.let_go(write);
                }
            }
        }
        while self.last_value_bytes > MAX_LAST_VALUE_BYTES {
            let Some((index, name)) = self.last_values.get_min().cloned() else {
                break;
            };
            let Some(last) = self.by_client.get_mut(&name).map(|client| &mut client.last) else {
                break;
            };
            self.last_values.remove(&index);
            self.last_value_bytes -= last.value_bytes();
            // A placeholder of another kind than the cas it stands for: a version that
            // does not know `let_go` refuses a retry of it ("a write of another kind")
            // rather than answer with it; one older still answers a put, which the cas's
            // client takes for a protocol error.
            last.outcome = WriteOutcome::Put;
            last.let_go = true;
        }
        while self.earlier.len() > MAX_EARLIER || self.earlier_bytes > MAX_EARLIER_BYTES {
            let Some((index, (name, seq))) = self.earlier.get_min().cloned() else {
                break;
            };
            self.earlier.remove(&index);
            let client = self.by_client.get_mut(&name);
            if let Some(write) = client.and_then(|client| client.earlier.remove(&seq)) {
                self.earlier_bytes -= write.bytes() + name.len();
            }
        }
    }

    /// Keeps `write`, which `name`'s new last write follows, among its earlier ones.
    fn keep_earlier(&mut self, name: &str, client: &mut Client, write: KeptWrite) {
        self.earlier
            .insert(write.index, (name.to_owned(), write.seq));
        self.earlier_bytes += write.bytes() + name.len();
        client.earlier.insert(write.seq, write);
        if client.earlier.len() >= WINDOW {
            let oldest = client.earlier.get_min().map(|(seq, _)| *seq);
            if let Some(write) = oldest.and_then(|seq| client.earlier.remove(&seq)) {
                self.let_go(&write);
            }
        }
    }

    /// `write` is no longer its client's last: its value, if any, leaves the last writes'.
    fn no_longer_last(&mut self, write: &KeptWrite) {
        if self.last_values.remove(&write.index).is_some() {
            self.last_value_bytes -= write.value_bytes();
        }
    }

    /// Forgets the earlier write `write` in the global order (its client has let it go).
    fn let_go(&mut self, write: &KeptWrite) {
        if let Some((name, _)) = self.earlier.remove(&write.index) {
            self.earlier_bytes -= write.bytes() + name.len();
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

    /// Every kept write with its client: clients by their last write, oldest first, and
    /// each client's writes by seq, its last at the end. The same order on every node;
    /// [`Sessions::rebuilt`] makes this table again from the list (and a version that keeps
    /// the last write alone makes its own table from it, recording each write in turn).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &KeptWrite)> {
        self.by_index
            .values()
            .filter_map(|name| self.by_client.get(name).map(|client| (name, client)))
            .flat_map(|(name, client)| {
                client
                    .earlier
                    .values()
                    .chain(std::iter::once(&client.last))
                    .map(move |write| (name.as_str(), write))
            })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap as StdHashMap;

    use super::*;

    fn session(client: &str, seq: u64) -> Session {
        Session {
            client: client.into(),
            seq,
        }
    }

    fn record(sessions: &mut Sessions, session: Session, outcome: WriteOutcome, index: LogIndex) {
        sessions.record(session.client, KeptWrite::new(session.seq, outcome, index));
    }

    fn mismatch(value: &str) -> WriteOutcome {
        WriteOutcome::Cas(CasOutcome::Mismatch {
            current: Some(value.to_owned()),
        })
    }

    #[test]
    fn a_retry_of_any_kept_write_gets_its_first_outcome() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(&session("a", 1)), Check::New);
        record(
            &mut sessions,
            session("a", 1),
            WriteOutcome::Put,
            LogIndex(3),
        );
        let deleted = WriteOutcome::Delete { existed: true };
        record(&mut sessions, session("a", 2), deleted.clone(), LogIndex(4));
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
    fn below_the_last_seq_a_write_not_kept_is_stale_whether_or_not_it_was_applied() {
        let mut sessions = Sessions::default();
        let last = WINDOW as u64 + 1;
        for seq in 1..=last {
            record(
                &mut sessions,
                session("a", seq),
                WriteOutcome::Put,
                LogIndex(seq),
            );
        }
        // Seq 1 was let go: the window holds the latest 64.
        assert_eq!(sessions.check(&session("a", 1)), Check::Stale(last));
        assert_eq!(
            sessions.check(&session("a", 2)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(sessions.iter().count(), WINDOW);
        // Seq 2 of "b" was never applied (its batch was lost, say), and seq 3 was: a late
        // copy of 2 is not applied after 3, so a session's writes keep their order.
        record(
            &mut sessions,
            session("b", 1),
            WriteOutcome::Put,
            LogIndex(100),
        );
        record(
            &mut sessions,
            session("b", 3),
            WriteOutcome::Put,
            LogIndex(101),
        );
        assert_eq!(sessions.check(&session("b", 2)), Check::Stale(3));
    }

    #[test]
    fn what_is_applied_is_what_a_table_of_last_writes_alone_would_apply() {
        // Older versions keep each client's last seq only; nodes of both must apply the
        // same writes. Random seqs from three clients, some repeated, some out of order.
        let (mut sessions, mut last) = (Sessions::default(), StdHashMap::new());
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        for index in 1..=5_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let client = ["a", "b", "c"][(rng % 3) as usize];
            let seq = (index / 3 + rng % 90).saturating_sub(60);
            let applies = last.get(client).is_none_or(|&l| seq > l);
            let check = sessions.check(&session(client, seq));
            assert_eq!(check == Check::New, applies, "{client} {seq} at {index}");
            if applies {
                last.insert(client, seq);
                record(
                    &mut sessions,
                    session(client, seq),
                    WriteOutcome::Put,
                    LogIndex(index),
                );
            }
        }
    }

    #[test]
    fn past_the_limit_the_client_idle_longest_in_the_log_is_forgotten() {
        let mut sessions = Sessions::default();
        for i in 0..MAX_SESSIONS as u64 {
            record(
                &mut sessions,
                session(&format!("c{i}"), 1),
                WriteOutcome::Put,
                LogIndex(i + 1),
            );
        }
        // c0 writes again, so c1 is now the one idle longest.
        let at = LogIndex(MAX_SESSIONS as u64 + 1);
        record(&mut sessions, session("c0", 2), WriteOutcome::Put, at);
        record(
            &mut sessions,
            session("new", 1),
            WriteOutcome::Put,
            at.next(),
        );
        assert_eq!(sessions.len(), MAX_SESSIONS);
        assert_eq!(sessions.check(&session("c1", 1)), Check::New, "forgotten");
        assert_eq!(
            sessions.check(&session("c0", 1)),
            Check::Duplicate(WriteOutcome::Put)
        );
        assert_eq!(
            sessions.iter().next().map(|(c, _)| c.to_owned()),
            Some("c2".to_owned())
        );
    }

    #[test]
    fn earlier_writes_are_let_go_oldest_first_past_their_bounds_and_no_client_with_them() {
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        // Each client's failed cas (keeping 1 MiB) is followed by a put: the cas is an
        // earlier write.
        let clients = MAX_EARLIER_BYTES / big.len() + 10;
        for i in 0..clients as u64 {
            let name = format!("c{i}");
            record(
                &mut sessions,
                session(&name, 1),
                mismatch(&big),
                LogIndex(2 * i + 1),
            );
            record(
                &mut sessions,
                session(&name, 2),
                WriteOutcome::Put,
                LogIndex(2 * i + 2),
            );
        }
        assert_eq!(sessions.len(), clients, "no client is forgotten");
        assert!(sessions.earlier_bytes <= MAX_EARLIER_BYTES);
        assert_eq!(sessions.check(&session("c0", 1)), Check::Stale(2));
        let newest = format!("c{}", clients - 1);
        assert_eq!(
            sessions.check(&session(&newest, 1)),
            Check::Duplicate(mismatch(&big))
        );
        // The count bound: three writes each, so two earlier ones, 10 too many in all.
        let mut sessions = Sessions::default();
        for i in 0..(MAX_EARLIER as u64 + 10) / 2 {
            let name = format!("c{i}");
            for seq in 1..=3 {
                record(
                    &mut sessions,
                    session(&name, seq),
                    WriteOutcome::Put,
                    LogIndex(3 * i + seq),
                );
            }
        }
        assert_eq!(sessions.earlier.len(), MAX_EARLIER);
        assert_eq!(sessions.check(&session("c4", 2)), Check::Stale(3));
        assert_eq!(
            sessions.check(&session("c5", 1)),
            Check::Duplicate(WriteOutcome::Put)
        );
    }

    #[test]
    fn past_their_bound_the_oldest_last_writes_let_their_outcome_go_but_keep_their_seq() {
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        let clients = MAX_LAST_VALUE_BYTES / big.len() + 10;
        for i in 0..clients as u64 {
            record(
                &mut sessions,
                session(&format!("c{i}"), 1),
                mismatch(&big),
                LogIndex(i + 1),
            );
        }
        assert_eq!(sessions.len(), clients, "no client is forgotten");
        assert!(sessions.last_value_bytes <= MAX_LAST_VALUE_BYTES);
        // A retry is refused, not applied again; a later write is still new.
        assert_eq!(sessions.check(&session("c0", 1)), Check::LetGo);
        assert_eq!(sessions.check(&session("c0", 2)), Check::New);
        let newest = format!("c{}", clients - 1);
        assert_eq!(
            sessions.check(&session(&newest, 1)),
            Check::Duplicate(mismatch(&big))
        );
        // Once it is an earlier write, a retry is still refused.
        record(
            &mut sessions,
            session("c0", 2),
            WriteOutcome::Put,
            LogIndex(clients as u64 + 1),
        );
        assert_eq!(sessions.check(&session("c0", 1)), Check::LetGo);
    }

    #[test]
    fn a_write_is_listed_as_older_versions_list_it_unless_its_outcome_was_let_go() {
        let write = KeptWrite::new(7, WriteOutcome::Put, LogIndex(9));
        let json = serde_json::to_string(&write).expect("encodes");
        assert_eq!(json, r#"{"seq":7,"outcome":"Put","index":9}"#);
        let let_go = KeptWrite {
            let_go: true,
            ..write
        };
        let json = serde_json::to_string(&let_go).expect("encodes");
        assert!(json.contains(r#""let_go":true"#), "{json}");
        assert_eq!(serde_json::from_str::<KeptWrite>(&json).ok(), Some(let_go));
    }

    #[test]
    fn recording_what_iter_lists_rebuilds_the_table() {
        // What a snapshot does; it must hold with full windows, writes let go past the
        // byte bound, and clients out of order.
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        let mut index = 0;
        let mut next = |sessions: &mut Sessions, client: &str, seq, outcome| {
            index += 1;
            if sessions.check(&session(client, seq)) == Check::New {
                record(sessions, session(client, seq), outcome, LogIndex(index));
            }
        };
        for seq in 0..100 {
            next(&mut sessions, "a", seq, WriteOutcome::Put);
            next(&mut sessions, "b", seq / 2, WriteOutcome::Put);
        }
        for i in 0..MAX_EARLIER_BYTES / big.len() + 5 {
            next(&mut sessions, &format!("big{i}"), 1, mismatch(&big));
            next(&mut sessions, &format!("big{i}"), 2, WriteOutcome::Put);
        }
        // Last writes whose values pass their bound: the oldest outcomes are let go.
        for i in 0..MAX_LAST_VALUE_BYTES / big.len() + 5 {
            next(&mut sessions, &format!("last{i}"), 1, mismatch(&big));
        }
        next(&mut sessions, "last0", 2, WriteOutcome::Put);
        next(&mut sessions, "big3", 3, WriteOutcome::Put);
        next(&mut sessions, "a", 100, WriteOutcome::Put);
        assert_eq!(sessions.check(&session("last1", 1)), Check::LetGo);
        assert_eq!(rebuilt(&sessions), sessions);
    }

    /// What a node restoring `sessions` from its snapshot gets.
    fn rebuilt(sessions: &Sessions) -> Sessions {
        Sessions::rebuilt(sessions.iter().map(|(c, w)| (c.to_owned(), w.clone())))
    }

    #[test]
    fn rebuilding_lets_go_nothing_the_table_kept() {
        // While the list goes back in, a client's earlier write is for a moment its last:
        // applying the bounds then would count its value among the last writes', and let
        // something go.
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        record(&mut sessions, session("c", 1), mismatch("x"), LogIndex(1));
        record(
            &mut sessions,
            session("c", 2),
            WriteOutcome::Put,
            LogIndex(2),
        );
        let at_the_bound = (MAX_LAST_VALUE_BYTES / big.len()) as u64;
        for i in 0..at_the_bound {
            let name = format!("l{i}");
            record(
                &mut sessions,
                session(&name, 1),
                mismatch(&big),
                LogIndex(3 + i),
            );
        }
        record(
            &mut sessions,
            session("c", 3),
            WriteOutcome::Put,
            LogIndex(3 + at_the_bound),
        );
        let rebuilt = rebuilt(&sessions);
        assert_eq!(
            rebuilt.check(&session("c", 1)),
            Check::Duplicate(mismatch("x"))
        );
        assert_eq!(rebuilt, sessions);
    }

    #[test]
    fn the_bounds_hold_and_a_rebuild_matches_after_random_writes() {
        // Failed cas writes on large values and puts, from 150 clients, some seqs repeated;
        // the counters must match what the table holds, and a snapshot must rebuild it.
        let mut sessions = Sessions::default();
        let big = "v".repeat(1 << 20);
        let mut seqs = StdHashMap::new();
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        for index in 1..=400 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let client = format!("c{}", rng % 150);
            let seq = seqs.entry(client.clone()).or_insert(0);
            *seq += u64::from(!rng.is_multiple_of(3));
            let outcome = if rng % 5 < 4 {
                mismatch(&big)
            } else {
                WriteOutcome::Put
            };
            if sessions.check(&session(&client, *seq)) == Check::New {
                record(
                    &mut sessions,
                    session(&client, *seq),
                    outcome,
                    LogIndex(index),
                );
            }
            assert_counters(&sessions);
            if index % 50 == 0 {
                assert_eq!(rebuilt(&sessions), sessions, "at {index}");
            }
        }
        assert!(
            sessions.iter().any(|(_, w)| w.let_go),
            "the bound was reached"
        );
        // One client past its window: its oldest earlier writes are let go one by one.
        for seq in 1..=70 {
            let index = LogIndex(1_000 + seq);
            record(&mut sessions, session("busy", seq), mismatch("seen"), index);
            assert_counters(&sessions);
        }
        assert_eq!(sessions.check(&session("busy", 6)), Check::Stale(70));
        assert_eq!(rebuilt(&sessions), sessions);
    }

    /// The counters agree with what the table holds, and the bound on last values holds.
    fn assert_counters(sessions: &Sessions) {
        let (values, bytes) = sessions.by_client.values().fold((0, 0), |(n, b), client| {
            let value = client.last.value_bytes();
            (n + usize::from(value > 0), b + value)
        });
        assert_eq!(values, sessions.last_values.len());
        assert_eq!(bytes, sessions.last_value_bytes);
        assert!(bytes <= MAX_LAST_VALUE_BYTES);
        let earlier: usize = sessions.by_client.values().map(|c| c.earlier.len()).sum();
        assert_eq!(earlier, sessions.earlier.len());
        let earlier_bytes: usize = sessions
            .by_client
            .iter()
            .flat_map(|(name, c)| c.earlier.values().map(move |w| w.bytes() + name.len()))
            .sum();
        assert_eq!(earlier_bytes, sessions.earlier_bytes);
    }
}
