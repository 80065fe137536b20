//! The serve loop with a handler whose answers the test releases by hand: answers that finish
//! out of order still leave in request order, and shutdown drains what was started.

mod common;

use std::future::Future;
use std::time::Duration;

use common::{Conn, Running};
use kv_server::protocol::{Command, Op, Outcome, Reply, WriteOutcome};
use kv_server::serve::{Handler, ServeConfig};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

/// Hands every request to the test as (key, answer-sender) and answers when the test says.
struct Gated {
    started: mpsc::UnboundedSender<(String, oneshot::Sender<Outcome>)>,
}

impl Handler for Gated {
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        let (tx, rx) = oneshot::channel();
        // A get by its key, a put as "put KEY".
        let key = match op {
            Op::Get { key, .. } => key,
            Op::Write {
                command: Command::Put { key, .. },
                ..
            } => format!("put {key}"),
            Op::TransferLeader { id } => format!("transfer to {id}"),
            other => panic!("unexpected {other:?}"),
        };
        self.started.send((key, tx)).unwrap();
        async move { rx.await.unwrap_or(Ok(Reply::Value(None))) }
    }
}

async fn gated(
    config: ServeConfig,
) -> (
    Running<Gated>,
    mpsc::UnboundedReceiver<(String, oneshot::Sender<Outcome>)>,
) {
    let (started, rx) = mpsc::unbounded_channel();
    (Running::with_handler(Gated { started }, config).await, rx)
}

