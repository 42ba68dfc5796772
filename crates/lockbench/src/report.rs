//! Results: one [`Record`] per run, printed as a JSON line the moment the run ends, and at the
//! end a table of all runs and the targets, each checked against this run's numbers.
//!
//! A record has the fields every run shares (mode, target, connections, rate, latencies,
//! fairness, CPU) plus a free-form `extra` map for what only one mode measures, so a new mode
//! adds fields without touching the others.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::bench::Mode;
use crate::clients::Target;
use crate::measure::{LatencySummary, LoopsOutcome, Window, BUSY_MACHINE_CORES};

/// What one run measured; serialized as one JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Record {
    /// `uncontended`, `contended`, `semaphore`, `shared`, `scale` or `writes`.
    pub mode: &'static str,
    /// For `scale`: `held_locks`, `queued_waiters` or `idle_connections`; for `writes`:
    /// `writers`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stage: Option<&'static str>,
    /// `lockd`, `redis` or `echo`.
    pub target: &'static str,
    /// Connections running the loop.
    pub connections: usize,
    /// Threads of lockbench's client runtime (`--client-threads`).
    pub client_threads: u64,
    /// Flags given to the lockd that lockbench started (`--lockd-arg`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lockd_args: Vec<String>,
    /// Warm-up before the window, in seconds.
    pub warmup_s: f64,
    /// The measured window's real length, in seconds.
    pub duration_s: f64,
    /// What `ops` counts: `pairs` (acquire + release on an own resource), `grants`, or
    /// `writes` (acquire + write + release).
    pub unit: &'static str,
    /// Operations completed in the window.
    pub ops: u64,
    /// `ops` per second.
    pub ops_per_s: f64,
    /// Latency percentiles in microseconds, by name (`acquire`, `release`, `handoff`, ...).
    pub latency_us: BTreeMap<&'static str, LatencySummary>,
    /// Operations per connection, lowest and highest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
    /// CPU used by lockbench during the window, in cores.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cpu: Option<f64>,
    /// CPU used by the server during the window, in cores, when lockbench can read it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<f64>,
    /// CPU used by the whole machine during the window, in cores; above client + server means
    /// other processes were busy too.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub machine_cpu: Option<f64>,
    /// Windows measured; above 1 when earlier ones were disturbed by other processes and
    /// measured again (`--busy-retries`).
    pub attempts: u32,
    /// Fields only this mode has.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// Operations per connection in the window.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Fairness {
    /// The connection that got the fewest.
    pub min: u64,
    /// The connection that got the most.
    pub max: u64,
    /// `max / min`; 1.0 is perfectly even, absent when some connection got none.
    pub max_over_min: Option<f64>,
}

impl Fairness {
    /// Fairness of the given per-connection counts, or `None` for no connections.
    pub fn of(counts: impl IntoIterator<Item = u64>) -> Option<Fairness> {
        let counts: Vec<u64> = counts.into_iter().collect();
        let min = *counts.iter().min()?;
        let max = *counts.iter().max()?;
        Some(Fairness {
            min,
            max,
            max_over_min: (min > 0).then(|| round(max as f64 / min as f64, 3)),
        })
    }
}

impl Record {
    /// A record of a loop run: rate from the total pairs, `acquire` and `release` latencies,
    /// `handoff` when tracked, fairness over the loops.
    pub fn from_loops(
        mode: Mode,
        stage: Option<&'static str>,
        target: Target,
        window: Window,
        outcome: &LoopsOutcome,
    ) -> Record {
        let total = outcome.total();
        let mut latency_us = BTreeMap::new();
        if let Some(summary) = total.acquire.summary() {
            latency_us.insert("acquire", summary);
        }
        if let Some(summary) = total.release.summary() {
            latency_us.insert("release", summary);
        }
        if let Some(summary) = outcome.handoff.as_ref().and_then(|h| h.summary()) {
            latency_us.insert("handoff", summary);
        }
        let seconds = outcome.elapsed.as_secs_f64();
        Record {
            mode: mode.name(),
            stage,
            target: target.name(),
            connections: outcome.per_loop.len(),
            // Set by Report::push, which knows the runtime and lockd's flags.
            client_threads: 0,
            lockd_args: Vec::new(),
            warmup_s: window.warmup.as_secs_f64(),
            duration_s: round(seconds, 3),
            unit: mode.unit(),
            ops: total.pairs,
            ops_per_s: round(total.pairs as f64 / seconds.max(1e-9), 1),
            latency_us,
            fairness: Fairness::of(outcome.per_loop.iter().map(|stats| stats.pairs)),
            client_cpu: outcome.cpu.client,
            server_cpu: outcome.cpu.server,
            machine_cpu: outcome.cpu.machine,
            attempts: outcome.attempts,
            extra: Map::new(),
        }
    }

