//! [`DurableStorage`]: the `raft_log::storage::Storage` trait on disk.
//!
//! One append-only file of records, each a change to the log or hard state:
//!
//! ```text
//! record := len: u32 LE | crc32(len): u32 LE | crc32(payload): u32 LE | payload (JSON, `len` bytes)
//!           (bit 31 of len set: the first record of a write, see below)
//! payload := Entries([...]) | TruncateAfter(index) | HardState{current_term, voted_for}
//!          | Compacted(index, term)  (first in a file rewritten after compaction)
//! ```
//!
//! A data directory's log starts with the record its node wrote on its first start, before
//! its id file: a hard state of term 0 (which changes nothing). A directory with an id then
//! always has a record in its log; one without any (a log truncated to nothing) has lost
//! the node's term, vote and entries, and is refused rather than taken for a new one.
//!
//! Every change is encoded into a buffer at once, and made durable by `sync`: one write and
//! one fsync for every change since the last (group commit). The node's runner syncs before
//! anything that depends on a change leaves the node, so nothing is acknowledged (a vote
//! granted, an entry accepted) before it is on disk. Opening replays the records into
//! memory; reads are served from memory.
//!
//! The file is kept zero-filled ahead of its content, so that an append overwrites blocks
//! already written and its fsync has no allocation to commit ([`crate::medium::ZERO_AHEAD`]).
//! The file is written one batch at a time, and the next batch only once the last one's
//! fsync has finished: only the last write can be unsynced. Its first record is marked (bit
//! 31 of its length). A crash can leave the last write's records torn: cut short, or with
//! a sector that reads as zeros (the pages
//! of a write reach the disk in any order, so intact records may follow that hole). Such a
//! record, if no marked record follows it, is in the last write, and it and everything after
//! it are cut from the file (and logged), never applied. Anything else (a header or payload
//! that fails its checksum with no zero sector, the last record's included, or a hole with a
//! later write after it) is damage to data that was synced, and is refused: silently
//! dropping it, or the records after it, would forget votes and acknowledged entries. The length has its own
//! checksum so that a damaged length cannot pass for a torn tail.
//!
//! One file for everything is what lets one fsync cover a batch of changes. The file grows
//! until the log is compacted (stage 7); then it is rewritten, atomically, with only what is
//! still needed: where the log starts, the hard state, and the entries after the snapshot.
//! Those entries are mostly copied from the old file as they are, from the first record
//! that lies wholly after the snapshot: the node keeps where each record of entries starts.
//! Only the entries before that record are encoded again, on the node's task; under load,
//! a batch's worth. Everything after the snapshot is encoded again when no record starts
//! after it, when the snapshot replaces the whole log (a follower installing the leader's:
//! there is nothing after it), and when a rewrite not yet started is replaced. Under load
//! a large snapshot takes seconds to write, and tens of thousands of entries arrive
//! meanwhile: encoding them all again held the node's task for up to 190 ms (BENCHMARKS.md),
//! close to an election timeout. The copy, the write, the fsync and the rename are the next
//! sync's work, off the node's task: until that ends, the old file stands.

use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

use kv_server::protocol::NodeId;
use raft_log::storage::{HardState, MemStorage, Storage};
use raft_log::types::{Entry, LogIndex, Term};
use serde::{Deserialize, Serialize};
use tracing::warn;

use replication_naive::files::replace_durably;
use replication_naive::node::SyncJob;

use crate::medium::{FileMedium, Medium, Replacement};

/// The file holding the log, inside the data directory.
pub const LOG_FILE: &str = "raft.log";
/// The file naming the node that owns the data directory.
pub const NODE_ID_FILE: &str = "node-id";

const HEADER: usize = 12;

/// No record is larger: a longer length is damage.
const MAX_RECORD: usize = 1 << 30;

/// Set in the length of the first record of each write.
const WRITE_START: u32 = 1 << 31;

/// The buffer of unwritten records keeps its allocation between batches up to this size.
const MAX_KEPT_BUFFER: usize = 1 << 20;

