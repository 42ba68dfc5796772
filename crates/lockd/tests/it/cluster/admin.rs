//! A cluster node's admin API answers for real: a forced release goes through the log on the
//! leader (a follower refuses it, naming the leader), and `/readyz` follows Raft.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{hello, Cluster};
use crate::support::{http, PATIENCE};

const TOKEN: &str = "cluster-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_release_on_the_leader_ends_the_holder_and_hands_the_lock_on() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let token_file = token_file.to_str().unwrap();
    let mut cluster = Cluster::start(
        3,
        &[
            "--http",
            "127.0.0.1:0",
            "--allow-force-release",
            "--admin-token-file",
            token_file,
        ],
    )
    .await;
    let leader = cluster.leader(None).await;
    let follower = (leader + 1) % 3;
    let leader_admin = cluster.admin_addr(leader);
    let follower_admin = cluster.admin_addr(follower);

    let mut stuck = cluster.connect(leader).await;
    let named = json!({"id": 100, "op": "hello", "client": "stuck-deploy", "lease_ms": 5_000});
    let opened = stuck.call(named).await;
    let session = opened["session"].clone();
    let token = stuck.lock(1, "deploy", "exclusive").await;
    let mut next = cluster.connect(leader).await;
    assert_eq!(hello(&mut next, None).await["ok"], true);
    next.send(json!({"id": 1, "op": "acquire", "resource": "deploy"}))
        .await;
    assert_eq!(next.recv().await["event"], "queued");

    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // A follower cannot change the table: it says who can.
    let reply = http(follower_admin, "DELETE", "/v1/locks/deploy", &auth).await;
    assert_eq!(reply.status, 421, "{}", reply.body);
    let leader_client = cluster.specs[leader].client.to_string();
    assert!(reply.body.contains(&leader_client), "{}", reply.body);
    // Without the token nothing happens, as on a single server.
    let reply = http(leader_admin, "DELETE", "/v1/locks/deploy", &[]).await;
    assert_eq!(reply.status, 401, "{}", reply.body);
    let reply = http(leader_admin, "DELETE", "/v1/locks/idle", &auth).await;
    assert_eq!(reply.status, 409, "{}", reply.body);

    let reply = http(leader_admin, "DELETE", "/v1/locks/deploy", &auth).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let released = reply.json();
    assert_eq!(released["released"][0]["session"], session);
    assert_eq!(released["released"][0]["token"], token);
    assert_eq!(released["released"][0]["client"], "stuck-deploy");
    // The waiter is granted through the queue, and the evicted holder's connection closes.
    let granted = next.recv().await;
    assert_eq!(
        (granted["id"].as_u64(), granted["ok"].as_bool()),
        (Some(1), Some(true)),
        "{granted}"
    );
    assert!(granted["token"].as_u64().unwrap() > token);
    assert_eq!(stuck.try_recv(PATIENCE).await, Ok(None));
    // The ended session cannot be resumed on any node.
    let mut resumer = cluster.connect(leader).await;
    let resumed = hello(&mut resumer, Some(&opened)).await;
    assert_eq!(resumed["error"]["code"], "no_session", "{resumed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_raft_ready_with_a_leader_unready_without_one() {
    let mut cluster = Cluster::start(3, &["--http", "127.0.0.1:0"]).await;
    let leader = cluster.leader(None).await;
    let admins: Vec<_> = (0..3).map(|index| cluster.admin_addr(index)).collect();
    for (index, admin) in admins.iter().enumerate() {
        let ready = wait_for_readyz(*admin, 200).await;
        assert_eq!(ready.status, 200, "node {}: {}", index + 1, ready.body);
    }
    // Without a majority the last node standing can elect no leader: it is not ready.
    let survivor = (leader + 1) % 3;
    for index in 0..3 {
        if index != survivor {
            cluster.kill(index);
        }
    }
    let unready = wait_for_readyz(admins[survivor], 503).await;
    assert!(unready.body.contains("leader"), "{}", unready.body);
}

/// Polls `/readyz` until it answers `status`, and returns that answer.
async fn wait_for_readyz(admin: std::net::SocketAddr, status: u16) -> crate::support::HttpReply {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let reply = http(admin, "GET", "/readyz", &[]).await;
        if reply.status == status {
            return reply;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz on {admin} never answered {status}; last: {} {}",
            reply.status,
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
