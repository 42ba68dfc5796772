//! A seconds-long run of every lockd mode (the durable `writes` mode and `multi` too) against a
//! lockd that lockbench starts itself.
//!
//! It asserts only that lockbench exits 0 and prints well-formed JSON lines with positive counts:
//! timings on a shared CI machine prove nothing, so there are no timing assertions here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the whole smoke run may take before the test fails instead of hanging.
const PATIENCE: Duration = Duration::from_secs(180);

/// The `lockd` binary next to lockbench's. Cargo builds it only when something needs it, such
/// as lockd's own integration tests in `cargo nextest run --workspace`.
pub(crate) fn lockd_binary(lockbench: &Path) -> PathBuf {
    let lockd = lockbench.with_file_name("lockd");
    assert!(
        lockd.is_file(),
        "no lockd binary at {}: lockbench's smoke test needs it next to lockbench. Run the whole \
         workspace (`cargo nextest run --workspace`, which builds it for lockd's own tests) or \
         `cargo build --bin lockd` first.",
        lockd.display()
    );
    lockd
}

/// Runs `command` (lockbench) with its output in files under `dir`, fails the test if it takes
/// over [`PATIENCE`] or exits unsuccessfully, and returns its stdout.
pub(crate) fn run_to_success(command: &mut Command, dir: &Path) -> String {
    let stdout_path = dir.join("stdout");
    let stderr_path = dir.join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("lockbench starts");
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            break status;
        }
        if started.elapsed() > PATIENCE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "lockbench did not finish within {PATIENCE:?}; stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::fs::read_to_string(&stdout_path).expect("stdout is UTF-8");
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(
        status.success(),
        "lockbench failed with {status}; stderr:\n{stderr}\nstdout:\n{stdout}"
    );
    stdout
}

