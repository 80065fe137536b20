//! Parsing every request shape and every error path; responses written and read back.

use serde_json::{Value, json};

use super::*;

fn parse(v: Value) -> Result<Request, (Option<RequestId>, Failure)> {
    Request::parse(&serde_json::to_vec(&v).unwrap(), &Limits::default())
}

fn code(v: Value) -> ErrorCode {
    parse(v).expect_err("should be rejected").1.code
}

#[test]
fn parses_every_operation() {
    let put = Command::Put {
        key: "k".into(),
        value: "v".into(),
    };
    let cases = [
        (
            json!({"op":"get","key":"k"}),
            Op::Get {
                key: "k".into(),
                consistency: Consistency::Linearizable,
            },
        ),
        (
            json!({"op":"get","key":"k","consistency":"stale"}),
            Op::Get {
                key: "k".into(),
                consistency: Consistency::Stale,
            },
        ),
        (
            json!({"op":"put","key":"k","value":"v"}),
            Op::Write {
                command: put.clone(),
                session: None,
            },
        ),
        (
            json!({"op":"put","key":"k","value":"v","client":"c","seq":9}),
            Op::Write {
                command: put,
                session: Some(Session {
                    client: "c".into(),
                    seq: 9,
                }),
            },
        ),
        (
            json!({"op":"delete","key":"k"}),
            Op::Write {
                command: Command::Delete { key: "k".into() },
                session: None,
            },
        ),
        (
            json!({"op":"cas","key":"k","expected":null,"value":"v"}),
            Op::Write {
                command: Command::Cas {
                    key: "k".into(),
                    expected: None,
                    value: "v".into(),
                },
                session: None,
            },
        ),
        (
            json!({"op":"cas","key":"k","expected":"o","value":"v"}),
            Op::Write {
                command: Command::Cas {
                    key: "k".into(),
                    expected: Some("o".into()),
                    value: "v".into(),
                },
                session: None,
            },
        ),
        (json!({"op":"status"}), Op::Status),
        (
            json!({"op":"add_member","id":4,"addr":"127.0.0.1:7004"}),
            Op::AddMember {
                id: NodeId(4),
                addr: "127.0.0.1:7004".into(),
            },
        ),
        (
            json!({"op":"remove_member","id":4}),
            Op::RemoveMember { id: NodeId(4) },
        ),
        (
            json!({"op":"transfer_leader","id":2}),
            Op::TransferLeader { id: NodeId(2) },
        ),
    ];
    for (line, op) in cases {
        assert_eq!(parse(line.clone()).unwrap().op, op, "{line}");
    }
}

#[test]
fn unknown_fields_are_ignored_for_forward_compatibility() {
    assert_eq!(
        parse(json!({"op":"status","trace":"x"})).unwrap().op,
        Op::Status
    );
}

#[test]
fn every_malformed_shape_is_bad_request_with_the_id_when_readable() {
    let cases = [
        json!({"id":1,"op":"bogus"}),
        json!({"id":1}),
        json!({"id":1,"op":"put","key":"k"}),
        json!({"id":1,"op":"put","value":"v"}),
        json!({"id":1,"op":"put","key":1,"value":"v"}),
        json!({"id":1,"op":"cas","key":"k","value":"v"}),
        json!({"id":1,"op":"put","key":"k","value":"v","client":"c"}),
        json!({"id":1,"op":"put","key":"k","value":"v","seq":3}),
        json!({"id":1,"op":"put","key":"k","value":"v","client":"c","seq":"3"}),
        json!({"id":1,"op":"get","key":"k","consistency":"fresh"}),
        json!({"id":1,"op":{"put":null},"key":"k","value":"v"}),
        json!({"id":1,"op":"get","key":"k","consistency":{"stale":null}}),
        json!({"id":1,"op":"get","key":"k","consistency":null}),
    ];
    for line in cases {
        let (id, failure) = parse(line.clone()).expect_err("should be rejected");
        assert_eq!(failure.code, ErrorCode::BadRequest, "{line}");
        assert_eq!(id, Some(RequestId::from(1)), "{line}");
    }
    let (id, failure) = Request::parse(b"{nope", &Limits::default()).unwrap_err();
    assert_eq!((id, failure.code), (None, ErrorCode::BadRequest));
    // A field of the wrong type is named, not called a syntax error.
    for (line, says) in [
        (
            json!({"op":5}),
            "`op`: invalid type: integer `5`, expected a string",
        ),
        (
            json!({"op":"get","key":"k","consistency":true}),
            "`consistency`: invalid type: boolean `true`, expected a string",
        ),
        (json!({"op":"bogus"}), "`op`: unknown variant `bogus`"),
    ] {
        let (_, failure) = parse(line.clone()).unwrap_err();
        assert!(failure.message.starts_with(says), "{line}: {failure:?}");
    }
    for id in [json!(true), json!(null), json!([1]), json!({"n":1})] {
        let (echo, failure) = parse(json!({"id":id,"op":"status"})).unwrap_err();
        assert_eq!((echo, failure.code), (None, ErrorCode::BadRequest), "{id}");
        assert!(
            failure
                .message
                .contains("`id` must be a number or a string"),
            "{failure:?}"
        );
    }
}

