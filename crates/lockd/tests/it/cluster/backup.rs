//! A cluster's online backup (`GET /v1/backup` on the leader) and its restore: into a single
//! server, which starts on the file, and into a new cluster (`POST /v1/restore`). Every value
//! acknowledged before the backup began is restored, and no token is handed out twice.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::json;

use super::{hello, Cluster};
use crate::support::{http, http_bytes, http_with_body, Conn, Deadline, Lockd};

const WRITERS: usize = 4;
const BEARER: (&str, &str) = ("Authorization", "Bearer backup-admin");

/// A value and the token of the shared lock it was read under.
async fn read_under_lock(conn: &mut Conn, resource: &str) -> (u64, String) {
    let (token, value) = crate::durability::read_under_lock(conn, resource).await;
    (token, value.as_str().expect("a value").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_backup_under_writes_restores_every_acknowledged_value_and_no_token_twice() {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = dir.path().join("admin-token");
    std::fs::write(&admin_token, "backup-admin\n").unwrap();
    let flags = [
        "--http",
        "127.0.0.1:0",
        "--admin-token-file",
        admin_token.to_str().unwrap(),
    ];
    let mut cluster = Cluster::start(3, &flags).await;
    let leader = cluster.leader(None).await;
    let admin = cluster.admin_addr(leader);

    // Each writer holds its own resource and writes 1, 2, 3, ... there; `acked` is the last
    // value the cluster acknowledged, `highest` the largest token any grant gave.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WRITERS).map(|_| AtomicUsize::new(0)).collect());
    let highest = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut conn = cluster.connect(leader).await;
        hello(&mut conn, None).await;
        let (stop, acked, highest) = (Arc::clone(&stop), Arc::clone(&acked), Arc::clone(&highest));
        writers.push(tokio::spawn(async move {
            let resource = format!("w{writer}");
            let token = conn.lock(1, &resource, "exclusive").await;
            highest.fetch_max(token, Ordering::Relaxed);
            let mut value = 0;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                let write = json!({"id": 2, "op": "write", "resource": resource, "token": token,
                                   "value": value.to_string()});
                assert_eq!(conn.call(write).await["ok"], true);
                acked[writer].store(value, Ordering::Relaxed);
            }
            conn
        }));
    }
    let deadline = Deadline::new("every writer to have 10 writes acknowledged");
    while acked.iter().any(|count| count.load(Ordering::Relaxed) < 10) {
        deadline.tick("fewer").await;
    }

    let acknowledged = || {
        acked
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let before = acknowledged();
    let started = std::time::Instant::now();
    let (status, backup) = http_bytes(admin, "GET", "/v1/backup", &[BEARER]).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&backup));
    let during = acknowledged().iter().sum::<usize>() - before.iter().sum::<usize>();
    stop.store(true, Ordering::Relaxed);
    let mut conns = Vec::new();
    for writer in writers {
        conns.push(writer.await.unwrap());
    }
    eprintln!(
        "cluster backup of {WRITERS} values took {took:?} ({} bytes) while {during} writes were \
         acknowledged",
        backup.len()
    );
    let follower = (leader + 1) % 3;
    let follower_admin = cluster.admin_addr(follower);
    let refused = http(follower_admin, "GET", "/v1/backup", &[BEARER]).await;
    assert_eq!(
        refused.status, 421,
        "a follower sends the operator to the leader: {refused:?}"
    );

    // More grants after the backup: a restore must start above them too.
    let mut conn = cluster.connect(leader).await;
    hello(&mut conn, None).await;
    for id in 0..5 {
        let token = conn.lock(20 + id, &format!("after{id}"), "exclusive").await;
        highest.fetch_max(token, Ordering::Relaxed);
    }
    let highest = highest.load(Ordering::Relaxed);
    let check = |restored: &[(u64, String)], what: &str| {
        for (writer, ((token, value), acknowledged)) in restored.iter().zip(&before).enumerate() {
            let value: usize = value.parse().unwrap();
            assert!(
                value >= *acknowledged,
                "{what}: w{writer} restored as {value}, but {acknowledged} was acknowledged \
                 before the backup"
            );
            assert!(
                *token > highest,
                "{what}: token {token} is not above {highest}, granted before the restore"
            );
        }
    };

    // Into a single server: it starts on the file.
    let single = dir.path().join("single");
    std::fs::create_dir(&single).unwrap();
    std::fs::write(single.join("lockd.redb"), &backup).unwrap();
    let lockd = Lockd::start_in(&single, &[]);
    let mut conn = lockd.connect().await;
    let mut restored = Vec::new();
    for writer in 0..WRITERS {
        restored.push(read_under_lock(&mut conn, &format!("w{writer}")).await);
    }
    check(&restored, "single server");

    // Into a new cluster, through its leader's admin API.
    let mut fresh = Cluster::start(3, &flags).await;
    let fresh_leader = fresh.leader(None).await;
    let fresh_admin = fresh.admin_addr(fresh_leader);
    let fresh_follower = fresh.admin_addr((fresh_leader + 1) % 3);
    let misdirected =
        http_with_body(fresh_follower, "POST", "/v1/restore", &[BEARER], &backup).await;
    assert_eq!(misdirected.status, 421, "{misdirected:?}");
    let unauthorized = http_with_body(fresh_admin, "POST", "/v1/restore", &[], &backup).await;
    assert_eq!(unauthorized.status, 401, "{unauthorized:?}");
    let junk = http_with_body(
        fresh_admin,
        "POST",
        "/v1/restore",
        &[BEARER],
        b"not a backup",
    )
    .await;
    assert_eq!(junk.status, 400, "{junk:?}");
    let loaded = http_with_body(fresh_admin, "POST", "/v1/restore", &[BEARER], &backup).await;
    assert_eq!(loaded.status, 200, "{loaded:?}");
    assert_eq!(loaded.json()["restored_values"], WRITERS, "{loaded:?}");
    let again = http_with_body(fresh_admin, "POST", "/v1/restore", &[BEARER], &backup).await;
    assert_eq!(
        again.status, 409,
        "a restore never replaces values: {again:?}"
    );
    let mut conn = fresh.connect(fresh_leader).await;
    hello(&mut conn, None).await;
    let mut restored = Vec::new();
    for writer in 0..WRITERS {
        restored.push(read_under_lock(&mut conn, &format!("w{writer}")).await);
    }
    check(&restored, "new cluster");
    drop(conns);
}
