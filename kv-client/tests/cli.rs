//! The `kv-client` binary as a user runs it, against a real kv-server.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Scripted;
use kv_server::protocol::{Failure, Member, NodeId, Op, Reply, Role, Status};

fn kv_client(addr: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kv-client"))
        .args(["--addr", addr, "--timeout", "2"])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn every_command_prints_what_a_person_wants_and_exits_accordingly() {
    let addr = common::background_standalone();
    let run = |args: &[&str]| {
        let out = kv_client(&addr, args);
        (stdout(&out), out.status.code().unwrap())
    };
    assert_eq!(run(&["get", "k"]), ("(nil)\n".into(), 0));
    assert_eq!(run(&["put", "k", "hello world"]), ("OK\n".into(), 0));
    assert_eq!(run(&["get", "k"]), ("hello world\n".into(), 0));
    assert_eq!(run(&["get", "--stale", "k"]), ("hello world\n".into(), 0));
    assert_eq!(
        run(&["cas", "k", "nope", "x"]),
        ("not swapped: the key holds \"hello world\"\n".into(), 3)
    );
    assert_eq!(
        run(&["cas", "k", "hello world", "x"]),
        ("swapped\n".into(), 0)
    );
    assert_eq!(
        run(&["cas", "--absent", "k", "y"]),
        ("not swapped: the key holds \"x\"\n".into(), 3)
    );
    assert_eq!(run(&["delete", "k"]), ("deleted\n".into(), 0));
    assert_eq!(run(&["delete", "k"]), ("(not found)\n".into(), 0));
    assert_eq!(run(&["cas", "--absent", "k", "y"]), ("swapped\n".into(), 0));
    assert_eq!(run(&["cas", "--absent", "missing", "y"]).1, 0);
    assert_eq!(run(&["cas", "k", "gone", "z"]).1, 3);
}

#[test]
fn add_member_asks_the_cluster_at_addr_not_the_new_node_s_address() {
    let addr = common::background_standalone();
    // Nothing listens at the new node's address; the request must go to --addr, whose
    // answer (a standalone server has no members) is what the user sees.
    let out = kv_client(&addr, &["add-member", "2", "127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("single server without members"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn members_through_a_removed_node_is_an_error_not_its_stale_list() {
    // Node 1 missed the entry that removed it: its list still names it, and it knows no
    // leader, so its view is the only one kv-client gets.
    let member = Member {
        id: NodeId(1),
        addr: "127.0.0.1:7001".into(),
        voter: true,
    };
    let (code, err) = members_through_a_lone_view(vec![member], true);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("node 1 was removed"), "{err}");
    // A node that knows of no members (joining): an error too, not an empty table.
    let (code, err) = members_through_a_lone_view(Vec::new(), false);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("knows of no members yet"), "{err}");
}

/// `kv-client members` through a node 1 that knows no leader, with `members` and `removed`
/// in its status: the exit status and stderr.
fn members_through_a_lone_view(members: Vec<Member>, removed: bool) -> (Option<i32>, String) {
    let addr = common::background(Scripted(move |op| match op {
        Op::Status => Ok(Reply::Status(Box::new(Status {
            id: Some(NodeId(1)),
            role: Role::Follower,
            term: Some(3),
            members: Some(members.clone()),
            removed,
            ..Status::standalone()
        }))),
        other => panic!("unexpected {other:?}"),
    }));
    let out = kv_client(&addr, &["members"]);
    (out.status.code(), stderr(&out))
}

#[test]
fn members_of_a_single_server_is_an_error_not_an_empty_table() {
    let addr = common::background_standalone();
    let out = kv_client(&addr, &["members"]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("single server without members"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn remove_member_does_not_claim_a_removal_it_cannot_know_of() {
    // A leader answers `done` whether the node was a member or not (the removal is
    // idempotent), so "node 77 removed" was false for a node that never was one.
    let addr = common::background(Scripted(|op| match op {
        Op::RemoveMember { id: NodeId(77) } => Ok(Reply::Done),
        other => Err(Failure::bad_request(format!("unexpected {other:?}"))),
    }));
    let out = kv_client(&addr, &["remove-member", "77"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "node 77 removed (or it was not a member)\n");
}

#[test]
fn status_prints_a_table() {
    let addr = common::background_standalone();
    let out = kv_client(&addr, &["status"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("ID  ADDRESS"), "{text}");
    let row = lines.next().unwrap();
    assert!(row.contains(&addr) && row.contains("standalone"), "{text}");
}

#[test]
fn errors_are_one_line_on_stderr_with_a_failure_exit() {
    let addr = common::background_standalone();
    let long_key = "k".repeat(5000);
    let out = kv_client(&addr, &["get", &long_key]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(
        stderr(&out).starts_with("kv-client: too_large"),
        "{}",
        stderr(&out)
    );
    assert!(stdout(&out).is_empty());

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let out = Command::new(env!("CARGO_BIN_EXE_kv-client"))
        .args(["--addr", &closed_addr, "--timeout", "0.2", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr(&out).lines().count(), 1);
    assert!(stderr(&out).contains("cannot connect"), "{}", stderr(&out));
}

#[test]
fn a_put_reaches_the_healthy_member_past_a_silent_one() {
    // The first member accepts connections (the kernel completes them; nothing accepts or
    // answers) and never answers. With a request timeout (3 s) longer than --timeout, asking
    // the members for the leader in turn used up the deadline and the put was never sent.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let healthy = common::background_standalone();
    let out = kv_client(&format!("{silent_addr},{healthy}"), &["put", "k", "v"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "OK\n");
    assert_eq!(stdout(&kv_client(&healthy, &["get", "k"])), "v\n");
    drop(silent);
}

#[test]
fn usage_errors_exit_with_2() {
    let addr = common::background_standalone();
    assert_eq!(kv_client(&addr, &["cas", "k", "v"]).status.code(), Some(2));
    assert_eq!(
        kv_client(&addr, &["cas", "--absent", "k", "old", "new"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(kv_client(&addr, &["frobnicate"]).status.code(), Some(2));
    assert_eq!(
        kv_client(&addr, &["bench", "--clients", "0"]).status.code(),
        Some(2)
    );
    assert_eq!(
        kv_client(
            &addr,
            &["bench", "--workload", "mixed", "--read-ratio", "2"]
        )
        .status
        .code(),
        Some(2)
    );
}

#[test]
fn an_argument_out_of_range_is_a_usage_error_saying_why() {
    let addr = common::background_standalone();
    let cases: [(&[&str], &str); 6] = [
        (&["--timeout", "-1", "get", "k"], "positive"),
        (&["--timeout", "0", "get", "k"], "positive"),
        // Once a panic: a deadline past what the clock can hold.
        (
            &["--timeout", "1e19", "get", "k"],
            "at most 31536000 seconds",
        ),
        (&["--timeout", "1e19", "status"], "at most 31536000 seconds"),
        (&["bench", "--duration", "-3"], "positive"),
        // Refused by the leader before, with exit status 1.
        (&["add-member", "9", "nohostport"], "has no port"),
    ];
    for (args, says) in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_kv-client"))
            .args(["--addr", &addr])
            .args(args)
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
}

#[test]
fn a_malformed_addr_entry_is_a_usage_error_naming_it() {
    // Accepted, these failed only at run time, after retries, with exit 1 ("cannot connect
    // to : invalid socket address"). The well-formed entries name a closed port, so reaching
    // the network would end in exit 1 too, never 2.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ok = closed.local_addr().unwrap().to_string();
    drop(closed);
    for (addr, named) in [
        (String::new(), "''".to_owned()),
        (format!("{ok},"), "''".to_owned()),
        (format!("{ok},,{ok}"), "''".to_owned()),
        (format!("{ok},localhost"), "'localhost'".to_owned()),
        ("127.0.0.1:x".to_owned(), "'127.0.0.1:x'".to_owned()),
        ("127.0.0.1:0".to_owned(), "'127.0.0.1:0'".to_owned()),
        (":7000".to_owned(), "':7000'".to_owned()),
    ] {
        let out = kv_client(&addr, &["get", "k"]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "--addr {addr:?}: {err}");
        assert!(
            err.contains(&format!("invalid value {named} for '--addr")),
            "{err}"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_kv-client"))
        .env("KV_ADDR", format!("{ok},"))
        .args(["--timeout", "0.2", "get", "k"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn bench_reports_a_table_and_a_json_line() {
    let addr = common::background_standalone();
    let out = kv_client(
        &addr,
        &[
            "bench",
            "--requests",
            "2000",
            "--clients",
            "4",
            "--pipeline",
            "4",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let table = stdout(&out);
    assert!(table.contains("2000 ok, 0 failed"), "{table}");
    for column in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(table.contains(column), "{table}");
    }

    let out = kv_client(
        &addr,
        &[
            "bench",
            "--requests",
            "3000",
            "--clients",
            "3",
            "--workload",
            "mixed",
            "--read-ratio",
            "0.5",
            "--keys",
            "50",
            "--value-size",
            "10",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 1, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(report["ok"], 3000);
    assert_eq!(report["failed"], serde_json::json!({}));
    assert_eq!(report["workload"], "mixed");
    assert_eq!(report["clients"], 3);
    assert!(report["ops_per_sec"].as_f64().unwrap() > 0.0);
    let p = |name: &str| report[name].as_u64().unwrap();
    assert!(
        p("p50_us") <= p("p90_us")
            && p("p90_us") <= p("p99_us")
            && p("p99_us") <= p("p999_us")
            && p("p999_us") <= p("max_us")
    );

    // The preload wrote every key, so a get run finds values: the server holds 50 keys.
    let out = kv_client(&addr, &["get", "key:000000000049"]);
    assert_eq!(stdout(&out), format!("{}\n", "x".repeat(10)));
}

#[test]
fn bench_for_a_duration_stops_by_itself() {
    let addr = common::background_standalone();
    let out = kv_client(
        &addr,
        &["bench", "--duration", "0.3", "--clients", "2", "--json"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(report["ok"].as_u64().unwrap() > 0);
    assert!(report["seconds"].as_f64().unwrap() >= 0.3);
}

/// Runs `kv-client --addr addr args` and waits for it at most `limit`: its output and how
/// long it took, or a failed test naming the command (the process killed) if it overran.
fn kv_client_within(addr: &str, args: &[&str], limit: Duration) -> (Output, Duration) {
    let started = Instant::now();
    let child = Command::new(env!("CARGO_BIN_EXE_kv-client"))
        .args(["--addr", addr])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => (output.unwrap(), started.elapsed()),
        Err(_) => {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            panic!("kv-client {args:?} still running after {limit:?}");
        }
    }
}

#[test]
fn status_waits_for_each_node_as_long_as_timeout_says() {
    // A node that accepts connections and never answers, as one stopped with SIGSTOP. status
    // waited a fixed 3 s whatever --timeout said (1 or 10), and members 3 s after its search.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let limit = Duration::from_secs(10);
    let (out, took) = kv_client_within(&addr, &["--timeout", "1.5", "status"], limit);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "kv-client: no answer within 1.5s\n");
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_millis(2800),
        "{took:?}"
    );
    let (out, took) = kv_client_within(&addr, &["--timeout", "0.5", "members"], limit);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(stderr(&out), "kv-client: no answer within 500ms\n");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    drop(silent);
}

#[test]
fn bench_gives_each_request_timeout_seconds_and_reports() {
    // Against a node that never answers, bench waited for the first answer forever. Each
    // request now fails after --timeout (0.5 s, retries included), counted as `timeout` (a
    // put whose outcome is unknown), and the report is printed: 4 requests over 2 clients,
    // two after another on each, take about 1 s.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let args = [
        "--timeout",
        "0.5",
        "bench",
        "--clients",
        "2",
        "--requests",
        "4",
        "--json",
    ];
    let (out, took) = kv_client_within(&addr, &args, Duration::from_secs(10));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["ok"], 0);
    assert_eq!(report["failed"], serde_json::json!({"timeout": 4}));
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(silent);
}
