//! Snapshot files: what is written is read back exactly, whole or in chunks; any damage is
//! reported and nothing from a damaged file is loaded; unfinished files are never taken for
//! snapshots.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use compaction::file_store::FileSnapshots;
use compaction::mem_store::MemSnapshots;
use compaction::snapshot::{SnapshotError, SnapshotFile, SnapshotMeta, SnapshotWriter, latest};
use compaction::state::{read_map, read_state, write_map, write_state};
use kv_server::protocol::{Command, NodeId, Session, WriteOutcome};
use kv_server::store::KvMap;
use raft_election::node::{Config, RaftNode};
use raft_log::apply::Machine;
use raft_log::membership::Membership;
use raft_log::snapshot::Snapshots;
use raft_log::storage::{MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Payload, Term};

fn meta(index: u64) -> SnapshotMeta {
    let members = (1..=3)
        .map(|i| (NodeId(i), format!("127.0.0.1:{}", 7000 + i)))
        .collect::<BTreeMap<_, _>>();
    SnapshotMeta {
        index: LogIndex(index),
        term: Term(3),
        members: Membership::voters(&members),
    }
}

/// `keys` keys, and a session for every tenth of them: 50 clients (when `keys` is 500 or
/// more), each with several writes kept.
fn map(keys: usize) -> Machine {
    let mut state = Machine::default();
    for i in 0..keys {
        let key = format!("key-{i}");
        let value = format!("value {i} é ✓ {}", "x".repeat(i % 50));
        let session = (i % 10 == 0).then(|| Session {
            client: format!("client-{}", i / 10 % 50),
            seq: i as u64,
        });
        state
            .apply(Command::Put { key, value }, session, LogIndex(i as u64 + 1))
            .unwrap();
    }
    state
}

fn write(dir: &Path, index: u64, state: &Machine) -> std::path::PathBuf {
    let mut writer = SnapshotWriter::create(dir, &meta(index)).unwrap();
    let mut data = Vec::new();
    write_state(state, &mut data).unwrap();
    for chunk in data.chunks(1000) {
        writer.write_data(chunk).unwrap();
    }
    writer.finish().unwrap().path().to_path_buf()
}

#[test]
fn a_state_round_trips_through_a_snapshot_sessions_included() {
    let dir = tempfile::tempdir().unwrap();
    let state = map(5_000);
    assert_eq!(state.sessions.len(), 50);
    assert_eq!(state.sessions.iter().count(), 500);
    let path = write(dir.path(), 42, &state);
    let mut file = SnapshotFile::open(&path).unwrap();
    assert_eq!(file.meta(), &meta(42));
    let mut restored = read_state(&mut file.data().unwrap()).unwrap();
    assert_eq!(restored, state);
    // A retry after a restore still gets the first outcome, and changes nothing.
    let retry = Session {
        client: "client-49".into(),
        seq: 4990,
    };
    let put = Command::Put {
        key: "key-0".into(),
        value: "not applied".into(),
    };
    let outcome = restored.apply(put, Some(retry), LogIndex(9_999));
    assert_eq!(
        outcome,
        Ok(kv_server::protocol::Reply::Write(WriteOutcome::Put))
    );
    assert_eq!(restored, state);
}

#[test]
fn the_writer_hands_back_the_file_it_wrote_as_opening_it_would() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::create(dir.path(), &meta(9)).unwrap();
    write_state(&map(300), &mut writer).unwrap();
    let mut written = writer.finish().unwrap();
    let mut opened = SnapshotFile::open(written.path()).unwrap();
    assert_eq!(written.meta(), opened.meta());
    assert_eq!(written.data_len(), opened.data_len());
    let all = opened.data_len() as usize;
    assert_eq!(
        written.read_data(0, all).unwrap(),
        opened.read_data(0, all).unwrap()
    );
    assert_eq!(read_state(&mut written.data().unwrap()).unwrap(), map(300));
}

