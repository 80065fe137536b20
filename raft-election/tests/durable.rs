//! Durable storage: a crash at any byte of a write recovers a valid prefix of what was
//! written, every synced change included and no torn record applied; damage in the middle
//! of the log is refused, not papered over; a data directory remembers its node.

use kv_server::protocol::{Command, NodeId};
use raft_election::durable::{DurableStorage, OpenError};
use raft_election::medium::{Medium, Replacement, SimDisk, ZERO_AHEAD};
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};
use replication_naive::node::SyncJob;

fn entry(index: u64, term: u64) -> Entry {
    let command = Command::Put {
        key: format!("k{index}"),
        value: "v".repeat(index as usize % 7),
    };
    Entry {
        index: LogIndex(index),
        term: Term(term),
        payload: Payload::Command(command),
    }
}

/// An entry whose value is `len` bytes long.
fn padded(index: u64, len: usize) -> Entry {
    let command = Command::Put {
        key: format!("k{index}"),
        value: "v".repeat(len),
    };
    Entry {
        index: LogIndex(index),
        term: Term(1),
        payload: Payload::Command(command),
    }
}

/// The observable state of a storage: hard state and every entry.
type State = (HardState, Vec<Entry>);

fn state(s: &impl Storage) -> State {
    (
        s.hard_state(),
        s.entries(LogIndex(1), s.last_index(), usize::MAX),
    )
}

/// A sequence of changes of every kind, applied to durable and in-memory storage alike.
/// Returns the disk, and after each change: the bytes written so far and the state.
fn scripted_history() -> (SimDisk, Vec<(usize, State)>) {
    let mut durable = DurableStorage::open(SimDisk::new()).unwrap();
    let mut model = MemStorage::new();
    let mut history = vec![(0, state(&model))];
    type Change = Box<dyn Fn(&mut dyn Storage)>;
    let ops: Vec<Change> = vec![
        Box::new(|s| {
            s.save_hard_state(HardState {
                current_term: Term(1),
                voted_for: Some(NodeId(2)),
            })
        }),
        Box::new(|s| s.append(vec![entry(1, 1), entry(2, 1)])),
        Box::new(|s| s.append(vec![entry(3, 1)])),
        Box::new(|s| {
            s.save_hard_state(HardState {
                current_term: Term(2),
                voted_for: None,
            })
        }),
        Box::new(|s| s.truncate_after(LogIndex(1))),
        Box::new(|s| s.append(vec![entry(2, 2), entry(3, 2), entry(4, 2)])),
        Box::new(|s| {
            s.save_hard_state(HardState {
                current_term: Term(3),
                voted_for: Some(NodeId(1)),
            })
        }),
    ];
    for op in &ops {
        op(&mut durable);
        durable.sync();
        op(&mut model);
        let disk = durable.into_medium();
        history.push((disk.written(), state(&model)));
        durable = DurableStorage::open(disk).unwrap();
    }
    (durable.into_medium(), history)
}

#[test]
fn a_crash_at_any_byte_recovers_every_completed_change_and_no_torn_one() {
    let (disk, history) = scripted_history();
    for keep in 0..=disk.written() {
        let recovered = DurableStorage::open(disk.written_up_to(keep)).unwrap();
        // The last change whose record was completely written by then.
        let (_, expected) = history.iter().rev().find(|(end, _)| *end <= keep).unwrap();
        assert_eq!(&state(&recovered), expected, "crash after {keep} bytes");
        // The cut is durable: opening again finds a clean log of the same content.
        let again = DurableStorage::open(recovered.into_medium()).unwrap();
        assert_eq!(&state(&again), expected);
    }
}

#[test]
fn a_corrupt_last_record_is_refused_and_a_torn_one_is_cut() {
    // A byte flipped in the last record, synced (the last vote, say): no crash leaves that,
    // since a write that never reached the disk leaves zeros. Cutting it would forget it.
    let (disk, history) = scripted_history();
    let last_start = history[history.len() - 2].0;
    let error = DurableStorage::open(disk.corrupted(last_start + 12)).unwrap_err();
    assert!(
        matches!(error, OpenError::Corrupt { offset, .. } if offset == last_start),
        "{error}"
    );
    let torn = disk.zeroed(last_start + 12..disk.written());
    let recovered = DurableStorage::open(torn).unwrap();
    assert_eq!(state(&recovered), history[history.len() - 2].1);
}

#[test]
fn a_corrupt_record_with_more_after_it_is_refused() {
    let (disk, history) = scripted_history();
    let second_start = history[1].0;
    let error = DurableStorage::open(disk.corrupted(second_start + 12)).unwrap_err();
    assert!(
        matches!(error, OpenError::Corrupt { offset, .. } if offset == second_start),
        "{error}"
    );
}

/// One record as the log writes it (the format in `raft_election::durable`), `payload`
/// its JSON: how a bug, or a hand, could write what the log itself never does.
fn raw_record(payload: &serde_json::Value) -> Vec<u8> {
    let payload = serde_json::to_vec(payload).unwrap();
    let len = payload.len() as u32 | 1 << 31;
    let mut bytes = len.to_le_bytes().to_vec();
    bytes.extend(crc32fast::hash(&len.to_le_bytes()).to_le_bytes());
    bytes.extend(crc32fast::hash(&payload).to_le_bytes());
    bytes.extend(payload);
    bytes
}