/// One change, as written to disk. Generic over how the entries are held: written from a
/// borrowed slice (no copy of values on the write path), read back into a `Vec`.
#[derive(Debug, Serialize, Deserialize)]
enum Record<E> {
    Entries(E),
    TruncateAfter(LogIndex),
    HardState(HardState),
    /// A snapshot covers everything up to this index, of this term (written first in a
    /// file rewritten after compaction).
    Compacted(LogIndex, Term),
}

/// Why a data directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The directory or a file in it could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory belongs to another node: adopting it would make this node claim
    /// another's votes and log.
    #[error("{path} belongs to node {owner}, not to node {me}")]
    Foreign {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: String,
        /// The node asked to open it.
        me: NodeId,
    },
    /// Another process holds the directory's lock: two nodes writing one log would
    /// corrupt it.
    #[error("{path} is in use by another process (it holds {path}/LOCK)")]
    Locked {
        /// The directory.
        path: PathBuf,
    },
    /// The directory holds a log, or files of something else, but says of no node that it
    /// is its own: adopting a log could make this node claim another's votes, and anything
    /// else is likely a mistyped path.
    #[error(
        "{path} holds {what} but no node-id file: it is no node's data directory (or lost its id), so it is not adopted"
    )]
    Unowned {
        /// The directory.
        path: PathBuf,
        /// What it holds.
        what: String,
    },
    /// The directory is this node's, but its log is gone, and with it its term, its vote
    /// and the entries it acknowledged: starting empty could vote twice in a term.
    #[error(
        "{path} is missing: node {me} lost its term, vote and log; remove it from the cluster and start it again with an empty data directory"
    )]
    LogMissing {
        /// The log file.
        path: PathBuf,
        /// The node asked to open it.
        me: NodeId,
    },
    /// The directory is this node's, but its log does not start with an intact record.
    /// A node's first start writes and syncs the log's first record before its id, so the
    /// log was emptied or cut short since, and with it went the node's term, vote and the
    /// entries it acknowledged: starting empty could vote twice in a term, or found a new
    /// cluster with `--bootstrap`.
    #[error(
        "{path} does not start with an intact record, but node {me} has run here (its node-id file is there): the log was emptied, cut short or damaged, and node {me} lost its term, vote and log; remove it from the cluster and start it again with an empty data directory"
    )]
    LogEmptied {
        /// The log file.
        path: PathBuf,
        /// The node asked to open it.
        me: NodeId,
    },
    /// A record that passed its checksum could not be replayed: a bug, not a crash.
    #[error("unreadable record at byte {offset}: {reason}")]
    Corrupt {
        /// Where it starts.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The log and hard state, kept in memory and made durable on a [`Medium`].
#[derive(Debug)]
pub struct DurableStorage<M: Medium = FileMedium> {
    memory: MemStorage,
    medium: M,
    /// Records encoded since the last sync, not yet written: a batch costs one `write`.
    pending: Vec<u8>,
    /// How many bytes of content the medium holds (the file without its zero tail) once the
    /// write or replacement under way is done. `pending` and the records kept by the next
    /// replacement are counted from here; the next replacement is made only after the
    /// medium has been told the last sync finished ([`Medium::synced`]: `SyncGate` runs
    /// one sync at a time), so by then the medium holds exactly this much.
    written: u64,
    /// Where each record of entries starts in the content (`pending` and `rewrite`
    /// included), with the index of its first entry, for the records since the last
    /// truncation: what a compaction can copy instead of encoding again. The indexes
    /// increase, each record following the one before it.
    entry_records: VecDeque<(LogIndex, u64)>,
    /// After a compaction, the file's new content (what is still needed), written in place
    /// of the old by the next sync: the slow part of a compaction (copying, writing and
    /// syncing the entries kept) runs off the node's task. Records written meanwhile go
    /// into its tail.
    rewrite: Option<Replacement>,
    /// The last index known to be on disk ([`Storage::durable_index`]).
    durable: LogIndex,
    /// The hard state on disk ([`Storage::durable_hard_state`]).
    durable_hard: HardState,
    /// What the sync under way covers, if one is: the last index, and the hard state.
    syncing: Option<(LogIndex, HardState)>,
}

impl DurableStorage<FileMedium> {
    /// Opens (creating if needed) the data directory `dir` of node `id`, and holds its lock
    /// for as long as the storage lives.
    pub fn open_dir(dir: &Path, id: NodeId) -> Result<DurableStorage<FileMedium>, OpenError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| OpenError::Io { path, source }
        };
        crate::medium::create_dir_durably(dir).map_err(io(dir))?;
        let id_file = dir.join(NODE_ID_FILE);
        let log_file = dir.join(LOG_FILE);
        // A directory of something else (a mistyped path) is refused untouched, before the
        // lock's file is made in it. A node's first start creates the log, writes and syncs
        // its first record (`first_record`), then writes its id: a directory without an id
        // holds at most that record, or nothing else `log_written` counts.
        if !id_file.exists() {
            if let Some(what) = foreign_content(dir).map_err(io(dir))? {
                // Unless another node's first start, under way, made it: say that instead.
                if dir.join(LOCK_FILE).exists() {
                    lock_dir(dir)?;
                }
                return Err(OpenError::Unowned {
                    path: dir.to_path_buf(),
                    what,
                });
            }
        }
        // Then the lock: a second process in the same directory (a double start) must
        // change nothing, not even cut what it takes for a torn tail while the first writes.
        let lock = lock_dir(dir)?;
        let owner = match fs::read_to_string(&id_file) {
            Ok(owner) => Some(owner.trim().to_owned()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(io(&id_file)(e)),
        };
        match &owner {
            Some(owner) if *owner != id.to_string() => {
                return Err(OpenError::Foreign {
                    path: dir.to_path_buf(),
                    owner: owner.clone(),
                    me: id,
                });
            }
            // The log is created before the node's id is written: a directory with an id
            // and no log has lost its log, and with it the node's term and vote.
            Some(_) if !log_file.exists() => {
                return Err(OpenError::LogMissing {
                    path: log_file,
                    me: id,
                });
            }
            Some(_) if !first_record_intact(&log_file).map_err(io(&log_file))? => {
                return Err(OpenError::LogEmptied {
                    path: log_file,
                    me: id,
                });
            }
            _ => {}
        }
        let mut medium = FileMedium::open(&log_file)
            .map_err(io(&log_file))?
            .holding(lock);
        if owner.is_none() {
            // The log's first record, synced before the id is written: from then on, a log
            // with no record in a directory with an id is damage, not a new directory
            // (`LogEmptied`). Whatever the log held is a first start's that stopped early
            // (`foreign_content` found nothing else): nothing `log_written` counts, so
            // nothing that was synced, voted or acknowledged.
            write_first_record(&mut medium).map_err(io(&log_file))?;
            // Replaced durably: a crash leaves either no file or a complete one, never an
            // empty one that would lock the node out.
            replace_durably(&id_file, format!("{id}\n").as_bytes()).map_err(io(&id_file))?;
        }
        DurableStorage::open(medium).map_err(|e| match e {
            OpenError::Io { source, .. } => OpenError::Io {
                path: log_file,
                source,
            },
            other => other,
        })
    }
}

