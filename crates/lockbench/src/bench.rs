//! What every mode needs to run: the list of modes, the servers under test, the run window, the
//! sizes asked for, and helpers to open many lockd connections.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::clients::echo::EchoServer;
use crate::clients::lockd::{LockdConn, LockdLocker, Mode as LockMode};
use crate::clients::redis::RedisTarget;
use crate::lockd_metrics::StoreCommits;
use serde_json::Value;

#[cfg(feature = "etcd")]
use crate::clients::etcd::EtcdTarget;
use crate::lockd_cluster::LockdCluster;
#[cfg(feature = "etcd")]
use crate::lockd_cluster::CLUSTER_SIZE;
#[cfg(feature = "etcd")]
use crate::lockd_process::status_kib;
use crate::lockd_process::LockdProcess;
use crate::measure::{ServerCpu, Window};
use crate::report::{round, Record};

/// One benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each connection locks and unlocks its own resource: pairs/s and latencies.
    Uncontended,
    /// Every connection on one resource: grants/s, handoff latency, fairness.
    Contended,
    /// Every connection asks for one permit of one semaphore of 4: grants/s, handoff latency,
    /// fairness.
    Semaphore,
    /// Readers and one writer on one resource.
    Shared,
    /// Many held locks, many queued waiters, many idle connections: cost per op and memory.
    Scale,
    /// Writers doing acquire / durable write / release on resources of their own: writes/s
    /// and commits/s (group commit).
    Writes,
    /// Sets of 3 locks taken in one multi-resource acquire, against 3 single acquires.
    Multi,
    /// One holder takes and releases a resource that 1 and then 1,000 connections watch: the
    /// delay from the release to each watcher reading its event, and lockd's memory per watch.
    /// Not in `--mode all`: it opens its own thousand connections.
    Watch,
    /// Reads/s against writes/s, each connection on a resource it holds.
    Reads,
    /// Leader kills in a cluster lockbench started: time to a new leader and the writes' stall.
    Failover,
}

impl Mode {
    /// Every mode, in the order `--mode all` runs them.
    pub const ALL: [Mode; 7] = [
        Mode::Uncontended,
        Mode::Contended,
        Mode::Semaphore,
        Mode::Shared,
        Mode::Scale,
        Mode::Writes,
        Mode::Multi,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Reads => "reads",
            Mode::Failover => "failover",
            Mode::Uncontended => "uncontended",
            Mode::Contended => "contended",
            Mode::Semaphore => "semaphore",
            Mode::Shared => "shared",
            Mode::Scale => "scale",
            Mode::Writes => "writes",
            Mode::Multi => "multi",
            Mode::Watch => "watch",
        }
    }

    /// What the mode's `ops` count.
    pub fn unit(self) -> &'static str {
        match self {
            Mode::Uncontended | Mode::Scale => "pairs",
            Mode::Reads => "ops",
            Mode::Failover => "kills",
            Mode::Contended | Mode::Semaphore | Mode::Shared => "grants",
            Mode::Writes => "writes",
            Mode::Multi => "sets",
            Mode::Watch => "releases",
        }
    }

    /// Connections when `--connections` is not given: the targets are stated at 64
    /// connections, and at 16 clients for the contended one.
    pub fn default_connections(self) -> usize {
        match self {
            Mode::Contended | Mode::Semaphore | Mode::Multi => 16,
            Mode::Uncontended | Mode::Shared | Mode::Scale | Mode::Writes | Mode::Reads => 64,
            // The watchers of the second run; the first always has one.
            Mode::Watch => 1_000,
            // One writer, the client whose stall is measured.
            Mode::Failover => 1,
        }
    }
}

/// Sizes of the `scale` runs.
#[derive(Debug, Clone, Copy)]
pub struct ScaleSizes {
    /// Locks held in the large held-locks run.
    pub locks: u64,
    /// Waiters queued in the large waiters run.
    pub waiters: u64,
    /// Idle connections held in the idle-connections run.
    pub idle_connections: u64,
}

