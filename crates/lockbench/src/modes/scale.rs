//! `scale`: does lockd stay fast and small when it holds a lot?
//!
//! Three stages, each measured with the uncontended loop on fresh resources while the load is
//! held, so the per-op cost at a large load can be compared with the cost at a small one:
//!
//! - `held_locks`: N locks held across many sessions (one session per [`LOCKS_PER_SESSION`]
//!   locks, each taking its locks with pipelined acquires), at N = 1,000 and at `--scale-locks`.
//!   lockd's RSS is read before and after the locks are taken: bytes per held lock.
//! - `queued_waiters`: one holder and N waiters queued on one resource, at N = 1,000 and at
//!   `--scale-waiters`. A session waits at most once per resource, so each waiter is its own
//!   connection and N is bounded by open files. RSS gives bytes per waiter (connections are
//!   opened before the first reading, so their own cost is not counted). Then the cost of the
//!   deadlock search: a session that holds a lock of its own asks for the crowded resource,
//!   so that lockd must follow the wait-for edges through all N waiters before it queues the
//!   request ([`DEADLOCK_PROBES`] times, each withdrawn at once), and the same against a
//!   resource with a holder and no waiter, in the same run (`deadlock_search_*` latencies).
//! - `idle_connections`: `--idle-connections` sessions that only said hello; RSS per
//!   connection, and a ping on every one afterwards to check that all are still served.
//!
//! RSS needs a lockd that lockbench started; against `--server` the memory fields are absent.
//! Each stage then starts with a fresh lockd: the allocator keeps what an earlier stage freed
//! and would hand it to the next one, which would then seem to cost nothing. Against `--server`,
//! the sessions of a stage are closed and lockbench waits until lockd has freed their locks, so
//! that one stage's cleanup does not run inside the next stage's window.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::task::JoinSet;

use crate::bench::{Bench, Mode};
use crate::clients::lockd::{LockdConn, Mode as LockMode, Started, SETUP_PATIENCE};
use crate::clients::Target;
use crate::measure::{run_loops, Latency};
use crate::report::{round, Record, Report};

/// Locks each holding session takes; N held locks use N / this many sessions.
pub const LOCKS_PER_SESSION: u64 = 1_000;

/// The small load every large one is compared with, as the issue states the targets.
const BASELINE: u64 = 1_000;

/// Acquires written per batch by a holding session. Below lockd's default in-flight limit
/// (1,024), so lockd never stops reading a holder while it waits for replies.
const PIPELINE_BATCH: u64 = 256;

/// Acquires sent through the deadlock search per probe (each queued, then withdrawn).
const DEADLOCK_PROBES: usize = 200;

/// File descriptors kept free for everything that is not a held connection (the measuring
/// loops, the control connection, the runtime, stdio).
const FD_RESERVE: u64 = 64;

/// Runs every stage at the baseline and at the sizes asked for.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let locks = bench.scale.locks;
    held_locks(bench, report, BASELINE.min(locks)).await?;
    if locks > BASELINE {
        held_locks(bench, report, locks).await?;
    }
    let waiters = bench.scale.waiters;
    queued_waiters(bench, report, BASELINE.min(waiters)).await?;
    if waiters > BASELINE {
        queued_waiters(bench, report, waiters).await?;
    }
    if bench.scale.idle_connections > 0 {
        idle_connections(bench, report, bench.scale.idle_connections).await?;
    }
    Ok(())
}

async fn held_locks(bench: &mut Bench, report: &mut Report, held: u64) -> Result<()> {
    let fresh = bench.fresh_lockd()?;
    let prefix = bench.run_prefix();
    let sessions = held.div_ceil(LOCKS_PER_SESSION).max(1);
    let sessions = usize::try_from(sessions)?;
    eprintln!(
        "lockbench: scale, {held} held locks over {sessions} sessions, then {} connections on \
         fresh resources",
        bench.connections(Mode::Scale)
    );
    let conns = bench.lockd_sessions(sessions).await?;
    let rss_before = bench.lockd_rss();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    let per_session = held / sessions as u64;
    let extra = held % sessions as u64;
    for (i, mut conn) in conns.into_iter().enumerate() {
        let count = per_session + u64::from((i as u64) < extra);
        let names = format!("{prefix}h{i}-");
        tasks.spawn(async move {
            conn.hold_many(&names, count, PIPELINE_BATCH).await?;
            anyhow::Ok(conn)
        });
    }
    let mut holders = Vec::with_capacity(sessions);
    while let Some(joined) = tasks.join_next().await {
        holders.push(joined.context("a holding session panicked")??);
    }
    let setup = started.elapsed();
    let rss_after = bench.lockd_rss();

    let outcome = measure_fresh(bench, &prefix).await?;
    let mut record = Record::from_loops(
        Mode::Scale,
        Some("held_locks"),
        Target::Lockd,
        bench.window,
        &outcome,
    )
    .with("held", held)
    .with("fresh_lockd", fresh)
    .with("sessions", sessions)
    .with("setup_s", round(setup.as_secs_f64(), 3))
    .with(
        "setup_ops_per_s",
        round(held as f64 / setup.as_secs_f64().max(1e-9), 1),
    );
    record = with_rss(record, rss_before, rss_after, held, "rss_bytes_per_lock");
    check_alive(bench)?;

    drop(holders);
    let mut control = LockdConn::connect(bench.lockd_addr).await?;
    for i in 0..sessions {
        // lockd frees a closed session's locks in one step, so one lock per session tells.
        settle(&mut control, format!("{prefix}h{i}-0").as_bytes()).await?;
    }
    report.push(record)
}

