//! The README's quick start, run as a newcomer would: `limecached dev-cluster`, then
//! kv-client against the addresses it prints, a node killed and restarted with the command
//! line dev-cluster prints for it, then Ctrl-C (SIGINT), which must stop every node it
//! started.

use std::net::TcpListener;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tests::eventually;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// How long dev-cluster may take to stop its nodes and exit after Ctrl-C, to print what
/// follows a node's exit, and how long a restarted node may take to catch up.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A base port whose next three ports are free right now: below the range `free_addrs`
/// hands out and the kernel's ephemeral range both. Each call starts its search further
/// on, so that tests running at once get different ones.
fn free_base_port() -> u16 {
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    (10_000..20_000u16)
        .step_by(97)
        .skip(CALLS.fetch_add(1, Ordering::Relaxed) * 7)
        .find(|base| (1..=3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("three free ports in a row")
}

/// `limecached dev-cluster` in `dir`, its nodes on the ports after `base`.
fn dev_cluster(dir: &Path, base: u16) -> Command {
    let mut command = Command::new(tests::binary("limecached"));
    command
        .arg("dev-cluster")
        .arg("--dir")
        .arg(dir)
        .args(["--base-port", &base.to_string()])
        .stdin(Stdio::null());
    command
}

/// Sends `signal` to `pid` (`kill` is on every Unix; no crate for it).
fn signal(signal: &str, pid: &str) -> bool {
    std::process::Command::new("kill")
        .args([signal, pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// `dev-cluster`, interrupted as with Ctrl-C when dropped while it runs: a failed assertion
/// must not leave it and its nodes (each in a process group of its own) running.
struct DevCluster(Child);

impl DevCluster {
    fn interrupt(&self) -> bool {
        self.0
            .id()
            .is_some_and(|pid| signal("-INT", &pid.to_string()))
    }
}

impl Drop for DevCluster {
    /// Only after a failed assertion: nothing can be awaited here, so this polls.
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            let deadline = Instant::now() + STOP_WITHIN;
            while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.start_kill();
        }
    }
}

/// `kv-client --addr addrs` with `args`; its output, once it has succeeded.
async fn kv_client(addrs: &str, args: &[&str]) -> String {
    let out = Command::new(tests::binary("kv-client"))
        .args(["--addr", addrs])
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quick_start_from_the_readme_works() {
    // As the README runs it: a relative --dir (the default is one), from a working
    // directory; the node is restarted from another.
    let cwd = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let dir = cwd.path().join("limecached-dev");
    let mut cluster = DevCluster(
        dev_cluster(Path::new("limecached-dev"), free_base_port())
            .current_dir(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut banner = Vec::new();
    let mut lines = BufReader::new(cluster.0.stdout.take().unwrap()).lines();
    while let Some(line) = lines.next_line().await.unwrap() {
        let last = line.contains("Ctrl-C stops them all");
        banner.push(line);
        if last {
            break;
        }
    }
    let (tx, mut later_lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = tx.send(line);
        }
    });
    // "  node 1  127.0.0.1:7001  pid 24143  log ..."
    let nodes: Vec<(String, String)> = banner
        .iter()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            (words.first() == Some(&"node")).then(|| (words[2].to_owned(), words[4].to_owned()))
        })
        .collect();
    assert_eq!(nodes.len(), 3, "the banner lists three nodes: {banner:#?}");
    let addrs: Vec<&str> = nodes.iter().map(|(addr, _)| addr.as_str()).collect();
    let addrs = addrs.join(",");
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("--addr {addrs}"))),
        "the banner shows how to reach them: {banner:#?}"
    );

    let client = |args: &'static [&'static str]| kv_client(&addrs, args);
    assert_eq!(client(&["put", "greeting", "hello"]).await, "OK\n");
    assert_eq!(client(&["get", "greeting"]).await, "hello\n");
    assert_eq!(
        client(&["cas", "greeting", "hello", "bonjour"]).await,
        "swapped\n"
    );
    assert_eq!(client(&["delete", "greeting"]).await, "deleted\n");
    let status = client(&["status"]).await;
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");
    assert_eq!(status.matches(" follower ").count(), 2, "{status}");

    // Killed, node 2 is reported at once, with the command line that restarts it; run by a
    // shell, that line brings it back into the cluster (and, no child of dev-cluster, it is
    // stopped by this test).
    let (addr2, pid2) = &nodes[1];
    assert!(signal("-9", pid2));
    let mut next = async || {
        tokio::time::timeout(STOP_WITHIN, later_lines.recv())
            .await
            .ok()
            .flatten()
            .expect("dev-cluster goes on printing")
    };
    let report = next().await;
    assert!(report.starts_with("node 2 exited (signal: 9"), "{report}");
    let command = next().await;
    // Run from another directory, a relative --data-dir would start node 2 on an empty
    // one: a new voter that lost what it acknowledged.
    let data_dir = dir.join("n2");
    assert!(
        command.ends_with(&format!("--data-dir {}", data_dir.display())),
        "the restart command names node 2's data directory absolutely: {command}"
    );
    let mut restarted = Command::new("sh")
        .args(["-c", &format!("exec {command}")])
        .current_dir(elsewhere.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    assert_eq!(client(&["put", "back", "again"]).await, "OK\n");
    // Node 2's own copy has the write once it has rejoined and caught up.
    eventually("node 2 catches up", STOP_WITHIN, || async {
        let read = Command::new(tests::binary("kv-client"))
            .args(["--addr", addr2, "get", "--stale", "back"])
            .output()
            .await;
        read.is_ok_and(|out| out.stdout == b"again\n")
    })
    .await;
    restarted.kill().await.unwrap();
    let left: Vec<_> = std::fs::read_dir(elsewhere.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the restarted node wrote elsewhere: {left:?}"
    );

    assert!(cluster.interrupt());
    let status = tests::exit_within(&mut cluster.0, STOP_WITHIN).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "dev-cluster should exit 0 within {STOP_WITHIN:?} of Ctrl-C: {status:?}"
    );
    for (_, pid) in nodes {
        assert!(
            !signal("-0", &pid),
            "node process {pid} outlived dev-cluster"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_stops_with_the_reason_when_a_node_cannot_start() {
    // Node 2's data directory belongs to another node: node 2 exits at once. dev-cluster
    // must say so and stop the others, not print its banner and wait for ever.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("n2")).unwrap();
    std::fs::write(dir.path().join("n2/node-id"), "9\n").unwrap();
    let base = free_base_port();
    let cluster = dev_cluster(dir.path(), base)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tests::output_within(cluster.wait_with_output(), STOP_WITHIN, "dev-cluster").await;
    let (stdout, stderr) = (
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
    );
    assert_eq!(output.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("node 2 exited while starting") && stderr.contains("belongs to node 9"),
        "{stderr}"
    );
    assert!(
        !stdout.contains("try it"),
        "the banner was printed: {stdout}"
    );
    for i in [1, 3] {
        assert!(
            TcpListener::bind(("127.0.0.1", base + i)).is_ok(),
            "node {i} still runs"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_refuses_ports_already_taken_creating_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("dev");
    let base = free_base_port();
    let _taken = TcpListener::bind(("127.0.0.1", base + 2)).unwrap();
    let output = dev_cluster(&dir, base).kill_on_drop(true).output();
    let output = tests::output_within(output, STOP_WITHIN, "dev-cluster").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on 127.0.0.1:{}", base + 2)),
        "{stderr}"
    );
    assert!(!dir.exists(), "--dir was created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_cluster_refuses_a_node_count_other_than_the_cluster_in_its_dir() {
    // A 3-node cluster's --dir run with --nodes 5: nodes 1-3 keep their saved
    // configuration, and nodes 4 and 5 would campaign for ever under a banner saying
    // "5 nodes". Refused before anything starts or is created.
    let dir = tempfile::tempdir().unwrap();
    for i in 1..=3 {
        let data_dir = dir.path().join(format!("n{i}"));
        std::fs::create_dir(&data_dir).unwrap();
        std::fs::write(data_dir.join("node-id"), format!("{i}\n")).unwrap();
        std::fs::write(data_dir.join("raft.log"), "").unwrap();
    }
    let base = free_base_port();
    // Killed if it outlives the test (without the refusal, it starts five nodes).
    let output = dev_cluster(dir.path(), base)
        .args(["--nodes", "5"])
        .kill_on_drop(true)
        .output();
    let output = tests::output_within(output, STOP_WITHIN, "dev-cluster").await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("holds a cluster of 3 nodes") && stderr.contains("--nodes 3"),
        "{stderr}"
    );
    for i in 1..=5 {
        assert!(
            !dir.path().join(format!("n{i}.log")).exists(),
            "node {i} was started"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_dev_cluster_says_1_node_with_absolute_paths() {
    let cwd = tempfile::tempdir().unwrap();
    let mut cluster = DevCluster(
        dev_cluster(Path::new("one"), free_base_port())
            .args(["--nodes", "1"])
            .current_dir(cwd.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(cluster.0.stdout.take().unwrap()).lines();
    let read = tokio::time::timeout(STOP_WITHIN, async {
        let title = lines.next_line().await.unwrap();
        let node = lines.next_line().await.unwrap();
        (title, node)
    });
    let (title, node) = read.await.expect("dev-cluster prints its banner");
    assert_eq!(title.as_deref(), Some("limecached dev cluster: 1 node"));
    let log = cwd.path().join("one/n1.log");
    let node = node.unwrap_or_default();
    assert!(node.ends_with(&format!("log {}", log.display())), "{node}");
    assert!(cluster.interrupt());
    let status = tests::exit_within(&mut cluster.0, STOP_WITHIN).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
