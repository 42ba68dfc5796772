//! The etcd lock that a lockd cluster is compared with: etcd v3's own lock service over gRPC,
//! with the `etcd-client` crate, the way an etcd user takes a lock.
//!
//! Each locker has its own client (one gRPC channel, so one HTTP/2 connection, as each lockd
//! locker has its own TCP connection) and its own lease, granted once: `Lock(name, lease)`
//! returns once the caller owns the lock (etcd queues waiters by the revision of the key it
//! creates under `name`, so contended grants are FIFO as on lockd), and `Unlock(key)` deletes
//! that key. Lock and unlock are each one Raft proposal, like lockd's acquire and release. The
//! lease is what frees the lock of a client that dies, as lockd's session lease does; its TTL
//! is far longer than a run, so no keep-alive traffic is measured (lockd's sessions send none
//! either in a run: any request renews them).
//!
//! gRPC rather than etcd's JSON gateway: the gateway is a proxy inside etcd that turns each
//! HTTP request into a gRPC call to itself, which would charge etcd for a hop its real clients
//! never take. The price is `protoc` at build time (the crate compiles etcd's .proto files),
//! so this client is behind lockbench's `etcd` feature, and scripts/bench-cluster.sh installs
//! protobuf-compiler before building with it.
//!
//! Every locker talks to the leader's endpoint: a follower forwards every proposal to the
//! leader, and lockd's clients talk to its leader, so both sides are measured without a
//! forwarding hop.

use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{Client, ConnectOptions, LockOptions};

use super::Locker;

/// The lease each locker's locks hang on: longer than any run, so it needs no keep-alive.
const LEASE_TTL_S: i64 = 600;

/// A 3-node etcd (or any etcd) to run loops against, by the leader's client endpoint.
#[derive(Debug, Clone)]
pub struct EtcdTarget {
    /// `http://host:port` of the member that leads.
    leader: String,
}

impl EtcdTarget {
    /// Asks every endpoint (`host:port` or a URL) for its status and keeps the leader's.
    pub async fn connect(endpoints: &[String]) -> Result<EtcdTarget> {
        let urls: Vec<String> = endpoints.iter().map(|e| url(e)).collect();
        let mut last_error = None;
        for endpoint in &urls {
            match member_and_leader(endpoint).await {
                Ok((member, leader)) if member == leader && leader != 0 => {
                    return Ok(EtcdTarget {
                        leader: endpoint.clone(),
                    });
                }
                Ok(_) => {}
                Err(err) => last_error = Some(err),
            }
        }
        match last_error {
            Some(err) => Err(err.context(format!("no etcd leader among {}", urls.join(",")))),
            None => bail!("no etcd leader among {}", urls.join(",")),
        }
    }

    /// The leader's endpoint.
    pub fn leader(&self) -> &str {
        &self.leader
    }

    async fn client(&self) -> Result<Client> {
        Client::connect([&self.leader], Some(options()))
            .await
            .with_context(|| format!("cannot connect to etcd at {}", self.leader))
    }

    /// A locker on lock `name` with a connection and a lease of its own.
    pub async fn locker(&self, name: String) -> Result<EtcdLocker> {
        let mut client = self.client().await?;
        let lease = client
            .lease_grant(LEASE_TTL_S, None)
            .await
            .context("etcd lease grant failed")?
            .id();
        Ok(EtcdLocker {
            client,
            name,
            lease,
            key: None,
        })
    }

    /// A reader of key `name` (for the `reads` mode), with its own connection; the key is
    /// written once so that every get finds a value.
    pub async fn reader(&self, name: String, write: bool) -> Result<EtcdReader> {
        let mut client = self.client().await?;
        client
            .put(name.as_bytes(), "0", None)
            .await
            .context("etcd put failed")?;
        Ok(EtcdReader {
            client,
            name,
            write,
            written: 0,
        })
    }
}

/// Connection options: generous timeouts, since a two-core machine running three servers and
/// the client can stall for a while, and a stall is slow, not broken.
fn options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(10))
        .with_timeout(Duration::from_secs(30))
}

/// `host:port` as an `http://` URL; a URL is kept as it is.
fn url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

/// The member id of the etcd at `endpoint` and the leader's member id, from its status.
async fn member_and_leader(endpoint: &str) -> Result<(u64, u64)> {
    let mut client = Client::connect([endpoint], Some(options()))
        .await
        .with_context(|| format!("cannot connect to etcd at {endpoint}"))?;
    let status = client
        .status()
        .await
        .with_context(|| format!("etcd at {endpoint} did not answer status"))?;
    let member = status
        .header()
        .ok_or_else(|| anyhow!("etcd at {endpoint} sent a status without a header"))?
        .member_id();
    Ok((member, status.leader()))
}

/// One connection's etcd lock on one name.
pub struct EtcdLocker {
    client: Client,
    name: String,
    lease: i64,
    /// The key that `Lock` returned, while the lock is held.
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for EtcdLocker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdLocker")
            .field("name", &self.name)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl Locker for EtcdLocker {
    async fn acquire(&mut self) -> Result<()> {
        let response = self
            .client
            .lock(
                self.name.as_bytes(),
                Some(LockOptions::new().with_lease(self.lease)),
            )
            .await
            .context("etcd Lock failed")?;
        self.key = Some(response.key().to_vec());
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        let key = self
            .key
            .take()
            .ok_or_else(|| anyhow!("release without a held etcd lock"))?;
        self.client
            .unlock(key)
            .await
            .context("etcd Unlock failed")?;
        Ok(())
    }
}

/// One connection reading (linearizable `Range`, etcd's default) or writing (`Put`) its own
/// key: the etcd side of the `reads` mode. Its `acquire` is the operation and its `release`
/// does nothing, so the loop's pairs count single operations.
pub struct EtcdReader {
    client: Client,
    name: String,
    write: bool,
    written: u64,
}

impl std::fmt::Debug for EtcdReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdReader")
            .field("name", &self.name)
            .field("write", &self.write)
            .finish_non_exhaustive()
    }
}

impl Locker for EtcdReader {
    async fn acquire(&mut self) -> Result<()> {
        if self.write {
            self.written += 1;
            self.client
                .put(self.name.as_bytes(), self.written.to_string(), None)
                .await
                .context("etcd Put failed")?;
        } else {
            let response = self
                .client
                .get(self.name.as_bytes(), None)
                .await
                .context("etcd Range failed")?;
            if response.kvs().is_empty() {
                bail!("etcd lost key {}", self.name);
            }
        }
        Ok(())
    }

    async fn release(&mut self) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::url;

    #[test]
    fn endpoints_become_urls() {
        assert_eq!(url("127.0.0.1:2379"), "http://127.0.0.1:2379");
        assert_eq!(url("https://e:2379"), "https://e:2379");
    }
}
