//! `--cluster`: a brief run of the cluster loops and of a short failover run against a 3-node
//! lockd cluster that lockbench starts. Like the smoke test, it asserts what lockbench printed
//! (well-formed records with the cluster's fields), never a timing.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::smoke::{lockd_binary, run_to_success};

/// Runs lockbench with `args` against a cluster it starts, and returns its JSON lines.
fn lockbench(args: &[&str]) -> Vec<Value> {
    let lockbench = PathBuf::from(env!("CARGO_BIN_EXE_lockbench"));
    let lockd = lockd_binary(&lockbench);
    let dir = tempfile::tempdir().expect("a temp dir");
    let mut command = Command::new(&lockbench);
    command
        .arg("--lockd-bin")
        .arg(&lockd)
        .arg("--cluster")
        .args(args);
    let stdout = run_to_success(&mut command, dir.path());
    stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect()
}

#[test]
fn the_cluster_loops_run_against_the_leader_and_report_every_nodes_memory() {
    let runs = lockbench(&[
        "--mode",
        "uncontended,contended,reads",
        "--connections",
        "1,3",
        "--duration",
        "0.3",
        "--warmup",
        "0.1",
    ]);
    let mut seen: Vec<String> = Vec::new();
    for run in &runs {
        let name = format!(
            "{}/{}/{}",
            run["mode"].as_str().unwrap_or("?"),
            run["stage"].as_str().unwrap_or(""),
            run["connections"]
        );
        assert!(run["ops"].as_u64().is_some_and(|n| n > 0), "no ops: {run}");
        let rss = run["node_peak_rss_mb"].as_array().expect("per-node RSS");
        assert_eq!(rss.len(), 3, "{run}");
        assert!(
            rss.iter().all(|mb| mb.as_f64().is_some_and(|mb| mb > 0.0)),
            "{run}"
        );
        if run["stage"] == "write" {
            assert!(run["reads_per_write"].as_f64().is_some(), "{run}");
        }
        seen.push(name);
    }
    assert_eq!(
        seen,
        [
            "uncontended//1",
            "contended//1",
            "reads/read/1",
            "reads/write/1",
            "uncontended//3",
            "contended//3",
            "reads/read/3",
            "reads/write/3",
        ]
    );
}

#[test]
fn a_failover_run_kills_the_leader_and_reports_each_kill_and_a_summary() {
    let runs = lockbench(&[
        "--mode",
        "failover",
        "--kills",
        "2",
        "--lockd-arg=--election-timeout-ms=300",
        "--lockd-arg=--heartbeat-ms=90",
    ]);
    assert_eq!(runs.len(), 3, "two kills and the summary: {runs:?}");
    for kill in &runs[..2] {
        assert_eq!(kill["stage"], "kill", "{kill}");
        assert_eq!(kill["election_timeout_ms"], 300, "{kill}");
        assert_ne!(kill["killed_node"], kill["new_leader_node"], "{kill}");
        // Served again only after the kill, and the writer's stall covers it.
        let serves = kill["serves_ms"].as_u64().expect("serves_ms");
        assert!(kill["stall_ms"].as_u64().is_some(), "{kill}");
        assert!(
            kill["leader_ms"]
                .as_u64()
                .is_some_and(|ms| ms <= serves + 1000),
            "{kill}"
        );
        assert_eq!(
            kill["writer_new_session"], false,
            "the session resumed: {kill}"
        );
    }
    let summary = &runs[2];
    assert_eq!(summary["stage"], "summary");
    assert_eq!(summary["kills"], 2);
    assert!(
        summary["stall_ms"]["median"].as_f64().is_some(),
        "{summary}"
    );
    assert!(
        summary["serves_per_election_timeout"]["worst"]
            .as_f64()
            .is_some(),
        "{summary}"
    );
}
