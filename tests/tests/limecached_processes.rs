//! The `limecached` binary with real processes: a follower serves writes and reads by
//! relaying them to the leader and forwards a leadership transfer; a wiped follower is
//! replaced by a new member that catches up by snapshot; the whole cluster killed with SIGKILL while it writes and snapshots (every
//! 100 entries), three times over, and restarted from its data directories each time, keeps
//! every acknowledged write.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_client::{ClusterClient, Connection, RetryPolicy};
use kv_server::protocol::{
    Consistency, ErrorCode, NodeId, Op, Outcome, Reply, Request, Role, WriteOutcome,
};
use tests::{ProcessCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_killed_mid_snapshot_restarts_with_every_acknowledged_write() {
    let mut cluster =
        ProcessCluster::start_durable("limecached", 3, &["--snapshot-threshold", "100"]);
    let addrs = cluster.all_addrs();
    let policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        ..RetryPolicy::default()
    };
    let mut acked = BTreeMap::new();
    let mut next = 0u64;
    for round in 0..3u64 {
        // Write until well past a few snapshots, then kill every node at once, with writes
        // (and, every 100 entries, a snapshot) in flight.
        let mut client = ClusterClient::new(addrs.clone(), policy);
        let writes = tokio::spawn(async move {
            let mut done = Vec::new();
            loop {
                let key = format!("k{next}");
                match client.put(&key, &format!("v{next}")).await {
                    Ok(()) => done.push(next),
                    Err(_) => return done,
                }
                next += 1;
            }
        });
        eventually(
            "several snapshots' worth of writes",
            Duration::from_secs(20),
            || async {
                cluster
                    .status(1)
                    .await
                    .is_some_and(|s| s.last_applied > Some(350 * (round + 1)))
            },
        )
        .await;
        for id in 1..=3 {
            cluster.kill(id);
        }
        let done = writes.await.expect("the writer does not panic");
        next = done.last().map_or(next, |last| last + 1) + 1;
        acked.extend(done.into_iter().map(|i| (format!("k{i}"), format!("v{i}"))));
        for id in 1..=3 {
            cluster.start_node(id);
        }
    }
    assert!(
        acked.len() > 1_000,
        "only {} writes acknowledged",
        acked.len()
    );
    let mut reader = ClusterClient::new(addrs, RetryPolicy::default());
    for (key, value) in &acked {
        let read = reader
            .get(key, Consistency::Linearizable)
            .await
            .expect("the cluster serves");
        assert_eq!(read.as_ref(), Some(value), "acknowledged write {key} lost");
    }
}

/// A request as a client sends it to one node, on its own connection: no redirects
/// followed, no retries.
async fn ask(addr: &str, op: Op, forwarded: bool) -> Outcome {
    let mut connection = Connection::connect(addr).await.expect("the node listens");
    let request = Request {
        id: None,
        op,
        forwarded,
    };
    connection.call(&request).await.expect("the node answers")
}

