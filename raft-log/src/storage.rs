//! Where a node keeps its log and hard state.
//!
//! The core only talks to [`Storage`], so a durable implementation (stage 6) and log
//! compaction (stage 7) slot in without touching it. The trait has compaction's seam from the
//! start: the log may begin after index 1 ([`Storage::first_index`]), and the term of an entry
//! that is no longer held is unknown (`None`), except for the last compacted one.

use std::collections::VecDeque;

use kv_server::protocol::NodeId;
use replication_naive::node::SyncJob;

use crate::types::{Entry, LogIndex, Term};

/// What a node must remember across restarts besides its log (Figure 2, "persistent state").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HardState {
    /// The latest term this node has seen.
    pub current_term: Term,
    /// Whom it voted for in `current_term`, if anyone.
    pub voted_for: Option<NodeId>,
}

/// A node's log and hard state.
///
/// Invariants every implementation keeps: indexes are contiguous from `first_index()` to
/// `last_index()`; `term(last_index())` is known (for an empty log, `term(LogIndex(0))` is
/// `Term(0)`); appended entries directly follow `last_index()`.
pub trait Storage {
    /// The index of the first entry held (1 while nothing has been compacted).
    fn first_index(&self) -> LogIndex;

    /// The index of the last entry (0 when the log is empty).
    fn last_index(&self) -> LogIndex;

    /// The term of the entry at `index`, if known: `Term(0)` for index 0, `None` past the end
    /// or before what is held.
    fn term(&self, index: LogIndex) -> Option<Term>;

    /// Entries `from..=to`, at most `max` of them, clipped to what is held.
    fn entries(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry>;

    /// Appends entries that directly follow `last_index()`.
    fn append(&mut self, entries: Vec<Entry>);

    /// Removes every entry after `index` (a conflicting suffix, §5.3). Compacted entries are
    /// committed and are never removed.
    fn truncate_after(&mut self, index: LogIndex);

    /// A snapshot now covers everything up to `index`, whose term is `term`: drop those
    /// entries (§7). If the log holds `index` with that term, the entries after it stay; if it
    /// holds a different entry there, or ends before `index`, the whole log goes and it
    /// continues after `index`. Afterwards `first_index()` is `index + 1` and `term(index)` is
    /// `term`. Compacting to an index already compacted does nothing.
    fn compact(&mut self, index: LogIndex, term: Term);

    /// The saved hard state.
    fn hard_state(&self) -> HardState;

    /// Saves the hard state.
    fn save_hard_state(&mut self, state: HardState);

    /// Starts making every change so far durable, without waiting: returns the work (an
    /// fsync, and any write not done here) for the caller to run, on any thread, and hand its result to
    /// [`Storage::finish_sync`]; `None` when nothing is waiting to be made durable. Until
    /// then a change may be lost in a crash, and nothing that depends on it (a vote
    /// granted, an entry acknowledged) may leave the node. Calling it once for many changes
    /// is group commit: one fsync for all of them. One sync at a time: the next starts
    /// after the last has finished.
    fn start_sync(&mut self) -> Option<SyncJob>;

    /// The work from the last [`Storage::start_sync`] has finished with `result`: the
    /// changes it covers are durable. A failed write or fsync may have lost any of them, and
    /// the node must stop rather than acknowledge anything: implementations panic.
    fn finish_sync(&mut self, result: std::io::Result<()>);

    /// The last index whose entry, and every one before it, is durable. A leader counts its
    /// own copy of an entry toward a majority only up to here (thesis §10.2.1: it writes
    /// its log in parallel with sending the entries to followers).
    fn durable_index(&self) -> LogIndex;

    /// The hard state as the last finished sync left it on disk: what a crash now would
    /// leave. A candidate counts its own vote only once it is here, as a leader counts its
    /// own entries only up to [`Storage::durable_index`].
    fn durable_hard_state(&self) -> HardState;

    /// Makes every change so far durable before returning: [`Storage::start_sync`], the
    /// work, [`Storage::finish_sync`].
    fn sync(&mut self) {
        if let Some(job) = self.start_sync() {
            let result = job();
            self.finish_sync(result);
        }
    }
}

/// Most compacted entries freed per entry appended (see [`MemStorage`]'s `dead`).
const FREED_PER_APPEND: usize = 2;

/// A log in memory: everything is lost when the node stops.
#[derive(Debug, Clone, Default)]
pub struct MemStorage {
    /// The compacted entries still held (`dead` of them), then the log's.
    entries: VecDeque<Entry>,
    /// How many entries at the front are compacted and not yet freed. A compaction under
    /// load covers 100,000 entries, a few hundred thousand allocations: freeing them all at
    /// once held the node's task for 10-40 ms (and glibc's consolidation of the freed
    /// chunks as long again, at the next large allocation; BENCHMARKS.md). They are freed
    /// a few per entry appended instead, [`FREED_PER_APPEND`]: under load all are gone well
    /// before the next compaction. With no appends (an idle node, or a follower that has
    /// just installed a snapshot) they stay until appends come.
    dead: usize,
    hard_state: HardState,
    /// The last index a snapshot covers, and its term: `entries[dead]` follows it. (0, 0)
    /// when nothing has been compacted.
    compacted: (LogIndex, Term),
}

impl MemStorage {
    /// An empty log.
    pub fn new() -> Self {
        MemStorage::default()
    }

