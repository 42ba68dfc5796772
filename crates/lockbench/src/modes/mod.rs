//! The benchmarks, one module each. A mode is a variant of [`Mode`] plus an async `run` that
//! measures through [`Bench`] and pushes its records to the [`Report`]; adding one is a new
//! module and a few match arms here.

mod contended;
mod scale;
mod shared;
mod uncontended;
mod writes;

use anyhow::Result;

use crate::bench::Bench;
use crate::report::Report;

/// One benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each connection locks and unlocks its own resource: pairs/s and latencies.
    Uncontended,
    /// Every connection on one resource: grants/s, handoff latency, fairness.
    Contended,
    /// Readers and one writer on one resource.
    Shared,
    /// Many held locks, many queued waiters, many idle connections: cost per op and memory.
    Scale,
    /// Writers doing acquire / durable write / release on resources of their own: writes/s
    /// and commits/s (group commit).
    Writes,
}

impl Mode {
    /// Every mode, in the order `--mode all` runs them.
    pub const ALL: [Mode; 5] = [
        Mode::Uncontended,
        Mode::Contended,
        Mode::Shared,
        Mode::Scale,
        Mode::Writes,
    ];

    /// The name used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Uncontended => "uncontended",
            Mode::Contended => "contended",
            Mode::Shared => "shared",
            Mode::Scale => "scale",
            Mode::Writes => "writes",
        }
    }

    /// What the mode's `ops` count.
    pub fn unit(self) -> &'static str {
        match self {
            Mode::Uncontended | Mode::Scale => "pairs",
            Mode::Contended | Mode::Shared => "grants",
            Mode::Writes => "writes",
        }
    }

    /// Connections when `--connections` is not given: the targets are stated at 64
    /// connections, and at 16 clients for the contended one.
    pub fn default_connections(self) -> usize {
        match self {
            Mode::Contended => 16,
            Mode::Uncontended | Mode::Shared | Mode::Scale | Mode::Writes => 64,
        }
    }

    /// Runs the benchmark and pushes one record per run to `report`.
    pub async fn run(self, bench: &mut Bench, report: &mut Report) -> Result<()> {
        match self {
            Mode::Uncontended => uncontended::run(bench, report).await,
            Mode::Contended => contended::run(bench, report).await,
            Mode::Shared => shared::run(bench, report).await,
            Mode::Scale => scale::run(bench, report).await,
            Mode::Writes => writes::run(bench, report).await,
        }
    }
}
