//! `kv-client status`'s rows against scripted nodes: one row per node, wherever it was
//! reached, and the unreachable ones last.

mod common;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use common::{Scripted, Server, quick};
use kv_client::status_table::{Row, collect};
use kv_server::protocol::{Member, NodeId, Op, Outcome, Reply, Role, Status};
use kv_server::serve::Handler;
use tokio::sync::Barrier;

/// A node answering every request with its `status` as node `id`, listing the members `members` holds once set,
/// and counting the requests it gets.
async fn node(id: u64, members: Arc<OnceLock<Vec<Member>>>, asked: Arc<AtomicUsize>) -> Server {
    Server::start(Scripted(move |_| {
        asked.fetch_add(1, Ordering::SeqCst);
        Ok(Reply::Status(Box::new(Status {
            id: Some(NodeId(id)),
            role: if id == 1 {
                Role::Leader
            } else {
                Role::Follower
            },
            term: Some(1),
            members: members.get().cloned(),
            ..Status::standalone()
        })))
    }))
    .await
}

fn member(id: u64, addr: &Server) -> Member {
    Member {
        id: NodeId(id),
        addr: addr.addr(),
        voter: true,
    }
}

fn addrs(rows: &[Row]) -> Vec<&str> {
    rows.iter().map(|r| r.addr.as_str()).collect()
}

#[tokio::test]
async fn a_node_reached_at_two_addresses_is_one_row_under_the_address_given() {
    // `front` and `listed` are the same node 1, reached two ways (as `localhost:P` and
    // `127.0.0.1:P` are); the members list names it by `listed`. Keyed by address, it was
    // two rows.
    let members = Arc::new(OnceLock::new());
    let (front_asked, listed_asked) =
        (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
    let front = node(1, members.clone(), front_asked.clone()).await;
    let listed = node(1, members.clone(), listed_asked.clone()).await;
    let other_asked = Arc::<AtomicUsize>::default();
    let other = node(2, members.clone(), other_asked.clone()).await;
    members
        .set(vec![member(1, &listed), member(2, &other)])
        .unwrap();

    let rows = collect(quick(), &[front.addr()]).await;
    assert_eq!(addrs(&rows), [front.addr(), other.addr()]);
    assert_eq!(
        listed_asked.load(Ordering::SeqCst),
        0,
        "a member whose id has a row was asked again"
    );
    assert_eq!(other_asked.load(Ordering::SeqCst), 1);

    // Given both ways, both are asked (the user named them), and the node is still one row.
    let rows = collect(quick(), &[front.addr(), listed.addr()]).await;
    assert_eq!(addrs(&rows), [front.addr(), other.addr()]);
    assert_eq!(front_asked.load(Ordering::SeqCst), 2);
    assert_eq!(
        listed_asked.load(Ordering::SeqCst),
        1,
        "the address given was not asked"
    );
}

#[tokio::test]
async fn unreachable_members_are_listed_after_the_ones_that_answered() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap().to_string();
    drop(closed);
    let members = Arc::new(OnceLock::new());
    let two = node(2, members.clone(), Arc::default()).await;
    let one = node(1, members.clone(), Arc::default()).await;
    members.set(vec![member(1, &one), member(2, &two)]).unwrap();

    let rows = collect(quick(), &[down.clone(), two.addr()]).await;
    assert_eq!(addrs(&rows), [one.addr(), two.addr(), down.clone()]);
    assert!(rows[2].status.is_err());
    let ids: Vec<Option<NodeId>> = rows
        .iter()
        .map(|r| r.status.as_ref().ok().and_then(|s| s.id))
        .collect();
    assert_eq!(ids, [Some(NodeId(1)), Some(NodeId(2)), None]);
}

/// A node that answers `status` only once every node sharing `all_asked` has been asked.
struct Rendezvous {
    id: u64,
    all_asked: Arc<Barrier>,
}

impl Handler for Rendezvous {
    fn handle(&self, _: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let (id, all_asked) = (self.id, self.all_asked.clone());
        async move {
            all_asked.wait().await;
            Ok(Reply::Status(Box::new(Status {
                id: Some(NodeId(id)),
                term: Some(1),
                ..Status::standalone()
            })))
        }
    }
}

#[tokio::test]
async fn the_nodes_given_are_asked_at_once() {
    // Each answers only once the other has been asked: asked one after the other, the first
    // would be given up on (after `quick()`'s 500 ms) before the second was asked.
    let all_asked = Arc::new(Barrier::new(2));
    let mut nodes = Vec::new();
    for id in [1, 2] {
        let all_asked = all_asked.clone();
        nodes.push(Server::start(Rendezvous { id, all_asked }).await);
    }
    let given: Vec<String> = nodes.iter().map(Server::addr).collect();
    let rows = collect(quick(), &given).await;
    let ids: Vec<Option<NodeId>> = rows
        .iter()
        .map(|r| r.status.as_ref().ok().and_then(|s| s.id))
        .collect();
    assert_eq!(ids, [Some(NodeId(1)), Some(NodeId(2))], "{rows:?}");
}

#[tokio::test]
async fn of_two_addresses_listed_for_one_id_the_second_is_asked_only_if_the_first_fails() {
    // Member lists disagree about node 2's address (one is stale). Asked at once, both
    // would be, and a dead stale one would add an unreachable row for a node that has one.
    let members = Arc::new(OnceLock::new());
    let (first_asked, second_asked) =
        (Arc::<AtomicUsize>::default(), Arc::<AtomicUsize>::default());
    let one = node(1, members.clone(), Arc::default()).await;
    let first = node(2, members.clone(), first_asked.clone()).await;
    let second = node(2, members.clone(), second_asked.clone()).await;
    members
        .set(vec![member(1, &one), member(2, &first), member(2, &second)])
        .unwrap();
    let rows = collect(quick(), &[one.addr()]).await;
    assert_eq!(addrs(&rows), [one.addr(), first.addr()]);
    assert_eq!(first_asked.load(Ordering::SeqCst), 1);
    assert_eq!(second_asked.load(Ordering::SeqCst), 0);

    // With the first down, the second is asked, in the next round.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap().to_string();
    drop(closed);
    let members = Arc::new(OnceLock::new());
    let second_asked = Arc::<AtomicUsize>::default();
    let one = node(1, members.clone(), Arc::default()).await;
    let second = node(2, members.clone(), second_asked.clone()).await;
    let dead = Member {
        id: NodeId(2),
        addr: down.clone(),
        voter: true,
    };
    members
        .set(vec![member(1, &one), dead, member(2, &second)])
        .unwrap();
    let rows = collect(quick(), &[one.addr()]).await;
    assert_eq!(addrs(&rows), [one.addr(), second.addr(), down]);
    assert_eq!(second_asked.load(Ordering::SeqCst), 1);
}
