//! The `lockctl` binary: takes a lock, holds it, reads or writes, releases; or shows status.
//!
//! Output lines are those of the original `lock_client`, one per step, so scripts written for
//! it keep working. Errors are one line on stderr and a documented exit code.

use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser};
use lockctl::cli::{Cli, LockPlan, Operation, Subcommands};
use lockctl::{
    AcquireCall, AcquireProgress, Client, ClientError, ErrorCode, LockMode, ResourceStatus,
};

use crate::common::{aligned, connect, fail, fail_call, interrupted, Server};

mod backup;
mod cluster_cli;
mod common;
mod hints;
mod run;

/// Exit code when `--timeout` ran out before the lock was granted.
const EXIT_TIMEOUT: u8 = 3;
/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;
/// Exit code when the lock was lost before the read or write (as `lockctl run`'s default
/// `--lost-exit-code`: EX_TEMPFAIL).
const EXIT_LOST: u8 = 75;

fn main() -> ExitCode {
    // `lockctl run` starts this binary again as the watchdog of its command's process group.
    let mut args = std::env::args();
    if let (Some(_), Some(flag), Some(group)) = (args.next(), args.next(), args.next()) {
        if flag == run::WATCHDOG_FLAG {
            return run::watchdog(&group);
        }
    }
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(run(cli))
}

async fn run(cli: Cli) -> ExitCode {
    let server = match Server::from_cli(&cli) {
        Ok(server) => server,
        Err(code) => return code,
    };
    let plan = match (cli.command, cli.lock) {
        (Some(Subcommands::Status { resource, json }), _) => {
            return status(&server, resource.as_deref(), json).await
        }
        (Some(Subcommands::Watch { resource }), _) => return watch(&server, &resource).await,
        (Some(Subcommands::Run(args)), _) => return run::run(&server, args).await,
        (Some(Subcommands::Elect(args)), _) => return run::run(&server, args.into_run()).await,
        (Some(Subcommands::Observe { name }), _) => return observe(&server, &name).await,
        (Some(Subcommands::Backup { http, admin, out }), _) => {
            return backup::run(&http, &admin, &out).await
        }
        (Some(Subcommands::Restore { http, admin, file }), _) => {
            return backup::restore(&http, &admin, &file).await
        }
        (Some(Subcommands::Cluster { action }), _) => {
            return cluster_cli::run(&server, action).await
        }
        (Some(Subcommands::Completions { shell }), _) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "lockctl",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        (Some(Subcommands::Lock(args)), _) | (None, Some(args)) => args.plan(),
        (None, None) => {
            let _ = Cli::command().print_help();
            return ExitCode::from(2);
        }
    };
    lock(&server, plan).await
}

