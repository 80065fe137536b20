//! `compaction --id 1 --listen ... --peers ... --data-dir ... [--snapshot-threshold N]`:
//! stage 7, Raft with elections, durable state, snapshots and log compaction.

use std::process::ExitCode;

use clap::Parser;
use compaction::cli::{SnapshotArgs, open_snapshots};
use kv_server::process::{init_tracing, shutdown_signal};
use raft_election::cli::{self, ElectionArgs};
use replication_naive::config::NodeArgs;

/// One node of a Raft key/value cluster that snapshots its state and compacts its log
/// (stage 7 of the limecached tutorial). A follower too far behind, or wiped, catches up
/// from the leader's snapshot; a restarted node recovers from its newest snapshot and the
/// log after it.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    #[command(flatten)]
    election: ElectionArgs,
    #[command(flatten)]
    snapshots: SnapshotArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let policy = Some(args.snapshots.policy());
    let run = cli::run(
        &args.node,
        &args.election,
        policy,
        open_snapshots,
        shutdown_signal(),
    );
    match run.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("compaction"),
    }
}
