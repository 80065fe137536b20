//! Where the durable log's bytes go: a file, or, in tests, a simulated disk that can lose
//! what was never synced, the seam through which crashes are tested at every byte.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use replication_naive::node::SyncJob;

/// An append-only byte store with an explicit sync.
pub trait Medium {
    /// Everything written so far (on open: what survived).
    fn read_all(&mut self) -> std::io::Result<Vec<u8>>;
    /// Appends `bytes` (not yet durable).
    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// The work that makes everything appended so far durable (an fsync), to run on any
    /// thread; [`Medium::synced`] is called once it has succeeded.
    fn sync_job(&mut self) -> SyncJob;
    /// The work from the last [`Medium::sync_job`] or [`Medium::replace_job`] succeeded.
    fn synced(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    /// Cuts the store to `len` bytes, durably (used to drop a torn tail).
    fn truncate(&mut self, len: u64) -> std::io::Result<()>;

    /// The work that replaces the whole content with `replacement`, atomically and
    /// durably, to run on any thread (used after compaction): after a crash the store holds
    /// either the old content or the new, never a mix. Nothing is appended until
    /// [`Medium::synced`].
    fn replace_job(&mut self, replacement: Replacement) -> SyncJob;
}

/// A medium's new content after a compaction: `head`, then the bytes `kept` of the current
/// content, then `tail`. The kept bytes (the records after the snapshot, which can be most
/// of the file when a large snapshot took long to write) are copied by the job, off the
/// node's task, and never decoded or encoded again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replacement {
    /// Encoded by the node.
    pub head: Vec<u8>,
    /// A range of the content the medium holds when the job is made, all of it appended
    /// already (and the last sync reported with [`Medium::synced`], so a file medium has
    /// reopened after an earlier replacement).
    pub kept: Range<u64>,
    /// Encoded by the node, after the kept bytes.
    pub tail: Vec<u8>,
}

impl Replacement {
    /// The new content's length in bytes.
    pub fn size(&self) -> u64 {
        self.head.len() as u64 + (self.kept.end - self.kept.start) + self.tail.len() as u64
    }
}

/// How far ahead of its content a [`FileMedium`] keeps its file zero-filled, in steps of
/// this size.
///
/// An fdatasync after an append must also commit the file's new size and block allocation
/// (on ext4, a journal commit: a second write and flush); one after overwriting blocks that
/// are already allocated and written flushes only the data. Appends therefore overwrite
/// zeros written ahead of them: the zeros go into the page cache on the node's task (about a
/// quarter of a millisecond per step) and the next sync makes them durable, the only sync in
/// a step that pays for allocation. Measured on the benchmark machine: an fdatasync of a
/// 4 KiB append took 229-297 us and 93-107 us of CPU, of a 4 KiB overwrite 121-138 us and
/// 53-60 us (BENCHMARKS.md). This holds where overwriting in place needs no new allocation
/// (ext4, xfs); on a copy-on-write filesystem (btrfs, ZFS) the zeros only add writes. (etcd
/// preallocates its log segments with `fallocate`, which leaves the blocks unwritten, so its
/// first sync over each block still commits their conversion.)
pub const ZERO_AHEAD: u64 = 1 << 20;

/// A real file: the content, then zeros up to the next [`ZERO_AHEAD`] step or further.
///
/// The content never ends with a zero byte (every record ends with its JSON payload), so the
/// zeros after its last nonzero byte are the preallocated tail, not content.
#[derive(Debug)]
pub struct FileMedium {
    /// Shared with the sync under way, which fsyncs through it.
    file: Arc<File>,
    path: std::path::PathBuf,
    /// Where the content ends: the next append goes here. Unknown until the content has
    /// been read ([`Medium::read_all`]).
    end: Option<u64>,
    /// The file's length: zeros from `end` up to here.
    len: u64,
    /// A replacement with content of this length is under way: once it is done, `file`
    /// must be reopened.
    replacing: Option<u64>,
    /// The data directory's lock, held as long as the medium is in use.
    _dir_lock: Option<File>,
}

impl FileMedium {
    /// Opens (or creates) the file at `path` and makes its directory entry durable.
    pub fn open(path: &Path) -> std::io::Result<FileMedium> {
        let file = open_rw(path, true)?;
        sync_parent(path)?;
        let len = file.metadata()?.len();
        Ok(FileMedium {
            file: Arc::new(file),
            path: path.to_path_buf(),
            end: None,
            len,
            replacing: None,
            _dir_lock: None,
        })
    }

