//! `lockctl run`: a command under a lock, like flock(1) across machines.
//!
//! The command gets the fencing token in `LOCKD_TOKEN`, runs in a process group of its own, and
//! signals sent to lockctl are passed on to that group. The lock is released when the command
//! and everything it left in its group are gone. When the lock is lost, or about to be, the
//! whole group is stopped before the session's local deadline, so before lockd could hand the
//! lock to anyone else (docs/safety.md):
//!
//! - When the session's local deadline comes within `grace + RESERVE` (nothing renewed it: the
//!   link went silent), or as soon as the session is lost (the connection ended), the group
//!   gets SIGTERM; at `deadline − RESERVE` at the latest (or `grace` after the SIGTERM, if
//!   sooner) it gets SIGKILL. `grace` is `--kill-after`, at most a quarter of the lease.
//! - A watchdog process (this binary run as `lockctl --watchdog-for-group PGID`, in a group of
//!   its own and deaf to SIGINT, SIGTERM and SIGHUP) holds the read end of a pipe whose only
//!   write end is lockctl's. If lockctl dies without saying it is done (SIGKILL, the OOM
//!   killer), the pipe closes and the watchdog SIGKILLs the group at once: lockd frees the
//!   lock as soon as lockctl's connection closes, so the command must not outlive it.
//!
//! What is out of reach: a process that leaves the group (setsid, a daemon's double fork), the
//! short moment between starting the command and starting the watchdog, and a watchdog killed
//! along with lockctl. Fencing tokens cover what remains.

use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::{ExitCode, ExitStatus};
use std::time::Duration;

use lockctl::cli::RunArgs;
use lockctl::{ClientError, ErrorCode, LockGuard, MultiLockGuard};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;

use crate::common::{connect, fail, fail_call, interrupted, Server, AUTH_TOKEN_ENV};

/// Exit code when the command cannot be started, as shells use.
const EXIT_CANNOT_RUN: u8 = 127;
/// Exit code when interrupted before the command started.
const EXIT_INTERRUPTED: u8 = 130;

/// The argument that runs this binary as the watchdog of a command's process group.
pub(crate) const WATCHDOG_FLAG: &str = "--watchdog-for-group";

/// What the watchdog reads from its pipe when lockctl has dealt with the group itself.
const DISARM: &[u8] = b"done\n";

/// How long before the local deadline the SIGKILL goes out, at most: time for the kernel to
/// kill the group and for lockctl to see it gone.
const RESERVE: Duration = Duration::from_millis(100);

/// The longest SIGTERM grace, as a fraction of the lease: keepalive pings renew the session
/// every quarter of the lease, so a healthy session's deadline never comes this close.
fn max_grace(lease: Duration) -> Duration {
    lease / 4
}

/// How long before the local deadline SIGKILL is sent: [`RESERVE`], or a twentieth of a short
/// lease.
fn reserve(lease: Duration) -> Duration {
    RESERVE.min(lease / 20)
}

