//! [`RaftLog`]: the log and its commit index, with the rules that keep logs consistent
//! (§5.3): the follower's side of AppendEntries, the leader's reading of a rejection, and the
//! commit rule (§5.4.2). Every Raft stage keeps its log in one of these.

use replication_naive::node::SyncJob;

use crate::message::{AppendEntries, AppendEntriesResponse, Rejection};
use crate::storage::{HardState, Storage};
use crate::types::{Entry, LogIndex, Payload, Term};

/// A node's log (in some [`Storage`]) and how much of it is committed.
#[derive(Debug)]
pub struct RaftLog<S> {
    storage: S,
    commit_index: LogIndex,
}

impl<S: Storage> RaftLog<S> {
    /// The log held by `storage`, nothing known committed yet (the commit index is volatile).
    pub fn new(storage: S) -> RaftLog<S> {
        RaftLog {
            storage,
            commit_index: LogIndex(0),
        }
    }

    /// Gives back the storage (what survives a crash).
    pub fn into_storage(self) -> S {
        self.storage
    }

    /// The storage underneath.
    pub fn storage(&self) -> &S {
        &self.storage
    }

    /// The saved hard state.
    pub fn hard_state(&self) -> HardState {
        self.storage.hard_state()
    }

    /// Saves the hard state.
    pub fn save_hard_state(&mut self, state: HardState) {
        self.storage.save_hard_state(state);
    }

    /// Makes every change since the last call durable (see [`Storage::sync`]).
    pub fn sync(&mut self) {
        self.storage.sync();
    }

    /// Starts making every change so far durable (see [`Storage::start_sync`]).
    pub fn start_sync(&mut self) -> Option<SyncJob> {
        self.storage.start_sync()
    }

    /// The sync started last has finished (see [`Storage::finish_sync`]).
    pub fn finish_sync(&mut self, result: std::io::Result<()>) {
        self.storage.finish_sync(result);
    }

    /// The index of the last entry (0 when empty).
    pub fn last_index(&self) -> LogIndex {
        self.storage.last_index()
    }

    /// The term of the last entry (0 when empty).
    pub fn last_term(&self) -> Term {
        self.storage
            .term(self.last_index())
            .expect("the last entry's term is always known")
    }

    /// The term of the entry at `index`, if known.
    pub fn term(&self, index: LogIndex) -> Option<Term> {
        self.storage.term(index)
    }

