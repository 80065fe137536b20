//! `limecached dev-cluster`: a cluster on this machine with one command. It starts the
//! nodes as separate processes of this same binary, each with the contract's command line
//! and its own data directory and log file, tells the user how to reach them and how to
//! kill one, reports nodes that exit, and stops them all (cleanly, with SIGTERM) when it is
//! stopped itself.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::process::StartError;
use raft_election::durable::LOG_FILE;
use tokio::process::{Child, Command};

/// How long nodes get to stop after SIGTERM (a leader hands over first) before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often a starting node is asked whether it serves: a process's readiness is no event
/// this one can await.
const POLL: Duration = Duration::from_millis(50);

/// How often the user is told which nodes are still starting.
const SAY_WAITING_EVERY: Duration = Duration::from_secs(5);

/// The flags of `dev-cluster`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevCluster {
    /// Directory for the nodes' data directories (n1, n2, ...) and logs (n1.log, ...);
    /// created if missing. Run again with the same directory, the cluster comes back with
    /// its data.
    #[arg(long, default_value = "limecached-dev")]
    pub dir: PathBuf,
    /// Node i listens on 127.0.0.1:(base-port + i).
    #[arg(long, default_value_t = 7000, value_parser = clap::value_parser!(u16).range(1..65000))]
    pub base_port: u16,
    /// How many nodes (an odd number tolerates as many failures as one more would).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=9))]
    pub nodes: u16,
}

/// One node process.
struct Node {
    id: u16,
    child: Child,
    /// The command line that started it, to restart it by hand.
    command: String,
    /// It has exited (or can no longer be waited for), and was reported.
    exited: bool,
}

impl DevCluster {
    fn addr(&self, id: u16) -> String {
        format!("127.0.0.1:{}", self.base_port + id)
    }

    /// The contract's command line for node `id`.
    fn args(&self, id: u16) -> Vec<String> {
        let peers: Vec<String> = (1..=self.nodes)
            .map(|i| format!("{i}={}", self.addr(i)))
            .collect();
        vec![
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            self.addr(id),
            "--peers".into(),
            peers.join(","),
            "--data-dir".into(),
            self.dir.join(format!("n{id}")).display().to_string(),
        ]
    }