/// The servers and settings shared by every run.
#[derive(Debug)]
pub struct Bench {
    /// Warm-up and measured window of each run.
    pub window: Window,
    /// `--connections`, which overrides every mode's default.
    pub connections: Option<usize>,
    /// Where lockd listens.
    pub lockd_addr: SocketAddr,
    /// The lockd lockbench started, if it did; only then are RSS and server CPU known.
    pub lockd: Option<LockdProcess>,
    /// Redis to compare with.
    pub redis: Option<RedisTarget>,
    /// Redis's pid, when given, to read its CPU time.
    pub redis_pid: Option<u32>,
    /// The built-in echo server to compare with.
    pub echo: Option<EchoServer>,
    /// Sleep between a Redis client's failed `SET NX` and its next try.
    pub redis_retry: Duration,
    /// Sizes of the scale runs.
    pub scale: ScaleSizes,
    /// This process's open-file limit; lockd, when started by lockbench, inherits the same.
    pub fd_limit: u64,
    /// The 3-node cluster lockbench started (`--cluster`); `lockd_addr` is its leader's.
    pub cluster: Option<LockdCluster>,
    /// Every client address of the cluster under test (`--cluster`, or `--server A,B,C`).
    pub cluster_addrs: Vec<SocketAddr>,
    /// Leader kills in a failover run (`--kills`).
    pub kills: u32,
    /// The flags given to the lockd nodes lockbench started (`--lockd-arg`).
    pub lockd_args: Vec<String>,
    /// etcd to compare with (`--compare-etcd`).
    #[cfg(feature = "etcd")]
    pub etcd: Option<EtcdTarget>,
    /// The pids of the etcd members (`--etcd-pids`), to read their CPU time and memory.
    pub etcd_pids: Vec<u32>,
    /// Counts runs, so that every run uses resource names of its own.
    runs: u32,
}

impl Bench {
    /// Everything a run needs.
    #[allow(clippy::too_many_arguments)] // reason: plain settings, built once in main.rs
    pub fn new(
        window: Window,
        connections: Option<usize>,
        lockd_addr: SocketAddr,
        lockd: Option<LockdProcess>,
        redis: Option<RedisTarget>,
        redis_pid: Option<u32>,
        echo: Option<EchoServer>,
        redis_retry: Duration,
        scale: ScaleSizes,
        fd_limit: u64,
    ) -> Bench {
        Bench {
            window,
            connections,
            lockd_addr,
            lockd,
            redis,
            redis_pid,
            echo,
            redis_retry,
            scale,
            fd_limit,
            cluster: None,
            cluster_addrs: Vec::new(),
            kills: 0,
            lockd_args: Vec::new(),
            #[cfg(feature = "etcd")]
            etcd: None,
            etcd_pids: Vec::new(),
            runs: 0,
        }
    }

    /// Connections for a run of `mode`.
    pub fn connections(&self, mode: Mode) -> usize {
        self.connections
            .unwrap_or_else(|| mode.default_connections())
    }

    /// A prefix no earlier run's resource names start with, e.g. `lb3-`.
    pub fn run_prefix(&mut self) -> String {
        self.runs += 1;
        format!("lb{}-", self.runs)
    }

    /// lockd's pid, when lockbench started it.
    pub fn lockd_pid(&self) -> Option<u32> {
        self.lockd.as_ref().map(LockdProcess::pid)
    }

    /// Replaces the lockd lockbench started with a fresh one, so that memory freed by an
    /// earlier run (which the allocator keeps) cannot hide what the next run allocates. Returns
    /// false, and does nothing, for a `--server` lockd.
    pub fn fresh_lockd(&mut self) -> Result<bool> {
        let Some(lockd) = &mut self.lockd else {
            return Ok(false);
        };
        lockd.restart()?;
        self.lockd_addr = lockd.addr();
        Ok(true)
    }

    /// Where to read lockd's CPU time: the process, or all three nodes of a cluster lockbench
    /// started.
    pub fn lockd_cpu(&self) -> ServerCpu {
        if let Some(pids) = self.cluster.as_ref().and_then(LockdCluster::pids) {
            return ServerCpu::Processes(pids);
        }
        self.lockd_pid()
            .map_or(ServerCpu::Unknown, ServerCpu::Process)
    }

    #[cfg(feature = "etcd")]
    /// Where to read etcd's CPU time: its three members, when their pids were given.
    pub fn etcd_cpu(&self) -> ServerCpu {
        <[u32; CLUSTER_SIZE]>::try_from(self.etcd_pids.as_slice())
            .map_or(ServerCpu::Unknown, ServerCpu::Processes)
    }

    /// `record` with each cluster node's memory (RSS now and peak, MB) when lockbench started
    /// the cluster, so that the table shows what a node costs.
    pub fn with_cluster_memory(&self, record: Record) -> Record {
        match &self.cluster {
            Some(cluster) => with_memory(record, &cluster.memory()),
            None => record,
        }
    }