pub(crate) async fn run(server: &Server, args: RunArgs) -> ExitCode {
    let timeout = args.timeout;
    let first = args.resource.as_str();
    for name in std::iter::once(&args.resource).chain(&args.and) {
        if let Err(err) = lockctl::ResourceName::new(name) {
            return fail(&format!("invalid resource name {name:?}: {err}"));
        }
    }
    // What the messages name: the resource, or all of them.
    let names = std::iter::once(first)
        .chain(args.and.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(", ");
    let resource = names.as_str();
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let lease = client.lease();
    let grace = match args.losing.kill_after {
        Some(asked) if asked > max_grace(lease) => {
            eprintln!(
                "lockctl: --kill-after {} s is longer than this session's lease allows; using {} \
                 s, so that the command is dead before lockd could give the lock to anyone else \
                 (lockd's --default-lease-ms sets the lease)",
                asked.as_secs_f64(),
                max_grace(lease).as_secs_f64()
            );
            max_grace(lease)
        }
        Some(asked) => asked,
        None => max_grace(lease),
    };
    // `lockctl elect`: the lock is the election's, and losing it is losing leadership.
    let held = if args.campaign.is_some() {
        "leadership of"
    } else {
        "the lock on"
    };
    let acquire = async {
        if !args.and.is_empty() {
            return acquire_all(&client, &args).await.map(Held::Many);
        }
        if let Some(value) = &args.campaign {
            let mut election = client.election(first);
            if let Some(delay) = args.losing.lock_delay {
                election = election.lock_delay(delay);
            }
            let leadership = election.campaign(value).await;
            if let Ok(leadership) = &leadership {
                eprintln!(
                    "lockctl: leading {first} as {value:?}, epoch {}",
                    leadership.epoch()
                );
            }
            return leadership
                .map(lockctl::Leadership::into_guard)
                .map(Held::One);
        }
        let mut request = match args.limit {
            Some(limit) => client
                .semaphore(first, limit)
                .permits(args.permits.unwrap_or(1)),
            None => client.lock(first),
        };
        if args.shared {
            request = request.shared();
        }
        if let Some(delay) = args.losing.lock_delay {
            request = request.lock_delay(delay);
        }
        if args.nonblock {
            request = request.try_once();
        } else if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        request.acquire().await.map(Held::One)
    };
    let granted = tokio::select! {
        granted = acquire => granted,
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
            if args.verbose {
                eprintln!(
                    "lockctl: {resource} {why}; not running {}",
                    args.display_name()
                );
            }
            return ExitCode::from(args.conflict_exit_code);
        }
        Err(err) => return fail_call(server, &err, resource),
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
    let argv = args.argv();
    let Some((program, program_args)) = argv.split_first() else {
        let _ = guard.release().await;
        return fail("no command to run");
    };
    let mut command = Command::new(program);
    if let Held::Many(many) = &guard {
        command.env("LOCKD_TOKENS", tokens_env(many));
    }
    let mut child = match command
        .args(program_args)
        .env("LOCKD_RESOURCE", first)
        .env("LOCKD_TOKEN", guard.first_token().to_string())
        // The job gets its fencing token, never the secret lockctl authenticated with (the only
        // secret lockctl reads from its environment; the TLS variables name files).
        .env_remove(AUTH_TOKEN_ENV)
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(err) => {
            let _ = guard.release().await;
            eprintln!("lockctl: cannot run {}: {err}", args.display_name());
            return ExitCode::from(EXIT_CANNOT_RUN);
        }
    };
    let Some(group) = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw)
    else {
        // The child already exited and was reaped: take its status.
        let status = child.wait().await;
        return finish(guard, status.ok(), &args).await;
    };
    let watchdog = match Watchdog::start(group) {
        Ok(watchdog) => Some(watchdog),
        Err(err) => {
            eprintln!(
                "lockctl: cannot start the watchdog ({err}); if lockctl is killed, {} keeps \
                 running unprotected",
                args.display_name()
            );
            None
        }
    };
    let stopping = Stopping {
        group,
        grace,
        reserve: reserve(lease),
    };

    let exit = loop {
        // Renewals move the local deadline on: look again each time the timer fires.
        let stop_at = Instant::from_std(guard_deadline(&guard)) - grace - stopping.reserve;
        tokio::select! {
            biased;
            status = child.wait() => {
                let status = status.ok();
                // Whatever the command left in its group runs under the lock too.
                if group_alive(group) {
                    stopping.stop(&guard, None).await;
                }
                break finish(guard, status, &args).await;
            }
            () = guard.lost() => {
                eprintln!(
                    "lockctl: lost {held} {resource} (lockd unreachable or session \
                     expired); stopping {} and its process group",
                    args.display_name()
                );
                stopping.stop(&guard, Some(&mut child)).await;
                break ExitCode::from(args.losing.lost_exit_code);
            }
            () = tokio::time::sleep_until(stop_at) => {
                if Instant::now() < Instant::from_std(guard_deadline(&guard)) - grace - stopping.reserve {
                    continue;
                }
                eprintln!(
                    "lockctl: lockd has not answered for {:.1} s; {held} {resource} will be \
                     lost in {:.1} s: stopping {} and its process group before that",
                    (lease.saturating_sub(lockctl::lease::lease_margin(lease)))
                        .saturating_sub(guard.valid_for())
                        .as_secs_f64(),
                    guard.valid_for().as_secs_f64(),
                    args.display_name()
                );
                stopping.stop(&guard, Some(&mut child)).await;
                // Give the lock back if lockd can still hear us; else it expires.
                let _ = tokio::time::timeout(stopping.reserve, guard.release()).await;
                break ExitCode::from(args.losing.lost_exit_code);
            }
            _ = sigint.recv() => pass_on(group, Signal::SIGINT),
            _ = sigterm.recv() => pass_on(group, Signal::SIGTERM),
            _ = sighup.recv() => pass_on(group, Signal::SIGHUP),
        }
    };
    if let Some(watchdog) = watchdog {
        watchdog.disarm(group);
    }
    exit
}