#[test]
fn membership_ids_must_be_positive_integers_and_addrs_host_port() {
    assert_eq!(
        code(json!({"op":"remove_member","id":0})),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(json!({"op":"remove_member","id":1.5})),
        ErrorCode::BadRequest
    );
    assert_eq!(code(json!({"op":"remove_member"})), ErrorCode::BadRequest);
    assert_eq!(
        code(json!({"op":"transfer_leader","id":"2"})),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(json!({"op":"add_member","id":2,"addr":":7000"})),
        ErrorCode::BadRequest
    );
    assert_eq!(
        code(json!({"op":"add_member","id":2,"addr":"h:99999"})),
        ErrorCode::BadRequest
    );
    assert!(parse(json!({"op":"add_member","id":2,"addr":"node-2.example:7000"})).is_ok());
}

#[test]
fn limits_are_inclusive_and_apply_to_every_string_that_is_stored_or_compared() {
    let limits = Limits {
        max_key_bytes: 3,
        max_value_bytes: 5,
        max_line_bytes: 1000,
    };
    let p = |v: Value| Request::parse(&serde_json::to_vec(&v).unwrap(), &limits);
    assert!(p(json!({"op":"put","key":"kkk","value":"vvvvv"})).is_ok());
    let too_large = [
        json!({"op":"put","key":"kkkk","value":"v"}),
        json!({"op":"put","key":"k","value":"vvvvvv"}),
        json!({"op":"get","key":"kkkk"}),
        json!({"op":"delete","key":"kkkk"}),
        json!({"op":"cas","key":"k","expected":"vvvvvv","value":"v"}),
        json!({"op":"put","key":"k","value":"v","client":"cccc","seq":1}),
    ];
    for line in too_large {
        assert_eq!(
            p(line.clone()).unwrap_err().1.code,
            ErrorCode::TooLarge,
            "{line}"
        );
    }
}

#[test]
fn requests_round_trip_through_their_wire_form() {
    let requests = [
        Request {
            id: Some(RequestId::from(1)),
            op: Op::Get {
                key: "k".into(),
                consistency: Consistency::Stale,
            },
            forwarded: false,
        },
        Request {
            id: Some(RequestId::string("x")),
            op: Op::Write {
                command: Command::Cas {
                    key: "k".into(),
                    expected: None,
                    value: "v".into(),
                },
                session: Some(Session {
                    client: "c".into(),
                    seq: 2,
                }),
            },
            forwarded: false,
        },
        Request {
            id: None,
            op: Op::Write {
                command: Command::Delete { key: "k".into() },
                session: None,
            },
            forwarded: true,
        },
        Request {
            id: Some(RequestId::from(9)),
            op: Op::RemoveMember { id: NodeId(9) },
            forwarded: false,
        },
        Request {
            id: Some(RequestId::from(2)),
            op: Op::TransferLeader { id: NodeId(2) },
            forwarded: false,
        },
    ];
    for request in requests {
        let line = serde_json::to_vec(&request).unwrap();
        assert_eq!(Request::parse(&line, &Limits::default()).unwrap(), request);
        assert_eq!(
            String::from_utf8_lossy(&line).contains(r#""forwarded":true"#),
            request.forwarded,
            "the marker is written only when set"
        );
    }
}

#[test]
fn responses_are_written_as_the_contract_says() {
    let id = Some(RequestId::from(1));
    let cases = [
        (
            Ok(Reply::Value(None)),
            json!({"id":1,"ok":true,"value":null}),
        ),
        (
            Ok(Reply::Write(WriteOutcome::Put)),
            json!({"id":1,"ok":true}),
        ),
        (
            Ok(Reply::Write(WriteOutcome::Delete { existed: false })),
            json!({"id":1,"ok":true,"existed":false}),
        ),
        (
            Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Swapped))),
            json!({"id":1,"ok":true,"swapped":true}),
        ),
        (
            Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Mismatch {
                current: None,
            }))),
            json!({"id":1,"ok":true,"swapped":false,"value":null}),
        ),
        (
            Err(Failure::not_leader(None)),
            json!({"id":1,"ok":false,"error":"not_leader","message":"not the leader, and the leader is unknown","leader":null}),
        ),
        (
            Err(Failure::timeout("t")),
            json!({"id":1,"ok":false,"error":"timeout","message":"t"}),
        ),
    ];
    for (outcome, expected) in cases {
        let response = Response {
            id: id.clone(),
            outcome,
        };
        assert_eq!(serde_json::to_value(&response).unwrap(), expected);
    }
}

