//! A Rust critical section under a lockd lock.
//!
//! Run lockd (`lockd`), then several copies of this at once:
//! `cargo run -p lockctl --example critical_section` (set LOCKD_ADDR if lockd is elsewhere).
//! Each waits its turn, increments a shared counter kept as the resource's value, and
//! releases; no increment is lost however many run together.

use std::time::Duration;

use lockctl::{Client, ClientError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), ClientError> {
    let addr = std::env::var("LOCKD_ADDR").unwrap_or_else(|_| lockctl::DEFAULT_ADDR.to_owned());
    // Connects, says hello, and pings at a quarter of the lease for as long as `client` lives.
    let client = Client::builder(&addr)
        .name("critical_section example")
        .connect()
        .await?;

    for _ in 0..10 {
        let guard = client
            .lock("examples/counter")
            .timeout(Duration::from_secs(30))
            .acquire()
            .await?;
        // Inside: nobody else holds examples/counter until the guard is released or dropped.
        let count: u64 = guard
            .read()
            .await?
            .and_then(|value| value.parse().ok())
            .unwrap_or(0);
        tokio::select! {
            // The protected work, raced against losing the lock: never keep working unprotected.
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            () = guard.lost() => return Err(ClientError::ConnectionLost),
        }
        guard.write(&(count + 1).to_string()).await?;
        println!("counter = {} (fencing token {})", count + 1, guard.token());
        guard.release().await?;
    }
    Ok(())
}
