//! Watches over TCP: the events a watcher gets, their limits, and a watcher that never reads
//! (issue 17).

use serde_json::{json, Value};
use tokio::net::TcpSocket;

use crate::admin::{sample, start_with_admin};
use crate::support::{error_code, http, Conn, Deadline, Lockd};

#[tokio::test]
async fn a_watcher_sees_the_state_then_every_change_until_unwatch() {
    let lockd = Lockd::start(&[]);
    let mut watcher = lockd.connect().await;
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    let token = a.lock(1, "cfg", "exclusive").await;
    let session_a = a.call(json!({"id": 2, "op": "hello"})).await["session"].clone();
    let session_b = b.call(json!({"id": 1, "op": "hello"})).await["session"].clone();

    assert_eq!(
        watcher
            .call(json!({"id": 5, "op": "watch", "resource": "cfg"}))
            .await,
        json!({"id": 5, "ok": true})
    );
    let holder_a = json!({"session": session_a, "token": token, "mode": "exclusive"});
    assert_eq!(
        watcher.recv().await,
        json!({"id": 5, "event": "watch", "kind": "state", "resource": "cfg",
               "holders": [holder_a], "value": null, "queue": 0})
    );

    let write = json!({"id": 3, "op": "write", "resource": "cfg", "token": token, "value": "v1"});
    assert_eq!(a.call(write).await, json!({"id": 3, "ok": true}));
    assert_eq!(
        watcher.recv().await,
        json!({"id": 5, "event": "watch", "kind": "written", "resource": "cfg",
               "token": token, "value": "v1"})
    );
    b.send(json!({"id": 2, "op": "acquire", "resource": "cfg", "mode": "shared"}))
        .await;
    assert_eq!(b.recv().await["event"], "queued");
    assert_eq!(
        watcher.recv().await,
        json!({"id": 5, "event": "watch", "kind": "queue", "resource": "cfg", "queue": 1})
    );
    let release = json!({"id": 4, "op": "release", "resource": "cfg", "token": token});
    assert_eq!(a.call(release).await, json!({"id": 4, "ok": true}));
    let granted = b.recv().await;
    let holder_b = json!({"session": session_b, "token": granted["token"], "mode": "shared"});
    let mut expected = vec![
        json!({"id": 5, "event": "watch", "kind": "released", "resource": "cfg"}),
        json!({"id": 5, "event": "watch", "kind": "granted", "resource": "cfg"}),
        json!({"id": 5, "event": "watch", "kind": "queue", "resource": "cfg", "queue": 0}),
    ];
    merge(&mut expected[0], &holder_a);
    merge(&mut expected[1], &holder_b);
    for frame in expected {
        assert_eq!(watcher.recv().await, frame);
    }

    assert_eq!(
        watcher
            .call(json!({"id": 6, "op": "unwatch", "target": 5}))
            .await,
        json!({"id": 6, "ok": true})
    );
    b.call(json!({"id": 3, "op": "release", "resource": "cfg", "token": granted["token"]}))
        .await;
    watcher.expect_silence().await;
}

fn merge(into: &mut Value, from: &Value) {
    for (key, value) in from.as_object().unwrap() {
        into[key] = value.clone();
    }
}

#[tokio::test]
async fn watch_errors_are_clear_replies() {
    let lockd = Lockd::start(&["--max-watches-per-session", "1"]);
    let mut watcher = lockd.connect().await;
    assert_eq!(
        watcher
            .call(json!({"id": 1, "op": "watch", "resource": "a"}))
            .await["ok"],
        true
    );
    assert_eq!(watcher.recv().await["kind"], "state");
    let refused = watcher
        .call(json!({"id": 1, "op": "watch", "resource": "b"}))
        .await;
    assert_eq!(error_code(&refused), "bad_request", "{refused}");
    let refused = watcher
        .call(json!({"id": 2, "op": "watch", "resource": "b"}))
        .await;
    assert_eq!(error_code(&refused), "limit_exceeded", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-watches-per-session"),
        "{refused}"
    );
    let refused = watcher
        .call(json!({"id": 3, "op": "unwatch", "target": 9}))
        .await;
    assert_eq!(error_code(&refused), "bad_request", "{refused}");
    let refused = watcher.call(json!({"id": 4, "op": "watch"})).await;
    assert_eq!(error_code(&refused), "bad_request", "{refused}");
}

/// The slow watcher's backlog limit: small, so that a few unread events pass it.
const BACKLOG: usize = 16;
/// Each write's value: large, so that the kernel's socket buffers (4 MiB here) fill quickly.
const VALUE_BYTES: usize = 32 * 1024;
/// Writes: twice what the socket buffers, the unsent limit and the backlog hold together.
const WRITES: usize = 300;
/// The unsent-bytes limit of the test's lockd.
const MAX_UNSENT: usize = 64 * 1024;

fn value(i: usize) -> String {
    format!("{i:06}:{}", "x".repeat(VALUE_BYTES))
}

/// The write number a value carries.
fn number(value: &Value) -> usize {
    value.as_str().unwrap()[..6].parse().unwrap()
}

