//! Where the durable log's bytes go: a file, or, in tests, a simulated disk that can lose
//! what was never synced, the seam through which crashes are tested at every byte.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

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

    /// The work that replaces the whole content with `bytes`, atomically and durably, to
    /// run on any thread (used after compaction): after a crash the store holds either the
    /// old content or the new, never a mix. Nothing is appended until [`Medium::synced`].
    fn replace_job(&mut self, bytes: Vec<u8>) -> SyncJob;
}

/// A real file.
#[derive(Debug)]
pub struct FileMedium {
    file: File,
    path: std::path::PathBuf,
    /// A replacement is under way: once it is done, `file` must be reopened.
    replacing: bool,
}

impl FileMedium {
    /// Opens (or creates) the file at `path` and makes its directory entry durable.
    pub fn open(path: &Path) -> std::io::Result<FileMedium> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        sync_parent(path)?;
        Ok(FileMedium {
            file,
            path: path.to_path_buf(),
            replacing: false,
        })
    }
}

impl Medium for FileMedium {
    fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        self.file.seek(SeekFrom::Start(0))?;
        self.file.read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    fn append(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.file.write_all(bytes)
    }

    /// An fsync through a second handle on the same file, so it runs while the node goes
    /// on appending.
    fn sync_job(&mut self) -> SyncJob {
        match self.file.try_clone() {
            Ok(file) => Box::new(move || file.sync_data()),
            Err(error) => Box::new(move || Err(error)),
        }
    }

    fn truncate(&mut self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)?;
        self.file.sync_all()
    }

    /// Written aside and renamed over the old file (rename is atomic), the directory synced.
    fn replace_job(&mut self, bytes: Vec<u8>) -> SyncJob {
        self.replacing = true;
        let path = self.path.clone();
        Box::new(move || {
            let tmp = path.with_extension("tmp");
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            sync_parent(&path)
        })
    }

    fn synced(&mut self) -> std::io::Result<()> {
        if std::mem::take(&mut self.replacing) {
            self.file = OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.path)?;
        }
        Ok(())
    }
}

/// Makes a new or renamed file's name durable: its directory must be synced.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => sync_dir(dir),
        _ => Ok(()),
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
    fn replace_job(&mut self, bytes: Vec<u8>) -> SyncJob {
        self.replacement = Some(bytes);
        Box::new(|| Ok(()))
    }
}