    /// The medium, holding the lock of its data directory until it is dropped.
    pub fn holding(self, dir_lock: File) -> FileMedium {
        FileMedium {
            _dir_lock: Some(dir_lock),
            ..self
        }
    }
}

/// Opens `path` for reading and for writing at chosen offsets (not `O_APPEND`: appends go
/// to the end of the content, before the zeros).
fn open_rw(path: &Path, create: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

/// The zeros from `from` up to the [`ZERO_AHEAD`] step that leaves at least a step's room
/// after `end`, written at `from`; returns the file's new length.
fn zero_ahead(file: &File, from: u64, end: u64) -> std::io::Result<u64> {
    let to = (end + ZERO_AHEAD).next_multiple_of(ZERO_AHEAD);
    write_zeros(file, from, to)?;
    Ok(to.max(from))
}

/// Writes zeros over the bytes from `from` to `to` (none if `to <= from`).
fn write_zeros(file: &File, mut from: u64, to: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    while from < to {
        let n = (to - from).min(ZEROS.len() as u64);
        file.write_all_at(&ZEROS[..n as usize], from)?;
        from += n;
    }
    Ok(())
}

impl Medium for FileMedium {
    /// The content: the file without its zero tail.
    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        // Read what the disk holds, not what the page cache does. After a failed fsync
        // (the last process panicked on it), Linux may keep the pages it could not write,
        // marked clean: read back and synced again without error, they would pass for
        // durable ("fsyncgate"). Sync first (an error refuses the start), then drop the
        // file's cached pages, so that what follows reads the disk.
        self.file.sync_data()?;
        rustix::fs::fadvise(&*self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        let mut bytes = Vec::new();
        (&*self.file).seek(SeekFrom::Start(0))?;
        (&*self.file).read_to_end(&mut bytes)?;
        let content = bytes
            .iter()
            .rposition(|&b| b != 0)
            .map_or(0, |last| last + 1);
        bytes.truncate(content);
        self.end = Some(content as u64);
        Ok(bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let Some(end) = self.end else {
            return Err(std::io::Error::other(
                "the log's content must be read before appending to it",
            ));
        };
        self.file.write_all_at(bytes, end)?;
        let end = end + bytes.len() as u64;
        self.end = Some(end);
        self.len = self.len.max(end);
        if self.len - end < ZERO_AHEAD / 2 {
            self.len = zero_ahead(&self.file, self.len, end)?;
        }
        Ok(())
    }

    /// An fsync through the shared handle, off the node's task. The node appends nothing
    /// while it runs: one write per sync, one sync at a time (`SyncGate`), which is what
    /// makes only the last write of a file possibly unsynced.
    fn sync_job(&mut self) -> SyncJob {
        let file = self.file.clone();
        Box::new(move || file.sync_data())
    }

    /// Zeros over everything after `len`, synced: the bytes cut read as the zeros ahead of
    /// the content again, whatever the filesystem does with a file's last block.
    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        write_zeros(&self.file, len, self.len)?;
        self.file.sync_data()?;
        self.end = Some(len);
        Ok(())
    }

    /// Written aside (the kept bytes copied from the old file by the kernel,
    /// `copy_file_range`; zero-filled ahead) and renamed over the old file (rename is
    /// atomic), the directory synced. Nothing else uses the old file's offset meanwhile:
    /// appends and reads are positional, and none happens until [`Medium::synced`].
    fn replace_job(&mut self, replacement: Replacement) -> SyncJob {
        let end = replacement.size();
        self.replacing = Some(end);
        let path = self.path.clone();
        let old = self.file.clone();
        Box::new(move || {
            let Replacement { head, kept, tail } = replacement;
            let tmp = path.with_extension("tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(&head)?;
            let mut old = &*old;
            old.seek(SeekFrom::Start(kept.start))?;
            let want = kept.end - kept.start;
            let copied = std::io::copy(&mut old.take(want), &mut file)?;
            if copied != want {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the log ended {copied} bytes into the {want} to keep"),
                ));
            }
            file.write_all(&tail)?;
            zero_ahead(&file, end, end)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_parent(&path)
        })
    }

    fn synced(&mut self) -> std::io::Result<()> {
        if let Some(end) = self.replacing.take() {
            let file = open_rw(&self.path, false)?;
            self.len = file.metadata()?.len();
            self.file = Arc::new(file);
            self.end = Some(end);
        }
        Ok(())
    }
}

