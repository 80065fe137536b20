//! The snapshot flags of a node binary, for this stage's binary and the later ones.

use kv_server::process::StartError;
use raft_election::node::SnapshotPolicy;

use crate::file_store::FileSnapshots;

/// When to snapshot.
#[derive(Debug, Clone, clap::Args)]
pub struct SnapshotArgs {
    /// Snapshot the state and compact the log once this many entries have been applied
    /// since the last snapshot. Either threshold waits until those entries also carry 10%
    /// of the state's bytes, so a large state is not rewritten for every few writes.
    #[arg(long, default_value_t = SnapshotPolicy::default().entries, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_threshold: u64,
    /// ... or once the entries applied since then carry this many MiB, whichever comes
    /// first.
    #[arg(long, default_value_t = SnapshotPolicy::default().bytes >> 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_threshold_mib: u64,
}

impl SnapshotArgs {
    /// The policy the flags describe.
    pub fn policy(&self) -> SnapshotPolicy {
        SnapshotPolicy {
            entries: self.snapshot_threshold,
            bytes: self.snapshot_threshold_mib << 20,
            // Never keep more than a threshold's worth, so a small threshold bounds the log.
            keep: SnapshotPolicy::default()
                .keep
                .min(self.snapshot_threshold / 2),
            ..SnapshotPolicy::default()
        }
    }
}

/// Opens the snapshots in a node's data directory, reporting a damaged one as the reason
/// the node cannot start.
pub fn open_snapshots(dir: &std::path::Path) -> Result<FileSnapshots, StartError> {
    FileSnapshots::open(dir).map_err(|e| StartError::failure(format!("cannot use --data-dir: {e}")))
}
