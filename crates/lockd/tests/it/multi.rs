//! Multi-resource acquires over real connections: the reply with a token per resource, a group
//! waiting in every queue and granted all at once, fencing per member, every member lost with
//! the session, a clear error for a bad group, and the metrics.

use serde_json::json;

use crate::admin::{sample, start_with_admin};
use crate::support::{error_code, http, Lockd};

fn acquire_ab(id: u64) -> serde_json::Value {
    json!({"id": id, "op": "acquire", "resources": [
        {"resource": "acct/a"}, {"resource": "acct/b", "mode": "shared"}]})
}

#[tokio::test]
async fn a_group_waits_in_every_queue_and_is_granted_all_at_once() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut holder = lockd.connect().await;
    let b_token = holder.lock(1, "acct/b", "exclusive").await;

    let mut group = lockd.connect().await;
    group.send(acquire_ab(7)).await;
    assert_eq!(
        group.recv().await,
        json!({"id": 7, "event": "queued", "position": 1})
    );
    // a is free, but the group holds nothing while it waits, and a later request for a waits
    // behind it.
    let mut late = lockd.connect().await;
    let busy = late
        .call(json!({"id": 1, "op": "acquire", "resource": "acct/a", "timeout_ms": 0}))
        .await;
    assert_eq!(error_code(&busy), "timeout", "{busy}");
    let status = late
        .call(json!({"id": 2, "op": "status", "resource": "acct/a"}))
        .await;
    let a = &status["resources"][0];
    assert_eq!(a["holders"], json!([]), "{status}");
    assert_eq!(
        a["waiters"][0]["group"],
        json!(["acct/a", "acct/b"]),
        "{status}"
    );
    let metrics = http(admin, "GET", "/metrics", &[]).await.body;
    assert_eq!(sample(&metrics, "lockd_multi_acquire_waiters"), 1.0);
    let locks = http(admin, "GET", "/v1/locks", &[]).await.json();
    assert_eq!(
        locks["resources"][0]["waiters"][0]["group"],
        json!(["acct/a", "acct/b"]),
        "{locks}"
    );

    let reply = holder
        .call(json!({"id": 2, "op": "release", "resource": "acct/b", "token": b_token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let granted = group.recv().await;
    let a_token = granted["tokens"][0]["token"].as_u64().expect("a token");
    assert_eq!(
        granted,
        json!({"id": 7, "ok": true, "tokens": [
            {"resource": "acct/a", "token": a_token, "mode": "exclusive"},
            {"resource": "acct/b", "token": a_token + 1, "mode": "shared"}]})
    );
    // Each member is fenced and released on its own.
    let valid = late
        .call(json!({"id": 3, "op": "validate", "resource": "acct/b", "token": a_token + 1}))
        .await;
    assert_eq!(valid["valid"], true, "{valid}");
    let wrote = group
        .call(
            json!({"id": 8, "op": "write", "resource": "acct/a", "token": a_token, "value": "90"}),
        )
        .await;
    assert_eq!(wrote["ok"], true, "{wrote}");
    let refused = group
        .call(json!({"id": 9, "op": "write", "resource": "acct/b", "token": a_token + 1, "value": "1"}))
        .await;
    assert_eq!(error_code(&refused), "not_exclusive", "{refused}");
    let reply = group
        .call(json!({"id": 10, "op": "release", "resource": "acct/a", "token": a_token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let metrics = http(admin, "GET", "/metrics", &[]).await.body;
    assert_eq!(sample(&metrics, "lockd_multi_acquire_grants_total"), 1.0);
    assert_eq!(sample(&metrics, "lockd_multi_acquire_waiters"), 0.0);
}

#[tokio::test]
async fn a_group_holder_that_goes_silent_loses_every_member() {
    let lockd = Lockd::start(&["--min-lease-ms", "100"]);
    let mut silent = lockd.connect().await;
    silent
        .call(json!({"id": 1, "op": "hello", "lease_ms": 1_000}))
        .await;
    let granted = silent.call(acquire_ab(2)).await;
    assert_eq!(
        granted["tokens"].as_array().map(Vec::len),
        Some(2),
        "{granted}"
    );

    let mut waiter = lockd.connect().await;
    waiter
        .send(json!({"id": 1, "op": "acquire", "resources": [
            {"resource": "acct/b"}, {"resource": "acct/a"}]}))
        .await;
    assert_eq!(waiter.recv().await["event"], "queued");
    // The silent session's lease runs out; both its members go, and the waiting group (which
    // names them in the other order) gets both.
    let granted = waiter.recv().await;
    assert_eq!(granted["id"], 1, "{granted}");
    let names: Vec<&str> = granted["tokens"]
        .as_array()
        .expect("tokens")
        .iter()
        .map(|t| t["resource"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acct/b", "acct/a"], "{granted}");
}

#[tokio::test]
async fn a_bad_group_gets_a_clear_error_and_the_limit_is_a_flag() {
    let lockd = Lockd::start(&["--max-resources-per-acquire", "2"]);
    let mut conn = lockd.connect().await;
    let reply = conn
        .call(json!({"id": 1, "op": "acquire", "resources": [
            {"resource": "a"}, {"resource": "b"}, {"resource": "c"}]}))
        .await;
    assert_eq!(error_code(&reply), "limit_exceeded", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("at most 2") && message.contains("--max-resources-per-acquire"),
        "{message}"
    );
    let reply = conn
        .call(json!({"id": 2, "op": "acquire", "resources": [
            {"resource": "a"}, {"resource": "a", "mode": "shared"}]}))
        .await;
    assert_eq!(error_code(&reply), "bad_request", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("appears twice"),
        "{reply}"
    );
    let status = conn.call(json!({"id": 3, "op": "status"})).await;
    assert_eq!(status["resources"], json!([]), "{status}");
}
