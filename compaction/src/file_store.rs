//! [`FileSnapshots`]: a node's snapshots as files in its data directory, saved by a
//! background thread so the node keeps serving while a large state is written.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use raft_log::apply::Machine;
use raft_log::snapshot::{SnapshotMeta, Snapshots};
use raft_log::types::LogIndex;
use tracing::{info, warn};

use crate::snapshot::{SnapshotError, SnapshotFile, SnapshotWriter, latest, snapshot_index};
use crate::state::{read_state, write_state};

/// Snapshots kept as files in one directory: the newest intact one is kept open (a leader
/// reads its chunks from it); older ones are deleted once a newer one is durable.
#[derive(Debug)]
pub struct FileSnapshots {
    dir: PathBuf,
    latest: Option<SnapshotFile>,
    /// The background save under way: its result arrives here.
    saving: Option<Running<SnapshotFile>>,
    /// The snapshot being received from a leader.
    receiving: Option<SnapshotWriter>,
    /// The received snapshot being finished in the background: the file and its state
    /// arrive here.
    finishing: Option<Running<(SnapshotFile, Machine)>>,
}

/// Work on a thread of its own, whose result is polled for: the node's task never waits
/// for a snapshot to be written or read.
type Running<T> = mpsc::Receiver<io::Result<T>>;

/// Starts `work` on a thread of its own.
fn run_aside<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> Running<T> {
    let (done, result) = mpsc::sync_channel(1);
    thread::spawn(move || {
        let _ = done.send(work());
    });
    result
}

/// The result of the work in `running`, once it has ended (and `running` is cleared then);
/// `what` names the work if its thread ended without one.
fn poll_aside<T>(running: &mut Option<Running<T>>, what: &str) -> Option<io::Result<T>> {
    let result = match running.as_ref()?.try_recv() {
        Err(mpsc::TryRecvError::Empty) => return None,
        Err(mpsc::TryRecvError::Disconnected) => {
            Err(io::Error::other(format!("{what} stopped without a result")))
        }
        Ok(result) => result,
    };
    *running = None;
    Some(result)
}

impl FileSnapshots {
    /// The snapshots in `dir`. The newest is verified now: a damaged one is an error, never
    /// skipped (an older one would silently lose what it held). Leftover unfinished
    /// (`.tmp`) files are removed.
    pub fn open(dir: &Path) -> Result<FileSnapshots, SnapshotError> {
        let io = |source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        };
        for entry in fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let is_tmp = path.extension().is_some_and(|e| e == "tmp");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if is_tmp && name.starts_with("snapshot-") {
                fs::remove_file(&path).map_err(io)?;
            }
        }
        let latest = latest(dir)?;
        for old in older_than(dir, latest.as_ref().map(|f| f.meta().index)).map_err(io)? {
            fs::remove_file(&old).map_err(io)?;
        }
        Ok(FileSnapshots {
            dir: dir.to_path_buf(),
            latest,
            saving: None,
            receiving: None,
            finishing: None,
        })
    }

    /// The newest snapshot's file.
    pub fn latest_path(&self) -> Option<&Path> {
        self.latest.as_ref().map(SnapshotFile::path)
    }

    /// Makes `file` the newest snapshot if it is newer than the current one, and deletes
    /// the one it replaces (or `file` itself, if it is not newer).
    fn adopt(&mut self, file: SnapshotFile) {
        let newer = self
            .latest
            .as_ref()
            .is_none_or(|current| file.meta().index > current.meta().index);
        let (keep, drop) = if newer {
            (Some(file), self.latest.take())
        } else {
            (self.latest.take(), Some(file))
        };
        self.latest = keep;
        if let Some(old) = drop {
            // Deleted by another thread, the file closed there too: freeing a large file's
            // blocks held the node task for up to 75 ms on a busy disk (BENCHMARKS.md, stage
            // 8). A crash before it happens leaves the file for `open` to delete.
            thread::spawn(move || remove(old));
        }
    }
}

/// Deletes a snapshot that a newer one has replaced.
fn remove(old: SnapshotFile) {
    if let Err(error) = fs::remove_file(old.path()) {
        warn!(path = %old.path().display(), %error, "cannot delete an old snapshot");
    }
}

