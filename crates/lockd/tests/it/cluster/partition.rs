//! A node cut off from the others and then back: it must not cost the cluster its leader.

use std::time::Duration;

use serde_json::json;

use super::{hello, Cluster};
use crate::admin::sample;
use crate::fault_proxy::Mode;
use crate::support::{http, Deadline};

/// Every node's `lockd_raft_term`, in node order.
async fn terms(admins: &[std::net::SocketAddr]) -> Vec<f64> {
    let mut terms = Vec::new();
    for admin in admins {
        let metrics = http(*admin, "GET", "/metrics", &[]).await.body;
        terms.push(sample(&metrics, "lockd_raft_term"));
    }
    terms
}

/// A follower that hears nothing from the others runs for leader again and again. Without
/// pre-votes each attempt raised its term, and when the link came back the leader saw that
/// higher term in the follower's answer and stepped down: every client lost its connection and
/// the cluster held an election it did not need. With pre-votes the follower asks first whether
/// it would win, the others (who hear from their leader) say no, and its term stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_back_does_not_depose_the_leader() {
    let mut cluster = Cluster::start(3, &["--http", "127.0.0.1:0"]).await;
    let leader = cluster.leader(None).await;
    let follower = (leader + 1) % 3;
    let admins: Vec<_> = (0..3).map(|index| cluster.admin_addr(index)).collect();
    let mut client = cluster.connect(leader).await;
    assert_eq!(hello(&mut client, None).await["ok"], true);
    let token = client.lock(1, "r", "exclusive").await;
    let deadline = Deadline::new("every node to be in the leader's term");
    let term = loop {
        let terms = terms(&admins).await;
        if terms.iter().all(|term| *term == terms[0] && *term > 0.0) {
            break terms[0];
        }
        deadline.tick(format!("{terms:?}")).await;
    };

    // Cut every link into the follower (the leader's heartbeats among them) until it has run
    // for leader twice.
    let campaigns = |metrics: &str| sample(metrics, "lockd_raft_campaigns_total");
    let before = campaigns(&http(admins[follower], "GET", "/metrics", &[]).await.body);
    cluster.set_inbound(follower, Mode::Blackhole);
    let deadline = Deadline::new("the cut-off follower to run for leader twice");
    loop {
        let ran = campaigns(&http(admins[follower], "GET", "/metrics", &[]).await.body) - before;
        if ran >= 2.0 {
            break;
        }
        deadline.tick(format!("{ran} times")).await;
    }
    // Silent for that long, its leader is lost to it: it says it is not ready, and names no
    // leader (its pre-votes failed, so openraft on it still names the old one).
    let deadline = Deadline::new("the cut-off follower to say it is not ready");
    loop {
        let ready = http(admins[follower], "GET", "/readyz", &[]).await;
        if ready.status == 503 {
            assert!(ready.body.contains("leader"), "{}", ready.body);
            break;
        }
        deadline.tick(ready.status).await;
    }
    let mut asker = cluster.connect(follower).await;
    let status = asker.call(json!({"id": 1, "op": "cluster_status"})).await;
    assert_eq!(status["role"], "follower", "{status}");
    assert!(status["leader"].is_null(), "{status}");
    // The leader serves all along, with the other follower.
    let reply = client
        .call(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "cut"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");

    // Back: the follower names the leader again once it hears from it.
    cluster.set_inbound(follower, Mode::Pass);
    let leader_address = cluster.specs[leader].client.to_string();
    let deadline = Deadline::new("the follower to name the leader again");
    loop {
        let mut asker = cluster.connect(follower).await;
        asker.send(json!({"id": 1, "op": "hello"})).await;
        if let Ok(Some(reply)) = asker.try_recv(Duration::from_millis(500)).await {
            if reply["error"]["leader"] == leader_address.as_str() {
                break;
            }
        }
        deadline.tick("not yet").await;
    }
    let ready = http(admins[follower], "GET", "/readyz", &[]).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        terms(&admins).await,
        vec![term; 3],
        "no node's term moved: no election was held"
    );
    // The client's connection to the leader was never closed, and it holds its lock.
    let reply = client
        .call(json!({"id": 3, "op": "read", "resource": "r", "token": token}))
        .await;
    assert_eq!(reply["value"], "cut", "{reply}");
}