/// The locks the command runs under: one (possibly permits of a semaphore), or several taken
/// together with `--and`.
enum Held {
    One(LockGuard),
    Many(MultiLockGuard),
}

impl Held {
    fn first_token(&self) -> lockctl::FenceToken {
        match self {
            Held::One(guard) => guard.token(),
            Held::Many(guard) => guard.tokens()[0].token,
        }
    }

    async fn lost(&self) {
        match self {
            Held::One(guard) => guard.lost().await,
            Held::Many(guard) => guard.lost().await,
        }
    }

    fn valid_for(&self) -> Duration {
        match self {
            Held::One(guard) => guard.valid_for(),
            Held::Many(guard) => guard.valid_for(),
        }
    }

    async fn release(self) -> Result<(), ClientError> {
        match self {
            Held::One(guard) => guard.release().await,
            Held::Many(guard) => guard.release().await,
        }
    }
}

/// `--and`: the resource and every `--and` resource in one multi-resource acquire, all in the
/// same mode.
async fn acquire_all(
    client: &lockctl::Client,
    args: &RunArgs,
) -> Result<MultiLockGuard, ClientError> {
    let mut request = client.multi();
    for name in std::iter::once(&args.resource).chain(&args.and) {
        request = if args.shared {
            request.shared(name)
        } else {
            request.exclusive(name)
        };
    }
    if let Some(delay) = args.losing.lock_delay {
        request = request.lock_delay(delay);
    }
    if args.nonblock {
        request = request.try_once();
    } else if let Some(timeout) = args.timeout {
        request = request.timeout(timeout);
    }
    request.acquire().await
}

/// `LOCKD_TOKENS` for a command run under several locks: `NAME=TOKEN` for each, separated by
/// spaces (resource names never contain one), in the command line's order.
fn tokens_env(guard: &MultiLockGuard) -> String {
    guard
        .tokens()
        .iter()
        .map(|member| format!("{}={}", member.resource, member.token))
        .collect::<Vec<_>>()
        .join(" ")
}

fn guard_deadline(guard: &Held) -> std::time::Instant {
    std::time::Instant::now() + guard.valid_for()
}

/// How to stop the command's group before the local deadline.
struct Stopping {
    group: Pid,
    grace: Duration,
    reserve: Duration,
}