    /// Entries `from..=to`, at most `max`.
    pub fn entries(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry> {
        self.storage.entries(from, to, max)
    }

    /// The highest index known to be committed.
    pub fn commit_index(&self) -> LogIndex {
        self.commit_index
    }

    /// Leader: appends a new entry of `term` and returns its index.
    pub fn append_new(&mut self, term: Term, payload: Payload) -> LogIndex {
        let index = self.last_index().next();
        self.storage.append(vec![Entry {
            index,
            term,
            payload,
        }]);
        index
    }

    /// Follower: steps 2-5 of Figure 2's AppendEntries receiver (the caller has checked the
    /// term, step 1). `Ok(index)`: the log now matches the leader's up to `index`. `Err`: the
    /// consistency check failed, with the hint that lets the leader skip a whole term.
    pub fn accept(
        &mut self,
        prev_log_index: LogIndex,
        prev_log_term: Term,
        mut entries: Vec<Entry>,
        leader_commit: LogIndex,
    ) -> Result<LogIndex, Rejection> {
        let (prev_log_index, prev_log_term) = {
            let compacted = self.storage.first_index().prev();
            if prev_log_index < compacted {
                // §7: everything up to `compacted` is in this node's snapshot, so committed,
                // so identical in the leader's log (Leader Completeness, §5.4.3). Those
                // entries are skipped, not compared with terms this log no longer holds.
                entries.retain(|e| e.index > compacted);
                let term = self
                    .term(compacted)
                    .expect("the compacted index's term is kept");
                (compacted, term)
            } else {
                (prev_log_index, prev_log_term)
            }
        };
        // 2. Reply false if the log has no entry at prev_log_index whose term is
        //    prev_log_term (§5.3), saying where this log's conflicting term starts.
        match self.term(prev_log_index) {
            None => {
                let conflict_index = self.last_index().next();
                return Err(Rejection {
                    prev_log_index,
                    conflict_term: None,
                    conflict_index,
                });
            }
            Some(term) if term != prev_log_term => {
                let conflict_index = self.first_index_of_term(prev_log_index, term);
                return Err(Rejection {
                    prev_log_index,
                    conflict_term: Some(term),
                    conflict_index,
                });
            }
            Some(_) => {}
        }
        // 3. If an existing entry conflicts with a new one (same index, different term),
        //    delete it and all that follow; 4. append entries not already in the log. Entries
        //    already held are left alone, so a late, shorter AppendEntries cannot cut what a
        //    newer one appended.
        let last_new = LogIndex(prev_log_index.0 + entries.len() as u64);
        if let Some(i) = entries
            .iter()
            .position(|e| self.term(e.index) != Some(e.term))
        {
            let first_new = entries[i].index;
            if first_new <= self.last_index() {
                assert!(
                    first_new > self.commit_index,
                    "§5.3: a committed entry is never overwritten"
                );
                self.storage.truncate_after(first_new.prev());
            }
            self.storage.append(entries.split_off(i));
        }
        // 5. If leader_commit > commit_index, commit_index = min(leader_commit, index of the
        //    last new entry): only what this AppendEntries verified, and never backwards.
        self.commit_to(leader_commit.min(last_new));
        Ok(last_new)
    }

    /// Follower: takes an AppendEntries of `current_term` (its term already checked, and
    /// adopted, by the caller) and gives the answer to send back.
    pub fn append_from_leader(
        &mut self,
        req: AppendEntries,
        current_term: Term,
    ) -> AppendEntriesResponse {
        let in_reply_to = req.term;
        let result = self.accept(
            req.prev_log_index,
            req.prev_log_term,
            req.entries,
            req.leader_commit,
        );
        AppendEntriesResponse {
            term: current_term,
            in_reply_to,
            result,
        }
    }

    /// A snapshot of this node's own state covers everything up to `index` (applied, so
    /// committed): drops those entries from the log (§7).
    pub fn compact(&mut self, index: LogIndex) {
        assert!(
            index <= self.commit_index,
            "only committed entries are compacted"
        );
        let term = self.term(index).expect("a compaction point is in the log");
        self.storage.compact(index, term);
    }

    /// A snapshot received from the leader, or loaded at start, covers everything up to
    /// `index` of `term`: the log keeps what follows it if it holds that entry, and is
    /// otherwise replaced (Figure 13, steps 6-7); everything up to `index` is committed.
    pub fn install_snapshot(&mut self, index: LogIndex, term: Term) {
        if self.term(index) != Some(term) {
            self.storage.compact(index, term);
        }
        self.commit_to(index);
    }

    /// Moves the commit index up to `index` (never down).
    pub fn commit_to(&mut self, index: LogIndex) {
        if index > self.commit_index {
            assert!(
                index <= self.last_index(),
                "cannot commit {index} past the log's end"
            );
            self.commit_index = index;
        }
    }

    /// Leader: commits `index`, stored by a majority, if it is from `current_term`.
    /// §5.4.2: only entries from the current term are committed by counting replicas; earlier
    /// ones commit with them (Figure 8). Returns whether the commit index moved.
    pub fn commit_if_current_term(&mut self, index: LogIndex, current_term: Term) -> bool {
        if index > self.commit_index && self.term(index) == Some(current_term) {
            self.commit_index = index;
            return true;
        }
        false
    }

    /// Leader: where to retry after `rejection`: past this log's last entry of the
    /// conflicting term if it has that term, else at the follower's first entry of it (the
    /// optimization at the end of §5.3).
    pub fn next_index_after(&self, rejection: Rejection) -> LogIndex {
        let Some(conflict_term) = rejection.conflict_term else {
            return rejection.conflict_index;
        };
        let mut index = rejection.prev_log_index.min(self.last_index());
        while index >= self.storage.first_index() {
            match self.term(index) {
                Some(term) if term == conflict_term => return index.next(),
                Some(term) if term < conflict_term => break,
                _ => index = index.prev(),
            }
        }
        rejection.conflict_index
    }

    /// The first index of the run of `term` entries that ends at `index`.
    fn first_index_of_term(&self, index: LogIndex, term: Term) -> LogIndex {
        let mut first = index;
        while first.prev() >= self.storage.first_index() && self.term(first.prev()) == Some(term) {
            first = first.prev();
        }
        first
    }
}