#[test]
fn every_mode_runs_briefly_and_prints_json_lines() {
    let lockbench = PathBuf::from(env!("CARGO_BIN_EXE_lockbench"));
    let lockd = lockd_binary(&lockbench);
    let dir = tempfile::tempdir().expect("a temp dir");
    let json_out = dir.path().join("results.jsonl");
    let svg = dir.path().join("chart.svg");
    let mut command = Command::new(&lockbench);
    command
        .arg("--lockd-bin")
        .arg(&lockd)
        .args([
            "--mode",
            "all",
            "--duration",
            "0.3",
            "--warmup",
            "0.1",
            "--connections",
            "4",
            "--scale-locks",
            "1000",
            "--scale-waiters",
            "50",
            "--idle-connections",
            "50",
            "--compare-echo",
        ])
        .arg("--json-out")
        .arg(&json_out)
        .arg("--svg")
        .arg(&svg);
    let stdout = run_to_success(&mut command, dir.path());

    let json_lines: Vec<&str> = stdout.lines().filter(|l| l.starts_with('{')).collect();
    let mut seen = BTreeSet::new();
    for line in &json_lines {
        let run: Value =
            serde_json::from_str(line).unwrap_or_else(|err| panic!("not JSON ({err}): {line}"));
        let mode = run["mode"]
            .as_str()
            .unwrap_or_else(|| panic!("no mode: {line}"));
        let target = run["target"]
            .as_str()
            .unwrap_or_else(|| panic!("no target: {line}"));
        let stage = run["stage"].as_str().unwrap_or("");
        assert!(run["ops"].as_u64().is_some_and(|n| n > 0), "no ops: {line}");
        assert!(
            run["ops_per_s"].as_f64().is_some_and(|n| n > 0.0),
            "no rate: {line}"
        );
        if mode == "writes" {
            // One writer, then --connections writers, each with a connection of its own.
            let writers = run["writers"].as_u64();
            assert!(matches!(writers, Some(1 | 4)), "{line}");
            assert_eq!(run["connections"].as_u64(), writers, "{line}");
            // lockbench read the commits from the /metrics of the lockd it started.
            assert!(run["commits"].as_u64().is_some_and(|n| n > 0), "{line}");
        } else {
            assert_eq!(run["connections"].as_u64(), Some(4), "{line}");
        }
        assert!(
            run["latency_us"]["acquire"]["count"]
                .as_u64()
                .is_some_and(|n| n > 0),
            "no acquire latencies: {line}"
        );
        let writers = match run["writers"].as_u64() {
            Some(n) if mode == "writes" => format!("={n}"),
            _ => String::new(),
        };
        seen.insert(format!("{mode}/{stage}{writers}/{target}"));
        if mode == "semaphore" {
            assert_eq!(run["limit"].as_u64(), Some(4), "{line}");
        }
        if mode == "multi" {
            assert_eq!(run["members"].as_u64(), Some(3), "{line}");
        }
        if mode == "contended" || mode == "semaphore" {
            assert!(run["fairness"]["min"].as_u64().is_some(), "{line}");
            assert!(
                run["latency_us"]["handoff"]["count"].as_u64().is_some(),
                "{line}"
            );
        }
        if stage == "held_locks" {
            assert_eq!(run["held"].as_u64(), Some(1000), "{line}");
            // lockbench started lockd itself, so it can read lockd's memory.
            assert!(run["rss_after_bytes"].as_u64().is_some(), "{line}");
        }
        if stage == "queued_waiters" {
            assert_eq!(run["positions_in_order"], Value::Bool(true), "{line}");
        }
        if stage == "idle_connections" {
            assert_eq!(run["idle_alive"].as_u64(), Some(50), "{line}");
        }
    }
    let expected: BTreeSet<String> = [
        "uncontended//lockd",
        "uncontended//echo",
        "contended//lockd",
        "semaphore//lockd",
        "shared//lockd",
        "scale/held_locks/lockd",
        "scale/queued_waiters/lockd",
        "scale/idle_connections/lockd",
        "writes/writers=1/lockd",
        "writes/writers=4/lockd",
        "multi/group/lockd",
        "multi/singles/lockd",
        "multi/group-own/lockd",
        "multi/singles-own/lockd",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(seen, expected, "stdout:\n{stdout}");
    assert_eq!(
        json_lines.len(),
        expected.len(),
        "one line per run:\n{stdout}"
    );

    // --json-out holds the same lines; the table and the chart are there.
    let saved = std::fs::read_to_string(&json_out).expect("--json-out written");
    assert_eq!(saved.lines().collect::<Vec<_>>(), json_lines);
    assert!(stdout.contains("\ntarget "), "no targets table:\n{stdout}");
    let chart = std::fs::read_to_string(&svg).expect("--svg written");
    assert!(
        chart.starts_with("<svg"),
        "not an SVG: {}",
        &chart[..chart.len().min(100)]
    );
}

#[test]
fn lockd_args_reach_the_lockd_lockbench_starts_and_every_json_line() {
    let lockbench = PathBuf::from(env!("CARGO_BIN_EXE_lockbench"));
    let lockd = lockd_binary(&lockbench);
    let run = |lockd_arg: &str| {
        Command::new(&lockbench)
            .arg("--lockd-bin")
            .arg(&lockd)
            .args([
                "--mode",
                "uncontended",
                "--duration",
                "0.2",
                "--warmup",
                "0.1",
                "--connections",
                "2",
            ])
            .arg(format!("--lockd-arg={lockd_arg}"))
            .stdin(Stdio::null())
            .output()
            .expect("lockbench runs")
    };
    let output = run("--worker-threads=1");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let lines: Vec<Value> = stdout
        .lines()
        .filter(|line| line.starts_with('{'))
        .map(|line| serde_json::from_str(line).expect("JSON"))
        .collect();
    assert!(!lines.is_empty(), "{stdout}");
    for line in lines {
        assert_eq!(
            line["lockd_args"],
            serde_json::json!(["--worker-threads=1"])
        );
    }

    // lockd refuses a flag it does not know, and lockbench shows why.
    let output = run("--no-such-flag");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--no-such-flag"), "{stderr}");
}