    /// A log holding `entries` (indexes 1, 2, ...), for tests that start from a given log.
    pub fn with_entries(entries: Vec<Entry>, hard_state: HardState) -> Self {
        for (i, entry) in entries.iter().enumerate() {
            assert_eq!(
                entry.index,
                LogIndex(i as u64 + 1),
                "entries must be contiguous from 1"
            );
        }
        MemStorage {
            entries: entries.into(),
            dead: 0,
            hard_state,
            compacted: (LogIndex(0), Term(0)),
        }
    }

    /// Where `index` is held in `entries`, if the log holds it.
    fn position(&self, index: LogIndex) -> Option<usize> {
        let pos = index.0.checked_sub(self.compacted.0.0 + 1)? as usize + self.dead;
        (pos < self.entries.len()).then_some(pos)
    }

    /// Frees up to `n` compacted entries.
    fn free_dead(&mut self, n: usize) {
        let n = n.min(self.dead);
        self.entries.drain(..n);
        self.dead -= n;
    }
}

impl Storage for MemStorage {
    fn first_index(&self) -> LogIndex {
        self.compacted.0.next()
    }

    fn last_index(&self) -> LogIndex {
        LogIndex(self.compacted.0.0 + (self.entries.len() - self.dead) as u64)
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        if index == self.compacted.0 {
            return Some(self.compacted.1);
        }
        self.position(index).map(|pos| self.entries[pos].term)
    }

    fn entries(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry> {
        let from = from.max(self.first_index());
        let to = to.min(self.last_index());
        let (Some(start), Some(last)) = (self.position(from), self.position(to)) else {
            return Vec::new();
        };
        let end = (last + 1).min(start.saturating_add(max));
        self.entries.range(start..end).cloned().collect()
    }

    fn append(&mut self, entries: Vec<Entry>) {
        let appended = entries.len();
        for entry in entries {
            assert_eq!(
                entry.index,
                self.last_index().next(),
                "appended entries must follow the log"
            );
            self.entries.push_back(entry);
        }
        self.free_dead(appended.saturating_mul(FREED_PER_APPEND));
    }

    fn truncate_after(&mut self, index: LogIndex) {
        assert!(
            index >= self.compacted.0,
            "compacted entries are committed and never removed"
        );
        self.entries
            .truncate(self.dead + (index.0 - self.compacted.0.0) as usize);
    }

    fn compact(&mut self, index: LogIndex, term: Term) {
        if index <= self.compacted.0 {
            return;
        }
        match self.position(index) {
            // §7: an entry matching the snapshot's last one keeps the entries after it.
            Some(pos) if self.entries[pos].term == term => self.dead = pos + 1,
            // A different entry there, or none: the snapshot replaces the whole log.
            _ => self.dead = self.entries.len(),
        }
        self.compacted = (index, term);
    }

    fn hard_state(&self) -> HardState {
        self.hard_state
    }

    fn save_hard_state(&mut self, state: HardState) {
        self.hard_state = state;
    }

    /// Nothing to make durable: the log is in memory only.
    fn start_sync(&mut self) -> Option<SyncJob> {
        None
    }

    fn finish_sync(&mut self, _result: std::io::Result<()>) {}

    /// Everything counts at once: nothing is ever durable, so nothing is waited for.
    fn durable_index(&self) -> LogIndex {
        self.last_index()
    }

    /// As for entries, the hard state counts at once.
    fn durable_hard_state(&self) -> HardState {
        self.hard_state
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::Command;

    use super::*;
    use crate::types::Payload;

    fn entry(index: u64, term: u64) -> Entry {
        let command = Command::Delete {
            key: format!("k{index}"),
        };
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload: Payload::Command(command),
        }
    }

    #[test]
    fn an_empty_log_knows_the_term_of_index_zero_only() {
        let log = MemStorage::new();
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(1), LogIndex(0))
        );
        assert_eq!(log.term(LogIndex(0)), Some(Term(0)));
        assert_eq!(log.term(LogIndex(1)), None);
        assert!(log.entries(LogIndex(1), LogIndex(5), 10).is_empty());
    }

