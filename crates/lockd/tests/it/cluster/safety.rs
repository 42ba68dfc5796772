//! Lock-delay in a cluster: decided in the leader's time through the log, like lease expiry
//! and acquire timeouts (an `Expire` entry starts it, a `Tick` entry ends it).

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::support::PATIENCE;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_holders_lock_delay_holds_back_its_waiter_in_a_cluster() {
    const DELAY_MS: u64 = 1_500;
    let cluster = Cluster::start(3, &["--min-lease-ms", "100"]).await;
    let leader = cluster.leader(None).await;
    let mut gone = cluster.connect(leader).await;
    gone.call(json!({"id": 1, "op": "hello", "lease_ms": 300}))
        .await;
    let reply = gone
        .call(json!({"id": 2, "op": "acquire", "resource": "r", "lock_delay_ms": DELAY_MS}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    drop(gone);

    let mut waiter = cluster.connect(leader).await;
    hello(&mut waiter, None).await;
    let reply = waiter
        .call(json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(reply["event"], "queued", "{reply}");

    // Wait until the leader has expired the holder: nobody holds `r`, and it is in lock-delay.
    let mut observer = cluster.connect(leader).await;
    hello(&mut observer, None).await;
    let deadline = Instant::now() + PATIENCE;
    let (seen_at, left) = loop {
        let status = observer
            .call(json!({"id": 2, "op": "status", "resource": "r"}))
            .await;
        let entry = &status["resources"][0];
        if entry["holders"] == json!([]) {
            let left = entry["delayed_ms"]
                .as_u64()
                .unwrap_or_else(|| panic!("expired without a lock-delay: {status}"));
            assert_eq!(
                entry["waiters"].as_array().map(Vec::len),
                Some(1),
                "{status}"
            );
            break (Instant::now(), left);
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned holder did not expire in time: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(left <= DELAY_MS, "{left}");
    let granted = waiter.recv().await;
    assert_eq!(granted["ok"], true, "{granted}");
    // The grant came no earlier than the delay that status still showed (less the time its
    // reply took to reach us).
    let waited = seen_at.elapsed();
    assert!(
        waited + Duration::from_millis(500) >= Duration::from_millis(left),
        "granted {waited:?} after status showed {left} ms of lock-delay left"
    );
}
