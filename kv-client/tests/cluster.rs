//! `ClusterClient` against scripted nodes: it follows leader hints, asks `status` when it has
//! none, backs off on `unavailable`, retries unknown outcomes with the same `seq`, and gives
//! up at once on errors a retry cannot fix.

mod common;

use std::future::{self, Future};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Scripted, Server, Silent, quick, status};
use futures::future::Either;
use kv_client::{ClusterClient, Error, RetryPolicy};
use kv_server::protocol::{
    Command, Consistency, ErrorCode, Failure, NodeId, Op, Outcome, Reply, Role, Session,
    WriteOutcome,
};
use kv_server::serve::Handler;

#[tokio::test]
async fn follows_a_not_leader_hint_to_the_leader() {
    let leader = Server::standalone().await;
    let hint = leader.addr();
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status => status(Role::Follower, None),
        _ => Err(Failure::not_leader(Some(hint.clone()))),
    }))
    .await;
    let mut client = ClusterClient::new(vec![follower.addr()], quick());
    client.put("k", "v").await.unwrap();
    assert_eq!(client.leader(), Some(leader.addr().as_str()));
    assert_eq!(
        client
            .get("k", Consistency::Linearizable)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

#[tokio::test]
async fn finds_the_leader_through_status_when_given_several_members() {
    let leader = Server::standalone().await;
    let leader_addr = leader.addr();
    let misdirected = Arc::new(Mutex::new(0));
    let counter = misdirected.clone();
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status => status(Role::Follower, Some(leader_addr.clone())),
        _ => {
            *counter.lock().unwrap() += 1;
            Err(Failure::not_leader(Some(leader_addr.clone())))
        }
    }))
    .await;
    let mut client = ClusterClient::new(vec![follower.addr(), leader.addr()], quick());
    assert_eq!(client.find_leader().await, Some(leader.addr()));
    client.put("k", "v").await.unwrap();
    assert_eq!(
        *misdirected.lock().unwrap(),
        0,
        "a request went to the follower"
    );
}

#[tokio::test]
async fn two_nodes_naming_each_other_do_not_make_the_client_spin() {
    // During an election two nodes may each name the other as leader. The client follows a
    // hint or two at once, then backs off: over 300 ms with backoff of at least 1 ms and
    // doubling, that is a few dozen attempts, not thousands.
    let calls = Arc::new(Mutex::new(0u32));
    let b_addr = Arc::new(Mutex::new(String::new()));
    let (seen, b) = (calls.clone(), b_addr.clone());
    let node_b = Server::start(Scripted({
        let seen = calls.clone();
        move |_| {
            *seen.lock().unwrap() += 1;
            Err(Failure::not_leader(None))
        }
    }))
    .await;
    *b.lock().unwrap() = node_b.addr();
    let node_a = Server::start(Scripted(move |op| match op {
        Op::Status => status(Role::Follower, None),
        _ => {
            *seen.lock().unwrap() += 1;
            Err(Failure::not_leader(Some(b.lock().unwrap().clone())))
        }
    }))
    .await;
    let a_addr = node_a.addr();
    let pointing_back = Server::start(Scripted(move |_| {
        Err(Failure::not_leader(Some(a_addr.clone())))
    }))
    .await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![node_a.addr(), pointing_back.addr()], policy);
    let error = client.put("k", "v").await.unwrap_err();
    assert!(error.code().is_some(), "{error}");
    let calls = *calls.lock().unwrap();
    assert!(calls < 300, "{calls} attempts in 300 ms: the client spins");
    drop(node_b);
}