/// [`ask`], again while the answer is `unavailable` or `timeout` (for at most 10 s), as a
/// client retries: a relayed batch is given up after one election timeout (200 ms), which a
/// loaded machine can take. Only for requests that are safe to repeat.
async fn ask_until_served(addr: &str, op: Op) -> Outcome {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let outcome = ask(addr, op.clone(), false).await;
        let retry = matches!(&outcome, Err(f) if matches!(f.code, ErrorCode::Unavailable | ErrorCode::Timeout));
        if !retry || tokio::time::Instant::now() >= deadline {
            return outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_clients_by_relaying_and_forwarding_to_the_leader_but_never_forwards_twice()
 {
    let cluster = ProcessCluster::start_durable("limecached", 3, &[]);
    // A write through the cluster client returns once a leader has been elected.
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    client
        .put("ready", "yes")
        .await
        .expect("a leader is elected");
    let leader = cluster.leader().await.expect("a leader");
    let follower = (1..=3).find(|&id| id != leader).expect("a follower");
    let addr = &cluster.addrs[&follower];

    // Writes and linearizable reads: relayed over the peer link (putting the same value
    // again is harmless).
    assert_eq!(
        ask_until_served(addr, Op::put("k", "v")).await,
        Ok(Reply::Write(WriteOutcome::Put))
    );
    let get = Op::Get {
        key: "k".into(),
        consistency: Consistency::Linearizable,
    };
    assert_eq!(
        ask_until_served(addr, get).await,
        Ok(Reply::Value(Some("v".into()))),
        "a linearizable read through a follower"
    );
    // What every node answers itself is not forwarded.
    match ask(addr, Op::Status, false).await {
        Ok(Reply::Status(status)) => assert_eq!(status.id, Some(NodeId(follower))),
        other => panic!("status through a follower: {other:?}"),
    }
    // A transfer, sent as if another node had forwarded it: the follower answers it itself.
    let transfer = Op::TransferLeader {
        id: NodeId(follower),
    };
    match ask(addr, transfer.clone(), true).await {
        Err(failure) => {
            assert_eq!(failure.code, ErrorCode::NotLeader);
            assert_eq!(failure.leader.as_ref(), Some(&cluster.addrs[&leader]));
        }
        other => panic!("a forwarded request was forwarded again: {other:?}"),
    }
    // Unmarked, it is forwarded to the leader, which hands over to the follower.
    assert_eq!(ask(addr, transfer, false).await, Ok(Reply::Done));
    match ask(addr, Op::Status, false).await {
        Ok(Reply::Status(status)) => assert_eq!(status.role, Role::Leader),
        other => panic!("status of the new leader: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_is_replaced_by_a_new_member_that_catches_up_by_snapshot_and_votes() {
    let mut cluster = ProcessCluster::unstarted("limecached", 4, &["--snapshot-threshold", "100"]);
    let founders: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", cluster.addrs[&id]))
        .collect();
    for id in 1..=3 {
        cluster.start_node_with(id, &["--peers", &founders.join(",")]);
    }
    let founding: Vec<String> = (1..=3).map(|id| cluster.addrs[&id].clone()).collect();
    let mut client = ClusterClient::new(founding, RetryPolicy::default());
    for i in 0..500 {
        client
            .put(&format!("k{i}"), "before")
            .await
            .expect("a healthy cluster");
    }

    // Node 3's disk is lost: it is removed, and a new node, with a new id, joins in its
    // place with an empty data directory.
    cluster.kill(3);
    let wiped = cluster.data_dir(3).expect("durable");
    std::fs::remove_dir_all(&wiped).expect("wipe node 3");
    client
        .remove_member(kv_server::protocol::NodeId(3))
        .await
        .expect("remove node 3");
    let seed = cluster.addrs[&1].clone();
    cluster.start_node_with(4, &["--join", &seed]);
    eventually(
        "node 4 a voter with every key",
        Duration::from_secs(30),
        || async {
            let voter = cluster
                .status(1)
                .await
                .and_then(|s| s.members)
                .is_some_and(|m| {
                    m.iter()
                        .any(|m| m.id == kv_server::protocol::NodeId(4) && m.voter)
                        && !m.iter().any(|m| m.id == kv_server::protocol::NodeId(3))
                });
            voter && cluster.stale_get(4, "k499").await.as_deref() == Some("before")
        },
    )
    .await;

    let snapshots = std::fs::read_dir(cluster.data_dir(4).expect("durable"))
        .expect("node 4's data directory")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
        .count();
    assert!(snapshots > 0, "node 4 caught up without a snapshot");

    // Node 4 now counts: with node 1 gone too, 2 and 4 are a majority of {1, 2, 4}.
    cluster.kill(1);
    let rest = vec![cluster.addrs[&2].clone(), cluster.addrs[&4].clone()];
    let mut client = ClusterClient::new(rest, RetryPolicy::default());
    client.put("after", "yes").await.expect("2 and 4 commit");
    assert_eq!(
        client
            .get("k0", Consistency::Linearizable)
            .await
            .expect("a read"),
        Some("before".into())
    );
}

/// The walk-through's lost write: leader L and follower A commit a write while B is down;
/// L and A crash, A's data directory is lost, and A (with the founding `--peers`) and B
/// restart. A, empty, cannot tell it ever ran, and its vote would let B, which lacks the
/// write, lead and overwrite it. B remembers the data directory A first connected with and
/// refuses the new one, so no one leads until L is back, and the write is kept. Removed and
/// started again with `--join`, A rejoins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_on_a_lost_data_directory_is_refused_and_no_write_is_lost() {
    let mut cluster = ProcessCluster::unstarted("limecached", 3, &[]);
    let founders: Vec<String> = (1..=3)
        .map(|id| format!("{id}={}", cluster.addrs[&id]))
        .collect();
    let founders = founders.join(",");
    for id in 1..=3 {
        cluster.start_node_with(id, &["--peers", &founders]);
    }
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    client.put("before", "1").await.expect("a healthy cluster");
    let l = cluster.leader().await.expect("a leader after a put");
    let mut followers = (1..=3).filter(|&id| id != l);
    let (a, b) = (
        followers.next().expect("3 nodes"),
        followers.next().expect("3 nodes"),
    );

    // B knows A's data directory (its file names A) before B goes down.
    let b_knows = cluster.data_dir(b).expect("durable").join("incarnations");
    eventually("B to remember A", Duration::from_secs(20), || async {
        std::fs::read_to_string(&b_knows).is_ok_and(|saved| saved.contains(&format!("\"{a}\":")))
    })
    .await;
    cluster.kill(b);
    client.put("w", "acked").await.expect("L and A commit");
    cluster.kill(l);
    cluster.kill(a);
    std::fs::remove_dir_all(cluster.data_dir(a).expect("durable")).expect("wipe A");
    cluster.start_node_with(a, &["--peers", &founders]);
    cluster.start_node(b);
    eventually(
        "B refusing the wiped A",
        Duration::from_secs(20),
        || async { cluster.logged(b, "came back with another data directory") },
    )
    .await;
    assert_eq!(
        cluster.leader().await,
        None,
        "B and the wiped A elected a leader"
    );

    cluster.start_node(l);
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    assert_eq!(
        client
            .get("w", Consistency::Linearizable)
            .await
            .expect("L and B elect a leader"),
        Some("acked".into()),
        "the acknowledged write was lost"
    );

    // The way back: removed (which forgets its data directory) and added again.
    client
        .remove_member(kv_server::protocol::NodeId(a))
        .await
        .expect("remove A");
    cluster.kill(a);
    std::fs::remove_dir_all(cluster.data_dir(a).expect("durable")).expect("wipe A again");
    cluster.start_node_with(a, &["--join", &cluster.addrs[&l].clone()]);
    eventually(
        "A a voter again, with the write",
        Duration::from_secs(30),
        || async {
            cluster.stale_get(a, "w").await.as_deref() == Some("acked")
                && cluster
                    .status(l)
                    .await
                    .and_then(|s| s.members)
                    .is_some_and(|m| {
                        m.iter()
                            .any(|m| m.id == kv_server::protocol::NodeId(a) && m.voter)
                    })
        },
    )
    .await;
}
