//! Failover: what a client sees when the leader dies, a session is resumed or abandoned, and
//! the whole cluster restarts.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::admin::sample;
use crate::support::{error_code, http, Deadline, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_name_the_leader_and_the_leader_serves() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let follower = (leader + 1) % 3;
    let mut conn = cluster.connect(follower).await;
    let reply = conn
        .call(json!({"id": 7, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(error_code(&reply), "not_leader", "{reply}");
    assert_eq!(reply["id"], 7);
    assert_eq!(
        reply["error"]["leader"],
        cluster.specs[leader].client.to_string(),
        "{reply}"
    );

    let mut conn = cluster.connect(leader).await;
    let reply = hello(&mut conn, None).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let token = conn.lock(1, "r", "exclusive").await;
    let reply = conn
        .call(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let reply = conn
        .call(json!({"id": 3, "op": "read", "resource": "r", "token": token}))
        .await;
    assert_eq!(reply["value"], "v", "{reply}");
    let reply = conn.call(json!({"id": 4, "op": "status"})).await;
    assert_eq!(
        reply["resources"][0]["holders"][0]["token"], token,
        "{reply}"
    );
}

/// The heart of failover: a holder and a queued waiter both resume their sessions on the new
/// leader; the holder's token, lock and value survive, the waiter keeps its place and is
/// granted on its new connection under its original request id, with a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holders_and_waiters_keep_their_places_when_the_leader_dies() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;

    let mut holder = cluster.connect(leader).await;
    let holder_session = hello(&mut holder, None).await;
    let token = holder.lock(1, "jobs/nightly", "exclusive").await;
    let reply = holder
        .call(
            json!({"id": 2, "op": "write", "resource": "jobs/nightly", "token": token,
                     "value": "before"}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    let mut waiter = cluster.connect(leader).await;
    let waiter_session = hello(&mut waiter, None).await;
    let queued = waiter
        .call(json!({"id": 41, "op": "acquire", "resource": "jobs/nightly"}))
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");

    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;

    let mut holder = cluster.connect(new_leader).await;
    let reply = hello(&mut holder, Some(&holder_session)).await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["session"], holder_session["session"]);
    let reply = holder
        .call(json!({"id": 3, "op": "read", "resource": "jobs/nightly", "token": token}))
        .await;
    assert_eq!(
        reply["value"], "before",
        "the lock and the value survived: {reply}"
    );

    let mut waiter = cluster.connect(new_leader).await;
    let reply = hello(&mut waiter, Some(&waiter_session)).await;
    assert_eq!(reply["ok"], true, "{reply}");

    let reply = holder
        .call(json!({"id": 4, "op": "release", "resource": "jobs/nightly", "token": token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let granted = waiter.recv().await;
    assert_eq!(granted["id"], 41, "{granted}");
    assert_eq!(granted["ok"], true, "{granted}");
    assert!(granted["token"].as_u64().unwrap() > token, "{granted}");

    // A session nobody resumes is gone once its lease runs out.
    let mut stranger = cluster.connect(new_leader).await;
    let unknown = json!({"session": 123_456, "resume_secret": "00112233445566778899aabbccddeeff"});
    let reply = hello(&mut stranger, Some(&unknown)).await;
    assert_eq!(error_code(&reply), "no_session", "{reply}");
}

/// Every node killed at once, then restarted from disk (with snapshots taken and the log
/// compacted along the way): the values and the token order survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_cluster_restarts_from_its_logs_and_snapshots() {
    let flags = ["--snapshot-every", "10"];
    let mut cluster = Cluster::start(3, &flags).await;
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    let mut last_token = 0;
    for round in 0..30u64 {
        let token = conn.lock(round * 10 + 1, "counter", "exclusive").await;
        assert!(token > last_token);
        last_token = token;
        let reply = conn
            .call(
                json!({"id": round * 10 + 2, "op": "write", "resource": "counter",
                         "token": token, "value": round.to_string()}),
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        let reply = conn
            .call(
                json!({"id": round * 10 + 3, "op": "release", "resource": "counter",
                         "token": token}),
            )
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
    }
    drop(conn);
    for index in 0..3 {
        cluster.kill(index);
    }
    for index in 0..3 {
        cluster.restart(index, &flags);
    }
    let leader = cluster.leader(None).await;
    let mut conn = cluster.connect(leader).await;
    let token = conn.lock(1, "counter", "exclusive").await;
    assert!(token > last_token, "{token} after {last_token}");
    let reply = conn
        .call(json!({"id": 2, "op": "read", "resource": "counter", "token": token}))
        .await;
    assert_eq!(reply["value"], "29", "{reply}");
}

/// A client that resumes its session re-sends what it had in flight with the same ids: what
/// was applied is answered again from the saved reply, never applied twice; a waiting acquire
/// is told its place again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_requests_after_a_resume_are_applied_once() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut first = cluster.connect(leader).await;
    let opened = hello(&mut first, None).await;
    let token = first.lock(1, "a", "exclusive").await;
    let released = first
        .call(json!({"id": 2, "op": "release", "resource": "a", "token": token}))
        .await;
    assert_eq!(released["ok"], true, "{released}");

    // Someone else takes `a`; our session queues for `b` behind them.
    let mut other = cluster.connect(leader).await;
    hello(&mut other, None).await;
    let other_token = other.lock(1, "a", "exclusive").await;
    other.lock(2, "b", "exclusive").await;
    let queued = first
        .call(json!({"id": 3, "op": "acquire", "resource": "b"}))
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");

    // The client lost its connection and resumes on a new one (ids count on: hello is 101).
    drop(first);
    let mut resumed = cluster.connect(leader).await;
    let reply = resumed
        .call(
            json!({"id": 101, "op": "hello", "session": opened["session"],
                     "resume_secret": opened["resume_secret"]}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let retried = resumed
        .call(json!({"id": 1, "op": "acquire", "resource": "a"}))
        .await;
    assert_eq!(
        retried["token"], token,
        "the saved grant, not a new acquire: {retried}"
    );
    let retried = resumed
        .call(json!({"id": 2, "op": "release", "resource": "a", "token": token}))
        .await;
    assert_eq!(retried, released, "the saved reply");
    let reply = resumed
        .call(json!({"id": 102, "op": "validate", "resource": "a", "token": other_token}))
        .await;
    assert_eq!(
        reply["valid"], true,
        "the retry freed nobody else's lock: {reply}"
    );
    let retried = resumed
        .call(json!({"id": 3, "op": "acquire", "resource": "b"}))
        .await;
    assert_eq!(retried, json!({"id": 3, "event": "queued", "position": 1}));
    // A new request above the floor is applied as usual.
    let reply = resumed
        .call(json!({"id": 103, "op": "acquire", "resource": "c"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
}

/// A client that goes away without coming back loses its locks when its lease runs out: the
/// leader writes the expiry into the log, and the next waiter is granted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_session_expires_and_its_waiter_is_granted() {
    let cluster = Cluster::start(3, &["--min-lease-ms", "100"]).await;
    let leader = cluster.leader(None).await;
    let mut gone = cluster.connect(leader).await;
    let reply = gone
        .call(json!({"id": 1, "op": "hello", "lease_ms": 300}))
        .await;
    assert_eq!(reply["lease_ms"], 300, "{reply}");
    let token = gone.lock(2, "r", "exclusive").await;
    drop(gone);

    let mut waiter = cluster.connect(leader).await;
    hello(&mut waiter, None).await;
    let started = Instant::now();
    let reply = waiter
        .call(json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(reply["event"], "queued", "{reply}");
    let granted = waiter.recv().await;
    assert_eq!(granted["ok"], true, "{granted}");
    assert!(granted["token"].as_u64().unwrap() > token);
    assert!(started.elapsed() < PATIENCE);
}

/// An acquire that has waited through many other requests (more than the saved replies) is
/// still recognized as waiting when it is retried after a resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_wait_survives_a_resume_after_many_pings() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut holder = cluster.connect(leader).await;
    hello(&mut holder, None).await;
    holder.lock(1, "busy", "exclusive").await;

    let mut waiter = cluster.connect(leader).await;
    let opened = hello(&mut waiter, None).await;
    let queued = waiter
        .call(json!({"id": 1, "op": "acquire", "resource": "busy"}))
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");
    let pings: Vec<_> = (2..=80).map(|id| json!({"id": id, "op": "ping"})).collect();
    waiter.send_batch(&pings).await;
    for _ in 2..=80 {
        assert_eq!(waiter.recv().await["ok"], true);
    }
    drop(waiter);

    let mut resumed = cluster.connect(leader).await;
    let reply = resumed
        .call(
            json!({"id": 200, "op": "hello", "session": opened["session"],
                     "resume_secret": opened["resume_secret"]}),
        )
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let retried = resumed
        .call(json!({"id": 1, "op": "acquire", "resource": "busy"}))
        .await;
    assert_eq!(retried, json!({"id": 1, "event": "queued", "position": 1}));
}

/// An acquire's timeout runs on the leader's clock through `Tick` entries: it fails in time,
/// and the lock's holder is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_times_out_in_a_cluster() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut holder = cluster.connect(leader).await;
    hello(&mut holder, None).await;
    let token = holder.lock(1, "r", "exclusive").await;

    let mut waiter = cluster.connect(leader).await;
    hello(&mut waiter, None).await;
    let started = Instant::now();
    let queued = waiter
        .call(json!({"id": 1, "op": "acquire", "resource": "r", "timeout_ms": 300}))
        .await;
    assert_eq!(queued["event"], "queued", "{queued}");
    let failed = waiter.recv().await;
    assert_eq!(error_code(&failed), "timeout", "{failed}");
    assert_eq!(failed["id"], 1);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    let reply = holder
        .call(json!({"id": 2, "op": "validate", "resource": "r", "token": token}))
        .await;
    assert_eq!(reply["valid"], true, "{reply}");
}

/// A semaphore's holders, its limit and its FIFO waiter survive a leader kill: the new leader
/// still refuses another limit, and a release there grants the waiter on its resumed session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_semaphore_survives_a_leader_kill() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let acquire = |id: u64, permits: u64| json!({"id": id, "op": "acquire", "resource": "exports", "permits": permits, "limit": 3});

    let mut holder = cluster.connect(leader).await;
    let holder_session = hello(&mut holder, None).await;
    let reply = holder.call(acquire(1, 2)).await;
    let token = reply["token"].as_u64().expect("granted");
    let mut waiter = cluster.connect(leader).await;
    let waiter_session = hello(&mut waiter, None).await;
    let queued = waiter.call(acquire(41, 2)).await;
    assert_eq!(queued["event"], "queued", "{queued}");

    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;

    let mut stranger = cluster.connect(new_leader).await;
    hello(&mut stranger, None).await;
    let reply = stranger
        .call(json!({"id": 5, "op": "acquire", "resource": "exports", "limit": 4}))
        .await;
    assert_eq!(
        error_code(&reply),
        "limit_mismatch",
        "the limit survived: {reply}"
    );
    let reply = stranger
        .call(json!({"id": 6, "op": "status", "resource": "exports"}))
        .await;
    let exports = &reply["resources"][0];
    assert_eq!(
        (exports["limit"].clone(), exports["permits_used"].clone()),
        (json!(3), json!(2)),
        "{reply}"
    );

    let mut holder = cluster.connect(new_leader).await;
    assert_eq!(hello(&mut holder, Some(&holder_session)).await["ok"], true);
    let mut waiter = cluster.connect(new_leader).await;
    assert_eq!(hello(&mut waiter, Some(&waiter_session)).await["ok"], true);
    let reply = holder
        .call(json!({"id": 2, "op": "release", "resource": "exports", "token": token}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let granted = waiter.recv().await;
    assert_eq!(
        (
            granted["id"].clone(),
            granted["permits"].clone(),
            granted["limit"].clone()
        ),
        (json!(41), json!(2), json!(3)),
        "{granted}"
    );
    assert!(granted["token"].as_u64().unwrap() > token, "{granted}");
}

/// A follower whose leader stopped answering does not send clients to it: it holds their
/// requests until a new leader is elected, and then names that one (or serves, if it is it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_holds_a_request_while_its_leader_is_silent_and_names_the_next_leader() {
    let mut cluster = Cluster::start(3, &["--http", "127.0.0.1:0"]).await;
    let old_leader = cluster.leader(None).await;
    let follower = (old_leader + 1) % 3;
    let other = (old_leader + 2) % 3;
    let admin = cluster.admin_addr(follower);
    let old_address = cluster.specs[old_leader].client.to_string();

    // With the other follower stopped too, no leader can be elected, so the follower's doubt
    // lasts until the test ends it.
    cluster.signal(old_leader, "STOP");
    cluster.signal(other, "STOP");
    // Until the follower misses two heartbeats it still names the old leader; from then on it
    // holds each request, which the gauge shows.
    let deadline = Deadline::new("the follower to hold a hello while its leader is silent");
    let mut conn = loop {
        let mut conn = cluster.connect(follower).await;
        conn.send(json!({"id": 1, "op": "hello"})).await;
        match conn.try_recv(Duration::from_millis(100)).await {
            Ok(Some(reply)) => {
                // Before its doubt (or after holding it for two election timeouts, if this
                // loop was slow), the follower answers at once.
                assert_eq!(error_code(&reply), "not_leader", "{reply}");
                let named = &reply["error"]["leader"];
                assert!(named.is_null() || named == old_address.as_str(), "{reply}");
            }
            Ok(None) => panic!("the follower closed the connection"),
            Err(()) => {
                let metrics = http(admin, "GET", "/metrics", &[]).await.body;
                if sample(&metrics, "lockd_requests_awaiting_leader") >= 1.0 {
                    break conn;
                }
            }
        }
        deadline.tick("not held yet").await;
    };

    // A majority again: the two elect a leader, and the held hello is answered. (Held for
    // two election timeouts without a leader, it is answered without one: then ask again.)
    cluster.signal(other, "CONT");
    let deadline = Deadline::new("the held hello to be answered with the new leader");
    let reply = loop {
        let reply = conn.recv().await;
        if reply["ok"] == true || !reply["error"]["leader"].is_null() {
            break reply;
        }
        conn.send(json!({"id": 2, "op": "hello"})).await;
        deadline.tick(&reply).await;
    };
    cluster.signal(old_leader, "CONT");
    if reply["ok"] == true {
        return; // the follower became the leader and served the hello
    }
    assert_eq!(error_code(&reply), "not_leader", "{reply}");
    let new_address = cluster.specs[other].client.to_string();
    assert_eq!(
        reply["error"]["leader"],
        new_address.as_str(),
        "the held hello names the new leader: {reply}"
    );
}

/// A cluster counts fencing tokens by the clock, as a single server does: every grant's token
/// is at least its leader's time in microseconds, under every leader, so that a cluster
/// restored from a backup starts above every token issued before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_above_the_clock_under_every_leader() {
    let micros_now = || {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970");
        u64::try_from(since.as_micros()).expect("microseconds fit")
    };
    let mut cluster = Cluster::start(3, &[]).await;
    let first_leader = cluster.leader(None).await;
    let mut conn = cluster.connect(first_leader).await;
    hello(&mut conn, None).await;
    // Entry times are in milliseconds: the floor is the millisecond the leader stamped.
    let before = micros_now() / 1_000 * 1_000;
    let first = conn.lock(1, "a", "exclusive").await;
    assert!(
        first >= before,
        "token {first} is below the clock, {before} µs"
    );

    cluster.kill(first_leader);
    let leader = cluster.leader(Some(first_leader)).await;
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    let before = micros_now() / 1_000 * 1_000;
    let second = conn.lock(1, "b", "exclusive").await;
    assert!(
        second >= before,
        "token {second} is below the clock, {before} µs"
    );
    assert!(second > first, "{second} after {first}");
}