fn open_raw(records: &[serde_json::Value]) -> Result<DurableStorage<SimDisk>, OpenError> {
    let mut disk = SimDisk::new();
    for record in records {
        disk.append(&raw_record(record)).unwrap();
    }
    DurableStorage::open(disk)
}

#[test]
fn records_that_pass_their_checksum_but_break_the_log_are_refused_not_replayed() {
    let entries = |indexes: &[u64]| {
        let entries: Vec<Entry> = indexes.iter().map(|&i| entry(i, 1)).collect();
        serde_json::json!({ "Entries": entries })
    };
    let compacted = serde_json::json!({ "Compacted": [5, 1] });
    let truncated = |after: u64| serde_json::json!({ "TruncateAfter": after });
    // The same records, well formed, open: the refusals below are not decoding errors.
    let fine = open_raw(&[compacted.clone(), truncated(5), entries(&[6, 7])]).unwrap();
    assert_eq!(fine.last_index(), LogIndex(7));
    for (records, why) in [
        (vec![entries(&[1, 3])], "should follow"),
        (vec![entries(&[2])], "should follow"),
        (vec![compacted, truncated(4)], "before the snapshot"),
    ] {
        match open_raw(&records) {
            Err(OpenError::Corrupt { offset, reason }) => {
                assert!(reason.contains(why), "{records:?}: {reason}");
                assert_eq!(offset, raw_record(&records[0]).len() * (records.len() - 1));
            }
            other => panic!("{records:?} opened: {other:?}"),
        }
    }
}

#[test]
fn every_change_survives_a_crash_once_synced() {
    // A crash keeps only synced bytes; every change was synced, so all must survive.
    let (disk, history) = scripted_history();
    let recovered = DurableStorage::open(disk.crash()).unwrap();
    assert_eq!(state(&recovered), history.last().unwrap().1);
}

#[test]
fn changes_are_durable_only_at_sync_and_one_sync_covers_them_all() {
    let mut durable = DurableStorage::open(SimDisk::new()).unwrap();
    durable.append(vec![entry(1, 1)]);
    durable.append(vec![entry(2, 1)]);
    let unsynced = durable.into_medium();
    assert_eq!(
        DurableStorage::open(unsynced.crash()).unwrap().last_index(),
        LogIndex(0),
        "nothing is promised before sync"
    );
    let mut durable = DurableStorage::open(unsynced).unwrap();
    durable.append(vec![entry(3, 1)]);
    durable.sync();
    let recovered = DurableStorage::open(durable.into_medium().crash()).unwrap();
    assert_eq!(recovered.last_index(), LogIndex(3));
}

#[test]
fn a_damaged_length_in_the_middle_is_refused_not_taken_for_a_torn_tail() {
    // A length pointing past the end of the file (or zero) would look like a torn record;
    // its own checksum tells damage from a crash, and the synced records after it (a vote
    // among them) are not silently dropped.
    let (disk, history) = scripted_history();
    let second_start = history[1].0;
    for byte in 0..4 {
        let error = DurableStorage::open(disk.corrupted(second_start + byte)).unwrap_err();
        assert!(
            matches!(error, OpenError::Corrupt { offset, .. } if offset == second_start),
            "{error}"
        );
    }
}

#[test]
fn zeros_after_the_last_record_are_cut() {
    let (disk, history) = scripted_history();
    let recovered = DurableStorage::open(disk.zero_extended(4096)).unwrap();
    assert_eq!(state(&recovered), history.last().unwrap().1);
    assert_eq!(recovered.into_medium().written(), disk.written());
}

/// A synced log, then one write never synced: a small record (`a`), one of several sectors
/// (`b`), and a small one. Returns the disk, where `a` and `b` start, and the state before
/// and after `a`.
fn unsynced_tail() -> (SimDisk, usize, usize, State, State) {
    let synced_log = || {
        let mut s = DurableStorage::open(SimDisk::new()).unwrap();
        s.save_hard_state(HardState {
            current_term: Term(3),
            voted_for: Some(NodeId(2)),
        });
        s.append((1..=5).map(|i| entry(i, 3)).collect());
        s.sync();
        s
    };
    let mut s = synced_log();
    let synced = state(&s);
    s.append(vec![entry(6, 3)]);
    let with_a = state(&s);
    let b = s.into_medium().written();
    let a = synced_log().into_medium().written();
    let mut s = synced_log();
    s.append(vec![entry(6, 3)]);
    s.append((7..=100).map(|i| entry(i, 3)).collect());
    s.append(vec![entry(101, 3)]);
    let disk = s.into_medium();
    assert!(disk.written() - b > 4 * 512, "b spans several sectors");
    (disk, a, b, synced, with_a)
}