#[tokio::test]
async fn answers_completing_out_of_order_are_written_in_request_order() {
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    for i in 0..10 {
        c.send(json!({"id":i,"op":"get","key":i.to_string()})).await;
    }
    // All ten are in flight at once (pipelining overlaps them) ...
    let mut pending = Vec::new();
    for _ in 0..10 {
        pending.push(started.recv().await.unwrap());
    }
    // ... and are released last-first.
    for (key, answer) in pending.into_iter().rev() {
        answer.send(Ok(Reply::Value(Some(key.into())))).unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            c.recv().await,
            json!({"id":i,"ok":true,"value":i.to_string()})
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn a_connection_s_reads_and_writes_start_in_the_order_it_sent_them() {
    // get a, get b, put c, get d in one burst: the two gets run together, the put starts
    // once both are answered, and get d once the put is (it must read what the put wrote).
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    c.send_burst(&[
        json!({"id":1,"op":"get","key":"a"}),
        json!({"id":2,"op":"get","key":"b"}),
        json!({"id":3,"op":"put","key":"c","value":"v","client":"x","seq":1}),
        json!({"id":4,"op":"get","key":"d"}),
    ])
    .await;
    let (a, answer_a) = started.recv().await.unwrap();
    let (b, answer_b) = started.recv().await.unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("a", "b"));
    answer_a.send(Ok(Reply::Value(None))).unwrap();
    assert_eq!(c.recv().await["id"], 1);
    // The whole burst has been read by now (reading comes before answering).
    assert!(
        started.try_recv().is_err(),
        "the put started before get b was answered"
    );
    answer_b.send(Ok(Reply::Value(None))).unwrap();
    assert_eq!(c.recv().await["id"], 2);
    let (put, answer_put) = started.recv().await.unwrap();
    assert_eq!(put, "put c");
    assert!(
        started.try_recv().is_err(),
        "get d started before the put was answered"
    );
    answer_put
        .send(Ok(Reply::Write(WriteOutcome::Put)))
        .unwrap();
    assert_eq!(c.recv().await["id"], 3);
    let (d, answer_d) = started.recv().await.unwrap();
    assert_eq!(d, "d");
    answer_d.send(Ok(Reply::Value(Some("v".into())))).unwrap();
    assert_eq!(c.recv().await["id"], 4);
    server.stop().await;
}

#[tokio::test]
async fn a_leadership_transfer_runs_alone_on_its_connection() {
    // put a, put b, transfer, transfer, put c in one burst: the first transfer waits for both
    // puts, the second for the first, and put c for the second (it must go to the new
    // leader), though puts overlap puts.
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    let put = |id: u64, key: &str| json!({"id":id,"op":"put","key":key,"value":"v","client":"x","seq":id});
    c.send_burst(&[
        put(1, "a"),
        put(2, "b"),
        // A transfer's `id` names the node, and its answer echoes it.
        json!({"op":"transfer_leader","id":2}),
        json!({"op":"transfer_leader","id":3}),
        put(5, "c"),
    ])
    .await;
    let (a, answer_a) = started.recv().await.unwrap();
    let (b, answer_b) = started.recv().await.unwrap();
    assert_eq!((a.as_str(), b.as_str()), ("put a", "put b"));
    answer_a.send(Ok(Reply::Write(WriteOutcome::Put))).unwrap();
    assert_eq!(c.recv().await["id"], 1);
    // The whole burst has been read by now (reading comes before answering).
    let mut waits_for = |what: &str| {
        assert!(started.try_recv().is_err(), "{what}");
    };
    waits_for("a transfer started before put b was answered");
    answer_b.send(Ok(Reply::Write(WriteOutcome::Put))).unwrap();
    assert_eq!(c.recv().await["id"], 2);
    let (first, answer_first) = started.recv().await.unwrap();
    assert_eq!(first, "transfer to 2");
    assert!(
        started.try_recv().is_err(),
        "a request started before the first transfer was answered"
    );
    answer_first.send(Ok(Reply::Done)).unwrap();
    assert_eq!(c.recv().await, json!({"id":2,"ok":true}));
    let (second, answer_second) = started.recv().await.unwrap();
    assert_eq!(second, "transfer to 3");
    assert!(
        started.try_recv().is_err(),
        "put c started before the second transfer was answered"
    );
    answer_second.send(Ok(Reply::Done)).unwrap();
    assert_eq!(c.recv().await, json!({"id":3,"ok":true}));
    let (c_put, answer_c) = started.recv().await.unwrap();
    assert_eq!(c_put, "put c");
    answer_c.send(Ok(Reply::Write(WriteOutcome::Put))).unwrap();
    assert_eq!(c.recv().await["id"], 5);
    server.stop().await;
}

#[tokio::test]
async fn transfers_another_node_forwarded_overlap() {
    // A follower's forwarder sends its clients' transfers on one connection: one client's
    // transfer must not wait for another's.
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    c.send_burst(&[
        json!({"op":"transfer_leader","id":2,"forwarded":true}),
        json!({"op":"transfer_leader","id":3,"forwarded":true}),
    ])
    .await;
    let (first, answer_first) = started.recv().await.unwrap();
    // Bounds a wait that, with the bug, never ends.
    let (second, answer_second) = tokio::time::timeout(Duration::from_secs(10), started.recv())
        .await
        .expect("the second transfer waited for the first to be answered")
        .unwrap();
    assert_eq!(
        (first.as_str(), second.as_str()),
        ("transfer to 2", "transfer to 3")
    );
    answer_first.send(Ok(Reply::Done)).unwrap();
    answer_second.send(Ok(Reply::Done)).unwrap();
    assert_eq!(c.recv().await, json!({"id":2,"ok":true}));
    assert_eq!(c.recv().await, json!({"id":3,"ok":true}));
    server.stop().await;
}

#[tokio::test]
async fn shutdown_answers_requests_already_started() {
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    c.send(json!({"id":1,"op":"get","key":"slow"})).await;
    let (_, answer) = started.recv().await.unwrap();

    let stopped = server.stop();
    answer.send(Ok(Reply::Value(Some("late".into())))).unwrap();
    assert_eq!(c.recv().await, json!({"id":1,"ok":true,"value":"late"}));
    c.expect_closed().await;
    stopped.await;
}

#[tokio::test]
async fn a_request_held_behind_another_kind_is_refused_at_shutdown_not_started() {
    let (server, mut started) = gated(ServeConfig::default()).await;
    let mut c = Conn::connect(server.addr).await;
    c.send_burst(&[
        json!({"id":1,"op":"put","key":"k","value":"v","client":"x","seq":1}),
        json!({"id":2,"op":"get","key":"k"}),
    ])
    .await;
    let (put, answer) = started.recv().await.unwrap();
    assert_eq!(put, "put k");
    let stopped = server.stop();
    answer.send(Ok(Reply::Write(WriteOutcome::Put))).unwrap();
    assert_eq!(c.recv().await, json!({"id":1,"ok":true}));
    let refused = c.recv().await;
    assert_eq!(
        (refused["id"].clone(), refused["error"].clone()),
        (json!(2), json!("unavailable"))
    );
    assert!(
        started.try_recv().is_err(),
        "the get was started during shutdown"
    );
    c.expect_closed().await;
    stopped.await;
}

#[tokio::test]
async fn requests_not_read_when_shutdown_begins_are_refused_not_dropped() {
    // An operator's walk-through stopped a node under pipelined clients: the requests behind
    // the in-flight limit were never answered, and their clients could not tell that
    // nothing had happened.
    let config = ServeConfig {
        max_in_flight: 2,
        ..ServeConfig::default()
    };
    let (server, mut started) = gated(config).await;
    let mut c = Conn::connect(server.addr).await;
    let burst: Vec<_> = (1..=10)
        .map(|id| json!({"id":id,"op":"get","key":format!("k{id}")}))
        .collect();
    c.send_burst(&burst).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        answers.push(started.recv().await.unwrap().1);
    }
    let stopped = server.stop();
    for answer in answers {
        answer.send(Ok(Reply::Value(None))).unwrap();
    }
    for id in 1..=2 {
        assert_eq!(c.recv().await, json!({"id":id,"ok":true,"value":null}));
    }
    for id in 3..=10 {
        let refused = c.recv().await;
        assert_eq!(
            (refused["id"].clone(), refused["error"].clone()),
            (json!(id), json!("unavailable"))
        );
    }
    assert!(
        started.try_recv().is_err(),
        "a request was started during shutdown"
    );
    c.expect_closed().await;
    stopped.await;
}

