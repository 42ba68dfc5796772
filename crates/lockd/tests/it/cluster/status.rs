//! `status` in cluster mode: it goes through the log and the state machine like any op, and is
//! paged there exactly as on a single server (the page is built in `apply.rs` for both).

use serde_json::{json, Value};

use super::{hello, Cluster};
use crate::support::error_code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_pages_through_the_leaders_table_with_a_cursor() {
    let cluster = Cluster::start(3, &["--max-status-limit", "2"]).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    assert_eq!(hello(&mut conn, None).await["ok"], true);
    let names = ["a", "b", "c", "d", "e"];
    for (id, resource) in (1..).zip(names) {
        conn.lock(id, resource, "exclusive").await;
    }
    let mut listed = Vec::new();
    let mut after = Value::Null;
    for id in 10.. {
        let mut request = json!({"id": id, "op": "status"});
        if !after.is_null() {
            request["after"] = after.clone();
        }
        let page = conn.call(request).await;
        let resources = page["resources"].as_array().expect("a page");
        assert!(resources.len() <= 2, "a page is bounded: {page}");
        listed.extend(
            resources
                .iter()
                .map(|r| r["resource"].as_str().unwrap().to_owned()),
        );
        after = page["next"].clone();
        if after.is_null() {
            break;
        }
    }
    assert_eq!(listed, names);
    let refused = conn
        .call(json!({"id": 99, "op": "status", "limit": 3}))
        .await;
    assert_eq!(error_code(&refused), "bad_request", "{refused}");
}
