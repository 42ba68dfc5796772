//! Starting and stopping a lockd of our own, and reading its memory from /proc.
//!
//! lockbench starts lockd itself unless `--server` is given, so that a benchmark needs one
//! command and so that it can read the server's RSS (`VmRSS` in `/proc/<pid>/status`) and CPU
//! time. The process gets a temporary data directory and logs at `warn` into a file there: at
//! `info` lockd logs every session, which at thousands of connections would be measured too.
//! It also serves its admin API on a free port, so that the `writes` mode can read how many
//! durable commits lockd made from `/metrics`.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

/// The connection caps lockbench gives the lockd it starts: above the largest scale stage
/// (`--idle-connections` or `--scale-waiters`, plus a run's connections).
pub const BENCH_MAX_CONNECTIONS: &str = "200000";

/// The line lockd prints first, before its address.
const STARTED_PREFIX: &str = "Lock Server started on tcp://";

/// The line lockd prints second with `--http`, before the admin API's address.
const ADMIN_PREFIX: &str = "Admin HTTP listening on http://";

/// A lockd process started by lockbench; killed (and its data directory removed) when dropped.
#[derive(Debug)]
pub struct LockdProcess {
    child: Child,
    addr: SocketAddr,
    /// Where lockd serves its admin API (`/metrics`).
    admin: SocketAddr,
    binary: PathBuf,
    /// The flags it was started with beyond lockbench's own.
    extra_args: Vec<String>,
    /// Holds the data directory and the log until the process is gone.
    dir: tempfile::TempDir,
}

impl LockdProcess {
    /// The `lockd` next to the running lockbench executable: `cargo build` puts both in the same
    /// target directory.
    pub fn default_binary() -> Result<PathBuf> {
        let exe = std::env::current_exe().context("cannot find lockbench's own executable")?;
        let dir = exe
            .parent()
            .ok_or_else(|| anyhow!("lockbench's executable {} has no directory", exe.display()))?;
        Ok(dir.join("lockd"))
    }

    /// Starts `binary` on 127.0.0.1 with a free port, and `extra_args` after lockbench's own
    /// flags, and waits for its address.
    pub fn start(binary: &Path, extra_args: &[String]) -> Result<LockdProcess> {
        if !binary.is_file() {
            bail!(
                "no lockd binary at {} (build it with `cargo build --release --bin lockd`, pass \
                 --lockd-bin, or use --server ADDR)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("lockbench-")
            .tempdir()
            .context("cannot create a temporary directory for lockd")?;
        let log = File::create(dir.path().join("lockd.log"))?;
        let mut child = Command::new(binary)
            .args([
                "--listen",
                "127.0.0.1:0",
                "--log-level",
                "warn",
                // Every connection of a run comes from 127.0.0.1, and the scale stages open
                // more than lockd admits by default (1,000 per address, 10,000 in all); the
                // limits are a defence against clients, not what is measured here.
                "--max-connections",
                BENCH_MAX_CONNECTIONS,
                "--max-connections-per-ip",
                BENCH_MAX_CONNECTIONS,
                "--http",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path().join("data"))
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let (addr, admin) = match read_addresses(&mut child) {
            Ok(addresses) => addresses,
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(dir.path().join("lockd.log")).unwrap_or_default();
                return Err(err.context(format!("lockd did not start; its log:\n{log}")));
            }
        };
        Ok(LockdProcess {
            child,
            addr,
            admin,
            binary: binary.to_owned(),
            extra_args: extra_args.to_vec(),
            dir,
        })
    }

    /// Stops this lockd and starts a new one from the same binary, on a new port and data
    /// directory: a process whose allocator has never held anything, for memory readings.
    pub fn restart(&mut self) -> Result<()> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let binary = self.binary.clone();
        let extra_args = std::mem::take(&mut self.extra_args);
        // The old value's Drop kills and waits again, which is harmless on a reaped child.
        *self = LockdProcess::start(&binary, &extra_args)?;
        Ok(())
    }

    /// Where lockd listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where lockd serves its admin API.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
    }

    /// lockd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// lockd's resident memory now, in bytes.
    pub fn rss_bytes(&self) -> Result<u64> {
        rss_bytes(self.pid())
    }

    /// lockd's log so far (warnings and errors only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("lockd.log")).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for LockdProcess {
    fn drop(&mut self) {
        // SIGKILL: the data directory is temporary and nothing in it must survive, and a clean
        // shutdown of a million held locks would only add seconds to every benchmark.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lock port's and the admin API's addresses, from lockd's first two lines.
pub fn read_addresses(child: &mut Child) -> Result<(SocketAddr, SocketAddr)> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| anyhow!("lockd's stdout was not captured"))?;
    let mut stdout = BufReader::new(stdout);
    let mut address = |prefix: &str, which: &str| -> Result<SocketAddr> {
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .with_context(|| format!("cannot read lockd's {which} line"))?;
        let addr = line
            .trim()
            .strip_prefix(prefix)
            .ok_or_else(|| anyhow!("lockd's {which} line was {line:?}, not an address"))?;
        addr.parse()
            .with_context(|| format!("lockd printed an unreadable address {addr:?}"))
    };
    Ok((
        address(STARTED_PREFIX, "first")?,
        address(ADMIN_PREFIX, "second")?,
    ))
}

/// A process's resident memory in bytes, from `VmRSS` in `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    Ok(status_kib(pid, "VmRSS")? * 1024)
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmRSS` (resident now) or `VmHWM` (the peak).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .ok_or_else(|| anyhow!("no {field} line in /proc/{pid}/status"))
}