#[test]
fn an_unwritten_sector_inside_a_record_is_a_torn_tail_even_with_intact_records_after_it() {
    // The pages of one write reach the disk in any order: a crash can leave a sector of `b`
    // as the zeros written ahead of it, and the record after `b` intact.
    let (disk, _, b, _, with_a) = unsynced_tail();
    let hole = (b + 512).next_multiple_of(512);
    let recovered = DurableStorage::open(disk.zeroed(hole..hole + 512)).unwrap();
    assert_eq!(state(&recovered), with_a);
    assert_eq!(recovered.into_medium().written(), b, "cut where `b` starts");
}

#[test]
fn an_unwritten_header_with_records_after_it_is_a_torn_tail() {
    // `a`'s sector reached the disk as it was before the write: zeros from where `a` starts.
    let (disk, a, _, synced, _) = unsynced_tail();
    let recovered = DurableStorage::open(disk.zeroed(a..(a + 1).next_multiple_of(512))).unwrap();
    assert_eq!(state(&recovered), synced);
    assert_eq!(recovered.into_medium().written(), a);
}

#[test]
fn a_crash_losing_any_sectors_of_the_last_write_recovers_a_prefix_of_it_wherever_it_starts() {
    // The last write (four records over several sectors) starts at every offset within a
    // sector; each subset of the sectors it touches reads back as the zeros ahead of it.
    for pad in 0..512 {
        let mut s = DurableStorage::open(SimDisk::new()).unwrap();
        s.append(vec![entry(1, 1), padded(2, pad)]);
        s.sync();
        let mut states = vec![state(&s)];
        let disk = s.into_medium();
        let start = disk.written();
        let mut s = DurableStorage::open(disk).unwrap();
        s.append(vec![entry(3, 1)]);
        states.push(state(&s));
        s.append((4..=12).map(|i| padded(i, 40)).collect());
        states.push(state(&s));
        s.save_hard_state(HardState {
            current_term: Term(2),
            voted_for: Some(NodeId(3)),
        });
        states.push(state(&s));
        s.append(vec![entry(13, 2)]);
        states.push(state(&s));
        let disk = s.into_medium();
        let sectors: Vec<usize> = (start / 512..disk.written().div_ceil(512)).collect();
        assert!(sectors.len() <= 4, "pad {pad}: {} sectors", sectors.len());
        for lost in 0..1u32 << sectors.len() {
            let mut crashed = disk.clone();
            for (i, sector) in sectors.iter().enumerate() {
                if lost & (1 << i) != 0 {
                    let from = (sector * 512).max(start);
                    crashed = crashed.zeroed(from..((sector + 1) * 512).min(disk.written()));
                }
            }
            let recovered = DurableStorage::open(crashed).unwrap_or_else(|e| {
                panic!("pad {pad}, sectors lost {lost:b}: refused to start: {e}")
            });
            assert!(
                states.contains(&state(&recovered)),
                "pad {pad}, sectors lost {lost:b}: not a prefix of the writes"
            );
        }
    }
}

#[test]
fn a_zero_sector_in_a_synced_write_with_a_later_write_after_it_is_refused() {
    // Only the last write can be unsynced: a hole before a later write is damage to synced
    // data (a lost or misdirected write), not a crash, and cutting it would lose the vote.
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=20).map(|i| padded(i, 40)).collect());
    s.sync();
    s.save_hard_state(HardState {
        current_term: Term(2),
        voted_for: Some(NodeId(3)),
    });
    s.sync();
    let disk = s.into_medium();
    let error = DurableStorage::open(disk.zeroed(512..1024)).unwrap_err();
    assert!(
        matches!(error, OpenError::Corrupt { offset: 0, .. }),
        "{error}"
    );
}

#[test]
fn a_torn_record_in_a_log_file_is_cut_and_the_log_goes_on_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(raft_election::durable::LOG_FILE);
    let content = || {
        let mut bytes = std::fs::read(&file).unwrap();
        bytes.truncate(bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1));
        bytes
    };
    let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    s.append(vec![entry(1, 1)]);
    s.sync();
    let first = content().len();
    s.append(vec![padded(2, 300)]);
    s.sync();
    drop(s);
    // The second write's last part never reached the disk.
    let torn = (first + content().len()) / 2;
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &vec![0; content().len() - torn], torn as u64)
        .unwrap();
    let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(s.last_index(), LogIndex(1));
    assert_eq!(
        content().len(),
        first,
        "the torn record is gone from the file"
    );
    s.append(vec![entry(2, 1)]);
    s.sync();
    drop(s);
    let s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(
        s.entries(LogIndex(1), s.last_index(), usize::MAX),
        vec![entry(1, 1), entry(2, 1)]
    );
}

#[test]
fn a_log_file_takes_no_append_before_its_content_is_read() {
    use raft_election::medium::{FileMedium, Medium};
    let dir = tempfile::tempdir().unwrap();
    let mut medium = FileMedium::open(&dir.path().join("log")).unwrap();
    assert!(medium.append(b"{}").is_err());
    assert_eq!(medium.read_all().unwrap(), b"");
    medium.append(b"{}").unwrap();
}