    /// A record of something other than a loop (a failover kill): no operations or latencies,
    /// only the fields added with [`Self::with`].
    pub fn single(mode: Mode, stage: Option<&'static str>, window: Window) -> Record {
        Record {
            mode: mode.name(),
            stage,
            target: Target::Lockd.name(),
            connections: 1,
            client_threads: 0,
            lockd_args: Vec::new(),
            warmup_s: window.warmup.as_secs_f64(),
            duration_s: 0.0,
            unit: mode.unit(),
            ops: 0,
            ops_per_s: 0.0,
            latency_us: BTreeMap::new(),
            fairness: None,
            client_cpu: None,
            server_cpu: None,
            machine_cpu: None,
            attempts: 1,
            extra: Map::new(),
        }
    }

    /// Adds a mode-specific field.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Record {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// A mode-specific number, if present.
    pub fn extra_f64(&self, key: &str) -> Option<f64> {
        self.extra.get(key).and_then(Value::as_f64)
    }

    /// CPU used during the window by processes other than lockbench and the server, in cores,
    /// when the server's CPU is known.
    pub fn others_cpu(&self) -> Option<f64> {
        Some(self.machine_cpu? - self.client_cpu? - self.server_cpu?)
    }

    fn latency(&self, name: &str) -> Option<&LatencySummary> {
        self.latency_us.get(name)
    }

    /// A short name for tables and charts, e.g. `contended lockd` or `scale held_locks=1000`.
    pub fn label(&self) -> String {
        let mut label = format!("{} {}", self.mode, self.target);
        if let Some(stage) = self.stage {
            label = format!("{} {stage}", self.mode);
            if let Some(size) = self.stage_size() {
                label.push_str(&format!("={}", thousands(size)));
            }
            if self.target != "lockd" {
                label.push_str(&format!(" {}", self.target));
            }
        }
        label
    }

    /// How many locks, waiters or idle connections a scale stage held, or how many writers a
    /// writes run had.
    pub fn stage_size(&self) -> Option<u64> {
        ["held", "waiters", "idle_connections", "writers"]
            .iter()
            .find_map(|key| self.extra.get(*key).and_then(Value::as_u64))
    }
}

/// Collects records, printing each as a JSON line (and into `--json-out`) when it arrives.
#[derive(Debug)]
pub struct Report {
    records: Vec<Record>,
    json_out: Option<File>,
    client_threads: u64,
    lockd_args: Vec<String>,
}

impl Report {
    /// A report that also writes its lines to `json_out`, replacing the file. Every record is
    /// stamped with `client_threads` and `lockd_args`.
    pub fn new(
        json_out: Option<&Path>,
        client_threads: u64,
        lockd_args: Vec<String>,
    ) -> Result<Report> {
        let json_out = json_out
            .map(|path| {
                File::create(path).with_context(|| format!("cannot create {}", path.display()))
            })
            .transpose()?;
        Ok(Report {
            records: Vec::new(),
            json_out,
            client_threads,
            lockd_args,
        })
    }

    /// Prints the record's JSON line and keeps it for the table.
    pub fn push(&mut self, mut record: Record) -> Result<()> {
        record.client_threads = self.client_threads;
        record.lockd_args.clone_from(&self.lockd_args);
        let line = serde_json::to_string(&record)?;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{line}")?;
        stdout.flush()?;
        if let Some(file) = &mut self.json_out {
            writeln!(file, "{line}")?;
            file.flush()?;
        }
        self.records.push(record);
        Ok(())
    }

    /// Every record so far, in run order.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The table of runs and the targets, as printed at the end.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&runs_table(&self.records));
        out.push('\n');
        out.push_str(&targets_table(&check_targets(&self.records)));
        out
    }
}