    #[cfg(feature = "etcd")]
    /// `record` with each etcd member's memory, when their pids were given.
    pub fn with_etcd_memory(&self, record: Record) -> Record {
        let memory: Vec<Option<(u64, u64)>> = self
            .etcd_pids
            .iter()
            .map(|&pid| {
                Some((
                    status_kib(pid, "VmRSS").ok()? * 1024,
                    status_kib(pid, "VmHWM").ok()? * 1024,
                ))
            })
            .collect();
        if memory.is_empty() {
            record
        } else {
            with_memory(record, &memory)
        }
    }

    /// Where to read Redis's CPU time.
    pub fn redis_cpu(&self) -> ServerCpu {
        self.redis_pid
            .map_or(ServerCpu::Unknown, ServerCpu::Process)
    }

    /// Where to read lockd's store commits, when lockbench started it (with its admin API).
    pub fn store_commits(&self) -> Option<StoreCommits> {
        self.lockd
            .as_ref()
            .map(|lockd| StoreCommits::new(lockd.admin_addr()))
    }

    /// lockd's resident memory now, when lockbench started it.
    pub fn lockd_rss(&self) -> Option<u64> {
        self.lockd.as_ref().and_then(|lockd| lockd.rss_bytes().ok())
    }

    /// `count` lockd lockers, the i-th on resource `name(i)` in `mode`.
    pub async fn lockd_lockers(
        &self,
        count: usize,
        name: impl Fn(usize) -> String,
        mode: impl Fn(usize) -> LockMode,
    ) -> Result<Vec<LockdLocker>> {
        connect_each(count, |i| {
            LockdLocker::connect(self.lockd_addr, name(i), mode(i))
        })
        .await
    }

    /// Opens `count` lockd sessions (each has said hello), in waves of [`CONNECT_WAVE`]: a wave's
    /// hellos are answered (so lockd has accepted every connection in it) before the next wave
    /// connects, which keeps lockd's accept queue short.
    pub async fn lockd_sessions(&self, count: usize) -> Result<Vec<LockdConn>> {
        let mut conns = Vec::with_capacity(count);
        while conns.len() < count {
            let wave = CONNECT_WAVE.min(count - conns.len());
            let first = conns.len();
            for _ in 0..wave {
                let mut conn = LockdConn::connect_without_hello(self.lockd_addr)
                    .await
                    .with_context(|| {
                        format!(
                            "opening connection {} of {count} (open-file limit {})",
                            conns.len() + 1,
                            self.fd_limit
                        )
                    })?;
                conn.send_hello().await?;
                conns.push(conn);
            }
            for conn in &mut conns[first..] {
                tokio::time::timeout(
                    crate::clients::lockd::SETUP_PATIENCE,
                    conn.finish_request(),
                )
                .await
                .context(
                    "lockd did not answer hello in time (is its open-file limit too low to accept \
                     more connections?)",
                )??;
            }
        }
        Ok(conns)
    }
}

/// Adds `node_rss_mb` and `node_peak_rss_mb`, one entry per node (null for a node that is down).
fn with_memory(record: Record, memory: &[Option<(u64, u64)>]) -> Record {
    let mb = |bytes: u64| round(bytes as f64 / 1e6, 1);
    let now: Vec<Value> = memory
        .iter()
        .map(|m| m.map_or(Value::Null, |(rss, _)| mb(rss).into()))
        .collect();
    let peak: Vec<Value> = memory
        .iter()
        .map(|m| m.map_or(Value::Null, |(_, peak)| mb(peak).into()))
        .collect();
    record
        .with("node_rss_mb", now)
        .with("node_peak_rss_mb", peak)
}

/// Connections opened before waiting for lockd to accept them. lockd listens with a backlog of
/// 128 (tokio's `TcpListener::bind` default); a connection that finds the accept queue full has
/// its SYN dropped and retries a whole second later, which would be measured as setup time.
pub const CONNECT_WAVE: usize = 64;

/// Runs `connect(i)` for i in 0..count, one after the other, and collects the results.
pub async fn connect_each<T, F>(count: usize, connect: impl Fn(usize) -> F) -> Result<Vec<T>>
where
    F: Future<Output = Result<T>>,
{
    let mut all = Vec::with_capacity(count);
    for i in 0..count {
        all.push(
            connect(i)
                .await
                .with_context(|| format!("opening connection {} of {count}", i + 1))?,
        );
    }
    Ok(all)
}