#[test]
fn a_log_file_is_zero_filled_ahead_and_reopens_at_the_end_of_its_content() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(raft_election::durable::LOG_FILE);
    let file_len = || std::fs::metadata(&file).unwrap().len();
    let mut expected = Vec::new();
    for round in 0..3 {
        // (A first start writes the log's first record, zero-filled ahead.)
        let before = std::fs::metadata(&file).map(|m| m.len()).ok();
        let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        if let Some(before) = before {
            assert_eq!(file_len(), before, "reopening cuts nothing");
        }
        assert_eq!(s.entries(LogIndex(1), s.last_index(), usize::MAX), expected);
        let more: Vec<_> = (1..=40).map(|i| entry(round * 40 + i, 1)).collect();
        expected.extend(more.iter().cloned());
        s.append(more);
        s.sync();
        assert!(
            file_len() >= ZERO_AHEAD,
            "zero-filled ahead: {} bytes",
            file_len()
        );
    }
    // A compaction's rewrite is zero-filled ahead too, and reopens where it ended.
    let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    s.compact(LogIndex(100), Term(1));
    s.sync();
    assert!(file_len() >= ZERO_AHEAD, "{} bytes", file_len());
    s.append(vec![entry(121, 1)]);
    s.sync();
    drop(s);
    let s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    expected.drain(..100);
    expected.push(entry(121, 1));
    assert_eq!(
        s.entries(LogIndex(101), s.last_index(), usize::MAX),
        expected
    );
}

#[test]
fn a_data_directory_survives_reopening_and_refuses_another_node() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        s.save_hard_state(HardState {
            current_term: Term(4),
            voted_for: Some(NodeId(3)),
        });
        s.append(vec![entry(1, 4), entry(2, 4)]);
        s.sync();
    }
    let s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(
        s.hard_state(),
        HardState {
            current_term: Term(4),
            voted_for: Some(NodeId(3))
        }
    );
    assert_eq!(s.last_index(), LogIndex(2));
    drop(s);
    let error = DurableStorage::open_dir(dir.path(), NodeId(2)).unwrap_err();
    assert!(matches!(error, OpenError::Foreign { .. }), "{error}");
    assert!(error.to_string().contains("belongs to node 1"), "{error}");
}

#[test]
fn a_data_directory_in_use_is_refused_and_changed_in_nothing() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let mut first = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    first.append(vec![entry(1, 1)]);
    first.sync();
    // The first node's next write is under way: its first bytes are in the file, the rest
    // not yet. A second process opening the directory would take them for a torn tail and
    // cut them (under the first node's feet).
    let log = dir.path().join(raft_election::durable::LOG_FILE);
    let content = std::fs::read(&log).unwrap();
    let end = content.iter().rposition(|&b| b != 0).unwrap() + 1;
    let file = std::fs::OpenOptions::new().write(true).open(&log).unwrap();
    file.write_all_at(&[0x40, 0, 0, 0x80, 0x17], end as u64)
        .unwrap();
    let writing = std::fs::read(&log).unwrap();
    let error = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap_err();
    assert!(matches!(error, OpenError::Locked { .. }), "{error}");
    assert!(
        error.to_string().contains("in use by another process"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        writing,
        "the second open changed the log"
    );
    // Free again once the first lets it go (here: its write cut short for good).
    drop(first);
    let again = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(again.last_index(), LogIndex(1));
}

#[test]
fn a_log_without_a_node_id_or_a_node_id_without_a_log_is_refused() {
    use raft_election::durable::{LOG_FILE, NODE_ID_FILE};
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    s.save_hard_state(HardState {
        current_term: Term(4),
        voted_for: Some(NodeId(1)),
    });
    s.sync();
    drop(s);
    // Another node's log copied in without its id: whose votes are these?
    let copied = tempfile::tempdir().unwrap();
    std::fs::copy(dir.path().join(LOG_FILE), copied.path().join(LOG_FILE)).unwrap();
    let error = DurableStorage::open_dir(copied.path(), NodeId(2)).unwrap_err();
    assert!(matches!(error, OpenError::Unowned { .. }), "{error}");
    // The node's own directory, its log lost: starting at term 0 could vote twice in term 4.
    std::fs::remove_file(dir.path().join(LOG_FILE)).unwrap();
    let error = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap_err();
    assert!(matches!(error, OpenError::LogMissing { .. }), "{error}");
    // A fresh volume's lost+found and a file manager's hidden files do not make a
    // directory someone else's.
    let volume = tempfile::tempdir().unwrap();
    std::fs::create_dir(volume.path().join("lost+found")).unwrap();
    std::fs::write(volume.path().join(".DS_Store"), "x").unwrap();
    DurableStorage::open_dir(volume.path(), NodeId(4)).unwrap();
    // A log of zeros (a first write lost) and no id is a new directory, adopted.
    let fresh = tempfile::tempdir().unwrap();
    std::fs::write(fresh.path().join(LOG_FILE), vec![0u8; 4096]).unwrap();
    DurableStorage::open_dir(fresh.path(), NodeId(3)).unwrap();
    let owner = std::fs::read_to_string(fresh.path().join(NODE_ID_FILE)).unwrap();
    assert_eq!(owner.trim(), "3");
}