/// What a data directory without a node id holds that a new node's does not: a log with a
/// record, or any file but the lock, an unwritten log and a half-written id (a first start
/// that stopped early). What a fresh volume or a file manager leaves (`lost+found`, hidden
/// files) does not count. `None` when it holds nothing else.
fn foreign_content(dir: &Path) -> std::io::Result<Option<String>> {
    if log_written(dir)? {
        return Ok(Some("a log".to_owned()));
    }
    let id_tmp = format!("{NODE_ID_FILE}.tmp");
    // Not the incarnations file: written after the id, it makes a directory without one a
    // node's whose log and id were deleted, which must not start anew with its old
    // incarnation.
    let expected = [LOCK_FILE, LOG_FILE, id_tmp.as_str(), "lost+found"];
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let hidden = name.as_encoded_bytes().starts_with(b".");
        if !hidden && !expected.iter().any(|ours| name == *ours) {
            return Ok(Some(format!("{name:?}")));
        }
    }
    Ok(None)
}

/// The file whose lock says a process is using the data directory.
const LOCK_FILE: &str = "LOCK";

/// Takes the data directory's lock, or says which directory another process holds. The
/// operating system lets it go when the process ends, however it ends.
fn lock_dir(dir: &Path) -> Result<fs::File, OpenError> {
    let path = dir.join(LOCK_FILE);
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| OpenError::Io {
            path: path.clone(),
            source,
        })?;
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(file),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(OpenError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(errno) => Err(OpenError::Io {
            path,
            source: errno.into(),
        }),
    }
}

