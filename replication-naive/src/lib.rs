//! # Stage 2: replication-naive — how nodes talk, and why naive replication is unsafe
//!
//! Stages 0 and 1 built one server and its client. From here on there are several servers,
//! and this stage builds the machinery every later stage runs on:
//!
//! - **[`node::Node`]**: the shape of a replicated node — a synchronous, deterministic state
//!   machine fed ticks, peer messages and client requests, answering through an
//!   [`node::Outbox`]. No sockets, clocks or threads inside.
//! - **[`transport`]**: framed peer messages over TCP, one outbound link per peer with a
//!   bounded queue, reconnecting with jittered exponential backoff (roadmap stage 5).
//! - **[`driver`]**: runs any `Node` for real: one tokio task owns it; clients and peers share
//!   the node's one port.
//! - **[`sim`]**: runs whole clusters of any `Node` deterministically, with a seeded network
//!   that delays, drops, duplicates and reorders, partitions, crashes and restarts.
//!
//! On top of it sits the stage's own node, [`naive::NaiveNode`]: broadcast replication that
//! works on a quiet network and is wrong in ways `tests/naive_flaws.rs` proves.
//!
//! | module       | what it holds                                                     |
//! |--------------|-------------------------------------------------------------------|
//! | [`node`]     | the `Node` trait, `Outbox`, `RequestTag`                          |
//! | [`sync_gate`]| `SyncGate`: which messages wait for the node's fsync              |
//! | [`transport`]| `Transport` (send side), `receive` (inbound), the peer handshake  |
//! | [`incarnation`]| which data directory each member runs on (from stage 8)        |
//! | [`files`]    | a data directory's small files, replaced durably                  |
//! | [`driver`]   | `run(node, listener, peers, config, shutdown)`                    |
//! | [`forward`]  | `Forwarder`: a follower's membership changes sent to the leader   |
//! | [`sim`]      | `Sim`, `NetConfig`, `for_each_seed`                               |
//! | [`naive`]    | `NaiveNode` and its messages                                      |
//! | [`config`]   | `--id`, `--listen`, `--peers`, shared by every node binary        |
#![warn(missing_docs)]

pub mod config;
pub mod driver;
pub mod files;
pub mod forward;
pub mod incarnation;
pub mod naive;
pub mod node;
pub mod sim;
pub mod sync_gate;
pub mod transport;