#[test]
fn compaction_rewrites_the_file_with_only_what_is_still_needed() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.save_hard_state(HardState {
        current_term: Term(2),
        voted_for: Some(NodeId(3)),
    });
    s.append((1..=50).map(|i| entry(i, 2)).collect());
    s.truncate_after(LogIndex(40));
    let before = s.into_medium();
    let mut s = DurableStorage::open(before.clone()).unwrap();
    s.compact(LogIndex(30), Term(2));
    s.sync();
    let expected = state(&s);
    assert_eq!(
        (s.first_index(), s.term(LogIndex(30))),
        (LogIndex(31), Some(Term(2)))
    );
    let after = s.into_medium();
    assert!(
        after.written() < before.written() / 2,
        "{} -> {} bytes",
        before.written(),
        after.written()
    );
    // Reopened, and after a crash (the rewrite was synced), the same log.
    for disk in [after.clone(), after.crash()] {
        let reopened = DurableStorage::open(disk).unwrap();
        assert_eq!(state(&reopened), expected);
        assert_eq!(
            (reopened.first_index(), reopened.term(LogIndex(30))),
            (LogIndex(31), Some(Term(2)))
        );
    }
}

#[test]
fn writes_after_compaction_recover_at_every_crash_point() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=5).map(|i| entry(i, 1)).collect());
    s.append((6..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    // Entry 5 is encoded again; the record of 6-10 is copied.
    s.compact(LogIndex(4), Term(1));
    s.sync();
    let compacted = s.into_medium();
    let start = compacted.written();
    let mut s = DurableStorage::open(compacted).unwrap();
    s.append(vec![entry(11, 1), entry(12, 1)]);
    s.save_hard_state(HardState {
        current_term: Term(5),
        voted_for: None,
    });
    let disk = s.into_medium();
    for keep in start..=disk.written() {
        let recovered = DurableStorage::open(disk.written_up_to(keep)).unwrap();
        assert_eq!(
            recovered.first_index(),
            LogIndex(5),
            "crash after {keep} bytes"
        );
        assert!(recovered.last_index() == LogIndex(10) || recovered.last_index() == LogIndex(12));
    }
}

#[test]
fn a_compacted_data_directory_reopens_where_it_left_off() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        s.append((1..=20).map(|i| entry(i, 1)).collect());
        s.compact(LogIndex(15), Term(1));
        s.append(vec![entry(21, 2)]);
        s.sync();
    }
    let s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(
        (s.first_index(), s.last_index()),
        (LogIndex(16), LogIndex(21))
    );
    assert_eq!(s.term(LogIndex(15)), Some(Term(1)));
    assert_eq!(s.term(LogIndex(21)), Some(Term(2)));
    assert!(
        !dir.path().join("raft.tmp").exists(),
        "no leftover from the rewrite"
    );
}

#[test]
fn the_rewrite_after_compaction_runs_in_the_sync_and_a_crash_before_it_ends_keeps_the_old_file() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    s.compact(LogIndex(8), Term(1));
    s.append(vec![entry(11, 1)]);
    assert_eq!(
        s.durable_index(),
        LogIndex(10),
        "entry 11 is not on disk yet"
    );
    let job = s.start_sync().expect("the rewrite is pending");
    job().unwrap();
    // The power fails before the sync is reported done: the old file, whole.
    let old = DurableStorage::open(s.into_medium().crash()).unwrap();
    assert_eq!(
        (old.first_index(), old.last_index()),
        (LogIndex(1), LogIndex(10))
    );

    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    let full = DurableStorage::open(SimDisk::new()).map(|mut t| {
        t.append((1..=10).map(|i| entry(i, 1)).collect());
        t.into_medium().written()
    });
    s.compact(LogIndex(8), Term(1));
    s.append(vec![entry(11, 1)]);
    s.sync();
    assert_eq!(s.durable_index(), LogIndex(11));
    let expected = state(&s);
    let disk = s.into_medium();
    let written = disk.written();
    let new = DurableStorage::open(disk.crash()).unwrap();
    assert_eq!(
        (new.first_index(), new.last_index()),
        (LogIndex(9), LogIndex(11)),
        "the new file holds what follows the snapshot and what came after the compaction"
    );
    assert_eq!(state(&new), expected);
    assert!(
        written < full.unwrap() / 2,
        "the old entries are gone: {written} bytes"
    );
}

#[test]
fn a_snapshot_that_replaces_the_whole_log_leaves_no_later_entry_counted_durable() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    assert_eq!(s.durable_index(), LogIndex(10));
    // A snapshot at 5 of another history: the log does not match there, and goes whole.
    s.compact(LogIndex(5), Term(2));
    assert_eq!(s.last_index(), LogIndex(5));
    s.append(vec![entry(6, 3)]);
    assert_eq!(
        s.durable_index(),
        LogIndex(5),
        "entry 6 is not on disk: a leader must not count it"
    );
    s.sync();
    assert_eq!(s.durable_index(), LogIndex(6));
}

