//! Semaphores over real connections: permits up to the limit, strict FIFO, a limit every
//! acquirer must agree on, and permits given back when a client leaves.

use serde_json::json;

use crate::support::{error_code, Lockd};

#[tokio::test]
async fn permits_are_granted_up_to_the_limit_and_in_arrival_order() {
    let lockd = Lockd::start(&[]);
    let mut a = lockd.connect().await;
    let reply = a
        .call(json!({"id": 1, "op": "acquire", "resource": "exports", "permits": 3, "limit": 4}))
        .await;
    let a_token = reply["token"].as_u64().expect("granted");
    assert_eq!(
        reply,
        json!({"id": 1, "ok": true, "token": a_token, "mode": "shared", "permits": 3, "limit": 4})
    );
    let mut big = lockd.connect().await;
    big.send(json!({"id": 7, "op": "acquire", "resource": "exports", "permits": 2, "limit": 4}))
        .await;
    assert_eq!(
        big.recv().await,
        json!({"id": 7, "event": "queued", "position": 1})
    );
    // One permit is free, but the request for one waits behind the request for two.
    let mut small = lockd.connect().await;
    small
        .send(json!({"id": 8, "op": "acquire", "resource": "exports", "limit": 4}))
        .await;
    assert_eq!(
        small.recv().await,
        json!({"id": 8, "event": "queued", "position": 2})
    );
    let status = a
        .call(json!({"id": 2, "op": "status", "resource": "exports"}))
        .await;
    let exports = &status["resources"][0];
    assert_eq!(
        (exports["limit"].clone(), exports["permits_used"].clone()),
        (json!(4), json!(3))
    );
    assert_eq!(exports["holders"][0]["permits"], 3, "{status}");
    assert_eq!(exports["waiters"][0]["permits"], 2, "{status}");
    assert_eq!(exports["waiters"][1]["permits"], 1, "{status}");

    let reply = a
        .call(json!({"id": 3, "op": "release", "resource": "exports", "token": a_token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let big_grant = big.recv().await;
    let small_grant = small.recv().await;
    assert_eq!(
        (big_grant["permits"].clone(), small_grant["permits"].clone()),
        (json!(2), json!(1))
    );
    let (big_token, small_token) = (
        big_grant["token"].as_u64().unwrap(),
        small_grant["token"].as_u64().unwrap(),
    );
    assert!(
        a_token < big_token && big_token < small_token,
        "each grant its own token, in order"
    );
}

#[tokio::test]
async fn a_limit_mismatch_and_bad_permits_get_clear_errors() {
    let lockd = Lockd::start(&[]);
    let mut conn = lockd.connect().await;
    let reply = conn
        .call(json!({"id": 1, "op": "acquire", "resource": "gpus", "limit": 2}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut other = lockd.connect().await;
    let reply = other
        .call(json!({"id": 2, "op": "acquire", "resource": "gpus", "limit": 3}))
        .await;
    assert_eq!(error_code(&reply), "limit_mismatch", "{reply}");
    assert_eq!(
        reply["error"]["message"],
        "Semaphore gpus has limit 2, not 3; every acquirer must give the same limit (a limit is \
         forgotten once nobody holds or waits for the resource)"
    );
    let reply = other
        .call(json!({"id": 3, "op": "acquire", "resource": "gpus"}))
        .await;
    assert_eq!(
        error_code(&reply),
        "limit_mismatch",
        "a lock on a semaphore: {reply}"
    );
    for (frame, message) in [
        (
            json!({"id": 4, "op": "acquire", "resource": "gpus", "permits": 3, "limit": 2}),
            "`permits` must be from 1 to the limit 2, not 3",
        ),
        (
            json!({"id": 5, "op": "acquire", "resource": "gpus", "permits": 1}),
            "`permits` needs `limit`",
        ),
        (
            json!({"id": 6, "op": "acquire", "resource": "gpus", "limit": 70000}),
            "`limit` must be from 1 to 65535, not 70000",
        ),
    ] {
        let reply = other.call(frame).await;
        assert_eq!(error_code(&reply), "bad_request", "{reply}");
        let text = reply["error"]["message"].as_str().unwrap();
        assert!(text.contains(message), "{reply}");
    }
    // The mismatches changed nothing: one holder, nobody waiting.
    let status = other
        .call(json!({"id": 7, "op": "status", "resource": "gpus"}))
        .await;
    assert_eq!(status["resources"][0]["permits_used"], 1, "{status}");
    assert_eq!(status["resources"][0]["waiters"], json!([]), "{status}");
}

#[tokio::test]
async fn a_closed_connection_gives_its_permits_to_the_next_waiter() {
    let lockd = Lockd::start(&[]);
    let mut holder = lockd.connect().await;
    let reply = holder
        .call(json!({"id": 1, "op": "acquire", "resource": "slots", "permits": 2, "limit": 2}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut waiter = lockd.connect().await;
    waiter
        .send(json!({"id": 9, "op": "acquire", "resource": "slots", "permits": 2, "limit": 2}))
        .await;
    assert_eq!(waiter.recv().await["event"], "queued");
    drop(holder);
    let granted = waiter.recv().await;
    assert_eq!(
        (granted["id"].clone(), granted["ok"].clone()),
        (json!(9), json!(true)),
        "{granted}"
    );
}
