//! Snapshots at scale: a node added to a cluster whose log was compacted catches up from the
//! leader's snapshot of a table full of held locks.
//!
//! `LOCKD_SNAPSHOT_LOCKS` sets how many locks are held (3,000 by default, across 10 sessions;
//! 100 sessions from 100,000 on), `LOCKD_SNAPSHOT_EVERY` the nodes' `--snapshot-every` (10 by
//! default; they keep as many entries behind a snapshot, at most 1,000), and the test prints how
//! long filling the table and adding the node took. It asserts no time: docs/cluster.md ("Snapshots") gives the figures and the
//! command, a release build with a million locks.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::support::Conn;

/// The admin credential the cluster below is given, which `add_node` needs.
const ADMIN_TOKEN: &str = "snapshots-admin-credential";

/// How long every session's lease is: the whole test, filling included, fits in it.
const LEASE_MS: u64 = 300_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_catches_up_from_a_snapshot_of_many_held_locks() {
    let locks: usize = std::env::var("LOCKD_SNAPSHOT_LOCKS")
        .ok()
        .and_then(|locks| locks.parse().ok())
        .unwrap_or(3_000);
    let sessions = if locks >= 100_000 { 100 } else { 10 };
    let per_session = locks.div_ceil(sessions);
    let dir = tempfile::tempdir().expect("a temp dir");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("the token file");
    let per_session_flag = per_session.max(10_000).to_string();
    let snapshot_every = std::env::var("LOCKD_SNAPSHOT_EVERY").unwrap_or_else(|_| "10".to_owned());
    let mut flags = vec![
        "--admin-token-file",
        token_file.to_str().expect("a UTF-8 path"),
        // Snapshots, and the log before them dropped, all along the filling (a node keeps
        // this many entries behind its snapshot, so the new node cannot catch up by the log).
        "--snapshot-every",
        &snapshot_every,
        "--max-locks-per-session",
        &per_session_flag,
    ];
    // A node starved for longer than the tests' usual 600 ms election timeout starts an
    // election, and a new leader during the filling closes the fillers' connections: three
    // nodes and a hundred pipelining clients on a 2-core machine starve each other at scale,
    // and other work on the machine does at any size (nodes stood still for up to 1.5 s in a
    // soak beside CPU burners and another soak).
    flags.extend(["--election-timeout-ms", "3000", "--heartbeat-ms", "500"]);
    let mut cluster = Cluster::start(3, &flags).await;
    let leader = cluster.leader(None).await;

    // Each session holds its share of the locks, acquired in pipelined batches.
    let filling = Instant::now();
    let mut fillers = Vec::new();
    for session in 0..sessions {
        let mut conn = cluster.connect(leader).await;
        fillers.push(tokio::spawn(async move {
            let mut opened = json!({"id": 100, "op": "hello", "lease_ms": LEASE_MS});
            opened = conn.call(opened).await;
            assert_eq!(opened["ok"], true, "{opened}");
            let names: Vec<String> = (0..per_session)
                .map(|i| format!("held/{session:03}/{i:07}"))
                .collect();
            for (batch_index, batch) in names.chunks(200).enumerate() {
                let frames: Vec<_> = batch
                    .iter()
                    .enumerate()
                    .map(|(i, name)| {
                        let id = 1_000 + batch_index * 200 + i;
                        json!({"id": id, "op": "acquire", "resource": name})
                    })
                    .collect();
                conn.send_batch(&frames).await;
                for _ in batch {
                    let reply = conn.recv().await;
                    assert_eq!(reply["ok"], true, "{reply}");
                }
            }
            conn
        }));
    }
    let mut holders = Vec::new();
    for filler in fillers {
        holders.push(filler.await.expect("the filler finished"));
    }
    let filled = filling.elapsed();
    let mut conn = cluster.connect(leader).await;
    let (applied, purged) = drop_the_start_of_the_log(&cluster, leader, &mut conn).await;

    // A new node joins: add_node answers once it has caught up (through the snapshot: the
    // log before it is gone) and votes.
    let joiner = cluster.start_joiner();
    let spec = &cluster.specs[joiner];
    let adding = Instant::now();
    let reply = conn
        .call(json!({"id": 2, "op": "add_node", "node_id": spec.id,
                     "client": spec.client.to_string(), "peer": spec.peer.to_string(),
                     "admin_token": ADMIN_TOKEN}))
        .await;
    let added = adding.elapsed();
    assert_eq!(reply["ok"], true, "{reply}");
    // It has every entry the leader had applied; applying the log after the snapshot may
    // take it a little longer.
    let mut joined = cluster.connect(joiner).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let status = joined.call(json!({"id": 1, "op": "cluster_status"})).await;
        // `null` until the node has applied anything: its metrics may show the snapshot a
        // moment after add_node's answer (seen once in CI).
        if status["last_applied"]
            .as_u64()
            .is_some_and(|index| index >= applied)
        {
            // Its snapshot covers the entries the leader no longer had: the only way it could
            // have them.
            let snapshot = status["snapshot_index"].as_u64();
            assert!(snapshot.is_some_and(|index| index > purged), "{status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new node did not apply the leader's {applied} entries within 120 s: {status}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = adding.elapsed();
    eprintln!(
        "{locks} locks held by {sessions} sessions: filled in {filled:?}; a new node added \
         (its log matched and it votes) in {added:?}, and it applied all the leader had in \
         {caught_up:?}"
    );
    // Whole snapshots only: the new node may be building one of its own meanwhile (a `.tmp`),
    // and for a moment have it beside the one it installed (renamed, not yet the current one).
    let snapshots: Vec<_> = std::fs::read_dir(cluster.specs[joiner].data_dir.join("snapshots"))
        .expect("the new node's snapshot directory")
        .map(|entry| entry.expect("an entry").file_name())
        .filter(|name| name.to_string_lossy().ends_with(".json"))
        .collect();
    assert!(!snapshots.is_empty(), "a snapshot installed: {snapshots:?}");

    // With the old leader gone, the three others (the new node among them) are the majority
    // of four that every commit needs, and the locks are still held.
    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;
    let mut conn = cluster.connect(new_leader).await;
    hello(&mut conn, None).await;
    for session in [0, sessions - 1] {
        let name = format!("held/{session:03}/{:07}", per_session - 1);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reply = conn
                .call(json!({"id": 3, "op": "status", "resource": name}))
                .await;
            if reply["ok"] == true {
                let holders = reply["resources"][0]["holders"].as_array();
                assert_eq!(holders.map(Vec::len), Some(1), "{reply}");
                break;
            }
            // A new leader may still be taking over (not_leader until it serves).
            assert!(Instant::now() < deadline, "{reply}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    drop(holders);
}

/// Commits entries through `leader` (an acquire and a release at a time) until it has dropped
/// the start of its log, so that a node added next cannot catch up by the log, and returns the
/// leader's last applied index and the last index it dropped.
///
/// The fill alone does not always get there: it writes some 18 entries, a node drops entries
/// only behind a snapshot and keeps `--snapshot-every` (10) of them behind it, and openraft
/// takes the first snapshot once 10 entries are committed, so a first snapshot at index 9
/// drops nothing and the second may come only with the entries that adding the node writes.
/// The new node was then sent the log or the snapshot depending on whether that snapshot was
/// built before the leader had found where the new node's log matches its own (the new node
/// caught up by the log, and the test failed, in 1 of 4 runs of the whole suite).
async fn drop_the_start_of_the_log(
    cluster: &Cluster,
    leader: usize,
    conn: &mut Conn,
) -> (u64, u64) {
    let mut writer = cluster.connect(leader).await;
    let opened = writer
        .call(json!({"id": 1, "op": "hello", "lease_ms": LEASE_MS}))
        .await;
    assert_eq!(opened["ok"], true, "{opened}");
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in (2..).step_by(2) {
        let status = conn.call(json!({"id": 1, "op": "cluster_status"})).await;
        if let Some(purged) = status["purged_index"].as_u64() {
            let applied = status["last_applied"].as_u64().expect("last_applied");
            return (applied, purged);
        }
        assert!(
            Instant::now() < deadline,
            "the leader dropped none of its log within 30 s (it drops the entries a snapshot \
             covers but the last --snapshot-every): {status}"
        );
        let acquired = writer
            .call(json!({"id": id, "op": "acquire", "resource": "log-filler"}))
            .await;
        assert_eq!(acquired["ok"], true, "{acquired}");
        let released = writer
            .call(
                json!({"id": id + 1, "op": "release", "resource": "log-filler",
                         "token": acquired["token"]}),
            )
            .await;
        assert_eq!(released["ok"], true, "{released}");
        // The snapshot is built, and the log dropped, after the entries that call for it.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!("ids run out")
}
