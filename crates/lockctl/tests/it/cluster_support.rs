//! Test support: a three-node lockd cluster in this process, each node on its own Tokio
//! runtime in its own thread, on 127.0.0.1 ports, with short Raft timings.
//!
//! Killing a node drops its runtime (every task aborted, every socket closed, as when the
//! process dies) and then its data directory's lock. A killed node can be restarted on the
//! same addresses and data directory. Each cluster binds a loopback network of its own
//! (`127.X.Y.0/24`), so no other test can take a killed node's ports before it comes back.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lockd::cluster::node::ClusterOptions;
use lockd::cluster::types::LockdNode;
use lockd::data_dir::DataDir;
use lockd::server::{Server, ServerConfig};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// How long a test waits for a leader to be elected.
const ELECTION_PATIENCE: Duration = Duration::from_secs(10);

/// Every test node's admin credential (`--admin-token-file`), which membership changes need.
pub const ADMIN_TOKEN: &str = "lockctl-tests-admin-credential";

/// One node: its addresses, what it runs with, and the thread that runs it until killed.
struct Node {
    client: SocketAddr,
    peer: SocketAddr,
    options: NodeOptions,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Three cluster nodes; see the module docs.
pub struct Cluster {
    nodes: Vec<Node>,
    _dirs: tempfile::TempDir,
}

impl Cluster {
    /// Starts three nodes serving with `config`, node 1 bootstrapping the cluster.
    pub fn start(config: ServerConfig) -> Cluster {
        let dirs = tempfile::tempdir().unwrap();
        let net = private_net();
        let bind = |host: String| {
            let listener = std::net::TcpListener::bind((host.as_str(), 0)).unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        };
        let listeners: Vec<_> = (1..=3)
            .map(|id| {
                (
                    bind(format!("{net}.{id}")),
                    bind(format!("{net}.{}", 100 + id)),
                )
            })
            .collect();
        let peers: BTreeMap<u64, LockdNode> = listeners
            .iter()
            .zip(1..)
            .map(|((client, peer), id)| {
                let node = LockdNode {
                    client: client.local_addr().unwrap().to_string(),
                    peer: peer.local_addr().unwrap().to_string(),
                };
                (id, node)
            })
            .collect();
        let nodes = listeners
            .into_iter()
            .zip(1..)
            .map(|((client, peer), id)| {
                let options = NodeOptions {
                    id,
                    peers: peers.clone(),
                    config: config.clone(),
                    data_dir: dirs.path().join(format!("node{id}")),
                };
                let mut node = Node {
                    client: client.local_addr().unwrap(),
                    peer: peer.local_addr().unwrap(),
                    options,
                    kill: None,
                    thread: None,
                };
                node.run(client, peer);
                node
            })
            .collect();
        Cluster { nodes, _dirs: dirs }
    }

    /// Starts node `index` again after [`kill`](Self::kill), on its addresses and data.
    pub fn restart(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        assert!(node.thread.is_none(), "node {} runs", index + 1);
        let bind = |addr: SocketAddr| {
            let listener = std::net::TcpListener::bind(addr).unwrap();
            listener.set_nonblocking(true).unwrap();
            listener
        };
        let (client, peer) = (bind(node.client), bind(node.peer));
        node.run(client, peer);
    }

    /// Every node's client address, separated by commas, in node order.
    pub fn addrs(&self) -> String {
        self.addrs_in_order(&[0, 1, 2])
    }

    /// The client addresses of the nodes at `indexes`, in that order, separated by commas.
    pub fn addrs_in_order(&self, indexes: &[usize]) -> String {
        indexes
            .iter()
            .map(|&index| self.nodes[index].client.to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until a live node other than those in `not` serves as leader; returns its index.
    pub async fn leader(&self, not: &[usize]) -> usize {
        let deadline = Instant::now() + ELECTION_PATIENCE;
        loop {
            for (index, node) in self.nodes.iter().enumerate() {
                if node.kill.is_some() && !not.contains(&index) && serves(node.client).await {
                    return index;
                }
            }
            assert!(Instant::now() < deadline, "no leader was elected in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills node `index` as if its process died.
    pub fn kill(&mut self, index: usize) {
        let node = &mut self.nodes[index];
        drop(node.kill.take());
        if let Some(thread) = node.thread.take() {
            // Joining blocks while the runtime shuts down; let the test's runtime go on.
            tokio::task::block_in_place(|| thread.join().unwrap());
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            drop(node.kill.take());
        }
        for node in &mut self.nodes {
            if let Some(thread) = node.thread.take() {
                let _ = thread.join();
            }
        }
    }
}

impl Node {
    fn run(&mut self, client: std::net::TcpListener, peer: std::net::TcpListener) {
        let (kill, killed) = std::sync::mpsc::channel();
        let options = self.options.clone();
        self.thread = Some(std::thread::spawn(move || {
            options.run(client, peer, killed)
        }));
        self.kill = Some(kill);
    }
}

/// A loopback network of one cluster's own, `127.X.Y`.
fn private_net() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    let random = hasher.finish();
    format!("127.{}.{}", 1 + random % 254, 1 + (random >> 8) % 254)
}

/// What a node's thread needs to run it.
#[derive(Clone)]
struct NodeOptions {
    id: u64,
    peers: BTreeMap<u64, LockdNode>,
    config: ServerConfig,
    data_dir: PathBuf,
}

impl NodeOptions {
    /// Runs the node until `killed` says so (or its sender is dropped), then drops the
    /// runtime and the data directory's lock.
    fn run(
        self,
        client: std::net::TcpListener,
        peer: std::net::TcpListener,
        killed: std::sync::mpsc::Receiver<()>,
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        std::fs::create_dir_all(&self.data_dir).unwrap();
        let data_dir = DataDir::open(&self.data_dir).unwrap();
        runtime.block_on(async {
            let options = ClusterOptions {
                node_id: self.id,
                peer_listener: tokio::net::TcpListener::from_std(peer).unwrap(),
                peers: self.peers,
                bootstrap: self.id == 1,
                election_timeout: Duration::from_millis(500),
                heartbeat: Duration::from_millis(100),
                snapshot_every: 1_000,
                credentials: Default::default(),
                peer_limits: Default::default(),
            };
            let config = ServerConfig {
                admin_token: Some(ADMIN_TOKEN.into()),
                ..self.config
            };
            let server = Server::open_cluster(config, data_dir.path(), options)
                .await
                .unwrap();
            let listener = tokio::net::TcpListener::from_std(client).unwrap();
            tokio::spawn(server.run(listener, std::future::pending()));
        });
        let _ = killed.recv();
        drop(runtime);
        drop(data_dir);
    }
}

/// Whether the node at `addr` answers a ping itself (only the leader does).
async fn serves(addr: SocketAddr) -> bool {
    let attempt = async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (read_half, mut write_half) = stream.into_split();
        write_half
            .write_all(b"{\"id\":1,\"op\":\"ping\"}\n")
            .await
            .ok()?;
        let mut line = String::new();
        BufReader::new(read_half).read_line(&mut line).await.ok()?;
        let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
        Some(reply["ok"] == true)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}
