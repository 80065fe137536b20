//! # limecached: the stages composed into one node
//!
//! Every piece of the node comes from an earlier stage and lives where that stage put it:
//! the client protocol and serve loop (`kv_server`), the node driver and peer transport
//! (`replication_naive`), the log, replication and state machine (`raft_log`), elections,
//! durability, linearizable reads and leadership transfer (`raft_election`), snapshots
//! (`compaction`), and membership changes with the command line that starts a member
//! (`membership`). What this crate adds is the product around them: the `limecached`
//! binary, [`dev_cluster`], which runs a local cluster with one command, and
//! [`open_files`], which lets a node take as many connections as the system allows.
#![warn(missing_docs)]

pub mod dev_cluster;
pub mod open_files;
