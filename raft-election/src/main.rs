//! `raft-election --id 1 --listen ... --peers ... --data-dir ...`: stage 6, Raft with
//! elections and durable state.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{StartError, bind, init_tracing, shutdown_signal};
use raft_election::durable::DurableStorage;
use raft_election::node::{Config, RaftNode};
use raft_log::storage::Storage;
use replication_naive::config::NodeArgs;
use replication_naive::driver::{self, DriverConfig};
use tracing::info;

/// One node of a Raft key/value cluster with elections (stage 6 of the limecached tutorial).
/// Any node can lead; a dead leader is replaced; a node restarted with its --data-dir
/// recovers its term, vote and log.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// Directory for this node's durable state (created if missing; refused if it belongs
    /// to another node id).
    #[arg(long)]
    data_dir: PathBuf,
    /// Base election timeout in ms: a follower that hears from no leader for a random time
    /// in [N, 2N) starts an election.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u64).range(1..))]
    election_timeout_ms: u64,
    /// Milliseconds between a leader's heartbeats; must be well below the election timeout.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: u64,
    /// Campaign without asking for pre-votes first (to see what pre-vote prevents).
    #[arg(long)]
    no_pre_vote: bool,
    /// Keep leading without hearing from a majority (to see what check-quorum prevents).
    #[arg(long)]
    no_check_quorum: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match run(args, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("raft-election"),
    }
}

async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    args.node.validate()?;
    let driver_config = DriverConfig::default();
    let election_ticks = driver_config.ticks(args.election_timeout_ms);
    let heartbeat_ticks = driver_config.ticks(args.heartbeat_ms);
    if heartbeat_ticks >= election_ticks {
        return Err(StartError::usage(format!(
            "--heartbeat-ms ({}) must be below --election-timeout-ms ({}), by at least the {} ms tick",
            args.heartbeat_ms,
            args.election_timeout_ms,
            driver_config.tick.as_millis()
        )));
    }
    let id = args.node.id;
    let storage = DurableStorage::open_dir(&args.data_dir, id)
        .map_err(|e| StartError::failure(format!("cannot use --data-dir: {e}")))?;
    let listener = bind(&args.node.listen).await?;
    let mut config = Config::new(id, args.node.peers.clone(), rand::random());
    config.election_ticks = election_ticks;
    config.heartbeat_ticks = heartbeat_ticks;
    config.pre_vote = !args.no_pre_vote;
    config.check_quorum = !args.no_check_quorum;
    let hard = storage.hard_state();
    info!(
        %id,
        addr = %args.node.listen,
        term = %hard.current_term,
        last_index = %storage.last_index(),
        data_dir = %args.data_dir.display(),
        "node listening"
    );
    let node = RaftNode::new(config, storage);
    driver::run(node, listener, args.node.peers, driver_config, shutdown).await?;
    info!("node stopped");
    Ok(())
}
