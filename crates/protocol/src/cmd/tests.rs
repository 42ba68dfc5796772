//! Parsing tests: every op, every field error, and the id rules for broken frames.

use super::*;

fn parse(line: &str) -> Result<Request, RequestError> {
    Request::parse(line.as_bytes())
}

fn err(line: &str) -> (Option<u64>, ErrorCode, String) {
    let err = parse(line).expect_err(line);
    (err.id.map(|id| id.0), err.error.code, err.error.message)
}

fn name(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

#[test]
fn parses_every_op() {
    let cases = [
        (
            r#"{"id":1,"op":"hello","client":"me","lease_ms":5000,"session":42,"resume_secret":"9f"}"#,
            Command::Hello(Hello {
                client: Some("me".into()),
                lease_ms: Some(5000),
                auth: None,
                session: Some(SessionId(42)),
                resume_secret: Some("9f".into()),
            }),
        ),
        (r#"{"id":1,"op":"hello"}"#, Command::Hello(Hello::default())),
        (
            r#"{"id":1,"op":"acquire","resource":"file_A"}"#,
            Command::Acquire(Acquire {
                resource: name("file_A"),
                mode: LockMode::Exclusive,
                timeout_ms: None,
                lock_delay_ms: None,
                permits: None,
                value: None,
            }),
        ),
        (
            r#"{"id":1,"op":"acquire","resource":"f","mode":"shared","timeout_ms":0,"lock_delay_ms":250}"#,
            Command::Acquire(Acquire {
                resource: name("f"),
                mode: LockMode::Shared,
                timeout_ms: Some(0),
                lock_delay_ms: Some(250),
                permits: None,
                value: None,
            }),
        ),
        (
            r#"{"id":1,"op":"acquire","resource":"leader","value":"10.0.0.7:8080"}"#,
            Command::Acquire(Acquire {
                resource: name("leader"),
                mode: LockMode::Exclusive,
                timeout_ms: None,
                lock_delay_ms: None,
                permits: None,
                value: Some("10.0.0.7:8080".into()),
            }),
        ),
        (
            r#"{"id":1,"op":"release","resource":"f","token":3}"#,
            Command::Release(Release {
                resource: name("f"),
                token: FenceToken(3),
            }),
        ),
        (
            r#"{"id":1,"op":"read","resource":"f","token":3}"#,
            Command::Read(Read {
                resource: name("f"),
                token: FenceToken(3),
            }),
        ),
        (
            r#"{"id":1,"op":"write","resource":"f","token":3,"value":"a\nb\"c"}"#,
            Command::Write(Write {
                resource: name("f"),
                token: FenceToken(3),
                value: "a\nb\"c".into(),
            }),
        ),
        (
            r#"{"id":1,"op":"cancel","target":9}"#,
            Command::Cancel(Cancel {
                target: RequestId(9),
            }),
        ),
        (
            r#"{"id":1,"op":"validate","resource":"f","token":9}"#,
            Command::Validate(Validate {
                resource: name("f"),
                token: FenceToken(9),
            }),
        ),
        (r#"{"id":1,"op":"ping"}"#, Command::Ping),
        (
            r#"{"id":1,"op":"status"}"#,
            Command::Status(Status::default()),
        ),
        (
            r#"{"id":1,"op":"status","resource":"f"}"#,
            Command::Status(Status::one(name("f"))),
        ),
        (
            r#"{"id":1,"op":"status","limit":5,"after":"jobs/a"}"#,
            Command::Status(Status::page(Some(name("jobs/a")), Some(5))),
        ),
        (
            r#"{"id":1,"op":"watch","resource":"jobs/a"}"#,
            Command::Watch(Watch {
                resource: name("jobs/a"),
            }),
        ),
        (
            r#"{"id":1,"op":"unwatch","target":4}"#,
            Command::Unwatch(Unwatch {
                target: RequestId(4),
            }),
        ),
    ];
    for (line, command) in cases {
        let request = parse(line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(request.id, RequestId(1));
        assert_eq!(request.command, command, "{line}");
    }
}

#[test]
fn encoding_round_trips() {
    let requests = [
        Command::Hello(Hello {
            client: Some("c".into()),
            lease_ms: None,
            auth: Some("s3cret".into()),
            session: Some(SessionId(7)),
            resume_secret: Some("c0ffee".into()),
        }),
        Command::Acquire(Acquire {
            resource: name("jobs/nightly"),
            mode: LockMode::Shared,
            timeout_ms: Some(10),
            lock_delay_ms: Some(3_000),
            permits: None,
            value: None,
        }),
        Command::Acquire(Acquire {
            resource: name("exports"),
            mode: LockMode::Shared,
            timeout_ms: None,
            lock_delay_ms: None,
            permits: Some(Permits::new(2, 4).unwrap()),
            value: None,
        }),
        Command::Acquire(Acquire {
            resource: name("election/scheduler"),
            mode: LockMode::Exclusive,
            timeout_ms: None,
            lock_delay_ms: None,
            permits: None,
            value: Some("10.0.0.7:8080".into()),
        }),
        Command::Write(Write {
            resource: name("x"),
            token: FenceToken(u64::MAX),
            value: "ünïcödé\u{0}".into(),
        }),
        Command::Ping,
        Command::Status(Status::default()),
        Command::Status(Status::page(Some(name("a/b")), Some(2))),
    ];
    for command in requests {
        let request = Request {
            id: RequestId(u64::MAX),
            command,
        };
        assert_eq!(Request::parse(&request.to_json()).unwrap(), request);
    }
}

#[test]
fn ignores_unknown_fields_and_treats_null_as_absent() {
    let request =
        parse(r#"{"id":5,"op":"acquire","resource":"f","mode":null,"extra":[1,{}]}"#).unwrap();
    assert_eq!(
        request.command,
        Command::Acquire(Acquire {
            resource: name("f"),
            mode: LockMode::Exclusive,
            timeout_ms: None,
            lock_delay_ms: None,
            permits: None,
            value: None,
        })
    );
}

#[test]
fn a_semaphore_acquire_has_shared_permits_and_a_limit() {
    let cases = [
        (r#""limit":4"#, 1, 4),
        (r#""permits":3,"limit":4"#, 3, 4),
        (r#""permits":4,"limit":4,"mode":"shared""#, 4, 4),
        (r#""permits":1,"limit":65535"#, 1, MAX_PERMIT_LIMIT),
    ];
    for (fields, permits, limit) in cases {
        let line = format!(r#"{{"id":1,"op":"acquire","resource":"e",{fields}}}"#);
        let request = parse(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        assert_eq!(
            request.command,
            Command::Acquire(Acquire {
                resource: name("e"),
                mode: LockMode::Shared,
                timeout_ms: None,
                lock_delay_ms: None,
                permits: Some(Permits::new(permits, u64::from(limit)).unwrap()),
                value: None,
            }),
            "{line}"
        );
    }
}

#[test]
fn bad_permits_and_limits_are_bad_requests_that_say_why() {
    let cases = [
        (r#""permits":2"#, "`permits` needs `limit`"),
        (r#""limit":0"#, "`limit` must be from 1 to 65535, not 0"),
        (
            r#""limit":65536"#,
            "`limit` must be from 1 to 65535, not 65536",
        ),
        (
            r#""permits":0,"limit":4"#,
            "`permits` must be from 1 to the limit 4, not 0",
        ),
        (
            r#""permits":5,"limit":4"#,
            "`permits` must be from 1 to the limit 4, not 5",
        ),
        (
            r#""limit":4,"mode":"exclusive""#,
            "Permits of a semaphore are shared",
        ),
        (r#""limit":-1"#, "Ill-typed field"),
        (
            r#""value":"me","mode":"shared""#,
            "campaign for leadership, which needs the exclusive lock",
        ),
        (
            r#""value":"me","limit":3"#,
            "campaign for leadership, which needs the exclusive lock",
        ),
        (r#""value":7"#, "Ill-typed field"),
    ];
    for (fields, message) in cases {
        let line = format!(r#"{{"id":8,"op":"acquire","resource":"e",{fields}}}"#);
        let (id, code, text) = err(&line);
        assert_eq!((id, code), (Some(8), ErrorCode::BadRequest), "{line}");
        assert!(text.contains(message), "{line}: {text}");
    }
}

#[test]
fn broken_frames_are_bad_requests_with_null_id() {
    for line in [
        "not json",
        "[1,\"ping\"]",
        "42",
        "\"str\"",
        "{\"id\":1,\"op\":\"ping\"",
        "{\"id\":1,\"op\":\"ping\"} trailing",
        "{\"op\":\"ping\"}",
        "{\"id\":-1,\"op\":\"ping\"}",
        "{\"id\":\"1\",\"op\":\"ping\"}",
        "{\"id\":1.5,\"op\":\"ping\"}",
    ] {
        let (id, code, message) = err(line);
        assert_eq!(
            (id, code),
            (None, ErrorCode::BadRequest),
            "{line}: {message}"
        );
    }
}

#[test]
fn invalid_utf8_is_a_bad_request() {
    let err = Request::parse(b"{\"id\":1,\"op\":\"acquire\",\"resource\":\"\xff\"}").unwrap_err();
    assert_eq!(err.error.code, ErrorCode::BadRequest);
}

#[test]
fn field_errors_keep_the_id() {
    let cases = [
        (r#"{"id":7}"#, ErrorCode::BadRequest, "missing field `op`"),
        (r#"{"id":7,"op":5}"#, ErrorCode::BadRequest, "ill-typed"),
        (
            r#"{"id":7,"op":"fly"}"#,
            ErrorCode::UnknownOp,
            "unknown op \"fly\"",
        ),
        (
            r#"{"id":7,"op":"acquire"}"#,
            ErrorCode::BadRequest,
            "missing field `resource`",
        ),
        (
            r#"{"id":7,"op":"acquire","resource":""}"#,
            ErrorCode::InvalidResource,
            "empty",
        ),
        (
            r#"{"id":7,"op":"acquire","resource":"a b"}"#,
            ErrorCode::InvalidResource,
            "' '",
        ),
        (
            r#"{"id":7,"op":"acquire","resource":7}"#,
            ErrorCode::BadRequest,
            "ill-typed",
        ),
        (
            r#"{"id":7,"op":"acquire","resource":"f","mode":"x"}"#,
            ErrorCode::BadRequest,
            "unknown mode",
        ),
        (
            r#"{"id":7,"op":"acquire","resource":"f","timeout_ms":-5}"#,
            ErrorCode::BadRequest,
            "ill-typed",
        ),
        (
            r#"{"id":7,"op":"release","resource":"f"}"#,
            ErrorCode::BadRequest,
            "missing field `token`",
        ),
        (
            r#"{"id":7,"op":"write","resource":"f","token":1}"#,
            ErrorCode::BadRequest,
            "missing field `value`",
        ),
        (
            r#"{"id":7,"op":"write","resource":"f","token":1,"value":5}"#,
            ErrorCode::BadRequest,
            "ill-typed",
        ),
        (
            r#"{"id":7,"op":"cancel"}"#,
            ErrorCode::BadRequest,
            "missing field `target`",
        ),
        (
            r#"{"id":7,"op":"status","resource":"\t"}"#,
            ErrorCode::InvalidResource,
            "control",
        ),
        (
            r#"{"id":7,"op":"status","limit":0}"#,
            ErrorCode::BadRequest,
            "`limit` must be at least 1",
        ),
        (
            r#"{"id":7,"op":"status","limit":-1}"#,
            ErrorCode::BadRequest,
            "ill-typed",
        ),
        (
            r#"{"id":7,"op":"status","after":""}"#,
            ErrorCode::InvalidResource,
            "`after` is not a resource name",
        ),
        (
            r#"{"id":7,"op":"status","resource":"f","after":"e"}"#,
            ErrorCode::BadRequest,
            "takes neither",
        ),
        (
            r#"{"id":7,"op":"ping","id":8}"#,
            ErrorCode::BadRequest,
            "duplicate field",
        ),
    ];
    for (line, code, needle) in cases {
        let (id, got_code, message) = err(line);
        assert_eq!(got_code, code, "{line}: {message}");
        if line.contains("\"id\":8") {
            // A duplicate id is ambiguous, so the error carries none.
            assert_eq!(id, None);
        } else {
            assert_eq!(id, Some(7), "{line}: {message}");
        }
        assert!(
            message.to_lowercase().contains(&needle.to_lowercase()),
            "{line}: {message:?} lacks {needle:?}"
        );
    }
}

#[test]
fn the_auth_secret_never_shows_in_debug_output() {
    let request = parse(r#"{"id":1,"op":"hello","auth":"hunter2"}"#).unwrap();
    let Command::Hello(hello) = &request.command else {
        panic!("not a hello");
    };
    assert_eq!(hello.auth.as_deref(), Some("hunter2"));
    let shown = format!("{request:?}");
    assert!(
        !shown.contains("hunter2") && shown.contains("redacted"),
        "{shown}"
    );
}

#[test]
fn resume_secrets_never_show_in_debug_output() {
    let request = parse(r#"{"id":1,"op":"hello","session":5,"resume_secret":"0ddba11"}"#).unwrap();
    let shown = format!("{request:?}");
    assert!(
        !shown.contains("0ddba11") && shown.contains("redacted"),
        "{shown}"
    );
    let reply = crate::cmd::HelloOk {
        session: SessionId(5),
        lease_ms: 1,
        server: "lockd".into(),
        protocol: 1,
        resume_secret: Some("0ddba11".into()),
    };
    let shown = format!("{reply:?}");
    assert!(
        !shown.contains("0ddba11") && shown.contains("redacted"),
        "{shown}"
    );
}

#[test]
fn admin_tokens_parse_and_never_show_in_debug_output() {
    let add = r#"{"id":1,"op":"add_node","node_id":4,"client":"a:1","peer":"a:2","admin_token":"0ddba11"}"#;
    let remove = r#"{"id":2,"op":"remove_node","node_id":4,"admin_token":"0ddba11"}"#;
    for line in [add, remove] {
        let request = parse(line).unwrap();
        let token = match &request.command {
            Command::AddNode(add) => add.admin_token.as_deref(),
            Command::RemoveNode(remove) => remove.admin_token.as_deref(),
            other => panic!("not a membership change: {other:?}"),
        };
        assert_eq!(token, Some("0ddba11"));
        let shown = format!("{request:?}");
        assert!(
            !shown.contains("0ddba11") && shown.contains("redacted"),
            "{shown}"
        );
    }
}

#[test]
fn watch_ops_without_their_fields_are_refused() {
    assert_eq!(
        err(r#"{"id":3,"op":"watch"}"#),
        (
            Some(3),
            ErrorCode::BadRequest,
            "Missing field `resource` (a string)".to_owned()
        )
    );
    assert_eq!(
        err(r#"{"id":3,"op":"unwatch"}"#),
        (
            Some(3),
            ErrorCode::BadRequest,
            "Missing field `target` (a u64)".to_owned()
        )
    );
    assert_eq!(
        err(r#"{"id":3,"op":"watch","resource":""}"#).1,
        ErrorCode::InvalidResource
    );
}

#[test]
fn an_acquire_with_resources_is_a_multi_acquire_that_serializes_back_to_itself() {
    let line = r#"{"id":3,"op":"acquire","resources":[{"resource":"a"},{"resource":"b","mode":"shared"}],"timeout_ms":500}"#;
    let request = parse(line).unwrap();
    let expected = Command::AcquireMany(AcquireMany {
        resources: vec![
            Member {
                resource: name("a"),
                mode: LockMode::Exclusive,
            },
            Member {
                resource: name("b"),
                mode: LockMode::Shared,
            },
        ],
        timeout_ms: Some(500),
        lock_delay_ms: None,
    });
    assert_eq!(request.command, expected);
    assert_eq!(request.command.op(), Op::Acquire);
    // A cluster's log carries requests as their JSON: it must parse back to the same request.
    let json = String::from_utf8(request.to_json()).unwrap();
    assert_eq!(
        json,
        r#"{"id":3,"op":"acquire","resources":[{"resource":"a","mode":"exclusive"},{"resource":"b","mode":"shared"}],"timeout_ms":500}"#
    );
    assert_eq!(parse(&json).unwrap(), request);
}

#[test]
fn a_multi_acquire_is_refused_with_a_clear_error() {
    let cases = [
        (r#""resources":[]"#, "at least one resource"),
        (
            r#""resources":[{"resource":"a"},{"resource":"b"},{"resource":"a","mode":"shared"}]"#,
            "a appears twice in `resources`",
        ),
        (
            r#""resources":[{"resource":"a"}],"resource":"b""#,
            "`resource` or `resources`, not both",
        ),
        (
            r#""resources":[{"resource":"a"}],"mode":"shared""#,
            "its own `mode`",
        ),
        (
            r#""resources":[{"resource":"a"}],"limit":3"#,
            "`permits` and `limit` are for",
        ),
        (
            r#""resources":[{"resource":"a"}],"value":"me""#,
            "cannot carry one",
        ),
        (
            r#""resources":[{"mode":"shared"}]"#,
            "field `resource` in `resources[0]`",
        ),
        (
            r#""resources":[{"resource":"a","mode":"x"}]"#,
            "unknown mode",
        ),
        (r#""resources":"a""#, "ill-typed"),
    ];
    for (fields, expected) in cases {
        let line = format!(r#"{{"id":9,"op":"acquire",{fields}}}"#);
        let (id, code, message) = err(&line);
        assert_eq!((id, code), (Some(9), ErrorCode::BadRequest), "{line}");
        // Messages start with a capital letter.
        let message = message.to_lowercase();
        assert!(
            message.contains(&expected.to_lowercase()),
            "{line}: {message}"
        );
    }
    let (_, code, message) = err(r#"{"id":9,"op":"acquire","resources":[{"resource":"a b"}]}"#);
    assert_eq!(code, ErrorCode::InvalidResource, "{message}");
}