/// The finished snapshots in `dir` with an index below `newest`: left by a crash before
/// their deletion.
fn older_than(dir: &Path, newest: Option<LogIndex>) -> io::Result<Vec<PathBuf>> {
    let Some(newest) = newest else {
        return Ok(Vec::new());
    };
    let mut older = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if snapshot_index(&path).is_some_and(|index| index < newest.0) {
            older.push(path);
        }
    }
    Ok(older)
}

/// Makes a received snapshot durable and reads its state back; one whose data is not a
/// state (the sender's data was wrong) is deleted, never put in place.
fn finish_received(writer: SnapshotWriter) -> io::Result<(SnapshotFile, Machine)> {
    let decode = |file: &mut SnapshotFile| {
        let mut data = file.data().map_err(io::Error::other)?;
        read_state(&mut data).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
    };
    Ok(writer.finish_if(decode)?)
}

/// Writes `state` as snapshot `meta` in `dir`.
fn save(dir: &Path, meta: &SnapshotMeta, state: &Machine) -> Result<SnapshotFile, SnapshotError> {
    let mut writer = SnapshotWriter::create(dir, meta)?;
    // Buffered in front of the writer, so its checksum runs over large slices: fed the
    // map's fields one by one (4 to 100 bytes), the CRC's per-call cost made it 7% of a
    // loaded node's CPU.
    let mut buffered = BufWriter::with_capacity(1 << 16, &mut writer);
    write_state(state, &mut buffered)
        .and_then(|()| buffered.flush())
        .map_err(|source| SnapshotError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    drop(buffered);
    writer.finish()
}

impl Snapshots for FileSnapshots {
    fn latest(&self) -> Option<&SnapshotMeta> {
        self.latest.as_ref().map(SnapshotFile::meta)
    }

    fn load_latest(&mut self) -> io::Result<Option<(SnapshotMeta, Machine)>> {
        let Some(file) = &mut self.latest else {
            return Ok(None);
        };
        let meta = file.meta().clone();
        let state = read_state(&mut file.data()?)?;
        Ok(Some((meta, state)))
    }

    fn start_save(&mut self, meta: SnapshotMeta, state: Machine) {
        let dir = self.dir.clone();
        self.saving = Some(run_aside(move || Ok(save(&dir, &meta, &state)?)));
    }

    fn saving(&self) -> bool {
        self.saving.is_some()
    }

    fn poll_saved(&mut self) -> Option<io::Result<SnapshotMeta>> {
        let saved = poll_aside(&mut self.saving, "the snapshot writer")?;
        Some(saved.map(|file| {
            let meta = file.meta().clone();
            info!(path = %file.path().display(), bytes = file.data_len(), "snapshot written");
            self.adopt(file);
            meta
        }))
    }

    fn read_chunk(
        &mut self,
        index: LogIndex,
        offset: u64,
        max: usize,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        match &mut self.latest {
            Some(file) if file.meta().index == index => {
                let total = file.data_len();
                Ok(Some((file.read_data(offset, max)?, total)))
            }
            _ => Ok(None),
        }
    }

    fn begin_receive(&mut self, meta: &SnapshotMeta) -> io::Result<()> {
        // A transfer given up leaves a .tmp file, which the next one with the same name
        // truncates and `open` removes.
        if let Some(given_up) = self.receiving.take() {
            given_up.abandon();
        }
        self.receiving = Some(SnapshotWriter::create_received(&self.dir, meta)?);
        Ok(())
    }

    fn append_received(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.receiving {
            Some(writer) => Ok(writer.write_data(data)?),
            None => Err(io::Error::other("no snapshot is being received")),
        }
    }

    /// On another thread: the fsync of a large file and the decoding of its state held
    /// the node's task for 524 ms at 1,000,000 keys.
    fn start_finish_receive(&mut self) {
        let writer = self.receiving.take();
        self.finishing = Some(run_aside(move || match writer {
            Some(writer) => finish_received(writer),
            None => Err(io::Error::other("no snapshot is being received")),
        }));
    }

    fn poll_received(&mut self) -> Option<io::Result<Machine>> {
        let finished = poll_aside(&mut self.finishing, "the snapshot receiver")?;
        Some(finished.map(|(file, state)| {
            self.adopt(file);
            state
        }))
    }
}
