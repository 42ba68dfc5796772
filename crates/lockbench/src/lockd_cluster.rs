//! A 3-node lockd cluster of our own on loopback (`--cluster`), for the cluster benchmark and
//! the failover runs.
//!
//! Every node gets a temporary data directory, a client port and a peer port on loopback IPs of
//! the run's own (`free_addresses`), and an admin port. The ports are chosen before any node starts, because `--peers` must name every
//! node's addresses and is the same on all of them (docs/cluster.md); a node that is killed is
//! started again on the same ports and data directory, as an operator would restart it. Node 1
//! bootstraps the cluster. Logs are JSON lines in a file per node (its timestamps are what the
//! failover run reads to see when a node became leader), appended to across restarts.

use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context, Result};

use crate::lockd_process::{read_addresses, status_kib, BENCH_MAX_CONNECTIONS};

/// Nodes in a cluster that lockbench starts: the smallest that survives the loss of one.
pub const CLUSTER_SIZE: usize = 3;

/// One node: its fixed addresses and data directory, and the process while it runs.
#[derive(Debug)]
struct Node {
    id: u64,
    client: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
}

/// Three lockd processes forming one cluster; every node is killed when this is dropped.
#[derive(Debug)]
pub struct LockdCluster {
    binary: PathBuf,
    nodes: Vec<Node>,
    /// `--peers`, the same for every node.
    peers: String,
    /// Flags after lockbench's own, e.g. `--election-timeout-ms 1000`.
    extra_args: Vec<String>,
    /// Holds the data directories and logs until the processes are gone.
    _dir: tempfile::TempDir,
}