/// Whether the log in the data directory `dir` holds something a first start would lose:
/// an intact record past the one every node writes first ([`first_record`]), other than
/// the hard state a new cluster's founder writes with its founding entry (term 1, no vote),
/// before the log's end or a torn tail.
///
/// So a log is not written when it holds only zeros (a first write lost in a crash: the
/// file is zero-filled ahead of its content), the first record or part of it, or that
/// record and a founding write that a crash cut short (its hard state whole, its entry
/// torn): nothing was synced past the first record, no vote was given and nothing was
/// acknowledged, and the next start founds the cluster again from its flags. A record that
/// fails its checksum with no sign of a crash counts as written: opening the log then
/// refuses it as damaged.
pub fn log_written(dir: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = match fs::File::open(dir.join(LOG_FILE)) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error),
    };
    // The start of the log tells, unless a torn tail has to be told from damage further on.
    let mut bytes = Vec::new();
    (&mut file).take(WRITTEN_PREFIX).read_to_end(&mut bytes)?;
    if let Some(written) = written_past_first_record(&bytes, false) {
        return Ok(written);
    }
    file.read_to_end(&mut bytes)?;
    Ok(written_past_first_record(&bytes, true).unwrap_or(true))
}

/// How much of a log [`log_written`] reads first.
const WRITTEN_PREFIX: u64 = 64 * 1024;

/// [`log_written`] for a log that starts with `bytes` (the whole log when `whole`): `None`
/// when the rest of the log is needed to tell.
fn written_past_first_record(bytes: &[u8], whole: bool) -> Option<bool> {
    let first = first_record();
    let content = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    if first.starts_with(&bytes[..content]) {
        return Some(false);
    }
    if !bytes.starts_with(&first) {
        return Some(true);
    }
    let mut at = first.len();
    loop {
        match read_record(&bytes[at..], at) {
            Read::Record(payload) => match serde_json::from_slice(payload) {
                Ok(Record::<Vec<Entry>>::HardState(HardState {
                    current_term,
                    voted_for: None,
                })) if current_term <= Term(1) => at += HEADER + payload.len(),
                _ => return Some(true),
            },
            Read::Damaged => return Some(true),
            Read::End | Read::Torn => return whole.then_some(false),
        }
    }
}

/// Whether the data directory `dir` has an owner (a node-id file) but a log that does not
/// start with an intact record: a log emptied or cut short, which opening refuses
/// ([`OpenError::LogEmptied`]). Such a directory is not a new one.
pub fn log_emptied(dir: &Path) -> std::io::Result<bool> {
    let log = dir.join(LOG_FILE);
    Ok(dir.join(NODE_ID_FILE).exists() && log.exists() && !first_record_intact(&log)?)
}

/// The record a node writes first in its log, before its id: a hard state of term 0 and no
/// vote, which changes nothing when replayed. Its bytes are always the same, so a log that
/// holds only it (or part of it) is known for a log in which nothing else was written.
fn first_record() -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_into(&mut bytes, &Record::HardState(HardState::default()));
    bytes
}

/// Makes [`first_record`] the log's whole content, synced. Only for a log in which nothing
/// else was written: whatever `medium` holds is replaced.
fn write_first_record(medium: &mut FileMedium) -> std::io::Result<()> {
    medium.read_all()?;
    medium.truncate(0)?;
    medium.append(&first_record())?;
    medium.sync_job()()?;
    medium.synced()
}

/// Whether the log file at `path` starts with an intact record (its length and payload
/// pass their checksums).
fn first_record_intact(path: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut header = [0; HEADER];
    match file.read_exact(&mut header) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
        Err(error) => return Err(error),
    }
    let Some(header) = Header::read(&header) else {
        return Ok(false);
    };
    let Some(len) = header.len() else {
        return Ok(false);
    };
    let mut payload = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut payload)?;
    Ok(payload.len() == len && crc32fast::hash(&payload) == header.payload_crc)
}

