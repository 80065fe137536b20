//! Stage 7 with real processes: three `compaction` binaries snapshotting every 50 entries.
//! A follower whose data directory is wiped rejoins by snapshot; the whole cluster, stopped
//! and restarted, recovers from its snapshots and the logs after them.

use std::path::Path;
use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use tests::{ProcessCluster, eventually};

fn snapshots_in(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().ends_with(".snap"))
                .count()
        })
        .unwrap_or(0)
}

async fn has_every_key(cluster: &ProcessCluster, id: u64, count: usize) -> bool {
    for i in 0..count {
        if cluster.stale_get(id, &format!("k{i}")).await != Some(format!("v{i}")) {
            return false;
        }
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_follower_rejoins_by_snapshot_and_a_stopped_cluster_recovers_from_snapshots() {
    let mut cluster =
        ProcessCluster::start_durable("compaction", 3, &["--snapshot-threshold", "50"]);
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    for i in 0..200 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let leader = cluster.leader().await.expect("a leader");
    let follower = leader % 3 + 1;
    cluster.kill(follower);
    let dir = cluster.data_dir(follower).expect("durable");
    std::fs::remove_dir_all(&dir).unwrap();
    cluster.start_node(follower);
    eventually(
        "the wiped follower holds every write",
        Duration::from_secs(10),
        || has_every_key(&cluster, follower, 200),
    )
    .await;
    assert_eq!(snapshots_in(&dir), 1, "it caught up from a snapshot");

    for id in 1..=3 {
        cluster.kill(id);
    }
    for id in 1..=3 {
        cluster.start_node(id);
    }
    for id in 1..=3 {
        assert!(
            snapshots_in(&cluster.data_dir(id).unwrap()) >= 1,
            "node {id} snapshotted"
        );
        eventually(
            "every node recovers every write",
            Duration::from_secs(10),
            || has_every_key(&cluster, id, 200),
        )
        .await;
    }
    client.put("after", "restart").await.unwrap();
}
