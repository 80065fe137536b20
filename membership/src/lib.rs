//! # Stage 8: membership — growing and shrinking a live cluster
//!
//! The Raft side lives where the earlier stages put it: a configuration is a log entry
//! (`raft_log::types::Payload::Config`, `raft_log::membership::Membership`), a node's
//! history of them is `raft_election::configs::Configs`, and the changes themselves
//! (learners, promotion, one change at a time, a removed leader stepping down) are in
//! `raft_election::node`, switched on by `Config::membership_changes`. This crate holds the
//! stage's binary, how a node finds its cluster ([`cli`]), and the tests.
#![warn(missing_docs)]

pub mod cli;