impl Stopping {
    /// SIGTERM to the group, then SIGKILL once it had `grace` or the local deadline is
    /// `reserve` away, whichever comes first; returns when the group is gone.
    async fn stop(&self, guard: &Held, mut leader: Option<&mut Child>) {
        let started = Instant::now();
        pass_on(self.group, Signal::SIGTERM);
        let left = guard.valid_for().saturating_sub(self.reserve);
        let kill_at = started + self.grace.min(left);
        while group_alive(self.group) && Instant::now() < kill_at {
            if let Some(child) = leader.as_deref_mut() {
                // Reaps the leader as soon as it exits, so that it does not linger as a zombie.
                let _ = tokio::time::timeout(Duration::from_millis(5), child.wait()).await;
            } else {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        if group_alive(self.group) {
            eprintln!(
                "lockctl: the process group {} still runs after {:.2} s; sending SIGKILL",
                self.group,
                started.elapsed().as_secs_f64()
            );
            pass_on(self.group, Signal::SIGKILL);
        }
        if let Some(child) = leader {
            let _ = child.wait().await;
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while group_alive(self.group) && Instant::now() < deadline {
            pass_on(self.group, Signal::SIGKILL);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// The command exited: release the lock and exit as it did.
async fn finish(guard: Held, status: Option<ExitStatus>, args: &RunArgs) -> ExitCode {
    let resource = match &guard {
        Held::One(guard) => guard.resource().to_owned(),
        Held::Many(guard) => guard
            .tokens()
            .iter()
            .map(|member| member.resource.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    match guard.release().await {
        Ok(()) => {}
        Err(ClientError::ConnectionLost) => {
            // The connection went while the command was finishing: it may have run its last
            // part unprotected, so say so rather than report plain success.
            eprintln!("lockctl: the lock on {resource} was lost as the command finished");
            return ExitCode::from(args.losing.lost_exit_code);
        }
        Err(err) => eprintln!("lockctl: releasing {resource} failed: {err}"),
    }
    ExitCode::from(exit_code(status))
}

/// Sends `signal` to every process of the group.
fn pass_on(group: Pid, signal: Signal) {
    // The group may be gone already; nothing to do then.
    let _ = nix::sys::signal::killpg(group, signal);
}

/// Whether any process of the group is still alive (a zombie is not: it has stopped running,
/// and only waits for a parent that may never reap it).
pub(crate) fn group_alive(group: Pid) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        // No /proc: ask the kernel, which counts zombies too.
        return kill(Pid::from_raw(-group.as_raw()), None).is_ok();
    };
    entries.flatten().any(|entry| {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            return false;
        };
        // `pid (comm) state ppid pgrp ...`; comm may hold spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return false;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let pgrp = fields.nth(1).and_then(|pgrp| pgrp.parse::<i32>().ok());
        pgrp == Some(group.as_raw()) && !matches!(state, Some("Z" | "X"))
    })
}

/// The watchdog process; see the module docs.
struct Watchdog {
    pipe: std::io::PipeWriter,
    _process: Child,
}

impl Watchdog {
    fn start(group: Pid) -> std::io::Result<Watchdog> {
        let (reader, pipe) = std::io::pipe()?;
        let process = Command::new(std::env::current_exe()?)
            .arg(WATCHDOG_FLAG)
            .arg(group.as_raw().to_string())
            .stdin(reader)
            .stdout(std::process::Stdio::null())
            .process_group(0)
            .spawn()?;
        Ok(Watchdog {
            pipe,
            _process: process,
        })
    }

    /// lockctl has dealt with the group: the watchdog exits without killing anything (unless
    /// something is still in the group, which it then kills).
    fn disarm(mut self, group: Pid) {
        if group_alive(group) {
            return; // Closing the pipe below makes the watchdog kill what is left.
        }
        let _ = self.pipe.write_all(DISARM);
    }
}

/// `lockctl --watchdog-for-group PGID`: waits for its stdin to close, then kills the group,
/// unless lockctl said first that it was done.
pub(crate) fn watchdog(group: &str) -> ExitCode {
    let Ok(group) = group.parse::<i32>() else {
        return fail(&format!(
            "{WATCHDOG_FLAG} needs a process group id, not {group:?}"
        ));
    };
    let group = Pid::from_raw(group);
    // Deaf to the signals a terminal or a supervisor sends lockctl: only the pipe matters.
    let mut deaf = SigSet::empty();
    for signal in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
    ] {
        deaf.add(signal);
    }
    let _ = deaf.thread_block();
    let mut said = Vec::new();
    let mut buffer = [0; 64];
    let mut stdin = std::io::stdin().lock();
    loop {
        match stdin.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => {
                said.extend_from_slice(&buffer[..read]);
                if said.ends_with(DISARM) {
                    return ExitCode::SUCCESS;
                }
            }
        }
    }
    // lockctl is gone without saying it was done: its connection closed, so lockd may already
    // have given the lock to someone else. Nothing in the group may run on.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while group_alive(group) && std::time::Instant::now() < deadline {
        pass_on(group, Signal::SIGKILL);
        std::thread::sleep(Duration::from_millis(5));
    }
    ExitCode::SUCCESS
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