    /// Starts the nodes, waits for `shutdown`, stops them. Refuses, creating nothing, when a
    /// port is taken or `--dir` holds a cluster of another size.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), StartError> {
        let exe = std::env::current_exe()
            .map_err(|e| StartError::failure(format!("cannot find this program's path: {e}")))?;
        let this = self.with_absolute_dir()?;
        this.check_existing_cluster()?;
        // Before any node starts: a port already taken (by another dev-cluster, say) could
        // answer for a node that failed to bind it. And before --dir is created: a refused
        // start leaves nothing behind.
        for id in 1..=this.nodes {
            let addr = this.addr(id);
            std::net::TcpListener::bind(&addr).map_err(|e| {
                StartError::failure(format!(
                    "cannot listen on {addr}: {e} (is another dev-cluster running? pick other ports with --base-port)"
                ))
            })?;
        }
        fs::create_dir_all(&this.dir).map_err(|e| {
            StartError::failure(format!("cannot create {}: {e}", this.dir.display()))
        })?;
        this.serve(&exe, shutdown).await
    }

    /// The same cluster with `--dir` made absolute (against the working directory): every
    /// path it prints, in the banner and in the command that restarts a node, then names
    /// the same directory from wherever the user runs it. A relative `--data-dir` run from
    /// another directory would start the node on an empty data directory, as a new voter
    /// that has lost what it acknowledged.
    fn with_absolute_dir(self) -> Result<DevCluster, StartError> {
        let dir = std::path::absolute(&self.dir).map_err(|e| {
            StartError::failure(format!("cannot resolve {}: {e}", self.dir.display()))
        })?;
        Ok(DevCluster { dir, ..self })
    }

    /// Refuses a `--nodes` other than the size of the cluster `--dir` already holds. Its
    /// nodes would keep their saved configuration, and the nodes added by a larger
    /// `--nodes` would campaign for ever in a cluster that does not count them (the flags
    /// that found a cluster are ignored once a node has a data directory).
    fn check_existing_cluster(&self) -> Result<(), StartError> {
        let existing = existing_nodes(&self.dir)
            .map_err(|e| StartError::failure(format!("cannot read {}: {e}", self.dir.display())))?;
        match existing {
            Some(n) if n != self.nodes => Err(StartError::usage(format!(
                "{} holds a cluster of {} (n1..n{n}): run it with --nodes {n}, or give another --dir for a new cluster of {}",
                self.dir.display(),
                nodes(n),
                nodes(self.nodes)
            ))),
            _ => Ok(()),
        }
    }

    /// Starts the nodes in `--dir`, which exists, waits for `shutdown`, stops them.
    async fn serve(
        &self,
        exe: &Path,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), StartError> {
        tokio::pin!(shutdown);
        let mut nodes = Vec::new();
        let started = async {
            for id in 1..=self.nodes {
                nodes.push(self.start(exe, id)?);
            }
            self.wait_until_serving(&mut nodes).await
        };
        let started = tokio::select! {
            started = started => Some(started),
            () = &mut shutdown => None,
        };
        let all_exited = match started {
            Some(Ok(())) => {
                print!("{}", self.banner(exe, &nodes));
                tokio::select! {
                    () = shutdown => false,
                    () = report_exits(&mut nodes) => true,
                }
            }
            Some(Err(error)) => {
                stop_all(&mut nodes).await;
                return Err(error);
            }
            None => false,
        };
        if all_exited {
            return Err(StartError::failure(format!(
                "every node dev-cluster started has exited (nodes restarted by hand run on); their logs are in {}",
                self.dir.display()
            )));
        }
        println!("stopping the nodes...");
        stop_all(&mut nodes).await;
        println!("stopped; the data is kept in {}", self.dir.display());
        Ok(())
    }

    fn log_path(&self, id: u16) -> PathBuf {
        self.dir.join(format!("n{id}.log"))
    }

    /// Waits until every node answers `status`, saying every few seconds which ones it
    /// still waits for (a node with much data takes a while to load it). A node that exits
    /// meanwhile fails the start, with the last line of its log: its reason.
    async fn wait_until_serving(&self, nodes: &mut [Node]) -> Result<(), StartError> {
        let mut waiting: Vec<u16> = nodes.iter().map(|n| n.id).collect();
        let mut said = Instant::now();
        loop {
            for node in nodes.iter_mut() {
                if !waiting.contains(&node.id) {
                    continue;
                }
                if let Ok(Some(status)) = node.child.try_wait() {
                    node.exited = true;
                    let log = self.log_path(node.id);
                    // The last line that says something (a panic ends with a hint about
                    // RUST_BACKTRACE).
                    let why = fs::read_to_string(&log)
                        .ok()
                        .and_then(|text| {
                            text.lines()
                                .rev()
                                .find(|line| !line.trim().is_empty() && !line.starts_with("note:"))
                                .map(str::to_owned)
                        })
                        .unwrap_or_default();
                    return Err(StartError::failure(format!(
                        "node {} exited while starting ({status}): {why} (log: {})",
                        node.id,
                        log.display()
                    )));
                }
                if answers(&self.addr(node.id)).await {
                    waiting.retain(|&id| id != node.id);
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if said.elapsed() >= SAY_WAITING_EVERY {
                said = Instant::now();
                println!("waiting for node(s) {waiting:?} to answer (see their logs)");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn start(&self, exe: &Path, id: u16) -> Result<Node, StartError> {
        let log_path = self.log_path(id);
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| StartError::failure(format!("cannot open {}: {e}", log_path.display())))?;
        let args = self.args(id);
        let child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            // Ctrl-C in the terminal reaches every process of the group; the nodes are
            // stopped by this process instead, one SIGTERM each, so nothing is left behind.
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| StartError::failure(format!("cannot start node {id}: {e}")))?;
        let command = std::iter::once(exe.display().to_string())
            .chain(args)
            .map(|word| shell_quoted(&word))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Node {
            id,
            child,
            command,
            exited: false,
        })
    }

    fn banner(&self, exe: &Path, nodes: &[Node]) -> String {
        let all: Vec<String> = (1..=self.nodes).map(|i| self.addr(i)).collect();
        let client = shell_quoted(&exe.with_file_name("kv-client").display().to_string());
        let mut text = String::new();
        let _ = writeln!(text, "limecached dev cluster: {}", self::nodes(nodes.len()));
        for node in nodes {
            let _ = writeln!(
                text,
                "  node {}  {}  pid {}  log {}",
                node.id,
                self.addr(node.id),
                node.child
                    .id()
                    .map_or_else(|| "?".into(), |p| p.to_string()),
                self.log_path(node.id).display()
            );
        }
        let addrs = all.join(",");
        let _ = writeln!(
            text,
            "\ntry it (kv-client: cargo build --release -p kv-client):"
        );
        let _ = writeln!(text, "  {client} --addr {addrs} put greeting hello");
        let _ = writeln!(text, "  {client} --addr {addrs} get greeting");
        let _ = writeln!(text, "  {client} --addr {addrs} status");
        let _ = writeln!(text, "{}", survival_hint(nodes.len()));
        text
    }
}

/// What losing a node does to a cluster of `n`: the banner's last line.
fn survival_hint(n: usize) -> String {
    let stop = "Ctrl-C stops them all";
    match n {
        0 | 1 => format!("one node is its own majority; {stop}"),
        2 => format!(
            "a leader needs both of 2 nodes (a majority), so killing either stops writes; \
             --nodes 3 survives one loss. {stop}"
        ),
        _ => format!("kill a node to watch the others elect a new leader: kill -9 <pid>; {stop}"),
    }
}

/// "1 node", "3 nodes".
fn nodes(n: impl Into<usize>) -> String {
    match n.into() {
        1 => "1 node".to_owned(),
        n => format!("{n} nodes"),
    }
}

/// How many nodes the dev cluster in `dir` has: the highest `i` of its data directories
/// `n<i>` where a node has run (they hold its log); `None` if it has none yet, or if `dir`
/// does not exist.
fn existing_nodes(dir: &Path) -> std::io::Result<Option<u16>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut highest = None;
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let id = name
            .to_str()
            .and_then(|name| name.strip_prefix('n'))
            .and_then(|id| id.parse::<u16>().ok());
        if let Some(id) = id.filter(|_| entry.path().join(LOG_FILE).is_file()) {
            highest = highest.max(Some(id));
        }
    }
    Ok(highest)
}

