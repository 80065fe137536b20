//! A `limecached` node whose disk fills stops, loudly, and acknowledges nothing it could not
//! write: every write it acknowledged is there when it starts again with room.
//!
//! A file size limit stands in for a full disk (no root needed): `prlimit --fsize` makes
//! every write past the limit fail (`EFBIG`, "File too large") as a full disk's fail
//! (`ENOSPC`), and `SIGXFSZ`, which would otherwise kill the process at that write, is
//! ignored by the shell that starts it, a setting that lasts across `exec`.

use std::process::Stdio;
use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::Consistency;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The largest file the node may write: a few dozen of the writes below.
const FILE_LIMIT_BYTES: u64 = 4 << 20;

/// How long the node may take to stop once a write has failed.
const STOP_WITHIN: Duration = Duration::from_secs(20);

/// Node 1, alone (`--bootstrap`), on `addr` with its data in `dir`; with `limit`, under that
/// file size limit. Returns once it listens, with its stderr lines still to come (the channel
/// closes when the node's stderr does). The process is killed if dropped while running.
async fn start(
    addr: &str,
    dir: &std::path::Path,
    limit: Option<u64>,
) -> (Child, mpsc::UnboundedReceiver<String>) {
    let node = tests::binary("limecached");
    let mut command = match limit {
        Some(bytes) => {
            let mut sh = Command::new("sh");
            sh.args(["-c", r#"trap "" XFSZ; exec prlimit --fsize="$0" -- "$@""#])
                .arg(bytes.to_string())
                .arg(&node);
            sh
        }
        None => Command::new(&node),
    };
    let mut child = command
        .args(["--id", "1", "--listen", addr, "--bootstrap", "--data-dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the node starts");
    let mut stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
    let (tx, mut lines) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            let _ = tx.send(line);
        }
    });
    loop {
        match lines.recv().await {
            Some(line) if line.contains("node listening") => break,
            Some(_) => {}
            None => panic!("the node exited before listening"),
        }
    }
    (child, lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_stops_loudly_and_keeps_every_acknowledged_write() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let data = dir.path().join("n1");
    let addr = tests::free_addrs(1).remove(0);
    let (mut node, mut lines) = start(&addr, &data, Some(FILE_LIMIT_BYTES)).await;

    // 50 KB values: the log passes the limit after a few dozen. Write until one fails.
    let value = "x".repeat(50_000);
    let policy = RetryPolicy {
        deadline: Duration::from_secs(3),
        ..RetryPolicy::default()
    };
    let mut client = ClusterClient::new(vec![addr.clone()], policy);
    let mut acknowledged = 0;
    while client
        .put(&format!("k{acknowledged}"), &value)
        .await
        .is_ok()
    {
        acknowledged += 1;
        assert!(acknowledged < 1_000, "50 MB went into a 4 MiB file");
    }
    assert!(
        acknowledged > 10,
        "only {acknowledged} writes before the limit"
    );

    // It stops on its own, with exit status 1 and one line that says why.
    let status = tests::exit_within(&mut node, STOP_WITHIN).await;
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{status:?}");
    let mut said = Vec::new();
    while let Some(line) = lines.recv().await {
        said.push(line);
    }
    let last = said.last().map_or("", String::as_str);
    assert!(
        last.starts_with("limecached: the node stopped unexpectedly: cannot write the log")
            && last.contains("os error 27"),
        "the last line names the failed write: {said:#?}"
    );

    // Started again with room, it has every write it acknowledged.
    let (_node, _lines) = start(&addr, &data, None).await;
    let mut client = ClusterClient::new(vec![addr], RetryPolicy::default());
    for i in 0..acknowledged {
        let read = client
            .get(&format!("k{i}"), Consistency::Linearizable)
            .await;
        assert_eq!(read.ok().flatten().as_deref(), Some(value.as_str()), "k{i}");
    }
}
