//! # Stage 6: raft-election — terms, votes, timers, and leadership that stays stable
//!
//! Stage 3 replicated a log from a leader named on the command line; when that leader died,
//! the cluster stopped. This stage lets any node become leader (§5.2): a follower that hears
//! nothing from a leader for a randomized election timeout starts an election in a new
//! term, asks for votes, and wins with a majority. Votes go only to candidates whose log is
//! at least as up to date as the voter's (§5.4.1), which is what makes every new leader hold
//! every committed entry. A new leader appends a no-op of its term so that earlier entries
//! commit (§5.4.2, §8).
//!
//! Two additions from Ongaro's thesis keep leadership stable, both on by default:
//!
//! - **Pre-vote** (§9.6): before bumping its term, a would-be candidate asks whether it could
//!   win. A node that was cut off, or restarted, cannot win while the others hear from a
//!   leader, so it no longer forces the cluster into a new term when it comes back.
//! - **Check-quorum** (§6.2): a leader that has not heard from a majority for an election
//!   timeout steps down, so a leader on the wrong side of a partition stops accepting writes
//!   it can never commit.
//!
//! The log, replication and state machine are stage 3's (`raft_log::{log, replication,
//! apply}`), reused, not copied.
//!
//! | module      | what it holds                                            |
//! |-------------|----------------------------------------------------------|
//! | [`message`] | `Message`: stage 3's AppendEntries plus RequestVote (and stage 7's InstallSnapshot) |
//! | [`node`]    | `RaftNode`: roles, terms, votes, timers, as a `Node`     |
//! | [`configs`] | the configurations in a node's log, latest in force (used from stage 8) |
//! | [`durable`] | `DurableStorage`: the log and hard state on disk, checksummed, fsynced |
//! | [`medium`]  | the bytes underneath: a file, or a simulated disk for crash tests |
//! | [`cli`]     | the node binary's flags and start-up, reused by later stages' binaries |
//! | [`testkit`] | what simulator tests check: leaders, Figure 3's properties after every event |
#![warn(missing_docs)]

pub mod cli;
pub mod configs;
pub mod durable;
pub mod medium;
pub mod message;
pub mod node;
pub mod testkit;