async fn queued_waiters(bench: &mut Bench, report: &mut Report, asked: u64) -> Result<()> {
    let connections = bench.connections(Mode::Scale) as u64;
    let waiters = fit_fd_limit(bench, asked, connections + 1, "queued waiters");
    let fresh = bench.fresh_lockd()?;
    let prefix = bench.run_prefix();
    let resource = format!("{prefix}queue");
    eprintln!(
        "lockbench: scale, {waiters} waiters queued on one resource, then {connections} \
         connections on fresh resources"
    );
    let mut holder = LockdConn::connect(bench.lockd_addr).await?;
    let Started::Granted(_) = holder
        .start_acquire(resource.as_bytes(), LockMode::Exclusive)
        .await?
    else {
        bail!("a fresh resource was not granted at once");
    };
    let mut queued = bench.lockd_sessions(usize::try_from(waiters)?).await?;
    let rss_before = bench.lockd_rss();
    let started = Instant::now();
    let mut in_order = true;
    for (i, conn) in queued.iter_mut().enumerate() {
        let first = tokio::time::timeout(
            SETUP_PATIENCE,
            conn.start_acquire(resource.as_bytes(), LockMode::Exclusive),
        )
        .await
        .context("lockd did not answer a queued acquire in time")??;
        match first {
            Started::Queued(position) => in_order &= position == i as u64 + 1,
            Started::Granted(_) => bail!("lockd granted a lock that another session holds"),
        }
    }
    let setup = started.elapsed();
    let rss_after = bench.lockd_rss();

    let outcome = measure_fresh(bench, &prefix).await?;
    let lone = format!("{prefix}lone");
    holder.acquire(lone.as_bytes(), LockMode::Exclusive).await?;
    let own = format!("{prefix}probe-own");
    let behind_waiters = probe_deadlock_search(bench, &resource, &own).await?;
    let behind_holder = probe_deadlock_search(bench, &lone, &own).await?;
    let mut record = Record::from_loops(
        Mode::Scale,
        Some("queued_waiters"),
        Target::Lockd,
        bench.window,
        &outcome,
    )
    .with("waiters", waiters)
    .with("fresh_lockd", fresh)
    .with("waiters_asked", asked)
    .with("positions_in_order", in_order)
    .with("setup_s", round(setup.as_secs_f64(), 3))
    .with(
        "setup_ops_per_s",
        round(waiters as f64 / setup.as_secs_f64().max(1e-9), 1),
    );
    record = with_rss(
        record,
        rss_before,
        rss_after,
        waiters,
        "rss_bytes_per_waiter",
    );
    for (key, latency) in [
        ("deadlock_search_behind_waiters", behind_waiters),
        ("deadlock_search_behind_holder", behind_holder),
    ] {
        if let Some(summary) = latency.summary() {
            record.latency_us.insert(key, summary);
        }
    }
    check_alive(bench)?;

    drop(queued);
    drop(holder);
    let mut control = LockdConn::connect(bench.lockd_addr).await?;
    settle(&mut control, resource.as_bytes()).await?;
    report.push(record)
}

/// The time from sending an acquire for `resource` to its `queued` event, from a session that
/// holds `own`: lockd checks every such wait for a deadlock, following the wait-for edges from
/// the resource's holders and the waiters ahead. Each acquire is withdrawn at once.
async fn probe_deadlock_search(bench: &Bench, resource: &str, own: &str) -> Result<Latency> {
    let mut probe = LockdConn::connect(bench.lockd_addr).await?;
    probe.acquire(own.as_bytes(), LockMode::Exclusive).await?;
    let mut latency = Latency::new();
    for _ in 0..DEADLOCK_PROBES {
        let sent = Instant::now();
        let started = tokio::time::timeout(
            SETUP_PATIENCE,
            probe.start_acquire(resource.as_bytes(), LockMode::Exclusive),
        )
        .await
        .context("lockd did not answer a probing acquire in time")??;
        latency.record(sent.elapsed());
        if let Started::Granted(_) = started {
            bail!("lockd granted {resource}, which another session holds");
        }
        probe.cancel_last_acquire().await?;
    }
    Ok(latency)
}

