//! [`Applier`]: applies committed entries to the state [`Machine`], once each, in index
//! order, and answers the clients waiting for them.

use std::collections::BTreeMap;

use kv_server::protocol::{Command, Failure, Outcome, Reply, Session};
use kv_server::store::KvMap;
use replication_naive::node::RequestTag;

use crate::log::RaftLog;
use crate::sessions::{Check, KeptWrite, Sessions};
use crate::storage::Storage;
use crate::types::{LogIndex, Payload, Term};

/// The replicated state: what applying the log builds, and what a snapshot holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Machine {
    /// The key/value map.
    pub map: KvMap,
    /// Each client's last writes, for exactly-once retries.
    pub sessions: Sessions,
}

impl Machine {
    /// Applies a client's write at `index`; with a session, at most once.
    pub fn apply(
        &mut self,
        command: Command,
        session: Option<Session>,
        index: LogIndex,
    ) -> Outcome {
        let Some(session) = session else {
            return Ok(Reply::Write(self.map.apply(command)));
        };
        match self.sessions.check(&session) {
            Check::New => {
                let outcome = self.map.apply(command);
                let write = KeptWrite::new(session.seq, outcome.clone(), index);
                self.sessions.record(session.client, write);
                Ok(Reply::Write(outcome))
            }
            Check::Duplicate(outcome) if outcome.kind() == command.kind() => {
                Ok(Reply::Write(outcome))
            }
            // The client reused a seq for another write: answering with the first write's
            // outcome would give it an answer of the wrong shape (a cas told `ok` with no
            // `swapped`), and applying it would break "at most once" for the pair.
            Check::Duplicate(_) => Err(Failure::bad_request(format!(
                "seq {} of client {:?} was a write of another kind; a seq names one write, \
                 and its retries repeat it. Nothing was changed",
                session.seq, session.client
            ))),
            Check::LetGo => Err(Failure::bad_request(format!(
                "seq {} of client {:?} was applied, but its outcome was let go (the session \
                 table keeps at most 64 MiB of the values failed cas writes saw); nothing \
                 was changed now",
                session.seq, session.client
            ))),
            Check::Stale(last) => Err(Failure::bad_request(format!(
                "seq {} of client {:?} is below its last applied write (seq {last}), and \
                 its outcome is not kept; nothing was changed",
                session.seq, session.client
            ))),
        }
    }
}

/// The state machine and the clients waiting on it.
#[derive(Debug, Default)]
pub struct Applier {
    machine: Machine,
    last_applied: LogIndex,
    /// Roughly how many bytes of entries have been applied (see [`Payload::approx_bytes`]).
    applied_bytes: u64,
    /// Clients waiting for the entry they proposed at an index, in a term.
    waiting: BTreeMap<LogIndex, (Term, RequestTag)>,
}

impl Applier {
    /// An empty state machine.
    pub fn new() -> Applier {
        Applier::default()
    }

    /// The key/value map, as of [`Applier::last_applied`].
    pub fn state(&self) -> &KvMap {
        &self.machine.map
    }

    /// The whole replicated state (map and sessions), as of [`Applier::last_applied`].
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The highest index applied.
    pub fn last_applied(&self) -> LogIndex {
        self.last_applied
    }

    /// Roughly how many bytes of entries this applier has applied since it was created:
    /// what a size-based snapshot trigger counts.
    pub fn applied_bytes(&self) -> u64 {
        self.applied_bytes
    }

    /// Answers `tag` when the entry proposed at `index` in `term` is applied. Returns the
    /// client that waited on an earlier term's entry at the same index, if any: this node's
    /// copy of that entry was replaced (its log was cut back and grew again), so it can no
    /// longer tell whether the entry commits (another node may still hold it, and be
    /// elected with it); the caller answers that client now, with [`Applier::displaced`].
    pub fn wait(&mut self, index: LogIndex, term: Term, tag: RequestTag) -> Option<RequestTag> {
        self.waiting
            .insert(index, (term, tag))
            .map(|(_, displaced)| displaced)
    }

    /// Forgets every client waiting for an entry, for a node that will not learn what
    /// became of them: the caller answers them.
    pub fn abandon(&mut self) -> Vec<RequestTag> {
        std::mem::take(&mut self.waiting)
            .into_values()
            .map(|(_, tag)| tag)
            .collect()
    }

    /// The answer for a client that [`Applier::wait`] displaced: its write's outcome is
    /// unknown.
    pub fn displaced() -> Outcome {
        Err(Failure::timeout(
            "this node lost track of the write when its log was overwritten; it may or may not take effect",
        ))
    }

    /// The answer for a client whose entry was replaced by another leader's at the index
    /// that committed: it never happened, and never will.
    pub fn replaced() -> Outcome {
        Err(Failure::unavailable(
            "leadership changed before the write was committed; it did not happen",
        ))
    }

