//! `membership --id N --listen host:port (--peers ... | --bootstrap | --join addr) --data-dir D`:
//! stage 8, a Raft key/value node whose cluster grows and shrinks while it runs.

use std::process::ExitCode;

use clap::Parser;
use compaction::cli::{SnapshotArgs, open_snapshots};
use kv_server::process::{init_tracing, shutdown_signal};
use membership::cli::{Founding, join};
use raft_election::cli::{self, ElectionArgs};
use replication_naive::driver::DriverConfig;

/// One node of a Raft key/value cluster whose members change while it runs (stage 8 of the
/// limecached tutorial): start one node with --bootstrap and add others with --join, or
/// start all with the same --peers; then `kv-client add-member` / `remove-member`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// This node's id (a positive integer, unique in the cluster, never reused).
    #[arg(long)]
    id: kv_server::protocol::NodeId,
    /// The node's one address, host:port: clients and peers both connect here.
    #[arg(long)]
    listen: String,
    #[command(flatten)]
    founding: Founding,
    #[command(flatten)]
    election: ElectionArgs,
    #[command(flatten)]
    snapshots: SnapshotArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("membership"),
    }
}

async fn run(args: Args) -> Result<(), kv_server::process::StartError> {
    let fresh = membership::cli::is_fresh(&args.election.data_dir);
    let founders = args.founding.founders(args.id, &args.listen, fresh)?;
    let driver = DriverConfig::default();
    let mut config = args.election.config(args.id, founders, &driver)?;
    config.snapshots = Some(args.snapshots.policy());
    config.membership_changes = true;
    if let (true, Some(through)) = (fresh, &args.founding.join) {
        tokio::spawn(join(args.id, args.listen.clone(), through.clone()));
    }
    cli::serve(
        config,
        &args.listen,
        &args.election.data_dir,
        open_snapshots,
        driver,
        shutdown_signal(),
    )
    .await
}
