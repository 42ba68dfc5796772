//! The real `lockctl` binary: the original README's examples line for line, exit codes,
//! signals, and `status`.

use std::time::Duration;

use lockctl::{AcquireProgress, ErrorCode, LockMode};
use lockd::core::TableConfig;
use lockd::server::ServerConfig;

use crate::support::{run_lockctl, stdout_lines, Running, Server, PATIENCE};

#[tokio::test]
async fn example_1_basic_write() {
    let server = Server::start();
    let output = run_lockctl(
        &server.addr_string(),
        &["file_A", "WRITE", "Hello Distributed World", "1"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout_lines(&output),
        [
            "REQUESTING lock for resource: file_A",
            "LOCKED file_A",
            "Sleeping for 1 seconds...",
            "WROTE 'Hello Distributed World' to file_A",
            "UNLOCKED file_A",
        ]
    );
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn example_2_a_reader_waits_for_the_writer() {
    let server = Server::start();
    let addr = server.addr_string();
    let mut writer = Running::spawn(&addr, &["file_A", "WRITE", "Shared Resource Test", "1"]);
    writer.wait_for_line("LOCKED").await;
    let reader = Running::spawn(&addr, &["file_A", "READ"]);
    let (writer_code, writer_lines, _) = writer.finish().await;
    let (reader_code, reader_lines, reader_err) = reader.finish().await;
    assert_eq!(writer_code, Some(0));
    assert_eq!(
        writer_lines,
        [
            "REQUESTING lock for resource: file_A",
            "LOCKED file_A",
            "Sleeping for 1 seconds...",
            "WROTE 'Shared Resource Test' to file_A",
            "UNLOCKED file_A",
        ]
    );
    assert_eq!(reader_code, Some(0), "{reader_err}");
    assert_eq!(
        reader_lines,
        [
            "REQUESTING lock for resource: file_A",
            "WAITING for file_A (position 1 in queue)",
            "LOCKED file_A",
            "Sleeping for 2 seconds...",
            "READ from file_A: Shared Resource Test",
            "UNLOCKED file_A",
        ]
    );
}

#[tokio::test]
async fn reading_a_value_never_written_and_holding_zero_seconds() {
    let server = Server::start();
    let output = run_lockctl(&server.addr_string(), &["fresh", "READ", "0"]).await;
    assert!(output.status.success());
    assert_eq!(
        stdout_lines(&output),
        [
            "REQUESTING lock for resource: fresh",
            "LOCKED fresh",
            "READ from fresh: (never written)",
            "UNLOCKED fresh",
        ]
    );
}

#[tokio::test]
async fn sigkill_while_holding_frees_the_lock_at_once() {
    let server = Server::start();
    let mut holder = Running::spawn(&server.addr_string(), &["victim", "WRITE", "x", "60"]);
    holder.wait_for_line("Sleeping").await;
    let client = server.client().await;
    let mut call = client
        .start_acquire("victim", LockMode::Exclusive, Some(PATIENCE))
        .unwrap();
    assert!(matches!(
        call.next().await,
        lockctl::AcquireProgress::Queued(1)
    ));
    holder.signal("KILL");
    // Granted long before the 15 s lease could have run out: the closed socket freed it.
    let lockctl::AcquireProgress::Done(granted) = call.next().await else {
        panic!("one queued event only");
    };
    assert!(granted.is_ok(), "{granted:?}");
    let (code, lines, _) = holder.finish().await;
    assert_eq!(code, None, "killed by a signal");
    assert!(!lines.iter().any(|line| line.starts_with("WROTE")));
}

#[tokio::test]
async fn timeout_exits_3_without_locking() {
    let server = Server::start();
    let client = server.client().await;
    client
        .acquire("held", LockMode::Exclusive, None)
        .await
        .unwrap();
    let output = run_lockctl(&server.addr_string(), &["--timeout", "0.3", "held", "READ"]).await;
    assert_eq!(output.status.code(), Some(3));
    assert_eq!(
        stdout_lines(&output),
        [
            "REQUESTING lock for resource: held",
            "WAITING for held (position 1 in queue)",
        ]
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("timed out") && stderr.contains("0.3"),
        "{stderr}"
    );

    let output = run_lockctl(
        &server.addr_string(),
        &["held", "WRITE", "v", "--timeout", "0"],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "try once");
    assert_eq!(
        stdout_lines(&output),
        ["REQUESTING lock for resource: held"]
    );
}

#[tokio::test]
async fn ctrl_c_while_holding_releases_and_exits_130() {
    let server = Server::start();
    let mut holder = Running::spawn(&server.addr_string(), &["held", "WRITE", "x", "60"]);
    holder.wait_for_line("Sleeping").await;
    holder.signal("INT");
    let (code, lines, stderr) = holder.finish().await;
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(lines.last().map(String::as_str), Some("UNLOCKED held"));
    assert!(!lines.iter().any(|line| line.starts_with("WROTE")));
    let client = server.client().await;
    let free = client
        .acquire("held", LockMode::Exclusive, Some(Duration::ZERO))
        .await;
    assert!(free.is_ok(), "{free:?}");
}

#[tokio::test]
async fn ctrl_c_while_waiting_leaves_the_queue() {
    let server = Server::start();
    let client = server.client().await;
    client
        .acquire("busy", LockMode::Exclusive, None)
        .await
        .unwrap();
    let mut waiter = Running::spawn(&server.addr_string(), &["busy", "READ"]);
    waiter.wait_for_line("WAITING").await;
    waiter.signal("INT");
    let (code, lines, _) = waiter.finish().await;
    assert_eq!(code, Some(130));
    assert!(!lines.iter().any(|line| line.starts_with("LOCKED")));
    let status = client.status(Some("busy")).await.unwrap();
    assert!(status[0].waiters.is_empty(), "{status:?}");
}

#[tokio::test]
async fn status_shows_holders_and_waiters_as_a_table() {
    let server = Server::start();
    let addr = server.addr_string();
    let output = run_lockctl(&addr, &["status"]).await;
    assert_eq!(stdout_lines(&output), ["No locks are held or waited for."]);

    let holder = server.client().await;
    holder
        .acquire("jobs/nightly", LockMode::Shared, None)
        .await
        .unwrap();
    let waiter = server.client().await;
    let mut waiting = waiter
        .start_acquire("jobs/nightly", LockMode::Exclusive, None)
        .unwrap();
    // Wait until the server has queued it.
    let queued = tokio::time::timeout(PATIENCE, waiting.next())
        .await
        .expect("the waiter is queued in time");
    assert!(matches!(queued, AcquireProgress::Queued(1)), "{queued:?}");
    let output = run_lockctl(&addr, &["status"]).await;
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(lines[0].starts_with("RESOURCE"));
    assert!(lines[1].starts_with("jobs/nightly  holding"), "{lines:?}");
    assert!(lines[1].contains("shared"));
    assert!(
        lines[2].starts_with("jobs/nightly  waiting #1"),
        "{lines:?}"
    );
    assert!(lines[2].contains("exclusive"));

    // `lock` names a resource that shares its name with a subcommand.
    let output = run_lockctl(&addr, &["lock", "status", "WRITE", "v", "0"]).await;
    assert_eq!(stdout_lines(&output)[2], "WROTE 'v' to status");
}

#[tokio::test]
async fn status_follows_the_cursor_through_every_page() {
    // Pages of two: the library and `lockctl status` must ask for the other pages.
    let server = Server::start_with(ServerConfig {
        table: TableConfig {
            max_status_limit: 2,
            ..TableConfig::default()
        },
        ..ServerConfig::default()
    });
    let holder = server.client().await;
    let names = ["a", "b", "c", "d", "e"];
    for resource in names {
        holder
            .acquire(resource, LockMode::Exclusive, None)
            .await
            .unwrap();
    }
    let first = holder.status_page(None, None).await.unwrap();
    assert_eq!(first.resources.len(), 2, "the server's page is two");
    let all = holder.status(None).await.unwrap();
    let listed: Vec<&str> = all.iter().map(|r| r.resource.as_str()).collect();
    assert_eq!(listed, names);
    let output = run_lockctl(&server.addr_string(), &["status"]).await;
    let lines = stdout_lines(&output);
    assert_eq!(lines.len(), 1 + names.len(), "{lines:?}");
    assert!(lines[5].starts_with("e "), "{lines:?}");
}

#[tokio::test]
async fn an_unreachable_server_is_one_clear_line() {
    let output = run_lockctl("127.0.0.1:1", &["f", "READ"]).await;
    assert_eq!(output.status.code(), Some(4), "unreachable");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:1") && stderr.contains("lockd --listen"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bad_arguments_exit_2_and_server_errors_exit_1() {
    let server = Server::start_with(ServerConfig {
        table: TableConfig {
            max_value_bytes: 16,
            ..TableConfig::default()
        },
        ..ServerConfig::default()
    });
    let addr = server.addr_string();
    for args in [
        &["f"][..],
        &["f", "WRITE"],
        &["f", "READ", "soon"],
        &["f", "DELETE"],
    ] {
        let output = run_lockctl(&addr, args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
    let output = run_lockctl(&addr, &["bad name", "READ"]).await;
    assert_eq!(output.status.code(), Some(1));
    let big = "x".repeat(17);
    let output = run_lockctl(&addr, &["f", "WRITE", &big, "0"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(ErrorCode::ValueTooLarge.as_str()),
        "{stderr}"
    );
    assert!(
        stdout_lines(&output)
            .last()
            .unwrap()
            .starts_with("UNLOCKED"),
        "still released"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn losing_the_server_while_holding_is_reported() {
    let mut server = Server::start();
    let mut holder = Running::spawn(&server.addr_string(), &["f", "WRITE", "x", "1"]);
    holder.wait_for_line("Sleeping").await;
    tokio::task::block_in_place(|| server.stop());
    let (code, lines, stderr) = holder.finish().await;
    // Lost before the write: nothing written, one line saying so, and the lost code.
    assert_eq!(code, Some(75), "{lines:?}");
    assert_eq!(
        lines.last().map(String::as_str),
        Some("LOST lock on f; nothing was written")
    );
    assert!(stderr.contains("lost the lock on f"), "{stderr}");
}

#[tokio::test]
async fn run_passes_the_token_and_exits_with_the_commands_code() {
    let server = Server::start();
    let output = run_lockctl(
        &server.addr_string(),
        &[
            "run",
            "jobs/nightly",
            "--",
            "sh",
            "-c",
            "echo \"$LOCKD_RESOURCE $LOCKD_TOKEN\"; exit 7",
        ],
    )
    .await;
    assert_eq!(output.status.code(), Some(7), "{output:?}");
    let lines = stdout_lines(&output);
    let [line] = &lines[..] else {
        panic!("{lines:?}");
    };
    let (resource, token) = line.split_once(' ').unwrap();
    assert_eq!(resource, "jobs/nightly");
    let token: u64 = token.parse().unwrap();
    assert!(token > 0);
    // Released on exit.
    let client = server.client().await;
    assert!(!client
        .validate("jobs/nightly", lockctl::FenceToken(token))
        .await
        .unwrap());
    let _free = client
        .lock("jobs/nightly")
        .try_once()
        .acquire()
        .await
        .unwrap();
}

#[tokio::test]
async fn run_exits_with_the_conflict_code_when_the_lock_is_taken() {
    let server = Server::start();
    let addr = server.addr_string();
    let holder = server.client().await;
    let _held = holder.lock("busy").acquire().await.unwrap();
    for (args, code) in [
        (&["run", "-n", "busy", "--", "true"][..], 1),
        (&["run", "-n", "-E", "9", "busy", "--", "true"], 9),
        (&["run", "-w", "0.2", "busy", "--", "true"], 1),
        (&["run", "-s", "-n", "busy", "--", "true"], 1),
    ] {
        let output = run_lockctl(&addr, args).await;
        assert_eq!(output.status.code(), Some(code), "{args:?}");
        assert!(stdout_lines(&output).is_empty(), "the command did not run");
    }
}

#[tokio::test]
async fn run_passes_signals_on_and_exits_as_the_command_does() {
    let server = Server::start();
    let script = "trap 'echo got TERM; exit 42' TERM; echo ready; while true; do sleep 0.05; done";
    let mut running = Running::spawn(
        &server.addr_string(),
        &["run", "r", "--", "sh", "-c", script],
    );
    running.wait_for_line("ready").await;
    running.signal("TERM");
    let (code, lines, stderr) = running.finish().await;
    assert_eq!(code, Some(42), "{stderr}");
    assert_eq!(lines, ["ready", "got TERM"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn run_stops_the_command_when_the_lock_is_lost() {
    let mut server = Server::start();
    let script = "trap 'echo stopped; exit 0' TERM; echo ready; while true; do sleep 0.05; done";
    let mut running = Running::spawn(
        &server.addr_string(),
        &["run", "r", "--", "sh", "-c", script],
    );
    running.wait_for_line("ready").await;
    tokio::task::block_in_place(|| server.stop());
    let (code, lines, stderr) = running.finish().await;
    assert_eq!(code, Some(75), "{stderr}");
    // lockctl sends the group SIGTERM, then SIGKILL within what is left of the local lease;
    // whether the trap's `echo stopped` runs before that depends on scheduling (on a loaded
    // machine it may not), so only what is certain is checked.
    assert_eq!(
        lines.first().map(String::as_str),
        Some("ready"),
        "{lines:?}"
    );
    assert!(
        lines.iter().skip(1).all(|line| line == "stopped"),
        "{lines:?}"
    );
    assert!(stderr.contains("lost the lock on r"), "{stderr}");
}

#[tokio::test]
async fn run_reports_a_command_that_cannot_start_and_releases() {
    let server = Server::start();
    let output = run_lockctl(
        &server.addr_string(),
        &["run", "r", "--", "/no/such/command"],
    )
    .await;
    assert_eq!(output.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot run /no/such/command"));
    let client = server.client().await;
    let _free = client.lock("r").try_once().acquire().await.unwrap();
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let output = run_lockctl("127.0.0.1:1", &["completions", shell]).await;
        assert!(output.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&output.stdout).contains("lockctl"),
            "{shell}"
        );
    }
}

#[tokio::test]
async fn the_auth_secret_comes_from_a_file_or_the_environment() {
    let server = Server::start_with(ServerConfig {
        auth: Some(std::sync::Arc::from("s3cret")),
        ..ServerConfig::default()
    });
    let addr = server.addr_string();
    let output = run_lockctl(&addr, &["f", "READ", "0"]).await;
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("unauthorized") || stderr.contains("--auth-token-file"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, "s3cret\n").unwrap();
    let output = run_lockctl(
        &addr,
        &[
            "--auth-token-file",
            file.to_str().unwrap(),
            "f",
            "READ",
            "0",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");

    let mut command = crate::support::lockctl(&addr, &["status"]);
    command.env("LOCKD_AUTH_TOKEN", "s3cret");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
}

#[tokio::test]
async fn run_keeps_the_auth_secret_from_the_command() {
    let server = Server::start_with(ServerConfig {
        auth: Some(std::sync::Arc::from("s3cret")),
        ..ServerConfig::default()
    });
    let script = "echo \"token=${LOCKD_TOKEN:+set} secret=${LOCKD_AUTH_TOKEN:-unset}\"";
    let mut command = crate::support::lockctl(
        &server.addr_string(),
        &["run", "jobs/nightly", "--", "sh", "-c", script],
    );
    command.env("LOCKD_AUTH_TOKEN", "s3cret");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout_lines(&output),
        ["token=set secret=unset"],
        "{output:?}"
    );
}

#[tokio::test]
async fn lockctl_speaks_tls_with_the_ca_it_is_given() {
    let pki = tempfile::tempdir().unwrap();
    crate::support::write_test_pki(pki.path());
    let server = crate::support::start_tls_server(pki.path(), false);
    let addr = server.addr_string();
    let ca = pki.path().join("ca.pem");
    let output = run_lockctl(
        &addr,
        &[
            "--tls-ca",
            ca.to_str().unwrap(),
            "f",
            "WRITE",
            "over tls",
            "0",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_lines(&output)[2], "WROTE 'over tls' to f");

    // Without the CA the client refuses the server; a wrong name is refused too.
    let output = run_lockctl(&addr, &["f", "READ", "0"]).await;
    assert_eq!(output.status.code(), Some(1));
    let args = [
        "--tls-ca",
        ca.to_str().unwrap(),
        "--tls-server-name",
        "elsewhere",
        "status",
    ];
    let output = run_lockctl(&addr, &args).await;
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("TLS handshake failed"));
}

/// `lockctl status --json` run as the command of a `lockctl run` with `env`: what the server
/// says of the holder of `jobs/names`, the run's own session.
async fn holder_seen_by_status(
    addr: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend([
        "run",
        "jobs/names",
        env!("CARGO_BIN_EXE_lockctl"),
        "status",
        "--json",
    ]);
    let mut command = crate::support::lockctl(addr, &all);
    command.env_remove("LOCKD_CLIENT_NAME");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    status["resources"][0]["holders"][0].clone()
}

#[tokio::test]
async fn the_client_name_is_given_or_user_at_host() {
    let server = Server::start();
    let addr = server.addr_string();
    let holder = holder_seen_by_status(&addr, &["--name", "deploy@ci-runner-7"], &[]).await;
    assert_eq!(holder["client"], "deploy@ci-runner-7", "{holder}");
    assert!(
        holder["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{holder}"
    );
    let holder = holder_seen_by_status(&addr, &[], &[("LOCKD_CLIENT_NAME", "cron@box")]).await;
    assert_eq!(holder["client"], "cron@box", "{holder}");
    // The default: the user, and the real host name (shells do not export $HOSTNAME).
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let holder = holder_seen_by_status(
        &addr,
        &[],
        &[("USER", "alice"), ("HOSTNAME", "not-the-host")],
    )
    .await;
    assert_eq!(
        holder["client"],
        format!("alice@{}", host.trim()),
        "{holder}"
    );
}

#[tokio::test]
async fn status_shows_each_holders_name_and_address() {
    let server = Server::start();
    let addr = server.addr_string();
    let _holder = crate::support::deploy_holder(&addr).await;
    let output = run_lockctl(&addr, &["status"]).await;
    let lines = stdout_lines(&output);
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        ["RESOURCE", "STATE", "SESSION", "CLIENT", "PEER", "MODE", "TOKEN", "FOR"]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..4],
        ["deploy/prod", "holding", "1", "deploy@ci-runner-7"]
    );
    assert!(row[4].starts_with("127.0.0.1:"), "{row:?}");
}

#[tokio::test]
async fn cluster_status_of_a_single_server_says_so_plainly() {
    let server = Server::start();
    let addr = server.addr_string();
    let output = run_lockctl(&addr, &["cluster", "status"]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        stdout_lines(&output),
        [format!(
            "lockd at {addr} is a single server, not a cluster: it has no cluster status \
             (`lockctl status` shows its locks)."
        )]
    );
    assert!(output.stderr.is_empty(), "{output:?}");
}
