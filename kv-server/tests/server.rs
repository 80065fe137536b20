//! kv-server driven over TCP: every operation, every error path of the contract, pipelining,
//! concurrency, and clients that misbehave.

mod common;

use common::{Conn, Running, assert_error};
use serde_json::{Value, json};

#[tokio::test]
async fn every_operation_answers_with_the_contracts_fields() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;

    assert_eq!(
        c.call(json!({"id":1,"op":"get","key":"k"})).await,
        json!({"id":1,"ok":true,"value":null})
    );
    assert_eq!(
        c.call(json!({"id":2,"op":"put","key":"k","value":"v"}))
            .await,
        json!({"id":2,"ok":true})
    );
    assert_eq!(
        c.call(json!({"id":3,"op":"get","key":"k"})).await,
        json!({"id":3,"ok":true,"value":"v"})
    );
    assert_eq!(
        c.call(json!({"id":4,"op":"cas","key":"k","expected":"other","value":"w"}))
            .await,
        json!({"id":4,"ok":true,"swapped":false,"value":"v"})
    );
    assert_eq!(
        c.call(json!({"id":5,"op":"cas","key":"k","expected":"v","value":"w"}))
            .await,
        json!({"id":5,"ok":true,"swapped":true})
    );
    assert_eq!(
        c.call(json!({"id":6,"op":"cas","key":"k","expected":null,"value":"x"}))
            .await,
        json!({"id":6,"ok":true,"swapped":false,"value":"w"})
    );
    assert_eq!(
        c.call(json!({"id":7,"op":"delete","key":"k"})).await,
        json!({"id":7,"ok":true,"existed":true})
    );
    assert_eq!(
        c.call(json!({"id":8,"op":"delete","key":"k"})).await,
        json!({"id":8,"ok":true,"existed":false})
    );
    assert_eq!(
        c.call(json!({"id":9,"op":"cas","key":"k","expected":null,"value":"new"}))
            .await,
        json!({"id":9,"ok":true,"swapped":true})
    );
    assert_eq!(
        c.call(json!({"id":10,"op":"cas","key":"gone","expected":"x","value":"y"}))
            .await,
        json!({"id":10,"ok":true,"swapped":false,"value":null})
    );
    assert_eq!(
        c.call(json!({"id":11,"op":"get","key":"k","consistency":"stale"}))
            .await,
        json!({"id":11,"ok":true,"value":"new"})
    );
    // A write tagged with client/seq is an ordinary write on a single server.
    assert_eq!(
        c.call(json!({"id":12,"op":"put","key":"s","value":"1","client":"c1","seq":1}))
            .await,
        json!({"id":12,"ok":true})
    );
    assert_eq!(
        c.call(json!({"id":13,"op":"status"})).await,
        json!({"id":13,"ok":true,"status":{
            "id":null,"role":"standalone","term":null,"leader":null,"leader_addr":null,
            "commit_index":null,"last_applied":null,"members":null
        }})
    );
    server.stop().await;
}

#[tokio::test]
async fn ids_are_echoed_exactly_and_omitted_when_absent() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    for id in [
        json!(0),
        json!(-7),
        json!(1.5),
        json!(u64::MAX),
        json!("abc"),
        json!(""),
        json!("ü ✓"),
    ] {
        let response = c.call(json!({"id":id,"op":"get","key":"k"})).await;
        assert_eq!(response["id"], id);
    }
    let response = c.call(json!({"op":"get","key":"k"})).await;
    assert_eq!(response, json!({"ok":true,"value":null}));
    // Byte for byte, including numbers a JSON parser would normalize or round.
    for id in [
        "1e2",
        "1.50",
        "-0",
        "18446744073709551616",
        "1234567890123456789012345",
        "\"\\u00e9\"",
    ] {
        let line = format!("{{\"id\":{id},\"op\":\"get\",\"key\":\"k\"}}\n");
        c.send_raw(line.as_bytes()).await;
        assert_eq!(
            c.recv_line().await,
            format!("{{\"id\":{id},\"ok\":true,\"value\":null}}\n")
        );
    }
    // The id is echoed on errors too, whenever it can be read.
    assert_eq!(c.call(json!({"id":"e","op":"get"})).await["id"], "e");
    server.stop().await;
}

