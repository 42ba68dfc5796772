//! Reads without log entries: the leader answers `read`, `validate`, `status` and `ping` from
//! the state it has applied once a majority confirmed it still leads. They must stay
//! linearizable (a deposed leader never answers from stale state) and keep a connection's
//! order (a read sees the writes sent before it, and none sent after).

use serde_json::{json, Value};

use super::{hello, Cluster};
use crate::support::{error_code, PATIENCE};

/// The last log index node `index` reports.
async fn last_log_index(cluster: &Cluster, index: usize) -> u64 {
    let mut conn = cluster.connect(index).await;
    let reply = conn.call(json!({"id": 1, "op": "cluster_status"})).await;
    reply["last_log_index"].as_u64().expect("a last log index")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_take_no_log_entry() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    let token = conn.lock(1, "r", "exclusive").await;
    let reply = conn
        .call(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    const READS: u64 = 40;
    let before = last_log_index(&cluster, leader).await;
    for id in 0..READS {
        let frame = match id % 4 {
            0 => json!({"id": 10 + id, "op": "read", "resource": "r", "token": token}),
            1 => json!({"id": 10 + id, "op": "validate", "resource": "r", "token": token}),
            2 => json!({"id": 10 + id, "op": "status", "resource": "r"}),
            _ => json!({"id": 10 + id, "op": "ping"}),
        };
        let reply = conn.call(frame).await;
        assert_eq!(reply["ok"], true, "{reply}");
        assert_eq!(reply["id"], 10 + id, "{reply}");
        match id % 4 {
            0 => assert_eq!(reply["value"], "v", "{reply}"),
            1 => assert_eq!(reply["valid"], true, "{reply}"),
            2 => assert_eq!(
                reply["resources"][0]["holders"][0]["token"], token,
                "{reply}"
            ),
            _ => {}
        }
    }
    let after = last_log_index(&cluster, leader).await;
    // The leader's own entries (a session of `leader()`'s probes expiring) may come meanwhile;
    // through the log, every read would have been an entry of its own.
    assert!(
        after - before < READS / 4,
        "{READS} reads took the log from {before} to {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connections_reads_and_writes_are_answered_in_the_order_sent() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    let token = conn.lock(1, "r", "exclusive").await;
    let write = |id: u64, value: &str| json!({"id": id, "op": "write", "resource": "r", "token": token, "value": value});
    let read = |id: u64| json!({"id": id, "op": "read", "resource": "r", "token": token});
    // Sent in one go, so they arrive together: a read behind a write in flight, a write
    // behind a read waiting for its leadership check, and so on.
    conn.send_batch(&[
        read(2),
        write(3, "one"),
        read(4),
        read(5),
        write(6, "two"),
        read(7),
    ])
    .await;
    let mut replies = Vec::new();
    for _ in 0..6 {
        replies.push(conn.recv().await);
    }
    let ids: Vec<&Value> = replies.iter().map(|reply| &reply["id"]).collect();
    assert_eq!(ids, [2, 3, 4, 5, 6, 7], "{replies:?}");
    let values: Vec<&Value> = replies.iter().map(|reply| &reply["value"]).collect();
    assert_eq!(
        values,
        [
            &Value::Null,
            &Value::Null,
            &json!("one"),
            &json!("one"),
            &Value::Null,
            &json!("two")
        ],
        "{replies:?}"
    );
}

/// A leader that stood still while the others elected a new one must not answer a read from
/// what it knew before: when it runs again, the read gets `not_leader` (or its connection is
/// closed as the node steps down), never the old state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_never_answers_a_read_from_stale_state() {
    let cluster = Cluster::start(3, &[]).await;
    let old_leader = cluster.leader(None).await;
    let mut reader = cluster.connect(old_leader).await;
    hello(&mut reader, None).await;
    let reply = reader
        .call(json!({"id": 1, "op": "status", "resource": "moved"}))
        .await;
    assert_eq!(reply["resources"][0]["holders"], json!([]), "{reply}");

    cluster.signal(old_leader, "STOP");
    let new_leader = cluster.leader(Some(old_leader)).await;
    let mut writer = cluster.connect(new_leader).await;
    hello(&mut writer, None).await;
    let token = writer.lock(1, "moved", "exclusive").await;

    // Queued in the stopped node's socket buffer; it reads it when it runs again.
    reader
        .send(json!({"id": 2, "op": "status", "resource": "moved"}))
        .await;
    cluster.signal(old_leader, "CONT");
    match reader.try_recv(PATIENCE).await {
        Err(()) => panic!("the old leader neither answered nor closed the connection"),
        Ok(None) => {} // closed as it stepped down
        Ok(Some(reply)) if reply["ok"] == false => {
            assert_eq!(error_code(&reply), "not_leader", "{reply}");
        }
        Ok(Some(reply)) => assert_eq!(
            reply["resources"][0]["holders"][0]["token"], token,
            "the old leader answered from stale state: {reply}"
        ),
    }
}
