//! `watch`: how soon a watcher hears of a release, with one watcher and with a thousand of one
//! resource, and what a watch costs lockd in memory.
//!
//! One holder connection acquires the resource and releases it, over and over; each round waits
//! until every watcher has read the `released` event before the next acquire, so rounds never
//! overlap. The delay of one watcher in one round is from just before the release is written to
//! the socket to the moment that watcher's task has read the event line: lockd applying the
//! release, making one event per watcher, and every watcher's connection carrying it, as a
//! client would see it (lockbench's own scheduling of a thousand reader tasks included). The
//! record gives `release_to_watcher` over every (round, watcher), and `release_to_last_watcher`,
//! the slowest watcher of each round.
//!
//! Memory, on a fresh lockd: the RSS growth from opening the watching connections (one watch
//! each), and then from 32 more watches on each of them, every one of its own resource, which is
//! what a watch itself costs (its entries in the table's two indexes, its resource name, and the
//! state event it was sent). lockd only.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::bench::{Bench, Mode};
use crate::clients::lockd::{LockdConn, Mode as LockMode, SETUP_PATIENCE};
use crate::clients::Target;
use crate::measure::{CpuMeter, Latency, Window};
use crate::report::{round, Record, Report};

/// Extra watches per watching connection for the memory figure: below lockd's default of 64
/// watches per session.
const EXTRA_WATCHES: usize = 32;

/// Runs one watcher, then `--connections` (1,000 by default).
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let many = bench.connections(Mode::Watch);
    for watchers in [1, many] {
        one_run(bench, report, watchers).await?;
    }
    Ok(())
}

async fn one_run(bench: &mut Bench, report: &mut Report, watchers: usize) -> Result<()> {
    let fresh = bench.fresh_lockd()?;
    let prefix = bench.run_prefix();
    let resource = format!("{prefix}watched");
    eprintln!("lockbench: watch, {watchers} watcher(s) of one resource, lockd");
    let mut holder = LockdConn::connect(bench.lockd_addr).await?;
    let rss_before = bench.lockd_rss();
    let mut conns = bench.lockd_sessions(watchers).await?;
    for conn in &mut conns {
        conn.send_watch(resource.as_bytes()).await?;
    }
    for conn in &mut conns {
        watches_answered(conn, 1).await?;
    }
    let rss_watching = bench.lockd_rss();
    for (index, conn) in conns.iter_mut().enumerate() {
        for extra in 0..EXTRA_WATCHES {
            let name = format!("{prefix}w{index}-{extra}");
            conn.send_watch(name.as_bytes()).await?;
        }
        watches_answered(conn, EXTRA_WATCHES).await?;
    }
    let rss_extra = bench.lockd_rss();

    // Each watcher's task reports when it has read a `released` event.
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Instant>();
    let mut readers = JoinSet::new();
    for mut conn in conns {
        let seen_tx = seen_tx.clone();
        readers.spawn(async move {
            loop {
                let line = conn.next_event().await?;
                if contains(line, b"\"kind\":\"released\"") && seen_tx.send(Instant::now()).is_err()
                {
                    return anyhow::Ok(());
                }
            }
        });
    }
    drop(seen_tx);

    let Window {
        warmup, duration, ..
    } = bench.window;
    let mut each = Latency::new();
    let mut last = Latency::new();
    let mut rounds = 0u64;
    let started = Instant::now();
    let measured_from = started + warmup;
    let end = measured_from + duration;
    let mut measured_start = None;
    let mut meter = None;
    while Instant::now() < end {
        let token = holder
            .acquire(resource.as_bytes(), LockMode::Exclusive)
            .await?;
        let released = Instant::now();
        holder.release(resource.as_bytes(), token).await?;
        let counting = released >= measured_from;
        if counting && measured_start.is_none() {
            measured_start = Some(released);
            meter = Some(CpuMeter::start(bench.lockd_cpu()));
        }
        let mut slowest = Duration::ZERO;
        for _ in 0..watchers {
            let at = tokio::time::timeout(SETUP_PATIENCE, seen.recv())
                .await
                .map_err(|_| anyhow!("a watcher did not hear of a release in {SETUP_PATIENCE:?}"))?
                .ok_or_else(|| anyhow!("a watcher's connection ended"))?;
            let delay = at.saturating_duration_since(released);
            slowest = slowest.max(delay);
            if counting {
                each.record(delay);
            }
        }
        if counting {
            last.record(slowest);
            rounds += 1;
        }
    }
    let elapsed = measured_start.map_or(Duration::ZERO, |start| start.elapsed());
    readers.abort_all();
    let Some(meter) = meter else {
        bail!("no round of the watch benchmark fell in the measured window");
    };

    let cpu = meter.finish(elapsed);
    let mut record = Record {
        mode: Mode::Watch.name(),
        stage: None,
        target: Target::Lockd.name(),
        connections: watchers,
        // Set by Report::push, which knows the runtime and lockd's flags.
        client_threads: 0,
        lockd_args: Vec::new(),
        warmup_s: warmup.as_secs_f64(),
        duration_s: round(elapsed.as_secs_f64(), 3),
        unit: Mode::Watch.unit(),
        ops: rounds,
        ops_per_s: round(rounds as f64 / elapsed.as_secs_f64().max(1e-9), 1),
        latency_us: BTreeMap::new(),
        fairness: None,
        client_cpu: cpu.client,
        server_cpu: cpu.server,
        machine_cpu: cpu.machine,
        attempts: 1,
        extra: serde_json::Map::new(),
    };
    if let Some(summary) = each.summary() {
        record.latency_us.insert("release_to_watcher", summary);
    }
    if let Some(summary) = last.summary() {
        record.latency_us.insert("release_to_last_watcher", summary);
    }
    let per = |before: Option<u64>, after: Option<u64>, count: usize| {
        Some((after?.saturating_sub(before?) as f64 / count.max(1) as f64).round())
    };
    record = record.with("watchers", watchers).with("fresh_lockd", fresh);
    if let Some(bytes) = per(rss_before, rss_watching, watchers) {
        record = record.with("rss_bytes_per_watching_connection", bytes);
    }
    if let Some(bytes) = per(rss_watching, rss_extra, watchers * EXTRA_WATCHES) {
        record = record
            .with("rss_bytes_per_watch", bytes)
            .with("extra_watches", watchers * EXTRA_WATCHES);
    }
    report.push(record)?;
    Ok(())
}

/// Reads the answers to `count` watches sent on `conn`: a reply and a `state` event each, in
/// whatever order lockd interleaves them (a connection's watch events go out ahead of replies
/// queued beside them).
async fn watches_answered(conn: &mut LockdConn, count: usize) -> Result<()> {
    let (mut replies, mut states) = (0, 0);
    while replies < count || states < count {
        let line = tokio::time::timeout(SETUP_PATIENCE, conn.next_event())
            .await
            .map_err(|_| anyhow!("no answer to a watch within {SETUP_PATIENCE:?}"))??;
        if contains(line, b"\"kind\":\"state\"") {
            states += 1;
        } else if contains(line, b"\"ok\":true") {
            replies += 1;
        } else {
            bail!("lockd refused a watch: {}", String::from_utf8_lossy(line));
        }
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}