#[tokio::test]
async fn a_thousand_pipelined_requests_come_back_in_order() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let mut burst = Vec::new();
    for i in 0..1000 {
        let request = if i % 2 == 0 {
            json!({"id":i,"op":"put","key":format!("k{}", i % 7),"value":format!("v{i}")})
        } else {
            json!({"id":i,"op":"get","key":format!("k{}", (i - 1) % 7)})
        };
        burst.extend(serde_json::to_vec(&request).unwrap());
        burst.push(b'\n');
    }
    c.send_raw(&burst).await;
    for i in 0..1000 {
        let response = c.recv().await;
        assert_eq!(response["id"], i, "{response}");
        assert_eq!(response["ok"], true);
        if i % 2 == 1 {
            // Each get follows the put just before it on the same connection.
            assert_eq!(response["value"], format!("v{}", i - 1));
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn malformed_lines_get_bad_request_and_change_nothing() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let bad: &[&[u8]] = &[
        b"not json",
        b"",
        b"[1,2,3]",
        b"\"put\"",
        b"[7,\"put\",\"k\",\"v\",null,null,null,null,null]",
        b"  [1]",
        b"{\"id\":1,\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"",
        b"{\"id\":2,\"op\":\"frobnicate\",\"key\":\"k\"}",
        b"{\"id\":3,\"key\":\"k\",\"value\":\"v\"}",
        b"{\"id\":4,\"op\":\"put\",\"key\":\"k\"}",
        b"{\"id\":5,\"op\":\"put\",\"value\":\"v\"}",
        b"{\"id\":6,\"op\":\"put\",\"key\":\"k\",\"value\":7}",
        b"{\"id\":7,\"op\":\"put\",\"key\":[\"k\"],\"value\":\"v\"}",
        b"{\"id\":8,\"op\":\"put\",\"key\":\"k\",\"value\":null}",
        b"{\"id\":9,\"op\":\"cas\",\"key\":\"k\",\"value\":\"v\"}",
        b"{\"id\":10,\"op\":\"cas\",\"key\":\"k\",\"expected\":1,\"value\":\"v\"}",
        b"{\"id\":11,\"op\":\"put\",\"key\":\"k\",\"value\":\"v\",\"client\":\"c\"}",
        b"{\"id\":12,\"op\":\"put\",\"key\":\"k\",\"value\":\"v\",\"seq\":1}",
        b"{\"id\":13,\"op\":\"put\",\"key\":\"k\",\"value\":\"v\",\"client\":\"c\",\"seq\":-1}",
        b"{\"id\":14,\"op\":\"get\",\"key\":\"k\",\"consistency\":\"sloppy\"}",
        b"{\"id\":{},\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"}",
        b"{\"id\":15,\"op\":7}",
        b"{\"id\":16,\"op\":\"put\",\"key\":\"\xff\xfe\",\"value\":\"v\"}",
        b"{\"op\":\"add_member\",\"id\":4}",
        b"{\"op\":\"add_member\",\"id\":\"four\",\"addr\":\"127.0.0.1:7004\"}",
        b"{\"op\":\"add_member\",\"id\":4,\"addr\":\"no-port\"}",
        b"{\"op\":\"remove_member\",\"id\":-1}",
        b"{\"op\":\"remove_member\",\"id\":4}",
    ];
    for line in bad {
        let mut raw = line.to_vec();
        raw.push(b'\n');
        c.send_raw(&raw).await;
        let response = c.recv().await;
        assert_error(&response, "bad_request");
    }
    // The connection is still open and nothing was stored.
    assert_eq!(
        c.call(json!({"id":"after","op":"get","key":"k"})).await,
        json!({"id":"after","ok":true,"value":null})
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_request_messages_say_what_is_wrong() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let message = |v: Value| v["message"].as_str().unwrap().to_owned();
    assert!(message(c.call(json!({"op":"nope"})).await).contains("unknown variant `nope`"));
    assert!(message(c.call(json!({"op":"put","key":"k","value":7})).await).starts_with("`value`"));
    assert!(message(c.call(json!({"op":"get"})).await).contains("`key`"));
    server.stop().await;
}

#[tokio::test]
async fn oversized_keys_and_values_get_too_large_and_keep_the_connection() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let key_limit = "k".repeat(4096);
    let key_over = "k".repeat(4097);
    let value_limit = "v".repeat(1 << 20);
    let value_over = "v".repeat((1 << 20) + 1);

    assert_eq!(
        c.call(json!({"id":1,"op":"put","key":key_limit,"value":"v"}))
            .await["ok"],
        true
    );
    assert_error(
        &c.call(json!({"id":2,"op":"put","key":key_over,"value":"v"}))
            .await,
        "too_large",
    );
    assert_error(
        &c.call(json!({"id":3,"op":"get","key":key_over})).await,
        "too_large",
    );
    assert_error(
        &c.call(json!({"id":4,"op":"delete","key":key_over})).await,
        "too_large",
    );
    assert_eq!(
        c.call(json!({"id":5,"op":"put","key":"big","value":value_limit}))
            .await["ok"],
        true
    );
    assert_error(
        &c.call(json!({"id":6,"op":"put","key":"big","value":value_over}))
            .await,
        "too_large",
    );
    assert_error(
        &c.call(json!({"id":7,"op":"cas","key":"big","expected":value_limit,"value":value_over}))
            .await,
        "too_large",
    );
    // Multi-byte characters count as the bytes they take.
    let wide = "é".repeat(2049); // 4098 bytes, 2049 characters
    assert_error(
        &c.call(json!({"id":8,"op":"put","key":wide,"value":"v"}))
            .await,
        "too_large",
    );

    // Nothing over the limit was stored; what was within it was.
    let big = c.call(json!({"id":9,"op":"get","key":"big"})).await;
    assert_eq!(big["value"].as_str().unwrap().len(), 1 << 20);
    assert_eq!(
        c.call(json!({"id":10,"op":"get","key":"k".repeat(4096)}))
            .await["value"],
        "v"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_line_over_the_limit_gets_too_large_then_the_connection_closes() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let limit = kv_server::protocol::Limits::default().max_line_bytes;
    assert_eq!(
        c.call(json!({"id":1,"op":"put","key":"k","value":"before"}))
            .await["ok"],
        true
    );
    let mut line = br#"{"op":"put","key":"k","value":""#.to_vec();
    line.resize(limit + 1, b'x');
    line.extend_from_slice(b"\"}\n");
    c.send_raw(&line).await;
    assert_error(&c.recv().await, "too_large");
    c.expect_closed().await;

    // Other clients are unaffected and the oversized put did nothing.
    let mut other = Conn::connect(server.addr).await;
    assert_eq!(
        other.call(json!({"op":"get","key":"k"})).await["value"],
        "before"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_clients_doing_cas_increments_lose_none() {
    // Each client reads the counter and tries to swap in counter+1, retrying on a mismatch
    // with the value the failed cas returned. Any lost update or torn read shows up as a
    // final count below 100 × 20.
    const CLIENTS: u64 = 100;
    const INCREMENTS: u64 = 20;
    let server = Running::standalone().await;
    let addr = server.addr;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            tokio::spawn(async move {
                let mut c = Conn::connect(addr).await;
                let mut current: Option<u64> = None;
                let mut done = 0;
                while done < INCREMENTS {
                    let next = current.map_or(1, |n| n + 1).to_string();
                    let expected = current.map(|n| n.to_string());
                    let r = c
                        .call(json!({"op":"cas","key":"counter","expected":expected,"value":next}))
                        .await;
                    if r["swapped"] == true {
                        current = Some(current.map_or(1, |n| n + 1));
                        done += 1;
                    } else {
                        current = r["value"].as_str().map(|v| v.parse().unwrap());
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let mut c = Conn::connect(addr).await;
    let total = c.call(json!({"op":"get","key":"counter"})).await;
    assert_eq!(total["value"], (CLIENTS * INCREMENTS).to_string());
    server.stop().await;
}

#[tokio::test]
async fn a_client_dying_mid_line_or_mid_pipeline_harms_nobody() {
    let server = Running::standalone().await;
    let mut witness = Conn::connect(server.addr).await;

    // Dies mid-line: the half-written put must not be executed.
    let mut dying = Conn::connect(server.addr).await;
    dying
        .send_raw(br#"{"op":"put","key":"half","value":"written"}"#)
        .await;
    dying.abort();

    // Dies mid-pipeline: sends many requests and never reads the answers.
    let mut greedy = Conn::connect(server.addr).await;
    let mut burst = Vec::new();
    for i in 0..5000 {
        burst.extend(
            format!("{{\"id\":{i},\"op\":\"put\",\"key\":\"p{i}\",\"value\":\"v\"}}\n").bytes(),
        );
    }
    greedy.send_raw(&burst).await;
    greedy.abort();

    assert_eq!(
        witness
            .call(json!({"op":"put","key":"alive","value":"yes"}))
            .await["ok"],
        true
    );
    let mut late = Conn::connect(server.addr).await;
    assert_eq!(
        late.call(json!({"op":"get","key":"alive"})).await["value"],
        "yes"
    );
    // Once serve has returned, every connection has been fully handled: the half line was
    // dropped, not executed.
    let server = server.stop().await;
    assert_eq!(server.store().get("half"), None);
}

#[tokio::test]
async fn shutdown_closes_connected_clients_and_stops_accepting() {
    let server = Running::standalone().await;
    let addr = server.addr;
    let mut a = Conn::connect(addr).await;
    let mut b = Conn::connect(addr).await;
    assert_eq!(
        a.call(json!({"op":"put","key":"k","value":"v"})).await["ok"],
        true
    );
    assert_eq!(b.call(json!({"op":"get","key":"k"})).await["value"], "v");

    server.stop().await;
    a.expect_closed().await;
    b.expect_closed().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

#[tokio::test]
async fn membership_requests_are_refused_by_a_single_server() {
    let server = Running::standalone().await;
    let mut c = Conn::connect(server.addr).await;
    let response = c
        .call(json!({"op":"add_member","id":4,"addr":"127.0.0.1:7004"}))
        .await;
    assert_error(&response, "bad_request");
    assert_eq!(response["id"], 4);
    server.stop().await;
}
