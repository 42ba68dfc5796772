//! `--summarize FILE`: the median of several rounds of JSON lines, as the markdown table that
//! docs/benchmarks.md shows for the cluster (lockd against etcd, with ratios).
//!
//! The machine this runs on is shared and noisy (±25% between runs), so scripts/bench-cluster.sh
//! runs every loop several times; a run's figure is the median of its rounds, with the lowest
//! and highest next to it so that the spread is visible, and the ratio is of the medians.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;

/// One loop's results over the rounds: what it measured and each round's figure.
#[derive(Debug, Default)]
struct Runs {
    rates: Vec<f64>,
    /// The largest peak RSS of any node in any round, in MB.
    peak_rss_mb: Option<f64>,
    /// Reads per write (the `reads` mode's write stage), per round.
    reads_per_write: Vec<f64>,
}

/// A loop: mode, stage, connections; then the target.
type Key = (String, String, u64);

/// The markdown table of the medians in `jsonl` (lockbench's JSON lines, several rounds).
pub fn summarize(jsonl: &str) -> Result<String> {
    let mut runs: BTreeMap<Key, BTreeMap<String, Runs>> = BTreeMap::new();
    let mut failovers = Vec::new();
    for (number, line) in jsonl.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(line)
            .with_context(|| format!("line {} is not a JSON record", number + 1))?;
        let text = |field: &str| record[field].as_str().unwrap_or_default().to_owned();
        if text("mode") == "failover" {
            if text("stage") == "summary" {
                failovers.push(record);
            }
            continue;
        }
        let key = (
            text("mode"),
            text("stage"),
            record["connections"].as_u64().unwrap_or(0),
        );
        let entry = runs
            .entry(key)
            .or_default()
            .entry(text("target"))
            .or_default();
        entry
            .rates
            .push(record["ops_per_s"].as_f64().unwrap_or(0.0));
        if let Some(peak) = record["node_peak_rss_mb"]
            .as_array()
            .and_then(|nodes| nodes.iter().filter_map(Value::as_f64).reduce(f64::max))
        {
            entry.peak_rss_mb = Some(entry.peak_rss_mb.map_or(peak, |p: f64| p.max(peak)));
        }
        if let Some(ratio) = record["reads_per_write"].as_f64() {
            entry.reads_per_write.push(ratio);
        }
    }

    let mut out = String::new();
    if !runs.is_empty() {
        out.push_str(&loops_table(&runs));
    }
    for failover in &failovers {
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(&failover_table(failover));
    }
    Ok(out)
}

