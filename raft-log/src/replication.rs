//! [`Replication`]: the leader's side of log replication — what to send each follower, and
//! what its answers mean (Figure 2, "volatile state on leaders").

use std::collections::BTreeMap;

use kv_server::protocol::NodeId;
use tracing::{debug, warn};

use crate::log::RaftLog;
use crate::message::{AppendEntries, Rejection};
use crate::storage::Storage;
use crate::types::{LogIndex, Term};

/// Most bytes of entries (roughly) in one AppendEntries: far below the peer transport's
/// frame limit, however large the values.
pub const MAX_BATCH_BYTES: usize = 4 << 20;

/// How the leader sends to one follower (the two modes of etcd's raft).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Where the follower's log matches is not known: one AppendEntries at a time, moving
    /// `next_index` back on each rejection until one is accepted.
    Probe {
        /// An AppendEntries is out and unanswered; the next goes out on its answer or at the
        /// next heartbeat (in case it was lost).
        waiting: bool,
    },
    /// The logs match up to `match_index`: new entries are sent as soon as they exist, and
    /// `next_index` moves ahead optimistically without waiting for answers.
    Pipeline,
    /// The follower needs entries this log no longer holds (they are in a snapshot, §7):
    /// the snapshot is being sent to it, and no entries go until it is installed
    /// ([`Replication::snapshot_installed`]).
    Snapshot,
}

/// Why the leader is sending: what each follower gets depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Occasion {
    /// New entries: a follower gets those it lacks, when its mode lets it have them now.
    Entries,
    /// The commit index moved: as for new entries, and a pipelining follower with nothing
    /// new gets an empty AppendEntries carrying the commit index. A follower being probed
    /// is not sent its probe again: a commit index is no use to it until its log matches.
    Commit,
    /// A heartbeat: every follower hears from the leader, and a probe whose answer may have
    /// been lost goes again.
    Heartbeat,
}

/// The leader's view of one follower.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The next entry to send.
    pub next_index: LogIndex,
    /// The highest entry known to be replicated on the follower.
    pub match_index: LogIndex,
    /// Probing or pipelining.
    pub mode: Mode,
}

/// Whether followers keep their logs across restarts. It decides what a rejection at or
/// below a follower's `match_index` means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowerLogs {
    /// Stage 3: a restarted follower comes back empty, so a rejection at or below
    /// `match_index` can be news (it lost what it acknowledged) and resets its progress.
    Volatile,
    /// From stage 6: what a follower acknowledged in this term it keeps, so a rejection at
    /// `match_index` is a reordered answer to an older request, and is ignored. (A fresh
    /// rejection below it means the follower lost its disk; it is believed, and logged.)
    Durable,
}

/// A leader's progress with every follower.
#[derive(Debug, Clone)]
pub struct Replication {
    progress: BTreeMap<NodeId, Progress>,
    max_entries: usize,
    logs: FollowerLogs,
}

impl Replication {
    /// Progress for `followers` of a leader whose log ends at `last_index`: each is probed
    /// from just after it, and nothing is known to match (Figure 2: next_index = last log
    /// index + 1, match_index = 0).
    pub fn new(
        followers: impl IntoIterator<Item = NodeId>,
        last_index: LogIndex,
        max_entries: usize,
        logs: FollowerLogs,
    ) -> Replication {
        let mut replication = Replication {
            progress: BTreeMap::new(),
            max_entries,
            logs,
        };
        for follower in followers {
            replication.add_follower(follower, last_index);
        }
        replication
    }

    /// Starts replicating to `follower` (a member added since this leader was elected),
    /// probing from just after `last_index`. A follower already known keeps its progress.
    pub fn add_follower(&mut self, follower: NodeId, last_index: LogIndex) {
        self.progress.entry(follower).or_insert(Progress {
            next_index: last_index.next(),
            match_index: LogIndex(0),
            mode: Mode::Probe { waiting: false },
        });
    }

    /// Stops replicating to `follower` (no longer a member).
    pub fn remove_follower(&mut self, follower: NodeId) {
        self.progress.remove(&follower);
    }

    /// The followers.
    pub fn followers(&self) -> Vec<NodeId> {
        self.progress.keys().copied().collect()
    }

    /// The progress with `follower`.
    pub fn progress(&self, follower: NodeId) -> Option<&Progress> {
        self.progress.get(&follower)
    }

