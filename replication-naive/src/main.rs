//! `replication-naive --id 1 --listen 127.0.0.1:7001 --peers 1=...,2=...,3=... --leader 1`:
//! stage 2, naive broadcast replication (deliberately unsafe; see the chapter).

use std::future::Future;
use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{StartError, bind, init_tracing, shutdown_signal};
use replication_naive::config::FixedLeaderArgs;
use replication_naive::driver::{self, DriverConfig};
use replication_naive::naive::NaiveNode;
use tracing::info;

/// One node of a naively replicated key/value cluster (stage 2 of the limecached tutorial).
/// The leader broadcasts writes and answers once a majority has applied them; every node
/// answers reads from its own copy. Unsafe by design: see replication-naive/README.md.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    cluster: FixedLeaderArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match run(args, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("replication-naive"),
    }
}

async fn run(args: Args, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
    let cluster = args.cluster;
    cluster.validate()?;
    let listener = bind(&cluster.node.listen).await?;
    let (id, leader) = (cluster.node.id, cluster.leader);
    info!(%id, addr = %cluster.node.listen, role = cluster.role(), %leader, "node listening");
    let node = NaiveNode::new(id, cluster.node.peers.clone(), leader);
    driver::run(
        node,
        listener,
        cluster.node.peers,
        DriverConfig::default(),
        shutdown,
    )
    .await?;
    info!("node stopped");
    Ok(())
}
