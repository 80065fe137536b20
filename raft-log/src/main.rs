//! `raft-log --id 1 --listen ... --peers ... --leader 1`: stage 3, Raft log replication with a
//! fixed leader.

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{init_tracing, shutdown_signal};
use kv_server::protocol::NodeId;
use raft_log::node::{Config, RaftLogNode};
use raft_log::storage::MemStorage;
use replication_naive::config::{NodeArgs, parse_node_id};
use replication_naive::driver::{self, DriverConfig};
use tokio::net::TcpListener;
use tracing::info;

/// One node of a Raft-replicated key/value cluster with a fixed leader (stage 3 of the
/// limecached tutorial). The log is kept in memory: a restarted node comes back empty and is
/// brought up to date by the leader.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// The leader's id (fixed: this stage has no elections).
    #[arg(long, value_parser = parse_node_id)]
    leader: NodeId,
    /// Milliseconds between the leader's heartbeats.
    #[arg(long, default_value_t = 50)]
    heartbeat_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let shutdown = shutdown_signal();
    if let Err(problem) = args.node.validate() {
        eprintln!("raft-log: {problem}");
        return ExitCode::from(2);
    }
    if !args.node.peers.contains_key(&args.leader) {
        eprintln!("raft-log: --leader {} is not in --peers", args.leader);
        return ExitCode::from(2);
    }
    if args.heartbeat_ms == 0 {
        eprintln!("raft-log: --heartbeat-ms must be at least 1");
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(&args.node.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("raft-log: cannot listen on {}: {error}", args.node.listen);
            return ExitCode::FAILURE;
        }
    };
    let driver_config = DriverConfig::default();
    let tick_ms = driver_config.tick.as_millis().max(1) as u64;
    let mut config = Config::new(args.node.id, args.node.peers.clone(), args.leader);
    config.heartbeat_ticks = args.heartbeat_ms.div_ceil(tick_ms).max(1);
    let role = if args.node.id == args.leader {
        "leader"
    } else {
        "follower"
    };
    info!(id = %args.node.id, addr = %args.node.listen, role, leader = %args.leader, term = %config.term, "node listening");
    let node = RaftLogNode::new(config, MemStorage::new());
    driver::run(node, listener, args.node.peers, driver_config, shutdown).await;
    info!("node stopped");
    ExitCode::SUCCESS
}
