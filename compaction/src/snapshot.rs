//! Snapshot files: the state machine at an applied index, durable and checksummed.
//!
//! ```text
//! snapshot-<index, 20 digits>-<term>.snap
//!   "LIMESNAP" | version: u32 LE | meta_len: u32 LE | meta (JSON: index, term, members)
//!   | data (the state machine's bytes, see `state.rs`)
//!   | data_len: u64 LE | crc32 of everything before: u32 LE
//! ```
//!
//! A snapshot is written to a `.tmp` file, fsynced, renamed into place and its directory
//! fsynced: a crash leaves either no new snapshot or a complete one, never a partial one
//! under the real name. Opening verifies the whole file's checksum before anything in it is
//! believed; a file that fails is reported, never loaded. The data section can be read at
//! any offset, so a leader can send it in chunks without holding it in memory, and a
//! follower can write the chunks it receives straight into a new file.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use raft_log::snapshot::SnapshotMeta;

const MAGIC: &[u8; 8] = b"LIMESNAP";
/// 2: the members in the metadata carry a voter flag (stage 8); 3: the data starts with the
/// session table (limecached).
const VERSION: u32 = 3;
const TRAILER: u64 = 12;

/// Why a snapshot could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file system failed.
    #[error("{path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not an intact snapshot: it must not be loaded.
    #[error("{path} is not an intact snapshot: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl From<SnapshotError> for std::io::Error {
    /// As the [`raft_log::snapshot::Snapshots`] seam reports it: a snapshot that does not
    /// verify is [`std::io::ErrorKind::InvalidData`].
    fn from(error: SnapshotError) -> std::io::Error {
        let kind = match &error {
            SnapshotError::Io { source, .. } => source.kind(),
            SnapshotError::Corrupt { .. } => std::io::ErrorKind::InvalidData,
        };
        std::io::Error::new(kind, error.to_string())
    }
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of the snapshot described by `meta`.
pub fn file_name(meta: &SnapshotMeta) -> String {
    format!("snapshot-{:020}-{}.snap", meta.index.0, meta.term.0)
}

/// Writes one snapshot: header now, data as it comes, trailer and rename on
/// [`SnapshotWriter::finish`]. Dropped unfinished, it leaves only a `.tmp` file, which
/// [`latest`] ignores.
#[derive(Debug)]
pub struct SnapshotWriter {
    file: BufWriter<File>,
    crc: crc32fast::Hasher,
    meta: SnapshotMeta,
    data_start: u64,
    data_len: u64,
    /// Bytes written since the last sync.
    unsynced: u64,
    tmp: PathBuf,
    path: PathBuf,
    dir: PathBuf,
}

/// The writer syncs every this many bytes, as RocksDB's `bytes_per_sync` does. Left to the
/// end, a 124 MB snapshot's writeback made every fsync on the disk wait behind it, the raft
/// log's included: the nodes' group-commit syncs took 50-155 ms while snapshots were
/// written, once long enough to cost an election (BENCHMARKS.md, stage 8).
const SYNC_EVERY: u64 = 8 << 20;

impl SnapshotWriter {
    /// Starts the snapshot `meta` in directory `dir`.
    pub fn create(dir: &Path, meta: &SnapshotMeta) -> Result<SnapshotWriter, SnapshotError> {
        SnapshotWriter::create_as(dir, meta, "tmp")
    }

    /// Starts the snapshot `meta` received from a leader, in directory `dir`: written aside
    /// under another name than the node's own snapshot of the same index and term, which
    /// may be saved while a transfer stalls.
    pub fn create_received(
        dir: &Path,
        meta: &SnapshotMeta,
    ) -> Result<SnapshotWriter, SnapshotError> {
        SnapshotWriter::create_as(dir, meta, "received.tmp")
    }