#[test]
fn a_crash_before_the_rewrite_starts_keeps_the_old_file_and_nothing_queued_after_it() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    s.compact(LogIndex(8), Term(1));
    s.append(vec![entry(11, 1)]);
    let old = DurableStorage::open(s.into_medium().crash()).unwrap();
    assert_eq!(
        (old.first_index(), old.last_index()),
        (LogIndex(1), LogIndex(10)),
        "neither the compaction nor entry 11 was synced"
    );
}

/// A medium that remembers every replacement it was given.
#[derive(Debug, Default)]
struct Recording {
    disk: SimDisk,
    replacements: Vec<Replacement>,
}

impl Medium for Recording {
    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        self.disk.read_all()
    }
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.disk.append(bytes)
    }
    fn sync_job(&mut self) -> SyncJob {
        self.disk.sync_job()
    }
    fn synced(&mut self) -> std::io::Result<()> {
        self.disk.synced()
    }
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.disk.truncate(len)
    }
    fn replace_job(&mut self, replacement: Replacement) -> SyncJob {
        self.replacements.push(replacement.clone());
        self.disk.replace_job(replacement)
    }
}

/// Everything a reopened log must agree on: where it starts, the term before that, the hard
/// state and every entry.
fn full_state(s: &impl Storage) -> (LogIndex, Option<Term>, State) {
    let first = s.first_index();
    let entries = s.entries(first, s.last_index(), usize::MAX);
    (first, s.term(first.prev()), (s.hard_state(), entries))
}

#[test]
fn compaction_copies_the_records_after_the_snapshot_instead_of_encoding_them_again() {
    let mut medium = Recording::default();
    let mut records_at = Vec::new();
    for first in [1, 11, 21] {
        records_at.push(medium.disk.written() as u64);
        let mut s = DurableStorage::open(medium).unwrap();
        s.append((first..first + 10).map(|i| entry(i, 1)).collect());
        s.sync();
        medium = s.into_medium();
    }
    let synced = medium.disk.written() as u64;
    let mut s = DurableStorage::open(medium).unwrap();
    s.append((31..=35).map(|i| entry(i, 1)).collect());
    // Entries 16-20 share a record with 11-15, which the snapshot covers: they are encoded
    // again. The records from 21 on are copied as they are, the unwritten one (31-35) too.
    s.compact(LogIndex(15), Term(1));
    s.sync();
    let expected = full_state(&s);
    let medium = s.into_medium();
    let [replacement] = medium.replacements.as_slice() else {
        panic!("one rewrite: {:?}", medium.replacements);
    };
    assert_eq!(replacement.kept, records_at[2]..synced);
    assert!(!replacement.tail.is_empty(), "the unwritten record follows");
    let encoded_again = replacement.head.len() as u64;
    assert!(
        encoded_again < records_at[2] - records_at[1],
        "{encoded_again} bytes encoded: more than the five entries 16-20"
    );
    let reopened = DurableStorage::open(medium.disk.crash()).unwrap();
    assert_eq!(full_state(&reopened), expected);
    assert_eq!(expected.0, LogIndex(16));
    assert_eq!(expected.2.1.len(), 20, "entries 16-35");
}

#[test]
fn compaction_copies_nothing_from_before_the_last_truncation() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    let mut model = MemStorage::new();
    let mut both = |change: &dyn Fn(&mut dyn Storage)| {
        change(&mut s);
        change(&mut model);
        s.sync();
    };
    both(&|s| s.append((1..=3).map(|i| entry(i, 1)).collect()));
    both(&|s| s.append((4..=6).map(|i| entry(i, 1)).collect()));
    both(&|s| s.append((7..=9).map(|i| entry(i, 1)).collect()));
    // A new leader's entries replace 6-9: the record holding 7-9 is stale.
    both(&|s| s.truncate_after(LogIndex(5)));
    both(&|s| s.append((6..=11).map(|i| entry(i, 2)).collect()));
    s.append(vec![entry(12, 2)]);
    model.append(vec![entry(12, 2)]);
    s.compact(LogIndex(6), Term(2));
    model.compact(LogIndex(6), Term(2));
    s.sync();
    let reopened = DurableStorage::open(s.into_medium().crash()).unwrap();
    assert_eq!(full_state(&reopened), full_state(&model));
}

#[test]
fn a_snapshot_that_replaces_the_whole_log_copies_none_of_it() {
    let mut s = DurableStorage::open(SimDisk::new()).unwrap();
    s.append((1..=5).map(|i| entry(i, 1)).collect());
    s.append((6..=10).map(|i| entry(i, 1)).collect());
    s.sync();
    // Another history's snapshot at 5: the log does not hold its last entry.
    s.compact(LogIndex(5), Term(2));
    s.append(vec![entry(6, 3)]);
    s.sync();
    let reopened = DurableStorage::open(s.into_medium().crash()).unwrap();
    assert_eq!(
        full_state(&reopened),
        (
            LogIndex(6),
            Some(Term(2)),
            (HardState::default(), vec![entry(6, 3)])
        )
    );
}

