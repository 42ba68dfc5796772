//! `uncontended`: every connection locks and unlocks a resource of its own, as fast as it can.
//!
//! This is the cost of one acquire/release pair when nobody waits: protocol, parsing, the lock
//! table's bookkeeping and two round trips. The same loop runs against Redis and the echo
//! server when asked, so the ratios in the targets come from one run.

use anyhow::Result;

use crate::bench::{connect_each, Bench, Mode};
use crate::clients::echo::EchoLocker;
use crate::clients::lockd::Mode as LockMode;
use crate::clients::Target;
use crate::measure::run_loops;
use crate::report::{Record, Report};

/// Runs the loop against lockd, then Redis and echo if configured.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Uncontended);
    let prefix = bench.run_prefix();
    eprintln!("lockbench: uncontended, lockd, {connections} connections");
    let lockers = bench
        .lockd_lockers(
            connections,
            |i| format!("{prefix}u{i}"),
            |_| LockMode::Exclusive,
        )
        .await?;
    let outcome = run_loops(lockers, bench.window, false, bench.lockd_cpu()).await?;
    report.push(bench.with_cluster_memory(Record::from_loops(
        Mode::Uncontended,
        None,
        Target::Lockd,
        bench.window,
        &outcome,
    )))?;

    #[cfg(feature = "etcd")]
    if let Some(etcd) = &bench.etcd {
        eprintln!("lockbench: uncontended, etcd, {connections} connections");
        let lockers = connect_each(connections, |i| {
            etcd.locker(format!("lockbench/{prefix}u{i}"))
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, false, bench.etcd_cpu()).await?;
        report.push(bench.with_etcd_memory(Record::from_loops(
            Mode::Uncontended,
            None,
            Target::Etcd,
            bench.window,
            &outcome,
        )))?;
    }

    if let Some(redis) = &bench.redis {
        eprintln!("lockbench: uncontended, redis, {connections} connections");
        let lockers = connect_each(connections, |i| {
            redis.locker(format!("lockbench:{prefix}u{i}"), i, bench.redis_retry)
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, false, bench.redis_cpu()).await?;
        report.push(Record::from_loops(
            Mode::Uncontended,
            None,
            Target::Redis,
            bench.window,
            &outcome,
        ))?;
    }

    if let Some(echo) = &bench.echo {
        eprintln!("lockbench: uncontended, echo, {connections} connections");
        let addr = echo.addr();
        let lockers = connect_each(connections, |i| {
            let resource = format!("{prefix}u{i}");
            async move { EchoLocker::connect(addr, &resource).await }
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, false, echo.cpu()).await?;
        report.push(Record::from_loops(
            Mode::Uncontended,
            None,
            Target::Echo,
            bench.window,
            &outcome,
        ))?;
    }
    Ok(())
}
