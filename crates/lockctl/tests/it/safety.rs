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
