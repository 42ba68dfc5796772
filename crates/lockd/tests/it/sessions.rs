//! Leases: a silent session loses its locks, a pinging one keeps them.

use std::time::Duration;

use serde_json::json;

use crate::support::{Deadline, Lockd, PATIENCE};

/// The lease of the sessions below. A pinger pings at a third of it, so a ping may come up to
/// two thirds of a lease late (a loaded machine) before the session expires by mistake.
const LEASE: Duration = Duration::from_millis(1_000);

#[tokio::test]
async fn a_silent_session_expires_and_a_pinging_one_keeps_its_lock() {
    let lockd = Lockd::start(&["--min-lease-ms", "100"]);
    let lease_ms = LEASE.as_millis() as u64;
    let mut silent = lockd.connect().await;
    let hello = silent
        .call(json!({"id": 1, "op": "hello", "lease_ms": lease_ms}))
        .await;
    assert_eq!(hello["lease_ms"], lease_ms);
    silent.lock(2, "s", "exclusive").await;

    let mut pinger = lockd.connect().await;
    let pinger_session = pinger
        .call(json!({"id": 1, "op": "hello", "lease_ms": lease_ms}))
        .await["session"]
        .clone();
    pinger.lock(2, "p", "exclusive").await;

    let mut waiter = lockd.connect().await;
    waiter
        .send(json!({"id": 1, "op": "acquire", "resource": "s"}))
        .await;
    assert_eq!(waiter.recv().await["event"], "queued");
    waiter
        .send(json!({"id": 2, "op": "acquire", "resource": "p"}))
        .await;
    assert_eq!(waiter.recv().await["event"], "queued");

    // Ping at a third of the lease until the silent session expires and its lock passes on...
    let mut id = 10;
    let deadline = Deadline::new("the silent session's lock to be granted to the waiter");
    let granted = loop {
        id += 1;
        assert_eq!(
            pinger.call(json!({"id": id, "op": "ping"})).await["ok"],
            true
        );
        if let Ok(Some(frame)) = waiter.try_recv(LEASE / 3).await {
            break frame;
        }
        deadline.tick("no frame for the waiter").await;
    };
    assert_eq!(
        (granted["id"].as_u64(), granted["ok"].as_bool()),
        (Some(1), Some(true)),
        "{granted}"
    );
    // ... and for another whole lease, in which the pinging session keeps its lock.
    let until = tokio::time::Instant::now() + LEASE;
    while tokio::time::Instant::now() < until {
        id += 1;
        assert_eq!(
            pinger.call(json!({"id": id, "op": "ping"})).await["ok"],
            true
        );
        let frame = waiter.try_recv(LEASE / 3).await;
        assert_eq!(frame, Err(()), "one grant only");
    }
    // The silent session's connection was closed by the server.
    assert_eq!(silent.try_recv(PATIENCE).await, Ok(None));
    // The pinging session still holds "p", and the waiter still waits for it.
    let status = pinger
        .call(json!({"id": 99, "op": "status", "resource": "p"}))
        .await;
    let entry = &status["resources"][0];
    assert_eq!(entry["holders"][0]["session"], pinger_session);
    assert_eq!(entry["waiters"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn an_invalid_frame_still_counts_as_a_sign_of_life() {
    let lockd = Lockd::start(&["--min-lease-ms", "100"]);
    let mut conn = lockd.connect().await;
    let lease_ms = LEASE.as_millis() as u64;
    conn.call(json!({"id": 1, "op": "hello", "lease_ms": lease_ms}))
        .await;
    // Garbage at a quarter of the lease, for one and a half leases.
    for _ in 0..6 {
        tokio::time::sleep(LEASE / 4).await;
        conn.send_raw(b"garbage\n").await;
        assert_eq!(conn.recv().await["error"]["code"], "bad_request");
    }
    assert_eq!(conn.call(json!({"id": 2, "op": "ping"})).await["ok"], true);
}

/// On a single server a session ends with its connection, so `hello` can name only the
/// connection's own session; resuming another is for cluster mode.
#[tokio::test]
async fn a_single_server_resumes_no_other_session() {
    let lockd = Lockd::start(&[]);
    let mut first = lockd.connect().await;
    let first_session = first.call(json!({"id": 1, "op": "hello"})).await["session"].clone();
    let mut second = lockd.connect().await;
    let reply = second
        .call(json!({"id": 1, "op": "hello", "session": first_session}))
        .await;
    assert_eq!(crate::support::error_code(&reply), "no_session", "{reply}");
    let own = second.call(json!({"id": 2, "op": "hello"})).await["session"].clone();
    let reply = second
        .call(json!({"id": 3, "op": "hello", "session": own}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
}
