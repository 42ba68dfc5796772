//! Multi-resource locks from the client library and from `lockctl run --and`: all granted
//! together or none, a token per resource, released together, and no deadlock between clients
//! that name the same resources in opposite orders.

use lockctl::{AcquireProgress, ErrorCode, LockMode};

use crate::support::{run_lockctl, stdout_lines, Running, Server, PATIENCE};

#[tokio::test]
async fn a_multi_guard_takes_every_resource_together_and_releases_them_all() {
    let server = Server::start();
    let holder = server.client().await;
    let waiter = server.client().await;
    let held = holder.lock("accounts/bob").acquire().await.unwrap();
    let mut call = waiter
        .start_acquire_many(
            &[
                ("accounts/alice", LockMode::Exclusive),
                ("accounts/bob", LockMode::Exclusive),
            ],
            None,
            None,
        )
        .unwrap();
    let progress = tokio::time::timeout(PATIENCE, call.next())
        .await
        .expect("answered in time");
    assert!(
        matches!(progress, AcquireProgress::Queued(1)),
        "{progress:?}"
    );
    // It waits in both queues and holds neither.
    let alice = &waiter.status(Some("accounts/alice")).await.unwrap()[0];
    assert!(alice.holders.is_empty(), "{alice:?}");
    assert_eq!(alice.waiters.len(), 1, "{alice:?}");
    let group: Vec<String> = alice.waiters[0]
        .group
        .iter()
        .flatten()
        .map(ToString::to_string)
        .collect();
    assert_eq!(group, ["accounts/alice", "accounts/bob"]);
    let output = run_lockctl(&server.addr_string(), &["status"]).await;
    let lines = stdout_lines(&output);
    assert!(
        lines
            .iter()
            .any(|line| line.starts_with("accounts/alice")
                && line.contains("waiting #1 (group of 2)")),
        "{lines:?}"
    );
    // A cancel takes it out of both queues.
    waiter.cancel(call.id()).await.unwrap();
    let outcome = tokio::time::timeout(PATIENCE, call.next())
        .await
        .expect("answered in time");
    assert!(
        matches!(&outcome, AcquireProgress::Done(Err(err)) if err.code() == Some(ErrorCode::Cancelled)),
        "{outcome:?}"
    );
    let alice = &waiter.status(Some("accounts/alice")).await.unwrap()[0];
    assert!(alice.waiters.is_empty(), "{alice:?}");

    // The guard form: granted once bob is released, a token per resource.
    let third = server.client().await;
    let acquiring = tokio::spawn(async move {
        let guard = third
            .multi()
            .exclusive("accounts/carol")
            .shared("accounts/bob")
            .acquire()
            .await
            .unwrap();
        (third, guard)
    });
    held.release().await.unwrap();
    let (third, guard) = tokio::time::timeout(PATIENCE, acquiring)
        .await
        .expect("granted in time")
        .unwrap();
    let tokens = guard.tokens();
    assert_eq!(tokens.len(), 2);
    assert_eq!(tokens[0].resource.as_str(), "accounts/carol");
    assert_eq!(tokens[1].mode, LockMode::Shared);
    let carol = guard.token("accounts/carol").unwrap();
    assert!(third.validate("accounts/carol", carol).await.unwrap());
    guard.write("accounts/carol", "100").await.unwrap();
    assert_eq!(
        guard.read("accounts/carol").await.unwrap().as_deref(),
        Some("100")
    );
    let err = guard.write("accounts/bob", "1").await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotExclusive), "{err}");
    assert!(guard.token("accounts/dave").is_none());

    // Dropping the guard gives every member back.
    drop(guard);
    let again = tokio::time::timeout(
        PATIENCE,
        holder
            .multi()
            .exclusive("accounts/bob")
            .exclusive("accounts/carol")
            .acquire(),
    )
    .await
    .expect("granted in time")
    .unwrap();
    assert!(!third.validate("accounts/carol", carol).await.unwrap());
    again.release().await.unwrap();
}

#[tokio::test]
async fn a_bad_multi_request_gets_a_clear_error() {
    let server = Server::start();
    let client = server.client().await;
    let _held = client.lock("b").acquire().await.unwrap();
    let other = server.client().await;
    let err = other
        .multi()
        .exclusive("a")
        .exclusive("b")
        .try_once()
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::Timeout), "{err}");
    assert!(err.to_string().contains(" b "), "names the busy one: {err}");
    let err = other
        .multi()
        .exclusive("a")
        .shared("a")
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    assert!(err.to_string().contains("appears twice"), "{err}");
    let err = other.multi().acquire().await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::BadRequest), "{err}");
    // Nothing of the refused requests was left behind.
    let busy = other.status(None).await.unwrap();
    assert_eq!(busy.len(), 1, "{busy:?}");
}

#[tokio::test]
async fn run_with_and_holds_every_resource_and_gives_the_command_each_token() {
    let server = Server::start();
    let addr = server.addr_string();
    let output = run_lockctl(
        &addr,
        &[
            "run",
            "acct/a",
            "--and",
            "acct/b",
            "--",
            "sh",
            "-c",
            "echo $LOCKD_RESOURCE $LOCKD_TOKEN; echo $LOCKD_TOKENS",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    let lines = stdout_lines(&output);
    let first: Vec<&str> = lines[0].split(' ').collect();
    assert_eq!(first[0], "acct/a", "{lines:?}");
    let token_a: u64 = first[1].parse().unwrap();
    assert_eq!(
        lines[1],
        format!("acct/a={token_a} acct/b={}", token_a + 1),
        "{lines:?}"
    );

    // Busy: -n exits with the conflict code and runs nothing.
    let holder = server.client().await;
    let _held = holder.lock("acct/b").acquire().await.unwrap();
    let output = run_lockctl(
        &addr,
        &[
            "run", "-n", "acct/a", "--and", "acct/b", "--", "echo", "ran",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stdout_lines(&output).is_empty(), "{output:?}");
}

#[tokio::test]
async fn runs_naming_the_same_resources_in_opposite_orders_never_deadlock() {
    let server = Server::start();
    let addr = server.addr_string();
    let dir = tempfile::tempdir().unwrap();
    let marks = dir.path().join("holding");
    std::fs::create_dir(&marks).unwrap();
    // Each command marks itself as holding both accounts and counts the marks: a count above 1
    // means two commands held them at once.
    let script = format!(
        "touch {dir}/$$; ls {dir} | wc -l >> {dir}/../counts; sleep 0.05; rm {dir}/$$",
        dir = marks.display()
    );
    let runs: Vec<Running> = (0..6)
        .map(|i| {
            let (first, second) = if i % 2 == 0 {
                ("acct/a", "acct/b")
            } else {
                ("acct/b", "acct/a")
            };
            Running::spawn(
                &addr,
                &["run", first, "--and", second, "--", "sh", "-c", &script],
            )
        })
        .collect();
    for run in runs {
        let (code, _, stderr) = run.finish().await;
        assert_eq!(code, Some(0), "{stderr}");
    }
    let counts = std::fs::read_to_string(dir.path().join("counts")).unwrap();
    let counts: Vec<&str> = counts.lines().map(str::trim).collect();
    assert_eq!(counts, ["1"; 6], "every command ran, each alone");
}