/// Makes a new or renamed file's name durable: its directory must be synced.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        // A relative path of one component: its parent is the working directory.
        Some(dir) if dir.as_os_str().is_empty() => sync_dir(Path::new(".")),
        Some(dir) => sync_dir(dir),
        None => Ok(()),
    }
}

/// Creates the directory `dir` and any missing parent, each durably: a directory's name is
/// durable only once its parent is synced (that of `dir` is synced even if it exists: who
/// made it may not have).
pub(crate) fn create_dir_durably(dir: &Path) -> std::io::Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotADirectory,
            "not a directory",
        ));
    }
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|d| !d.as_os_str().is_empty() && !d.exists())
        .collect();
    std::fs::create_dir_all(dir)?;
    if missing.is_empty() {
        sync_parent(dir)
    } else {
        missing.iter().rev().try_for_each(|d| sync_parent(d))
    }
}

/// Syncs a directory, making the names of files created or renamed in it durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// A simulated disk: bytes appended but not synced may be lost, or half-written, in a
/// crash. Clones share nothing.
#[derive(Debug, Clone, Default)]
pub struct SimDisk {
    bytes: Vec<u8>,
    synced: usize,
    /// How much the sync under way covers: synced once it has finished.
    syncing: usize,
    /// The content of the replacement under way: in place once it has finished.
    replacement: Option<Vec<u8>>,
}

impl SimDisk {
    /// An empty disk.
    pub fn new() -> SimDisk {
        SimDisk::default()
    }

    /// How many bytes have been written (synced or not).
    pub fn written(&self) -> usize {
        self.bytes.len()
    }

    /// The disk as it was when only its first `keep` bytes had been written: a crash at that
    /// instant, mid-write if `keep` falls inside a record.
    pub fn written_up_to(&self, keep: usize) -> SimDisk {
        let keep = keep.min(self.bytes.len());
        SimDisk {
            bytes: self.bytes[..keep].to_vec(),
            synced: keep.min(self.synced),
            syncing: 0,
            replacement: None,
        }
    }

    /// The disk after a crash: what was synced survives, nothing else.
    pub fn crash(&self) -> SimDisk {
        SimDisk {
            bytes: self.bytes[..self.synced].to_vec(),
            synced: self.synced,
            syncing: 0,
            replacement: None,
        }
    }

    /// The disk with byte `at` flipped (a corrupted record).
    pub fn corrupted(&self, at: usize) -> SimDisk {
        let mut disk = self.clone();
        disk.bytes[at] ^= 0xff;
        disk
    }

    /// The disk with the bytes in `range` read back as zeros: the sectors of a write that
    /// never reached a file zero-filled ahead of its content.
    pub fn zeroed(&self, range: std::ops::Range<usize>) -> SimDisk {
        let mut disk = self.clone();
        disk.bytes[range].fill(0);
        disk
    }

    /// The disk with `n` zero bytes after its end, as a file extended but never written.
    pub fn zero_extended(&self, n: usize) -> SimDisk {
        let mut disk = self.clone();
        disk.bytes.resize(disk.bytes.len() + n, 0);
        disk
    }
}

impl Medium for SimDisk {
    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        Ok(self.bytes.clone())
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.bytes.extend_from_slice(bytes);
        Ok(())
    }

    /// A crash before [`Medium::synced`] loses what this sync covers.
    fn sync_job(&mut self) -> SyncJob {
        self.syncing = self.bytes.len();
        Box::new(|| Ok(()))
    }

    fn synced(&mut self) -> std::io::Result<()> {
        match self.replacement.take() {
            Some(bytes) => {
                self.bytes = bytes;
                self.synced = self.bytes.len();
            }
            None => self.synced = self.synced.max(self.syncing),
        }
        Ok(())
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.bytes.truncate(len as usize);
        self.synced = self.bytes.len();
        self.syncing = self.syncing.min(self.bytes.len());
        Ok(())
    }

    /// A crash before [`Medium::synced`] keeps the old content.
    fn replace_job(&mut self, replacement: Replacement) -> SyncJob {
        let Replacement { head, kept, tail } = replacement;
        let mut bytes = head;
        bytes.extend_from_slice(&self.bytes[kept.start as usize..kept.end as usize]);
        bytes.extend_from_slice(&tail);
        self.replacement = Some(bytes);
        Box::new(|| Ok(()))
    }
}
