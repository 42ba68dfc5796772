//! Finding a lockd cluster's leader, and asking a node for its view.
//!
//! Only the leader serves (docs/protocol.md §11): any other node answers `not_leader`. The
//! benchmark loops connect every client to the leader, as the real client does once it has
//! followed the redirect, so what is measured is the leader's work and not the redirect.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::LineReader;

/// How long one probe of one node may take before the node counts as not answering.
const PROBE_PATIENCE: Duration = Duration::from_secs(2);

/// Sends one request line on a fresh connection and returns the reply, parsed.
pub async fn ask(addr: SocketAddr, request: &str) -> Result<Value> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.write_all(request.as_bytes()).await?;
        stream.write_all(b"\n").await?;
        let mut lines = LineReader::new();
        let line = lines.next_line(&mut stream).await?;
        serde_json::from_slice::<Value>(line).context("a lockd node sent invalid JSON")
    };
    tokio::time::timeout(PROBE_PATIENCE, exchange)
        .await
        .map_err(|_| anyhow!("{addr} did not answer within {PROBE_PATIENCE:?}"))?
}

/// Whether the node at `addr` is the leader and serves a write: it answers a `hello` with
/// success. A hello opens a session, which in cluster mode is always a log entry, so success
/// means the node can commit (a `ping` would not do: a leader may answer it without a log entry
/// once reads skip the log). The probe's session asks for the shortest lease, so the many
/// probes of a failover run leave nothing behind for long.
pub async fn serves(addr: SocketAddr) -> bool {
    let hello = r#"{"id":1,"op":"hello","client":"lockbench-probe","lease_ms":1}"#;
    matches!(ask(addr, hello).await, Ok(reply) if reply["ok"] == true)
}

/// The address among `addrs` of the node that serves, asking each in turn until one does or
/// `patience` has passed.
pub async fn find_leader(addrs: &[SocketAddr], patience: Duration) -> Result<SocketAddr> {
    if addrs.is_empty() {
        bail!("no lockd addresses to look for a leader in");
    }
    let deadline = Instant::now() + patience;
    loop {
        for &addr in addrs {
            if serves(addr).await {
                return Ok(addr);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "no node of {} served within {patience:?} (is a majority running?)",
                comma_list(addrs)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Addresses as `A,B,C`, the form `--server` takes.
pub fn comma_list(addrs: &[SocketAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A node's `cluster_status` result (answered by any node, for itself, with no session).
pub async fn cluster_status(addr: SocketAddr) -> Result<Value> {
    let reply = ask(addr, r#"{"id":1,"op":"cluster_status"}"#).await?;
    if reply["ok"] != true {
        bail!("{addr} refused cluster_status: {reply}");
    }
    Ok(reply)
}
