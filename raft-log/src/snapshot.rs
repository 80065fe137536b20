//! The snapshot seam (§7): what a snapshot is, where a node keeps its snapshots
//! ([`Snapshots`]), and InstallSnapshot, the message that carries one to a follower in chunks.
//!
//! The Raft core decides *when* to snapshot and *what* to send; a [`Snapshots`]
//! implementation decides *how* snapshots are stored. Stage 6 runs without any
//! ([`NoSnapshots`]); stage 7's `compaction` crate stores them in checksummed files, or in
//! memory for the simulator.

use std::io;

use crate::apply::Machine;
use serde::{Deserialize, Serialize};

use crate::membership::Membership;
use crate::types::{LogIndex, Term};

/// What a snapshot covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMeta {
    /// The last log index the snapshot includes.
    pub index: LogIndex,
    /// The term of that entry (needed for the consistency check of the entry after it).
    pub term: Term,
    /// The cluster's configuration at that index: the latest one in the log up to it.
    pub members: Membership,
}

/// Where a node keeps its snapshots: the newest durable one, one being saved, one being
/// received. Every method that touches a disk may fail; the core treats a failure of its own
/// disk as fatal (it stops rather than run on state it cannot keep), and a received snapshot
/// that does not verify ([`io::ErrorKind::InvalidData`]) as a transfer to restart.
pub trait Snapshots {
    /// The newest durable snapshot.
    fn latest(&self) -> Option<&SnapshotMeta>;

    /// Reads the newest durable snapshot's state: done once, when a node starts.
    fn load_latest(&mut self) -> io::Result<Option<(SnapshotMeta, Machine)>>;

    /// Starts making `state` durable as snapshot `meta`, in the background if the
    /// implementation can: the node goes on serving meanwhile, and learns of the end through
    /// [`Snapshots::poll_saved`]. Called only while no save is under way.
    fn start_save(&mut self, meta: SnapshotMeta, state: Machine);

    /// Whether a save has started and not yet been reported by [`Snapshots::poll_saved`].
    fn saving(&self) -> bool;

    /// The save that has finished, if one has: once `Ok`, the snapshot is durable and is the
    /// newest.
    fn poll_saved(&mut self) -> Option<io::Result<SnapshotMeta>>;

    /// Up to `max` bytes of snapshot `index`'s data from `offset`, and the data's whole
    /// length; `None` if that snapshot is no longer kept (a newer one replaced it).
    fn read_chunk(
        &mut self,
        index: LogIndex,
        offset: u64,
        max: usize,
    ) -> io::Result<Option<(Vec<u8>, u64)>>;

    /// Starts receiving snapshot `meta` from a leader, dropping any unfinished one.
    fn begin_receive(&mut self, meta: &SnapshotMeta) -> io::Result<()>;

    /// Appends the next bytes of the snapshot being received.
    fn append_received(&mut self, data: &[u8]) -> io::Result<()>;

    /// Starts finishing the snapshot being received (verifying it, making it durable,
    /// reading its state back), in the background if the implementation can: for a large
    /// state it is the slow part of a transfer (524 ms for 1,000,000 keys, BENCHMARKS.md),
    /// and the node goes on serving meanwhile. It learns of the end through
    /// [`Snapshots::poll_received`].
    fn start_finish_receive(&mut self);

    /// The received snapshot whose finishing has ended, if one has: `Ok` with its state
    /// once it is durable and the newest; [`io::ErrorKind::InvalidData`] if it does not
    /// verify (nothing is kept then).
    fn poll_received(&mut self) -> Option<io::Result<Machine>>;
}

/// No snapshots: the log is never compacted (stage 6). A node configured to take
/// snapshots must be given a real [`Snapshots`].
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSnapshots;

impl Snapshots for NoSnapshots {
    fn latest(&self) -> Option<&SnapshotMeta> {
        None
    }

    fn load_latest(&mut self) -> io::Result<Option<(SnapshotMeta, Machine)>> {
        Ok(None)
    }

    fn start_save(&mut self, _: SnapshotMeta, _: Machine) {
        panic!("snapshots are switched on, but the node has nowhere to keep them");
    }

    fn saving(&self) -> bool {
        false
    }

    fn poll_saved(&mut self) -> Option<io::Result<SnapshotMeta>> {
        None
    }

    fn read_chunk(&mut self, _: LogIndex, _: u64, _: usize) -> io::Result<Option<(Vec<u8>, u64)>> {
        Ok(None)
    }

    fn begin_receive(&mut self, _: &SnapshotMeta) -> io::Result<()> {
        Err(io::Error::other("this node keeps no snapshots"))
    }

    fn append_received(&mut self, _: &[u8]) -> io::Result<()> {
        Err(io::Error::other("this node keeps no snapshots"))
    }

    /// Never called: receiving fails at [`Snapshots::begin_receive`].
    fn start_finish_receive(&mut self) {}

    fn poll_received(&mut self) -> Option<io::Result<Machine>> {
        None
    }
}

/// Figure 13's InstallSnapshot arguments: one chunk of the leader's snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshot {
    /// The leader's term.
    pub term: Term,
    /// The snapshot the chunk belongs to.
    pub meta: SnapshotMeta,
    /// Where the chunk starts in the snapshot's data.
    pub offset: u64,
    /// The chunk (base64 in JSON frames).
    #[serde(with = "base64_bytes")]
    pub data: Vec<u8>,
    /// Whether this is the last chunk.
    pub done: bool,
}

/// The answer to an InstallSnapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstallSnapshotResponse {
    /// The follower's current term.
    pub term: Term,
    /// The term of the InstallSnapshot this answers (answers to older terms are ignored).
    pub in_reply_to: Term,
    /// The index of the snapshot this answers about.
    pub index: LogIndex,
    /// Where the transfer stands.
    pub result: Transfer,
}

/// Where a snapshot transfer stands, as the follower sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Transfer {
    /// Send the chunk at this offset next. The follower says so after every chunk it
    /// appends, and after a duplicate, stale or out-of-order one (which it ignores); 0 means
    /// start again (also sent unasked when a received snapshot does not decode). The
    /// snapshot's whole length means every byte is in and the follower is finishing it:
    /// wait for `Installed`. While it finishes, it answers any other transfer with 0, to be
    /// sent again later.
    Next(u64),
    /// The follower's state now covers the snapshot's index (installed now, or it already
    /// had every entry up to there).
    Installed,
}

/// Snapshot chunks travel as base64 text: a JSON array of numbers would be about four times
/// the size.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use kv_server::protocol::NodeId;

    use super::*;

    #[test]
    fn a_chunk_round_trips_through_json_as_base64() {
        let chunk = InstallSnapshot {
            term: Term(3),
            meta: SnapshotMeta {
                index: LogIndex(9),
                term: Term(2),
                members: Membership::voters(&BTreeMap::from([(
                    NodeId(1),
                    "127.0.0.1:7001".to_owned(),
                )])),
            },
            offset: 4096,
            data: (0..=255).collect(),
            done: false,
        };
        let json = serde_json::to_string(&chunk).unwrap();
        assert!(json.contains("\"data\":\"AAECAwQF"), "{json}");
        assert_eq!(
            serde_json::from_str::<InstallSnapshot>(&json).unwrap(),
            chunk
        );
        let broken = json.replace("AAECAwQF", "AAEC*wQF");
        assert!(serde_json::from_str::<InstallSnapshot>(&broken).is_err());
    }
}
