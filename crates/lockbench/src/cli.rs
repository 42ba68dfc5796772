//! The command line, as clap derive types, and the checks clap cannot express.
//!
//! Kept apart from `main.rs` so that the flags and their documentation read as one list; the
//! values are checked and turned into [`Mode`]s and durations here and nowhere else, and
//! `main.rs` builds the [`crate::bench::Bench`] from them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};

use crate::bench::Mode;

/// lockbench: drives lockd over its real protocol and prints a table and one JSON line per run.
///
/// Without --server it starts its own lockd (the binary next to lockbench's own executable, or
/// --lockd-bin) on 127.0.0.1:0 with a temporary data directory, which also lets it read lockd's
/// memory (RSS) and CPU time. --compare-redis and --compare-echo run the same loops against
/// Redis and a built-in echo server in the same run, so the ratios share one machine state.
/// A flag given twice takes its last value, so scripts can append overrides.
///
/// --cluster starts a 3-node lockd cluster instead (or --server A,B,C names a running one), and
/// every client talks to its leader; --compare-etcd runs the same loops against etcd's lock
/// service (needs the `etcd` build feature). --mode failover kills the leader of a --cluster
/// again and again and measures how long writes stall. scripts/bench-cluster.sh and
/// scripts/failover.sh run both.
#[derive(Debug, Parser)]
#[command(version, about, args_override_self = true)]
pub struct Args {
    /// Address of a running lockd, or every node of a running cluster (`A,B,C`: the clients
    /// talk to whichever serves). Without it, lockbench starts its own.
    #[arg(long, value_name = "ADDR[,ADDR...]")]
    pub server: Option<String>,

    /// Start a 3-node lockd cluster on loopback (temporary data directories, free ports, node
    /// 1 bootstraps) instead of one lockd, and run against its leader. --lockd-arg flags go to
    /// every node, e.g. `--lockd-arg=--election-timeout-ms=1000`.
    #[arg(long, conflicts_with = "server")]
    pub cluster: bool,

    /// Also run the uncontended, contended and reads loops against etcd's lock service at
    /// these client endpoints (`host:port`, comma-separated; the leader is found and used).
    #[arg(long, value_name = "ADDR[,ADDR...]", value_delimiter = ',')]
    pub compare_etcd: Vec<String>,