fn runs_table(records: &[Record]) -> String {
    let header = [
        "run",
        "conns",
        "ops/s",
        "unit",
        "acquire p50/p99/p999 µs",
        "release p50/p99 µs",
        "handoff p50/p99/p999 µs",
        "max/min",
        "cpu client/server/all",
        "notes",
    ];
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|record| {
            let p3 = |name: &str| {
                record.latency(name).map_or("-".to_owned(), |l| {
                    format!("{}/{}/{}", num(l.p50), num(l.p99), num(l.p999))
                })
            };
            let p2 = |name: &str| {
                record
                    .latency(name)
                    .map_or("-".to_owned(), |l| format!("{}/{}", num(l.p50), num(l.p99)))
            };
            let fairness = record.fairness.map_or("-".to_owned(), |f| {
                f.max_over_min
                    .map_or(format!("{}/0", f.max), |ratio| format!("{ratio:.2}"))
            });
            let cores = |cpu: Option<f64>| cpu.map_or("-".to_owned(), |c| format!("{c:.2}"));
            let cpu = format!(
                "{}/{}/{}",
                cores(record.client_cpu),
                cores(record.server_cpu),
                cores(record.machine_cpu)
            );
            vec![
                record.label(),
                record.connections.to_string(),
                thousands(record.ops_per_s.round() as u64),
                record.unit.to_owned(),
                p3("acquire"),
                p2("release"),
                p3("handoff"),
                fairness,
                cpu,
                notes(record),
            ]
        })
        .collect();
    table(&header, &rows)
}

/// The mode-specific numbers worth a glance in the table.
fn notes(record: &Record) -> String {
    let mut notes = Vec::new();
    for (key, label) in [
        ("rss_bytes_per_lock", "B/lock"),
        ("rss_bytes_per_waiter", "B/waiter"),
        ("rss_bytes_per_connection", "B/conn"),
    ] {
        if let Some(bytes) = record.extra_f64(key) {
            notes.push(format!("{} {label}", bytes.round()));
        }
    }
    if let Some(rate) = record.extra_f64("setup_ops_per_s") {
        notes.push(format!("setup {}/s", thousands(rate.round() as u64)));
    }
    if let (Some(waiters), Some(holder)) = (
        record.latency_us.get("deadlock_search_behind_waiters"),
        record.latency_us.get("deadlock_search_behind_holder"),
    ) {
        notes.push(format!(
            "deadlock search p50 {:.0} µs ({:.0} µs with no waiter)",
            waiters.p50, holder.p50
        ));
    }
    if let (Some(alive), Some(asked)) = (
        record.extra_f64("idle_alive"),
        record.extra_f64("idle_connections"),
    ) {
        notes.push(format!("{alive}/{asked} idle alive"));
    }
    for (key, label) in [
        ("writer_grants_per_s", "writer"),
        ("reader_grants_per_s", "readers"),
    ] {
        if let Some(rate) = record.extra_f64(key) {
            notes.push(format!("{label} {}/s", thousands(rate.round() as u64)));
        }
    }
    if let Some(rate) = record.extra_f64("commits_per_s") {
        notes.push(format!("commits {}/s", thousands(rate.round() as u64)));
    }
    if let Some(batch) = record.extra_f64("writes_per_commit") {
        notes.push(format!("{batch:.1} writes/commit"));
    }
    if let Some(summary) = record.latency("writer_acquire") {
        notes.push(format!("writer acq p99 {} µs", num(summary.p99)));
    }
    if record.attempts > 1 {
        notes.push(format!("measured {} times (busy machine)", record.attempts));
    }
    if let Some(others) = record.others_cpu() {
        if others > BUSY_MACHINE_CORES {
            notes.push(format!("BUSY: other processes used {others:.2} cores"));
        }
    }
    notes.join(", ")
}

/// One of the targets, checked against this run.
#[derive(Debug, Clone)]
pub struct TargetCheck {
    /// What is measured.
    pub what: String,
    /// The goal, as the issue states it.
    pub goal: &'static str,
    /// The measured value or ratio.
    pub measured: String,
    /// Met, not met, or `None` when this run did not measure it.
    pub met: Option<bool>,
}

