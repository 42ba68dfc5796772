//! `reads`: reads per second against writes per second, every connection on a resource of its
//! own that it holds (issue 19's goal 3: reads at least 3x writes at 64 connections).
//!
//! Two runs: every connection loops `read` on its resource, then every connection loops `write`
//! on it; each op is one request and one reply. In a cluster today both are one log entry each,
//! so the ratio is near 1; a read served without a log entry (ReadIndex, a leader lease) is
//! what moves it. On a single server it is the cost of a read against a durable write. etcd,
//! when compared, runs the same two loops with a linearizable `Range` and a `Put` on its own key.

use anyhow::Result;

use crate::bench::{Bench, Mode};
use crate::clients::lockd::ReadingLocker;
use crate::clients::Target;
use crate::measure::run_loops;
use crate::report::{round, Record, Report};

/// Runs the read loop and the write loop against lockd, then etcd if configured.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Reads);
    let prefix = bench.run_prefix();
    let mut rates = [0.0; 2];
    // Each stage takes resources of its own: in a cluster, the read stage's sessions (and
    // their locks) outlive their connections until their leases run out.
    for (stage, write) in [("read", false), ("write", true)] {
        eprintln!("lockbench: reads ({stage}), lockd, {connections} connections");
        let lockers = crate::bench::connect_each(connections, |i| {
            ReadingLocker::connect(bench.lockd_addr, format!("{prefix}{stage}{i}"), write)
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, false, bench.lockd_cpu()).await?;
        let record = bench.with_cluster_memory(single_op(Record::from_loops(
            Mode::Reads,
            Some(stage),
            Target::Lockd,
            bench.window,
            &outcome,
        )));
        rates[usize::from(write)] = record.ops_per_s;
        report.push(with_ratio(record, write, rates))?;
    }

    #[cfg(feature = "etcd")]
    if let Some(etcd) = &bench.etcd {
        let mut rates = [0.0; 2];
        for (stage, write) in [("read", false), ("write", true)] {
            eprintln!("lockbench: reads ({stage}), etcd, {connections} connections");
            let lockers = crate::bench::connect_each(connections, |i| {
                etcd.reader(format!("lockbench/{prefix}{stage}{i}"), write)
            })
            .await?;
            let outcome = run_loops(lockers, bench.window, false, bench.etcd_cpu()).await?;
            let record = bench.with_etcd_memory(single_op(Record::from_loops(
                Mode::Reads,
                Some(stage),
                Target::Etcd,
                bench.window,
                &outcome,
            )));
            rates[usize::from(write)] = record.ops_per_s;
            report.push(with_ratio(record, write, rates))?;
        }
    }
    Ok(())
}

/// A loop whose `acquire` is the one request: its `acquire` latency is the request's (kept
/// under that name so the table's column shows it), and the empty `release` is not reported.
fn single_op(mut record: Record) -> Record {
    record.latency_us.remove("release");
    record
}

/// The write run's record also gets reads/s over writes/s, the goal's ratio.
fn with_ratio(record: Record, write: bool, rates: [f64; 2]) -> Record {
    if write && rates[1] > 0.0 {
        record.with("reads_per_write", round(rates[0] / rates[1], 2))
    } else {
        record
    }
}
