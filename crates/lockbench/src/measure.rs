//! Timing: the warm-up/measure/stop window, latency histograms, the lock loop every mode runs,
//! handoff pairing for contended runs, and CPU time of the client and the server.
//!
//! All times come from one monotonic clock (`std::time::Instant`) in one process, so a release
//! acknowledged on one connection and a grant arriving on another can be subtracted directly.
//! Loops keep their own histograms and counters and are merged after the window closes: the
//! hot path never takes a lock, except the handoff tracker, which contended runs need and whose
//! events are serialized by the benchmarked lock anyway.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::clients::Locker;
use crate::lockd_metrics::StoreCommits;

/// Where a run is in its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Running, not counting.
    Warmup = 0,
    /// Running and counting.
    Measure = 1,
    /// Finish the operation in progress and stop.
    Stop = 2,
}

/// The phase shared by every loop of a run, and the number of the measured window it belongs to;
/// the run's controller is the only writer. A window that is measured again (see
/// [`Window::busy_retries`]) gets a new number, and loops drop what they counted in the old one.
#[derive(Debug)]
pub struct PhaseFlag(AtomicU64);

impl PhaseFlag {
    /// A flag in [`Phase::Warmup`] of window 0.
    pub fn new() -> Arc<PhaseFlag> {
        Arc::new(PhaseFlag(AtomicU64::new(Phase::Warmup as u64)))
    }

    /// The current phase and window number. Relaxed is enough: a loop that sees a change one
    /// operation late only shifts the window's edge by one operation, and the window length is
    /// measured separately.
    pub fn get(&self) -> (Phase, u64) {
        let word = self.0.load(Ordering::Relaxed);
        let phase = match word & 3 {
            0 => Phase::Warmup,
            1 => Phase::Measure,
            _ => Phase::Stop,
        };
        (phase, word >> 2)
    }

    /// Starts measuring a new window.
    fn begin_window(&self) {
        let (_, window) = self.get();
        self.0.store(
            ((window + 1) << 2) | Phase::Measure as u64,
            Ordering::Relaxed,
        );
    }

    /// Moves every loop to `phase` in the current window.
    fn set(&self, phase: Phase) {
        let (_, window) = self.get();
        self.0
            .store((window << 2) | phase as u64, Ordering::Relaxed);
    }
}

/// Warm-up and measurement of every run.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Running without counting, so connections, caches and the server's maps settle.
    pub warmup: Duration,
    /// Running and counting.
    pub duration: Duration,
    /// How many times a window may be measured again because other processes used more than
    /// [`BUSY_MACHINE_CORES`] during it. On a machine shared with builds, one compile in the
    /// middle of a window changes a ratio more than anything lockd does.
    pub busy_retries: u32,
}

/// Cores used by other processes during a window above which it counts as disturbed: on two
/// cores, that much interference moves every ratio.
pub const BUSY_MACHINE_CORES: f64 = 0.25;

/// Latencies in nanoseconds, from 1 ns to one minute, to three significant digits.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // Invariant: these bounds are constants that hdrhistogram accepts (low >= 1, high >= 2 *
        // low, sigfig <= 5), so creation cannot fail.
        let histogram = Histogram::new_with_bounds(1, 60_000_000_000, 3)
            .expect("constant histogram bounds are valid");
        Latency(histogram)
    }

    /// Records one duration; longer than a minute counts as a minute.
    pub fn record(&mut self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.0.saturating_record(nanos.max(1));
    }

    /// Adds another histogram's counts to this one.
    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// Percentiles in microseconds, or `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.0.is_empty() {
            return None;
        }
        let micros = |nanos: u64| (nanos as f64 / 100.0).round() / 10.0;
        Some(LatencySummary {
            count: self.0.len(),
            p50: micros(self.0.value_at_quantile(0.50)),
            p99: micros(self.0.value_at_quantile(0.99)),
            p999: micros(self.0.value_at_quantile(0.999)),
            max: micros(self.0.max()),
            mean: (self.0.mean() / 100.0).round() / 10.0,
        })
    }
}

/// Percentiles of one latency, in microseconds rounded to 0.1.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LatencySummary {
    /// Durations recorded.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// What one loop counted inside the measured window.
#[derive(Debug, Clone)]
pub struct LoopStats {
    /// The window these counts belong to.
    window: u64,
    /// Acquire/release pairs completed (for a lock loop: grants).
    pub pairs: u64,
    /// From sending the acquire to holding the lock (queue wait and retries included).
    pub acquire: Latency,
    /// From sending the release to its acknowledgement.
    pub release: Latency,
}

