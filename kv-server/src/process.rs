//! What every binary of the workspace does around its main job: logging and signals.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tokio::net::TcpListener;

use tracing_subscriber::EnvFilter;

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (default `info`).
///
/// A log line that cannot be written (stderr closed by whoever started the process) is
/// dropped: the subscriber's own fallback would `eprintln!` the failure, which panics when
/// stderr is closed, and a server must not die because its log pipe went away.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .log_internal_errors(false)
        .init();
}

/// A future that completes on the first SIGTERM or Ctrl-C (SIGINT).
///
/// The handlers are installed when this is called, not when the future is first polled: a
/// signal that arrives between "listening" and the first poll must not fall through to the
/// default action (which kills the process without cleanup). Call it before announcing that
/// the process is ready. Must be called inside a tokio runtime.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let term = signal(SignalKind::terminate());
        let int = signal(SignalKind::interrupt());
        async move {
            match (term, int) {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                (term, int) => {
                    let error = term
                        .err()
                        .or(int.err())
                        .map(|e| e.to_string())
                        .unwrap_or_default();
                    tracing::warn!(%error, "cannot listen for signals; falling back to Ctrl-C only");
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            tracing::info!("shutting down");
        }
    }
    #[cfg(not(unix))]
    async move {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    }
}

/// Why a binary could not start: one line for stderr, and the exit status.
#[derive(Debug)]
pub struct StartError {
    message: String,
    code: u8,
}

impl StartError {
    /// Flags that contradict each other or the contract (exit status 2, like clap's own).
    pub fn usage(message: impl Into<String>) -> Self {
        StartError {
            message: message.into(),
            code: 2,
        }
    }

    /// The environment refused (a busy port, an unreadable directory): exit status 1.
    pub fn failure(message: impl Into<String>) -> Self {
        StartError {
            message: message.into(),
            code: 1,
        }
    }

    /// Prints `program: message` on stderr and gives the exit status.
    pub fn report(self, program: &str) -> ExitCode {
        // Not eprintln!, which panics if stderr is closed.
        let _ = writeln!(std::io::stderr(), "{program}: {}", self.message);
        ExitCode::from(self.code)
    }
}

/// Binds `addr`, with a one-line error naming it when that fails.
pub async fn bind(addr: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::failure(format!("cannot listen on {addr}: {error}")))
}
