//! `raft-election --id 1 --listen ... --peers ... --data-dir ...`: stage 6, Raft with
//! elections and durable state.

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{init_tracing, shutdown_signal};
use raft_election::cli::{self, ElectionArgs};
use raft_log::snapshot::NoSnapshots;
use replication_naive::config::NodeArgs;

/// One node of a Raft key/value cluster with elections (stage 6 of the limecached tutorial).
/// Any node can lead; a dead leader is replaced; a node restarted with its --data-dir
/// recovers its term, vote and log.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    election: ElectionArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let run = cli::run(
        &args.node,
        &args.election,
        None,
        |_| Ok(NoSnapshots),
        shutdown_signal(),
    );
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("raft-election"),
    }
}
