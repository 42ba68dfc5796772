//! A multi-resource acquire in a cluster: replicated like any acquire, it keeps its place in
//! every queue across a leader kill and is granted, all at once, on the new leader.

use serde_json::json;

use super::{hello, Cluster};
use crate::support::error_code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_group_survives_a_leader_kill_and_is_granted_all_at_once() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;

    let mut holder = cluster.connect(leader).await;
    let holder_session = hello(&mut holder, None).await;
    let token = holder.lock(1, "acct/b", "exclusive").await;
    let mut group = cluster.connect(leader).await;
    let group_session = hello(&mut group, None).await;
    let queued = group
        .call(json!({"id": 41, "op": "acquire", "resources": [
            {"resource": "acct/a"}, {"resource": "acct/b"}]}))
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");

    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;

    // The group still waits in both queues on the new leader: a is free but not grantable.
    let mut stranger = cluster.connect(new_leader).await;
    hello(&mut stranger, None).await;
    let reply = stranger
        .call(json!({"id": 5, "op": "acquire", "resource": "acct/a", "timeout_ms": 0}))
        .await;
    assert_eq!(error_code(&reply), "timeout", "{reply}");
    let reply = stranger
        .call(json!({"id": 6, "op": "status", "resource": "acct/a"}))
        .await;
    let a = &reply["resources"][0];
    assert_eq!(a["holders"], json!([]), "{reply}");
    assert_eq!(
        a["waiters"][0]["group"],
        json!(["acct/a", "acct/b"]),
        "{reply}"
    );

    let mut holder = cluster.connect(new_leader).await;
    assert_eq!(hello(&mut holder, Some(&holder_session)).await["ok"], true);
    let mut group = cluster.connect(new_leader).await;
    assert_eq!(hello(&mut group, Some(&group_session)).await["ok"], true);
    let reply = holder
        .call(json!({"id": 2, "op": "release", "resource": "acct/b", "token": token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let granted = group.recv().await;
    assert_eq!(granted["id"], 41, "{granted}");
    let tokens = granted["tokens"].as_array().expect("tokens");
    assert_eq!(tokens.len(), 2, "{granted}");
    assert_eq!(
        (&tokens[0]["resource"], &tokens[1]["resource"]),
        (&json!("acct/a"), &json!("acct/b"))
    );
    for member in tokens {
        assert!(member["token"].as_u64().unwrap() > token, "{granted}");
    }
}
