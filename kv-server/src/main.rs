//! `kv-server --listen 127.0.0.1:7000`: stage 0, a single in-memory key/value server.

use std::process::ExitCode;

use clap::Parser;
use kv_server::process::{bind, init_tracing, shutdown_signal};
use kv_server::protocol::Limits;
use kv_server::serve::ServeConfig;
use tracing::info;

/// A single in-memory key/value server speaking limecached's JSON-lines protocol
/// (stage 0 of the limecached tutorial). Stop it with Ctrl-C or SIGTERM.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on for clients, host:port (port 0 picks a free one).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: String,
    /// Longest key accepted, in bytes; longer ones get `too_large`.
    #[arg(long, default_value_t = Limits::default().max_key_bytes)]
    max_key_bytes: usize,
    /// Longest value accepted, in bytes; longer ones get `too_large`.
    #[arg(long, default_value_t = Limits::default().max_value_bytes)]
    max_value_bytes: usize,
    /// Longest request line accepted, in bytes; a longer line gets `too_large` and the
    /// connection is closed.
    #[arg(long, default_value_t = Limits::default().max_line_bytes)]
    max_line_bytes: usize,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing();
    let shutdown = shutdown_signal();
    let listener = match bind(&args.listen).await {
        Ok(listener) => listener,
        Err(error) => return error.report("kv-server"),
    };
    match listener.local_addr() {
        Ok(addr) => info!(%addr, "kv-server listening"),
        Err(error) => info!(%error, "kv-server listening on an unknown address"),
    }
    let config = ServeConfig {
        limits: Limits {
            max_key_bytes: args.max_key_bytes,
            max_value_bytes: args.max_value_bytes,
            max_line_bytes: args.max_line_bytes,
        },
        ..ServeConfig::default()
    };
    kv_server::server::run(listener, config, shutdown).await;
    info!("kv-server stopped");
    ExitCode::SUCCESS
}