#[test]
fn chunks_read_at_offsets_make_up_the_whole_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 7, &map(1_000));
    let mut file = SnapshotFile::open(&path).unwrap();
    let mut whole = Vec::new();
    std::io::Read::read_to_end(&mut file.data().unwrap(), &mut whole).unwrap();
    let mut chunked = Vec::new();
    let mut offset = 0;
    while offset < file.data_len() {
        let chunk = file.read_data(offset, 4096).unwrap();
        assert!(!chunk.is_empty() && chunk.len() <= 4096);
        offset += chunk.len() as u64;
        chunked.extend(chunk);
    }
    assert_eq!(chunked, whole);
    assert!(file.read_data(file.data_len(), 4096).unwrap().is_empty());
}

#[test]
fn damage_anywhere_is_reported_and_nothing_is_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), 9, &map(200));
    let good = fs::read(&path).unwrap();
    // Every 7th byte, and the first and last ones: header, metadata, data, trailer.
    let positions = (0..good.len()).step_by(7).chain([0, good.len() - 1]);
    for at in positions {
        let mut bad = good.clone();
        bad[at] ^= 0x01;
        fs::write(&path, &bad).unwrap();
        match SnapshotFile::open(&path) {
            Err(SnapshotError::Corrupt { .. }) => {}
            other => panic!("byte {at} flipped: {other:?}"),
        }
    }
    for len in [0, 10, good.len() / 2, good.len() - 1] {
        fs::write(&path, &good[..len]).unwrap();
        assert!(
            matches!(
                SnapshotFile::open(&path),
                Err(SnapshotError::Corrupt { .. })
            ),
            "cut to {len}"
        );
    }
}

#[test]
fn the_newest_finished_snapshot_is_found_and_unfinished_ones_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    assert!(latest(dir.path()).unwrap().is_none());
    write(dir.path(), 10, &map(10));
    write(dir.path(), 30, &map(30));
    // A crash while writing snapshot 50 leaves only its .tmp file.
    let mut unfinished = SnapshotWriter::create(dir.path(), &meta(50)).unwrap();
    unfinished.write_data(b"partial").unwrap();
    drop(unfinished);
    let newest = latest(dir.path()).unwrap().unwrap();
    assert_eq!(newest.meta().index, LogIndex(30));
    // Opening the store keeps only the newest: older ones are what a crash left before
    // their deletion, and the unfinished one is removed too.
    let store = FileSnapshots::open(dir.path()).unwrap();
    assert_eq!(store.latest().map(|m| m.index), Some(LogIndex(30)));
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        left[0].starts_with("snapshot-00000000000000000030"),
        "{left:?}"
    );
}

#[test]
fn a_damaged_newest_snapshot_is_an_error_not_silently_replaced_by_an_older_one() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 10, &map(10));
    let newest = write(dir.path(), 20, &map(20));
    let mut bytes = fs::read(&newest).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    fs::write(&newest, bytes).unwrap();
    assert!(matches!(
        latest(dir.path()),
        Err(SnapshotError::Corrupt { .. })
    ));
}

#[test]
fn a_record_cut_short_is_an_error_not_part_of_a_map() {
    // One record: key "k" (4 + 1 bytes), value "v1" (4 + 2 bytes). Cut inside the key's
    // length, inside the key, before the value, inside the value: each is an error. (A cut
    // exactly between records cannot be seen in the stream; the snapshot file's checksum
    // catches that, see above.)
    let mut one = KvMap::default();
    one.apply(Command::Put {
        key: "k".into(),
        value: "v1".into(),
    });
    let mut data = Vec::new();
    write_map(&one, &mut data).unwrap();
    assert_eq!(data.len(), 11);
    for cut in [2, 4, 5, 7, 10] {
        assert!(read_map(&mut &data[..cut]).is_err(), "cut at {cut}");
    }
    assert_eq!(read_map(&mut &data[..]).unwrap(), one);
    assert!(read_map(&mut &b""[..]).unwrap().is_empty());
}

