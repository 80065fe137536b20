//! `Connection` and `Client` against a real kv-server: pipelining, ordering, and what happens
//! when the server goes away.

mod common;

use common::Server;
use kv_client::{Client, Connection, Error};
use kv_server::protocol::{Op, Reply, Request, RequestId, WriteOutcome};

#[tokio::test]
async fn a_connection_pipelines_and_reads_answers_as_the_right_kind() {
    let server = Server::standalone().await;
    let mut conn = Connection::connect(&server.addr()).await.unwrap();
    for i in 0..100u64 {
        conn.send(&Request {
            id: Some(RequestId::from(i)),
            op: Op::put(&format!("k{i}"), "v"),
            forwarded: false,
        })
        .unwrap();
        conn.send(&Request {
            id: Some(RequestId::string(&format!("g{i}"))),
            op: Op::get(&format!("k{i}")),
            forwarded: false,
        })
        .unwrap();
    }
    assert_eq!(conn.outstanding(), 200);
    for _ in 0..100 {
        assert_eq!(
            conn.recv().await.unwrap(),
            Ok(Reply::Write(WriteOutcome::Put))
        );
        assert_eq!(
            conn.recv().await.unwrap(),
            Ok(Reply::Value(Some("v".into())))
        );
    }
    assert_eq!(conn.outstanding(), 0);
}

#[tokio::test]
async fn a_connection_refuses_recv_and_call_out_of_turn() {
    let server = Server::standalone().await;
    let mut conn = Connection::connect(&server.addr()).await.unwrap();
    assert!(matches!(conn.recv().await, Err(Error::Protocol(_))));
    conn.send(&Request {
        id: None,
        op: Op::get("k"),
        forwarded: false,
    })
    .unwrap();
    assert!(matches!(
        conn.call(&Request {
            id: None,
            op: Op::get("k"),
            forwarded: false,
        })
        .await,
        Err(Error::Protocol(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_each_gets_its_own_answer() {
    let server = Server::standalone().await;
    let client = Client::connect(&server.addr()).await.unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let client = client.clone();
            tokio::spawn(async move {
                let key = format!("k{i}");
                client.request(Op::put(&key, &i.to_string())).await.unwrap();
                client.request(Op::get(&key)).await.unwrap()
            })
        })
        .collect();
    for (i, task) in tasks.into_iter().enumerate() {
        assert_eq!(
            task.await.unwrap(),
            Reply::Value(Some(i.to_string().into()))
        );
    }
}

#[tokio::test]
async fn server_errors_are_answers_not_connection_failures() {
    let server = Server::standalone().await;
    let client = Client::connect(&server.addr()).await.unwrap();
    let error = client
        .request(Op::RemoveMember {
            id: kv_server::protocol::NodeId(3),
        })
        .await
        .unwrap_err();
    assert_eq!(
        error.code(),
        Some(kv_server::protocol::ErrorCode::BadRequest)
    );
    // The connection is still usable.
    assert_eq!(
        client.request(Op::get("k")).await.unwrap(),
        Reply::Value(None)
    );
}

#[tokio::test]
async fn calls_fail_with_connection_lost_when_the_server_goes_away() {
    let server = Server::standalone().await;
    let client = Client::connect(&server.addr()).await.unwrap();
    client.request(Op::put("k", "v")).await.unwrap();
    drop(server);
    // The server closes idle connections on shutdown; the next call must fail, not hang.
    let error = loop {
        match client.request(Op::get("k")).await {
            Ok(_) => tokio::task::yield_now().await,
            Err(error) => break error,
        }
    };
    assert!(matches!(error, Error::ConnectionLost(_)), "{error}");
    assert!(error.outcome_unknown());
}

#[tokio::test]
async fn connecting_to_a_closed_port_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    drop(listener);
    let error = Client::connect(&addr).await.unwrap_err();
    assert!(matches!(error, Error::Connect { .. }), "{error}");
    assert!(!error.outcome_unknown());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelining_large_values_both_ways_does_not_deadlock() {
    // 64 puts and 64 gets of 1 MiB each, all at once on one connection: far more than the
    // socket buffers hold in either direction. A client that writes all its requests before
    // reading any answer waits on a server that waits on it.
    let server = Server::standalone().await;
    let client = Client::connect(&server.addr()).await.unwrap();
    let big = "v".repeat(1 << 20);
    let tasks: Vec<_> = (0..128)
        .map(|i| {
            let (client, big) = (client.clone(), big.clone());
            tokio::spawn(async move {
                let op = if i % 2 == 0 {
                    Op::put(&format!("k{}", i % 8), &big)
                } else {
                    Op::get(&format!("k{}", i % 8))
                };
                client.request(op).await.unwrap()
            })
        })
        .collect();
    let all = futures::future::join_all(tasks);
    let done = tokio::time::timeout(std::time::Duration::from_secs(60), all).await;
    for result in done.expect("client and server deadlocked") {
        result.unwrap();
    }
}

#[tokio::test]
async fn an_answer_with_another_id_is_a_protocol_error_that_shows_both_ids_as_json() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut line = String::new();
        BufReader::new(read).read_line(&mut line).await.unwrap();
        write
            .write_all(b"{\"id\":\"zzz\",\"ok\":true}\n")
            .await
            .unwrap();
    });
    let mut conn = Connection::connect(&addr).await.unwrap();
    let answer = conn
        .call(&Request {
            id: Some(RequestId::from(1)),
            op: Op::put("k", "v"),
            forwarded: false,
        })
        .await;
    let Err(Error::Protocol(message)) = answer else {
        panic!("{answer:?}");
    };
    assert_eq!(
        message,
        r#"answer for id "zzz" arrived where id 1 was expected"#
    );
    server.await.unwrap();
}