async fn idle_connections(bench: &mut Bench, report: &mut Report, asked: u64) -> Result<()> {
    let connections = bench.connections(Mode::Scale) as u64;
    let idle = fit_fd_limit(bench, asked, connections, "idle connections");
    let fresh = bench.fresh_lockd()?;
    let prefix = bench.run_prefix();
    eprintln!(
        "lockbench: scale, {idle} idle connections held, then {connections} connections on fresh \
         resources"
    );
    let rss_before = bench.lockd_rss();
    let started = Instant::now();
    let mut sessions = bench.lockd_sessions(usize::try_from(idle)?).await?;
    let setup = started.elapsed();
    let rss_after = bench.lockd_rss();

    let outcome = measure_fresh(bench, &prefix).await?;
    // Every idle session must still answer after the window: write every ping, then read.
    let mut alive = 0u64;
    let mut failures = Vec::new();
    for conn in &mut sessions {
        if let Err(err) = conn.send_ping().await {
            failures.push(err);
        }
    }
    for conn in &mut sessions {
        match tokio::time::timeout(SETUP_PATIENCE, conn.finish_request()).await {
            Ok(Ok(())) => alive += 1,
            Ok(Err(err)) => failures.push(err),
            Err(_) => failures.push(anyhow::anyhow!("no answer to ping in {SETUP_PATIENCE:?}")),
        }
    }
    if let Some(first) = failures.first() {
        eprintln!(
            "lockbench: {} idle connections did not answer a ping; the first: {first:#}",
            failures.len()
        );
    }
    let mut record = Record::from_loops(
        Mode::Scale,
        Some("idle_connections"),
        Target::Lockd,
        bench.window,
        &outcome,
    )
    .with("idle_connections", idle)
    .with("fresh_lockd", fresh)
    .with("idle_connections_asked", asked)
    .with("idle_alive", alive)
    .with("setup_s", round(setup.as_secs_f64(), 3));
    record = with_rss(
        record,
        rss_before,
        rss_after,
        idle,
        "rss_bytes_per_connection",
    );
    check_alive(bench)?;
    drop(sessions);
    report.push(record)
}

/// The uncontended loop on resources nobody else uses, while a stage's load is held.
async fn measure_fresh(bench: &Bench, prefix: &str) -> Result<crate::measure::LoopsOutcome> {
    let lockers = bench
        .lockd_lockers(
            bench.connections(Mode::Scale),
            |i| format!("{prefix}fresh{i}"),
            |_| LockMode::Exclusive,
        )
        .await?;
    run_loops(lockers, bench.window, false, bench.lockd_cpu()).await
}

/// Adds RSS before and after a stage's load, and the growth per item, when known.
fn with_rss(
    record: Record,
    before: Option<u64>,
    after: Option<u64>,
    items: u64,
    per_item_key: &str,
) -> Record {
    match (before, after) {
        (Some(before), Some(after)) => record
            .with("rss_before_bytes", before)
            .with("rss_after_bytes", after)
            .with(
                per_item_key,
                round(after.saturating_sub(before) as f64 / items.max(1) as f64, 1),
            ),
        _ => record,
    }
}

/// `asked` connections, or fewer if this process's open-file limit cannot hold them next to
/// `others`; says so on stderr when it has to cut.
fn fit_fd_limit(bench: &Bench, asked: u64, others: u64, what: &str) -> u64 {
    let room = bench.fd_limit.saturating_sub(others + FD_RESERVE);
    if asked > room {
        eprintln!(
            "lockbench: the open-file limit ({}) leaves room for {room} {what}, not {asked}; \
             running with {room} (raise `ulimit -n` to run more; a lockd started by lockbench \
             has the same limit)",
            bench.fd_limit
        );
        room.max(1)
    } else {
        asked
    }
}

/// Fails with lockd's log if the lockd lockbench started has died.
fn check_alive(bench: &mut Bench) -> Result<()> {
    if let Some(lockd) = &mut bench.lockd {
        if !lockd.is_running() {
            bail!("lockd exited during the run; its log:\n{}", lockd.log());
        }
    }
    Ok(())
}

/// Waits until `resource` has no holders and no waiters (its sessions' cleanup is done).
async fn settle(control: &mut LockdConn, resource: &[u8]) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if control.holders_and_waiters(resource).await? == (0, 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "lockd still holds {} two minutes after its sessions closed",
                String::from_utf8_lossy(resource)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