    /// The AppendEntries to send `follower` now on this `occasion`, if its mode allows one.
    pub fn append_for<S: Storage>(
        &mut self,
        follower: NodeId,
        log: &RaftLog<S>,
        term: Term,
        occasion: Occasion,
    ) -> Option<AppendEntries> {
        let last = log.last_index();
        let p = self.progress.get_mut(&follower)?;
        match (p.mode, occasion) {
            (Mode::Snapshot, _) => return None,
            (Mode::Probe { waiting: true }, Occasion::Entries | Occasion::Commit) => return None,
            (Mode::Pipeline, Occasion::Entries) if p.next_index > last => return None,
            _ => {}
        }
        let prev_log_index = p.next_index.prev();
        let Some(prev_log_term) = log.term(prev_log_index) else {
            // Compacted away: only a snapshot can bring this follower up to date.
            debug!(%follower, %prev_log_index, "entries compacted; the follower needs a snapshot");
            p.mode = Mode::Snapshot;
            return None;
        };
        let mut entries = log.entries(p.next_index, last, self.max_entries);
        // Bounded in bytes too: a batch of large values must stay well under the transport's
        // frame limit, or it would be refused and re-sent forever. One entry always goes.
        let mut bytes = 0;
        if let Some(keep) = entries.iter().position(|e| {
            bytes += e.payload.approx_bytes();
            bytes > MAX_BATCH_BYTES
        }) {
            entries.truncate(keep.max(1));
        }
        match &mut p.mode {
            Mode::Probe { waiting } => *waiting = true,
            Mode::Pipeline => {
                if let Some(sent) = entries.last() {
                    p.next_index = sent.index.next();
                }
            }
            Mode::Snapshot => unreachable!("returned above"),
        }
        Some(AppendEntries {
            term,
            prev_log_index,
            prev_log_term,
            entries,
            leader_commit: log.commit_index(),
        })
    }

    /// The AppendEntries every follower should get now (see [`Replication::append_for`]).
    pub fn broadcast<S: Storage>(
        &mut self,
        log: &RaftLog<S>,
        term: Term,
        occasion: Occasion,
    ) -> Vec<(NodeId, AppendEntries)> {
        self.followers()
            .into_iter()
            .filter_map(|follower| {
                Some((follower, self.append_for(follower, log, term, occasion)?))
            })
            .collect()
    }

    /// Records `follower`'s answer (of the leader's current term). Returns whether to send it
    /// more at once.
    pub fn on_response<S: Storage>(
        &mut self,
        follower: NodeId,
        result: Result<LogIndex, Rejection>,
        log: &RaftLog<S>,
    ) -> bool {
        let Some(p) = self.progress.get_mut(&follower) else {
            return false;
        };
        match result {
            Ok(matched) => {
                p.match_index = p.match_index.max(matched);
                p.next_index = p.next_index.max(matched.next());
                // A late answer to an AppendEntries sent before the snapshot was needed
                // does not interrupt the transfer.
                if p.mode == Mode::Snapshot {
                    return false;
                }
                p.mode = Mode::Pipeline;
                true
            }
            Err(rejection) => {
                if p.mode == Mode::Pipeline
                    && self.logs == FollowerLogs::Durable
                    && rejection.prev_log_index == p.match_index
                {
                    // A reordered answer to an older request, or a follower that lost its
                    // disk and now refuses every heartbeat: one probe tells them apart (a
                    // refused probe is believed below).
                    debug!(%follower, prev = %rejection.prev_log_index, "refusal at the match index; probing");
                    p.next_index = p.match_index.next();
                    p.mode = Mode::Probe { waiting: false };
                    return true;
                }
                let stale = match (p.mode, self.logs) {
                    // No AppendEntries is out while a snapshot is sent.
                    (Mode::Snapshot, _) => true,
                    (Mode::Probe { .. }, _) => rejection.prev_log_index != p.next_index.prev(),
                    (Mode::Pipeline, FollowerLogs::Durable) => {
                        rejection.prev_log_index <= p.match_index
                    }
                    (Mode::Pipeline, FollowerLogs::Volatile) => {
                        rejection.prev_log_index < p.match_index
                    }
                };
                if stale {
                    debug!(%follower, prev = %rejection.prev_log_index, "stale rejection ignored");
                    return false;
                }
                let next = log
                    .next_index_after(rejection)
                    .min(rejection.prev_log_index)
                    .max(LogIndex(1));
                if next <= p.match_index {
                    // The follower lost entries it had acknowledged: in stage 3 it restarted
                    // empty; with durable logs, its data directory was wiped or lost. What
                    // it lacks is sent again (from a snapshot if compacted). Entries it
                    // acknowledged may have counted towards a commit: losing a node's disk
                    // is a failure Raft does not mask, which is why stage 8 replaces a
                    // node through membership changes instead.
                    if self.logs == FollowerLogs::Durable {
                        warn!(
                            %follower,
                            match_index = %p.match_index,
                            %next,
                            "follower lost entries it had acknowledged: its data directory was lost or replaced, and writes it acknowledged may now be on a minority"
                        );
                    }
                    p.match_index = next.prev();
                }
                debug!(%follower, %next, "log mismatch; probing");
                p.next_index = next;
                p.mode = Mode::Probe { waiting: false };
                true
            }
        }
    }

