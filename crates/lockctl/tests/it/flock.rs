//! `lockctl run` keeps flock(1)'s habits (issue 18, point 2): a conflict is silent unless
//! `--verbose`, the command needs no `--` when nothing is ambiguous, and `-c` runs a shell
//! command.

use lockctl::LockMode;

use crate::support::{run_lockctl, stderr_text, stdout_lines, Server};

#[tokio::test]
async fn a_conflict_is_silent_unless_verbose() {
    let server = Server::start();
    let addr = server.addr_string();
    let holder = server.client().await;
    holder
        .acquire("cron/report", LockMode::Exclusive, None)
        .await
        .unwrap();

    // (arguments, exit code, what stderr says)
    let cases: [(&[&str], i32, &str); 3] = [
        (
            &["run", "-n", "-E", "0", "cron/report", "--", "echo", "ran"],
            0,
            "",
        ),
        (
            &["run", "-w", "0.2", "cron/report", "--", "echo", "ran"],
            1,
            "",
        ),
        (
            &["run", "-n", "--verbose", "cron/report", "--", "echo", "ran"],
            1,
            "lockctl: cron/report is held by someone else; not running echo\n",
        ),
    ];
    for (args, code, said) in cases {
        let output = run_lockctl(&addr, args).await;
        assert_eq!(output.status.code(), Some(code), "{args:?}: {output:?}");
        assert!(output.stdout.is_empty(), "{args:?}: {output:?}");
        assert_eq!(stderr_text(&output), said, "{args:?}");
    }
}

#[tokio::test]
async fn run_takes_the_command_without_the_separator() {
    let server = Server::start();
    let output = run_lockctl(
        &server.addr_string(),
        &["run", "jobs/x", "echo", "-n", "hi"],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(output.stdout, b"hi", "echo got its own -n");
}

#[tokio::test]
async fn run_c_runs_a_shell_command() {
    let server = Server::start();
    let addr = server.addr_string();
    let output = run_lockctl(
        &addr,
        &["run", "-c", "echo \"$LOCKD_RESOURCE\" && exit 3", "jobs/x"],
    )
    .await;
    assert_eq!(output.status.code(), Some(3), "{output:?}");
    assert_eq!(stdout_lines(&output), ["jobs/x"]);
    // A command and -c at once, or neither, is a usage error.
    for args in [
        &["run", "-c", "true", "jobs/x", "echo"][..],
        &["run", "jobs/x"],
    ] {
        let output = run_lockctl(&addr, args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
    }
}
