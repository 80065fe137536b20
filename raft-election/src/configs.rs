//! [`Configs`]: the configurations a node's log holds, so that the latest one is in force
//! whether committed or not (thesis §4.1), and a log cut back by a new leader falls back to
//! the one before.

use std::collections::BTreeMap;

use kv_server::protocol::NodeId;
use raft_log::log::RaftLog;
use raft_log::membership::Membership;
use raft_log::storage::Storage;
use raft_log::types::{Entry, LogIndex, Payload, Term};

/// A node's configuration history: one base and the configuration entries after it.
#[derive(Debug, Clone)]
pub struct Configs {
    /// The configuration in force before any entry of `entries`, and the index it is from:
    /// the node's initial configuration (index 0) or a snapshot's.
    base: (LogIndex, Membership),
    /// Configuration entries in the log after `base`, with their terms.
    entries: BTreeMap<LogIndex, (Term, Membership)>,
}

impl Configs {
    /// A history starting from `initial` (the configuration given on the command line, or
    /// none for a node that joins).
    pub fn new(initial: Membership) -> Configs {
        Configs {
            base: (LogIndex(0), initial),
            entries: BTreeMap::new(),
        }
    }

    /// The configuration in force: the latest one in the log.
    pub fn latest(&self) -> &Membership {
        self.entries
            .values()
            .next_back()
            .map_or(&self.base.1, |(_, m)| m)
    }

    /// The index of the latest configuration's entry (0 for the initial one).
    pub fn latest_index(&self) -> LogIndex {
        self.entries
            .keys()
            .next_back()
            .copied()
            .unwrap_or(self.base.0)
    }

    /// Whether any configuration in the history includes `id`.
    pub fn any_contains(&self, id: NodeId) -> bool {
        self.base.1.contains(id) || self.entries.values().any(|(_, m)| m.contains(id))
    }

    /// The configuration in force at `index`: the latest one at or before it.
    pub fn at(&self, index: LogIndex) -> &Membership {
        self.entries
            .range(..=index)
            .next_back()
            .map_or(&self.base.1, |(_, (_, m))| m)
    }