/// Random changes of every kind, compactions among them (some replacing the whole log,
/// some while a rewrite is pending), syncs (some left running while changes and
/// compactions go on, as the driver runs them), reopenings and crashes: the log read back
/// is always the model's, as of the last finished sync after a crash. Prints the seed of a
/// failure.
#[test]
fn random_changes_compactions_and_crashes_read_back_as_the_model() {
    use rand::{Rng, SeedableRng};
    for seed in 0..300 {
        let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
        let mut s = DurableStorage::open(SimDisk::new()).unwrap();
        let mut model = MemStorage::new();
        let mut synced = full_state(&model);
        // A sync started and not yet finished, with the state it makes durable.
        let mut running: Option<(SyncJob, _)> = None;
        let mut term = 1;
        for step in 0..80 {
            let context = format!("seed {seed}, step {step}");
            match rng.gen_range(0..100) {
                0..=39 => {
                    let next = model.last_index().0 + 1;
                    let count = rng.gen_range(1..=6);
                    let entries: Vec<Entry> =
                        (next..next + count).map(|i| entry(i, term)).collect();
                    s.append(entries.clone());
                    model.append(entries);
                }
                40..=47 if model.last_index() > model.first_index() => {
                    let after = rng.gen_range(model.first_index().0..model.last_index().0);
                    term += 1;
                    s.truncate_after(LogIndex(after));
                    model.truncate_after(LogIndex(after));
                }
                48..=55 => {
                    term += 1;
                    let hard = HardState {
                        current_term: Term(term),
                        voted_for: Some(NodeId(rng.gen_range(1..4))),
                    };
                    s.save_hard_state(hard);
                    model.save_hard_state(hard);
                }
                56..=69 if model.last_index() >= model.first_index() => {
                    let index =
                        LogIndex(rng.gen_range(model.first_index().0..=model.last_index().0));
                    // Mostly the log's own entry; sometimes another history's.
                    let term = match rng.gen_bool(0.85) {
                        true => model.term(index).expect("in the log"),
                        false => Term(term + 100),
                    };
                    s.compact(index, term);
                    model.compact(index, term);
                }
                70..=84 => match running.take() {
                    Some((job, covered)) => {
                        let result = job();
                        s.finish_sync(result);
                        synced = covered;
                    }
                    None => {
                        if let Some(job) = s.start_sync() {
                            running = Some((job, full_state(&model)));
                        }
                    }
                },
                85..=92 => {
                    if let Some((job, _)) = running.take() {
                        let result = job();
                        s.finish_sync(result);
                    }
                    s.sync();
                    synced = full_state(&model);
                    s = DurableStorage::open(s.into_medium()).unwrap();
                    assert_eq!(full_state(&s), full_state(&model), "{context}: reopened");
                }
                93..=99 => {
                    // A sync still running never finished: the crash came first.
                    running = None;
                    s = DurableStorage::open(s.into_medium().crash()).unwrap();
                    assert_eq!(full_state(&s), synced, "{context}: after a crash");
                    model = MemStorage::new();
                    model.save_hard_state(s.hard_state());
                    let first = s.first_index();
                    if let Some(before) = s.term(first.prev()).filter(|_| first.0 > 1) {
                        model.compact(first.prev(), before);
                    }
                    model.append(s.entries(first, s.last_index(), usize::MAX));
                    assert_eq!(full_state(&model), synced, "{context}: the model rebuilt");
                }
                _ => {}
            }
        }
    }
}

/// More than a megabyte of records kept, copied from a real file into its replacement.
#[test]
fn a_log_file_rewritten_with_copied_records_reopens_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let expected = {
        let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        for first in (1..=4000).step_by(100) {
            s.append((first..first + 100).map(|i| padded(i, 400)).collect());
            s.sync();
        }
        s.compact(LogIndex(250), Term(1));
        s.append(vec![padded(4001, 10)]);
        s.sync();
        s.append(vec![padded(4002, 10)]);
        s.sync();
        full_state(&s)
    };
    let reopened = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(full_state(&reopened), expected);
    assert_eq!(expected.0, LogIndex(251));
    assert_eq!(expected.2.1.len(), 3752, "entries 251-4002");
}

#[test]
fn a_node_s_log_emptied_or_cut_short_is_refused_not_taken_for_a_new_directory() {
    // A walk-through truncated a running node's raft.log to 0 bytes, its node-id file
    // kept: the node started as a new one (term 0, no vote), and with --bootstrap founded
    // a cluster of its own. A node writes its log's first record before its id, so an id
    // with no record is damage: the term, the vote and the log are gone.
    use raft_election::durable::{LOG_FILE, log_emptied};
    let dir = tempfile::tempdir().unwrap();
    let mut s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    s.save_hard_state(HardState {
        current_term: Term(4),
        voted_for: Some(NodeId(2)),
    });
    s.append(vec![entry(1, 4)]);
    s.sync();
    drop(s);
    let log = dir.path().join(LOG_FILE);
    let content = std::fs::read(&log).unwrap();
    for (what, emptied) in [
        ("truncated to nothing", Vec::new()),
        ("zeros only", vec![0; 4096]),
        ("cut inside its first record", content[..7].to_vec()),
    ] {
        std::fs::write(&log, &emptied).unwrap();
        assert!(log_emptied(dir.path()).unwrap(), "{what}");
        let error = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap_err();
        assert!(
            matches!(error, OpenError::LogEmptied { .. }),
            "{what}: {error}"
        );
        assert!(error.to_string().contains("node 1 has run here"), "{error}");
        assert_eq!(
            std::fs::read(&log).unwrap(),
            emptied,
            "{what}: the log was changed"
        );
    }
}