impl LockdCluster {
    /// Starts three nodes from `binary`, with `extra_args` after lockbench's flags. Returns once
    /// every node has printed its address; whether a leader serves is [`crate::clients::cluster`]'s
    /// business (it asks the nodes).
    pub fn start(binary: &Path, extra_args: &[String]) -> Result<LockdCluster> {
        if !binary.is_file() {
            bail!(
                "no lockd binary at {} (build it with `cargo build --release --bin lockd`, pass \
                 --lockd-bin, or use --server A,B,C)",
                binary.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("lockbench-cluster-")
            .tempdir()
            .context("cannot create a temporary directory for the cluster")?;
        let addresses = free_addresses(CLUSTER_SIZE)?;
        let nodes: Vec<Node> = (0..CLUSTER_SIZE)
            .map(|index| Node {
                id: index as u64 + 1,
                client: addresses[index].0,
                peer: addresses[index].1,
                data_dir: dir.path().join(format!("node{}", index + 1)),
                log_path: dir.path().join(format!("node{}.log", index + 1)),
                child: None,
            })
            .collect();
        let peers = nodes
            .iter()
            .map(|node| format!("{}={}/{}", node.id, node.client, node.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = LockdCluster {
            binary: binary.to_owned(),
            nodes,
            peers,
            extra_args: extra_args.to_vec(),
            _dir: dir,
        };
        for index in 0..CLUSTER_SIZE {
            cluster.spawn(index)?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let node = &self.nodes[index];
        if node.child.is_some() {
            bail!("node {} is already running", node.id);
        }
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("cannot open {}", node.log_path.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--listen")
            .arg(node.client.to_string())
            .arg("--peer-listen")
            .arg(node.peer.to_string())
            .args(["--node-id", &node.id.to_string()])
            .args(["--peers", &self.peers])
            .arg("--data-dir")
            .arg(&node.data_dir)
            // JSON lines with timestamps; `info` gives the one line per leader change that the
            // failover run reads ("this node is now the leader"), and lockbench's sessions are
            // few enough that their open/close lines cost nothing measurable.
            .args(["--log-format", "json", "--log-level", "info"])
            // As for a single lockd (lockd_process.rs): the limits defend against clients and
            // are not what is measured.
            .args(["--max-connections", BENCH_MAX_CONNECTIONS])
            .args(["--max-connections-per-ip", BENCH_MAX_CONNECTIONS])
            .args(["--http", "127.0.0.1:0"]);
        if node.id == 1 {
            // Initializes the cluster on the first start and does nothing on later ones.
            command.arg("--bootstrap");
        }
        let mut child = command
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.binary.display()))?;
        match read_addresses(&mut child) {
            // The admin port is not used yet; --http is there so the banner is the same as a
            // single lockd's.
            Ok(_) => {
                self.nodes[index].child = Some(child);
                Ok(())
            }
            Err(err) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(err.context(format!(
                    "lockd node {} did not start; its log:\n{}",
                    index + 1,
                    self.log(index)
                )))
            }
        }
    }

    /// SIGKILLs node `index` (0-based) and waits for it to be gone.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        let node = &mut self.nodes[index];
        let mut child = node
            .child
            .take()
            .ok_or_else(|| anyhow!("node {} is not running", node.id))?;
        child.kill().context("cannot kill a lockd node")?;
        child.wait().context("cannot reap a lockd node")?;
        Ok(())
    }

    /// Starts node `index` again, on its old ports and data directory.
    pub fn restart(&mut self, index: usize) -> Result<()> {
        self.spawn(index)
    }

    /// Every node's client address, in node order.
    pub fn client_addrs(&self) -> Vec<SocketAddr> {
        self.nodes.iter().map(|node| node.client).collect()
    }

    /// Every node's pid, while all three run.
    pub fn pids(&self) -> Option<[u32; CLUSTER_SIZE]> {
        let mut pids = [0; CLUSTER_SIZE];
        for (pid, node) in pids.iter_mut().zip(&self.nodes) {
            *pid = node.child.as_ref()?.id();
        }
        Some(pids)
    }

    /// Each node's resident memory now and at its peak since it started (`VmRSS`, `VmHWM`), in
    /// bytes; `None` for a node that is down.
    pub fn memory(&self) -> Vec<Option<(u64, u64)>> {
        self.nodes
            .iter()
            .map(|node| {
                let pid = node.child.as_ref()?.id();
                let rss = status_kib(pid, "VmRSS").ok()?;
                let peak = status_kib(pid, "VmHWM").ok()?;
                Some((rss * 1024, peak * 1024))
            })
            .collect()
    }

    /// Node `index`'s log so far (JSON lines, every start of it).
    pub fn log(&self, index: usize) -> String {
        std::fs::read_to_string(&self.nodes[index].log_path).unwrap_or_default()
    }

    /// The last `lines` lines of every node's log, each under a heading.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut tails = String::new();
        for index in 0..self.nodes.len() {
            let log = self.log(index);
            let all: Vec<&str> = log.lines().collect();
            let from = all.len().saturating_sub(lines);
            tails.push_str(&format!(
                "lockbench: node {}'s log, last lines:\n",
                index + 1
            ));
            for line in &all[from..] {
                tails.push_str(line);
                tails.push('\n');
            }
        }
        tails
    }
}

impl Drop for LockdCluster {
    fn drop(&mut self) {
        // SIGKILL, as for a single lockd: nothing in the temporary directories must survive.
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// A free client and peer address for each of `nodes` nodes, each address on a loopback IP of
/// its own in a random `127.X.Y.0/24`.
///
/// Not 127.0.0.1: a node that is killed and started again (`restart`) binds its old ports
/// again, and on 127.0.0.1 those are ports the kernel also hands out as the source ports of
/// outgoing connections (they were found by binding port 0), so while the node was down any
/// connection on the machine could take one and the restart would fail with "address in use".
/// Connections to these IPs leave from 127.0.0.1, so nothing else ever binds a port on them;
/// and a network no other run picks keeps two runs at once from finding the same port.
/// Every listener is held until all are found, so no port is handed out twice.
fn free_addresses(nodes: usize) -> Result<Vec<(SocketAddr, SocketAddr)>> {
    let net = private_net();
    let bind = |host: usize| {
        TcpListener::bind((format!("{net}.{host}").as_str(), 0))
            .with_context(|| format!("cannot find a free port on {net}.{host}"))
    };
    let listeners = (1..=nodes)
        .map(|id| Ok((bind(10 + id)?, bind(110 + id)?)))
        .collect::<Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|(client, peer)| {
            let address = |listener: &TcpListener| {
                listener.local_addr().context("a bound port has no address")
            };
            Ok((address(client)?, address(peer)?))
        })
        .collect()
}

/// `127.X.Y` with X and Y random, as lockd's own cluster tests pick theirs.
fn private_net() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let random = hasher.finish();
    format!("127.{}.{}", 1 + random % 254, 1 + (random >> 8) % 254)
}

/// The last time a node's log says it became leader, as the log's RFC 3339 timestamp.
pub fn last_leader_line(log: &str) -> Option<String> {
    log.lines()
        .filter(|line| line.contains("this node is now the leader"))
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter_map(|value| value["timestamp"].as_str().map(str::to_owned))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_addresses_are_distinct_and_off_127_0_0_1() {
        let addresses = free_addresses(3).expect("addresses");
        let mut sorted: Vec<SocketAddr> = addresses
            .iter()
            .flat_map(|(client, peer)| [*client, *peer])
            .collect();
        assert!(
            sorted
                .iter()
                .all(|address| address.ip() != std::net::Ipv4Addr::LOCALHOST),
            "{sorted:?}"
        );
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6);
    }

    #[test]
    fn the_last_leader_line_is_found() {
        let log = concat!(
            r#"{"timestamp":"2026-12-04T23:00:00.000001Z","level":"INFO","fields":{"message":"this node is now the leader","term":1}}"#,
            "\n",
            r#"{"timestamp":"2026-12-04T23:00:01.5Z","level":"INFO","fields":{"message":"session opened"}}"#,
            "\n",
            r#"{"timestamp":"2026-12-04T23:00:02.25Z","level":"INFO","fields":{"message":"this node is now the leader","term":3}}"#,
            "\n",
        );
        assert_eq!(
            last_leader_line(log).as_deref(),
            Some("2026-12-04T23:00:02.25Z")
        );
        assert_eq!(last_leader_line("not json\n"), None);
    }
}
