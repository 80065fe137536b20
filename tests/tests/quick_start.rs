//! The README's quick start, run as a newcomer would: start kv-server, talk to it with
//! kv-client, stop it with Ctrl-C (SIGINT).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn quick_start_from_the_readme_works() {
    let mut server = Command::new(tests::binary("kv-server"))
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(server.stderr.take().unwrap());
    let addr = stderr
        .lines()
        .map(Result::unwrap)
        .find_map(|line| {
            Some(
                line.split("addr=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .to_owned(),
            )
        })
        .expect("kv-server logs the address it listens on");

    let client = |args: &[&str]| {
        let out = Command::new(tests::binary("kv-client"))
            .arg("--addr")
            .arg(&addr)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(client(&["put", "greeting", "hello"]), "OK\n");
    assert_eq!(client(&["get", "greeting"]), "hello\n");
    assert_eq!(
        client(&["cas", "greeting", "hello", "bonjour"]),
        "swapped\n"
    );
    assert_eq!(client(&["delete", "greeting"]), "deleted\n");
    assert!(client(&["status"]).contains("standalone"));

    let interrupted = Command::new("kill")
        .args(["-INT", &server.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    assert!(
        server.wait().unwrap().success(),
        "kv-server should exit 0 on Ctrl-C"
    );
}