#[test]
fn responses_read_back_into_the_same_outcome() {
    let cases = [
        (OpKind::Get, Ok(Reply::Value(Some("v".into())))),
        (OpKind::Put, Ok(Reply::Write(WriteOutcome::Put))),
        (
            OpKind::Delete,
            Ok(Reply::Write(WriteOutcome::Delete { existed: true })),
        ),
        (
            OpKind::Cas,
            Ok(Reply::Write(WriteOutcome::Cas(CasOutcome::Mismatch {
                current: Some("c".into()),
            }))),
        ),
        (
            OpKind::Status,
            Ok(Reply::Status(Box::new(Status::standalone()))),
        ),
        (OpKind::AddMember, Ok(Reply::Done)),
        (OpKind::TransferLeader, Ok(Reply::Done)),
        (
            OpKind::Put,
            Err(Failure::not_leader(Some("127.0.0.1:7001".into()))),
        ),
        (OpKind::Get, Err(Failure::unavailable("no quorum"))),
    ];
    for (kind, outcome) in cases {
        let line = serde_json::to_vec(&Response {
            id: None,
            outcome: outcome.clone(),
        })
        .unwrap();
        let wire: WireResponse = serde_json::from_slice(&line).unwrap();
        assert_eq!(wire.into_outcome(kind).unwrap(), outcome);
    }
}

#[test]
fn a_status_says_removed_only_when_true_and_reads_back_without_it() {
    let status = |removed| {
        serde_json::to_value(Status {
            removed,
            ..Status::standalone()
        })
        .unwrap()
    };
    assert_eq!(status(true)["removed"], json!(true));
    let kept = status(false);
    assert!(kept.get("removed").is_none(), "{kept}");
    // The contract's fields alone (an older server's answer) read back as not removed.
    let read: Status = serde_json::from_value(kept).unwrap();
    assert!(!read.removed);
}

#[test]
fn a_response_missing_its_fields_is_reported_not_guessed() {
    let wire: WireResponse = serde_json::from_value(json!({"ok":true})).unwrap();
    assert!(wire.into_outcome(OpKind::Get).is_err());
    let wire: WireResponse = serde_json::from_value(json!({"ok":false})).unwrap();
    assert!(wire.into_outcome(OpKind::Put).is_err());
}

#[test]
fn writes_membership_changes_and_transfers_change_state_reads_and_status_do_not() {
    let changes = [
        Op::put("k", "v"),
        Op::AddMember {
            id: NodeId(4),
            addr: "127.0.0.1:7004".into(),
        },
        Op::RemoveMember { id: NodeId(4) },
        Op::TransferLeader { id: NodeId(2) },
    ];
    assert!(changes.iter().all(Op::changes_state));
    let stale = Op::Get {
        key: "k".into(),
        consistency: Consistency::Stale,
    };
    assert!(
        [Op::get("k"), stale, Op::Status]
            .iter()
            .all(|op| !op.changes_state())
    );
}

#[test]
fn host_port_takes_names_and_addresses_with_a_port_and_nothing_else() {
    for good in [
        "127.0.0.1:7000",
        "localhost:7000",
        "node-12.example.internal:7001",
        "[::1]:7000",
    ] {
        assert_eq!(parse_host_port(good).as_deref(), Ok(good));
    }
    for bad in [
        "",
        "localhost",
        ":7000",
        "127.0.0.1:",
        "127.0.0.1:x",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "::1:7000",
        "my host:7000",
    ] {
        assert!(parse_host_port(bad).is_err(), "{bad:?} accepted");
    }
}