/// The loops' medians, lockd next to etcd.
fn loops_table(runs: &BTreeMap<Key, BTreeMap<String, Runs>>) -> String {
    let mut out = String::new();
    let targets = ["lockd", "etcd"];
    out.push_str("| load | lockd 3 nodes | etcd 3 nodes | lockd / etcd |\n");
    out.push_str("|---|---|---|---|\n");
    let mut peak: BTreeMap<&str, f64> = BTreeMap::new();
    let mut read_ratio: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rounds = 0;
    // The issue's order: the uncontended loops, the contended one, then reads and writes.
    let rank = |mode: &str| match mode {
        "uncontended" => 0,
        "contended" => 1,
        "reads" => 2,
        _ => 3,
    };
    let mut keys: Vec<&Key> = runs.keys().collect();
    keys.sort_by_key(|(mode, stage, connections)| (rank(mode), *connections, stage.clone()));
    for key in keys {
        let (mode, stage, connections) = key;
        let by_target = &runs[key];
        let cells: Vec<Option<&Runs>> = targets.iter().map(|t| by_target.get(*t)).collect();
        let medians: Vec<Option<f64>> = cells
            .iter()
            .map(|runs| runs.and_then(|r| median(&r.rates)))
            .collect();
        let ratio = match (medians[0], medians[1]) {
            (Some(ours), Some(theirs)) if theirs > 0.0 => format!("{:.2}×", ours / theirs),
            _ => "-".to_owned(),
        };
        let cell = |runs: Option<&Runs>, median: Option<f64>| match (runs, median) {
            (Some(runs), Some(median)) => format!("{}{}", whole(median), spread(&runs.rates)),
            _ => "-".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {ratio} |",
            load(mode, stage, *connections),
            cell(cells[0], medians[0]),
            cell(cells[1], medians[1]),
        );
        for (target, runs) in targets.iter().zip(&cells) {
            let Some(runs) = runs else { continue };
            rounds = rounds.max(runs.rates.len());
            if let Some(p) = runs.peak_rss_mb {
                let slot = peak.entry(target).or_insert(p);
                *slot = slot.max(p);
            }
            read_ratio
                .entry(target)
                .or_default()
                .extend(&runs.reads_per_write);
        }
    }
    let per_target = |values: &BTreeMap<&str, f64>, unit: &str| {
        targets
            .iter()
            .map(|t| {
                values
                    .get(t)
                    .map_or("-".to_owned(), |v| format!("{v:.0}{unit}"))
            })
            .collect::<Vec<_>>()
    };
    if read_ratio.values().any(|ratios| !ratios.is_empty()) {
        let ratios: BTreeMap<&str, f64> = read_ratio
            .iter()
            .filter_map(|(t, ratios)| Some((*t, median(ratios)?)))
            .collect();
        let cells: Vec<String> = targets
            .iter()
            .map(|t| ratios.get(t).map_or("-".to_owned(), |r| format!("{r:.2}")))
            .collect();
        let _ = writeln!(
            out,
            "| reads/s ÷ writes/s, 64 clients | {} | {} | |",
            cells[0], cells[1]
        );
    }
    if !peak.is_empty() {
        let cells = per_target(&peak, " MB");
        let _ = writeln!(
            out,
            "| peak RSS of the largest node | {} | {} | |",
            cells[0], cells[1]
        );
    }
    let _ = writeln!(
        out,
        "\nMedian of {rounds} rounds (lowest–highest in brackets); the ratio is of the medians."
    );
    out
}

/// The failover summary record as a table: median and worst of each measure.
fn failover_table(record: &Value) -> String {
    let mut out = String::new();
    let timeout = record["election_timeout_ms"].as_u64().unwrap_or(0);
    let _ = writeln!(
        out,
        "Failover, {} leader kills, --election-timeout-ms {timeout}:\n",
        record["kills"]
    );
    out.push_str(
        "| from the SIGKILL to | median ms | worst ms | median ÷ timeout | worst ÷ timeout |\n",
    );
    out.push_str("|---|---|---|---|---|\n");
    let rows = [
        ("a survivor's log says it is leader", "leader_ms"),
        ("a survivor answers cluster_status as leader", "status_ms"),
        (
            "the new leader commits a probe hello (serves a write)",
            "serves_ms",
        ),
        ("the writer's connection breaks", "writer_detect_ms"),
        ("the writer's session is resumed", "writer_resumed_ms"),
        ("the writer's write is acknowledged", "writer_write_ms"),
        (
            "writer stall (last write before to first after)",
            "stall_ms",
        ),
    ];
    for (what, field) in rows {
        let median = record[field]["median"].as_f64();
        let worst = record[field]["worst"].as_f64();
        let of = |v: Option<f64>| {
            v.filter(|_| timeout > 0)
                .map_or("-".to_owned(), |v| format!("{:.2}", v / timeout as f64))
        };
        let ms = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.0}"));
        let _ = writeln!(
            out,
            "| {what} | {} | {} | {} | {} |",
            ms(median),
            ms(worst),
            of(median),
            of(worst)
        );
    }
    if let (Some(median), Some(worst)) = (
        record["elections"]["median"].as_f64(),
        record["elections"]["worst"].as_f64(),
    ) {
        let _ = writeln!(
            out,
            "\nElections per kill (terms from the old leader's to the new one's): median \
             {median}, worst {worst}."
        );
    }
    out
}