    fn create_as(
        dir: &Path,
        meta: &SnapshotMeta,
        tmp_extension: &str,
    ) -> Result<SnapshotWriter, SnapshotError> {
        let path = dir.join(file_name(meta));
        let tmp = path.with_extension(tmp_extension);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(io_error(&tmp))?;
        let json = serde_json::to_vec(meta).expect("snapshot metadata serializes");
        let mut writer = SnapshotWriter {
            file: BufWriter::new(file),
            crc: crc32fast::Hasher::new(),
            meta: meta.clone(),
            data_start: 16 + json.len() as u64,
            data_len: 0,
            unsynced: 0,
            tmp,
            path,
            dir: dir.to_path_buf(),
        };
        let meta = json;
        writer.put(MAGIC)?;
        writer.put(&VERSION.to_le_bytes())?;
        writer.put(&(meta.len() as u32).to_le_bytes())?;
        writer.put(&meta)?;
        Ok(writer)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.crc.update(bytes);
        self.file.write_all(bytes).map_err(io_error(&self.tmp))?;
        self.unsynced += bytes.len() as u64;
        if self.unsynced >= SYNC_EVERY {
            self.unsynced = 0;
            self.file.flush().map_err(io_error(&self.tmp))?;
            self.file
                .get_ref()
                .sync_data()
                .map_err(io_error(&self.tmp))?;
        }
        Ok(())
    }

    /// Appends data bytes.
    pub fn write_data(&mut self, bytes: &[u8]) -> Result<(), SnapshotError> {
        self.data_len += bytes.len() as u64;
        self.put(bytes)
    }

    /// Gives the snapshot up unfinished, writing nothing more: dropped instead, its buffer
    /// would be flushed into a file that a new writer of the same name may be writing.
    pub fn abandon(self) {
        let (_file, _unwritten) = self.file.into_parts();
    }

    /// Bytes of data written so far (where the next chunk of a transfer must start).
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Seals the snapshot: trailer, fsync, rename into place, fsync of the directory. Returns
    /// it opened for reading (not verified again: it was just written and synced).
    pub fn finish(self) -> Result<SnapshotFile, SnapshotError> {
        self.finish_if(|_| Ok(())).map(|(file, ())| file)
    }

