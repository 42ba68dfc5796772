//! Mutual TLS between the nodes (`--peer-tls-cert`, `--peer-tls-key`, `--peer-tls-ca`): a cluster
//! elects and serves over it, and its peer port refuses a certificate from another CA and a
//! plain-TCP peer, at once and without holding anything up.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lockd::cluster::transport::PeerTransport;
use lockd::cluster::wire;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::json;
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use super::peer_port::{refused_node, says_welcome};
use super::{hello, Cluster};
use crate::support::PATIENCE;

/// The peer CA's certificate and a node certificate it signed (SAN `lockd-peer`), and an
/// intruder's certificate for the same name from a CA of its own, as PEM files.
/// The admin credential of the clusters below.
const ADMIN_TOKEN: &str = "peer-tls-admin-credential";

struct PeerPki {
    dir: tempfile::TempDir,
}

impl PeerPki {
    fn new() -> PeerPki {
        let dir = tempfile::tempdir().unwrap();
        for (ca_name, node_name) in [("ca", "node"), ("foreign-ca", "intruder")] {
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
            std::fs::write(dir.path().join(format!("{ca_name}.pem")), ca.pem()).unwrap();
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["lockd-peer".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            std::fs::write(dir.path().join(format!("{node_name}.pem")), cert.pem()).unwrap();
            std::fs::write(
                dir.path().join(format!("{node_name}.key")),
                key.serialize_pem(),
            )
            .unwrap();
        }
        PeerPki { dir }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// The flags that give a node the peer CA's certificate.
    fn node_flags(&self) -> Vec<String> {
        [
            ("--peer-tls-cert", "node.pem"),
            ("--peer-tls-key", "node.key"),
            ("--peer-tls-ca", "ca.pem"),
        ]
        .into_iter()
        .flat_map(|(flag, file)| [flag.to_owned(), self.path(file).display().to_string()])
        .collect()
    }

    /// A peer's TLS client presenting `cert` (and its key), verifying the node against the
    /// peer CA.
    fn client(&self, cert: &str) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        for ca in CertificateDer::pem_file_iter(self.path("ca.pem")).unwrap() {
            roots.add(ca.unwrap()).unwrap();
        }
        let chain = read_chain(&self.path(&format!("{cert}.pem")));
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{cert}.key"))).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
        TlsConnector::from(Arc::new(config))
    }
}

/// A cluster of `size` nodes with mutual TLS between them, and its certificates.
async fn tls_cluster(size: u64) -> (PeerPki, Cluster) {
    let pki = PeerPki::new();
    // Membership changes need the admin credential.
    let admin_token = pki.path("admin-token");
    std::fs::write(&admin_token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let mut flags = pki.node_flags();
    flags.extend([
        "--admin-token-file".to_owned(),
        admin_token.display().to_string(),
    ]);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let cluster = Cluster::start(size, &flags).await;
    (pki, cluster)
}

fn read_chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Says hello on the peer port at `addr`, over TLS with `tls` or else plain TCP; true if the
/// node welcomes it, false if it closes the connection. Panics if it does neither in time.
async fn welcomed(addr: std::net::SocketAddr, tls: Option<TlsConnector>) -> bool {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let transport = match tls {
        None => PeerTransport::Plain(tcp),
        Some(tls) => {
            let name = ServerName::try_from("lockd-peer").unwrap();
            match tokio::time::timeout(PATIENCE, tls.connect(name, tcp)).await {
                Ok(Ok(stream)) => PeerTransport::Tls(Box::new(stream.into())),
                Ok(Err(_)) => return false,
                Err(_) => panic!("the TLS handshake neither ended nor failed within {PATIENCE:?}"),
            }
        }
    };
    says_welcome(wire::frame_stream(transport), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_over_peer_mutual_tls_elect_serve_and_fail_over() {
    let (_pki, mut cluster) = tls_cluster(3).await;
    let leader = cluster.leader(None).await;
    let mut holder = cluster.connect(leader).await;
    let reply = hello(&mut holder, None).await;
    assert_eq!(reply["ok"], true, "{reply}");
    let token = holder.lock(1, "r", "exclusive").await;
    // The new leader is elected over new TLS connections, and knows the holder.
    cluster.kill(leader);
    let new_leader = cluster.leader(Some(leader)).await;
    let mut observer = cluster.connect(new_leader).await;
    hello(&mut observer, None).await;
    let reply = observer
        .call(json!({"id": 1, "op": "status", "resource": "r"}))
        .await;
    assert_eq!(
        reply["resources"][0]["holders"][0]["token"], token,
        "{reply}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_peer_port_refuses_a_foreign_certificate_and_plain_tcp_at_once() {
    let (pki, cluster) = tls_cluster(1).await;
    cluster.leader(None).await;
    let peer = cluster.specs[0].peer;
    assert!(!welcomed(peer, Some(pki.client("intruder"))).await);
    assert!(!welcomed(peer, None).await);
    // A silent plain connection holds up neither a real peer nor the clients.
    let _silent = TcpStream::connect(peer).await.unwrap();
    assert!(welcomed(peer, Some(pki.client("node"))).await);
    let mut client = cluster.connect(0).await;
    let reply = hello(&mut client, None).await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[test]
fn the_peer_tls_flags_go_together() {
    let stderr = refused_node(&[
        "--peer-listen",
        "127.0.0.1:0",
        "--peer-tls-cert",
        "node.pem",
    ]);
    assert!(
        stderr.contains("missing: --peer-tls-key, --peer-tls-ca"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_node_refuses_a_node_that_does_not_speak_peer_tls() {
    let (_pki, cluster) = tls_cluster(1).await;
    cluster.leader(None).await;
    // Something accepts TCP connections on the new node's peer address, and closes them.
    let impostor = tokio::net::TcpListener::bind(format!("{}.99:0", cluster.net))
        .await
        .unwrap();
    let impostor_addr = impostor.local_addr().unwrap();
    let accepting = tokio::spawn(async move {
        while let Ok((stream, _)) = impostor.accept().await {
            drop(stream);
        }
    });
    let mut conn = cluster.connect(0).await;
    hello(&mut conn, None).await;
    let reply = conn
        .call(json!({"id": 2, "op": "add_node", "node_id": 2,
                     "client": "127.0.0.1:1", "peer": impostor_addr.to_string(),
                     "admin_token": ADMIN_TOKEN}))
        .await;
    assert_eq!(reply["error"]["code"], "bad_request", "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("does not answer as a peer") && message.contains("TLS"),
        "{reply}"
    );
    let status = conn.call(json!({"id": 3, "op": "cluster_status"})).await;
    assert_eq!(status["members"].as_array().unwrap().len(), 1, "{status}");
    accepting.abort();
}
