//! What a cluster node lets in: its peer port belongs to the nodes (a client's secret does not
//! open it, a stranger cannot make it hold big frames, a flood of strangers cannot keep the
//! members from electing a leader, and without a secret of its own it is not offered beyond
//! loopback); a connection that speaks for no session does not stay open for
//! good; and no request is too long to fit a log entry.

use futures_util::{SinkExt, StreamExt};
use lockd::cluster::wire::{self, Hello, PeerStream, Welcome, PROTOCOL_VERSION};
use tokio::net::TcpStream;

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use super::{node_addrs, private_net, Cluster};
use crate::support::{lockd_command, Deadline, Lockd, PATIENCE};

/// Says hello on `node`'s peer port with `secret`; true if the node welcomes it.
async fn welcomed(peer: std::net::SocketAddr, secret: &str) -> bool {
    let stream = TcpStream::connect(peer)
        .await
        .expect("the peer port accepts");
    says_welcome(wire::frame_stream(stream), Some(secret)).await
}

/// Says hello with `secret` on a peer connection; true if the node welcomes it, false if it
/// closes the connection. Fails the test if it does neither within [`PATIENCE`].
pub(super) async fn says_welcome(mut frames: PeerStream, secret: Option<&str>) -> bool {
    let hello = wire::encode(&Hello {
        version: PROTOCOL_VERSION,
        secret: secret.map(str::to_owned),
    })
    .unwrap();
    if frames.send(hello).await.is_err() {
        // Closed before the hello could be sent: refused.
        return false;
    }
    match tokio::time::timeout(PATIENCE, frames.next()).await {
        Ok(Some(Ok(bytes))) => {
            let welcome: Welcome = wire::decode(&bytes).expect("a welcome");
            welcome.version == PROTOCOL_VERSION
        }
        // Closed without a word: refused.
        Ok(Some(Err(_)) | None) => false,
        Err(_) => panic!("the peer port neither answered nor closed within {PATIENCE:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_secret_does_not_open_the_peer_port() {
    let dir = tempfile::tempdir().unwrap();
    let client_secret = dir.path().join("client-secret");
    let peer_secret = dir.path().join("peer-secret");
    for (file, secret) in [
        (&client_secret, "the-clients-secret\n"),
        (&peer_secret, "the-nodes-secret\n"),
    ] {
        std::fs::write(file, secret).unwrap();
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let cluster = Cluster::start(
        3,
        &[
            "--auth-token-file",
            client_secret.to_str().unwrap(),
            "--peer-secret-file",
            peer_secret.to_str().unwrap(),
        ],
    )
    .await;
    // Node 1's peer port is bound once the node prints its first line (Cluster::start waited).
    let peer = cluster.specs[0].peer;
    assert!(!welcomed(peer, "the-clients-secret").await);
    assert!(welcomed(peer, "the-nodes-secret").await);
}

#[test]
fn a_peer_port_beyond_loopback_needs_a_secret_or_a_trusted_network() {
    let stderr = refused_node(&["--peer-listen", "0.0.0.0:0"]);
    assert!(
        stderr.contains("--peer-secret-file") && stderr.contains("--peer-network-trusted"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_announcing_a_huge_frame_before_its_hello_is_cut_off_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = node_addrs(&private_net(), 1);
    let data = dir.path().join("data");
    let log = dir.path().join("lockd.log");
    let peers = format!("1={client}/{peer}");
    let mut command = lockd_command(
        &data,
        &[
            "--node-id",
            "1",
            "--peer-listen",
            &peer.to_string(),
            "--peers",
            &peers,
            "--bootstrap",
        ],
    );
    command.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut lockd = Lockd::spawn(&mut command, &data);

    // A length prefix for a 64 MiB frame, then a little of it, and never a hello.
    let mut stranger = TcpStream::connect(peer).await.unwrap();
    stranger
        .write_all(&(64u32 << 20).to_be_bytes())
        .await
        .unwrap();
    stranger.write_all(&[b'x'; 1024]).await.unwrap();
    // Refused for the frame's size, not for staying silent until the handshake timeout.
    let deadline = Deadline::new("lockd to log why it closed the stranger's peer connection");
    let reason = loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if let Some(line) = text.lines().find(|line| line.contains("peer connection")) {
            break line.to_owned();
        }
        deadline.tick(&text).await;
    };
    assert!(
        reason.contains("at the handshake") && reason.contains("bad frame"),
        "{reason}"
    );
    assert!(lockd.signal_and_wait("TERM").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_speaks_for_no_session_is_closed_when_silent_for_the_lease() {
    let cluster = Cluster::start(3, &["--default-lease-ms", "1000"]).await;
    let leader = cluster.leader(None).await;
    for node in [leader, (leader + 1) % 3] {
        let mut stranger = cluster.connect(node).await;
        // One junk line (it is answered, and it counts as a first frame), then silence.
        stranger
            .send_raw(b"{\"id\":1,\"op\":\"no-such-op\"}\n")
            .await;
        let reply = stranger.recv().await;
        assert_eq!(reply["error"]["code"], "unknown_op", "{reply}");
        stranger.send_raw(b"{\"id\":2,\"op\":\"pi").await;
        let mut closed = false;
        let deadline = Deadline::new(format!("node {} to close a silent stranger", node + 1));
        while !closed {
            match stranger
                .try_recv(std::time::Duration::from_millis(200))
                .await
            {
                Ok(None) => closed = true,
                Ok(Some(frame)) => panic!("unexpected frame {frame}"),
                Err(()) => deadline.tick("the connection still open").await,
            }
        }
    }
}

#[test]
fn a_cluster_node_refuses_requests_too_long_for_a_log_entry() {
    let stderr = refused_node(&[
        "--peer-listen",
        "127.0.0.1:0",
        "--max-frame-bytes",
        "100000000",
    ]);
    assert!(stderr.contains("--max-frame-bytes"), "{stderr}");
}

/// Starts a one-node cluster with `flags` that must refuse to start; returns what it said.
pub(super) fn refused_node(flags: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--node-id", "1", "--peers", "1=127.0.0.1:1/127.0.0.1:2"];
    args.extend_from_slice(flags);
    let output = lockd_command(dir.path(), &args).output().unwrap();
    assert!(!output.status.success(), "lockd started with {flags:?}");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The general slots the flooded nodes get (`--peer-max-connections`), small so that a flood of
/// a few sockets fills them.
const FLOODED_SLOTS: usize = 16;
/// Addresses the flood comes from, each as many sockets as a stranger may open at once.
const FLOOD_ADDRESSES: u8 = 4;
/// `--peer-max-handshakes-per-ip` of the flooded nodes.
const FLOOD_PER_ADDRESS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_strangers_on_the_peer_port_does_not_stop_an_election() {
    let slots = FLOODED_SLOTS.to_string();
    let per_address = FLOOD_PER_ADDRESS.to_string();
    let mut cluster = Cluster::start(
        3,
        &[
            "--peer-max-connections",
            &slots,
            "--peer-max-handshakes-per-ip",
            &per_address,
        ],
    )
    .await;
    let old_leader = cluster.leader(None).await;
    // The members reach each other through the test's proxies, from 127.0.0.1; the strangers
    // come from addresses of the cluster's own network that no member has.
    let flood_stop = tokio_util::sync::CancellationToken::new();
    let mut floods = Vec::new();
    for node in (0..3).filter(|&node| node != old_leader) {
        let target = cluster.specs[node].peer;
        for host in 0..FLOOD_ADDRESSES {
            let ip: std::net::IpAddr = format!("{}.{}", cluster.net, 200 + host).parse().unwrap();
            for _ in 0..FLOOD_PER_ADDRESS {
                floods.push(tokio::spawn(silent_stranger(
                    ip,
                    target,
                    flood_stop.clone(),
                )));
            }
        }
    }
    let probe: std::net::IpAddr = format!("{}.250", cluster.net).parse().unwrap();
    for node in (0..3).filter(|&node| node != old_leader) {
        let target = cluster.specs[node].peer;
        let deadline = Deadline::new(format!(
            "the flood to fill node {}'s peer port (a stranger's hello refused)",
            node + 1
        ));
        while stranger_welcomed(probe, target).await {
            deadline.tick("a stranger still welcomed").await;
        }
    }

    let killed_at = std::time::Instant::now();
    cluster.kill(old_leader);
    let new_leader = cluster.leader(Some(old_leader)).await;
    let elected_in = killed_at.elapsed();
    let mut client = cluster.connect(new_leader).await;
    let hello = super::hello(&mut client, None).await;
    assert_eq!(hello["ok"], true, "{hello}");
    let reply = client
        .call(serde_json::json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    eprintln!(
        "a new leader served {elapsed:?} after the old one was killed, under a peer-port flood",
        elapsed = elected_in
    );
    flood_stop.cancel();
    for flood in floods {
        flood.await.unwrap();
    }
}

/// Keeps one silent connection from `ip` open to `target` until `stop`: whenever the node closes
/// it, opens another, at once if the node had let it in (it timed out at the handshake), after
/// a pause if the node refused it outright, so that refusals do not turn into a busy loop.
async fn silent_stranger(
    ip: std::net::IpAddr,
    target: std::net::SocketAddr,
    stop: tokio_util::sync::CancellationToken,
) {
    const REFUSED_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);
    const PAUSE_AFTER_REFUSAL: std::time::Duration = std::time::Duration::from_millis(200);
    while !stop.is_cancelled() {
        let opened = std::time::Instant::now();
        if let Ok(mut stream) = connect_from(ip, target).await {
            let mut byte = [0u8; 1];
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tokio::io::AsyncReadExt::read(&mut stream, &mut byte) => {}
            }
        }
        if opened.elapsed() < REFUSED_WITHIN {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(PAUSE_AFTER_REFUSAL) => {}
            }
        }
    }
}

/// Says hello on `target`'s peer port from `ip` (no secret); true if it is welcomed.
async fn stranger_welcomed(ip: std::net::IpAddr, target: std::net::SocketAddr) -> bool {
    match connect_from(ip, target).await {
        Ok(stream) => says_welcome(wire::frame_stream(stream), None).await,
        Err(_) => false,
    }
}

async fn connect_from(
    ip: std::net::IpAddr,
    target: std::net::SocketAddr,
) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(std::net::SocketAddr::new(ip, 0))?;
    socket.connect(target).await
}