impl<M: Medium> DurableStorage<M> {
    /// Replays what `medium` holds, cutting a torn tail (a write a crash cut short) and
    /// refusing damage.
    pub fn open(mut medium: M) -> Result<DurableStorage<M>, OpenError> {
        let io = |source| OpenError::Io {
            path: PathBuf::new(),
            source,
        };
        let bytes = medium.read_all().map_err(io)?;
        let mut memory = MemStorage::new();
        let mut entry_records = VecDeque::new();
        let mut offset = 0;
        loop {
            match read_record(&bytes[offset..], offset) {
                Read::Record(payload) => {
                    let record: Record<Vec<Entry>> =
                        serde_json::from_slice(payload).map_err(|e| OpenError::Corrupt {
                            offset,
                            reason: e.to_string(),
                        })?;
                    note_record(&mut entry_records, &record, offset as u64);
                    replay(&mut memory, record)
                        .map_err(|reason| OpenError::Corrupt { offset, reason })?;
                    offset += HEADER + payload.len();
                }
                Read::End => break,
                Read::Torn => {
                    warn!(
                        cut = bytes.len() - offset,
                        at = offset,
                        "a record a crash left torn or unwritten; it and what follows it (never synced) are cut"
                    );
                    medium.truncate(offset as u64).map_err(io)?;
                    break;
                }
                Read::Damaged => {
                    return Err(OpenError::Corrupt {
                        offset,
                        reason: "the record fails its checksum, and no crash mid-write explains it (no unwritten sector, or a later write after it): the log is damaged, not torn; refusing to start. Restore the data directory from a copy, or, if the other members are healthy, remove this node from the cluster (kv-client remove-member), empty its data directory and start it with --join: it catches up from them".into(),
                    });
                }
            }
        }
        // What was read may still be only in the page cache (the process, not the machine,
        // stopped): it counts as durable once synced.
        medium.sync_job()().map_err(io)?;
        medium.synced().map_err(io)?;
        Ok(DurableStorage {
            durable: memory.last_index(),
            durable_hard: memory.hard_state(),
            memory,
            medium,
            pending: Vec::new(),
            written: offset as u64,
            entry_records,
            rewrite: None,
            syncing: None,
        })
    }

    /// Gives back the medium (tests crash it), with the records not yet synced written to it
    /// but not synced: what the disk holds if the process stops between the two. A rewrite
    /// after compaction that no sync has started never reached the disk, nor did the
    /// records queued behind it for the new file: the old file stands.
    pub fn into_medium(mut self) -> M {
        if self.rewrite.is_none() {
            if let Err(error) = self.medium.append(&self.pending) {
                panic!("cannot write the log ({error})");
            }
        }
        self.medium
    }

    /// Queues `record`; [`Storage::sync`] writes and syncs it, with the file's new content
    /// if a compaction has left one to write.
    fn write(&mut self, record: &Record<&[Entry]>) {
        let at = self.content_len();
        note_record(&mut self.entry_records, record, at);
        let buffer = match &mut self.rewrite {
            Some(replacement) => &mut replacement.tail,
            None => &mut self.pending,
        };
        encode_into(buffer, record);
    }

    /// How long the content is with every record queued so far.
    fn content_len(&self) -> u64 {
        match &self.rewrite {
            Some(replacement) => replacement.size(),
            None => self.written + self.pending.len() as u64,
        }
    }

