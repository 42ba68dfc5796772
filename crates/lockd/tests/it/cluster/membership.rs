//! Membership: a fourth node joins (learner, then voter) and leaves again; any node describes
//! the cluster.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::support::{error_code, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_as_a_voter_and_leaves_again() {
    let mut cluster = Cluster::start(3, &[]).await;
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
                     "client": spec.client.to_string(), "peer": spec.peer.to_string()}))
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
        .call(json!({"id": 2, "op": "remove_node", "node_id": leader as u64 + 1}))
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
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    // Nothing listens on this peer address: it was free a moment ago and nobody took it.
    let (client, peer) = super::node_addrs(&super::private_net(), 5);
    let reply = conn
        .call(json!({"id": 2, "op": "add_node", "node_id": 5,
                     "client": client.to_string(), "peer": peer.to_string()}))
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
        .call(json!({"id": 3, "op": "remove_node", "node_id": 9}))
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
