//! `replication-naive --id 1 --listen 127.0.0.1:7001 --peers 1=...,2=...,3=... --leader 1`:
//! stage 2, naive broadcast replication (deliberately unsafe; see the chapter).

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{init_tracing, shutdown_signal};
use kv_server::protocol::NodeId;
use replication_naive::config::{NodeArgs, parse_node_id};
use replication_naive::driver::{self, DriverConfig};
use replication_naive::naive::NaiveNode;
use tokio::net::TcpListener;
use tracing::info;

/// One node of a naively replicated key/value cluster (stage 2 of the limecached tutorial).
/// The leader broadcasts writes and answers once a majority has applied them; every node
/// answers reads from its own copy. Unsafe by design: see replication-naive/README.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: NodeArgs,
    /// The leader's id (fixed: this stage has no elections).
    #[arg(long, value_parser = parse_node_id)]
    leader: NodeId,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let shutdown = shutdown_signal();
    if let Err(problem) = args.node.validate() {
        eprintln!("replication-naive: {problem}");
        return ExitCode::from(2);
    }
    if !args.node.peers.contains_key(&args.leader) {
        eprintln!(
            "replication-naive: --leader {} is not in --peers",
            args.leader
        );
        return ExitCode::from(2);
    }
    let listener = match TcpListener::bind(&args.node.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!(
                "replication-naive: cannot listen on {}: {error}",
                args.node.listen
            );
            return ExitCode::FAILURE;
        }
    };
    let role = if args.node.id == args.leader {
        "leader"
    } else {
        "follower"
    };
    info!(id = %args.node.id, addr = %args.node.listen, role, leader = %args.leader, "node listening");
    let node = NaiveNode::new(args.node.id, args.node.peers.clone(), args.leader);
    driver::run(
        node,
        listener,
        args.node.peers,
        DriverConfig::default(),
        shutdown,
    )
    .await;
    info!("node stopped");
    ExitCode::SUCCESS
}
