//! Every op and every error code a client can provoke, through raw JSON lines.

use serde_json::json;

use crate::support::{error_code, Lockd};

#[tokio::test]
async fn hello_reports_the_session_and_clamps_the_lease() {
    let lockd = Lockd::start(&[]);
    let mut conn = lockd.connect().await;
    let reply = conn
        .call(json!({"id": 1, "op": "hello", "client": "t"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["id"], 1);
    assert!(reply["session"].as_u64().unwrap() > 0);
    assert_eq!(reply["lease_ms"], 15_000);
    assert_eq!(reply["protocol"], 1);
    assert!(reply["server"].as_str().unwrap().starts_with("lockd "));

    let reply = conn
        .call(json!({"id": 2, "op": "hello", "lease_ms": 10}))
        .await;
    assert_eq!(reply["lease_ms"], 1_000);
    let reply = conn
        .call(json!({"id": 3, "op": "hello", "lease_ms": 999_999_999}))
        .await;
    assert_eq!(reply["lease_ms"], 300_000);
}

#[tokio::test]
async fn acquire_release_read_write_ping_and_status() {
    let lockd = Lockd::start(&[]);
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    let reply = a
        .call(json!({"id": 1, "op": "acquire", "resource": "file_A"}))
        .await;
    assert_eq!(
        reply,
        json!({"id": 1, "ok": true, "token": 1, "mode": "exclusive"})
    );

    let read = a
        .call(json!({"id": 2, "op": "read", "resource": "file_A", "token": 1}))
        .await;
    assert_eq!(read, json!({"id": 2, "ok": true, "value": null}));
    let write = json!({"id": 3, "op": "write", "resource": "file_A", "token": 1, "value": "v1"});
    assert_eq!(a.call(write).await, json!({"id": 3, "ok": true}));
    assert_eq!(
        a.call(json!({"id": 4, "op": "ping"})).await,
        json!({"id": 4, "ok": true})
    );

    let status = b.call(json!({"id": 9, "op": "status"})).await;
    let holders = &status["resources"][0]["holders"];
    assert_eq!(status["resources"][0]["resource"], "file_A");
    assert_eq!(holders[0]["token"], 1);
    assert_eq!(holders[0]["mode"], "exclusive");
    assert!(holders[0]["held_ms"].is_u64());

    let release = json!({"id": 5, "op": "release", "resource": "file_A", "token": 1});
    assert_eq!(a.call(release).await, json!({"id": 5, "ok": true}));
    // The value outlives the lock and the session that wrote it.
    drop(a);
    let token = b.lock(10, "file_A", "shared").await;
    assert_eq!(token, 2);
    let read = b
        .call(json!({"id": 11, "op": "read", "resource": "file_A", "token": 2}))
        .await;
    assert_eq!(read["value"], "v1");

    let status = b
        .call(json!({"id": 12, "op": "status", "resource": "idle"}))
        .await;
    assert_eq!(
        status,
        json!({"id": 12, "ok": true, "resources": [
            {"resource": "idle", "holders": [], "waiters": []}
        ], "next": null})
    );
}

#[tokio::test]
async fn status_pages_through_busy_resources_and_refuses_bad_pages() {
    let lockd = Lockd::start(&["--max-status-limit", "3"]);
    let mut holder = lockd.connect().await;
    for (id, resource) in (1..).zip(["a", "b", "c", "d", "e"]) {
        holder.lock(id, resource, "exclusive").await;
    }
    let mut observer = lockd.connect().await;
    let names = |reply: &serde_json::Value| -> Vec<String> {
        let resources = reply["resources"].as_array().expect("resources");
        resources
            .iter()
            .map(|r| r["resource"].as_str().unwrap().to_owned())
            .collect()
    };
    // No paging fields: the default page, cut to the server's maximum here, and a cursor.
    let first = observer.call(json!({"id": 1, "op": "status"})).await;
    assert_eq!(
        (names(&first), &first["next"]),
        (vec!["a".into(), "b".into(), "c".into()], &json!("c"))
    );
    let second = observer
        .call(json!({"id": 2, "op": "status", "limit": 3, "after": "c"}))
        .await;
    assert_eq!(
        (names(&second), &second["next"]),
        (vec!["d".into(), "e".into()], &json!(null))
    );
    let small = observer
        .call(json!({"id": 3, "op": "status", "limit": 1, "after": "a"}))
        .await;
    assert_eq!(
        (names(&small), &small["next"]),
        (vec!["b".to_owned()], &json!("b"))
    );

    for (id, bad, code, needle) in [
        (4, json!({"limit": 4}), "bad_request", "--max-status-limit"),
        (5, json!({"limit": 0}), "bad_request", "at least 1"),
        (
            6,
            json!({"limit": u64::MAX}),
            "bad_request",
            "--max-status-limit",
        ),
        (7, json!({"after": "x\ny"}), "invalid_resource", "`after`"),
        (
            8,
            json!({"resource": "a", "limit": 2}),
            "bad_request",
            "takes neither",
        ),
    ] {
        let mut request = json!({"id": id, "op": "status"});
        request
            .as_object_mut()
            .unwrap()
            .extend(bad.as_object().unwrap().clone());
        let reply = observer.call(request.clone()).await;
        assert_eq!(error_code(&reply), code, "{request} -> {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{request} -> {message}");
    }
}

#[tokio::test]
async fn every_lock_error_code() {
    let lockd = Lockd::start(&["--max-value-bytes", "4"]);
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    let token = a.lock(1, "f", "exclusive").await;

    // already_held: holding, then waiting.
    let again = a
        .call(json!({"id": 2, "op": "acquire", "resource": "f"}))
        .await;
    assert_eq!(error_code(&again), "already_held");

    // timeout: try once, then a short wait.
    let try_once = json!({"id": 1, "op": "acquire", "resource": "f", "timeout_ms": 0});
    assert_eq!(error_code(&b.call(try_once).await), "timeout");
    b.send(json!({"id": 2, "op": "acquire", "resource": "f", "timeout_ms": 50}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"id": 2, "event": "queued", "position": 1})
    );
    let timed_out = b.recv().await;
    assert_eq!(
        (timed_out["id"].as_u64(), error_code(&timed_out)),
        (Some(2), "timeout")
    );

    // cancelled, and bad_request for cancelling what does not wait.
    b.send(json!({"id": 3, "op": "acquire", "resource": "f", "mode": "shared"}))
        .await;
    assert_eq!(b.recv().await["event"], "queued");
    let waiting_again = b
        .call(json!({"id": 4, "op": "acquire", "resource": "f"}))
        .await;
    assert_eq!(error_code(&waiting_again), "already_held");
    b.send(json!({"id": 5, "op": "cancel", "target": 3})).await;
    let mut frames = [b.recv().await, b.recv().await];
    frames.sort_by_key(|f| f["id"].as_u64());
    assert_eq!(error_code(&frames[0]), "cancelled");
    assert_eq!(frames[0]["id"], 3);
    assert_eq!(frames[1], json!({"id": 5, "ok": true}));
    let cancel_again = b.call(json!({"id": 6, "op": "cancel", "target": 3})).await;
    assert_eq!(error_code(&cancel_again), "bad_request");

    // not_held: wrong token, other session, never locked.
    for (use_b, resource, tok) in [(false, "f", token + 1), (true, "f", token), (false, "g", 1)] {
        let conn = if use_b { &mut b } else { &mut a };
        let release = json!({"id": 7, "op": "release", "resource": resource, "token": tok});
        assert_eq!(error_code(&conn.call(release).await), "not_held");
        let read = json!({"id": 8, "op": "read", "resource": resource, "token": tok});
        assert_eq!(error_code(&conn.call(read).await), "not_held");
    }

    // value_too_large (4 bytes allowed; "é" is two bytes).
    let write = json!({"id": 9, "op": "write", "resource": "f", "token": token, "value": "ééé"});
    assert_eq!(error_code(&a.call(write).await), "value_too_large");
    let write = json!({"id": 10, "op": "write", "resource": "f", "token": token, "value": "éé"});
    assert_eq!(a.call(write).await["ok"], true);

    // not_exclusive: a shared holder may read but not write.
    let release = json!({"id": 11, "op": "release", "resource": "f", "token": token});
    assert_eq!(a.call(release).await["ok"], true);
    let shared = b.lock(12, "f", "shared").await;
    let write = json!({"id": 13, "op": "write", "resource": "f", "token": shared, "value": "x"});
    assert_eq!(error_code(&b.call(write).await), "not_exclusive");
    let read = json!({"id": 14, "op": "read", "resource": "f", "token": shared});
    assert_eq!(b.call(read).await["value"], "éé");
}

#[tokio::test]
async fn every_frame_error_code_and_the_connection_goes_on() {
    let lockd = Lockd::start(&["--max-frame-bytes", "100"]);
    let mut conn = lockd.connect().await;
    let cases: Vec<(&[u8], serde_json::Value, &str)> = vec![
        (b"not json\n", json!(null), "bad_request"),
        (b"[1, 2]\n", json!(null), "bad_request"),
        (
            b"{\"id\": 1, \"op\": \"ping\"\n",
            json!(null),
            "bad_request",
        ),
        (
            b"{\"id\": -1, \"op\": \"ping\"}\n",
            json!(null),
            "bad_request",
        ),
        (
            b"{\"id\":1,\"op\":\"acquire\",\"resource\":\"\xff\"}\n",
            json!(1),
            "bad_request",
        ),
        (b"{\"id\": 2}\n", json!(2), "bad_request"),
        (
            b"{\"id\": 3, \"op\": \"acquire\", \"resource\": \"f\", \"mode\": \"both\"}\n",
            json!(3),
            "bad_request",
        ),
        (
            b"{\"id\": 4, \"op\": \"acquire\", \"resource\": \"f\", \"timeout_ms\": -1}\n",
            json!(4),
            "bad_request",
        ),
        (
            b"{\"id\": 5, \"op\": \"release\", \"resource\": \"f\"}\n",
            json!(5),
            "bad_request",
        ),
        (
            b"{\"id\": 6, \"op\": \"teleport\"}\n",
            json!(6),
            "unknown_op",
        ),
        (
            b"{\"id\": 7, \"op\": \"acquire\", \"resource\": \"\"}\n",
            json!(7),
            "invalid_resource",
        ),
        (
            b"{\"id\": 8, \"op\": \"acquire\", \"resource\": \"a b\"}\n",
            json!(8),
            "invalid_resource",
        ),
        (
            b"{\"id\": 9, \"op\": \"acquire\", \"resource\": \"a\\u0007\"}\n",
            json!(9),
            "invalid_resource",
        ),
    ];
    for (line, id, code) in cases {
        conn.send_raw(line).await;
        let reply = conn.recv().await;
        assert_eq!(
            reply["id"],
            id,
            "{}: {reply}",
            String::from_utf8_lossy(line)
        );
        assert_eq!(
            error_code(&reply),
            code,
            "{}",
            String::from_utf8_lossy(line)
        );
    }
    let reply = conn
        .call(json!({"id": 11, "op": "acquire", "resource": "x".repeat(257)}))
        .await;
    assert_eq!(reply["id"], json!(null));
    assert_eq!(error_code(&reply), "frame_too_large");
    // After all that, the same connection still works, and CRLF is fine.
    conn.send_raw(b"\r\n{\"id\": 12, \"op\": \"ping\"}\r\n")
        .await;
    assert_eq!(conn.recv().await, json!({"id": 12, "ok": true}));
}

#[tokio::test]
async fn long_names_are_invalid_resources_below_the_frame_limit() {
    let lockd = Lockd::start(&[]);
    let mut conn = lockd.connect().await;
    let ok = conn
        .call(json!({"id": 1, "op": "acquire", "resource": "n".repeat(256)}))
        .await;
    assert_eq!(ok["ok"], true);
    let long = conn
        .call(json!({"id": 2, "op": "acquire", "resource": "n".repeat(257)}))
        .await;
    assert_eq!(error_code(&long), "invalid_resource");
}
