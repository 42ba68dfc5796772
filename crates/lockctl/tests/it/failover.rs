//! Failover: clients given a cluster's three addresses carry on when the leader dies, through
//! the library (guards, waiting acquires) and the `lockctl` binary; and a session that finds
//! no leader within its lease is reported lost.

use std::time::Duration;

use lockctl::{AcquireProgress, Client, ClientError, LockMode};
use lockd::core::TableConfig;
use lockd::server::ServerConfig;

use crate::cluster_support::{Cluster, ADMIN_TOKEN};
use crate::support::{run_lockctl, stdout_lines, Running, PATIENCE};

/// A client of all three nodes, with a short lease so that a lost session shows quickly.
async fn cluster_client(cluster: &Cluster, lease: Duration) -> Client {
    Client::builder(&cluster.addrs())
        .lease(lease)
        .connect()
        .await
        .unwrap()
}

/// Leases as short as 100 ms allowed.
fn short_leases() -> ServerConfig {
    ServerConfig {
        table: TableConfig {
            min_lease: Duration::from_millis(100),
            ..TableConfig::default()
        },
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_keeps_its_lock_and_token_when_the_leader_dies() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    let client = cluster_client(&cluster, Duration::from_secs(5)).await;
    let guard = client.lock("jobs/nightly").acquire().await.unwrap();
    guard.write("before").await.unwrap();
    let token = guard.token();

    cluster.kill(leader);
    let new_leader = cluster.leader(&[leader]).await;
    assert_ne!(new_leader, leader);

    let read = tokio::time::timeout(PATIENCE, guard.read()).await.unwrap();
    assert_eq!(read.unwrap().as_deref(), Some("before"));
    guard.write("after").await.unwrap();
    assert_eq!(guard.token(), token);
    assert!(!client.is_lost(), "a resumed session is not lost");

    let other = cluster_client(&cluster, Duration::from_secs(5)).await;
    assert!(other.validate("jobs/nightly", token).await.unwrap());
    let busy = other.lock("jobs/nightly").try_once().acquire().await;
    assert!(busy.is_err(), "still held by the resumed session");
    guard.release().await.unwrap();
    let next = other
        .lock("jobs/nightly")
        .try_once()
        .acquire()
        .await
        .unwrap();
    assert!(next.token() > token);
    assert_eq!(next.read().await.unwrap().as_deref(), Some("after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_acquire_keeps_its_place_when_the_leader_dies() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    let holder = cluster_client(&cluster, Duration::from_secs(5)).await;
    let held = holder.lock("r").acquire().await.unwrap();
    let waiter = cluster_client(&cluster, Duration::from_secs(5)).await;
    let mut call = waiter
        .start_acquire("r", LockMode::Exclusive, None)
        .unwrap();
    assert!(matches!(call.next().await, AcquireProgress::Queued(1)));

    cluster.kill(leader);
    cluster.leader(&[leader]).await;
    let token = held.token();
    tokio::time::timeout(PATIENCE, held.release())
        .await
        .unwrap()
        .unwrap();

    let granted = tokio::time::timeout(PATIENCE, async {
        loop {
            match call.next().await {
                // The re-sent acquire is told its place again.
                AcquireProgress::Queued(_) => continue,
                AcquireProgress::Done(outcome) => return outcome,
            }
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(granted.token > token);
    assert!(!waiter.is_lost() && !holder.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_finds_the_leader_behind_a_follower() {
    let cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    let follower = (leader + 1) % 3;
    let addrs = cluster.addrs_in_order(&[follower, (leader + 2) % 3, leader]);

    let write = run_lockctl("127.0.0.1:1", &["--server", &addrs, "file_A", "WRITE", "v"]).await;
    assert!(write.status.success(), "{write:?}");
    let read = run_lockctl(&addrs, &["file_A", "READ", "0"]).await;
    assert!(read.status.success(), "{read:?}");
    assert!(
        stdout_lines(&read).contains(&"READ from file_A: v".to_owned()),
        "{read:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_run_carries_on_through_a_failover() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    let script = "echo ready; sleep 2; echo done";
    let running = Running::spawn(
        &cluster.addrs(),
        &["run", "jobs/nightly", "--", "sh", "-c", script],
    );
    let mut running = running;
    running.wait_for_line("ready").await;
    cluster.kill(leader);
    let (code, lines, stderr) = running.finish().await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(lines, ["ready", "done"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_lost_when_no_leader_comes_within_its_lease() {
    let mut cluster = Cluster::start(short_leases());
    let leader = cluster.leader(&[]).await;
    let client = cluster_client(&cluster, Duration::from_millis(1_000)).await;
    let guard = client.lock("r").acquire().await.unwrap();

    // Two of three nodes down: no majority, so no leader.
    cluster.kill(leader);
    cluster.kill((leader + 1) % 3);
    tokio::time::timeout(PATIENCE, guard.lost())
        .await
        .expect("the session is lost once its lease has run out");
    let err = guard.read().await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost), "{err:?}");
}

/// A cluster keeps a session after its connection closes (it may be failing over), so an
/// interrupted lockctl must leave the queue itself rather than wait there until its lease ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_while_waiting_on_a_cluster_leaves_the_queue() {
    let cluster = Cluster::start(ServerConfig::default());
    cluster.leader(&[]).await;
    let holder = cluster_client(&cluster, Duration::from_secs(5)).await;
    let _held = holder.lock("busy").acquire().await.unwrap();
    let mut waiter = Running::spawn(&cluster.addrs(), &["busy", "READ"]);
    waiter.wait_for_line("WAITING").await;
    waiter.signal("INT");
    let (code, _, stderr) = waiter.finish().await;
    assert_eq!(code, Some(130), "{stderr}");
    let status = holder.status(Some("busy")).await.unwrap();
    assert!(status[0].waiters.is_empty(), "{status:?}");
}

/// `lockctl cluster status` asks every node, and still answers for the others when one is
/// down; `remove-node` goes to the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_cluster_status_and_remove_node() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    // A node that has not yet had the leader's first message shows as a learner with no
    // leader (seen beside CPU burners): wait until both followers have.
    let started = std::time::Instant::now();
    let lines = loop {
        let status = run_lockctl(&cluster.addrs(), &["cluster", "status"]).await;
        assert!(status.status.success(), "{status:?}");
        let lines = stdout_lines(&status);
        assert!(lines[0].starts_with("ADDRESS"), "{lines:?}");
        let count = |role: &str| lines.iter().filter(|l| l.contains(role)).count();
        if count(" follower ") == 2 {
            break lines;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "two nodes did not both follow the leader within {PATIENCE:?}: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        lines.iter().filter(|l| l.contains(" leader ")).count(),
        1,
        "{lines:?}"
    );
    assert!(lines.iter().any(|l| l.starts_with("MEMBER")), "{lines:?}");

    // One address is enough: the others are learned from the members it lists.
    let one = cluster.addrs_in_order(&[(leader + 1) % 3]);
    let status = run_lockctl(&one, &["cluster", "status"]).await;
    let lines = stdout_lines(&status);
    for role in [" leader ", " follower "] {
        assert_eq!(
            lines.iter().filter(|l| l.contains(role)).count(),
            if role == " leader " { 1 } else { 2 },
            "{lines:?}"
        );
    }

    let down = (leader + 1) % 3;
    cluster.kill(down);
    let status = run_lockctl(&cluster.addrs(), &["cluster", "status"]).await;
    assert!(status.status.success(), "{status:?}");
    let lines = stdout_lines(&status);
    let down_addr = cluster.addrs_in_order(&[down]);
    let row = lines
        .iter()
        .find(|l| l.starts_with(&down_addr) && l.contains("unreachable"))
        .unwrap_or_else(|| panic!("no row for the down node: {lines:?}"));
    assert!(
        !row.contains("refused"),
        "the error has a line of its own: {row}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("{down_addr}: "))),
        "{lines:?}"
    );
    for line in &lines {
        assert!(
            line.chars().count() <= 100,
            "{line:?} is wider than 100 columns"
        );
    }
    let down_id = (down + 1).to_string();
    // Membership changes need the admin credential: none is a usage error, a wrong one is
    // refused by the leader, and nothing changes.
    let removed = run_lockctl(&cluster.addrs(), &["cluster", "remove-node", &down_id]).await;
    assert_eq!(removed.status.code(), Some(2), "{removed:?}");
    assert!(
        String::from_utf8_lossy(&removed.stderr).contains("--admin-token-file"),
        "{removed:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-credential\n").unwrap();
    let args = ["cluster", "remove-node", &down_id, "--admin-token-file"];
    let refused = run_lockctl(
        &cluster.addrs(),
        &[&args[..], &[wrong.to_str().unwrap()]].concat(),
    )
    .await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("admin credential"),
        "{refused:?}"
    );
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let removed = run_lockctl(
        &cluster.addrs(),
        &[&args[..], &[token.to_str().unwrap()]].concat(),
    )
    .await;
    assert!(removed.status.success(), "{removed:?}");
    assert!(
        stdout_lines(&removed).contains(&format!("Node {down_id} is no longer a member.")),
        "{removed:?}"
    );
}

/// A leader that stops answering without closing anything (paused, or cut off by a
/// partition) is left once a ping has gone unanswered for half the lease: the client resumes
/// its session elsewhere. Two fake servers stand in for the cluster's nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_leader_is_left_for_another_node() {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::TcpListener;

    async fn answer_hello(stream: tokio::net::TcpStream) -> BufReader<tokio::net::TcpStream> {
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let hello: serde_json::Value = serde_json::from_str(&line).unwrap();
        let reply = serde_json::json!({"id": hello["id"], "ok": true, "session": 7,
            "lease_ms": 1000, "server": "fake", "protocol": 1,
            "resume_secret": "5ec7e75ec7e75ec7e75ec7e75ec7e75e"});
        let mut reply = reply.to_string();
        reply.push('\n');
        reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
        reader
    }

    // The first node answers the first hello, then hears everything and says nothing; later
    // connections to it are closed at once.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let (stream, _) = silent.accept().await.unwrap();
        let mut reader = answer_hello(stream).await;
        tokio::spawn(async move {
            let mut sink = String::new();
            while reader.read_line(&mut sink).await.is_ok_and(|read| read > 0) {}
        });
        while let Ok((stream, _)) = silent.accept().await {
            drop(stream);
        }
    });
    // The second node records the hello it gets.
    let other = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let (resumed_tx, resumed_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (stream, _) = other.accept().await.unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        let _ = resumed_tx.send(line);
    });

    let _client = Client::builder(&format!("{silent_addr},{other_addr}"))
        .lease(Duration::from_secs(1))
        .connect()
        .await
        .unwrap();
    let hello = tokio::time::timeout(PATIENCE, resumed_rx)
        .await
        .expect("the client left the silent node in time")
        .unwrap();
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    assert_eq!(hello["op"], "hello", "{hello}");
    assert_eq!(
        hello["session"], 7,
        "the session is resumed, not replaced: {hello}"
    );
    assert_eq!(
        hello["resume_secret"], "5ec7e75ec7e75ec7e75ec7e75ec7e75e",
        "a resume presents the secret the session opened with: {hello}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_given_up_in_a_long_failover_gives_its_locks_back_when_a_leader_returns() {
    // Leases of at least 10 s: the give-back asks for the shortest lease, and the session must
    // stay visible long enough for the check below to see it alive, once the observer has
    // resumed its own session on the new leader too (on a loaded machine 3 s, and then 5 s
    // beside two CPU burners, were not always enough).
    let mut cluster = Cluster::start(ServerConfig {
        table: TableConfig {
            min_lease: Duration::from_secs(10),
            ..TableConfig::default()
        },
        ..ServerConfig::default()
    });
    let leader = cluster.leader(&[]).await;
    let follower = (leader + 1) % 3;
    let observer = cluster_client(&cluster, Duration::from_secs(30)).await;
    let _other = observer.lock("other").acquire().await.unwrap();
    let holder = cluster_client(&cluster, Duration::from_secs(10)).await;
    let session = holder.session().unwrap();
    let _given_up = holder.lock("given-up").acquire().await.unwrap();
    // The holder also waits for what the observer holds: while that wait shows in `status`,
    // its session is alive, so a free `given-up` then was given back, not expired.
    let mut waiting = holder
        .start_acquire("other", LockMode::Exclusive, None)
        .unwrap();
    assert!(matches!(waiting.next().await, AcquireProgress::Queued(1)));

    // No majority: no leader until the follower is back, far past the holder's local lease.
    cluster.kill(leader);
    cluster.kill(follower);
    // The holder's lease (10 s) runs out first, then it gives up.
    tokio::time::timeout(PATIENCE * 2, holder.lost())
        .await
        .unwrap();
    cluster.restart(follower);
    cluster.leader(&[leader]).await;

    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = observer.status(None).await.unwrap();
        let holds = |name: &str| {
            status
                .iter()
                .filter(|entry| entry.resource.as_str() == name)
                .flat_map(|entry| entry.holders.iter().map(|holder| holder.session))
                .any(|holder| holder == session)
        };
        let waits = status
            .iter()
            .filter(|entry| entry.resource.as_str() == "other")
            .flat_map(|entry| entry.waiters.iter())
            .any(|waiter| waiter.session == session);
        if !holds("given-up") {
            assert!(
                waits,
                "given-up was freed by the session's end, not given back: {status:?}"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lost session never gave given-up back: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_stream_gets_a_resync_when_the_leader_dies_and_goes_on() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader = cluster.leader(&[]).await;
    let watcher = cluster_client(&cluster, Duration::from_secs(5)).await;
    let mut watch = watcher.watch("cfg").await.unwrap();
    assert!(matches!(
        watch.next().await.unwrap().change,
        lockctl::WatchChange::State(_)
    ));
    let holder = cluster_client(&cluster, Duration::from_secs(5)).await;
    let guard = holder.lock("cfg").acquire().await.unwrap();
    let granted = watch.next().await.unwrap().change;
    assert!(
        matches!(&granted, lockctl::WatchChange::Granted(h) if h.token == guard.token()),
        "{granted:?}"
    );

    cluster.kill(leader);
    cluster.leader(&[leader]).await;

    // The watcher's client resumes its session by itself; its watch says so with a resync.
    let resync = tokio::time::timeout(PATIENCE, watch.next())
        .await
        .expect("a resync after the failover")
        .unwrap()
        .change;
    let lockctl::WatchChange::Resync(state) = resync else {
        panic!("expected a resync, got {resync:?}");
    };
    assert_eq!(state.holders[0].token, guard.token());
    guard.write("after").await.unwrap();
    let written = watch.next().await.unwrap().change;
    assert_eq!(
        written,
        lockctl::WatchChange::Written {
            token: guard.token(),
            value: "after".to_owned()
        }
    );
    assert!(!watcher.is_lost());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_election_keeps_its_leader_through_a_cluster_failover_and_observers_follow() {
    let mut cluster = Cluster::start(ServerConfig::default());
    let leader_node = cluster.leader(&[]).await;
    let lease = Duration::from_secs(5);
    let (a, b) = (
        cluster_client(&cluster, lease).await,
        cluster_client(&cluster, lease).await,
    );
    let mut observers = Vec::new();
    for _ in 0..2 {
        let client = cluster_client(&cluster, lease).await;
        let mut leaders = client.election("sched").observe().await.unwrap();
        assert_eq!(leaders.next().await.unwrap(), None);
        observers.push((client, leaders));
    }
    let first = a.election("sched").campaign("node-a").await.unwrap();
    let epoch_a = first.epoch();
    let leader_a = Some(lockctl::Leader {
        value: Some("node-a".to_owned()),
        epoch: epoch_a,
        session: a.session().unwrap(),
    });
    for (_, leaders) in &mut observers {
        assert_eq!(leaders.next().await.unwrap(), leader_a);
    }
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.election("sched").campaign("node-b").await }
    });
    let observer = cluster_client(&cluster, lease).await;
    let deadline = std::time::Instant::now() + PATIENCE;
    while observer.status(Some("sched")).await.unwrap()[0]
        .waiters
        .is_empty()
    {
        assert!(std::time::Instant::now() < deadline, "b never queued");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    cluster.kill(leader_node);
    cluster.leader(&[leader_node]).await;

    // The leader's session resumes on the new cluster leader: it still leads, with its epoch.
    // The observers' watches get a resync, which shows the same leader and so no new item; a
    // new observer, served by the new cluster leader's table, sees the value the log carried.
    let mut late = observer.election("sched").observe().await.unwrap();
    assert_eq!(late.next().await.unwrap(), leader_a);
    assert!(!a.is_lost(), "the leader's session survives the failover");
    assert!(observer.validate("sched", first.epoch()).await.unwrap());

    // The leader resigns: every observer sees nobody, then the next candidate and its value.
    first.resign().await.unwrap();
    let second = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let leader_b = Some(lockctl::Leader {
        value: Some("node-b".to_owned()),
        epoch: second.epoch(),
        session: b.session().unwrap(),
    });
    for (_, leaders) in &mut observers {
        let next = tokio::time::timeout(PATIENCE, leaders.next())
            .await
            .unwrap();
        assert_eq!(next.unwrap(), None);
        let next = tokio::time::timeout(PATIENCE, leaders.next())
            .await
            .unwrap();
        assert_eq!(next.unwrap(), leader_b);
    }
    assert!(second.epoch() > epoch_a);
}
