//! # Stage 1: kv-client — talking to limecached
//!
//! Stage 0 built a server; this stage builds the other end of the wire, in three layers:
//!
//! | module            | what it holds                                                      |
//! |-------------------|--------------------------------------------------------------------|
//! | [`connection`]    | [`Connection`]: one socket, pipelining, driven by the caller        |
//! | [`client`]        | [`Client`]: a shared handle to one connection, for many tasks       |
//! | [`cluster`]       | [`ClusterClient`]: the typed API over any members of a cluster: finds the leader, retries safely with `client`/`seq` (roadmap stage 4) |
//! | [`mod@bench`]     | the `kv-client bench` load generator                                |
//! | [`status_table`]  | `kv-client status`: one row per member                             |
//! | [`error`]         | [`Error`]: connection, protocol and server failures                |
//!
//! The contract's types come from `kv_server::protocol`, so client and server cannot drift
//! apart: a request is serialized by the same code that the server's tests parse back.
#![warn(missing_docs)]

pub mod bench;
pub mod client;
pub mod cluster;
pub mod connection;
pub mod error;
pub mod status_table;

pub use client::Client;
pub use cluster::{ClusterClient, RetryPolicy};
pub use connection::Connection;
pub use error::Error;