#[tokio::test]
async fn a_silent_member_does_not_keep_the_client_from_a_healthy_one() {
    // The first member accepts connections and never answers; the second is healthy. Asked
    // in turn for the leader, the silent one took the whole deadline (the request timeout is
    // longer) and the write was never sent; asked together, the healthy one answers at once.
    let mut silent = Silent::start().await;
    let healthy = Server::standalone().await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![silent.addr.clone(), healthy.addr()], policy);
    client.put("k", "v").await.unwrap();
    assert_eq!(client.leader(), Some(healthy.addr().as_str()));
    let mut check = ClusterClient::new(vec![healthy.addr()], quick());
    assert_eq!(
        check.get("k", Consistency::Stale).await.unwrap().as_deref(),
        Some("v")
    );
    drop(client);
    let lines = silent.lines_once_closed().await;
    assert!(
        lines.iter().all(|l| l.contains(r#""op":"status""#)),
        "the write went to the silent member too: {lines:?}"
    );
}

#[tokio::test]
async fn a_leader_that_went_silent_is_not_tried_again_at_once() {
    // The leader is paused; a follower still names it (it has not timed out yet) but, by the
    // time the write to the paused leader has timed out, leads itself. The client used to
    // try the silent member a second time first (the next in turn), a second request timeout
    // lost while a leader was there to take the write.
    let mut silent = Silent::start().await;
    let stale = silent.addr.clone();
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status => status(Role::Follower, Some(stale.clone())),
        _ => Ok(Reply::Write(WriteOutcome::Put)),
    }))
    .await;
    let mut client = ClusterClient::new(vec![silent.addr.clone(), follower.addr()], quick());
    client.put("k", "v").await.unwrap();
    drop(client);
    let writes: Vec<_> = silent
        .lines_once_closed()
        .await
        .into_iter()
        .filter(|l| !l.contains(r#""op":"status""#))
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "the write went to the silent member: {writes:?}"
    );
}

#[tokio::test]
async fn the_leader_s_status_is_asked_again_of_the_leader_elected_after_a_silent_one() {
    // The follower names the paused leader at first, and leads itself once asked again (it
    // has been elected meanwhile). `members` used to give up on the silent leader's timeout.
    let silent = Silent::start().await;
    let stale = silent.addr.clone();
    let asked = AtomicBool::new(false);
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status if !asked.swap(true, Ordering::SeqCst) => {
            status(Role::Follower, Some(stale.clone()))
        }
        Op::Status => status(Role::Leader, None),
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    let mut client = ClusterClient::new(vec![silent.addr.clone(), follower.addr()], quick());
    let status = client.leader_status().await.unwrap();
    assert_eq!(status.role, Role::Leader);
}

#[tokio::test]
async fn the_leader_s_status_falls_back_to_a_member_s_view_while_the_leader_is_silent() {
    let silent = Silent::start().await;
    let stale = silent.addr.clone();
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status => status(Role::Follower, Some(stale.clone())),
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    let mut client = ClusterClient::new(vec![silent.addr.clone(), follower.addr()], quick());
    let status = client.leader_status().await.unwrap();
    assert_eq!(status.role, Role::Follower);
}

/// `n` silent members, and a client of them all.
async fn silent_members(n: usize, policy: RetryPolicy) -> (Vec<Silent>, ClusterClient) {
    let silent = futures::future::join_all((0..n).map(|_| Silent::start())).await;
    let addrs = silent.iter().map(|s| s.addr.clone()).collect();
    (silent, ClusterClient::new(addrs, policy))
}