/// Whether the node at `addr` answers `status`.
async fn answers(addr: &str) -> bool {
    let policy = RetryPolicy {
        request_timeout: POLL * 10,
        ..RetryPolicy::default()
    };
    let mut client = ClusterClient::new(vec![addr.to_owned()], policy);
    client.status_of(addr).await.is_ok()
}

/// Tells the user about each node as it exits, and how to restart it; completes once every
/// node has exited. (A node restarted by hand is not this process's child, so it is not
/// watched.)
async fn report_exits(nodes: &mut [Node]) {
    loop {
        let exits: Vec<_> = nodes
            .iter_mut()
            .filter(|n| !n.exited)
            .map(|node| {
                Box::pin(async move {
                    let status = node.child.wait().await;
                    (node, status)
                })
            })
            .collect();
        if exits.is_empty() {
            return;
        }
        let ((node, status), _, _) = futures::future::select_all(exits).await;
        let status = match status {
            Ok(status) => status.to_string(),
            Err(error) => format!("its status is unknown: {error}"),
        };
        println!(
            "node {} exited ({status}); restart it in another terminal with:\n  {}",
            node.id, node.command
        );
        node.exited = true;
    }
}

/// `word` as a POSIX shell reads it back: as it is when that is safe, else in single quotes.
fn shell_quoted(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./=:,@+%".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// SIGTERM to every running node, then SIGKILL to those still running after [`STOP_GRACE`].
async fn stop_all(nodes: &mut [Node]) {
    // Not yet reaped (tokio forgets the pid then): also a node whose wait failed.
    for node in nodes.iter() {
        if let Some(pid) = node.child.id() {
            // No signal crate for one call: `kill` is on every Unix.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for node in nodes.iter_mut() {
        if tokio::time::timeout(STOP_GRACE, node.child.wait())
            .await
            .is_err()
        {
            let _ = node.child.kill().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_banner_says_what_losing_a_node_does_to_a_cluster_of_that_size() {
        assert!(survival_hint(1).starts_with("one node is its own majority"));
        assert!(survival_hint(2).contains("killing either stops writes"));
        assert!(survival_hint(3).starts_with("kill a node to watch the others elect"));
        assert!(survival_hint(5).starts_with("kill a node to watch the others elect"));
    }

    #[test]
    fn a_shell_reads_quoted_words_back_as_they_were() {
        let words = [
            "plain/path-1.2",
            "with space",
            "it's",
            "",
            "$HOME",
            "a\"b",
            "*",
        ];
        let quoted: Vec<String> = words.iter().map(|w| shell_quoted(w)).collect();
        let script = format!("printf '%s\\n' {}", quoted.join(" "));
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .expect("sh runs");
        let read_back = String::from_utf8(out.stdout).expect("utf-8");
        assert_eq!(read_back.lines().collect::<Vec<_>>(), words);
        assert_eq!(quoted[0], "plain/path-1.2", "safe words stay as they are");
    }
}
