//! A cluster node's `/metrics`: the requests its clients sent and the sessions connected to it.

use serde_json::json;

use super::{hello, Cluster};
use crate::admin::sample;
use crate::support::http;

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

    let after = metrics().await;
    assert_eq!(sample(&after, "lockd_sessions"), 2.0, "{after}");
    let acquires = sample(&after, "lockd_request_seconds_count{op=\"acquire\"}");
    assert_eq!(acquires - acquires_before, 1.0, "{after}");
    assert_eq!(
        sample(&after, "lockd_request_seconds_count{op=\"release\"}"),
        1.0
    );

    // A closed connection's session outlives it (until its lease ends), but it is no longer
    // connected here.
    drop(second);
    let deadline = std::time::Instant::now() + crate::support::PATIENCE;
    while sample(&metrics().await, "lockd_sessions") != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the gauge stayed at 2"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
