//! Stage 3 with real processes: three `raft-log` binaries on loopback; a follower killed with
//! SIGKILL and restarted (empty: this stage keeps its log in memory) is brought back to the
//! full log by the leader.

use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::Consistency;
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

    let node3 = cluster.addrs[&3].clone();
    eventually(
        "node 3 applies all 20 entries",
        Duration::from_secs(10),
        || {
            let node3 = node3.clone();
            async move {
                let mut c = ClusterClient::new(vec![node3.clone()], RetryPolicy::default());
                c.status_of(&node3)
                    .await
                    .is_ok_and(|s| s.last_applied == Some(20))
            }
        },
    )
    .await;
    let mut direct = ClusterClient::new(vec![node3], RetryPolicy::default());
    for i in [0, 9, 10, 19] {
        let value = direct
            .get(&format!("k{i}"), Consistency::Stale)
            .await
            .unwrap();
        assert_eq!(
            value,
            Some(format!("v{i}")),
            "key k{i} on the restarted follower"
        );
    }
}
