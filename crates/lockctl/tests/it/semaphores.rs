//! Semaphores from the client library and from `lockctl run --limit`: guards that hold permits
//! with their own tokens, a clear error for a mismatched limit, and at most N commands at once.

use lockctl::{AcquireProgress, ErrorCode, LockMode};

use crate::support::{run_lockctl, stdout_lines, Running, Server, PATIENCE};

#[tokio::test]
async fn semaphore_guards_hold_permits_each_with_its_own_token() {
    let server = Server::start();
    let first = server.client().await;
    let second = server.client().await;
    let a = first
        .semaphore("exports", 4)
        .permits(3)
        .acquire()
        .await
        .unwrap();
    assert_eq!(a.mode(), LockMode::Shared);
    let permits = a.permits().expect("a semaphore guard");
    assert_eq!((permits.count().get(), permits.limit().get()), (3, 4));
    let b = second.semaphore("exports", 4).acquire().await.unwrap();
    assert!(b.token() > a.token());
    // Four of four are held: a try-once request for one more is refused.
    let third = server.client().await;
    let err = third
        .semaphore("exports", 4)
        .try_once()
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    let err = third.semaphore("exports", 5).acquire().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitMismatch), "{err}");
    let err = third.lock("x").permits(2).acquire().await.unwrap_err();
    assert!(
        err.to_string().contains("permits need a semaphore"),
        "{err}"
    );
    let err = third
        .semaphore("exports", 4)
        .permits(5)
        .acquire()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("from 1 to the limit 4"), "{err}");
    let err = third.semaphore("exports", 0).acquire().await.unwrap_err();
    assert!(err.to_string().contains("`limit` must be from 1"), "{err}");

    // Dropping a guard gives its permits back.
    drop(a);
    let c = tokio::time::timeout(PATIENCE, third.semaphore("exports", 4).permits(3).acquire())
        .await
        .expect("granted in time")
        .unwrap();
    assert!(c.token() > b.token());
}

#[tokio::test]
async fn status_shows_permits_of_the_limit() {
    let server = Server::start();
    let addr = server.addr_string();
    let holder = server.client().await;
    let _held = holder
        .semaphore("gpus", 2)
        .permits(2)
        .acquire()
        .await
        .unwrap();
    let waiter = server.client().await;
    let mut waiting = waiter
        .start_acquire("gpus", LockMode::Shared, None)
        .unwrap();
    // A lock request on a semaphore is refused at once, not queued.
    let refused = tokio::time::timeout(PATIENCE, waiting.next())
        .await
        .expect("answered in time");
    assert!(
        matches!(&refused, AcquireProgress::Done(Err(err)) if err.code() == Some(ErrorCode::LimitMismatch)),
        "{refused:?}"
    );
    let output = run_lockctl(&addr, &["status"]).await;
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..2], ["gpus", "holding"], "{lines:?}");
    assert!(lines[1].contains("2/2 permits"), "{lines:?}");
}

#[tokio::test]
async fn run_with_a_limit_runs_at_most_that_many_commands_at_once() {
    let server = Server::start();
    let addr = server.addr_string();
    let dir = tempfile::tempdir().unwrap();
    let running = dir.path().join("running");
    std::fs::create_dir(&running).unwrap();
    // Each command marks itself running, counts who runs beside it, and leaves. A mark exists
    // only while its command holds a permit, so a count above 2 means the limit was broken.
    let script = format!(
        "touch {dir}/$$; ls {dir} | wc -l >> {dir}/../counts; sleep 0.2; rm {dir}/$$",
        dir = running.display()
    );
    let runs: Vec<Running> = (0..5)
        .map(|_| {
            Running::spawn(
                &addr,
                &["run", "--limit", "2", "exports", "--", "sh", "-c", &script],
            )
        })
        .collect();
    for run in runs {
        let (code, _, stderr) = run.finish().await;
        assert_eq!(code, Some(0), "{stderr}");
    }
    let counts = std::fs::read_to_string(dir.path().join("counts")).unwrap();
    let counts: Vec<u32> = counts.lines().map(|n| n.trim().parse().unwrap()).collect();
    assert_eq!(counts.len(), 5, "every command ran: {counts:?}");
    assert!(counts.iter().all(|n| (1..=2).contains(n)), "{counts:?}");
}