/// Everything a run of loops measured.
#[derive(Debug)]
pub struct LoopsOutcome {
    /// One entry per loop, in the order the lockers were given.
    pub per_loop: Vec<LoopStats>,
    /// Release acknowledged → next grant, when a handoff tracker was used.
    pub handoff: Option<Latency>,
    /// The measured window's real length.
    pub elapsed: Duration,
    /// CPU used during the window, in cores (1.0 = one core busy all the time).
    pub cpu: CpuUse,
    /// Windows measured: 1, plus one for each window measured again on a busy machine.
    pub attempts: u32,
    /// lockd's store commits during the window, when counted (see [`run_loops_counting`]).
    pub commits: Option<u64>,
}

impl LoopStats {
    fn new(window: u64) -> LoopStats {
        LoopStats {
            window,
            pairs: 0,
            acquire: Latency::new(),
            release: Latency::new(),
        }
    }
}

impl LoopsOutcome {
    /// All loops' stats added together.
    pub fn total(&self) -> LoopStats {
        let mut total = LoopStats::new(0);
        for stats in &self.per_loop {
            total.pairs += stats.pairs;
            total.acquire.merge(&stats.acquire);
            total.release.merge(&stats.release);
        }
        total
    }
}

/// Runs every locker in its own task, acquire then release in a tight loop, through the warm-up
/// and the measured window, and collects what they counted. With `handoff`, every grant and
/// release acknowledgement is also reported to a tracker (only meaningful when all lockers
/// share one exclusive lock). `server` says where to read the server's CPU time.
pub async fn run_loops<L: Locker>(
    lockers: Vec<L>,
    window: Window,
    handoff: bool,
    server: ServerCpu,
) -> Result<LoopsOutcome> {
    run_loops_counting(lockers, window, handoff, server, None).await
}

