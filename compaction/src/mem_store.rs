//! [`MemSnapshots`]: snapshots in memory, for the simulator. They survive a simulated crash
//! once saved (as files would); a save or a transfer under way does not.

use std::io;
use std::sync::Arc;

use raft_log::apply::Machine;
use raft_log::snapshot::{SnapshotMeta, Snapshots};
use raft_log::types::LogIndex;

use crate::state::{read_state, write_state};

/// A snapshot's metadata and its data (as [`write_state`] encodes it, so chunks are the same
/// bytes a file would hold).
type Saved = (SnapshotMeta, Arc<Vec<u8>>);

/// What finishing a received snapshot comes to.
type Finished = Result<(Machine, Saved), (io::ErrorKind, String)>;

/// A received snapshot takes one more poll to finish for each started this many bytes.
pub const BYTES_PER_POLL: usize = 64 << 10;

/// Snapshots in memory. A save completes at the first [`Snapshots::poll_saved`] after it
/// starts, so the node runs on between the two, as it does while a file is written. A
/// received snapshot completes after one [`Snapshots::poll_received`] per started 64 KiB of
/// its data ([`BYTES_PER_POLL`]), the way a large file takes longer to sync and decode: a
/// multi-megabyte one spans many ticks, heartbeats and re-sent chunks with it.
#[derive(Debug, Clone, Default)]
pub struct MemSnapshots {
    latest: Option<Saved>,
    pending: Option<Saved>,
    receiving: Option<(SnapshotMeta, Vec<u8>)>,
    /// A received snapshot being finished: the polls left before it is, and its state and
    /// what becomes the newest, or why it fails.
    finishing: Option<(usize, Finished)>,
    /// How many received snapshots were finished, crashes included.
    received: usize,
}

impl MemSnapshots {
    /// No snapshots.
    pub fn new() -> MemSnapshots {
        MemSnapshots::default()
    }

    /// What a crash leaves: the saved snapshot, not the save or the transfer under way.
    pub fn after_crash(self) -> MemSnapshots {
        MemSnapshots {
            latest: self.latest,
            pending: None,
            receiving: None,
            finishing: None,
            received: self.received,
        }
    }

    /// How many snapshots received from a leader were finished, over the crashes since
    /// [`MemSnapshots::new`]: what a simulated test counts to know that followers caught up
    /// by snapshot.
    pub fn received(&self) -> usize {
        self.received
    }

    /// The newest snapshot's data size in bytes.
    pub fn latest_len(&self) -> Option<usize> {
        self.latest.as_ref().map(|(_, data)| data.len())
    }

    fn adopt(&mut self, saved: Saved) {
        if self
            .latest
            .as_ref()
            .is_none_or(|(current, _)| saved.0.index > current.index)
        {
            self.latest = Some(saved);
        }
    }
}

fn encode(state: &Machine) -> Arc<Vec<u8>> {
    let mut data = Vec::new();
    write_state(state, &mut data).expect("writing to memory cannot fail");
    Arc::new(data)
}

impl Snapshots for MemSnapshots {
    fn latest(&self) -> Option<&SnapshotMeta> {
        self.latest.as_ref().map(|(meta, _)| meta)
    }

    fn load_latest(&mut self) -> io::Result<Option<(SnapshotMeta, Machine)>> {
        self.latest
            .as_ref()
            .map(|(meta, data)| Ok((meta.clone(), read_state(&mut data.as_slice())?)))
            .transpose()
    }

    fn start_save(&mut self, meta: SnapshotMeta, state: Machine) {
        self.pending = Some((meta, encode(&state)));
    }

    fn saving(&self) -> bool {
        self.pending.is_some()
    }

    fn poll_saved(&mut self) -> Option<io::Result<SnapshotMeta>> {
        let saved = self.pending.take()?;
        let meta = saved.0.clone();
        self.adopt(saved);
        Some(Ok(meta))
    }

    fn read_chunk(
        &mut self,
        index: LogIndex,
        offset: u64,
        max: usize,
    ) -> io::Result<Option<(Vec<u8>, u64)>> {
        Ok(self
            .latest
            .as_ref()
            .filter(|(meta, _)| meta.index == index)
            .map(|(_, data)| {
                let start = (offset as usize).min(data.len());
                let end = start.saturating_add(max).min(data.len());
                (data[start..end].to_vec(), data.len() as u64)
            }))
    }

    fn begin_receive(&mut self, meta: &SnapshotMeta) -> io::Result<()> {
        self.receiving = Some((meta.clone(), Vec::new()));
        Ok(())
    }

    fn append_received(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.receiving {
            Some((_, received)) => {
                received.extend_from_slice(data);
                Ok(())
            }
            None => Err(io::Error::other("no snapshot is being received")),
        }
    }

    fn start_finish_receive(&mut self) {
        self.finishing = Some(match self.receiving.take() {
            None => (
                1,
                Err((io::ErrorKind::Other, "no snapshot is being received".into())),
            ),
            Some((meta, data)) => (
                data.len().div_ceil(BYTES_PER_POLL).max(1),
                match read_state(&mut data.as_slice()) {
                    Ok(state) => Ok((state, (meta, Arc::new(data)))),
                    Err(error) => Err((io::ErrorKind::InvalidData, error.to_string())),
                },
            ),
        });
    }

    fn poll_received(&mut self) -> Option<io::Result<Machine>> {
        let (polls_left, _) = self.finishing.as_mut()?;
        *polls_left -= 1;
        if *polls_left > 0 {
            return None;
        }
        let (_, finished) = self.finishing.take()?;
        Some(match finished {
            Ok((state, saved)) => {
                self.adopt(saved);
                self.received += 1;
                Ok(state)
            }
            Err((kind, why)) => Err(io::Error::new(kind, why)),
        })
    }
}
