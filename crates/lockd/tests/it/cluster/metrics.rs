//! A cluster node's `/metrics`: the requests its clients sent, the sessions connected to it and
//! its Raft log's syncs.

use serde_json::json;

use super::{hello, Cluster};
use crate::admin::sample;
use crate::support::{http, Deadline};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_counts_its_requests_and_connected_sessions() {
    let mut cluster = Cluster::start(3, &["--http", "127.0.0.1:0"]).await;
    let leader = cluster.leader(None).await;
    let admin = cluster.admin_addr(leader);
    let metrics = || async move { http(admin, "GET", "/metrics", &[]).await.body };
    let before = metrics().await;
    let acquires_before = sample(&before, "lockd_request_seconds_count{op=\"acquire\"}");

    let mut first = cluster.connect(leader).await;
    assert_eq!(hello(&mut first, None).await["ok"], true);
    let token = first.lock(1, "r", "exclusive").await;
    let release = json!({"id": 2, "op": "release", "resource": "r", "token": token});
    assert_eq!(first.call(release).await["ok"], true);
    let mut second = cluster.connect(leader).await;
    assert_eq!(hello(&mut second, None).await["ok"], true);

    // The state machine sends a reply when it applies the entry, and the front end counts the
    // request's latency when the proposal comes back to it: two tasks, in no fixed order. So
    // wait until both requests are counted, then check the counts are exact.
    let deadline = Deadline::new("the acquire and the release to be counted");
    let after = loop {
        let after = metrics().await;
        let acquires =
            sample(&after, "lockd_request_seconds_count{op=\"acquire\"}") - acquires_before;
        let releases = sample(&after, "lockd_request_seconds_count{op=\"release\"}");
        if acquires >= 1.0 && releases >= 1.0 {
            assert_eq!((acquires, releases), (1.0, 1.0), "{after}");
            break after;
        }
        deadline
            .tick(format!("{acquires} acquires, {releases} releases"))
            .await;
    };
    assert_eq!(sample(&after, "lockd_sessions"), 2.0, "{after}");
    // Each of those entries was synced to the leader's log before it could commit.
    let syncs = sample(&after, "lockd_raft_log_sync_seconds_count")
        - sample(&before, "lockd_raft_log_sync_seconds_count");
    assert!(
        syncs >= 1.0,
        "{syncs} Raft log syncs for 4 entries: {after}"
    );

    // A closed connection's session outlives it (until its lease ends), but it is no longer
    // connected here.
    drop(second);
    let deadline = Deadline::new("lockd_sessions to fall to 1 after a connection closed");
    loop {
        let sessions = sample(&metrics().await, "lockd_sessions");
        if sessions == 1.0 {
            break;
        }
        deadline.tick(format!("lockd_sessions {sessions}")).await;
    }
}