    /// Whether `follower` is waiting for a snapshot (see [`Mode::Snapshot`]).
    pub fn needs_snapshot(&self, follower: NodeId) -> bool {
        self.progress
            .get(&follower)
            .is_some_and(|p| p.mode == Mode::Snapshot)
    }

    /// `follower`'s state now covers everything up to `index` (it installed a snapshot, or
    /// already had those entries committed): entries after it can go, probing from there.
    pub fn snapshot_installed(&mut self, follower: NodeId, index: LogIndex) {
        if let Some(p) = self.progress.get_mut(&follower) {
            p.match_index = p.match_index.max(index);
            p.next_index = p.match_index.next();
            p.mode = Mode::Probe { waiting: false };
        }
    }

    /// Leader `me` of `term`: commits the highest index a majority of `voters` stores, if it
    /// is from `term` (§5.4.2). Returns whether the commit index moved. The leader's own copy
    /// counts once it is durable: it sends entries before its own fsync (thesis §10.2.1), so
    /// its log may hold entries a crash would take back.
    pub fn advance_commit<S: Storage>(
        &self,
        log: &mut RaftLog<S>,
        me: NodeId,
        voters: impl IntoIterator<Item = NodeId>,
        term: Term,
    ) -> bool {
        let stored = self.quorum_match(me, log.storage().durable_index(), voters);
        log.commit_if_current_term(stored, term)
    }

    /// The highest index stored by a majority of `voters` (`me` stores `own_last`).
    fn quorum_match(
        &self,
        me: NodeId,
        own_last: LogIndex,
        voters: impl IntoIterator<Item = NodeId>,
    ) -> LogIndex {
        let mut stored: Vec<LogIndex> = voters
            .into_iter()
            .map(|id| {
                if id == me {
                    own_last
                } else {
                    self.progress
                        .get(&id)
                        .map_or(LogIndex(0), |p| p.match_index)
                }
            })
            .collect();
        if stored.is_empty() {
            return LogIndex(0);
        }
        stored.sort_unstable_by(|a, b| b.cmp(a));
        stored[stored.len() / 2]
    }
}

#[cfg(test)]
mod tests {
    use kv_server::protocol::NodeId;

    use super::*;
    use crate::storage::{HardState, MemStorage};
    use crate::types::{Entry, Payload};