/// `lockctl <resource> READ|WRITE ...`.
async fn lock(server: &Server, plan: LockPlan) -> ExitCode {
    let resource = plan.resource.as_str();
    let timeout = plan.timeout;
    if let Err(err) = lockctl::ResourceName::new(resource) {
        return fail(&format!("invalid resource name {resource:?}: {err}"));
    }
    println!("REQUESTING lock for resource: {resource}");
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mode = match plan.operation {
        Operation::Read => LockMode::Shared,
        Operation::Write => LockMode::Exclusive,
    };
    let mut call = match client.start_acquire(resource, mode, timeout) {
        Ok(call) => call,
        Err(err) => return fail_call(server, &err, resource),
    };
    // One signal listener for the whole run, so a signal between two steps is not missed.
    let interrupt = interrupted();
    tokio::pin!(interrupt);
    let mut reported_wait = false;
    let token = loop {
        let progress = tokio::select! {
            progress = call.next() => progress,
            () = &mut interrupt => {
                eprintln!("lockctl: interrupted while waiting for {resource}");
                withdraw(&client, resource, call).await;
                return ExitCode::from(EXIT_INTERRUPTED);
            }
        };
        match progress {
            AcquireProgress::Queued(position) => {
                if !reported_wait {
                    println!("WAITING for {resource} (position {position} in queue)");
                    reported_wait = true;
                }
            }
            AcquireProgress::Done(Ok(granted)) => break granted.token,
            AcquireProgress::Done(Err(err)) if err.code() == Some(ErrorCode::Timeout) => {
                let waited = timeout.map_or(0.0, |t| t.as_secs_f64());
                eprintln!("lockctl: timed out: {resource} was not granted within {waited} seconds");
                return ExitCode::from(EXIT_TIMEOUT);
            }
            AcquireProgress::Done(Err(err)) => return fail_call(server, &err, resource),
        }
    };
    println!("LOCKED {resource}");

    let work = async {
        if !plan.hold.is_zero() {
            println!("Sleeping for {} seconds...", plan.hold_text);
            tokio::time::sleep(plan.hold).await;
        }
        match &plan.value {
            Some(value) => client
                .write(resource, token, value)
                .await
                .map(|()| format!("WROTE '{value}' to {resource}")),
            None => client.read(resource, token).await.map(|value| match value {
                Some(value) => format!("READ from {resource}: {value}"),
                None => format!("READ from {resource}: (never written)"),
            }),
        }
    };
    let outcome = tokio::select! {
        // The lock is lost (the link went silent past the local deadline, or closed): stop
        // before the read or write, whichever step was under way.
        biased;
        () = client.lost() => {
            let what = if plan.value.is_some() { "nothing was written" } else { "nothing was read" };
            println!("LOST lock on {resource}; {what}");
            eprintln!(
                "lockctl: lost the lock on {resource} (lockd unreachable or session expired) \
                 before the {}; someone else may hold it now",
                if plan.value.is_some() { "write" } else { "read" }
            );
            return ExitCode::from(EXIT_LOST);
        }
        outcome = work => Some(outcome),
        () = &mut interrupt => None,
    };
    let exit = match outcome {
        Some(Ok(line)) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        // Without a connection there is nothing to release.
        Some(Err(err @ ClientError::ConnectionLost)) => return fail_call(server, &err, resource),
        Some(Err(err)) => fail_call(server, &err, resource),
        None => {
            eprintln!("lockctl: interrupted while holding {resource}; releasing it");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    };
    match client.release(resource, token).await {
        Ok(()) => {
            println!("UNLOCKED {resource}");
            exit
        }
        Err(err) => fail_call(server, &err, resource),
    }
}

/// How long an interrupted lockctl tries to leave the queue before it exits anyway.
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(2);

/// Takes a waiting acquire out of the queue before exiting, releasing the lock if it was
/// granted meanwhile. A single server does this when the connection closes, but a cluster
/// keeps the session, and its place in line, until its lease runs out (the client might be
/// failing over), so lockctl says it is leaving.
async fn withdraw(client: &Client, resource: &str, mut call: AcquireCall) {
    let leave = async {
        // If the grant crossed the cancel, the cancel fails and the grant arrives below.
        let _ = client.cancel(call.id()).await;
        loop {
            match call.next().await {
                AcquireProgress::Queued(_) => {}
                AcquireProgress::Done(Ok(granted)) => {
                    let _ = client.release(resource, granted.token).await;
                    return;
                }
                AcquireProgress::Done(Err(_)) => return,
            }
        }
    };
    let _ = tokio::time::timeout(WITHDRAW_TIMEOUT, leave).await;
}

/// `lockctl status [resource] [--json]`.
async fn status(server: &Server, resource: Option<&str>, json: bool) -> ExitCode {
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    match client.status(resource).await {
        Ok(resources) if json => {
            println!("{}", serde_json::json!({ "resources": resources }));
            ExitCode::SUCCESS
        }
        Ok(resources) => {
            print!("{}", status_table(&resources));
            ExitCode::SUCCESS
        }
        Err(err) => hints::explain(server, &err, None),
    }
}

/// `lockctl watch NAME`: every event of the watch as a line of JSON, until the session ends.
async fn watch(server: &Server, resource: &str) -> ExitCode {
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut stream = match client.watch(resource).await {
        Ok(stream) => stream,
        Err(err) => return hints::explain(server, &err, None),
    };
    loop {
        match stream.next().await {
            Ok(event) => {
                // Serialized from the struct, so the fields keep the protocol's order.
                let line = serde_json::to_string(&event).unwrap_or_default();
                println!("{line}");
                // A reader piped to `head` or a file sees each event as it comes.
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            Err(lockctl::ClientError::ConnectionLost) => {
                return fail(&format!(
                    "lost the session with lockd; the watch of {resource} has ended, and changes \
                     after the last line were not seen"
                ))
            }
            Err(err) => return hints::explain(server, &err, None),
        }
    }
}

/// `lockctl observe NAME`: the leader, then each change of leader, one line each.
async fn observe(server: &Server, name: &str) -> ExitCode {
    let client = match connect(server).await {
        Ok(client) => client,
        Err(code) => return code,
    };
    let mut leaders = match client.election(name).observe().await {
        Ok(leaders) => leaders,
        Err(err) => return hints::explain(server, &err, None),
    };
    loop {
        match leaders.next().await {
            Ok(leader) => {
                match leader {
                    // The value last: it may hold spaces, and runs to the end of the line.
                    Some(leader) => println!(
                        "leader epoch={} value={}",
                        leader.epoch,
                        leader.value.as_deref().unwrap_or("")
                    ),
                    None => println!("no leader"),
                }
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            Err(lockctl::ClientError::ConnectionLost) => {
                return fail(&format!(
                    "lost the session with lockd; observing {name} has ended, and changes after \
                     the last line were not seen"
                ))
            }
            Err(err) => return hints::explain(server, &err, None),
        }
    }
}

/// Holders and waiters as an aligned table, one row per holder or waiter.
fn status_table(resources: &[ResourceStatus]) -> String {
    let mut rows = vec![[
        "RESOURCE".to_owned(),
        "STATE".to_owned(),
        "SESSION".to_owned(),
        "CLIENT".to_owned(),
        "PEER".to_owned(),
        "MODE".to_owned(),
        "TOKEN".to_owned(),
        "FOR".to_owned(),
    ]];
    for entry in resources {
        let name = entry.resource.to_string();
        if entry.holders.is_empty() && entry.waiters.is_empty() {
            rows.push([
                name.clone(),
                "free".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
        }
        for holder in &entry.holders {
            rows.push([
                name.clone(),
                "holding".into(),
                holder.session.to_string(),
                dash(holder.client.as_deref()),
                dash(holder.peer.as_deref()),
                mode_cell(holder.mode, holder.permits, entry.limit),
                holder.token.to_string(),
                seconds(holder.held_ms),
            ]);
        }
        for (place, waiter) in entry.waiters.iter().enumerate() {
            rows.push([
                name.clone(),
                match &waiter.group {
                    // A multi-resource acquire: the session's rows on its other resources are
                    // the same wait.
                    Some(group) => format!("waiting #{} (group of {})", place + 1, group.len()),
                    None => format!("waiting #{}", place + 1),
                },
                waiter.session.to_string(),
                dash(waiter.client.as_deref()),
                dash(waiter.peer.as_deref()),
                mode_cell(waiter.mode, waiter.permits, entry.limit),
                "-".into(),
                seconds(waiter.waited_ms),
            ]);
        }
    }
    if rows.len() == 1 {
        return "No locks are held or waited for.\n".to_owned();
    }
    aligned(&rows)
}

/// A cell's text, or `-` for a value the server did not give.
fn dash(text: Option<&str>) -> String {
    text.unwrap_or("-").to_owned()
}

/// The mode, or for a semaphore the permits of the limit: `2/4 permits`.
fn mode_cell(mode: LockMode, permits: Option<u16>, limit: Option<u16>) -> String {
    match (permits, limit) {
        (Some(permits), Some(limit)) => format!("{permits}/{limit} permits"),
        _ => mode.to_string(),
    }
}

fn seconds(ms: u64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}
