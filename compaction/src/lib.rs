//! # Stage 7: compaction — snapshots, log truncation, catching up from a snapshot
//!
//! **In progress.** Without compaction the log grows forever and a new or far-behind node
//! replays all of history. This stage bounds both: a node snapshots its state machine at an
//! applied index, discards the log before it, and a leader sends its snapshot, in chunks, to
//! a follower that needs entries it no longer has (§7).
//!
//! Built so far: durable snapshot files and the state machine's encoding in them. Still to
//! build: compacting `Storage` (the trait already lets a log start after index 1), taking
//! snapshots without stalling the node, InstallSnapshot in the Raft core, the binary, and
//! the chapter's tests (see README.md).
//!
//! | module       | what it holds                                                         |
//! |--------------|-----------------------------------------------------------------------|
//! | [`snapshot`] | snapshot files: written aside, checksummed, fsynced, renamed; verified before use; readable in chunks |
//! | [`state`]    | the key/value map as a stream of records                              |
#![warn(missing_docs)]

pub mod cli;
pub mod file_store;
pub mod mem_store;
pub mod snapshot;
pub mod state;