/// Polls `poll` until it has something: work another thread finishes, which gives nothing
/// to await; gives up after 10 s.
fn polled<T>(mut poll: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if let Some(done) = poll() {
            return done;
        }
        assert!(std::time::Instant::now() < deadline, "never finished");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// What finishing the received snapshot (on another thread) came to.
fn received(store: &mut FileSnapshots) -> std::io::Result<Machine> {
    polled(|| store.poll_received())
}

#[test]
fn a_received_snapshot_is_finished_off_the_caller_and_becomes_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileSnapshots::open(dir.path()).unwrap();
    let state = map(2_000);
    let mut data = Vec::new();
    write_state(&state, &mut data).unwrap();
    store.begin_receive(&meta(40)).unwrap();
    for chunk in data.chunks(3000) {
        store.append_received(chunk).unwrap();
    }
    store.start_finish_receive();
    assert_eq!(received(&mut store).unwrap(), state);
    assert_eq!(store.latest(), Some(&meta(40)));
    assert_eq!(store.load_latest().unwrap().map(|(_, s)| s), Some(state));
    assert!(store.poll_received().is_none(), "reported once");
}

#[test]
fn a_received_snapshot_that_does_not_decode_is_refused_and_not_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileSnapshots::open(dir.path()).unwrap();
    let mut data = Vec::new();
    write_state(&map(100), &mut data).unwrap();
    data.truncate(data.len() - 3);
    store.begin_receive(&meta(40)).unwrap();
    store.append_received(&data).unwrap();
    store.start_finish_receive();
    let error = received(&mut store).unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData);
    assert_eq!(store.latest(), None);
    assert_eq!(FileSnapshots::open(dir.path()).unwrap().latest(), None);
    let left: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_log_compacted_past_the_newest_snapshot_is_refused_at_start() {
    let mut storage = MemStorage::new();
    storage.append(
        (1..=6)
            .map(|i| Entry {
                index: LogIndex(i),
                term: Term(1),
                payload: Payload::Noop,
            })
            .collect(),
    );
    storage.compact(LogIndex(5), Term(1));
    let config = || {
        let mut config = Config::new(NodeId(1), meta(0).members.addrs(), 1);
        config.snapshots = Some(Default::default());
        config
    };
    let missing = RaftNode::with_snapshots(config(), storage.clone(), MemSnapshots::new());
    let Err(error) = missing else {
        panic!("a node without the snapshot its log needs started");
    };
    assert!(
        error.to_string().contains("entries between are lost"),
        "{error}"
    );
    // With the snapshot the compaction followed, the same log starts.
    let mut snapshots = MemSnapshots::new();
    let mut snapshot = meta(5);
    snapshot.term = Term(1);
    snapshots.start_save(snapshot, map(10));
    snapshots.poll_saved().unwrap().unwrap();
    let node = RaftNode::with_snapshots(config(), storage, snapshots).unwrap();
    assert_eq!(node.last_applied(), LogIndex(5));
}

#[test]
fn a_stalled_transfer_does_not_write_into_the_node_s_own_snapshot_of_the_same_index() {
    // A transfer of snapshot 40 stalls (its leader deposed) with a few bytes still in its
    // writer's buffer; the node then commits up to 40 itself and saves its own snapshot 40;
    // a new transfer replaces the stalled one.
    let dir = tempfile::tempdir().unwrap();
    let mut store = FileSnapshots::open(dir.path()).unwrap();
    store.begin_receive(&meta(40)).unwrap();
    store
        .append_received(b"a few bytes, still buffered")
        .unwrap();
    let state = map(100);
    store.start_save(meta(40), state.clone());
    assert_eq!(polled(|| store.poll_saved()).unwrap(), meta(40));
    store.begin_receive(&meta(50)).unwrap();
    drop(store);
    let mut reopened = FileSnapshots::open(dir.path()).unwrap();
    assert_eq!(reopened.load_latest().unwrap(), Some((meta(40), state)));
}
