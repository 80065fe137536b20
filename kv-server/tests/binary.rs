//! The `kv-server` binary as a user runs it: starts, serves, stops cleanly on SIGTERM, and
//! fails with one clear line when it cannot start.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};

fn kv_server() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kv-server"));
    cmd.env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Reads the log until the "listening" line and returns the address it names.
fn listening_addr(stderr: &mut impl BufRead) -> String {
    for line in stderr.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.split("addr=").nth(1) {
            return rest.split_whitespace().next().unwrap().to_owned();
        }
    }
    panic!("kv-server exited without logging its address");
}

/// Starts kv-server on port 0; returns it, its log, and the address it logged.
fn start_on_a_free_port() -> (Child, BufReader<ChildStderr>, String) {
    let mut child = kv_server()
        .args(["--listen", "127.0.0.1:0"])
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let addr = listening_addr(&mut stderr);
    (child, stderr, addr)
}

fn sigterm(child: &Child) {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
}

#[test]
fn serves_then_stops_cleanly_on_sigterm() {
    let (mut child, stderr, addr) = start_on_a_free_port();

    let mut conn = TcpStream::connect(&addr).unwrap();
    conn.write_all(b"{\"id\":1,\"op\":\"put\",\"key\":\"k\",\"value\":\"v\"}\n{\"id\":2,\"op\":\"get\",\"key\":\"k\"}\n").unwrap();
    let mut responses = BufReader::new(conn.try_clone().unwrap()).lines();
    assert_eq!(responses.next().unwrap().unwrap(), r#"{"id":1,"ok":true}"#);
    assert_eq!(
        responses.next().unwrap().unwrap(),
        r#"{"id":2,"ok":true,"value":"v"}"#
    );

    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    // The connected client saw its connection closed, not reset mid-response.
    assert!(responses.next().is_none());
    let rest: Vec<String> = stderr.lines().map(Result::unwrap).collect();
    assert!(
        rest.iter().any(|l| l.contains("kv-server stopped")),
        "{rest:?}"
    );
}

#[test]
fn a_closed_stderr_does_not_kill_the_server() {
    let (mut child, stderr, _) = start_on_a_free_port();
    drop(stderr);
    // Shutting down logs two lines to the closed pipe; it must still exit cleanly.
    sigterm(&child);
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status with stderr closed: {status}");
}

#[test]
fn a_busy_port_is_one_clear_line_and_a_failure_exit() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = kv_server().args(["--listen", &addr]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("cannot listen on") && stderr.contains(&addr),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let output = kv_server().args(["--listen"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = kv_server()
        .args(["--max-key-bytes", "lots"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--max-key-bytes"));
}