    /// Records the configuration entries among `entries`, newly in the log.
    pub fn appended<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>) {
        for entry in entries {
            if let Payload::Config(membership) = &entry.payload {
                self.push(entry.index, entry.term, membership.clone());
            }
        }
    }

    /// Records `membership`, appended to the log at `index` in `term`.
    pub fn push(&mut self, index: LogIndex, term: Term, membership: Membership) {
        if index > self.base.0 {
            self.entries.insert(index, (term, membership));
        }
    }

    /// Forgets configuration entries that `log` no longer holds: a new leader cut the log
    /// back, and an uncommitted configuration went with the entries after it.
    pub fn truncated<S: Storage>(&mut self, log: &RaftLog<S>) {
        while let Some((&index, &(term, _))) = self.entries.iter().next_back() {
            if log.term(index) == Some(term) {
                break;
            }
            self.entries.remove(&index);
        }
    }

    /// The log was compacted up to `index`: entries at or before it fold into the base.
    pub fn compacted(&mut self, index: LogIndex) {
        let later = self.entries.split_off(&index.next());
        if let Some((&at, (_, membership))) = self.entries.iter().next_back() {
            self.base = (at, membership.clone());
        }
        self.entries = later;
    }

    /// A snapshot covering everything up to `index`, with configuration `membership`, was
    /// installed; `log` holds what is left after it.
    pub fn restored<S: Storage>(
        &mut self,
        index: LogIndex,
        membership: Membership,
        log: &RaftLog<S>,
    ) {
        self.entries = self.entries.split_off(&index.next());
        self.base = (index, membership);
        self.truncated(log);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use raft_log::storage::MemStorage;

    use super::*;

    fn voters(ids: &[u64]) -> Membership {
        Membership::voters(
            &ids.iter()
                .map(|&i| (NodeId(i), format!("127.0.0.1:700{i}")))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    fn entry(index: u64, term: u64, payload: Payload) -> Entry {
        Entry {
            index: LogIndex(index),
            term: Term(term),
            payload,
        }
    }

    /// A log whose entries start at the first of `entries` (compacted before it).
    fn log_of(entries: &[Entry]) -> RaftLog<MemStorage> {
        let mut storage = MemStorage::new();
        if let Some(first) = entries.first().filter(|e| e.index > LogIndex(1)) {
            storage.compact(first.index.prev(), first.term);
        }
        storage.append(entries.to_vec());
        RaftLog::new(storage)
    }

    #[test]
    fn the_latest_entry_is_in_force_and_earlier_ones_answer_for_earlier_indexes() {
        let entries = [
            entry(1, 1, Payload::Noop),
            entry(2, 1, Payload::Config(voters(&[1, 2]))),
            entry(3, 1, Payload::Noop),
            entry(4, 2, Payload::Config(voters(&[1, 2, 3]))),
        ];
        let mut configs = Configs::new(voters(&[1]));
        configs.appended(&entries);
        assert_eq!(configs.latest(), &voters(&[1, 2, 3]));
        assert_eq!(configs.latest_index(), LogIndex(4));
        assert_eq!(configs.at(LogIndex(1)), &voters(&[1]));
        assert_eq!(configs.at(LogIndex(3)), &voters(&[1, 2]));
    }

    #[test]
    fn a_cut_back_log_falls_back_to_the_previous_configuration() {
        let mut entries = vec![
            entry(1, 1, Payload::Config(voters(&[1, 2]))),
            entry(2, 1, Payload::Config(voters(&[1, 2, 3]))),
        ];
        let mut configs = Configs::new(voters(&[1]));
        configs.appended(&entries);
        // A leader of term 2 replaced entry 2 with a no-op.
        entries[1] = entry(2, 2, Payload::Noop);
        configs.truncated(&log_of(&entries));
        assert_eq!(configs.latest(), &voters(&[1, 2]));
        assert_eq!(configs.latest_index(), LogIndex(1));
        // ... and with nothing at all: back to the initial configuration.
        configs.truncated(&log_of(&[]));
        assert_eq!(configs.latest(), &voters(&[1]));
    }

    #[test]
    fn compaction_keeps_the_configuration_in_force_at_the_compaction_point() {
        let entries = [
            entry(1, 1, Payload::Config(voters(&[1, 2]))),
            entry(5, 1, Payload::Config(voters(&[1, 2, 3]))),
        ];
        let mut configs = Configs::new(voters(&[1]));
        configs.appended(&entries);
        configs.compacted(LogIndex(3));
        assert_eq!(configs.at(LogIndex(3)), &voters(&[1, 2]));
        assert_eq!(configs.latest(), &voters(&[1, 2, 3]));
        configs.compacted(LogIndex(9));
        assert_eq!(configs.latest(), &voters(&[1, 2, 3]));
        assert_eq!(configs.latest_index(), LogIndex(5));
    }

    #[test]
    fn a_restored_snapshot_replaces_what_it_covers_and_keeps_what_the_log_still_holds() {
        let entries = [
            entry(1, 1, Payload::Config(voters(&[1, 2]))),
            entry(8, 1, Payload::Config(voters(&[1, 2, 3]))),
        ];
        let mut configs = Configs::new(voters(&[1]));
        configs.appended(&entries);
        // A snapshot at 5 whose log suffix still holds entry 8.
        let log = log_of(&[entry(8, 1, Payload::Config(voters(&[1, 2, 3])))]);
        configs.restored(LogIndex(5), voters(&[1, 2]), &log);
        assert_eq!(configs.latest(), &voters(&[1, 2, 3]));
        // A snapshot at 5 whose log holds nothing after it.
        configs.restored(LogIndex(5), voters(&[1, 2]), &log_of(&[]));
        assert_eq!(configs.latest(), &voters(&[1, 2]));
        assert_eq!(configs.latest_index(), LogIndex(5));
    }
}
