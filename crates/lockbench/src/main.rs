//! lockbench: the benchmark of lockd, over its real protocol, next to Redis and an echo server.
//!
//! It starts (or connects to) lockd, runs the modes asked for, prints one JSON line per run as
//! it ends, and finishes with a table of the runs and of the targets from the benchmark issue.
//! See docs/benchmarks.md for the figures and scripts/bench.sh for the full suite.
//!
//! Runtime: by default every client connection is a task on one current-thread Tokio runtime.
//! The benchmark runs on the same two cores as the server, so the client must cost as little as
//! possible per operation: one thread has no cross-thread wake-ups or work stealing, and uses at
//! most one core, which leaves the other to the server. It is not neutral, though: it gives the
//! single-threaded servers (Redis, the echo server) their best numbers, while lockd, whose
//! requests cross three tasks on its multi-thread runtime, does as well or better against a
//! two-thread client. `--client-threads 2` switches to a multi-thread runtime, and scripts/bench.sh runs
//! the comparisons both ways (docs/benchmarks.md has both).

mod bench;
mod chart;
mod cli;
mod clients;
mod lockd_cluster;
mod lockd_metrics;
mod lockd_process;
mod measure;
mod modes;
mod report;
mod summary;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use clap::Parser;

use crate::bench::{Bench, ScaleSizes};
use crate::cli::Args;
use crate::clients::echo::EchoServer;
use crate::clients::redis::RedisTarget;
use crate::lockd_cluster::LockdCluster;
use crate::lockd_process::LockdProcess;
use crate::measure::Window;
use crate::report::Report;

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("lockbench: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> Result<()> {
    if let Some(path) = &args.summarize {
        let jsonl = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        print!("{}", summary::summarize(&jsonl)?);
        return Ok(());
    }
    args.check()?;
    let window = Window {
        warmup: args.warmup()?,
        duration: args.duration()?,
        busy_retries: args.busy_retries,
    };
    // Before lockd starts, so that a lockd started here inherits the raised limit too.
    let fd_limit = raise_open_file_limit();
    let binary = || match &args.lockd_bin {
        Some(path) => Ok(path.clone()),
        None => LockdProcess::default_binary(),
    };
    let lockd = match (&args.server, args.cluster) {
        (None, false) => Some(LockdProcess::start(&binary()?, &args.lockd_arg)?),
        _ => None,
    };
    let cluster = if args.cluster {
        Some(LockdCluster::start(&binary()?, &args.lockd_arg)?)
    } else {
        None
    };
    // Every address clients may use: the cluster's nodes, or those given with --server.
    let addrs: Vec<SocketAddr> = match (&lockd, &cluster) {
        (Some(lockd), _) => vec![lockd.addr()],
        (None, Some(cluster)) => cluster.client_addrs(),
        (None, None) => args
            .server_addrs()
            .iter()
            .map(|server| resolve(server))
            .collect::<Result<_>>()?,
    };
    let echo = args.compare_echo.then(EchoServer::start).transpose()?;
    let runtime = client_runtime(args.client_threads)?;
    let mut report = Report::new(
        args.json_out.as_deref(),
        args.client_threads,
        args.lockd_arg.clone(),
    )?;
    let result = runtime.block_on(async {
        // With several addresses (a cluster), every client goes to the one that serves.
        let lockd_addr = if addrs.len() > 1 {
            clients::cluster::find_leader(&addrs, LEADER_PATIENCE)
                .await
                .context("waiting for the cluster's leader")?
        } else {
            addrs[0]
        };
        let redis = match &args.compare_redis {
            Some(addr) => Some(RedisTarget::connect(addr).await?),
            None => None,
        };
        let mut bench = Bench::new(
            window,
            None,
            lockd_addr,
            lockd,
            redis,
            args.redis_pid,
            echo,
            Duration::from_millis(args.redis_retry_ms),
            ScaleSizes {
                locks: args.scale_locks,
                waiters: args.scale_waiters,
                idle_connections: args.idle_connections,
            },
            fd_limit,
        );
        bench.cluster = cluster;
        bench.cluster_addrs = addrs.clone();
        bench.kills = args.kills;
        bench.lockd_args = args.lockd_arg.clone();
        bench.etcd_pids = args.etcd_pids.clone();
        connect_etcd(&mut bench, &args.compare_etcd).await?;
        if bench.cluster.is_some() {
            eprintln!(
                "lockbench: started a 3-node lockd cluster at {}",
                clients::cluster::comma_list(&addrs)
            );
        }
        eprintln!(
            "lockbench: lockd at {lockd_addr}{}; warm-up {:?}, window {:?} per run",
            bench.lockd_pid().map_or(String::new(), |pid| format!(
                " (pid {pid}, started by lockbench)"
            )),
            window.warmup,
            window.duration
        );
        for connections in args.connection_counts() {
            bench.connections = connections;
            for mode in args.modes() {
                let ran = modes::run(mode, &mut bench, &mut report).await;
                if let (Err(_), Some(cluster)) = (&ran, &bench.cluster) {
                    // The nodes' logs go with their temporary directory: show why they failed.
                    eprint!("{}", cluster.log_tails(LOG_TAIL_LINES));
                }
                ran.with_context(|| format!("{} run failed", mode.name()))?;
            }
        }
        anyhow::Ok(bench)
    });
    // The runtime ends before the servers do, so no client task outlives them.
    drop(runtime);
    let bench = result?;
    println!();
    print!("{}", report.render());
    if let Some(path) = &args.svg {
        let title = format!(
            "lockbench on {} ({} cores)",
            cpu_model().unwrap_or_else(|| "this machine".to_owned()),
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        chart::write_svg(report.records(), &title, path)?;
        eprintln!("lockbench: chart written to {}", path.display());
    }
    drop(bench);
    Ok(())
}

/// How many of each node's last log lines a failed cluster run prints.
const LOG_TAIL_LINES: usize = 30;

/// How long to wait for a cluster to have a leader that serves: a new cluster elects one within
/// a few election timeouts.
const LEADER_PATIENCE: Duration = Duration::from_secs(30);

/// Connects the etcd comparison, when asked for and built in.
#[cfg(feature = "etcd")]
async fn connect_etcd(bench: &mut Bench, endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    let etcd = clients::etcd::EtcdTarget::connect(endpoints).await?;
    eprintln!("lockbench: etcd leader at {}", etcd.leader());
    bench.etcd = Some(etcd);
    Ok(())
}

/// Without the `etcd` feature, asking for etcd is an error that says how to get it.
#[cfg(not(feature = "etcd"))]
async fn connect_etcd(_bench: &mut Bench, endpoints: &[String]) -> Result<()> {
    if endpoints.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "--compare-etcd needs lockbench built with `--features etcd`, which needs protoc \
         (Debian: apt-get install protobuf-compiler); scripts/bench-cluster.sh does both"
    )
}

/// The client's runtime: current-thread for one thread (see the module docs for why).
fn client_runtime(threads: u64) -> Result<tokio::runtime::Runtime> {
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::try_from(threads)?)
            .enable_all()
            .build()
    };
    runtime.context("cannot start the client runtime")
}

/// Raises this process's soft open-file limit to its hard limit and returns the limit in force.
/// Holding thousands of connections needs more than the usual soft limit of 1,024.
fn raise_open_file_limit() -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            eprintln!("lockbench: cannot raise the open-file limit: {err}");
            rlimit::Resource::NOFILE
                .get()
                .map_or(1024, |(soft, _)| soft)
        }
    }
}

fn resolve(server: &str) -> Result<SocketAddr> {
    server
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve --server {server}"))?
        .next()
        .ok_or_else(|| anyhow!("--server {server} resolves to no address"))
}

/// The CPU model from /proc/cpuinfo, for the chart's title.
fn cpu_model() -> Option<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map(|(_, model)| model.trim().to_owned())
}
