//! `membership --id N --listen host:port (--peers ... | --bootstrap | --join addr) --data-dir D`:
//! stage 8, a Raft key/value node whose cluster grows and shrinks while it runs.

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{init_tracing, shutdown_signal};
use membership::cli::MemberArgs;
use replication_naive::driver::DriverConfig;

/// One node of a Raft key/value cluster whose members change while it runs (stage 8 of the
/// limecached tutorial): start one node with --bootstrap and add others with --join, or
/// start all with the same --peers; then `kv-client add-member` / `remove-member`.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    #[command(flatten)]
    node: MemberArgs,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    match args
        .node
        .run(DriverConfig::default(), shutdown_signal())
        .await
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("membership"),
    }
}