/// Checks every target the records allow.
pub fn check_targets(records: &[Record]) -> Vec<TargetCheck> {
    let find = |mode: &str, target: &str| {
        records
            .iter()
            .find(|r| r.mode == mode && r.target == target && r.stage.is_none())
    };
    let mut checks = Vec::new();
    let uncontended = find("uncontended", "lockd");
    let conns = |record: Option<&Record>| {
        record.map_or(String::new(), |r| format!(", {} conns", r.connections))
    };
    checks.push(ratio_check(
        format!("uncontended pairs/s vs Redis{}", conns(uncontended)),
        "≥ 1.5×",
        uncontended,
        find("uncontended", "redis"),
        1.5,
    ));
    checks.push(ratio_check(
        format!("uncontended pairs/s vs echo limit{}", conns(uncontended)),
        "≥ 0.8×",
        uncontended,
        find("uncontended", "echo"),
        0.8,
    ));
    let contended = find("contended", "lockd");
    checks.push(ratio_check(
        format!("contended grants/s vs Redis{}", conns(contended)),
        "≥ 2×",
        contended,
        find("contended", "redis"),
        2.0,
    ));
    let fairness = contended.and_then(|r| r.fairness);
    checks.push(TargetCheck {
        what: format!("contended grants per client max/min{}", conns(contended)),
        goal: "≤ 1.1",
        measured: fairness.map_or("not measured".to_owned(), |f| {
            f.max_over_min.map_or(format!("{}/0", f.max), |ratio| {
                format!("{ratio:.3} ({}/{})", f.max, f.min)
            })
        }),
        met: fairness.map(|f| f.max_over_min.is_some_and(|ratio| ratio <= 1.1)),
    });
    let handoff = contended.and_then(|r| r.latency("handoff"));
    checks.push(TargetCheck {
        what: "contended handoff p99".to_owned(),
        goal: "≤ 100 µs",
        measured: handoff.map_or("not measured".to_owned(), |h| format!("{} µs", num(h.p99))),
        met: handoff.map(|h| h.p99 <= 100.0),
    });
    checks.extend(scale_checks(records));
    checks.push(group_commit_check(records));
    checks.extend(multi_checks(records));
    checks.extend(cluster_checks(records));
    checks
}

/// `ours` against `theirs` in ops/s: met when the ratio is at least `min`.
fn ratio_check(
    what: String,
    goal: &'static str,
    ours: Option<&Record>,
    theirs: Option<&Record>,
    min: f64,
) -> TargetCheck {
    let (measured, met) = match (ours, theirs) {
        (Some(ours), Some(theirs)) if theirs.ops_per_s > 0.0 => {
            let ratio = ours.ops_per_s / theirs.ops_per_s;
            (
                format!(
                    "{ratio:.2}× ({} vs {} {}/s)",
                    thousands(ours.ops_per_s.round() as u64),
                    thousands(theirs.ops_per_s.round() as u64),
                    ours.unit
                ),
                Some(ratio >= min),
            )
        }
        _ => ("not measured".to_owned(), None),
    };
    TargetCheck {
        what,
        goal,
        measured,
        met,
    }
}

/// Issue 19's goals, when the run measured them: lockd's cluster against etcd (1-client pairs at
/// 1.5×, 64-client pairs and contended grants at 5×), and reads at 3× writes. Nothing when
/// neither etcd nor the reads mode ran, so single-server runs keep their table.
fn cluster_checks(records: &[Record]) -> Vec<TargetCheck> {
    let find = |mode: &str, target: &str, connections: usize| {
        records.iter().find(|r| {
            r.mode == mode
                && r.target == target
                && r.connections == connections
                && r.stage.is_none()
        })
    };
    let mut checks = Vec::new();
    for ours in records
        .iter()
        .filter(|r| r.target == "lockd" && r.stage.is_none())
    {
        let (goal, min) = match (ours.mode, ours.connections) {
            ("uncontended", 1) => ("≥ 1.5×", 1.5),
            ("uncontended" | "contended", _) => ("≥ 5×", 5.0),
            _ => continue,
        };
        let Some(theirs) = find(ours.mode, "etcd", ours.connections) else {
            continue;
        };
        checks.push(ratio_check(
            format!(
                "{} {}/s vs etcd, {} conns",
                ours.mode, ours.unit, ours.connections
            ),
            goal,
            Some(ours),
            Some(theirs),
            min,
        ));
    }
    for writes in records
        .iter()
        .filter(|r| r.mode == "reads" && r.stage == Some("write") && r.target == "lockd")
    {
        let reads = records.iter().find(|r| {
            r.mode == "reads"
                && r.stage == Some("read")
                && r.target == "lockd"
                && r.connections == writes.connections
        });
        checks.push(ratio_check(
            format!("reads/s vs writes/s, {} conns", writes.connections),
            "≥ 3×",
            reads,
            Some(writes),
            3.0,
        ));
    }
    checks
}

