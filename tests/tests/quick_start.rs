//! The README's quick start, run as a newcomer would: `limecached dev-cluster`, then
//! kv-client against the addresses it prints, a node killed and restarted with the command
//! line dev-cluster prints for it, then Ctrl-C (SIGINT), which must stop every node it
//! started.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long dev-cluster may take to stop its nodes and exit after Ctrl-C.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// A base port whose next three ports are free right now: below the range `free_addrs`
/// hands out and the kernel's ephemeral range both.
fn free_base_port() -> u16 {
    (10_000..20_000u16)
        .step_by(97)
        .find(|base| (1..=3).all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok()))
        .expect("three free ports in a row")
}

/// `dev-cluster`, interrupted as with Ctrl-C and waited for when dropped: a failed
/// assertion must not leave it and its nodes (in their own process group) running.
struct DevCluster(Child);

impl DevCluster {
    fn interrupt(&self) -> bool {
        let pid = self.0.id().to_string();
        let sent = Command::new("kill").args(["-INT", &pid]).status();
        sent.is_ok_and(|s| s.success())
    }

    /// Its exit status, if it exits within [`STOP_WITHIN`] (std has no way to wait for a
    /// child with a timeout, so this polls).
    fn exited(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.0.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.interrupt();
            if self.exited().is_none() {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
    }
}

/// A node this test restarted by hand, killed when dropped.
struct Restarted(Child);

impl Drop for Restarted {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn quick_start_from_the_readme_works() {
    let dir = tempfile::tempdir().unwrap();
    let base = free_base_port().to_string();
    let mut cluster = DevCluster(
        Command::new(tests::binary("limecached"))
            .arg("dev-cluster")
            .arg("--dir")
            .arg(dir.path())
            .args(["--base-port", &base])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut banner = Vec::new();
    let mut lines = BufReader::new(cluster.0.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        let last = line.contains("Ctrl-C stops them all");
        banner.push(line);
        if last {
            break;
        }
    }
    let (tx, later_lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
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
    assert!(
        banner
            .iter()
            .any(|l| l.contains(&format!("--addr {}", addrs.join(",")))),
        "the banner shows how to reach them: {banner:#?}"
    );

    let client = |args: &[&str]| {
        let out = Command::new(tests::binary("kv-client"))
            .arg("--addr")
            .arg(addrs.join(","))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(client(&["put", "greeting", "hello"]), "OK\n");
    assert_eq!(client(&["get", "greeting"]), "hello\n");
    assert_eq!(
        client(&["cas", "greeting", "hello", "bonjour"]),
        "swapped\n"
    );
    assert_eq!(client(&["delete", "greeting"]), "deleted\n");
    let status = client(&["status"]);
    assert_eq!(status.matches(" leader ").count(), 1, "{status}");
    assert_eq!(status.matches(" follower ").count(), 2, "{status}");

    // Killed, node 2 is reported at once, with the command line that restarts it; run by a
    // shell, that line brings it back into the cluster (and, no child of dev-cluster, it is
    // stopped by this test).
    let (addr2, pid2) = &nodes[1];
    assert!(
        Command::new("kill")
            .args(["-9", pid2])
            .status()
            .unwrap()
            .success()
    );
    let next = || {
        later_lines
            .recv_timeout(STOP_WITHIN)
            .expect("dev-cluster goes on printing")
    };
    let report = next();
    assert!(report.starts_with("node 2 exited (signal: 9"), "{report}");
    let command = next();
    let mut restarted = Restarted(
        Command::new("sh")
            .args(["-c", &format!("exec {command}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    assert_eq!(client(&["put", "back", "again"]), "OK\n");
    // Node 2's own copy has the write once it has rejoined and caught up (nothing to
    // await in another process: polled, within a bound).
    let deadline = Instant::now() + STOP_WITHIN;
    loop {
        let out = Command::new(tests::binary("kv-client"))
            .args(["--addr", addr2, "get", "--stale", "back"])
            .output()
            .unwrap();
        if out.stdout == b"again\n" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 2 never caught up: {command}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    restarted.0.kill().unwrap();
    restarted.0.wait().unwrap();

    assert!(cluster.interrupt());
    let status = cluster.exited();
    assert!(
        status.is_some_and(|s| s.success()),
        "dev-cluster should exit 0 within {STOP_WITHIN:?} of Ctrl-C: {status:?}"
    );
    for (_, pid) in nodes {
        let alive = Command::new("kill").args(["-0", &pid]).status().unwrap();
        assert!(!alive.success(), "node process {pid} outlived dev-cluster");
    }
}
