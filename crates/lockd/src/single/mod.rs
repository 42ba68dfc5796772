//! The single server's backend: one driver task that owns the lock table and the store.
//!
//! - `driver.rs`: the loop, the only caller of the table;
//! - `commit.rs`: commits on the blocking pool, one at a time;
//! - `pipeline.rs`: which frames wait for which commit (no I/O, no clock);
//! - `reports.rs`: how often the admin API's locks report is rebuilt.

mod commit;
mod driver;
mod pipeline;
mod reports;

pub(crate) use self::driver::Driver;

/// The wall clock in microseconds since the Unix epoch, the unit of fencing tokens near the
/// clock: a store that handed out tokens before starts above it, and token reservations reach
/// no further than it (see `LockTable::tokens_wanted`). 0 for a clock before 1970.
pub(crate) fn wall_clock_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
        })
}