/// One multi-resource acquire of 3 against 3 single acquires: it should be no slower.
fn multi_checks(records: &[Record]) -> Vec<TargetCheck> {
    let stage = |name: &str| {
        records
            .iter()
            .find(|r| r.mode == "multi" && r.stage == Some(name))
    };
    [
        ("group", "singles", "contended"),
        ("group-own", "singles-own", "own resources"),
    ]
    .into_iter()
    .map(|(group, singles, shape)| {
        let (measured, met) = match (stage(group), stage(singles)) {
            (Some(group), Some(singles)) if singles.ops_per_s > 0.0 => {
                let ratio = group.ops_per_s / singles.ops_per_s;
                (
                    format!(
                        "{ratio:.2}× ({} vs {} sets/s)",
                        thousands(group.ops_per_s.round() as u64),
                        thousands(singles.ops_per_s.round() as u64)
                    ),
                    Some(ratio >= 1.0),
                )
            }
            _ => ("not measured".to_owned(), None),
        };
        TargetCheck {
            what: format!("multi-acquire of 3 vs 3 single acquires, {shape}"),
            goal: "≥ 1×",
            measured,
            met,
        }
    })
    .collect()
}

/// Many writers against one: group commit should multiply writes/s.
fn group_commit_check(records: &[Record]) -> TargetCheck {
    let mut runs: Vec<&Record> = records
        .iter()
        .filter(|r| r.mode == "writes" && r.stage_size().is_some())
        .collect();
    runs.sort_by_key(|r| r.stage_size());
    let (measured, met) = match (runs.first(), runs.last()) {
        (Some(one), Some(many)) if runs.len() > 1 && one.ops_per_s > 0.0 => {
            let ratio = many.ops_per_s / one.ops_per_s;
            (
                format!(
                    "{ratio:.1}× ({} writers {} vs {} writer {} writes/s)",
                    many.stage_size().unwrap_or(0),
                    thousands(many.ops_per_s.round() as u64),
                    one.stage_size().unwrap_or(0),
                    thousands(one.ops_per_s.round() as u64),
                ),
                // The target is stated at 64 writers.
                (many.stage_size() >= Some(64)).then_some(ratio >= 10.0),
            )
        }
        _ => ("not measured".to_owned(), None),
    };
    TargetCheck {
        what: "durable writes/s, many writers vs one".to_owned(),
        goal: "≥ 10× (at 64)",
        measured,
        met,
    }
}

fn scale_checks(records: &[Record]) -> Vec<TargetCheck> {
    let stage = |name: &str| -> Vec<&Record> {
        let mut found: Vec<&Record> = records.iter().filter(|r| r.stage == Some(name)).collect();
        found.sort_by_key(|r| r.stage_size());
        found
    };
    let cost_ratio = |what: &str, runs: &[&Record], goal: &'static str, bounded: bool| {
        let (measured, met) = match (runs.first(), runs.last()) {
            (Some(small), Some(large)) if runs.len() > 1 && large.ops_per_s > 0.0 => {
                // Cost per op is the inverse of the rate, so the cost ratio is small/large rate.
                let ratio = small.ops_per_s / large.ops_per_s;
                (
                    format!(
                        "{ratio:.2}× at {} vs {} ({} vs {} pairs/s)",
                        thousands(large.stage_size().unwrap_or(0)),
                        thousands(small.stage_size().unwrap_or(0)),
                        thousands(large.ops_per_s.round() as u64),
                        thousands(small.ops_per_s.round() as u64),
                    ),
                    bounded.then_some(ratio <= 1.2),
                )
            }
            _ => ("not measured".to_owned(), None),
        };
        TargetCheck {
            what: what.to_owned(),
            goal,
            measured,
            met,
        }
    };
    let held = stage("held_locks");
    let waiters = stage("queued_waiters");
    let idle = stage("idle_connections");
    let mut checks = vec![cost_ratio(
        "per-op cost, many held locks vs 1,000",
        &held,
        "≤ 1.2× (at 1,000,000)",
        true,
    )];
    let largest_held = held
        .last()
        .filter(|r| r.extra_f64("rss_bytes_per_lock").is_some());
    checks.push(TargetCheck {
        what: format!(
            "RSS per held lock{}",
            largest_held
                .and_then(|r| r.stage_size())
                .map_or(String::new(), |n| format!(" at {}", thousands(n)))
        ),
        goal: "≤ 300 B",
        measured: largest_held
            .and_then(|r| r.extra_f64("rss_bytes_per_lock"))
            .map_or("not measured".to_owned(), |b| format!("{} B", b.round())),
        met: largest_held
            .and_then(|r| r.extra_f64("rss_bytes_per_lock"))
            .map(|b| b <= 300.0),
    });
    checks.push(cost_ratio(
        "per-op cost, many queued waiters vs 1,000 (no target)",
        &waiters,
        "-",
        false,
    ));
    let idle = idle.last();
    checks.push(TargetCheck {
        what: "idle connections held".to_owned(),
        goal: "10,000",
        measured: idle.map_or("not measured".to_owned(), |r| {
            format!(
                "{} of {} alive",
                thousands(r.extra_f64("idle_alive").unwrap_or(0.0) as u64),
                thousands(r.extra_f64("idle_connections").unwrap_or(0.0) as u64)
            )
        }),
        met: idle.and_then(|r| {
            let asked = r.extra_f64("idle_connections")?;
            let alive = r.extra_f64("idle_alive")?;
            if alive < asked {
                Some(false)
            } else if asked >= 10_000.0 {
                Some(true)
            } else {
                None
            }
        }),
    });
    checks
}

