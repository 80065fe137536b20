//! `raft-log --id 1 --listen ... --peers ... --leader 1`: stage 3, Raft log replication with a
//! fixed leader.

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{StartError, bind, init_tracing, shutdown_signal};
use raft_log::node::{Config, RaftLogNode};
use raft_log::storage::MemStorage;
use replication_naive::config::FixedLeaderArgs;
use replication_naive::driver::{self, DriverConfig};
use tracing::info;

/// One node of a Raft-replicated key/value cluster with a fixed leader (stage 3 of the
/// limecached tutorial). The log is kept in memory: a restarted follower comes back empty and
/// is brought up to date by the leader. Do not restart the leader (see the chapter).
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: FixedLeaderArgs,
    /// Milliseconds between the leader's heartbeats.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match run(args, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("raft-log"),
    }
}

async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let cluster = args.cluster;
    cluster.validate()?;
    let listener = bind(&cluster.node.listen).await?;
    let driver_config = DriverConfig::default();
    let mut config = Config::new(cluster.node.id, cluster.node.peers.clone(), cluster.leader);
    config.heartbeat_ticks = driver_config.ticks(args.heartbeat_ms);
    let (id, leader, term) = (cluster.node.id, cluster.leader, config.term);
    info!(%id, addr = %cluster.node.listen, role = cluster.role(), %leader, %term, "node listening");
    let node = RaftLogNode::new(config, MemStorage::new());
    driver::run(node, listener, cluster.node.peers, driver_config, shutdown).await?;
    info!("node stopped");
    Ok(())
}