    /// Replaces the state with a snapshot's, which covers everything up to `index` (§7).
    /// Returns the clients that waited on entries the snapshot covers, with their answer:
    /// whether their entry or another leader's made it into the snapshot cannot be told, so
    /// the outcome is unknown to them.
    pub fn restore(&mut self, state: Machine, index: LogIndex) -> Vec<(RequestTag, Outcome)> {
        let replaced = std::mem::replace(&mut self.machine, state);
        // A node starting from its snapshot replaces an empty state: no thread for that.
        if !replaced.map.is_empty() {
            drop_aside(replaced);
        }
        self.last_applied = index;
        let later = self.waiting.split_off(&index.next());
        std::mem::replace(&mut self.waiting, later)
            .into_values()
            .map(|(_, tag)| {
                let unknown = Failure::timeout(
                    "the node caught up from a snapshot; the write may or may not have taken effect",
                );
                (tag, Err(unknown))
            })
            .collect()
    }

    /// Applies every committed entry not yet applied, and returns the answers for the clients
    /// that waited on them. A client whose entry was replaced by another leader's (same
    /// index, other term) learns that its write did not happen: an entry that is replaced was
    /// never committed, and never will be.
    pub fn apply_committed<S: Storage>(&mut self, log: &RaftLog<S>) -> Vec<(RequestTag, Outcome)> {
        let mut answers = Vec::new();
        while self.last_applied < log.commit_index() {
            let from = self.last_applied.next();
            let batch = log.entries(from, log.commit_index(), 1024);
            assert!(
                !batch.is_empty(),
                "committed entries {from}..={} must be in the log",
                log.commit_index()
            );
            for entry in batch {
                assert_eq!(
                    entry.index,
                    self.last_applied.next(),
                    "entries are applied once, in order"
                );
                self.last_applied = entry.index;
                self.applied_bytes += entry.payload.approx_bytes() as u64;
                let outcome = match entry.payload {
                    Payload::Command(command) => self.machine.apply(command, None, entry.index),
                    Payload::SessionCommand { session, command } => {
                        self.machine.apply(command, Some(session), entry.index)
                    }
                    Payload::Noop | Payload::Config(_) => Ok(Reply::Done),
                };
                if let Some((term, tag)) = self.waiting.remove(&entry.index) {
                    let answer = if term == entry.term {
                        outcome
                    } else {
                        Applier::replaced()
                    };
                    answers.push((tag, answer));
                }
            }
        }
        answers
    }
}

/// Drops `old` on a thread of its own. A follower far enough behind to be sent a snapshot
/// replaces its whole state; freeing half a million keys held its node's task for 57 ms
/// (BENCHMARKS.md, "Session 11"), and nothing leaves a node meanwhile.
fn drop_aside<T: Send + 'static>(old: T) {
    // When no thread can be started, the refused closure, `old` with it, is dropped here.
    let _ = std::thread::Builder::new()
        .name("drop-state".into())
        .spawn(move || drop(old));
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::thread::{self, ThreadId};

    use kv_server::protocol::{ErrorCode, WriteOutcome};

    use super::*;

    #[test]
    fn a_replaced_state_is_dropped_on_another_thread() {
        /// Tells which thread dropped it.
        struct Witness(mpsc::Sender<ThreadId>);
        impl Drop for Witness {
            fn drop(&mut self) {
                let _ = self.0.send(thread::current().id());
            }
        }
        let (tx, dropped_on) = mpsc::channel();
        drop_aside(Witness(tx));
        let on = dropped_on.recv().expect("the witness is dropped");
        assert_ne!(on, thread::current().id());
    }

    #[test]
    fn a_seq_reused_for_another_kind_of_write_is_refused_and_changes_nothing() {
        let mut machine = Machine::default();
        let session = |seq| {
            Some(Session {
                client: "a".into(),
                seq,
            })
        };
        let put = Command::Put {
            key: "k".into(),
            value: "1".into(),
        };
        let cas = Command::Cas {
            key: "k".into(),
            expected: Some("1".into()),
            value: "2".into(),
        };
        let done = Ok(Reply::Write(WriteOutcome::Put));
        assert_eq!(machine.apply(put.clone(), session(1), LogIndex(1)), done);
        assert_eq!(machine.apply(put, session(1), LogIndex(2)), done, "a retry");
        let reused = machine.apply(cas, session(1), LogIndex(3));
        assert!(
            matches!(&reused, Err(f) if f.code == ErrorCode::BadRequest && f.message.contains("another kind")),
            "{reused:?}"
        );
        assert_eq!(machine.map.get("k"), Some("1"));
    }

    #[test]
    fn a_client_displaced_from_its_index_is_handed_back_to_be_answered() {
        // A former leader's entry at index 5 (term 2) was cut from its log; it leads again
        // and a new entry takes index 5 in term 4. The first client must not wait forever.
        let mut applier = Applier::new();
        assert_eq!(applier.wait(LogIndex(5), Term(2), RequestTag(1)), None);
        assert_eq!(
            applier.wait(LogIndex(5), Term(4), RequestTag(2)),
            Some(RequestTag(1))
        );
    }
}