    /// The pids of the --compare-etcd members (comma-separated, all three), to report their CPU
    /// time and memory next to lockd's.
    #[arg(
        long,
        value_name = "PID,PID,PID",
        value_delimiter = ',',
        requires = "compare_etcd"
    )]
    pub etcd_pids: Vec<u32>,

    /// Print the medians of the JSON lines in FILE (several rounds of lockbench runs, as
    /// scripts/bench-cluster.sh writes them) as a markdown table, and exit: runs nothing.
    #[arg(long, value_name = "FILE")]
    pub summarize: Option<PathBuf>,

    /// Leader kills in `--mode failover`.
    #[arg(long, value_name = "N", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub kills: u32,

    /// The lockd binary to start when --server is absent [default: `lockd` next to lockbench].
    #[arg(long, value_name = "PATH")]
    pub lockd_bin: Option<PathBuf>,

    /// One more flag for the lockd that lockbench starts, e.g. `--lockd-arg=--worker-threads=1`;
    /// repeat for more. Every JSON line records them.
    #[arg(
        long,
        value_name = "ARG",
        allow_hyphen_values = true,
        conflicts_with = "server"
    )]
    pub lockd_arg: Vec<String>,

    /// Which benchmarks to run, comma-separated (e.g. `uncontended,contended`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "all")]
    pub mode: Vec<ModeChoice>,

    /// Client connections per run [default: 16 for contended, 64 for the other modes]. A
    /// comma-separated list (`1,64`) runs every mode once per count, in the same run.
    #[arg(long, value_name = "C[,C...]", value_delimiter = ',',
          value_parser = clap::value_parser!(u64).range(1..=20_000))]
    pub connections: Vec<u64>,

    /// Seconds measured per run, after the warm-up (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    pub duration: f64,

    /// Seconds of warm-up before each measured window (fractions allowed).
    #[arg(long, value_name = "SECS", default_value_t = 1.0)]
    pub warmup: f64,

    /// Also run the uncontended and contended loops against this Redis server.
    #[arg(long, value_name = "ADDR")]
    pub compare_redis: Option<String>,

    /// The pid of the --compare-redis server, to report its CPU use next to lockd's.
    #[arg(long, value_name = "PID", requires = "compare_redis")]
    pub redis_pid: Option<u32>,

    /// Also run the uncontended loop against a built-in newline echo server (the loopback
    /// limit: what the same loop costs with a server that does no work at all).
    #[arg(long)]
    pub compare_echo: bool,

    /// Also write the JSON lines to this file (replaced, not appended to).
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,

    /// Draw a chart of the runs into this SVG file.
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,

    /// Locks held in the large `scale` run (the small run holds 1,000).
    #[arg(long, value_name = "N", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub scale_locks: u64,

    /// Waiters queued on one resource in the large `scale` waiters run (the small run queues
    /// 1,000). Each waiter is its own connection, so this is bounded by file descriptors.
    #[arg(long, value_name = "N", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub scale_waiters: u64,

    /// Idle connections held open during the `scale` idle-connections run.
    #[arg(long, value_name = "N", default_value_t = 2_000,
          value_parser = clap::value_parser!(u64).range(0..=100_000))]
    pub idle_connections: u64,

    /// Client runtime threads: 1 runs every connection on one current-thread runtime (the
    /// default, see main.rs for why); more uses a multi-thread runtime with that many workers.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=64))]
    pub client_threads: u64,

    /// Measure a run's window again, up to this many times, when other processes used more than
    /// a quarter of a core during it (the run's CPU line shows how much).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub busy_retries: u32,

    /// How long a Redis client waits before retrying a lock it did not get (contended loop).
    #[arg(long, value_name = "MS", default_value_t = 1)]
    pub redis_retry_ms: u64,
}

/// `--mode`: one benchmark, or all of them in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModeChoice {
    /// Each connection locks and unlocks its own resource.
    Uncontended,
    /// All connections on one resource.
    Contended,
    /// All connections on one semaphore of 4 permits, one permit each.
    Semaphore,
    /// Readers and one writer on one resource.
    Shared,
    /// Many held locks, many waiters, many idle connections.
    Scale,
    /// One writer, then --connections writers, each doing acquire / durable write / release.
    Writes,
    /// Sets of 3 locks: one multi-resource acquire against 3 single acquires, contended and not.
    Multi,
    /// Release-to-watcher delay with 1, then --connections (1,000) watchers of one resource,
    /// and lockd's memory per watch. Not part of `all`.
    Watch,
    /// Every mode above, in that order.
    All,
    /// Reads/s against writes/s, each connection on a lock it holds (not part of `all`).
    Reads,
    /// Leader kills in a --cluster, with one writer (not part of `all`).
    Failover,
}

impl ModeChoice {
    /// The modes this choice runs, in order.
    pub fn modes(self) -> Vec<Mode> {
        match self {
            ModeChoice::Uncontended => vec![Mode::Uncontended],
            ModeChoice::Contended => vec![Mode::Contended],
            ModeChoice::Semaphore => vec![Mode::Semaphore],
            ModeChoice::Shared => vec![Mode::Shared],
            ModeChoice::Scale => vec![Mode::Scale],
            ModeChoice::Writes => vec![Mode::Writes],
            ModeChoice::Multi => vec![Mode::Multi],
            ModeChoice::Watch => vec![Mode::Watch],
            ModeChoice::All => Mode::ALL.to_vec(),
            ModeChoice::Reads => vec![Mode::Reads],
            ModeChoice::Failover => vec![Mode::Failover],
        }
    }
}

impl Args {
    /// The modes asked for, in the order given, each once.
    pub fn modes(&self) -> Vec<Mode> {
        let mut modes = Vec::new();
        for mode in self.mode.iter().flat_map(|choice| choice.modes()) {
            if !modes.contains(&mode) {
                modes.push(mode);
            }
        }
        modes
    }

