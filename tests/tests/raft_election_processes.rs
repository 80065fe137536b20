//! Stage 6 with real processes: three `raft-election` binaries with data directories on
//! loopback. Kill -9 the leader; another is elected and serves writes; the old leader,
//! restarted from its data directory, rejoins; every acknowledged write is readable on it.

use std::time::Duration;

use kv_client::{ClusterClient, RetryPolicy};
use kv_server::protocol::{Consistency, Role};
use tests::{ProcessCluster, eventually};

async fn leader_id(client: &mut ClusterClient, cluster: &ProcessCluster) -> u64 {
    for (&id, addr) in &cluster.addrs {
        if client
            .status_of(addr)
            .await
            .is_ok_and(|s| s.role == Role::Leader)
        {
            return id;
        }
    }
    panic!("no node reports itself leader");
}

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
    let old = leader_id(&mut client, &cluster).await;
    cluster.kill(old);
    for i in 10..20 {
        client
            .put(&format!("k{i}"), &format!("v{i}"))
            .await
            .unwrap();
    }
    let new = leader_id(&mut client, &cluster).await;
    assert_ne!(new, old);

    cluster.start_node(old);
    let old_addr = cluster.addrs[&old].clone();
    eventually(
        "the old leader follows and has applied every write",
        Duration::from_secs(10),
        || {
            let addr = old_addr.clone();
            async move {
                let mut c = ClusterClient::new(vec![addr.clone()], RetryPolicy::default());
                let Ok(status) = c.status_of(&addr).await else {
                    return false;
                };
                status.role == Role::Follower
                    && c.get("k19", Consistency::Stale)
                        .await
                        .ok()
                        .flatten()
                        .as_deref()
                        == Some("v19")
            }
        },
    )
    .await;
    let mut direct = ClusterClient::new(vec![old_addr], RetryPolicy::default());
    for i in 0..20 {
        let value = direct
            .get(&format!("k{i}"), Consistency::Stale)
            .await
            .unwrap();
        assert_eq!(
            value,
            Some(format!("v{i}")),
            "acknowledged write k{i} on the restarted node"
        );
    }
}
