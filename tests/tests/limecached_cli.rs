//! limecached's command line as a new user meets it: the contract's own command lines run
//! as written (no `--data-dir`: `data/n<ID>`), and every bad flag, busy port and unusable
//! data directory gets one line and an exit status, changing nothing.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::Consistency;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

/// limecached with `args`, in the working directory `cwd`, its stderr piped.
fn limecached(cwd: &Path, args: &[&str]) -> Child {
    limecached_through(&[], cwd, args)
}

/// [`limecached`], run by the command `wrapper` (which runs the command after it).
fn limecached_through(wrapper: &[&str], cwd: &Path, args: &[&str]) -> Child {
    let binary = tests::binary("limecached");
    let mut command = match wrapper {
        [] => Command::new(binary),
        [program, rest @ ..] => {
            let mut command = Command::new(program);
            command.args(rest).arg(binary);
            command
        }
    };
    command
        .args(args)
        .current_dir(cwd)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Runs limecached with `args` in `cwd` until it exits: its exit status and stderr.
async fn refused(cwd: &Path, args: &[&str]) -> (Option<i32>, String) {
    let running = limecached(cwd, args).wait_with_output();
    let what = format!("limecached {args:?}");
    let output = tests::output_within(running, Duration::from_secs(30), &what).await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    // One line; clap adds a hint to its usage errors.
    let lines = stderr.lines().filter(|line| !line.is_empty());
    let what = lines.filter(|line| !line.starts_with("For more information"));
    assert_eq!(what.count(), 1, "one line: {stderr}");
    (output.status.code(), stderr)
}

/// The contract's bootstrap line, at `addr`, with its state in `data_dir`.
fn bootstrap<'a>(addr: &'a str, data_dir: &'a str) -> [&'a str; 7] {
    [
        "--id",
        "1",
        "--listen",
        addr,
        "--bootstrap",
        "--data-dir",
        data_dir,
    ]
}

