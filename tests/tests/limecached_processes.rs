//! The `limecached` binary with real processes: the whole cluster killed with SIGKILL while
//! it writes and snapshots (every 100 entries), three times over, and restarted from its
//! data directories each time, keeps every acknowledged write.

use std::collections::BTreeMap;
use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::Consistency;
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