#[test]
fn a_first_start_that_stopped_before_or_after_writing_its_id_starts_cleanly() {
    // A first start creates the log, writes its first record and syncs it, then writes the
    // node's id. Stopped at any point of that, nothing was acknowledged: the directory is
    // a new one, adopted by the next start (of any id, while none was written).
    use raft_election::durable::{LOG_FILE, NODE_ID_FILE, log_emptied, log_written};
    let dir = tempfile::tempdir().unwrap();
    drop(DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap());
    let log = dir.path().join(LOG_FILE);
    let first = std::fs::read(&log).unwrap();
    let end = first.iter().rposition(|&b| b != 0).unwrap() + 1;
    // Stopped after the id: this node starts, with nothing in its log.
    assert!(!log_written(dir.path()).unwrap() && !log_emptied(dir.path()).unwrap());
    let s = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
    assert_eq!(
        (s.last_index(), s.hard_state()),
        (LogIndex(0), HardState::default())
    );
    drop(s);
    // Stopped before the id: with the first record whole, cut short, or not written.
    for keep in [end, end / 2, 1, 0] {
        std::fs::remove_file(dir.path().join(NODE_ID_FILE)).unwrap();
        let mut torn = first.clone();
        torn[keep..].fill(0);
        std::fs::write(&log, &torn).unwrap();
        assert!(!log_written(dir.path()).unwrap(), "keep {keep}");
        let s = DurableStorage::open_dir(dir.path(), NodeId(2)).unwrap();
        assert_eq!(s.last_index(), LogIndex(0), "keep {keep}");
        drop(s);
        let owner = std::fs::read_to_string(dir.path().join(NODE_ID_FILE)).unwrap();
        assert_eq!(owner.trim(), "2");
        // ... and the first record is whole again, before the id.
        assert_eq!(std::fs::read(&log).unwrap()[..end], first[..end]);
    }
}

#[test]
fn a_founding_write_cut_short_by_a_crash_leaves_a_new_data_directory() {
    use raft_election::durable::{LOG_FILE, log_written};
    use raft_election::node::{Config, RaftNode};
    use std::collections::BTreeMap;
    // Founders with long names, so that the founding entry spans several sectors.
    let members: BTreeMap<NodeId, String> = (1..=16)
        .map(|i| {
            let addr = format!("node-{i}.a-rather-long-host-name.example.internal:7001");
            (NodeId(i), addr)
        })
        .collect();
    let found = |dir: &std::path::Path| {
        let storage = DurableStorage::open_dir(dir, NodeId(1)).unwrap();
        let mut config = Config::new(NodeId(1), members.clone(), 7);
        config.membership_changes = true;
        let storage = RaftNode::new(config, storage).into_storage();
        (storage.last_index(), storage.hard_state().current_term)
    };
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(found(dir.path()), (LogIndex(1), Term(1)));
    assert!(log_written(dir.path()).unwrap());
    let log = dir.path().join(LOG_FILE);
    let whole = std::fs::read(&log).unwrap();
    let end = whole.iter().rposition(|&b| b != 0).unwrap() + 1;
    const SECTOR: usize = 512;
    let sectors = end.div_ceil(SECTOR);
    assert!(sectors >= 3, "the founding write spans {sectors} sectors");
    // A crash inside the founding write: each sector holds what was last written to it or
    // what it held before (zeros past the first record, which was synced before). The
    // first sector written holds the founder's hard state (term 1, no vote) whole, and
    // the founding entry after it is torn.
    for kept in 1..sectors {
        let mut torn = whole.clone();
        torn[kept * SECTOR..].fill(0);
        std::fs::write(&log, &torn).unwrap();
        assert!(!log_written(dir.path()).unwrap(), "{kept} sectors kept");
        // The next start founds the cluster again, as the first would have.
        assert_eq!(
            found(dir.path()),
            (LogIndex(1), Term(1)),
            "{kept} sectors kept"
        );
        assert!(log_written(dir.path()).unwrap(), "{kept} sectors kept");
    }
    // A vote, or a later term, is something a new start must not forget.
    for (term, vote) in [(1, Some(NodeId(2))), (2, None)] {
        let dir = tempfile::tempdir().unwrap();
        let mut storage = DurableStorage::open_dir(dir.path(), NodeId(1)).unwrap();
        storage.save_hard_state(HardState {
            current_term: Term(term),
            voted_for: vote,
        });
        storage.sync();
        drop(storage);
        assert!(
            log_written(dir.path()).unwrap(),
            "term {term}, vote {vote:?}"
        );
    }
}