    /// Seals the snapshot as [`SnapshotWriter::finish`] does, but puts it in place only if
    /// `check` accepts it, read back from the synced file (a received snapshot must decode):
    /// otherwise the file is deleted, and was never a snapshot that [`latest`] could find,
    /// even after a crash.
    pub fn finish_if<T>(
        mut self,
        check: impl FnOnce(&mut SnapshotFile) -> std::io::Result<T>,
    ) -> Result<(SnapshotFile, T), SnapshotError> {
        let data_len = self.data_len.to_le_bytes();
        self.put(&data_len)?;
        let crc = self.crc.clone().finalize().to_le_bytes();
        self.file.write_all(&crc).map_err(io_error(&self.tmp))?;
        let file = self.file.into_inner().map_err(|e| SnapshotError::Io {
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_error(&self.tmp))?;
        let mut sealed = SnapshotFile {
            file: File::open(&self.tmp).map_err(io_error(&self.tmp))?,
            path: self.tmp.clone(),
            meta: self.meta,
            data_start: self.data_start,
            data_len: self.data_len,
        };
        let checked = match check(&mut sealed) {
            Ok(checked) => checked,
            Err(source) => {
                let _ = fs::remove_file(&self.tmp);
                return Err(SnapshotError::Io {
                    path: self.tmp,
                    source,
                });
            }
        };
        fs::rename(&self.tmp, &self.path).map_err(io_error(&self.path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error(&self.dir))?;
        // The open file follows the rename.
        sealed.path = self.path;
        Ok((sealed, checked))
    }
}

impl Write for SnapshotWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.write_data(bytes)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An intact snapshot file, opened for reading.
#[derive(Debug)]
pub struct SnapshotFile {
    file: File,
    path: PathBuf,
    meta: SnapshotMeta,
    data_start: u64,
    data_len: u64,
}

impl SnapshotFile {
    /// Opens `path` and verifies it completely before trusting any of it.
    pub fn open(path: &Path) -> Result<SnapshotFile, SnapshotError> {
        let corrupt = |reason: &str| SnapshotError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let mut file = File::open(path).map_err(io_error(path))?;
        let size = file.metadata().map_err(io_error(path))?.len();
        if size < MAGIC.len() as u64 + 8 + TRAILER {
            return Err(corrupt("too short"));
        }
        // One pass over everything but the stored checksum.
        let mut crc = crc32fast::Hasher::new();
        let mut reader = BufReader::new(&mut file).take(size - 4);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = reader.read(&mut buf).map_err(io_error(path))?;
            if n == 0 {
                break;
            }
            crc.update(&buf[..n]);
        }
        let mut tail = [0u8; 12];
        file.seek(SeekFrom::Start(size - TRAILER))
            .map_err(io_error(path))?;
        file.read_exact(&mut tail).map_err(io_error(path))?;
        let data_len = u64::from_le_bytes(tail[..8].try_into().expect("8 bytes"));
        let stored = u32::from_le_bytes(tail[8..].try_into().expect("4 bytes"));
        if crc.finalize() != stored {
            return Err(corrupt("checksum mismatch"));
        }
        let mut head = [0u8; 16];
        file.seek(SeekFrom::Start(0)).map_err(io_error(path))?;
        file.read_exact(&mut head).map_err(io_error(path))?;
        if &head[..8] != MAGIC {
            return Err(corrupt("not a snapshot file"));
        }
        let version = u32::from_le_bytes(head[8..12].try_into().expect("4 bytes"));
        if version != VERSION {
            return Err(corrupt(&format!(
                "format version {version}; this build reads {VERSION}"
            )));
        }
        let meta_len = u32::from_le_bytes(head[12..16].try_into().expect("4 bytes")) as u64;
        let data_start = 16 + meta_len;
        if data_start
            .checked_add(data_len)
            .and_then(|end| end.checked_add(TRAILER))
            != Some(size)
        {
            return Err(corrupt("section lengths do not add up"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact(&mut meta).map_err(io_error(path))?;
        let meta = serde_json::from_slice(&meta).map_err(|e| corrupt(&format!("metadata: {e}")))?;
        Ok(SnapshotFile {
            file,
            path: path.to_path_buf(),
            meta,
            data_start,
            data_len,
        })
    }

    /// What the snapshot covers.
    pub fn meta(&self) -> &SnapshotMeta {
        &self.meta
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The size of its data.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// Up to `max` bytes of data from `offset`: one chunk of a transfer.
    pub fn read_data(&mut self, offset: u64, max: usize) -> Result<Vec<u8>, SnapshotError> {
        let len = (self.data_len.saturating_sub(offset)).min(max as u64) as usize;
        let mut chunk = vec![0u8; len];
        self.file
            .seek(SeekFrom::Start(self.data_start + offset))
            .map_err(io_error(&self.path))?;
        self.file
            .read_exact(&mut chunk)
            .map_err(io_error(&self.path))?;
        Ok(chunk)
    }

    /// The whole data section as a stream (to restore the state machine).
    pub fn data(&mut self) -> Result<impl Read + '_, SnapshotError> {
        self.file
            .seek(SeekFrom::Start(self.data_start))
            .map_err(io_error(&self.path))?;
        Ok(BufReader::new(&mut self.file).take(self.data_len))
    }
}

/// The index of the finished snapshot at `path`, if that is one (`snapshot-<index>-<term>.snap`).
pub fn snapshot_index(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("snapshot-")?
        .strip_suffix(".snap")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// The snapshot with the highest index in `dir`, if any. Unfinished (`.tmp`) files are
/// ignored; a finished one that fails verification is an error, not skipped: loading an
/// older one instead would silently lose what the damaged one held.
pub fn latest(dir: &Path) -> Result<Option<SnapshotFile>, SnapshotError> {
    let mut newest: Option<(u64, PathBuf)> = None;
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        let Some(index) = snapshot_index(&path) else {
            continue;
        };
        if newest.as_ref().is_none_or(|(best, _)| index > *best) {
            newest = Some((index, path));
        }
    }
    newest
        .map(|(_, path)| SnapshotFile::open(&path))
        .transpose()
}
