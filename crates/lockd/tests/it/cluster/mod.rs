//! Cluster mode: real lockd processes on loopback addresses of each cluster's own, each node's peer port behind a
//! [`FaultProxy`] so that tests can cut links, with leaders killed and nodes paused on purpose.

mod admin;
mod backup;
mod chaos;
mod failover;
mod idle_poll;
mod membership;
mod metrics;
mod multi;
mod partition;
mod peer_entries;
mod peer_port;
mod peer_tls;
mod reads;
mod resume;
mod safety;
mod snapshots;
mod status;
mod watch;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::{Conn, Lockd, PATIENCE};

/// One node's addresses and data directory, kept across restarts.
pub(super) struct NodeSpec {
    id: u64,
    pub(super) client: SocketAddr,
    pub(super) peer: SocketAddr,
    data_dir: PathBuf,
}

/// A cluster of real lockd processes; `nodes[i]` is `None` while node i+1 is down.
pub(super) struct Cluster {
    pub(super) specs: Vec<NodeSpec>,
    nodes: Vec<Option<Lockd>>,
    /// In front of each node's peer port: every Raft message *to* node i+1 crosses
    /// `proxies[i]`.
    proxies: Vec<FaultProxy>,
    /// The nodes named in --peers; later ones joined with add_node.
    founders: usize,
    peers: String,
    /// The flags every node started with, which a node that joins later gets too.
    flags: Vec<String>,
    /// The cluster's own loopback network (see [`private_net`]).
    pub(super) net: String,
    _dirs: tempfile::TempDir,
}

/// A loopback network of this cluster's own, `127.X.Y.0/24` with random X and Y: nodes bind
/// ports found free a moment earlier, and a port found free on an address that no other test
/// uses cannot be taken in that moment by a cluster of another test running at once.
pub(super) fn private_net() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let random = hasher.finish();
    format!("127.{}.{}", 1 + random % 254, 1 + (random >> 8) % 254)
}

/// Node `id`'s client address on `net`; its peer address is on another host number, so the
/// two ports found free for one node can never be the same one.
pub(super) fn node_addrs(net: &str, id: u64) -> (SocketAddr, SocketAddr) {
    let client = free_addr(&format!("{net}.{}", 10 + id));
    let peer = free_addr(&format!("{net}.{}", 110 + id));
    (client, peer)
}