    /// The connection counts to run each mode at; `[None]` (each mode's default) when not given.
    pub fn connection_counts(&self) -> Vec<Option<usize>> {
        if self.connections.is_empty() {
            return vec![None];
        }
        self.connections.iter().map(|&c| Some(c as usize)).collect()
    }

    /// The addresses in `--server`, comma-separated.
    pub fn server_addrs(&self) -> Vec<String> {
        self.server
            .as_deref()
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|addr| !addr.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Checks what clap cannot: a failover run needs a cluster of lockbench's own, and etcd's
    /// pids come three at a time.
    pub fn check(&self) -> Result<()> {
        if self.modes().contains(&Mode::Failover) && !self.cluster {
            bail!("--mode failover kills and restarts the leader, so it needs --cluster");
        }
        if !self.etcd_pids.is_empty() && self.etcd_pids.len() != 3 {
            bail!(
                "--etcd-pids takes the three members' pids, not {}",
                self.etcd_pids.len()
            );
        }
        if self.server.is_some() && self.server_addrs().is_empty() {
            bail!("--server needs at least one address");
        }
        Ok(())
    }

    /// The measured window of each run.
    pub fn duration(&self) -> Result<Duration> {
        seconds("--duration", self.duration, false)
    }

    /// The warm-up before each measured window.
    pub fn warmup(&self) -> Result<Duration> {
        seconds("--warmup", self.warmup, true)
    }
}

fn seconds(flag: &str, value: f64, zero_ok: bool) -> Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!zero_ok && value == 0.0) || value > 86_400.0 {
        bail!("{flag} must be a number of seconds above 0 and at most 86400, not {value}");
    }
    Ok(Duration::from_secs_f64(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(std::iter::once("lockbench").chain(args.iter().copied()))
    }

    #[test]
    fn a_server_list_is_split_on_commas() {
        let args = parse(&["--server", "127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3"]).expect("parses");
        assert_eq!(
            args.server_addrs(),
            ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]
        );
        args.check().expect("valid");
        assert!(parse(&["--server", ","]).expect("parses").check().is_err());
    }

    #[test]
    fn cluster_and_server_exclude_each_other() {
        assert!(parse(&["--cluster", "--server", "127.0.0.1:1"]).is_err());
        assert!(parse(&["--cluster"]).expect("parses").cluster);
    }

    #[test]
    fn connection_lists_run_each_count() {
        let args = parse(&["--connections", "1,64"]).expect("parses");
        assert_eq!(args.connection_counts(), [Some(1), Some(64)]);
        assert_eq!(parse(&[]).expect("parses").connection_counts(), [None]);
        assert!(parse(&["--connections", "0"]).is_err());
    }

    #[test]
    fn failover_needs_a_cluster_of_our_own() {
        let args = parse(&["--mode", "failover"]).expect("parses");
        assert!(args.check().is_err());
        let args = parse(&["--mode", "failover", "--cluster", "--kills", "3"]).expect("parses");
        args.check().expect("valid");
        assert_eq!(args.modes(), [Mode::Failover]);
        assert_eq!(args.kills, 3);
    }

    #[test]
    fn etcd_endpoints_and_pids() {
        let args = parse(&[
            "--compare-etcd",
            "127.0.0.1:2379,127.0.0.1:2381",
            "--etcd-pids",
            "1,2,3",
        ])
        .expect("parses");
        assert_eq!(args.compare_etcd.len(), 2);
        assert_eq!(args.etcd_pids, [1, 2, 3]);
        args.check().expect("valid");
        assert!(
            parse(&["--etcd-pids", "1,2,3"]).is_err(),
            "pids need endpoints"
        );
        let args = parse(&["--compare-etcd", "e:1", "--etcd-pids", "1,2"]).expect("parses");
        assert!(args.check().is_err());
    }

    #[test]
    fn reads_and_failover_are_not_part_of_all() {
        let args = parse(&["--mode", "all"]).expect("parses");
        assert!(!args.modes().contains(&Mode::Reads));
        assert!(!args.modes().contains(&Mode::Failover));
    }
}
