//! Queue order, pipelining and disconnects over real connections.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::support::{error_code, Lockd};

#[tokio::test]
async fn waiters_are_granted_in_arrival_order_with_growing_tokens() {
    let lockd = Lockd::start(&[]);
    let mut holder = lockd.connect().await;
    let first = holder.lock(1, "q", "exclusive").await;
    let mut waiters = Vec::new();
    for position in 1..=5u64 {
        let mut conn = lockd.connect().await;
        conn.send(json!({"id": 1, "op": "acquire", "resource": "q"}))
            .await;
        assert_eq!(
            conn.recv().await,
            json!({"id": 1, "event": "queued", "position": position})
        );
        waiters.push(conn);
    }
    let mut previous = first;
    let release = |token: u64| json!({"id": 2, "op": "release", "resource": "q", "token": token});
    assert_eq!(holder.call(release(first)).await["ok"], true);
    for (i, conn) in waiters.iter_mut().enumerate() {
        let granted = conn.recv().await;
        let token = granted["token"].as_u64().expect("granted");
        assert!(
            token > previous,
            "waiter {i}: token {token} after {previous}"
        );
        previous = token;
        // Nobody behind is granted while this one holds.
        assert_eq!(conn.call(release(token)).await["ok"], true);
    }
}

#[tokio::test]
async fn a_blocked_acquire_does_not_hold_up_other_requests_on_its_connection() {
    let lockd = Lockd::start(&[]);
    let mut other = lockd.connect().await;
    let held = other.lock(1, "busy", "exclusive").await;
    let mut conn = lockd.connect().await;
    // Everything in one write: the acquire blocks, the rest must still be answered.
    let mut batch = String::new();
    for frame in [
        json!({"id": 10, "op": "acquire", "resource": "busy"}),
        json!({"id": 11, "op": "ping"}),
        json!({"id": 12, "op": "acquire", "resource": "free"}),
        json!({"id": 13, "op": "status", "resource": "busy"}),
        json!({"id": 14, "op": "release", "resource": "free", "token": 0}),
    ] {
        batch.push_str(&frame.to_string());
        batch.push('\n');
    }
    conn.send_raw(batch.as_bytes()).await;
    let mut by_id: HashMap<u64, Value> = HashMap::new();
    for _ in 0..5 {
        let frame = conn.recv().await;
        by_id.insert(frame["id"].as_u64().unwrap(), frame);
    }
    assert_eq!(
        by_id[&10],
        json!({"id": 10, "event": "queued", "position": 1})
    );
    assert_eq!(by_id[&11], json!({"id": 11, "ok": true}));
    assert_eq!(by_id[&12]["ok"], true);
    assert_eq!(
        by_id[&13]["resources"][0]["waiters"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(error_code(&by_id[&14]), "not_held");

    let release = json!({"id": 2, "op": "release", "resource": "busy", "token": held});
    assert_eq!(other.call(release).await["ok"], true);
    let granted = conn.recv().await;
    assert_eq!(
        (granted["id"].as_u64(), granted["ok"].as_bool()),
        (Some(10), Some(true))
    );
}

#[tokio::test]
async fn a_queued_writer_is_not_overtaken_by_later_readers() {
    let lockd = Lockd::start(&[]);
    let mut reader1 = lockd.connect().await;
    let r1 = reader1.lock(1, "doc", "shared").await;
    let mut writer = lockd.connect().await;
    writer
        .send(json!({"id": 1, "op": "acquire", "resource": "doc"}))
        .await;
    assert_eq!(writer.recv().await["position"], 1);
    let mut reader2 = lockd.connect().await;
    reader2
        .send(json!({"id": 1, "op": "acquire", "resource": "doc", "mode": "shared"}))
        .await;
    assert_eq!(reader2.recv().await["position"], 2);

    reader1
        .call(json!({"id": 2, "op": "release", "resource": "doc", "token": r1}))
        .await;
    let w = writer.recv().await["token"].as_u64().unwrap();
    reader2.expect_silence().await;
    writer
        .call(json!({"id": 2, "op": "release", "resource": "doc", "token": w}))
        .await;
    assert_eq!(reader2.recv().await["mode"], "shared");
}

#[tokio::test]
async fn closing_a_connection_frees_its_locks_and_queue_places_at_once() {
    let lockd = Lockd::start(&[]);
    let mut holder = lockd.connect().await;
    holder.lock(1, "r", "exclusive").await;
    let mut quitter = lockd.connect().await;
    quitter
        .send(json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(quitter.recv().await["position"], 1);
    let mut patient = lockd.connect().await;
    patient
        .send(json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(patient.recv().await["position"], 2);

    drop(quitter);
    drop(holder);
    let granted = patient.recv().await;
    assert_eq!(granted["ok"], true, "{granted}");
    let status = patient
        .call(json!({"id": 2, "op": "status", "resource": "r"}))
        .await;
    let entry = &status["resources"][0];
    assert_eq!(entry["holders"].as_array().unwrap().len(), 1);
    assert_eq!(entry["waiters"], json!([]));
}

#[tokio::test]
async fn a_deadlock_between_two_clients_is_refused_with_the_cycle_named() {
    let lockd = Lockd::start(&[]);
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    let session_a = a.call(json!({"id": 1, "op": "hello"})).await["session"].clone();
    let session_b = b.call(json!({"id": 1, "op": "hello"})).await["session"].clone();
    a.lock(2, "file_A", "exclusive").await;
    let b_token = b.lock(2, "file_B", "exclusive").await;
    a.send(json!({"id": 3, "op": "acquire", "resource": "file_B"}))
        .await;
    assert_eq!(a.recv().await["event"], "queued");
    let refused = b
        .call(json!({"id": 3, "op": "acquire", "resource": "file_A"}))
        .await;
    assert_eq!(error_code(&refused), "deadlock");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "session {session_b} waits for file_A held by session {session_a}"
        )) && message.contains(&format!(
            "session {session_a} waits for file_B held by session {session_b}"
        )),
        "{message}"
    );
    // b's refused request left no trace: when b lets go of file_B, a gets it.
    let release = json!({"id": 4, "op": "release", "resource": "file_B", "token": b_token});
    assert_eq!(b.call(release).await["ok"], true);
    assert_eq!(a.recv().await["ok"], true);
}

#[tokio::test]
async fn any_session_can_validate_a_fencing_token() {
    let lockd = Lockd::start(&[]);
    let mut holder = lockd.connect().await;
    let mut downstream = lockd.connect().await;
    let token = holder.lock(1, "db", "exclusive").await;
    let check = |token: u64| json!({"id": 9, "op": "validate", "resource": "db", "token": token});
    assert_eq!(
        downstream.call(check(token)).await,
        json!({"id": 9, "ok": true, "valid": true})
    );
    assert_eq!(downstream.call(check(token + 1)).await["valid"], false);
    holder
        .call(json!({"id": 2, "op": "release", "resource": "db", "token": token}))
        .await;
    assert_eq!(
        downstream.call(check(token)).await["valid"],
        false,
        "released: stale"
    );
}
