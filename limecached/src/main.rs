//! `limecached --id N --listen host:port (--peers ... | --bootstrap | --join addr) --data-dir D`
//! runs one node; `limecached dev-cluster` runs three on this machine.

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{StartError, init_tracing, shutdown_signal};
use limecached::dev_cluster::DevCluster;
use limecached::open_files;
use membership::cli::MemberArgs;
use replication_naive::driver::DriverConfig;

/// limecached: an in-memory key/value store replicated with Raft. Linearizable reads and
/// writes, durable across kill -9, exactly-once retries, membership changes.
///
/// Start every member of a new cluster with the same --peers (or one with --bootstrap and
/// the others with --join); restarted with the same --data-dir, a node recovers and those
/// flags are ignored.
///
/// `limecached dev-cluster` starts three nodes on this machine to try it out (see
/// `limecached dev-cluster --help`).
#[derive(Debug, Parser)]
#[command(
    version,
    override_usage = "limecached [OPTIONS] --id <ID> --listen <LISTEN>\n       limecached dev-cluster [--dir <DIR>] [--nodes <N>] [--base-port <PORT>]",
    after_help = "limecached dev-cluster starts a local cluster to try it out: limecached dev-cluster --help"
)]
struct NodeCli {
    #[command(flatten)]
    node: MemberArgs,
    /// Threads that run the node: 1 (the default) serves clients, peers and the Raft core
    /// on one thread, with fsyncs on a helper thread. More spread client connections over a
    /// work-stealing pool, which pays a cross-thread wake-up per request; measure before
    /// raising it (BENCHMARKS.md, "one thread per node").
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: u16,
}

/// Start a local cluster (three nodes by default, separate processes of this program with
/// their own data directories and logs), print how to use it, and stop every node on Ctrl-C
/// or SIGTERM.
#[derive(Debug, Parser)]
#[command(
    name = "limecached dev-cluster",
    bin_name = "limecached dev-cluster",
    version
)]
struct DevClusterCli {
    #[command(flatten)]
    dev: DevCluster,
}

/// The subcommand that runs a local cluster instead of one node.
const DEV_CLUSTER: &str = "dev-cluster";

/// The word that asks for help, as clap's own `help` subcommand would.
const HELP: &str = "help";

fn main() -> ExitCode {
    // One program, two command lines: a node's flags, or the subcommand. Two parsers keep
    // the node's flags required (a clap subcommand would make them optional for both).
    let mut args: Vec<_> = std::env::args_os().collect();
    // `limecached help` and `limecached help dev-cluster`, as with a clap subcommand.
    if args.get(1).is_some_and(|a| a == HELP) {
        args[1] = "--help".into();
        if args.get(2).is_some_and(|a| a == DEV_CLUSTER) {
            args.swap(1, 2);
        }
    }
    let result = if args.get(1).is_some_and(|a| a == DEV_CLUSTER) {
        args.remove(1);
        let cli = DevClusterCli::parse_from(args);
        init_tracing();
        runtime(1).and_then(|rt| rt.block_on(async { cli.dev.run(shutdown_signal()).await }))
    } else {
        let cli = NodeCli::parse_from(args);
        init_tracing();
        open_files::raise_to_hard_limit();
        // Any member serves any client: a follower relays writes and linearizable reads to
        // the leader over the peer link, and forwards membership changes and transfers
        // (`MemberArgs::run` turns relaying on with forwarding).
        let driver = DriverConfig {
            forward_to_leader: true,
            ..DriverConfig::default()
        };
        runtime(cli.threads)
            .and_then(|rt| rt.block_on(async { cli.node.run(driver, shutdown_signal()).await }))
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => error.report("limecached"),
    }
}

/// The runtime a node runs on. One thread by default: every request passes through the one
/// task that owns the Raft core anyway, and on a shared machine a pool's wake-ups between
/// its threads cost more than parsing in parallel gains (a third fewer puts per second).
fn runtime(threads: u16) -> Result<tokio::runtime::Runtime, StartError> {
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads.into());
        builder
    };
    builder
        .enable_all()
        .build()
        .map_err(|e| StartError::failure(format!("cannot start the runtime: {e}")))
}
