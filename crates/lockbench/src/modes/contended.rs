//! `contended`: every connection takes turns on one exclusive lock.
//!
//! Each loop acquires, releases at once and asks again, so lockd's queue always holds the other
//! connections and every grant is a handoff: the release of one holder hands the lock to the
//! next in line. Measured: grants/s, the handoff latency (release acknowledged to the next
//! holder's grant, on one clock in this process), and grants per connection, whose max/min is
//! 1.0 when grants are strictly FIFO. Redis runs the same loop with retries (see
//! `clients::redis` for the retry delay), which has no order at all.

use anyhow::Result;

use crate::bench::{connect_each, Bench, Mode};
use crate::clients::lockd::Mode as LockMode;
use crate::clients::Target;
use crate::measure::run_loops;
use crate::report::{Record, Report};

/// Runs the loop against lockd, then Redis if configured.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let connections = bench.connections(Mode::Contended);
    let prefix = bench.run_prefix();
    let resource = format!("{prefix}contended");
    eprintln!("lockbench: contended, lockd, {connections} connections");
    let lockers = bench
        .lockd_lockers(connections, |_| resource.clone(), |_| LockMode::Exclusive)
        .await?;
    let outcome = run_loops(lockers, bench.window, true, bench.lockd_cpu()).await?;
    report.push(bench.with_cluster_memory(Record::from_loops(
        Mode::Contended,
        None,
        Target::Lockd,
        bench.window,
        &outcome,
    )))?;

    // etcd's lock queues waiters by revision, so its grants are FIFO too and every grant is a
    // handoff, as on lockd.
    #[cfg(feature = "etcd")]
    if let Some(etcd) = &bench.etcd {
        eprintln!("lockbench: contended, etcd, {connections} connections");
        let name = format!("lockbench/{resource}");
        let lockers = connect_each(connections, |_| etcd.locker(name.clone())).await?;
        let outcome = run_loops(lockers, bench.window, true, bench.etcd_cpu()).await?;
        report.push(bench.with_etcd_memory(Record::from_loops(
            Mode::Contended,
            None,
            Target::Etcd,
            bench.window,
            &outcome,
        )))?;
    }

    if let Some(redis) = &bench.redis {
        eprintln!("lockbench: contended, redis, {connections} connections");
        let key = format!("lockbench:{resource}");
        let lockers = connect_each(connections, |i| {
            redis.locker(key.clone(), i, bench.redis_retry)
        })
        .await?;
        let outcome = run_loops(lockers, bench.window, true, bench.redis_cpu()).await?;
        report.push(
            Record::from_loops(Mode::Contended, None, Target::Redis, bench.window, &outcome).with(
                "retry_delay_ms",
                u64::try_from(bench.redis_retry.as_millis()).unwrap_or(u64::MAX),
            ),
        )?;
    }
    Ok(())
}
