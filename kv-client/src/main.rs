//! `kv-client`: the command line for limecached (stage 1).

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kv_client::bench::{self, BenchConfig, Length, Workload};
use kv_client::{ClusterClient, Error, RetryPolicy, status_table};
use kv_server::protocol::{CasOutcome, Consistency, NodeId, Role, parse_host_port};

/// Talk to a limecached server or cluster.
///
/// Exit status: 0 done, 1 error (one line on stderr), 2 bad usage, 3 `cas` did not swap.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Server address, or a comma-separated list of cluster members (the client finds the
    /// leader among them and retries).
    #[arg(
        long,
        env = "KV_ADDR",
        default_value = "127.0.0.1:7000",
        value_delimiter = ',',
        value_parser = parse_host_port,
        global = true
    )]
    addr: Vec<String>,
    /// Give up after this many seconds, retries included [default: 10]. For `status`: how
    /// long to wait for each node's answer [default: 3]. For `bench`: the limit of each
    /// request, retries included; one that fails is counted, and the run goes on.
    #[arg(
        long,
        value_name = "SECS",
        global = true,
        allow_negative_numbers = true,
        value_parser = parse_seconds
    )]
    timeout: Option<Duration>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Print the value of KEY, or `(nil)` when absent.
    Get {
        /// The key.
        key: String,
        /// Accept a possibly out-of-date value from whichever node answers.
        #[arg(long)]
        stale: bool,
    },
    /// Set KEY to VALUE.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Remove KEY.
    Delete {
        /// The key.
        key: String,
    },
    /// Set KEY to NEW if it holds OLD: `cas KEY OLD NEW`, or `cas --absent KEY NEW` to set it
    /// only if absent. Exits with 3 when nothing was swapped.
    Cas {
        /// Swap only if KEY is absent (then give just KEY and NEW).
        #[arg(long)]
        absent: bool,
        /// KEY OLD NEW, or KEY NEW with --absent.
        #[arg(required = true, num_args = 2..=3, value_names = ["KEY", "OLD", "NEW"])]
        args: Vec<String>,
    },
    /// Show every member: id, address, role, term, commit and applied index, lag.
    Status,
    /// Add node ID, listening at ADDR, to the cluster: it catches up as a learner and is
    /// promoted to voter automatically (start it with `--join` to have it ask by itself).
    AddMember {
        /// The new node's id: not a current member's (a removed node's may serve again).
        id: NodeId,
        /// Where it listens, host:port.
        // An id apart from the global --addr's: sharing it, this value replaced the
        // cluster's addresses too, and the request went to the new node.
        #[arg(id = "member_addr", value_name = "ADDR", value_parser = parse_host_port)]
        addr: String,
    },
    /// Remove node ID from the cluster (the leader included: it hands leadership to the
    /// most up-to-date voter).
    RemoveMember {
        /// The node's id.
        id: NodeId,
    },
    /// Make voter ID the leader: the leader brings its log up to date, then has it take
    /// over at once, without waiting for an election timeout.
    TransferLeader {
        /// The voter that should lead.
        id: NodeId,
    },
    /// List the members of the cluster's configuration, as the leader sees it.
    Members,
    /// Run a load generator against the server (or the cluster's leader).
    Bench(BenchArgs),
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// Concurrent connections.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Requests in all (default 100000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    requests: Option<u64>,
    /// Run for this many seconds instead of a number of requests.
    #[arg(long, value_name = "SECS", allow_negative_numbers = true, value_parser = parse_seconds)]
    duration: Option<Duration>,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pipeline: usize,
    /// Size of the key space.
    #[arg(long, default_value_t = 1000)]
    keys: u64,
    /// Bytes per value.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Which requests to send.
    #[arg(long, value_enum, default_value_t = WorkloadArg::Put)]
    workload: WorkloadArg,
    /// For --workload mixed: the share of gets, 0 to 1.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Send gets with "consistency":"stale".
    #[arg(long)]
    stale: bool,
    /// Print one JSON line instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum WorkloadArg {
    Put,
    Get,
    Mixed,
}

/// What a command prints on stdout, and its exit status.
struct Output(String, u8);

impl From<String> for Output {
    fn from(text: String) -> Self {
        Output(text, 0)
    }
}