/// [`run_loops`], also counting lockd's store commits during the measured window. The count is
/// read just before the window opens and just after it closes, while the loops keep running, so
/// it may include the commits of a millisecond or two around the window.
pub async fn run_loops_counting<L: Locker>(
    lockers: Vec<L>,
    window: Window,
    handoff: bool,
    server: ServerCpu,
    commits: Option<StoreCommits>,
) -> Result<LoopsOutcome> {
    let phase = PhaseFlag::new();
    let tracker = handoff.then(|| Arc::new(HandoffTracker::new()));
    let mut tasks = Vec::with_capacity(lockers.len());
    for locker in lockers {
        tasks.push(tokio::spawn(drive(
            locker,
            Arc::clone(&phase),
            tracker.clone(),
        )));
    }
    let mut attempts = 0;
    let (elapsed, cpu, window_commits) = loop {
        attempts += 1;
        tokio::time::sleep(window.warmup).await;
        if let Some(tracker) = &tracker {
            tracker.take();
        }
        let commits_before = match &commits {
            Some(commits) => Some(commits.read().await?),
            None => None,
        };
        let meter = CpuMeter::start(server);
        let started = Instant::now();
        phase.begin_window();
        tokio::time::sleep(window.duration).await;
        let elapsed = started.elapsed();
        let cpu = meter.finish(elapsed);
        let window_commits = match (&commits, commits_before) {
            (Some(commits), Some(before)) => Some(commits.read().await?.saturating_sub(before)),
            _ => None,
        };
        match cpu.others() {
            Some(others) if others > BUSY_MACHINE_CORES && attempts <= window.busy_retries => {
                eprintln!(
                    "lockbench: other processes used {others:.2} cores during the window; \
                     measuring it again"
                );
                phase.set(Phase::Warmup);
            }
            _ => {
                phase.set(Phase::Stop);
                break (elapsed, cpu, window_commits);
            }
        }
    };
    let (_, last_window) = phase.get();
    let mut per_loop = Vec::with_capacity(tasks.len());
    let mut first_error = None;
    for task in tasks {
        // Every loop finishes the operation it is in; a lock loop waiting in a queue is granted
        // as the others leave. A server that stopped answering is a failed run, not a hang.
        match tokio::time::timeout(STOP_PATIENCE, task).await {
            // A loop that never saw the last window (it was waiting the whole time) has nothing
            // to report from it.
            Ok(Ok(Ok(stats))) if stats.window == last_window => per_loop.push(stats),
            Ok(Ok(Ok(_))) => per_loop.push(LoopStats::new(last_window)),
            Ok(Ok(Err(err))) => {
                first_error.get_or_insert(err);
            }
            Ok(Err(join)) => {
                first_error.get_or_insert(anyhow!("a benchmark loop panicked: {join}"));
            }
            Err(_) => {
                first_error.get_or_insert(anyhow!(
                    "a benchmark loop did not stop within {STOP_PATIENCE:?} of the window's end"
                ));
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    let handoff = tracker.map(|tracker| tracker.take());
    Ok(LoopsOutcome {
        per_loop,
        handoff,
        elapsed,
        cpu,
        attempts,
        commits: window_commits,
    })
}

/// How long loops may take to finish after the window closes.
const STOP_PATIENCE: Duration = Duration::from_secs(30);

async fn drive<L: Locker>(
    mut locker: L,
    phase: Arc<PhaseFlag>,
    tracker: Option<Arc<HandoffTracker>>,
) -> Result<LoopStats> {
    let mut stats = LoopStats::new(0);
    loop {
        let (now, window) = phase.get();
        if now == Phase::Stop {
            return Ok(stats);
        }
        if window != stats.window {
            // A new window: what was counted in the old one belongs to a discarded measurement.
            stats = LoopStats::new(window);
        }
        let measuring = now == Phase::Measure;
        let sent = Instant::now();
        locker.acquire().await.context("acquire failed")?;
        let granted = Instant::now();
        let seq = tracker
            .as_ref()
            .map(|tracker| tracker.granted(granted, measuring));
        locker.release().await.context("release failed")?;
        let released = Instant::now();
        if let (Some(tracker), Some(seq)) = (&tracker, seq) {
            tracker.released(seq, released, measuring);
        }
        if measuring && phase.get() == (Phase::Measure, window) {
            stats.pairs += 1;
            stats.acquire.record(granted - sent);
            stats.release.record(released - granted);
        }
    }
}

/// Pairs each grant of one exclusive lock with the release acknowledgement before it.
///
/// Holders of an exclusive lock follow each other, so numbering grants in the order they are
/// observed gives grant k+1 to the holder after holder k: holder k took its number before it
/// sent its release, and the server sent grant k+1 only after that release. The two events
/// arrive on different connections in either order (the server sends the release reply and the
/// next grant in the same step), so whichever comes second completes the pair. A grant seen
/// before its predecessor's acknowledgement counts as a handoff of zero.
#[derive(Debug)]
struct HandoffTracker {
    inner: Mutex<HandoffState>,
}

#[derive(Debug)]
struct HandoffState {
    next_seq: u64,
    /// Release acknowledgements waiting for the next grant, by the releasing holder's number.
    acks: HashMap<u64, Instant>,
    /// Grants waiting for the previous holder's acknowledgement, by the grant's number.
    grants: HashMap<u64, Instant>,
    handoff: Latency,
}

/// Unpaired events older than this many grants are dropped, so a stray event cannot grow the
/// maps for the rest of the run.
const HANDOFF_HORIZON: u64 = 1024;

impl HandoffTracker {
    fn new() -> HandoffTracker {
        HandoffTracker {
            inner: Mutex::new(HandoffState {
                next_seq: 0,
                acks: HashMap::new(),
                grants: HashMap::new(),
                handoff: Latency::new(),
            }),
        }
    }

    /// A grant arrived at `at`; returns its number, to pass to [`Self::released`].
    fn granted(&self, at: Instant, measuring: bool) -> u64 {
        let mut state = self.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        if seq > 0 {
            match state.acks.remove(&(seq - 1)) {
                Some(ack) => {
                    if measuring {
                        state.handoff.record(at.saturating_duration_since(ack));
                    }
                }
                None => {
                    state.grants.insert(seq, at);
                }
            }
        }
        if seq.is_multiple_of(HANDOFF_HORIZON) {
            let horizon = seq.saturating_sub(HANDOFF_HORIZON);
            state.acks.retain(|&k, _| k >= horizon);
            state.grants.retain(|&k, _| k >= horizon);
        }
        seq
    }

    /// The release of grant `seq` was acknowledged at `at`.
    fn released(&self, seq: u64, at: Instant, measuring: bool) {
        let mut state = self.lock();
        match state.grants.remove(&(seq + 1)) {
            Some(grant) => {
                if measuring {
                    state.handoff.record(grant.saturating_duration_since(at));
                }
            }
            None => {
                state.acks.insert(seq, at);
            }
        }
    }

    fn take(&self) -> Latency {
        std::mem::replace(&mut self.lock().handoff, Latency::new())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HandoffState> {
        // The state stays consistent even if a holder of the mutex panicked mid-update (every
        // update is a single map operation), so a poisoned mutex is used as it is.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// CPU used during a window, in cores (1.0 = one core busy for the whole window).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuUse {
    /// lockbench itself, less the in-process echo server's thread.
    pub client: Option<f64>,
    /// The server under test, when lockbench knows where to read it.
    pub server: Option<f64>,
    /// The whole machine. Anything above `client + server` was used by other processes, which
    /// on a shared two-core machine is the first thing to look at when a ratio looks odd.
    pub machine: Option<f64>,
}

impl CpuUse {
    /// CPU used by processes other than lockbench and the server, in cores, when the server's
    /// CPU is known. /proc samples CPU time at clock ticks, so a few hundredths either way are
    /// noise.
    pub fn others(&self) -> Option<f64> {
        Some(self.machine? - self.client? - self.server?)
    }
}

/// Where the server's CPU time can be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerCpu {
    /// Not known (a `--server` lockd, a Redis whose pid was not given).
    Unknown,
    /// A process of its own.
    Process(u32),
    /// A thread of lockbench itself (the echo server), by its kernel thread id.
    Thread(u32),
    /// The three processes of a cluster, added up.
    Processes([u32; 3]),
}

impl ServerCpu {
    /// The server's CPU time so far, when it can be read.
    fn time(self) -> Option<Duration> {
        match self {
            ServerCpu::Unknown => None,
            ServerCpu::Process(pid) => cpu_time(&format!("/proc/{pid}/stat")),
            ServerCpu::Thread(tid) => cpu_time(&format!("/proc/self/task/{tid}/stat")),
            ServerCpu::Processes(pids) => pids
                .iter()
                .map(|pid| cpu_time(&format!("/proc/{pid}/stat")))
                .sum(),
        }
    }
}

/// CPU times read from /proc at the start of a window.
#[derive(Debug)]
pub struct CpuMeter {
    server: ServerCpu,
    client_start: Option<Duration>,
    server_start: Option<Duration>,
    machine_start: Option<Duration>,
}

impl CpuMeter {
    /// Takes the starting CPU times.
    pub fn start(server: ServerCpu) -> CpuMeter {
        CpuMeter {
            server,
            client_start: cpu_time("/proc/self/stat"),
            server_start: server.time(),
            machine_start: machine_busy_time(),
        }
    }

    /// CPU used since [`Self::start`], as a share of `elapsed` wall time.
    pub fn finish(&self, elapsed: Duration) -> CpuUse {
        let used = |before: Option<Duration>, after: Option<Duration>| after?.checked_sub(before?);
        let cores = |used: Duration| {
            (used.as_secs_f64() / elapsed.as_secs_f64().max(1e-9) * 100.0).round() / 100.0
        };
        let client = used(self.client_start, cpu_time("/proc/self/stat"));
        let server = used(self.server_start, self.server.time());
        let client = match (self.server, client, server) {
            // The echo server's thread is part of this process; count it once, as the server.
            (ServerCpu::Thread(_), Some(client), Some(server)) => client.checked_sub(server),
            (ServerCpu::Thread(_), _, _) => None,
            _ => client,
        };
        CpuUse {
            client: client.map(cores),
            server: server.map(cores),
            machine: used(self.machine_start, machine_busy_time()).map(cores),
        }
    }
}

/// User plus system CPU time of a process or thread from its `stat` file, or `None` off Linux.
fn cpu_time(stat_path: &str) -> Option<Duration> {
    let stat = std::fs::read_to_string(stat_path).ok()?;
    // The command name (field 2) may contain spaces and parentheses; fields after the last ')'
    // start with field 3 (state), so utime (14) and stime (15) are at 11 and 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// Busy time of all CPUs together from the `cpu` line of /proc/stat: everything but idle and
/// iowait.
fn machine_busy_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    // user nice system idle iowait irq softirq steal; guest time is already inside user.
    let busy: u64 = fields
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, ticks)| ticks)
        .sum();
    Some(ticks(busy))
}

/// /proc counts clock ticks of USER_HZ, which Linux fixes at 100 for user space.
fn ticks(count: u64) -> Duration {
    Duration::from_millis(count * 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_are_numbered_and_phases_keep_their_window() {
        let flag = PhaseFlag::new();
        assert_eq!(flag.get(), (Phase::Warmup, 0));
        flag.begin_window();
        assert_eq!(flag.get(), (Phase::Measure, 1));
        flag.set(Phase::Warmup);
        assert_eq!(flag.get(), (Phase::Warmup, 1));
        flag.begin_window();
        flag.set(Phase::Stop);
        assert_eq!(flag.get(), (Phase::Stop, 2));
    }

    #[test]
    fn handoff_pairs_events_in_either_order() {
        let tracker = HandoffTracker::new();
        let t0 = Instant::now();
        let first = tracker.granted(t0, true);
        // The acknowledgement of grant 0 arrives before grant 1: 30 µs handoff.
        tracker.released(first, t0 + Duration::from_micros(10), true);
        let second = tracker.granted(t0 + Duration::from_micros(40), true);
        // Grant 2 is seen before grant 1's acknowledgement: a handoff of zero.
        let third = tracker.granted(t0 + Duration::from_micros(50), true);
        tracker.released(second, t0 + Duration::from_micros(60), true);
        tracker.released(third, t0 + Duration::from_micros(70), true);
        let handoff = tracker.take();
        let summary = handoff.summary().expect("two handoffs");
        assert_eq!(summary.count, 2);
        assert_eq!(summary.max, 30.0);
    }
}