    /// The content after compacting up to `index` of `term`: the start of the log and the
    /// hard state, then the entries after `index`. Those from the first record of entries
    /// that lies wholly after `index` on are kept as they are, records after them included
    /// (hard states, which end at the current one, and more entries: no truncation, as
    /// `entry_records` starts after the last); only the entries before that record are
    /// encoded. Everything is encoded when `copy` is false: the compaction replaced the
    /// whole log, so what the file holds after `index` is gone; or a rewrite not yet started
    /// is replaced, and the file does not hold its content.
    fn replacement(&mut self, index: LogIndex, term: Term, copy: bool) -> Replacement {
        let mut head = Vec::new();
        encode_into(&mut head, &Record::Compacted(index, term));
        encode_into(&mut head, &Record::HardState(self.memory.hard_state()));
        let from = self
            .entry_records
            .partition_point(|&(first, _)| first <= index);
        let kept = self.entry_records.get(from).copied().filter(|_| copy);
        let encoded_upto = kept.map_or(self.memory.last_index(), |(first, _)| first.prev());
        let encoded = self.memory.entries(index.next(), encoded_upto, usize::MAX);
        let mut records = VecDeque::new();
        if !encoded.is_empty() {
            records.push_back((index.next(), head.len() as u64));
            encode_into(&mut head, &Record::Entries(encoded.as_slice()));
        }
        let pending = std::mem::take(&mut self.pending);
        let Some((_, start)) = kept else {
            self.entry_records = records;
            return Replacement {
                head,
                kept: 0..0,
                tail: Vec::new(),
            };
        };
        // The kept records move to just after the head.
        let moved = head.len() as u64;
        records.extend(
            self.entry_records
                .drain(from..)
                .map(|(first, at)| (first, at - start + moved)),
        );
        self.entry_records = records;
        let (kept, tail) = if start < self.written {
            (start..self.written, pending)
        } else {
            let in_pending = (start - self.written) as usize;
            (self.written..self.written, pending[in_pending..].to_vec())
        };
        Replacement { head, kept, tail }
    }
}

/// Keeps `records` (see `DurableStorage::entry_records`) up to date with `record`, written
/// at `offset` of the content.
fn note_record<E: AsRef<[Entry]>>(
    records: &mut VecDeque<(LogIndex, u64)>,
    record: &Record<E>,
    offset: u64,
) {
    match record {
        Record::Entries(entries) => {
            if let Some(first) = entries.as_ref().first() {
                records.push_back((first.index, offset));
            }
        }
        Record::TruncateAfter(_) | Record::Compacted(..) => records.clear(),
        Record::HardState(_) => {}
    }
}

/// One record as written to disk, appended to `bytes`, the buffer of one write: the first
/// record in it is marked as the write's start.
fn encode_into(bytes: &mut Vec<u8>, record: &Record<&[Entry]>) {
    let start = bytes.len();
    bytes.extend_from_slice(&[0; HEADER]);
    serde_json::to_writer(&mut *bytes, record).expect("records serialize");
    let payload = &bytes[start + HEADER..];
    assert!(
        payload.len() <= MAX_RECORD,
        "a record of {} bytes is too large",
        payload.len()
    );
    // What tells a file's zero tail from content (`FileMedium::read_all`).
    assert_ne!(
        payload.last(),
        Some(&0),
        "a record ends with its JSON payload"
    );
    let mark = if start == 0 { WRITE_START } else { 0 };
    let len = (payload.len() as u32 | mark).to_le_bytes();
    let payload_crc = crc32fast::hash(payload).to_le_bytes();
    bytes[start..start + 4].copy_from_slice(&len);
    bytes[start + 4..start + 8].copy_from_slice(&crc32fast::hash(&len).to_le_bytes());
    bytes[start + 8..start + HEADER].copy_from_slice(&payload_crc);
}

/// What is at the start of the remaining bytes.
enum Read<'a> {
    /// An intact record's payload.
    Record(&'a [u8]),
    /// Nothing: the log ends cleanly.
    End,
    /// What a crash mid-write leaves in the last write: a record cut short, or one that
    /// was never wholly written (see [`never_written`]) with no later write after it.
    Torn,
    /// A header or payload that fails its checksum with no sign of a write that never
    /// reached the disk, or with a later write after it.
    Damaged,
}

/// The unit a disk writes whole: after a crash, each one holds what was last written to it
/// or what it held before, never a mix.
const SECTOR: usize = 512;

