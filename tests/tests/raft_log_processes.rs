//! Stage 3 with real processes: three `raft-log` binaries on loopback; a follower killed with
//! SIGKILL and restarted (empty: this stage keeps its log in memory) is brought back to the
//! full log by the leader.

use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use tests::{ProcessCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_follower_comes_back_empty_and_catches_up() {
    let mut cluster = ProcessCluster::start("raft-log", 3, &["--leader", "1"]);
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    for i in 0..10 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    cluster.kill(3);
    for i in 10..20 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    cluster.start_node(3);

    eventually(
        "node 3 applies all 20 entries",
        Duration::from_secs(10),
        || {
            let cluster = &cluster;
            async move {
                cluster
                    .status(3)
                    .await
                    .is_some_and(|s| s.last_applied == Some(20))
            }
        },
    )
    .await;
    for i in [0, 9, 10, 19] {
        let value = cluster.stale_get(3, &format!("k{i}")).await;
        assert_eq!(
            value,
            Some(format!("v{i}")),
            "key k{i} on the restarted follower"
        );
    }
}