#[tokio::test]
async fn a_watcher_that_never_reads_gets_a_resync_while_another_keeps_up() {
    let (backlog, unsent) = (BACKLOG.to_string(), MAX_UNSENT.to_string());
    let (lockd, admin) = start_with_admin(&[
        "--max-watch-backlog",
        &backlog,
        "--max-unsent-bytes",
        &unsent,
        "--write-timeout-ms",
        "60000",
    ]);
    // The slow watcher: a small receive buffer, read only at the end.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut slow = Conn::from_stream(socket.connect(lockd.addr).await.unwrap());
    slow.send(json!({"id": 1, "op": "watch", "resource": "cfg"}))
        .await;
    let mut fast = lockd.connect().await;
    assert_eq!(
        fast.call(json!({"id": 1, "op": "watch", "resource": "cfg"}))
            .await["ok"],
        true
    );
    assert_eq!(fast.recv().await["kind"], "state");
    let mut writer = lockd.connect().await;
    let token = writer.lock(1, "cfg", "exclusive").await;
    assert_eq!(fast.recv().await["kind"], "granted");

    for i in 0..WRITES {
        let write = json!({"id": 10 + i, "op": "write", "resource": "cfg", "token": token, "value": value(i)});
        assert_eq!(writer.call(write).await["ok"], true);
        // In step with the writer, so the fast watcher never has more than one event waiting.
        let event = fast.recv().await;
        assert_eq!(event["kind"], "written", "the fast watcher keeps up");
        assert_eq!(number(&event["value"]), i);
    }

    let deadline = Deadline::new("the slow watcher's backlog to be replaced by a resync");
    loop {
        let metrics = http(admin, "GET", "/metrics", &[]).await.body;
        let resyncs = sample(&metrics, "lockd_watch_resyncs_total");
        let waiting = sample(&metrics, "lockd_watch_backlog_events");
        let unsent = sample(&metrics, "lockd_unsent_reply_bytes");
        assert!(
            waiting <= BACKLOG as f64,
            "{waiting} watch events wait; the limit is {BACKLOG}"
        );
        // One write of at most the limit, plus the frame that crosses it.
        assert!(
            unsent <= (MAX_UNSENT + VALUE_BYTES + 200) as f64,
            "{unsent} bytes unsent"
        );
        if resyncs >= 1.0 {
            break;
        }
        deadline
            .tick(format!("{resyncs} resyncs, {waiting} events waiting"))
            .await;
    }

    // Now it reads: every event follows on from the one before, or is a resync, and the last
    // one shows the last write.
    assert_eq!(slow.recv().await, json!({"id": 1, "ok": true}));
    let state = slow.recv().await;
    assert_eq!(state["kind"], "state", "{state}");
    let mut seen = None::<usize>;
    let mut resyncs = 0;
    // Each turn reads a frame, and `recv` gives up after its patience.
    while seen != Some(WRITES - 1) {
        let event = slow.recv().await;
        let at = match event["kind"].as_str().unwrap() {
            "granted" => {
                assert_eq!(seen, None, "granted after a write");
                continue;
            }
            "written" => {
                let at = number(&event["value"]);
                assert_eq!(
                    Some(at),
                    seen.map_or(Some(0), |s| Some(s + 1)),
                    "a silent gap"
                );
                at
            }
            "resync" => {
                resyncs += 1;
                assert_eq!(event["holders"][0]["token"], token);
                let at = number(&event["value"]);
                assert!(seen.is_none_or(|s| at >= s), "a resync went back");
                at
            }
            other => panic!("unexpected {other} event: {event}"),
        };
        seen = Some(at);
    }
    assert!(resyncs >= 1, "the slow watcher got no resync");
    fast.expect_silence().await;
}

#[tokio::test]
async fn the_admin_api_counts_watchers_and_watches() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut holder = lockd.connect().await;
    holder.lock(1, "busy", "exclusive").await;
    let mut watcher = lockd.connect().await;
    for (id, resource) in [(1, "idle"), (2, "busy")] {
        let watch = json!({"id": id, "op": "watch", "resource": resource});
        assert_eq!(watcher.call(watch).await["ok"], true);
        assert_eq!(watcher.recv().await["kind"], "state");
    }
    let one = http(admin, "GET", "/v1/locks/idle", &[]).await.json();
    assert_eq!(
        one,
        json!({"resource": "idle", "holders": [], "waiters": [], "watchers": 1})
    );
    let all = http(admin, "GET", "/v1/locks", &[]).await.json();
    assert_eq!(all["totals"]["watches"], 2, "{all}");
    assert_eq!(all["resources"][0]["watchers"], 1, "{all}");
    let metrics = http(admin, "GET", "/metrics", &[]).await.body;
    assert_eq!(sample(&metrics, "lockd_watches"), 2.0);

    let unwatch = json!({"id": 3, "op": "unwatch", "target": 1});
    assert_eq!(watcher.call(unwatch).await["ok"], true);
    let one = http(admin, "GET", "/v1/locks/idle", &[]).await.json();
    assert_eq!(
        one,
        json!({"resource": "idle", "holders": [], "waiters": []}),
        "no watchers: the field is absent"
    );
}
