//! Stage 8 with real processes: a cluster formed by `--bootstrap` and `--join`, which then
//! loses its first node (the seed's failure: nodes that only knew the bootstrap node could
//! not elect another), a node restarted with other founding flags that ignores them, and a
//! joining node the cluster refuses, which stops with the reason, as does a voter that lost
//! its data and asks to join again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::{Consistency, NodeId, Role};
use tests::{ProcessCluster, eventually};

/// Three voters: node 1 started with `--bootstrap`, nodes 2 and 3 with `--join` through it.
async fn bootstrapped_and_joined() -> ProcessCluster {
    ProcessCluster::bootstrapped("membership", 3, 3, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_join_then_the_first_node_dies_and_the_rest_serve_on() {
    let mut cluster = bootstrapped_and_joined().await;
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    for i in 0..50 {
        client.put(&format!("k{i}"), "before").await.unwrap();
    }

    cluster.kill(1);
    let rest = vec![cluster.addrs[&2].clone(), cluster.addrs[&3].clone()];
    let mut client = ClusterClient::new(rest, RetryPolicy::default());
    for i in 50..100 {
        client.put(&format!("k{i}"), "after").await.unwrap();
    }
    let leader = cluster.leader().await.expect("a new leader");
    assert!([2, 3].contains(&leader));
    for i in 0..100 {
        let value = client.get(&format!("k{i}"), Consistency::Stale).await;
        assert!(value.unwrap().is_some(), "k{i} lost");
    }

    // A restart reads its configuration from its data directory: `--bootstrap` would have
    // made a cluster of one, and is ignored.
    let follower = if leader == 2 { 3 } else { 2 };
    cluster.kill(follower);
    cluster.start_node_with(follower, &["--bootstrap"]);
    eventually(
        "the restarted node follows",
        Duration::from_secs(10),
        || async {
            cluster
                .status(follower)
                .await
                .is_some_and(|s| s.role == Role::Follower && s.leader.is_some())
        },
    )
    .await;
    assert_eq!(cluster.voters(follower).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_leader_moves_leadership_and_a_stopping_leader_hands_it_over() {
    let mut cluster = ProcessCluster::start_durable("membership", 3, &[]);
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    client.put("k", "v").await.unwrap();
    let first = cluster.leader().await.expect("a leader");
    let target = first % 3 + 1;

    let target_id = target.to_string();
    let output = std::process::Command::new(tests::binary("kv-client"))
        .args([
            "--addr",
            &cluster.all_addrs().join(","),
            "transfer-leader",
            &target_id,
        ])
        .output()
        .expect("kv-client runs");
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("node {target} is the leader\n")
    );
    assert_eq!(cluster.leader().await, Some(target));

    // SIGTERM the leader: it hands over before exiting, so a leader is there at once,
    // with no election timeout to wait out, and it is not the stopped node.
    let term = cluster
        .status(target)
        .await
        .and_then(|s| s.term)
        .expect("a term");
    assert!(cluster.terminate(target), "a clean exit");
    let rest: Vec<u64> = (1..=3).filter(|&id| id != target).collect();
    let mut new_leader = None;
    for &id in &rest {
        let status = cluster.status(id).await.expect("answers");
        if status.role == Role::Leader {
            new_leader = Some((id, status.term));
        }
    }
    let (new_leader, new_term) = new_leader.expect("a leader as soon as the old one exited");
    assert_eq!(
        new_term,
        Some(term + 1),
        "one election, begun by the handover"
    );
    client.put("k", "after").await.unwrap();
    assert_eq!(
        cluster.stale_get(new_leader, "k").await.as_deref(),
        Some("after")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_cluster_refuses_to_add_stops_with_the_reason() {
    let mut cluster = ProcessCluster::unstarted("membership", 2, &[]);
    cluster.start_node_with(1, &["--bootstrap"]);
    let seed = cluster.addrs[&1].clone();
    // Node 2 is already a member, at another address: asking again can never succeed.
    let mut client = ClusterClient::new(vec![seed.clone()], RetryPolicy::default());
    client.add_member(NodeId(2), "127.0.0.1:9").await.unwrap();
    let stderr = refused_join(&cluster, 2).await;
    assert!(
        stderr.contains("the cluster refuses to add node 2") && stderr.contains("already a member"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_that_lost_its_data_is_not_let_back_in_by_join() {
    let mut cluster = bootstrapped_and_joined().await;
    // Node 3's disk is lost: it comes back with an empty data directory and asks to join,
    // while the other two still have a leader. As a voter with nothing it could help elect
    // a leader without committed entries.
    cluster.kill(3);
    let stderr = refused_join(&cluster, 3).await;
    assert!(
        stderr.contains("node 3 is already a voter") && stderr.contains("remove-member 3"),
        "{stderr}"
    );
    assert_eq!(cluster.voters(1).await, 3, "the refusal changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_serves_nothing_until_the_cluster_has_answered() {
    // The lost-voter check comes before the node serves: once it does, the other voters'
    // messages reach it, and an empty voter would answer their vote requests. Here no
    // member is reachable, so the check retries every second, and a request sent to the
    // node meanwhile must stay unanswered (it waits in the listener's backlog).
    let addrs = tests::free_addrs(2);
    let (listen, unreachable) = (&addrs[0], &addrs[1]);
    let dir = tempfile::tempdir().unwrap();
    let mut node = joining(2, listen, unreachable, dir.path());
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    let waiting = "cannot reach the cluster yet";
    let limit = Duration::from_secs(30);
    assert!(
        tests::said(&mut lines, waiting, limit).await,
        "the node never said it was waiting"
    );
    let mut asking = TcpStream::connect(listen).await.unwrap();
    asking
        .write_all(b"{\"id\":1,\"op\":\"status\"}\n")
        .await
        .unwrap();
    // A whole retry later, it still has not answered.
    assert!(
        tests::said(&mut lines, waiting, limit).await,
        "the node stopped waiting"
    );
    let mut answer = [0u8; 1];
    let read = tokio::time::timeout(Duration::from_millis(100), asking.read(&mut answer)).await;
    assert!(
        read.is_err(),
        "it served a request before the cluster had answered"
    );
    node.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joining_node_reports_a_busy_port_without_waiting_for_the_cluster() {
    // Held by the test from the start (see limecached_cli's busy-port test).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = &taken.local_addr().unwrap().to_string();
    let unreachable = &tests::free_addrs(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let node = joining(2, listen, unreachable, dir.path());
    let what = "the node that should have reported its busy port";
    let output = tests::output_within(node.wait_with_output(), Duration::from_secs(30), what).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {listen}")),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_cannot_confirm_it_leads_does_not_clear_a_joining_node() {
    // A deposed leader cut off from the others still calls itself leader for a while, with
    // a configuration that may predate this node's promotion to voter. A fake member plays
    // it: its status says it leads and does not list node 2, but it cannot serve a
    // linearizable read. The joining node must not take its word, and never asks to join.
    let addrs = tests::free_addrs(2);
    let (listen, deposed) = (&addrs[0], &addrs[1]);
    let ops = fake_deposed_leader(deposed).await;
    let dir = tempfile::tempdir().unwrap();
    let mut node = joining(2, listen, deposed, dir.path());
    let mut lines = BufReader::new(node.stderr.take().unwrap()).lines();
    for attempt in ["first", "second"] {
        let unconfirmed = "did not confirm";
        let said = tests::said(&mut lines, unconfirmed, Duration::from_secs(30)).await;
        assert!(said, "no {attempt} attempt to confirm");
    }
    node.kill().await.unwrap();
    let asked = ops.lock().unwrap().clone();
    assert!(asked.iter().any(|op| op == "get"), "{asked:?}");
    assert!(!asked.iter().any(|op| op == "add_member"), "{asked:?}");
}

/// A member at `addr` that says it leads a cluster of itself alone and answers every other
/// request `unavailable`, as a leader that has lost its majority does. Returns the ops it
/// has been sent.
async fn fake_deposed_leader(addr: &str) -> Arc<Mutex<Vec<String>>> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let ops = Arc::new(Mutex::new(Vec::new()));
    let status = json!({
        "id": 1, "role": "leader", "term": 7, "leader": 1, "leader_addr": addr,
        "commit_index": 9, "last_applied": 9,
        "members": [{"id": 1, "addr": addr, "voter": true}],
    });
    let seen = ops.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (seen, status) = (seen.clone(), status.clone());
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut requests = BufReader::new(read).lines();
                while let Ok(Some(line)) = requests.next_line().await {
                    let request: Value = serde_json::from_str(&line).unwrap();
                    let op = request["op"].as_str().unwrap_or_default().to_owned();
                    let answer = if op == "status" {
                        json!({"id": request["id"], "ok": true, "status": status})
                    } else {
                        json!({"id": request["id"], "ok": false, "error": "unavailable",
                               "message": "no quorum"})
                    };
                    seen.lock().unwrap().push(op);
                    let line = format!("{answer}\n");
                    if write.write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    ops
}

/// Node `id` with an empty data directory under `dir`, listening at `listen` and joining
/// through `through`, its stderr piped.
fn joining(id: u64, listen: &str, through: &str, dir: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(tests::binary("membership"))
        .args([
            "--id",
            &id.to_string(),
            "--listen",
            listen,
            "--join",
            through,
        ])
        .arg("--data-dir")
        .arg(dir.join(format!("n{id}")))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// Starts node `id` with an empty data directory and `--join` through node 1, and returns
/// what it printed once it has stopped with exit code 1.
async fn refused_join(cluster: &ProcessCluster, id: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let joiner =
        joining(id, &cluster.addrs[&id], &cluster.addrs[&1], dir.path()).wait_with_output();
    let output = tests::output_within(joiner, Duration::from_secs(30), "the refused node").await;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    stderr
}
