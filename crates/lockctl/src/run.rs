//! `lockctl run`: a command under a lock, like flock(1) across machines.
//!
//! The command gets the fencing token in `LOCKD_TOKEN`, signals sent to lockctl are passed on
//! to it, and the lock is released when it exits. If the lock is lost while it runs (lockd went
//! away, or the session expired), the command is stopped: it was no longer protected.

use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use lockctl::cli::RunArgs;
use lockctl::{ClientError, ErrorCode, LockGuard};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};

use crate::common::{connect, fail, fail_call, interrupted, Server};

/// Exit code when the command cannot be started, as shells use.
const EXIT_CANNOT_RUN: u8 = 127;
/// Exit code when interrupted before the command started.
const EXIT_INTERRUPTED: u8 = 130;

pub(crate) async fn run(server: &Server, timeout: Option<Duration>, args: RunArgs) -> ExitCode {
    let resource = args.resource.as_str();
    if let Err(err) = lockctl::ResourceName::new(resource) {
        return fail(&format!("invalid resource name {resource:?}: {err}"));
    }
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut request = client.lock(resource);
    if args.shared {
        request = request.shared();
    }
    if args.nonblock {
        request = request.try_once();
    } else if let Some(timeout) = timeout {
        request = request.timeout(timeout);
    }
    let granted = tokio::select! {
        granted = request.acquire() => granted,
        () = interrupted() => return ExitCode::from(EXIT_INTERRUPTED),
    };
    let guard = match granted {
        Ok(guard) => guard,
        Err(err) if err.code() == Some(ErrorCode::Timeout) => {
            let why = if args.nonblock {
                "is held by someone else".to_owned()
            } else {
                format!(
                    "was not granted within {} seconds",
                    timeout.unwrap_or_default().as_secs_f64()
                )
            };
            eprintln!("lockctl: {resource} {why}; not running {}", args.command[0]);
            return ExitCode::from(args.conflict_exit_code);
        }
        Err(err) => return fail_call(&err, resource),
    };

    // Listen before the child exists, so no signal meant for it is missed.
    let (Ok(mut sigint), Ok(mut sigterm), Ok(mut sighup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = guard.release().await;
        return fail("cannot install signal handlers");
    };
    let mut child = match Command::new(&args.command[0])
        .args(&args.command[1..])
        .env("LOCKD_RESOURCE", resource)
        .env("LOCKD_TOKEN", guard.token().to_string())
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            let _ = guard.release().await;
            eprintln!("lockctl: cannot run {}: {err}", args.command[0]);
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let Some(pid) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // The child already exited and was reaped: take its status.
        let status = child.wait().await;
        return finish(guard, status.ok(), &args).await;
    };

    loop {
        tokio::select! {
            biased;
            status = child.wait() => return finish(guard, status.ok(), &args).await,
            () = guard.lost() => return stop_unprotected(&mut child, pid, resource, &args).await,
            _ = sigint.recv() => pass_on(pid, Signal::SIGINT),
            _ = sigterm.recv() => pass_on(pid, Signal::SIGTERM),
            _ = sighup.recv() => pass_on(pid, Signal::SIGHUP),
        }
    }
}

/// The command exited: release the lock and exit as it did.
async fn finish(guard: LockGuard, status: Option<ExitStatus>, args: &RunArgs) -> ExitCode {
    let resource = guard.resource().to_owned();
    match guard.release().await {
        Ok(()) => {}
        Err(ClientError::ConnectionLost) => {
            // The connection went while the command was finishing: it may have run its last
            // part unprotected, so say so rather than report plain success.
            eprintln!("lockctl: the lock on {resource} was lost as the command finished");
            return ExitCode::from(args.lost_exit_code);
        }
        Err(err) => eprintln!("lockctl: releasing {resource} failed: {err}"),
    }
    ExitCode::from(exit_code(status))
}

/// The lock is gone while the command runs: SIGTERM, then SIGKILL after the grace period.
async fn stop_unprotected(child: &mut Child, pid: Pid, resource: &str, args: &RunArgs) -> ExitCode {
    eprintln!(
        "lockctl: lost the lock on {resource} (lockd unreachable or session expired); \
         stopping {} with SIGTERM",
        args.command[0]
    );
    pass_on(pid, Signal::SIGTERM);
    if tokio::time::timeout(args.kill_after, child.wait())
        .await
        .is_err()
    {
        eprintln!(
            "lockctl: {} still running after {} s; sending SIGKILL",
            args.command[0],
            args.kill_after.as_secs_f64()
        );
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
    ExitCode::from(args.lost_exit_code)
}

fn pass_on(pid: Pid, signal: Signal) {
    // The child may have just exited; its status is collected by the wait branch.
    let _ = kill(pid, signal);
}

/// A shell's view of how a process ended: its code, or 128 + the signal that killed it.
fn exit_code(status: Option<ExitStatus>) -> u8 {
    let Some(status) = status else {
        return 1;
    };
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}
