//! Membership: a fourth node joins (learner, then voter) and leaves again; any node describes
//! the cluster.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::support::{error_code, PATIENCE};

/// The admin credential of the clusters below, which membership changes need.
const ADMIN_TOKEN: &str = "membership-admin-credential";

/// A cluster of `size` nodes whose admin credential is [`ADMIN_TOKEN`]; the directory holds its
/// file, and must outlive the cluster's start.
async fn cluster_with_admin_token(size: u64) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("admin-token");
    std::fs::write(&file, format!("{ADMIN_TOKEN}\n")).expect("the token file");
    let flags = ["--admin-token-file", file.to_str().expect("a UTF-8 path")];
    (Cluster::start(size, &flags).await, dir)
}

/// How many members `conn`'s node knows, and how many of them vote.
async fn members(conn: &mut crate::support::Conn) -> (usize, usize) {
    let status = conn.call(json!({"id": 99, "op": "cluster_status"})).await;
    let members = status["members"].as_array().expect("members");
    let voters = members.iter().filter(|m| m["voter"] == true).count();
    (members.len(), voters)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_voter_and_leaves_again() {
    let (mut cluster, _token) = cluster_with_admin_token(3).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    let token = conn.lock(1, "kept", "exclusive").await;
    let reply = conn
        .call(json!({"id": 2, "op": "write", "resource": "kept", "token": token, "value": "v"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let joiner = cluster.start_joiner();
    let spec = &cluster.specs[joiner];
    let reply = conn
        .call(json!({"id": 3, "op": "add_node", "node_id": spec.id,
                     "client": spec.client.to_string(), "peer": spec.peer.to_string(),
                     "admin_token": ADMIN_TOKEN}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Every node, the new one included, comes to describe the same four voters (a follower
    // learns of the change when the leader next replicates to it).
    for index in 0..4 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut any = cluster.connect(index).await;
            let status = any.call(json!({"id": 1, "op": "cluster_status"})).await;
            assert_eq!(status["ok"], true, "{status}");
            assert_eq!(status["node_id"], index as u64 + 1, "{status}");
            let members = status["members"].as_array().unwrap();
            let voters = members.iter().filter(|m| m["voter"] == true).count();
            if voters == 4 && status["leader"] == leader as u64 + 1 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node {} still sees {status}",
                index + 1
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // The new node holds the state: with the old leader gone, the value is still there.
    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;
    let mut conn = cluster.connect(new_leader).await;
    let session = conn.call(json!({"id": 1, "op": "hello"})).await;
    assert_eq!(session["ok"], true, "{session}");
    let reply = conn
        .call(
            json!({"id": 2, "op": "remove_node", "node_id": leader as u64 + 1,
                     "admin_token": ADMIN_TOKEN}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let status = conn.call(json!({"id": 3, "op": "cluster_status"})).await;
    let members: Vec<u64> = status["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["node_id"].as_u64().unwrap())
        .collect();
    assert!(!members.contains(&(leader as u64 + 1)), "{status}");
    assert_eq!(members.len(), 3, "{status}");

    // Cluster commands on a single server are refused.
    let single = crate::support::Lockd::start(&[]);
    let mut conn = single.connect().await;
    let reply = conn.call(json!({"id": 1, "op": "cluster_status"})).await;
    assert_eq!(error_code(&reply), "bad_request", "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_is_not_there_is_not_added_and_a_stranger_is_not_removed() {
    let (cluster, _token) = cluster_with_admin_token(3).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    // Nothing listens on this peer address: it was free a moment ago and nobody took it.
    let (client, peer) = super::node_addrs(&super::private_net(), 5);
    let reply = conn
        .call(json!({"id": 2, "op": "add_node", "node_id": 5,
                     "client": client.to_string(), "peer": peer.to_string(),
                     "admin_token": ADMIN_TOKEN}))
        .await;
    assert_eq!(error_code(&reply), "bad_request", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("does not answer"),
        "{reply}"
    );
    let reply = conn
        .call(json!({"id": 3, "op": "remove_node", "node_id": 9, "admin_token": ADMIN_TOKEN}))
        .await;
    assert_eq!(error_code(&reply), "bad_request", "{reply}");
    let status = conn.call(json!({"id": 4, "op": "cluster_status"})).await;
    let members = status["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        members.iter().all(|member| member["voter"] == true),
        "{status}"
    );
}

/// Changing the members decides who elects leaders and keeps the log: a client's session is
/// not enough, it takes the admin credential, and a cluster without one refuses every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_need_the_admin_credential() {
    let (cluster, _token) = cluster_with_admin_token(3).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    let follower = cluster.specs[(leader + 1) % 3].id;
    let attempts = [
        json!({"id": 1, "op": "remove_node", "node_id": follower}),
        json!({"id": 1, "op": "remove_node", "node_id": follower, "admin_token": "guess"}),
        json!({"id": 1, "op": "add_node", "node_id": 7, "client": "127.0.0.1:1",
               "peer": "127.0.0.1:2", "admin_token": format!("{ADMIN_TOKEN}x")}),
    ];
    for attempt in attempts {
        let reply = conn.call(attempt.clone()).await;
        assert_eq!(error_code(&reply), "unauthorized", "{attempt} got {reply}");
    }
    assert_eq!(
        members(&mut conn).await,
        (3, 3),
        "the members did not change"
    );
    let reply = conn.call(json!({"id": 2, "op": "ping"})).await;
    assert_eq!(reply["ok"], true, "the connection stays usable: {reply}");

    let unguarded = Cluster::start(3, &[]).await;
    let leader = unguarded.leader(None).await;
    let mut conn = unguarded.connect(leader).await;
    hello(&mut conn, None).await;
    let follower = unguarded.specs[(leader + 1) % 3].id;
    let reply = conn
        .call(json!({"id": 1, "op": "remove_node", "node_id": follower, "admin_token": "any"}))
        .await;
    assert_eq!(error_code(&reply), "unauthorized", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("--admin-token-file"), "{reply}");
    assert_eq!(
        members(&mut conn).await,
        (3, 3),
        "the members did not change"
    );
}
