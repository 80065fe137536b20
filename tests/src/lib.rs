//! Helpers for the cross-crate and multi-process tests.
#![warn(missing_docs)]

pub mod linearizability;
pub mod proxy;

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::{Consistency, Role, Status};

/// The path of the workspace binary `name`, built (or brought up to date) on first use.
///
/// Cargo builds only this package's own binaries for its tests, so binaries of other crates
/// are built here through the `cargo` that runs the tests. They land in the same target
/// directory, next to this test executable's `deps/` folder.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        build.args(["build", "--quiet", "--bins", "--workspace"]);
        if !cfg!(debug_assertions) {
            build.arg("--release");
        }
        let status = build
            .status()
            .expect("cannot run cargo to build the binaries");
        assert!(status.success(), "building the workspace binaries failed");
    });
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps/<test>");
    let path = dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// `n` loopback addresses free right now, for nodes to listen on.
///
/// A port is checked by binding it and released before the node binds it. Ports are taken
/// below Linux's ephemeral range (32768 and up), where no connection gets its local port:
/// a port from binding port 0 was once taken in between by some test's client connection,
/// and the node exited before listening. Each port is handed out once per test process,
/// so tests running at the same time never share one; processes start at different places.
pub fn free_addrs(n: usize) -> Vec<String> {
    const FIRST: u32 = 20_000;
    const RANGE: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id() % 1_000 * 12;
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..RANGE {
        if addrs.len() == n {
            break;
        }
        let port = FIRST + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % RANGE;
        let addr = format!("127.0.0.1:{port}");
        if std::net::TcpListener::bind(&addr).is_ok() {
            addrs.push(addr);
        }
    }
    assert_eq!(addrs.len(), n, "{n} free ports below {}", FIRST + RANGE);
    addrs
}

/// A cluster of node processes of one stage binary, all given the same `--peers`.
pub struct ProcessCluster {
    binary: PathBuf,
    /// Node id → address.
    pub addrs: BTreeMap<u64, String>,
    extra_args: Vec<String>,
    /// Node id → the address it advertises (its proxy's), for clusters behind proxies.
    advertised: BTreeMap<u64, String>,
    /// When set, node `i` gets `--data-dir <this>/n<i>`; removed with the cluster.
    data_dirs: Option<tempfile::TempDir>,
    children: BTreeMap<u64, Child>,
    /// Node id → the last lines it logged, for the report when it dies unexpectedly.
    logs: BTreeMap<u64, Arc<Mutex<VecDeque<String>>>>,
}

/// How many of a node's last log lines are kept for a report.
const KEPT_LINES: usize = 30;

/// How long a node may take to start listening.
const START_WITHIN: Duration = Duration::from_secs(30);

impl ProcessCluster {
    /// Starts nodes `1..=n` of `binary` with `--id`, `--listen`, `--peers` and `extra_args`.
    pub fn start(binary: &str, n: u64, extra_args: &[&str]) -> ProcessCluster {
        ProcessCluster::launch(binary, n, extra_args, None)
    }

    /// Like [`ProcessCluster::start`], giving each node its own `--data-dir` in a temporary
    /// directory, kept across restarts of the node.
    pub fn start_durable(binary: &str, n: u64, extra_args: &[&str]) -> ProcessCluster {
        let dirs = tempfile::tempdir().expect("a temporary directory");
        ProcessCluster::launch(binary, n, extra_args, Some(dirs))
    }

    /// Addresses and data directories for nodes `1..=n` of `binary`, none started: for
    /// clusters that form by `--bootstrap` and `--join` ([`ProcessCluster::start_node_with`]).
    pub fn unstarted(binary: &str, n: u64, extra_args: &[&str]) -> ProcessCluster {
        let dirs = tempfile::tempdir().expect("a temporary directory");
        ProcessCluster::launch(binary, 0, extra_args, Some(dirs)).with_addrs(n)
    }

    /// Addresses and data directories for nodes `1..=slots` of `binary`, with node 1
    /// started with `--bootstrap` and nodes `2..=members` with `--join` through it; returns
    /// once node 1 counts `members` voters. The ids after `members` are spares.
    pub async fn bootstrapped(
        binary: &str,
        slots: u64,
        members: u64,
        extra_args: &[&str],
    ) -> ProcessCluster {
        let mut cluster = ProcessCluster::unstarted(binary, slots, extra_args);
        cluster.start_node_with(1, &["--bootstrap"]);
        let first = cluster.addrs[&1].clone();
        for id in 2..=members {
            cluster.start_node_with(id, &["--join", &first]);
        }
        let what = format!("{members} voters");
        eventually(&what, Duration::from_secs(20), || async {
            cluster.voters(1).await == members as usize
        })
        .await;
        cluster
    }