    #[test]
    fn entries_are_clipped_to_the_log_and_to_max() {
        let mut log = MemStorage::new();
        log.append((1..=5).map(|i| entry(i, 1)).collect());
        let got: Vec<u64> = log
            .entries(LogIndex(2), LogIndex(9), 2)
            .iter()
            .map(|e| e.index.0)
            .collect();
        assert_eq!(got, vec![2, 3]);
        assert_eq!(log.entries(LogIndex(0), LogIndex(1), 10).len(), 1);
        assert_eq!(log.term(LogIndex(5)), Some(Term(1)));
    }

    #[test]
    fn truncate_after_removes_the_suffix_only() {
        let mut log = MemStorage::new();
        log.append((1..=5).map(|i| entry(i, i)).collect());
        log.truncate_after(LogIndex(3));
        assert_eq!(log.last_index(), LogIndex(3));
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        log.append(vec![entry(4, 9)]);
        assert_eq!(log.term(LogIndex(4)), Some(Term(9)));
    }

    #[test]
    fn compaction_keeps_the_boundary_term_and_the_entries_after_it() {
        let mut log = MemStorage::new();
        log.append((1..=5).map(|i| entry(i, i)).collect());
        log.compact(LogIndex(3), Term(3));
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(4), LogIndex(5))
        );
        assert_eq!(log.term(LogIndex(3)), Some(Term(3)));
        assert_eq!(log.term(LogIndex(2)), None);
        let held: Vec<u64> = log
            .entries(LogIndex(1), LogIndex(9), 10)
            .iter()
            .map(|e| e.index.0)
            .collect();
        assert_eq!(held, vec![4, 5]);
        log.truncate_after(LogIndex(4));
        log.append(vec![entry(5, 9), entry(6, 9)]);
        assert_eq!(
            (log.last_index(), log.term(LogIndex(6))),
            (LogIndex(6), Some(Term(9)))
        );
        // Compacting again to an earlier point changes nothing.
        log.compact(LogIndex(2), Term(2));
        assert_eq!(log.first_index(), LogIndex(4));
    }

    #[test]
    fn a_snapshot_that_conflicts_with_the_log_or_passes_its_end_replaces_it() {
        // §7: a different entry at the snapshot's last index means the log after it cannot
        // be trusted either.
        let mut log = MemStorage::new();
        log.append((1..=5).map(|i| entry(i, 1)).collect());
        log.compact(LogIndex(3), Term(2));
        assert_eq!(
            (log.first_index(), log.last_index()),
            (LogIndex(4), LogIndex(3))
        );
        assert_eq!(log.term(LogIndex(3)), Some(Term(2)));
        log.append(vec![entry(4, 2)]);
        assert_eq!(log.last_index(), LogIndex(4));

        let mut short = MemStorage::new();
        short.append(vec![entry(1, 1)]);
        short.compact(LogIndex(10), Term(4));
        assert_eq!(
            (
                short.first_index(),
                short.last_index(),
                short.term(LogIndex(10))
            ),
            (LogIndex(11), LogIndex(10), Some(Term(4)))
        );
    }

    #[test]
    #[should_panic(expected = "never removed")]
    fn compacted_entries_cannot_be_truncated() {
        let mut log = MemStorage::new();
        log.append((1..=3).map(|i| entry(i, 1)).collect());
        log.compact(LogIndex(2), Term(1));
        log.truncate_after(LogIndex(1));
    }

    #[test]
    #[should_panic(expected = "follow the log")]
    fn a_gap_is_refused() {
        let mut log = MemStorage::new();
        log.append(vec![entry(2, 1)]);
    }

    #[test]
    fn compacted_entries_are_freed_a_few_per_append_and_all_before_long() {
        let mut log = MemStorage::new();
        log.append((1..=1000).map(|i| entry(i, 1)).collect());
        log.compact(LogIndex(900), Term(1));
        assert_eq!(
            log.entries.len(),
            1000,
            "nothing freed by the compaction itself"
        );
        log.append((1001..=1100).map(|i| entry(i, 1)).collect());
        assert_eq!(log.dead, 900 - 100 * FREED_PER_APPEND);
        for i in 1101..=1600 {
            log.append(vec![entry(i, 1)]);
        }
        assert_eq!(log.dead, 0);
        assert_eq!(log.entries.len(), 700, "only entries 901-1600 held");
    }

    /// Random appends, truncations and compactions (some replacing the whole log) against
    /// a map of index to entry: the log always answers as the map does. Prints the seed of
    /// a failure.
    #[test]
    fn random_changes_read_back_as_a_map_of_the_log() {
        use std::collections::BTreeMap;

        use rand::{Rng, SeedableRng};
        for seed in 0..200 {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
            let mut log = MemStorage::new();
            let mut model: BTreeMap<u64, u64> = BTreeMap::new();
            let mut compacted = (0, 0);
            let mut term = 1;
            for step in 0..200 {
                let last = model.keys().last().copied().unwrap_or(compacted.0);
                match rng.gen_range(0..10) {
                    0..=5 => {
                        let count = rng.gen_range(1..8);
                        log.append((last + 1..=last + count).map(|i| entry(i, term)).collect());
                        model.extend((last + 1..=last + count).map(|i| (i, term)));
                    }
                    6 if last > compacted.0 => {
                        let after = rng.gen_range(compacted.0..last);
                        term += 1;
                        log.truncate_after(LogIndex(after));
                        model.retain(|&i, _| i <= after);
                    }
                    _ if last > compacted.0 => {
                        let index = rng.gen_range(compacted.0 + 1..=last);
                        let at = match rng.gen_bool(0.9) {
                            true => model[&index],
                            false => term + 100,
                        };
                        log.compact(LogIndex(index), Term(at));
                        if model[&index] == at {
                            model.retain(|&i, _| i > index);
                        } else {
                            model.clear();
                        }
                        compacted = (index, at);
                    }
                    _ => {}
                }
                let context = format!("seed {seed}, step {step}");
                let first = compacted.0 + 1;
                let last = model.keys().last().copied().unwrap_or(compacted.0);
                assert_eq!(log.first_index(), LogIndex(first), "{context}");
                assert_eq!(log.last_index(), LogIndex(last), "{context}");
                assert_eq!(
                    log.term(LogIndex(compacted.0)),
                    Some(Term(compacted.1)),
                    "{context}"
                );
                for (&i, &t) in &model {
                    assert_eq!(
                        log.term(LogIndex(i)),
                        Some(Term(t)),
                        "{context}: term of {i}"
                    );
                }
                assert_eq!(log.term(LogIndex(last + 1)), None, "{context}");
                let held: Vec<(u64, u64)> = log
                    .entries(LogIndex(0), LogIndex(last + 5), usize::MAX)
                    .iter()
                    .map(|e| (e.index.0, e.term.0))
                    .collect();
                let expected: Vec<(u64, u64)> = model.iter().map(|(&i, &t)| (i, t)).collect();
                assert_eq!(held, expected, "{context}");
            }
        }
    }
}
