//! # Stage 7: compaction — snapshots, log truncation, catching up from a snapshot
//!
//! Without compaction the log grows forever and a new or far-behind node replays all of
//! history. This stage bounds both: a node snapshots its state machine at an applied index,
//! discards the log before it, and a leader sends its snapshot, in chunks, to a follower that
//! needs entries it no longer has (§7). The Raft side (when to snapshot, InstallSnapshot) is
//! in `raft_election::node` behind the `raft_log::snapshot::Snapshots` seam; this crate
//! stores snapshots and runs the binary (see README.md).
//!
//! | module         | what it holds                                                       |
//! |----------------|---------------------------------------------------------------------|
//! | [`file_store`] | `FileSnapshots`: snapshots as files, saved by a background thread   |
//! | [`mem_store`]  | `MemSnapshots`: snapshots in memory, for the simulator              |
//! | [`snapshot`]   | snapshot files: written aside, checksummed, fsynced, renamed; verified before use; readable in chunks |
//! | [`state`]      | the key/value map as a stream of records, in key order              |
//! | [`cli`]        | the snapshot flags of a node binary                                 |
#![warn(missing_docs)]

pub mod cli;
pub mod file_store;
pub mod mem_store;
pub mod snapshot;
pub mod state;
