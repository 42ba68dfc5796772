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
