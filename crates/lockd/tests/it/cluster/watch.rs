//! A watch across a leader kill: events come from applied entries, and the resumed session's
//! watch gets a `resync` with what it missed, never a silent gap (issue 17).

use serde_json::json;

use super::{hello, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_watch_gets_a_resync_after_the_leader_dies() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;

    let mut watcher = cluster.connect(leader).await;
    let watcher_session = hello(&mut watcher, None).await;
    assert_eq!(watcher_session["ok"], true, "{watcher_session}");
    let watch = json!({"id": 5, "op": "watch", "resource": "cfg"});
    assert_eq!(watcher.call(watch).await, json!({"id": 5, "ok": true}));
    let state = watcher.recv().await;
    assert_eq!(
        state,
        json!({"id": 5, "event": "watch", "resource": "cfg", "kind": "state",
               "holders": [], "value": null, "queue": 0})
    );

    let mut holder = cluster.connect(leader).await;
    let holder_session = hello(&mut holder, None).await;
    let token = holder.lock(1, "cfg", "exclusive").await;
    let granted = watcher.recv().await;
    assert_eq!(granted["kind"], "granted", "{granted}");
    assert_eq!(granted["token"], token, "{granted}");
    assert_eq!(granted["session"], holder_session["session"], "{granted}");
    let write = json!({"id": 2, "op": "write", "resource": "cfg", "token": token, "value": "v1"});
    assert_eq!(holder.call(write).await["ok"], true);
    let written = watcher.recv().await;
    assert_eq!(written["kind"], "written", "{written}");
    assert_eq!(written["value"], "v1", "{written}");

    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;

    // The holder comes back first and writes while the watcher is away.
    let mut holder = cluster.connect(new_leader).await;
    let resumed = hello(&mut holder, Some(&holder_session)).await;
    assert_eq!(resumed["ok"], true, "{resumed}");
    let write = json!({"id": 3, "op": "write", "resource": "cfg", "token": token, "value": "v2"});
    assert_eq!(holder.call(write).await["ok"], true);

    // The watcher resumes: the hello's reply, then the resync with what it missed.
    let mut watcher = cluster.connect(new_leader).await;
    let resumed = hello(&mut watcher, Some(&watcher_session)).await;
    assert_eq!(resumed["ok"], true, "{resumed}");
    assert_eq!(resumed["session"], watcher_session["session"], "{resumed}");
    let resync = watcher.recv().await;
    assert_eq!(
        resync,
        json!({"id": 5, "event": "watch", "resource": "cfg", "kind": "resync",
               "holders": [{"session": holder_session["session"], "token": token,
                            "mode": "exclusive"}],
               "value": "v2", "queue": 0})
    );

    // And the events go on from there, from the new leader's applied entries.
    let release = json!({"id": 4, "op": "release", "resource": "cfg", "token": token});
    assert_eq!(holder.call(release).await["ok"], true);
    let released = watcher.recv().await;
    assert_eq!(released["kind"], "released", "{released}");
    assert_eq!(released["token"], token, "{released}");
}

/// Leader election across a leader kill, on real processes: the campaign values travel in the
/// log with their acquires, so the new cluster leader's table has the leader's value and the
/// waiting candidate's, and an observer's resync shows the new leader with its own value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_and_its_observer_carry_on_after_the_cluster_leader_dies() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;

    let mut observer = cluster.connect(leader).await;
    let observer_session = hello(&mut observer, None).await;
    let watch = json!({"id": 5, "op": "watch", "resource": "sched"});
    assert_eq!(observer.call(watch).await, json!({"id": 5, "ok": true}));
    assert_eq!(observer.recv().await["holders"], json!([]));

    let mut a = cluster.connect(leader).await;
    let a_session = hello(&mut a, None).await;
    let campaign = json!({"id": 1, "op": "acquire", "resource": "sched", "value": "a:80"});
    let granted = a.call(campaign).await;
    let epoch_a = granted["token"].as_u64().expect("a leads");
    let event = observer.recv().await;
    assert_eq!(
        event,
        json!({"id": 5, "event": "watch", "resource": "sched", "kind": "granted",
               "session": a_session["session"], "token": epoch_a, "mode": "exclusive",
               "value": "a:80"})
    );
    let mut b = cluster.connect(leader).await;
    let b_session = hello(&mut b, None).await;
    let campaign = json!({"id": 1, "op": "acquire", "resource": "sched", "value": "b:80"});
    assert_eq!(b.call(campaign).await["event"], "queued");

    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;

    // The waiting candidate resumes, then the leader resumes and resigns.
    let mut b = cluster.connect(new_leader).await;
    let resumed = hello(&mut b, Some(&b_session)).await;
    assert_eq!(resumed["ok"], true, "{resumed}");
    let mut a = cluster.connect(new_leader).await;
    let resumed = hello(&mut a, Some(&a_session)).await;
    assert_eq!(resumed["ok"], true, "{resumed}");
    let resign = json!({"id": 2, "op": "release", "resource": "sched", "token": epoch_a});
    assert_eq!(a.call(resign).await["ok"], true);
    let granted = b.recv().await;
    assert_eq!(granted["id"], 1, "{granted}");
    let epoch_b = granted["token"].as_u64().expect("b leads");
    assert!(epoch_b > epoch_a, "{granted}");

    // The observer resumes: its resync shows the new leader, with its own value.
    let mut observer = cluster.connect(new_leader).await;
    assert_eq!(
        hello(&mut observer, Some(&observer_session)).await["ok"],
        true
    );
    let resync = observer.recv().await;
    assert_eq!(
        resync,
        json!({"id": 5, "event": "watch", "resource": "sched", "kind": "resync",
               "holders": [{"session": b_session["session"], "token": epoch_b,
                            "mode": "exclusive", "value": "b:80"}],
               "value": null, "queue": 0})
    );
}