/// Every line the silent members read that is not a `status` request.
async fn non_status_lines(silent: &mut [Silent]) -> Vec<String> {
    let mut lines = Vec::new();
    for node in silent {
        lines.extend(node.lines_once_closed().await);
    }
    lines.retain(|l| !l.contains(r#""op":"status""#));
    lines
}

#[tokio::test]
async fn a_write_never_sent_before_the_deadline_fails_as_nothing_happened() {
    // Three silent members and a request timeout longer than the deadline: the search for
    // the leader takes the whole deadline (and no more), and the write is never sent, so the
    // failure is definite: `unavailable`, not the `timeout` of an unknown outcome.
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        request_timeout: Duration::from_secs(3),
        ..quick()
    };
    let (mut silent, mut client) = silent_members(3, policy).await;
    let started = tokio::time::Instant::now();
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(!error.outcome_unknown(), "{error}");
    // Generous bound: asked in turn, the members took 3 × 3 s.
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    drop(client);
    assert_eq!(non_status_lines(&mut silent).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_write_sent_to_a_silent_member_ends_with_an_unknown_outcome() {
    // The other side of the rule: with a short request timeout the search gives up early,
    // the write goes to the silent members, and then nobody can say whether it happened.
    let policy = RetryPolicy {
        deadline: Duration::from_secs(1),
        request_timeout: Duration::from_millis(200),
        ..quick()
    };
    let (mut silent, mut client) = silent_members(2, policy).await;
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    assert!(error.outcome_unknown(), "{error}");
    drop(client);
    let sent = non_status_lines(&mut silent).await;
    assert!(
        !sent.is_empty() && sent.iter().all(|l| l.contains(r#""op":"put""#)),
        "{sent:?}"
    );
}

#[tokio::test]
async fn skips_a_member_that_is_down() {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down_addr = down.local_addr().unwrap().to_string();
    drop(down);
    let up = Server::standalone().await;
    let mut client = ClusterClient::new(vec![down_addr, up.addr()], quick());
    client.put("k", "v").await.unwrap();
    assert_eq!(
        client
            .get("k", Consistency::Stale)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

#[tokio::test]
async fn retries_unavailable_until_the_cluster_recovers() {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let node = Server::start(Scripted(move |op| {
        let mut n = seen.lock().unwrap();
        *n += 1;
        match op {
            Op::Status => status(Role::Candidate, None),
            _ if *n < 5 => Err(Failure::unavailable("electing")),
            _ => Ok(Reply::Write(WriteOutcome::Put)),
        }
    }))
    .await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    client.put("k", "v").await.unwrap();
    assert_eq!(*calls.lock().unwrap(), 5);
}

#[tokio::test]
async fn an_unknown_outcome_is_retried_with_the_same_session_and_seq() {
    // The node answers `timeout` to the first attempt of each write and records every
    // (client, seq) it sees; retries must repeat the pair, new writes must advance seq.
    let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
    let seen = sessions.clone();
    let node = Server::start(Scripted(move |op| match op {
        Op::Write {
            session: Some(session),
            ..
        } => {
            let mut seen = seen.lock().unwrap();
            let retry = seen.last() == Some(&session);
            seen.push(session);
            if retry {
                Ok(Reply::Write(WriteOutcome::Put))
            } else {
                Err(Failure::timeout("lost"))
            }
        }
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    client.put("a", "1").await.unwrap();
    client.put("b", "2").await.unwrap();
    let sessions = sessions.lock().unwrap();
    let id = client.client_id().to_owned();
    let expected: Vec<Session> = [1, 1, 2, 2]
        .iter()
        .map(|&seq| Session {
            client: id.clone(),
            seq,
        })
        .collect();
    assert_eq!(*sessions, expected);
}

#[tokio::test]
async fn bad_requests_are_not_retried() {
    let calls = Arc::new(Mutex::new(0));
    let seen = calls.clone();
    let node = Server::start(Scripted(move |_| {
        *seen.lock().unwrap() += 1;
        Err(Failure::too_large("key too long"))
    }))
    .await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TooLarge));
    assert_eq!(*calls.lock().unwrap(), 1);
}

/// A node that answers the first attempt of a write `timeout` and every retry with
/// `retry_answer`, recording each write's session.
async fn unknown_then(retry_answer: fn() -> Outcome) -> (Server, Arc<Mutex<Vec<Session>>>) {
    let sessions: Arc<Mutex<Vec<Session>>> = Arc::default();
    let seen = sessions.clone();
    let node = Server::start(Scripted(move |op| match op {
        Op::Write {
            session: Some(session),
            ..
        } => {
            let mut seen = seen.lock().unwrap();
            seen.push(session);
            match seen.len() {
                1 => Err(Failure::timeout("lost")),
                _ => retry_answer(),
            }
        }
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    (node, sessions)
}

#[tokio::test]
async fn a_retry_refused_with_bad_request_after_an_unknown_outcome_is_still_unknown() {
    // A limecached node that no longer keeps a retried (client, seq)'s outcome refuses the
    // retry with `bad_request`: that says nothing of the first attempt, which may have been
    // applied, so reporting the refusal as a definite failure would be a lie.
    let (node, sessions) =
        unknown_then(|| Err(Failure::bad_request("seq 1 is no longer kept"))).await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    assert!(error.outcome_unknown(), "{error}");
    assert!(error.to_string().contains("no longer kept"), "{error}");
    let sessions = sessions.lock().unwrap();
    assert_eq!(sessions.len(), 2, "{sessions:?}");
    assert_eq!(sessions[0], sessions[1]);
}

#[tokio::test]
async fn a_retry_answered_with_nonsense_after_an_unknown_outcome_is_still_unknown() {
    // The retry of a delete is answered as a membership change would be (no `existed`): a
    // protocol error, which settles nothing about the first attempt either.
    let (node, sessions) = unknown_then(|| Ok(Reply::Done)).await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    let error = client.delete("k").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    assert!(error.outcome_unknown(), "{error}");
    assert_eq!(sessions.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn a_first_answer_that_makes_no_sense_leaves_the_outcome_unknown() {
    // The delete reached the node; an answer of the wrong shape says nothing of what it did.
    let node = Server::start(Scripted(|_| Ok(Reply::Done))).await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    let error = client.delete("k").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    assert!(error.outcome_unknown(), "{error}");
}

#[tokio::test]
async fn a_write_whose_outcome_stays_unknown_ends_in_timeout_at_the_deadline() {
    let node = Server::start(Scripted(|_| Err(Failure::timeout("no quorum")))).await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(100),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![node.addr()], policy);
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout));
    assert!(error.outcome_unknown());
}

#[tokio::test]
async fn a_read_that_keeps_failing_reports_the_last_error() {
    let node = Server::start(Scripted(|op| match op {
        Op::Status => status(Role::Candidate, None),
        _ => Err(Failure::unavailable("no leader")),
    }))
    .await;
    // Long enough for the first answer even on a loaded machine.
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let error = failed_read(&node, policy).await;
    assert_eq!(error.code(), Some(ErrorCode::Unavailable));
}

/// A linearizable read through `node` alone, which must fail: its error.
async fn failed_read(node: &Server, policy: RetryPolicy) -> Error {
    let mut client = ClusterClient::new(vec![node.addr()], policy);
    client
        .get("k", Consistency::Linearizable)
        .await
        .unwrap_err()
}

/// A node in an election: its first answer to a read is `unavailable`, and it never answers
/// another.
#[derive(Default)]
struct UnavailableThenSilent {
    answered: AtomicBool,
}

impl Handler for UnavailableThenSilent {
    fn handle(&self, op: Op) -> impl Future<Output = Outcome> + Send + 'static + use<> {
        match op {
            Op::Status => Either::Left(future::ready(status(Role::Candidate, None))),
            _ if !self.answered.swap(true, Ordering::SeqCst) => {
                Either::Left(future::ready(Err(Failure::unavailable("no leader"))))
            }
            _ => Either::Right(future::pending()),
        }
    }
}

#[tokio::test]
async fn an_attempt_cut_short_by_the_deadline_does_not_hide_the_answer_before_it() {
    let node = Server::start(UnavailableThenSilent::default()).await;
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        request_timeout: Duration::from_secs(10),
        ..quick()
    };
    let error = failed_read(&node, policy).await;
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
}

#[tokio::test]
async fn typed_operations_round_trip_through_a_real_server() {
    let server = Server::standalone().await;
    let mut client = ClusterClient::new(vec![server.addr()], quick());
    assert_eq!(
        client.get("k", Consistency::Linearizable).await.unwrap(),
        None
    );
    client.put("k", "v").await.unwrap();
    use kv_server::protocol::CasOutcome;
    assert_eq!(
        client.cas("k", Some("x"), "y").await.unwrap(),
        CasOutcome::Mismatch {
            current: Some("v".into())
        }
    );
    assert_eq!(
        client.cas("k", Some("v"), "w").await.unwrap(),
        CasOutcome::Swapped
    );
    assert_eq!(
        client.cas("new", None, "1").await.unwrap(),
        CasOutcome::Swapped
    );
    assert!(client.delete("k").await.unwrap());
    assert!(!client.delete("k").await.unwrap());
    assert_eq!(
        client.status_of(&server.addr()).await.unwrap().role,
        Role::Standalone
    );
    let error = client
        .add_member(NodeId(2), "127.0.0.1:1")
        .await
        .unwrap_err();
    assert!(matches!(
        error,
        Error::Server(Failure {
            code: ErrorCode::BadRequest,
            ..
        })
    ));
}

#[tokio::test]
async fn a_node_that_never_answers_is_abandoned_after_the_request_timeout() {
    // Accepts connections but never reads: every request times out, and a write's outcome
    // is then unknown.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        request_timeout: Duration::from_millis(50),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![addr], policy);
    let error = client
        .execute(Op::Write {
            command: Command::Delete { key: "k".into() },
            session: None,
        })
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Timeout), "{error}");
    drop(silent);
}

#[tokio::test]
async fn a_search_that_finds_no_leader_says_how_many_members_answered() {
    let candidate = Server::start(Scripted(|op| match op {
        Op::Status => status(Role::Candidate, None),
        _ => Err(Failure::unavailable("no leader")),
    }))
    .await;
    let silent = Silent::start().await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = closed.local_addr().unwrap().to_string();
    drop(closed);
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        request_timeout: Duration::from_secs(10),
        ..quick()
    };
    let members = vec![candidate.addr(), silent.addr.clone(), down];
    let mut client = ClusterClient::new(members, policy);
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    let said = error.to_string();
    assert!(
        said.contains("no member named the leader in time (1 of 3 answered, and knew of none)"),
        "{said}"
    );
}

#[tokio::test]
async fn a_member_that_answered_says_more_than_one_that_cannot_be_reached() {
    // Eight of nine members down: the survivor's answer is what the user needs, whichever
    // member the last attempt went to (most likely one that is down).
    let survivor = Server::start(Scripted(|op| match op {
        Op::Status => status(Role::Candidate, None),
        _ => Err(Failure::unavailable("no leader for 5 election timeouts")),
    }))
    .await;
    let down = || {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        closed.local_addr().unwrap().to_string()
    };
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let mut members: Vec<String> = (0..8).map(|_| down()).collect();
    members.insert(1, survivor.addr());
    let mut client = ClusterClient::new(members, policy);
    let error = client.put("k", "v").await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(error.to_string().contains("no leader for 5"), "{error}");
}

/// A node of `role` that answers every transfer with `unavailable`, saying `says`, and
/// counts them in `tries`.
async fn refusing_transfers(role: Role, says: &'static str, tries: Arc<Mutex<usize>>) -> Server {
    Server::start(Scripted(move |op| match op {
        Op::Status => status(role, None),
        Op::TransferLeader { .. } => {
            *tries.lock().unwrap() += 1;
            Err(Failure::unavailable(says))
        }
        other => panic!("unexpected {other:?}"),
    }))
    .await
}

#[tokio::test]
async fn a_transfer_refused_with_unavailable_is_not_retried() {
    // Each try would stop the leader's writes again (for an election timeout, when the
    // target is slow to take over).
    let tries = Arc::new(Mutex::new(0));
    let says = "node 2 has not answered the leader";
    let leader = refusing_transfers(Role::Leader, says, tries.clone()).await;
    let mut client = ClusterClient::new(vec![leader.addr()], quick());
    let error = client.transfer_leader(NodeId(2)).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::Unavailable), "{error}");
    assert!(error.to_string().contains("has not answered"), "{error}");
    assert_eq!(*tries.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_stale_read_is_served_by_whichever_member_answers_while_another_is_silent() {
    // The silent member is listed first; asked in turn, it would hold the read for the
    // whole deadline.
    let silent = Silent::start().await;
    let follower = Server::start(Scripted(|op| match op {
        Op::Status => status(Role::Candidate, None),
        Op::Get {
            consistency: Consistency::Stale,
            ..
        } => Ok(Reply::Value(Some("old".into()))),
        other => Err(Failure::unavailable(format!("no leader for {other:?}"))),
    }))
    .await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![silent.addr.clone(), follower.addr()], policy);
    let read = tokio::time::timeout(Duration::from_secs(4), client.get("k", Consistency::Stale));
    let value = read.await.expect("answered before the deadline");
    assert_eq!(value.unwrap().as_deref(), Some("old"));
}

#[tokio::test]
async fn a_stale_read_reconnects_to_a_member_whose_connection_broke() {
    // A member that answers one request per connection and then closes it, as a node
    // restarted between two reads leaves the client's cached connection.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        while let Ok((stream, _)) = listener.accept().await {
            let mut stream = BufReader::new(stream);
            let mut line = String::new();
            if stream.read_line(&mut line).await.unwrap_or(0) == 0 {
                continue;
            }
            let request: serde_json::Value = serde_json::from_str(&line).unwrap();
            let answer = serde_json::json!({"id": request["id"], "ok": true, "value": "v"});
            let _ = stream
                .get_mut()
                .write_all(format!("{answer}\n").as_bytes())
                .await;
        }
    });
    let mut client = ClusterClient::new(vec![addr], quick());
    for read in 0..3 {
        let value = client.get("k", Consistency::Stale).await;
        assert_eq!(value.unwrap().as_deref(), Some("v"), "read {read}");
    }
}

#[tokio::test]
async fn a_transfer_answered_unavailable_by_a_node_that_is_not_the_leader_is_retried() {
    // An election under way: the leader's refusals are final, a candidate's are not.
    let tries = Arc::new(Mutex::new(0));
    let says = "an election is under way; retry shortly";
    let mut candidates = Vec::new();
    for _ in 0..2 {
        candidates.push(refusing_transfers(Role::Candidate, says, tries.clone()).await);
    }
    let policy = RetryPolicy {
        deadline: Duration::from_millis(300),
        ..quick()
    };
    let addrs = candidates.iter().map(Server::addr).collect();
    let mut client = ClusterClient::new(addrs, policy);
    let error = client.transfer_leader(NodeId(2)).await.unwrap_err();
    assert!(
        error.to_string().contains("election is under way"),
        "{error}"
    );
    assert!(*tries.lock().unwrap() > 1, "tried once");
}

#[tokio::test]
async fn a_stale_read_asks_again_a_member_that_failed_while_another_stays_silent() {
    // The first round ends once the silent member's request timeout passes; before, it
    // lasted until the deadline, and the member that had failed was not asked again.
    let asked = Arc::new(Mutex::new(0));
    let counted = asked.clone();
    let restarting = Server::start(Scripted(move |op| match op {
        Op::Get { .. } => {
            let mut n = counted.lock().unwrap();
            *n += 1;
            if *n == 1 {
                Err(Failure::unavailable("starting"))
            } else {
                Ok(Reply::Value(Some("v".into())))
            }
        }
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    let silent = Silent::start().await;
    let policy = RetryPolicy {
        deadline: Duration::from_secs(5),
        request_timeout: Duration::from_millis(200),
        ..quick()
    };
    let mut client = ClusterClient::new(vec![silent.addr.clone(), restarting.addr()], policy);
    let value = client.get("k", Consistency::Stale).await;
    assert_eq!(value.unwrap().as_deref(), Some("v"));
    assert_eq!(*asked.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_stale_read_refused_as_malformed_is_not_asked_again() {
    let asked = Arc::new(Mutex::new(0));
    let counted = asked.clone();
    let node = Server::start(Scripted(move |_| {
        *counted.lock().unwrap() += 1;
        Err(Failure::too_large("key longer than 4096 bytes"))
    }))
    .await;
    let mut client = ClusterClient::new(vec![node.addr()], quick());
    let error = client.get("k", Consistency::Stale).await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::TooLarge), "{error}");
    assert_eq!(*asked.lock().unwrap(), 1);
}

#[tokio::test]
async fn a_transfer_goes_to_the_leader_once_a_follower_names_it_and_its_refusal_is_final() {
    // No member knows a leader at first; then the follower names it. A follower forwards a
    // transfer, so the leader's refusal would come back as the follower's, and be retried.
    let (leader_tries, follower_tries) = (Arc::new(Mutex::new(0)), Arc::new(Mutex::new(0)));
    let says = "node 3 did not take over";
    let leader = refusing_transfers(Role::Leader, says, leader_tries.clone()).await;
    let leader_addr = leader.addr();
    let statuses = Arc::new(Mutex::new(0));
    let counted = follower_tries.clone();
    let follower = Server::start(Scripted(move |op| match op {
        Op::Status => {
            let mut n = statuses.lock().unwrap();
            *n += 1;
            let knows = (*n > 1).then(|| leader_addr.clone());
            status(Role::Follower, knows)
        }
        Op::TransferLeader { .. } => {
            *counted.lock().unwrap() += 1;
            Err(Failure::unavailable(says))
        }
        other => panic!("unexpected {other:?}"),
    }))
    .await;
    // The leader is listed but silent about its role at first: only the follower is given.
    let mut client = ClusterClient::new(vec![follower.addr(), "127.0.0.1:9".into()], quick());
    let error = client.transfer_leader(NodeId(3)).await.unwrap_err();
    assert!(error.to_string().contains("did not take over"), "{error}");
    assert_eq!(*leader_tries.lock().unwrap(), 1);
    assert!(*follower_tries.lock().unwrap() <= 1);
}