/// Reads the record at the start of `bytes`, which is at byte `at` of the file.
fn read_record(bytes: &[u8], at: usize) -> Read<'_> {
    if bytes.is_empty() {
        return Read::End;
    }
    let Some(header) = Header::read(bytes) else {
        return Read::Torn;
    };
    let Some(len) = header.len() else {
        // The length is unknown: only the header and the payload's first byte are known
        // to be there.
        return torn_or_damaged(never_written(bytes, at, 0, HEADER + 1), bytes);
    };
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Read::Torn;
    };
    if crc32fast::hash(payload) == header.payload_crc {
        Read::Record(payload)
    } else {
        // The last record too: a write cut short by a crash leaves a sector of zeros (or
        // a payload cut short, above), and a whole payload that fails its checksum with
        // none is damage to a synced record, perhaps the last vote.
        torn_or_damaged(never_written(bytes, at, HEADER, HEADER + len), bytes)
    }
}

/// A record's header as read, not yet checked.
struct Header {
    len: u32,
    len_crc: u32,
    payload_crc: u32,
}

impl Header {
    /// The header at the start of `bytes`, if they hold one.
    fn read(bytes: &[u8]) -> Option<Header> {
        let word = |at: usize| -> Option<u32> {
            Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
        };
        Some(Header {
            len: word(0)?,
            len_crc: word(4)?,
            payload_crc: word(8)?,
        })
    }

    /// The payload's length, if the length passes its checksum and is possible.
    fn len(&self) -> Option<usize> {
        let len = (self.len & !WRITE_START) as usize;
        (crc32fast::hash(&self.len.to_le_bytes()) == self.len_crc && len != 0 && len <= MAX_RECORD)
            .then_some(len)
    }

    /// Whether the record starts a write.
    fn starts_write(&self) -> bool {
        self.len & WRITE_START != 0
    }
}

/// A record that fails its checksum: torn if it was never wholly written and it is in the
/// last write (no intact record marked as a write's start follows it in `bytes`);
/// otherwise damage.
fn torn_or_damaged(unwritten: bool, bytes: &[u8]) -> Read<'static> {
    if unwritten && !later_write(&bytes[1..]) {
        Read::Torn
    } else {
        Read::Damaged
    }
}

/// Whether an intact record that starts a write begins anywhere in `bytes`.
fn later_write(bytes: &[u8]) -> bool {
    (0..bytes.len()).any(|at| {
        let rest = &bytes[at..];
        let Some(header) = Header::read(rest).filter(Header::starts_write) else {
            return false;
        };
        header
            .len()
            .and_then(|len| rest.get(HEADER..HEADER + len))
            .is_some_and(|payload| crc32fast::hash(payload) == header.payload_crc)
    })
}

/// Whether some sector holding part of `bytes[from..span]` (the record at the start of
/// `bytes`, at byte `at` of the file) reads as zeros over that part: a write that never
/// reached the disk, since the file is zero-filled ahead of its content and a payload (JSON)
/// holds no zero byte. With `from` 0, a sector holding only header bytes counts too.
fn never_written(bytes: &[u8], at: usize, from: usize, span: usize) -> bool {
    let end = span.min(bytes.len());
    // Each sector's part of the span, from byte `from`.
    let mut start = from;
    while start < end {
        let stop = (((at + start) / SECTOR + 1) * SECTOR - at).min(end);
        if bytes[start..stop].iter().all(|&b| b == 0) {
            return true;
        }
        start = stop;
    }
    false
}

/// Applies one record to `memory`, refusing what no run of this code writes (a record
/// that passed its checksum but was written by a bug, or forged) instead of panicking.
fn replay(memory: &mut MemStorage, record: Record<Vec<Entry>>) -> Result<(), String> {
    match record {
        Record::Entries(entries) => {
            let mut next = memory.last_index().next();
            for entry in &entries {
                if entry.index != next {
                    return Err(format!(
                        "entry {} where entry {next} should follow a log ending at {}",
                        entry.index,
                        memory.last_index()
                    ));
                }
                next = next.next();
            }
            memory.append(entries);
        }
        Record::TruncateAfter(index) if index.next() < memory.first_index() => {
            return Err(format!(
                "a truncation after {index}, before the snapshot at {}",
                LogIndex(memory.first_index().0 - 1)
            ));
        }
        Record::TruncateAfter(index) => memory.truncate_after(index),
        Record::HardState(state) => memory.save_hard_state(state),
        Record::Compacted(index, term) => memory.compact(index, term),
    }
    Ok(())
}

