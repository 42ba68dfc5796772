//! Reads one number from lockd's Prometheus `/metrics`: how many store commits it has made.
//!
//! Every commit is one redb transaction with `Durability::Immediate`, so one fsync round: the
//! `writes` mode divides writes by commits to show group commit at work. A plain HTTP/1.0 GET
//! over a TCP stream is enough for one local scrape and needs no HTTP client crate.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The histogram of commit durations; its `_count` is the number of commits.
const COMMITS_METRIC: &str = "lockd_store_commit_seconds_count";

/// How long one scrape may take.
const SCRAPE_PATIENCE: Duration = Duration::from_secs(10);

/// The commits of one lockd, read from its admin API.
#[derive(Debug, Clone, Copy)]
pub struct StoreCommits {
    admin: SocketAddr,
}

impl StoreCommits {
    /// Reads from the admin API at `admin` (lockd's `--http`).
    pub fn new(admin: SocketAddr) -> StoreCommits {
        StoreCommits { admin }
    }

    /// Commits made so far.
    pub async fn read(&self) -> Result<u64> {
        let body = tokio::time::timeout(SCRAPE_PATIENCE, scrape(self.admin))
            .await
            .map_err(|_| anyhow!("lockd's /metrics did not answer within {SCRAPE_PATIENCE:?}"))??;
        commits_in(&body)
    }
}

async fn scrape(admin: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect(admin)
        .await
        .with_context(|| format!("cannot connect to lockd's admin API at {admin}"))?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: lockd\r\n\r\n")
        .await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    String::from_utf8(response).context("lockd's /metrics is not UTF-8")
}

/// The commit count in a `/metrics` response.
fn commits_in(body: &str) -> Result<u64> {
    body.lines()
        .find_map(|line| line.strip_prefix(COMMITS_METRIC)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|count| count as u64)
        .ok_or_else(|| anyhow!("no {COMMITS_METRIC} in lockd's /metrics"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_line_is_found_among_the_others() {
        let body = "HTTP/1.0 200 OK\r\n\r\n# TYPE lockd_store_commit_seconds histogram\n\
                    lockd_store_commit_seconds_sum 0.5\n\
                    lockd_store_commit_seconds_count 42\n\
                    lockd_store_commit_errors_total 0\n";
        assert_eq!(commits_in(body).expect("found"), 42);
        assert!(commits_in("HTTP/1.0 404 Not Found\r\n\r\n").is_err());
    }
}
