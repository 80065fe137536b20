//! # Stage 3: raft-log — log replication with commits, fixed leader
//!
//! Stage 2's naive replication lost writes and disagreed with itself, because writes were
//! independent messages applied on arrival. This stage replaces them with the Raft log
//! (§5.3): every write becomes an [`types::Entry`] at an index, in the term of the leader that
//! created it; the leader sends entries with AppendEntries, a follower accepts them only if
//! its log matches the leader's just before them, and the leader keeps retrying, further
//! back each time, until it does. An entry is *committed* once a majority stores it (and, by
//! §5.4.2, it is from the leader's current term); only committed entries are applied to the
//! key/value map, in index order, and a client is answered only when its entry is applied.
//!
//! Leadership is fixed here (given on the command line, term 1): elections are stage 6.
//!
//! | module        | what it holds                                                         |
//! |---------------|-----------------------------------------------------------------------|
//! | [`types`]     | `Term`, `LogIndex`, `Entry`, `Payload`                                |
//! | [`storage`]   | the `Storage` trait (compaction and durability seams) and `MemStorage` |
//! | [`message`]   | `AppendEntries`, its response, the conflict hint                      |
//! | [`log`]       | `RaftLog`: the follower side of §5.3, the commit rules                |
//! | [`replication`] | `Replication`: the leader's per-follower progress (probe, pipeline) |
//! | [`membership`] | `Membership`: members, addresses, voters and learners (fixed until stage 8) |
//! | [`snapshot`]  | the snapshot seam: `SnapshotMeta`, the `Snapshots` store, InstallSnapshot (used from stage 7) |
//! | [`apply`]     | `Applier`: committed entries applied in order, clients answered; `Machine`, the state they build |
//! | [`sessions`]  | `Sessions`: each client's last writes, for exactly-once retries (writes with a session, limecached's kv-client's) |
//! | [`node`]      | `RaftLogNode`: the pieces above with a fixed leader, as a `Node`      |
//!
//! `log`, `replication` and `apply` are written to be reused: the election stage composes
//! the same pieces with roles and terms instead of copying them.
//!
//! Departures from the paper, all from etcd's raft: the leader probes a follower with one
//! AppendEntries at a time until it finds where their logs match, then pipelines (sends new
//! entries without waiting for answers); the follower's rejection carries the conflicting
//! term and its first index, so one round trip skips a whole term (the optimization the
//! paper sketches at the end of §5.3).
#![warn(missing_docs)]

pub mod apply;
pub mod log;
pub mod membership;
pub mod message;
pub mod node;
pub mod replication;
pub mod sessions;
pub mod snapshot;
pub mod storage;
pub mod types;