/// A free port on `ip`, found by binding port 0 and letting it go.
fn free_addr(ip: &str) -> SocketAddr {
    TcpListener::bind((ip, 0))
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

impl Cluster {
    /// Starts `size` nodes, node 1 with --bootstrap, each on its own loopback address.
    pub(super) async fn start(size: u64, extra: &[&str]) -> Cluster {
        let dirs = tempfile::tempdir().expect("a temp dir");
        let net = private_net();
        let specs: Vec<NodeSpec> = (1..=size)
            .map(|id| {
                let (client, peer) = node_addrs(&net, id);
                NodeSpec {
                    id,
                    client,
                    peer,
                    data_dir: dirs.path().join(format!("node{id}")),
                }
            })
            .collect();
        let mut proxies = Vec::new();
        for spec in &specs {
            proxies.push(FaultProxy::start(spec.peer).await);
        }
        let peers = specs
            .iter()
            .zip(&proxies)
            .map(|(spec, proxy)| format!("{}={}/{}", spec.id, spec.client, proxy.addr()))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            specs,
            nodes: Vec::new(),
            proxies,
            founders: size as usize,
            peers,
            flags: extra.iter().map(|flag| (*flag).to_owned()).collect(),
            net,
            _dirs: dirs,
        };
        for index in 0..cluster.specs.len() {
            let node = cluster.spawn(index, extra);
            cluster.nodes.push(Some(node));
        }
        cluster
    }

    fn spawn(&self, index: usize, extra: &[&str]) -> Lockd {
        let spec = &self.specs[index];
        // A node that joins later (add_node) names only itself: the cluster tells it the rest.
        let own = format!("{}={}/{}", spec.id, spec.client, spec.peer);
        let peers = if index < self.founders {
            &self.peers
        } else {
            &own
        };
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockd"));
        command
            .arg("--listen")
            .arg(spec.client.to_string())
            .arg("--data-dir")
            .arg(&spec.data_dir)
            .args(["--node-id", &spec.id.to_string()])
            .arg("--peer-listen")
            .arg(spec.peer.to_string())
            .args(["--peers", peers])
            .args(["--log-level", "warn"])
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit());
        if spec.id == 1 {
            command.arg("--bootstrap");
        }
        // The tests' timing, unless a test sets its own.
        if !extra.contains(&"--election-timeout-ms") {
            command.args(["--election-timeout-ms", "600", "--heartbeat-ms", "150"]);
        }
        Lockd::spawn(&mut command, &spec.data_dir)
    }

    /// Starts one more node, with the cluster's flags and only itself in --peers (the cluster
    /// tells it the rest once it is added).
    pub(super) fn start_joiner(&mut self) -> usize {
        let id = self.specs.len() as u64 + 1;
        let (client, peer) = node_addrs(&self.net, id);
        self.specs.push(NodeSpec {
            id,
            client,
            peer,
            data_dir: self._dirs.path().join(format!("node{id}")),
        });
        let index = self.specs.len() - 1;
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).collect();
        let node = self.spawn(index, &flags);
        self.nodes.push(Some(node));
        index
    }

    pub(super) fn restart(&mut self, index: usize, extra: &[&str]) {
        assert!(self.nodes[index].is_none(), "node {} is running", index + 1);
        let node = self.spawn(index, extra);
        self.nodes[index] = Some(node);
    }

    pub(super) fn kill(&mut self, index: usize) {
        let mut node = self.nodes[index].take().expect("the node runs");
        node.signal_and_wait("KILL");
    }

    /// Waits until a running node answers as leader, other than `not`; returns its index.
    pub(super) async fn leader(&self, not: Option<usize>) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            for (index, node) in self.nodes.iter().enumerate() {
                let Some(node) = node else { continue };
                if Some(index) == not {
                    continue;
                }
                let connect = tokio::net::TcpStream::connect(node.addr);
                let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), connect).await
                else {
                    continue;
                };
                let mut conn = Conn::from_stream(stream);
                conn.send(json!({"id": 1, "op": "ping"})).await;
                if let Ok(Some(reply)) = conn.try_recv(Duration::from_secs(2)).await {
                    if reply["ok"] == true {
                        return index;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader was elected in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (STOP, CONT, ...) to a running node.
    pub(super) fn signal(&self, index: usize, signal: &str) {
        let node = self.nodes[index].as_ref().expect("the node runs");
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &node.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Cuts (or restores) every link into node `index`.
    pub(super) fn set_inbound(&self, index: usize, mode: Mode) {
        self.proxies[index].set_mode(mode);
    }

    pub(super) fn is_running(&self, index: usize) -> bool {
        self.nodes[index].is_some()
    }

    /// Every node's client address, in node order.
    pub(super) fn client_addrs(&self) -> Vec<SocketAddr> {
        self.specs.iter().map(|spec| spec.client).collect()
    }

    /// The admin address of node `index`, for a cluster started with `--http 127.0.0.1:0`: the
    /// node's second stdout line (read once).
    pub(super) fn admin_addr(&mut self, index: usize) -> SocketAddr {
        crate::admin::admin_addr(self.nodes[index].as_mut().expect("the node runs"))
    }

    pub(super) async fn connect(&self, index: usize) -> Conn {
        self.nodes[index]
            .as_ref()
            .expect("the node runs")
            .connect()
            .await
    }
}

/// Says `hello` (request 100), resuming the session that `opened` (the reply to the `hello`
/// that opened it) names, if given: its id and its resume secret.
pub(super) async fn hello(conn: &mut Conn, opened: Option<&Value>) -> Value {
    let mut frame = json!({"id": 100, "op": "hello", "lease_ms": 5_000});
    if let Some(opened) = opened {
        frame["session"] = opened["session"].clone();
        frame["resume_secret"] = opened["resume_secret"].clone();
    }
    conn.call(frame).await
}