    fn log(n: u64) -> RaftLog<MemStorage> {
        let entries = (1..=n)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(1),
                payload: Payload::Noop,
            })
            .collect();
        RaftLog::new(MemStorage::with_entries(entries, HardState::default()))
    }

    fn rejection_at(prev: u64) -> Result<LogIndex, Rejection> {
        Err(Rejection {
            prev_log_index: LogIndex(prev),
            conflict_term: None,
            conflict_index: LogIndex(prev),
        })
    }

    /// Pipelining with match = 4, the leader sends A1 (entries 5..=7) and A2 (8..=9). The
    /// follower gets A2 first and refuses it (prev 7), then accepts A1. The leader reads
    /// Ok(7), then the refusal at prev 7.
    fn reordered(logs: FollowerLogs) -> Progress {
        let log = log(9);
        let follower = NodeId(2);
        let mut r = Replication::new([follower], LogIndex(4), 3, logs);
        r.on_response(follower, Ok(LogIndex(4)), &log);
        r.append_for(follower, &log, Term(1), Occasion::Entries);
        r.append_for(follower, &log, Term(1), Occasion::Entries);
        r.on_response(follower, Ok(LogIndex(7)), &log);
        r.on_response(follower, rejection_at(7), &log);
        *r.progress(follower).unwrap()
    }

    #[test]
    fn a_commit_reaches_a_caught_up_follower_but_does_not_repeat_a_probe() {
        let log = log(5);
        let (caught_up, probing) = (NodeId(2), NodeId(3));
        let mut r = Replication::new([caught_up, probing], LogIndex(5), 10, FollowerLogs::Durable);
        r.on_response(caught_up, Ok(LogIndex(5)), &log);
        assert!(
            r.append_for(probing, &log, Term(1), Occasion::Entries)
                .is_some()
        );
        // Nothing new: only a commit or a heartbeat sends the caught-up follower anything.
        assert_eq!(
            r.append_for(caught_up, &log, Term(1), Occasion::Entries),
            None
        );
        let commit = r.append_for(caught_up, &log, Term(1), Occasion::Commit);
        assert!(commit.is_some_and(|a| a.entries.is_empty() && a.prev_log_index == LogIndex(5)));
        // The probe in flight goes again on a heartbeat (it may have been lost), not on a
        // commit, which is no use to a follower whose log is not known to match.
        assert_eq!(r.append_for(probing, &log, Term(1), Occasion::Commit), None);
        assert!(
            r.append_for(probing, &log, Term(1), Occasion::Heartbeat)
                .is_some()
        );
    }

    #[test]
    fn a_batch_of_large_values_is_cut_to_the_byte_budget_but_never_to_nothing() {
        let value = "v".repeat(1 << 20);
        let entries: Vec<Entry> = (1..=20)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(1),
                payload: Payload::Command(kv_server::protocol::Command::Put {
                    key: "k".into(),
                    value: value.clone(),
                }),
            })
            .collect();
        let log = RaftLog::new(MemStorage::with_entries(entries, HardState::default()));
        let follower = NodeId(2);
        let mut r = Replication::new([follower], LogIndex(0), 256, FollowerLogs::Durable);
        let sent = r
            .append_for(follower, &log, Term(1), Occasion::Entries)
            .unwrap()
            .entries;
        assert_eq!(
            sent.len(),
            3,
            "three 1 MiB entries fit in 4 MiB, a fourth does not"
        );
        // An entry larger than the whole budget still goes, alone.
        let huge = "v".repeat(MAX_BATCH_BYTES + 1);
        let one = vec![Entry {
            index: LogIndex(1),
            term: Term(1),
            payload: Payload::Command(kv_server::protocol::Command::Put {
                key: "k".into(),
                value: huge,
            }),
        }];
        let log = RaftLog::new(MemStorage::with_entries(one, HardState::default()));
        let mut r = Replication::new([follower], LogIndex(0), 256, FollowerLogs::Durable);
        assert_eq!(
            r.append_for(follower, &log, Term(1), Occasion::Entries)
                .unwrap()
                .entries
                .len(),
            1
        );
    }

    #[test]
    fn with_durable_followers_a_refusal_at_the_match_index_is_checked_by_a_probe() {
        // Reordered, or from a wiped follower: the match index stays until a probe is
        // refused too.
        let p = reordered(FollowerLogs::Durable);
        assert_eq!(
            (p.match_index, p.next_index, p.mode),
            (LogIndex(7), LogIndex(8), Mode::Probe { waiting: false })
        );
    }

    #[test]
    fn with_durable_followers_a_fresh_refusal_from_an_empty_log_is_believed() {
        // The follower acknowledged 9, then its data directory was wiped: it refuses the
        // next heartbeat (prev 9) saying its log is empty. It gets everything again.
        let log = log(9);
        let follower = NodeId(2);
        let mut r = Replication::new([follower], LogIndex(9), 3, FollowerLogs::Durable);
        r.on_response(follower, Ok(LogIndex(9)), &log);
        let wiped = Err(Rejection {
            prev_log_index: LogIndex(9),
            conflict_term: None,
            conflict_index: LogIndex(1),
        });
        assert!(r.on_response(follower, wiped, &log));
        let p = *r.progress(follower).unwrap();
        assert_eq!((p.match_index, p.next_index), (LogIndex(9), LogIndex(10)));
        // The probe (prev 9) is refused the same way: now it is believed.
        assert_eq!(
            r.append_for(follower, &log, Term(1), Occasion::Entries)
                .unwrap()
                .prev_log_index,
            LogIndex(9)
        );
        assert!(r.on_response(follower, wiped, &log));
        let p = *r.progress(follower).unwrap();
        assert_eq!((p.match_index, p.next_index), (LogIndex(0), LogIndex(1)));
    }

    #[test]
    fn with_volatile_followers_a_refusal_at_the_match_index_means_it_lost_its_log() {
        let p = reordered(FollowerLogs::Volatile);
        assert!(p.match_index < LogIndex(7));
        assert_eq!(p.mode, Mode::Probe { waiting: false });
    }
}