/// Waits until `node` logs that it listens.
async fn listening(node: &mut Child) {
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let found = tests::said(&mut lines, "node listening", Duration::from_secs(30)).await;
    assert!(found, "the node never listened");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contract_s_bootstrap_line_runs_as_written_with_its_data_in_data_n_id() {
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    let mut node = limecached(cwd.path(), &["--id", "1", "--listen", addr, "--bootstrap"]);
    listening(&mut node).await;
    let owner = std::fs::read_to_string(cwd.path().join("data/n1/node-id")).unwrap();
    assert_eq!(owner.trim(), "1");
    // The same directory, while the first node runs: refused, not shared. (`--bootstrap`
    // is ignored once the directory holds a log; given, the refusal cannot depend on
    // whether the first node has written its log yet.)
    let other = &tests::free_addrs(1)[0];
    let (code, stderr) =
        refused(cwd.path(), &["--id", "1", "--listen", other, "--bootstrap"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("in use by another process"), "{stderr}");
    node.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_addresses_are_usage_errors() {
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    for (flag, args) in [
        (
            "--listen",
            vec!["--id", "1", "--listen", "nonsense", "--bootstrap"],
        ),
        (
            "--join",
            vec!["--id", "2", "--listen", addr, "--join", "garbage"],
        ),
        (
            "--advertise",
            vec![
                "--id",
                "1",
                "--listen",
                addr,
                "--advertise",
                ":80",
                "--bootstrap",
            ],
        ),
    ] {
        let (code, stderr) = refused(cwd.path(), &args).await;
        assert_eq!(code, Some(2), "{flag}: {stderr}");
        assert!(
            stderr.contains(flag) && stderr.contains("host:port"),
            "{stderr}"
        );
    }
    assert!(
        !cwd.path().join("data").exists(),
        "a usage error created data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_port_leaves_the_data_directory_unclaimed() {
    let cwd = tempfile::tempdir().unwrap();
    // Held by the test from the start: a port from `free_addrs`, released and bound again,
    // was once taken in between by another process.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = &taken.local_addr().unwrap().to_string();
    let (code, stderr) = refused(cwd.path(), &["--id", "1", "--listen", addr, "--bootstrap"]).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
    assert!(!cwd.path().join("data/n1/node-id").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_through_its_own_address_is_refused_writing_nothing() {
    // A walk-through's node asked itself to be added, every few seconds, for ever.
    let cwd = tempfile::tempdir().unwrap();
    let addrs = tests::free_addrs(2);
    let (addr, public) = (addrs[0].as_str(), addrs[1].as_str());
    let cases: [&[&str]; 2] = [
        &["--id", "2", "--listen", addr, "--join", addr],
        &[
            "--id",
            "2",
            "--listen",
            addr,
            "--advertise",
            public,
            "--join",
            public,
        ],
    ];
    for args in cases {
        let (code, stderr) = refused(cwd.path(), args).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("this node's own address"), "{stderr}");
        assert!(!cwd.path().join("data").exists(), "{args:?} wrote data");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_that_is_a_file_or_holds_something_else_is_refused() {
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    std::fs::write(cwd.path().join("a-file"), "not a directory").unwrap();
    let (code, stderr) = refused(cwd.path(), &bootstrap(addr, "a-file")).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("not a directory"), "{stderr}");
    // A mistyped path to a directory of something else.
    let photos = cwd.path().join("photos");
    std::fs::create_dir(&photos).unwrap();
    std::fs::write(photos.join("cat.jpg"), "meow").unwrap();
    let (code, stderr) = refused(cwd.path(), &bootstrap(addr, "photos")).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("cat.jpg") && stderr.contains("not adopted"),
        "{stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&photos)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left == ["cat.jpg"], "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_with_two_ids_at_one_address_or_a_stray_comma_are_refused_writing_nothing() {
    // A walk-through gave two ids one address: the node opened a peer link to itself,
    // stayed candidate for ever, and saved that configuration in its data directory. A
    // stray comma was accepted silently, where kv-client's --addr refuses one.
    let cwd = tempfile::tempdir().unwrap();
    let addrs = tests::free_addrs(2);
    let (a, b) = (&addrs[0], &addrs[1]);
    for (peers, says) in [
        (
            format!("1={a},2={a}"),
            format!("nodes 1 and 2 are both at {a}"),
        ),
        (format!("1={a},,2={b}"), "stray comma".to_owned()),
        (format!("1={a},1={b}"), "node 1 is listed twice".to_owned()),
    ] {
        let args = ["--id", "1", "--listen", a, "--peers", &peers];
        let (code, stderr) = refused(cwd.path(), &args).await;
        assert_eq!(code, Some(2), "{peers}: {stderr}");
        assert!(
            stderr.contains("--peers") && stderr.contains(&says),
            "{stderr}"
        );
    }
    assert!(
        !cwd.path().join("data").exists(),
        "a refused --peers created data"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_incarnations_file_was_deleted_is_refused_changing_nothing() {
    // A walk-through deleted the file: the node made a new incarnation in silence, and its
    // peers refused it for ever as a node that had lost its data, which it had not.
    let cwd = tempfile::tempdir().unwrap();
    let addrs = tests::free_addrs(3);
    let peers = format!("1={},2={},3={}", addrs[0], addrs[1], addrs[2]);
    // Two of three: a leader, and a write acknowledged, so both logs hold more than a
    // first start's founding write (which a node killed at once may not have synced).
    let mut nodes = Vec::new();
    for id in ["1", "2"] {
        let i: usize = id.parse().unwrap();
        let dir = format!("n{id}");
        let args = [
            "--id",
            id,
            "--listen",
            &addrs[i - 1],
            "--peers",
            &peers,
            "--data-dir",
            &dir,
        ];
        nodes.push(limecached(cwd.path(), &args));
    }
    let mut client = ClusterClient::new(addrs[..2].to_vec(), RetryPolicy::default());
    client.put("k", "v").await.unwrap();
    for node in &mut nodes {
        node.kill().await.unwrap();
    }
    let file = cwd.path().join("n1/incarnations");
    std::fs::remove_file(&file).unwrap();
    let args = [
        "--id",
        "1",
        "--listen",
        &addrs[0],
        "--peers",
        &peers,
        "--data-dir",
        "n1",
    ];
    let (code, stderr) = refused(cwd.path(), &args).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("holds a log but no incarnations file")
            && stderr.contains("remove-member 1"),
        "{stderr}"
    );
    assert!(!file.exists(), "the refusal made a new incarnation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_node_whose_incarnations_file_was_deleted_gets_a_new_one() {
    // No peer knows its old incarnation: refusing it would leave only an empty directory.
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    let mut node = limecached(cwd.path(), &bootstrap(addr, "n1"));
    listening(&mut node).await;
    let mut client = ClusterClient::new(vec![addr.clone()], RetryPolicy::default());
    client.put("k", "v").await.unwrap();
    node.kill().await.unwrap();
    std::fs::remove_file(cwd.path().join("n1/incarnations")).unwrap();
    let mut node = limecached(cwd.path(), &bootstrap(addr, "n1"));
    listening(&mut node).await;
    let mut client = ClusterClient::new(vec![addr.clone()], RetryPolicy::default());
    assert_eq!(
        client
            .get("k", Consistency::Linearizable)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert!(cwd.path().join("n1/incarnations").exists());
    node.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_an_earlier_stage_wrote_is_refused_changing_nothing() {
    // The tutorial's stages share `data/n<ID>`: limecached adopted stage 6's log, which
    // holds entries and no configuration, and ran for ever outside any cluster.
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    let mut stage6 = Command::new(tests::binary("raft-election"))
        .args([
            "--id",
            "1",
            "--listen",
            addr,
            "--peers",
            &format!("1={addr}"),
        ])
        .args(["--data-dir", "n1"])
        .current_dir(cwd.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut client = ClusterClient::new(vec![addr.clone()], RetryPolicy::default());
    client.put("k", "v").await.unwrap();
    stage6.kill().await.unwrap();
    let before = listing(&cwd.path().join("n1"));
    let (code, stderr) = refused(cwd.path(), &bootstrap(addr, "n1")).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("an earlier stage"), "{stderr}");
    assert_eq!(listing(&cwd.path().join("n1")), before);
}

/// The names and sizes of the files in `dir`.
fn listing(dir: &Path) -> Vec<(std::ffi::OsString, u64)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name(), e.metadata().unwrap().len())
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_whose_log_was_emptied_is_refused_whatever_the_flags() {
    // A walk-through truncated a node's raft.log to 0 bytes, its node-id file kept: started
    // with --bootstrap, it founded a new one-node cluster, forgetting its term, vote and
    // log. A node writes its log's first record before its id, so this is damage.
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    let mut node = limecached(cwd.path(), &bootstrap(addr, "n1"));
    listening(&mut node).await;
    node.kill().await.unwrap();
    let log = cwd.path().join("n1/raft.log");
    std::fs::write(&log, b"").unwrap();
    for founding in [&["--bootstrap"][..], &[]] {
        let mut args = vec!["--id", "1", "--listen", addr, "--data-dir", "n1"];
        args.extend(founding);
        let (code, stderr) = refused(cwd.path(), &args).await;
        assert_eq!(code, Some(1), "{founding:?}: {stderr}");
        assert!(
            stderr.contains("does not start with an intact record"),
            "{founding:?}: {stderr}"
        );
    }
    assert_eq!(std::fs::read(&log).unwrap(), b"", "the log was changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_asking_for_help_mentions_dev_cluster() {
    // A walk-through found no mention of `dev-cluster` in `-h` or in the usage error, and
    // `limecached help` was an error.
    let cwd = tempfile::tempdir().unwrap();
    for (args, success) in [
        (&["-h"][..], true),
        (&["--help"], true),
        (&["help"], true),
        (&[], false),
    ] {
        let running = Command::new(tests::binary("limecached"))
            .args(args)
            .current_dir(cwd.path())
            .output();
        let output = tests::output_within(running, Duration::from_secs(30), "limecached").await;
        assert_eq!(output.status.success(), success, "{args:?}");
        let text = String::from_utf8_lossy(if success {
            &output.stdout
        } else {
            &output.stderr
        });
        assert!(text.contains("limecached dev-cluster"), "{args:?}: {text}");
    }
    let running = Command::new(tests::binary("limecached"))
        .args(["help", "dev-cluster"])
        .output();
    let output = tests::output_within(running, Duration::from_secs(30), "limecached").await;
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && text.contains("Usage: limecached dev-cluster"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_raises_its_open_files_limit_and_takes_more_clients_than_the_soft_one() {
    // Many systems start a process with a soft limit of 1,024 open files and a far higher
    // hard one. Started with 128 and 4,096, the node serves 200 clients at once.
    let cwd = tempfile::tempdir().unwrap();
    let addr = &tests::free_addrs(1)[0];
    let prlimit = ["prlimit", "--nofile=128:4096", "--"];
    let mut node = limecached_through(&prlimit, cwd.path(), &bootstrap(addr, "data"));
    listening(&mut node).await;
    // prlimit sets the limits and then becomes the node (exec).
    let pid = node.id().unwrap();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files"));
    let words: Vec<&str> = open_files.unwrap().split_whitespace().collect();
    assert_eq!(words[3..5], ["4096", "4096"], "{limits}");

    let mut clients = Vec::new();
    for _ in 0..200 {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        clients.push(BufReader::new(stream));
    }
    for client in &mut clients {
        client
            .get_mut()
            .write_all(b"{\"op\":\"status\"}\n")
            .await
            .unwrap();
    }
    for (i, client) in clients.iter_mut().enumerate() {
        let mut line = String::new();
        let read = tokio::time::timeout(Duration::from_secs(10), client.read_line(&mut line));
        read.await.expect("an answer").unwrap();
        assert!(line.contains("\"ok\":true"), "client {i}: {line:?}");
    }
    node.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_restarted_at_another_address_is_refused_with_what_to_do() {
    // Its peers and clients go by the address in its configuration: listening elsewhere,
    // it was cut off for good, and a lone node sent its clients to where it no longer was.
    let cwd = tempfile::tempdir().unwrap();
    let addrs = tests::free_addrs(2);
    let mut node = limecached(cwd.path(), &bootstrap(&addrs[0], "data"));
    listening(&mut node).await;
    node.kill().await.unwrap();
    let log = cwd.path().join("data/raft.log");
    let before = std::fs::read(&log).unwrap();
    let (code, stderr) = refused(cwd.path(), &bootstrap(&addrs[1], "data")).await;
    assert_eq!(code, Some(2), "{stderr}");
    let knows = format!("the cluster knows node 1 at {}", addrs[0]);
    assert!(stderr.contains(&knows), "{stderr}");
    assert!(
        stderr.contains(&format!("restart it with --listen {}", addrs[0])),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&log).unwrap(), before, "the log was changed");
    // At its own address, it starts.
    let mut node = limecached(cwd.path(), &bootstrap(&addrs[0], "data"));
    listening(&mut node).await;
    node.kill().await.unwrap();
}
