//! Stage 8 with real processes: a cluster formed by `--bootstrap` and `--join`, which then
//! loses its first node (the seed's failure: nodes that only knew the bootstrap node could
//! not elect another), and a node restarted with other founding flags that ignores them.

use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::{Consistency, Role};
use tests::{ProcessCluster, eventually};

async fn voters(cluster: &ProcessCluster, id: u64) -> usize {
    cluster
        .status(id)
        .await
        .and_then(|s| s.members)
        .map_or(0, |m| m.iter().filter(|m| m.voter).count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_join_then_the_first_node_dies_and_the_rest_serve_on() {
    let mut cluster = ProcessCluster::unstarted("membership", 3, &[]);
    cluster.start_node_with(1, &["--bootstrap"]);
    let seed = cluster.addrs[&1].clone();
    for id in [2, 3] {
        cluster.start_node_with(id, &["--join", &seed]);
    }
    eventually("three voters", Duration::from_secs(10), || async {
        voters(&cluster, 1).await == 3
    })
    .await;
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
    assert_eq!(voters(&cluster, follower).await, 3);
}