impl<M: Medium> Storage for DurableStorage<M> {
    fn first_index(&self) -> LogIndex {
        self.memory.first_index()
    }

    fn last_index(&self) -> LogIndex {
        self.memory.last_index()
    }

    fn term(&self, index: LogIndex) -> Option<Term> {
        self.memory.term(index)
    }

    fn entries(&self, from: LogIndex, to: LogIndex, max: usize) -> Vec<Entry> {
        self.memory.entries(from, to, max)
    }

    fn append(&mut self, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.write(&Record::Entries(entries.as_slice()));
        self.memory.append(entries);
    }

    fn truncate_after(&mut self, index: LogIndex) {
        self.write(&Record::<&[Entry]>::TruncateAfter(index));
        self.memory.truncate_after(index);
        // Entries written at these indexes from now on are new: no sync so far covers them.
        self.durable = self.durable.min(index);
        if let Some((upto, _)) = &mut self.syncing {
            *upto = (*upto).min(index);
        }
    }

    fn compact(&mut self, index: LogIndex, term: Term) {
        if index < self.memory.first_index() {
            return;
        }
        // §7: the entries after the snapshot stay if the log holds its last entry.
        let entries_stay = self.memory.term(index) == Some(term);
        self.memory.compact(index, term);
        // A snapshot that replaced the whole log (it did not match) leaves the log ending at
        // its index: entries written after it are new, and no sync so far covers them.
        let last = self.memory.last_index();
        self.durable = self.durable.min(last);
        if let Some((upto, _)) = &mut self.syncing {
            *upto = (*upto).min(last);
        }
        // The file is to be rewritten with only what is still needed, by the next sync.
        let copy = entries_stay && self.rewrite.is_none();
        let replacement = self.replacement(index, term, copy);
        self.rewrite = Some(replacement);
    }

    fn hard_state(&self) -> HardState {
        self.memory.hard_state()
    }

    fn save_hard_state(&mut self, state: HardState) {
        if state != self.memory.hard_state() {
            self.write(&Record::<&[Entry]>::HardState(state));
            self.memory.save_hard_state(state);
        }
    }

    /// One write, here, and one fsync, in the work returned, for every record since the
    /// last (group commit).
    fn start_sync(&mut self) -> Option<SyncJob> {
        // Records written since a compaction went into its rewrite (`write`).
        if let Some(replacement) = self.rewrite.take() {
            self.written = replacement.size();
            self.syncing = Some((self.memory.last_index(), self.memory.hard_state()));
            return Some(self.medium.replace_job(replacement));
        }
        if self.pending.is_empty() {
            return None;
        }
        if let Err(error) = self.medium.append(&self.pending) {
            panic!(
                "cannot write the log ({error}); stopping rather than acknowledging what may not be on disk"
            );
        }
        self.written += self.pending.len() as u64;
        self.pending.clear();
        if self.pending.capacity() > MAX_KEPT_BUFFER {
            self.pending = Vec::new();
        }
        self.syncing = Some((self.memory.last_index(), self.memory.hard_state()));
        Some(self.medium.sync_job())
    }

    /// A write or fsync that fails leaves the disk in an unknown state (and on Linux a
    /// failed fsync is reported once): the node must stop rather than acknowledge anything,
    /// so this panics (and the binary stops).
    fn finish_sync(&mut self, result: std::io::Result<()>) {
        if let Err(error) = result {
            panic!(
                "cannot sync the log ({error}); stopping rather than acknowledging what may not be on disk"
            );
        }
        if let Err(error) = self.medium.synced() {
            panic!("cannot reopen the log after rewriting it ({error}); stopping");
        }
        if let Some((upto, hard)) = self.syncing.take() {
            self.durable = self.durable.max(upto);
            self.durable_hard = hard;
        }
    }

    fn durable_index(&self) -> LogIndex {
        self.durable
    }

    fn durable_hard_state(&self) -> HardState {
        self.durable_hard
    }
}