#[tokio::test]
async fn shutdown_closes_a_connection_whose_answers_never_come() {
    let config = ServeConfig {
        drain_timeout: Duration::from_millis(50),
        ..ServeConfig::default()
    };
    let (server, mut started) = gated(config).await;
    let mut c = Conn::connect(server.addr).await;
    c.send(json!({"id":1,"op":"get","key":"stuck"})).await;
    let (_, _held) = started.recv().await.unwrap();
    // Holding the sender keeps the answer pending forever; serve must still return.
    server.stop().await;
    c.expect_closed().await;
}

#[tokio::test]
async fn in_flight_limit_applies_backpressure_without_losing_requests() {
    let config = ServeConfig {
        max_in_flight: 3,
        ..ServeConfig::default()
    };
    let (server, mut started) = gated(config).await;
    let mut c = Conn::connect(server.addr).await;
    for i in 0..10 {
        c.send(json!({"id":i,"op":"get","key":i.to_string()})).await;
    }
    for i in 0..10 {
        // Only three are started until answers go out; each one released lets one more in.
        let (key, answer) = started.recv().await.unwrap();
        assert_eq!(key, i.to_string());
        if i < 7 {
            assert!(started.len() <= 2, "more than 3 requests in flight");
        }
        answer.send(Ok(Reply::Value(Some(key.into())))).unwrap();
        assert_eq!(c.recv().await["id"], i);
    }
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_block_shutdown() {
    // 64 answers of 1 MiB each fill the socket buffers and more; with the client not reading,
    // writing them blocks. Shutdown must still finish, after the drain timeout.
    let config = ServeConfig {
        drain_timeout: Duration::from_millis(100),
        ..ServeConfig::default()
    };
    let server = Running::with_handler(kv_server::server::Standalone::new(), config).await;
    let mut c = Conn::connect(server.addr).await;
    assert_eq!(
        c.call(json!({"op":"put","key":"big","value":"v".repeat(1 << 20)}))
            .await["ok"],
        true
    );
    let mut burst = Vec::new();
    for _ in 0..64 {
        burst.extend_from_slice(b"{\"op\":\"get\",\"key\":\"big\"}\n");
    }
    c.send_raw(&burst).await;
    // One answer read: the server is now busy writing the other 63 MiB, which the client will
    // not read.
    assert_eq!(
        c.recv().await["value"].as_str().map(str::len),
        Some(1 << 20)
    );
    // Guard only: without the fix this hangs until the client reads, i.e. forever.
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("shutdown blocked by a client that does not read");
}
