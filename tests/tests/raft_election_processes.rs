//! Stage 6 with real processes: three `raft-election` binaries with data directories on
//! loopback. Kill -9 the leader; another is elected and serves writes; the old leader,
//! restarted from its data directory, rejoins; every acknowledged write is readable on it.

use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::Role;
use tests::{ProcessCluster, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_is_replaced_and_rejoins_with_every_acknowledged_write() {
    let mut cluster = ProcessCluster::start_durable("raft-election", 3, &[]);
    let mut client = ClusterClient::new(cluster.all_addrs(), RetryPolicy::default());
    for i in 0..10 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let old = cluster.leader().await.expect("a leader");
    cluster.kill(old);
    for i in 10..20 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let new = cluster.leader().await.expect("a new leader");
    assert_ne!(new, old);

    cluster.start_node(old);
    eventually(
        "the old leader follows and has applied every write",
        Duration::from_secs(10),
        || {
            let cluster = &cluster;
            async move {
                cluster
                    .status(old)
                    .await
                    .is_some_and(|s| s.role == Role::Follower)
                    && cluster.stale_get(old, "k19").await.as_deref() == Some("v19")
            }
        },
    )
    .await;
    for i in 0..20 {
        let value = cluster.stale_get(old, &format!("k{i}")).await;
        assert_eq!(
            value,
            Some(format!("v{i}")),
            "acknowledged write k{i} on the restarted node"
        );
    }
}
