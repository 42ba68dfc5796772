//! The Redis lock that lockd is compared with: the single-instance pattern from the Redis docs.
//!
//! Acquire is `SET key token NX PX 30000`; release is a Lua compare-and-delete that removes the
//! key only if it still holds our token (`redis::Script` sends it as `EVALSHA`, falling back to
//! `EVAL` once, which is what real clients do). Redis has no queue, so a client that finds the
//! key taken sleeps for the retry delay and tries again; that delay is the knob every Redis lock
//! client has (Redlock's default is 200 ms). lockbench uses 1 ms by default
//! (`--redis-retry-ms`), the shortest sleep tokio's timer offers, which is the most favourable
//! choice for Redis's throughput that does not turn clients into busy loops.
//!
//! The `redis` crate's only async connection is `MultiplexedConnection`, which hands each
//! command to a driver task over a channel: a little more client CPU per operation than the
//! lean lockd client. Each locker gets its own connection, so nothing is shared between loops.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, IntoConnectionInfo, Script};

use super::Locker;

/// How long a Redis lock lives if its holder vanishes; far longer than any hold in a loop.
const LOCK_TTL_MS: u64 = 30_000;

/// Deletes the key only if it still holds the caller's token; returns 1 if it did.
const COMPARE_AND_DELETE: &str =
    "if redis.call('get',KEYS[1])==ARGV[1] then return redis.call('del',KEYS[1]) else return 0 end";

/// A Redis server to run loops against.
#[derive(Debug, Clone)]
pub struct RedisTarget {
    client: redis::Client,
    script: Arc<Script>,
}

impl RedisTarget {
    /// Checks that `addr` (host:port) answers `PING`.
    pub async fn connect(addr: &str) -> Result<RedisTarget> {
        let info = format!("redis://{addr}/")
            .into_connection_info()
            .with_context(|| format!("bad Redis address {addr:?}"))?
            // Like lockbench's lockd client: no Nagle delay on small request writes.
            .set_tcp_settings(TcpSettings::default().set_nodelay(true));
        let target = RedisTarget {
            client: redis::Client::open(info)?,
            script: Arc::new(Script::new(COMPARE_AND_DELETE)),
        };
        let mut conn = target.connection().await?;
        let pong: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .with_context(|| format!("Redis at {addr} did not answer PING"))?;
        if pong != "PONG" {
            bail!("Redis at {addr} answered PING with {pong:?}");
        }
        Ok(target)
    }

    /// A new connection of its own.
    pub async fn connection(&self) -> Result<MultiplexedConnection> {
        // No response timeout: a loop stalled behind a busy two-core machine is slow, not
        // broken, and the run's own watchdog catches a server that stopped answering.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(10)));
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .context("cannot connect to Redis")
    }

    /// A locker on `key` with its own connection; `retry` is the sleep after a failed `SET NX`.
    pub async fn locker(&self, key: String, owner: usize, retry: Duration) -> Result<RedisLocker> {
        Ok(RedisLocker {
            conn: self.connection().await?,
            script: Arc::clone(&self.script),
            key,
            owner,
            round: 0,
            token: String::with_capacity(32),
            retry,
        })
    }
}

/// One connection's Redis lock on one key.
#[derive(Debug)]
pub struct RedisLocker {
    conn: MultiplexedConnection,
    script: Arc<Script>,
    key: String,
    /// Which loop this is; with `round`, it makes every token unique.
    owner: usize,
    round: u64,
    /// The value written by the last successful `SET`; reused, never freed.
    token: String,
    retry: Duration,
}

impl Locker for RedisLocker {
    async fn acquire(&mut self) -> Result<()> {
        self.round += 1;
        self.token.clear();
        // Writing into a String cannot fail.
        let _ = write!(self.token, "{}:{}", self.owner, self.round);
        loop {
            let set: Option<String> = redis::cmd("SET")
                .arg(&self.key)
                .arg(&self.token)
                .arg("NX")
                .arg("PX")
                .arg(LOCK_TTL_MS)
                .query_async(&mut self.conn)
                .await
                .context("Redis SET NX failed")?;
            if set.is_some() {
                return Ok(());
            }
            tokio::time::sleep(self.retry).await;
        }
    }

    async fn release(&mut self) -> Result<()> {
        let deleted: i64 = self
            .script
            .key(&self.key)
            .arg(&self.token)
            .invoke_async(&mut self.conn)
            .await
            .context("Redis compare-and-delete failed")?;
        if deleted != 1 {
            bail!(
                "Redis lock {} was lost before release (did it expire?)",
                self.key
            );
        }
        Ok(())
    }
}