/// A failed command: the one line for stderr, and the exit status.
struct Failure(String, u8);

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Failure(error.to_string(), 1)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Written without print!/eprintln!, which panic when the reader has gone away
    // (`kv-client ... | head -c1`); a closed pipe is not worth a backtrace.
    match run(cli).await {
        Ok(Output(text, code)) => {
            let _ = std::io::stdout().write_all(text.as_bytes());
            ExitCode::from(code)
        }
        Err(Failure(message, code)) => {
            let line = message.lines().next().unwrap_or_default();
            let _ = writeln!(std::io::stderr(), "kv-client: {line}");
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<Output, Failure> {
    let policy = retry_policy(&cli);
    let mut client = ClusterClient::new(cli.addr.clone(), policy);
    match cli.command {
        Cmd::Get { key, stale } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let value = client.get(&key, consistency).await?;
            Ok(format!("{}\n", value.as_deref().unwrap_or("(nil)")).into())
        }
        Cmd::Put { key, value } => {
            client.put(&key, &value).await?;
            Ok("OK\n".to_owned().into())
        }
        Cmd::Delete { key } => Ok(match client.delete(&key).await? {
            true => "deleted\n".to_owned().into(),
            false => "(not found)\n".to_owned().into(),
        }),
        Cmd::Cas { absent, args } => {
            let (key, old, new) = match (absent, args.as_slice()) {
                (false, [key, old, new]) => (key, Some(old.as_str()), new),
                (true, [key, new]) => (key, None, new),
                (false, _) => {
                    return Err(Failure(
                        "cas takes KEY OLD NEW (or --absent KEY NEW)".into(),
                        2,
                    ));
                }
                (true, _) => return Err(Failure("cas --absent takes KEY NEW".into(), 2)),
            };
            match client.cas(key, old, new).await? {
                CasOutcome::Swapped => Ok("swapped\n".to_owned().into()),
                CasOutcome::Mismatch { current } => {
                    let current =
                        current.map_or("is absent".to_owned(), |v| format!("holds {v:?}"));
                    Ok(Output(format!("not swapped: the key {current}\n"), 3))
                }
            }
        }
        Cmd::Status => {
            let rows = status_table::collect(policy, &cli.addr).await;
            if rows.iter().all(|r| r.status.is_err()) {
                let why = rows.first().and_then(|r| r.status.as_ref().err()).cloned();
                return Err(Failure(
                    why.unwrap_or_else(|| "no member answered".into()),
                    1,
                ));
            }
            Ok(status_table::render(&rows).into())
        }
        Cmd::Bench(args) => bench(cli.addr, args, policy).await,
        Cmd::AddMember { id, addr } => {
            client.add_member(id, &addr).await?;
            // The leader answers the same when node `id` was a member at `addr` already (a
            // retry must succeed), so this says what holds either way.
            Ok(format!(
                "node {id} at {addr} is a member (added now, or before); a new member catches up as a learner and becomes a voter by itself\n"
            )
            .into())
        }
        Cmd::RemoveMember { id } => {
            client.remove_member(id).await?;
            // The leader answers "done" for a node that is not a member as well (removing is
            // idempotent, so that a retry after an unknown outcome succeeds): say what is
            // true either way, not a bare "removed" for a typo'd id.
            Ok(format!("node {id} removed (or it was not a member)\n").into())
        }
        Cmd::TransferLeader { id } => {
            client.transfer_leader(id).await?;
            Ok(format!("node {id} is the leader\n").into())
        }
        Cmd::Members => {
            let status = client.leader_status().await?;
            if status.members.is_none() {
                let why = "the server keeps no member list: it is a single server without members";
                return Err(Failure(why.into(), 1));
            }
            let id = status
                .id
                .map_or_else(|| "?".to_owned(), |id| id.to_string());
            if status.members.as_ref().is_some_and(Vec::is_empty) {
                let why = format!(
                    "node {id} knows of no members yet (it is joining, or outside any cluster), and no leader answered; give --addr a current member"
                );
                return Err(Failure(why, 1));
            }
            if status.removed && status.role != Role::Leader {
                let why = format!(
                    "node {id} was removed from the cluster, and its member list is out of date; give --addr a current member"
                );
                return Err(Failure(why, 1));
            }
            Ok(status_table::members(&status).into())
        }
    }
}

/// What `--timeout` means for the command: the deadline of a command (of each request, for
/// `bench`), retries included; for `status`, which asks each node once, how long it waits
/// for each.
fn retry_policy(cli: &Cli) -> RetryPolicy {
    let default = RetryPolicy::default();
    let Some(timeout) = cli.timeout else {
        return match cli.command {
            // Unchanged from before --timeout applied to it: 3 s per node.
            Cmd::Status => RetryPolicy {
                deadline: STATUS_WAIT,
                ..default
            },
            _ => default,
        };
    };
    match cli.command {
        // `status_of` waits the shorter of the request timeout and the deadline.
        Cmd::Status => RetryPolicy {
            deadline: timeout,
            request_timeout: timeout,
            ..default
        },
        _ => RetryPolicy {
            deadline: timeout,
            ..default
        },
    }
}

/// How long `status` waits for each node without `--timeout`.
const STATUS_WAIT: Duration = Duration::from_secs(3);

async fn bench(addrs: Vec<String>, args: BenchArgs, retry: RetryPolicy) -> Result<Output, Failure> {
    let usage = |m: &str| Err(Failure(m.into(), 2));
    if args.clients == 0 || args.pipeline == 0 || args.keys == 0 {
        return usage("--clients, --pipeline and --keys must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.read_ratio) {
        return usage("--read-ratio must be between 0 and 1");
    }
    let length = match (args.requests, args.duration) {
        (_, Some(duration)) => Length::Duration(duration),
        (Some(n), None) => Length::Requests(n),
        (None, None) => Length::Requests(100_000),
    };
    let workload = match args.workload {
        WorkloadArg::Put => Workload::Put,
        WorkloadArg::Get => Workload::Get,
        WorkloadArg::Mixed => Workload::Mixed {
            read_ratio: args.read_ratio,
        },
    };
    let config = BenchConfig {
        addrs,
        clients: args.clients,
        pipeline: args.pipeline,
        length,
        keys: args.keys,
        value_size: args.value_size,
        workload,
        stale_reads: args.stale,
        retry,
    };
    let report = bench::run(config).await?;
    Ok(if args.json {
        format!("{}\n", report.json())
    } else {
        report.table()
    }
    .into())
}

/// `--timeout` and `--duration`: a positive number of seconds, at most [`MAX_SECONDS`].
fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    let too_long = || format!("must be at most {} seconds (a year)", MAX_SECONDS.as_secs());
    match Duration::try_from_secs_f64(secs) {
        Ok(duration) if duration > MAX_SECONDS => Err(too_long()),
        Ok(duration) if !duration.is_zero() => Ok(duration),
        Err(_) if secs > 0.0 => Err(too_long()),
        _ => Err("must be a positive number of seconds".to_owned()),
    }
}

/// The longest `--timeout` or `--duration`: far enough for any run, near enough that a
/// deadline this far ahead is a time the clock can hold.
const MAX_SECONDS: Duration = Duration::from_secs(365 * 24 * 3600);