    fn with_addrs(mut self, n: u64) -> ProcessCluster {
        self.addrs = (1..=n).zip(free_addrs(n as usize)).collect();
        self
    }

    fn launch(
        binary: &str,
        n: u64,
        extra_args: &[&str],
        data_dirs: Option<tempfile::TempDir>,
    ) -> ProcessCluster {
        let addrs: BTreeMap<u64, String> = (1..=n).zip(free_addrs(n as usize)).collect();
        let mut cluster = ProcessCluster {
            binary: self::binary(binary),
            addrs,
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
            advertised: BTreeMap::new(),
            data_dirs,
            children: BTreeMap::new(),
            logs: BTreeMap::new(),
        };
        for id in 1..=n {
            cluster.start_node(id);
        }
        cluster
    }

    /// Like [`ProcessCluster::start_durable`], with every node behind a proxy of `network`
    /// that it advertises (`--advertise`): peers reach each other only through the proxies,
    /// so the test can cut links between nodes; clients reach the nodes directly.
    pub async fn start_behind_proxies(
        binary: &str,
        n: u64,
        extra_args: &[&str],
        network: &proxy::Network,
    ) -> ProcessCluster {
        let mut cluster = ProcessCluster::unstarted(binary, n, extra_args);
        for (&id, addr) in &cluster.addrs {
            let proxy = network.proxy(id, addr.clone()).await;
            cluster.advertised.insert(id, proxy);
        }
        for id in 1..=n {
            cluster.start_node(id);
        }
        cluster
    }

    /// Every address, comma-separated, as `--addr` takes them.
    pub fn all_addrs(&self) -> Vec<String> {
        self.addrs.values().cloned().collect()
    }

    /// Node `id`'s data directory, for a cluster started with
    /// [`ProcessCluster::start_durable`].
    pub fn data_dir(&self, id: u64) -> Option<PathBuf> {
        Some(self.data_dirs.as_ref()?.path().join(format!("n{id}")))
    }

    /// Starts node `id` (again) with `--peers` listing every node, and returns once it logs
    /// that it is listening.
    pub fn start_node(&mut self, id: u64) {
        let known_as = |i: &u64| self.advertised.get(i).unwrap_or(&self.addrs[i]).clone();
        let peers: Vec<String> = self
            .addrs
            .keys()
            .map(|i| format!("{i}={}", known_as(i)))
            .collect();
        let mut founding = vec!["--peers".to_owned(), peers.join(",")];
        if let Some(proxy) = self.advertised.get(&id) {
            founding.extend(["--advertise".to_owned(), proxy.clone()]);
        }
        let founding: Vec<&str> = founding.iter().map(String::as_str).collect();
        self.start_node_with(id, &founding);
    }

