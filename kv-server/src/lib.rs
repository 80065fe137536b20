//! # Stage 0: kv-server — one server, one map, the protocol every later stage speaks
//!
//! limecached is built in stages; this is the first. It is a plain in-memory key/value server:
//! no replication, no durability. What it establishes is everything *around* the store that
//! every later stage reuses unchanged:
//!
//! - the client contract (`shared/spec/PROTOCOL.md`) as types, parsed and checked at the edge;
//! - a JSON-lines codec with a line limit;
//! - a serve loop that answers pipelined requests in order, keeps the connection open on bad
//!   input, closes it on an oversized line, and shuts down by draining, not dropping;
//! - the key/value state machine ([`store::KvMap`]), which the Raft stages will feed from
//!   their logs instead of from clients.
//!
//! A replicated stage swaps the [`server::Standalone`] handler for its own [`serve::Handler`]
//! and keeps the rest.
//!
//! | module        | what it holds                                                        |
//! |---------------|----------------------------------------------------------------------|
//! | [`protocol`]  | requests, responses, error codes, `status`, size limits              |
//! | [`codec`]     | [`codec::JsonLinesCodec`]: lines in, JSON values out                 |
//! | [`store`]     | [`store::KvMap`] (the state machine) and [`store::Store`] (shared)   |
//! | [`serve`]     | [`serve::serve`] and the [`serve::Handler`] trait                    |
//! | [`server`]    | kv-server's handler and [`server::run`]                              |
//! | [`process`]   | logging and signal handling shared by every binary                   |
#![warn(missing_docs)]

pub mod codec;
pub mod process;
pub mod protocol;
pub mod serve;
pub mod server;
pub mod store;