/// A loop's name in the table.
fn load(mode: &str, stage: &str, connections: u64) -> String {
    let clients = if connections == 1 {
        "1 client".to_owned()
    } else {
        format!("{connections} clients")
    };
    match (mode, stage) {
        ("uncontended", _) => format!("{clients}, lock+unlock pairs/s"),
        ("contended", _) => format!("{clients} on one lock, grants/s"),
        ("reads", "read") => format!("{clients}, reads/s (own held lock)"),
        ("reads", "write") => format!("{clients}, writes/s (own held lock)"),
        (mode, "") => format!("{mode}, {clients}, ops/s"),
        (mode, stage) => format!("{mode} {stage}, {clients}, ops/s"),
    }
}

/// The median of `values` (the mean of the middle two for an even count).
fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    Some(if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    })
}

/// ` (low–high)` when there was more than one round.
fn spread(values: &[f64]) -> String {
    if values.len() < 2 {
        return String::new();
    }
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!(" ({}–{})", whole(low), whole(high))
}

/// A rate rounded to a whole number, with thousands separators.
fn whole(value: f64) -> String {
    crate::report::thousands(value.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios_over_rounds() {
        let lines = [
            r#"{"mode":"uncontended","target":"lockd","connections":1,"ops_per_s":300.0,"node_peak_rss_mb":[30.0,31.5,29.0]}"#,
            r#"{"mode":"uncontended","target":"etcd","connections":1,"ops_per_s":450.0,"node_peak_rss_mb":[120.0,150.0,130.0]}"#,
            r#"{"mode":"uncontended","target":"lockd","connections":1,"ops_per_s":280.0,"node_peak_rss_mb":[39.0,null,30.0]}"#,
            r#"{"mode":"uncontended","target":"etcd","connections":1,"ops_per_s":460.0}"#,
            r#"{"mode":"uncontended","target":"lockd","connections":1,"ops_per_s":310.0}"#,
            r#"{"mode":"uncontended","target":"etcd","connections":1,"ops_per_s":470.0}"#,
            r#"{"mode":"reads","stage":"write","target":"lockd","connections":64,"ops_per_s":1000.0,"reads_per_write":1.1}"#,
            r#"{"mode":"contended","target":"lockd","connections":16,"ops_per_s":400.0}"#,
        ]
        .join("\n");
        let table = summarize(&lines).expect("summarizes");
        assert!(
            table.contains(
                "| 1 client, lock+unlock pairs/s | 300 (280–310) | 460 (450–470) | 0.65× |"
            ),
            "{table}"
        );
        assert!(
            table.contains("| 16 clients on one lock, grants/s | 400 | - | - |"),
            "{table}"
        );
        assert!(
            table.contains("| reads/s ÷ writes/s, 64 clients | 1.10 | - | |"),
            "{table}"
        );
        assert!(
            table.contains("| peak RSS of the largest node | 39 MB | 150 MB | |"),
            "{table}"
        );
        assert!(table.contains("Median of 3 rounds"), "{table}");
        // The issue's order, whatever the order of the lines.
        let row = |text: &str| table.find(text).expect(text);
        assert!(
            row("| 1 client, lock") < row("| 16 clients on one lock"),
            "{table}"
        );
        assert!(
            row("| 16 clients on one lock") < row("| 64 clients, writes/s"),
            "{table}"
        );
    }

    #[test]
    fn failover_summaries_become_tables() {
        let line = r#"{"mode":"failover","stage":"summary","kills":20,"election_timeout_ms":1000,"serves_ms":{"median":3300,"worst":4100},"stall_ms":{"median":5200.0,"worst":7600}}"#;
        let table = summarize(line).expect("summarizes");
        assert!(table.contains("Failover, 20 leader kills"), "{table}");
        assert!(
            table.contains(
                "| the new leader commits a probe hello (serves a write) | 3300 | 4100 | 3.30 | 4.10 |"
            ),
            "{table}"
        );
        assert!(
            table.contains(
                "| writer stall (last write before to first after) | 5200 | 7600 | 5.20 | 7.60 |"
            ),
            "{table}"
        );
    }

    #[test]
    fn a_bad_line_is_an_error_naming_it() {
        let err = summarize("{}\nnot json").expect_err("fails");
        assert!(format!("{err:#}").contains("line 2"), "{err:#}");
    }

    #[test]
    fn even_medians_average_the_middle_two() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