    /// Starts node `id` (again) with `founding` (`--peers ...`, `--bootstrap`, `--join ...`)
    /// and returns once it logs that it is listening. Its log lines are drained in the
    /// background so the process never blocks on a full pipe.
    pub fn start_node_with(&mut self, id: u64, founding: &[&str]) {
        let mut command = Command::new(&self.binary);
        let id_arg = id.to_string();
        command.args(["--id", &id_arg, "--listen", &self.addrs[&id]]);
        command.args(founding);
        command.args(&self.extra_args);
        if let Some(dir) = self.data_dir(id) {
            command.arg("--data-dir").arg(dir);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn a node");
        // A thread drains its log (so the process never blocks on a full pipe), keeps the
        // last lines, and says when the node listens.
        let log: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let (listening, ready) = std::sync::mpsc::channel();
        let lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let kept = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if line.contains("node listening") {
                    let _ = listening.send(());
                }
                let mut kept = kept.lock().expect("no panic holds it");
                if kept.len() == KEPT_LINES {
                    kept.pop_front();
                }
                kept.push_back(line);
            }
        });
        let said = || log.lock().expect("no panic holds it").clone();
        match ready.recv_timeout(START_WITHIN) {
            Ok(()) => {}
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "node {id} did not listen within {START_WITHIN:?}: {:#?}",
                    said()
                );
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!("node {id} exited before listening: {:#?}", said());
            }
        }
        self.logs.insert(id, log);
        self.children.insert(id, child);
    }

    /// Node `id`'s own status, if it answers.
    pub async fn status(&self, id: u64) -> Option<Status> {
        self.client_of(id).status_of(&self.addrs[&id]).await.ok()
    }

    /// How many voters node `id`'s configuration has (0 if it does not answer).
    pub async fn voters(&self, id: u64) -> usize {
        self.status(id)
            .await
            .and_then(|s| s.members)
            .map_or(0, |m| m.iter().filter(|m| m.voter).count())
    }

    /// The value of `key` in node `id`'s own copy, if it answers.
    pub async fn stale_get(&self, id: u64, key: &str) -> Option<String> {
        self.client_of(id)
            .get(key, Consistency::Stale)
            .await
            .ok()
            .flatten()
    }

    /// The node that says it leads, if one does.
    pub async fn leader(&self) -> Option<u64> {
        for &id in self.addrs.keys() {
            if self
                .status(id)
                .await
                .is_some_and(|s| s.role == Role::Leader)
            {
                return Some(id);
            }
        }
        None
    }

    /// A client that talks to node `id` only.
    fn client_of(&self, id: u64) -> ClusterClient {
        ClusterClient::new(vec![self.addrs[&id].clone()], RetryPolicy::default())
    }

    /// Stops node `id` cleanly (SIGTERM) and waits for it to exit; whether it exited with
    /// success.
    pub fn terminate(&mut self, id: u64) -> bool {
        let Some(mut child) = self.children.remove(&id) else {
            return false;
        };
        let signalled = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !signalled {
            let _ = child.kill();
        }
        child.wait().is_ok_and(|s| s.success()) && signalled
    }

    /// Whether one of the last lines node `id` logged contains `text`.
    pub fn logged(&self, id: u64, text: &str) -> bool {
        self.logs.get(&id).is_some_and(|log| {
            log.lock()
                .expect("no panic holds it")
                .iter()
                .any(|line| line.contains(text))
        })
    }

    /// Fails the test if a node it started has exited on its own (a panic, a refusal to
    /// start), with that node's last log lines: a chaos run must not pass on two nodes
    /// while the third died.
    pub fn assert_running(&mut self) {
        for (id, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let said = self
                    .logs
                    .get(id)
                    .map(|log| log.lock().expect("no panic holds it").clone());
                panic!("node {id} exited ({status}); it last said: {said:#?}");
            }
        }
    }

    /// Pauses node `id` (SIGSTOP): it keeps its sockets and state but does nothing, as a
    /// process stuck in a long GC pause or swapped out would. Whether it was running.
    pub fn pause(&self, id: u64) -> bool {
        self.signal(id, "-STOP")
    }

    /// Resumes node `id` after [`ProcessCluster::pause`] (SIGCONT).
    pub fn resume(&self, id: u64) -> bool {
        self.signal(id, "-CONT")
    }

    fn signal(&self, id: u64, signal: &str) -> bool {
        self.children.get(&id).is_some_and(|child| {
            Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// `kill -9` node `id` and waits for it to be gone.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut child) = self.children.remove(&id) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for id in self.children.keys().copied().collect::<Vec<_>>() {
            self.kill(id);
        }
    }
}

/// What `child` printed and its exit status, once it has exited; fails the test, naming
/// `what`, if it is still running after `limit` (it is killed on drop if spawned so).
pub async fn output_within(
    child: impl std::future::Future<Output = std::io::Result<std::process::Output>>,
    limit: Duration,
    what: &str,
) -> std::process::Output {
    match tokio::time::timeout(limit, child).await {
        Ok(output) => output.expect("the child's output can be read"),
        Err(_) => panic!("{what} kept running"),
    }
}

/// `child`'s exit status, if it exits within `limit` (it goes on running otherwise).
pub async fn exit_within(
    child: &mut tokio::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    tokio::time::timeout(limit, child.wait()).await.ok()?.ok()
}

/// Reads `lines` (a child's log) until one contains `needle`, for at most `limit`: whether
/// one did, before the log ended or the time ran out.
pub async fn said<R: tokio::io::AsyncBufRead + Unpin>(
    lines: &mut tokio::io::Lines<R>,
    needle: &str,
    limit: Duration,
) -> bool {
    let found = tokio::time::timeout(limit, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains(needle) {
                return true;
            }
        }
        false
    });
    found.await.unwrap_or(false)
}

/// Polls `check` every 20 ms until it holds, failing after `limit`: for state that changes
/// inside other processes, where there is no event to await.
pub async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
