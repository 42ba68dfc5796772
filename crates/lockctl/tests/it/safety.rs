//! A holder knows it has lost its lock before anyone else can get it (docs/safety.md): the
//! link to lockd is blackholed by a TCP proxy that keeps both sockets open, and the guard's
//! `lost()` must fire before the server expires the session and grants the lock to the next
//! holder, all timed on one clock.

use std::time::{Duration, Instant};

use lockctl::{Client, SessionId};

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::{Server, PATIENCE};

/// Polls `status` until `session` no longer holds `resource`; returns when that was first seen.
async fn wait_until_gone(observer: &Client, resource: &str, session: SessionId) -> Instant {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = observer.status(Some(resource)).await.unwrap();
        if status[0]
            .holders
            .iter()
            .all(|holder| holder.session != session)
        {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{resource} was never freed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guard_on_a_blackholed_link_is_lost_before_the_server_expires_it() {
    const LEASE: Duration = Duration::from_millis(1_000);
    let server = Server::start_with_short_leases();
    let proxy = FaultProxy::start(server.addr).await;
    let holder = Client::builder(&proxy.addr().to_string())
        .lease(LEASE)
        .connect()
        .await
        .unwrap();
    let guard = holder.lock("r").acquire().await.unwrap();
    // Healthy: keepalive pings keep the deadline well ahead.
    let healthy_until = Instant::now() + LEASE * 2;
    let mut lowest = LEASE;
    while Instant::now() < healthy_until {
        lowest = lowest.min(guard.valid_for());
        assert!(!guard.in_jeopardy(), "a renewed guard is not in jeopardy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        lowest >= LEASE / 4,
        "valid_for fell to {lowest:?} on a healthy link"
    );

    let next = server.client().await;
    let observer = server.client().await;
    let waiting = tokio::spawn(async move {
        let granted = next.lock("r").acquire().await.unwrap();
        (Instant::now(), granted, next)
    });
    // The waiter must be in line before the cut, so that its grant is the expiry's.
    let deadline = Instant::now() + PATIENCE;
    while observer.status(Some("r")).await.unwrap()[0]
        .waiters
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let cut = Instant::now();
    proxy.set_mode(Mode::Blackhole);
    let mut jeopardy = None;
    loop {
        if jeopardy.is_none() && guard.in_jeopardy() {
            jeopardy = Some(Instant::now());
        }
        if holder.is_lost() {
            break;
        }
        assert!(cut.elapsed() < PATIENCE, "the guard was never lost");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let lost = Instant::now();
    assert_eq!(guard.valid_for(), Duration::ZERO);
    let freed = wait_until_gone(&observer, "r", holder.session().unwrap()).await;
    let (granted_at, _granted, _next) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the waiter was granted in time")
        .unwrap();
    let jeopardy = jeopardy.expect("in jeopardy before lost");
    assert!(jeopardy < lost, "jeopardy comes before the loss");
    assert!(
        lost < freed,
        "lost {lost:?} must come before the server freed the lock {freed:?}"
    );
    assert!(lost < granted_at, "lost before the next holder was granted");
    eprintln!(
        "blackholed guard (lease {LEASE:?}): jeopardy {:?}, lost() {:?}, server freed the lock \
         (seen by status) {:?}, next holder granted {:?} after the cut",
        jeopardy - cut,
        lost - cut,
        freed - cut,
        granted_at - cut
    );
    drop(guard);
}

/// A shell script for `lockctl run`: it notes its process group, starts a background child
/// that ignores SIGTERM, and runs until killed, ignoring SIGTERM too (so only SIGKILL ends
/// it: the hardest case for lockctl).
const STUBBORN: &str = "trap '' TERM; echo $$ > \"$DIR/group\"; \
     sh -c \"trap '' TERM; while :; do sleep 0.02; done\" & \
     echo ready; while :; do sleep 0.02; done";

/// Reads the process group the script wrote.
fn group_of(dir: &std::path::Path) -> i32 {
    std::fs::read_to_string(dir.join("group"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Whether any process of `group` is alive (zombies are not).
fn group_alive(group: i32) -> bool {
    std::fs::read_dir("/proc").unwrap().flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(group)
            && !matches!(fields.first(), Some(&"Z" | &"X"))
    })
}

/// How many processes `group` has (alive).
fn group_size(group: i32) -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|entry| {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                return false;
            };
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.get(2).and_then(|g| g.parse::<i32>().ok()) == Some(group)
                && !matches!(fields.first(), Some(&"Z" | &"X"))
        })
        .count()
}

/// Polls until `group` has no live process; returns when that was first seen.
async fn wait_group_gone(group: i32, within: Duration) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if !group_alive(group) {
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "process group {group} still alive after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_run_on_a_blackholed_link_stops_its_whole_group_before_the_next_grant() {
    const LEASE: Duration = Duration::from_millis(2_000);
    const LOCK_DELAY: Duration = Duration::from_millis(500);
    let server = Server::start_with(lockd::server::ServerConfig {
        table: lockd::core::TableConfig {
            default_lease: LEASE,
            ..lockd::core::TableConfig::default()
        },
        ..lockd::server::ServerConfig::default()
    });
    let proxy = FaultProxy::start(server.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::support::lockctl(
        &proxy.addr().to_string(),
        &[
            "run",
            "--lock-delay",
            "0.5",
            "job",
            "--",
            "sh",
            "-c",
            STUBBORN,
        ],
    );
    command.env("DIR", dir.path());
    let mut running = crate::support::Running::from_command(command);
    running.wait_for_line("ready").await;
    let group = group_of(dir.path());
    let deadline = Instant::now() + PATIENCE;
    while group_size(group) < 2 {
        assert!(
            Instant::now() < deadline,
            "the background child never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let observer = server.client().await;
    let holder = observer.status(Some("job")).await.unwrap()[0].holders[0].session;
    let next = server.client().await;
    let waiting = tokio::spawn(async move {
        let granted = next.lock("job").acquire().await.unwrap();
        (Instant::now(), granted, next)
    });
    let deadline = Instant::now() + PATIENCE;
    while observer.status(Some("job")).await.unwrap()[0]
        .waiters
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the waiter never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let cut = Instant::now();
    proxy.set_mode(Mode::Blackhole);
    let stopped = wait_group_gone(group, PATIENCE).await;
    let expired = wait_until_gone(&observer, "job", holder).await;
    let (granted_at, _granted, _next) = tokio::time::timeout(PATIENCE, waiting)
        .await
        .expect("the next holder was granted in time")
        .unwrap();
    let (code, _, stderr) = running.finish().await;
    assert_eq!(code, Some(75), "{stderr}");
    assert!(stderr.contains("SIGKILL"), "{stderr}");
    assert!(
        stopped < expired,
        "the command's group must be gone before the server expires the session: {stderr}"
    );
    assert!(expired < granted_at);
    // The expiry is seen by polling `status`, a little late: allow for that.
    assert!(
        granted_at - expired >= LOCK_DELAY / 2,
        "the lock-delay held the next grant back"
    );
    eprintln!(
        "lockctl run, blackholed link (lease {LEASE:?}, lock-delay {LOCK_DELAY:?}), after the \
         cut: command group gone {:?}; server expired the session (seen by status) {:?}; next \
         holder granted {:?}\nlockctl said: {stderr}",
        stopped - cut,
        expired - cut,
        granted_at - cut
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_of_lockctl_run_takes_the_command_group_with_it() {
    let server = Server::start();
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::support::lockctl(
        &server.addr_string(),
        &["run", "job", "--", "sh", "-c", STUBBORN],
    );
    command.env("DIR", dir.path());
    let mut running = crate::support::Running::from_command(command);
    running.wait_for_line("ready").await;
    let group = group_of(dir.path());
    let deadline = Instant::now() + PATIENCE;
    while group_size(group) < 2 {
        assert!(
            Instant::now() < deadline,
            "the background child never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let killed = Instant::now();
    running.signal("KILL");
    let gone = wait_group_gone(group, Duration::from_secs(3)).await;
    let _ = running.finish().await;
    eprintln!(
        "kill -9 of lockctl run: the command's group was gone {:?} later",
        gone - killed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_write_does_not_write_after_losing_its_lock() {
    let server = Server::start_with(lockd::server::ServerConfig {
        table: lockd::core::TableConfig {
            default_lease: Duration::from_millis(1_000),
            ..lockd::core::TableConfig::default()
        },
        ..lockd::server::ServerConfig::default()
    });
    let proxy = FaultProxy::start(server.addr).await;
    let mut running = crate::support::Running::spawn(
        &proxy.addr().to_string(),
        &["file_A", "WRITE", "too late", "5"],
    );
    running.wait_for_line("Sleeping").await;
    proxy.set_mode(Mode::Blackhole);
    let (code, lines, stderr) = running.finish().await;
    assert_eq!(code, Some(75), "{stderr}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("LOST lock on file_A; nothing was written"),
        "{lines:?}"
    );
    let client = server.client().await;
    let guard = client.lock("file_A").acquire().await.unwrap();
    assert_eq!(guard.read().await.unwrap(), None, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockctl_run_cut_off_from_a_cluster_stops_its_whole_group_before_the_next_grant() {
    const LEASE: Duration = Duration::from_millis(2_000);
    let cluster = crate::cluster_support::Cluster::start(lockd::server::ServerConfig {
        table: lockd::core::TableConfig {
            default_lease: LEASE,
            ..lockd::core::TableConfig::default()
        },
        ..lockd::server::ServerConfig::default()
    });
    cluster.leader(&[]).await;
    // lockctl reaches every node through a proxy of its own; the other clients do not.
    let mut proxies = Vec::new();
    for addr in cluster.addrs().split(',') {
        proxies.push(FaultProxy::start(addr.parse().unwrap()).await);
    }
    let through_proxies = proxies
        .iter()
        .map(|proxy| proxy.addr().to_string())
        .collect::<Vec<_>>()
        .join(",");
    let dir = tempfile::tempdir().unwrap();
    let mut command = crate::support::lockctl(
        &through_proxies,
        &["run", "job", "--", "sh", "-c", STUBBORN],
    );
    command.env("DIR", dir.path());
    let mut running = crate::support::Running::from_command(command);
    running.wait_for_line("ready").await;
    let group = group_of(dir.path());
    let deadline = Instant::now() + PATIENCE;
    while group_size(group) < 2 {
        assert!(
            Instant::now() < deadline,
            "the background child never started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let next = Client::connect(&cluster.addrs()).await.unwrap();
    let mut call = next
        .start_acquire("job", lockctl::LockMode::Exclusive, None)
        .unwrap();
    assert!(
        matches!(call.next().await, lockctl::AcquireProgress::Queued(1)),
        "the next holder waits"
    );

    let cut = Instant::now();
    for proxy in &proxies {
        proxy.set_mode(Mode::Blackhole);
    }
    let stopped = wait_group_gone(group, PATIENCE).await;
    let granted = tokio::time::timeout(PATIENCE, call.next())
        .await
        .expect("the next holder was granted in time");
    let granted_at = Instant::now();
    assert!(
        matches!(granted, lockctl::AcquireProgress::Done(Ok(_))),
        "{granted:?}"
    );
    let (code, _, stderr) = running.finish().await;
    assert_eq!(code, Some(75), "{stderr}");
    assert!(
        stopped < granted_at,
        "the group must be gone before the next grant: {stderr}"
    );
    eprintln!(
        "lockctl run cut off from a cluster (lease {LEASE:?}), after the cut: command group \
         gone {:?}; next holder granted {:?}",
        stopped - cut,
        granted_at - cut
    );
}