fn targets_table(checks: &[TargetCheck]) -> String {
    let rows: Vec<Vec<String>> = checks
        .iter()
        .map(|check| {
            vec![
                check.what.clone(),
                check.goal.to_owned(),
                check.measured.clone(),
                match check.met {
                    Some(true) => "met".to_owned(),
                    Some(false) => "NOT met".to_owned(),
                    None => "-".to_owned(),
                },
            ]
        })
        .collect();
    table(&["target", "goal", "measured", "result"], &rows)
}

/// A plain-text table with columns padded to their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, cell) in cells.enumerate() {
            let pad = widths[i].saturating_sub(cell.chars().count());
            text.push_str(cell);
            if i + 1 < widths.len() {
                text.push_str(&" ".repeat(pad + 2));
            }
        }
        text.trim_end().to_owned() + "\n"
    };
    let mut out = line(&mut header.iter().copied());
    out.push_str(&line(
        &mut widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str),
    ));
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A latency for a table cell: one decimal below 100 µs, none above.
fn num(micros: f64) -> String {
    if micros < 100.0 {
        format!("{micros:.1}")
    } else {
        format!("{micros:.0}")
    }
}

/// `value` rounded to `digits` decimals.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn fairness_reports_starved_connections() {
        let even = Fairness::of([10, 11, 10]).expect("three loops");
        assert_eq!(even.max_over_min, Some(1.1));
        let starved = Fairness::of([0, 5]).expect("two loops");
        assert_eq!(starved.max_over_min, None);
        assert!(Fairness::of([]).is_none());
    }

    fn run(
        mode: Mode,
        stage: Option<&'static str>,
        target: Target,
        connections: usize,
        rate: f64,
    ) -> Record {
        let window = Window {
            warmup: std::time::Duration::ZERO,
            duration: std::time::Duration::from_secs(1),
            busy_retries: 0,
        };
        let mut record = Record::single(mode, stage, window);
        record.target = target.name();
        record.connections = connections;
        record.ops_per_s = rate;
        record
    }

    #[test]
    fn cluster_goals_pair_lockd_with_etcd_at_the_same_connections() {
        let records = [
            run(Mode::Uncontended, None, Target::Lockd, 1, 300.0),
            run(Mode::Uncontended, None, Target::Etcd, 1, 150.0),
            run(Mode::Uncontended, None, Target::Lockd, 64, 5000.0),
            run(Mode::Uncontended, None, Target::Etcd, 64, 2000.0),
            run(Mode::Contended, None, Target::Lockd, 16, 300.0),
            run(Mode::Reads, Some("read"), Target::Lockd, 64, 9000.0),
            run(Mode::Reads, Some("write"), Target::Lockd, 64, 3000.0),
        ];
        let checks = cluster_checks(&records);
        let found: Vec<(&str, &str, Option<bool>)> = checks
            .iter()
            .map(|c| (c.what.as_str(), c.goal, c.met))
            .collect();
        assert_eq!(
            found,
            [
                ("uncontended pairs/s vs etcd, 1 conns", "≥ 1.5×", Some(true)),
                ("uncontended pairs/s vs etcd, 64 conns", "≥ 5×", Some(false)),
                ("reads/s vs writes/s, 64 conns", "≥ 3×", Some(true)),
            ]
        );
        assert!(
            checks[0].measured.starts_with("2.00×"),
            "{}",
            checks[0].measured
        );
        // A single-server run (no etcd, no reads) adds nothing.
        assert!(cluster_checks(&records[..1]).is_empty());
    }
}
