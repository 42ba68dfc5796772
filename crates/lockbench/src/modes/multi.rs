//! `multi`: each connection takes 3 resources, does nothing, and gives them back; once with one
//! multi-resource acquire, once with 3 single acquires in a global order.
//!
//! This is what the atomic acquire costs or saves against the usual way of taking several
//! locks (one by one, in one order, so that nobody deadlocks). Two shapes, each measured both
//! ways: *contended*, where the connections share a pool of [`POOL`] resources (connection i
//! takes i, i+1 and i+2, mod the pool), and *own*, where each connection has 3 resources of its
//! own, so that only the per-request cost differs. Releases are pipelined in both, so the
//! acquires make the difference. Measured: sets/s (one set is 3 locks taken and given back) and
//! latencies. lockd only: Redis has no atomic acquire of several locks.

use anyhow::Result;

use crate::bench::{connect_each, Bench, Mode};
use crate::clients::lockd::SetLocker;
use crate::clients::Target;
use crate::measure::run_loops;
use crate::report::{Record, Report};

/// Resources per set.
const MEMBERS: usize = 3;

/// The contended shape's pool: with the default 16 connections, each resource is wanted by 6
/// of them at once.
const POOL: usize = 8;

/// Runs the four loops against lockd.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Multi);
    for (stage, group, contended) in [
        ("group", true, true),
        ("singles", false, true),
        ("group-own", true, false),
        ("singles-own", false, false),
    ] {
        let prefix = bench.run_prefix();
        eprintln!("lockbench: multi {stage}, lockd, {connections} connections");
        let addr = bench.lockd_addr;
        let lockers = connect_each(connections, |i| {
            let mut slots: Vec<usize> = if contended {
                (0..MEMBERS).map(|k| (i + k) % POOL).collect()
            } else {
                (0..MEMBERS).map(|k| i * MEMBERS + k).collect()
            };
            // The global order single acquires must follow; a group may name them in any.
            slots.sort_unstable();
            let names = slots
                .iter()
                .map(|slot| format!("{prefix}m{slot}"))
                .collect();
            SetLocker::connect(addr, names, group)
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, false, bench.lockd_cpu()).await?;
        report.push(
            Record::from_loops(
                Mode::Multi,
                Some(stage),
                Target::Lockd,
                bench.window,
                &outcome,
            )
            .with("members", MEMBERS as u64)
            .with("pool", if contended { POOL as u64 } else { 0 }),
        )?;
    }
    Ok(())
}
