//! TLS through the real binary: a TLS client is served, a plain one is not, and with
//! --tls-client-ca only clients with a certificate from that CA get in.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::support::{lockd_command, Lockd, PATIENCE};

/// PEM files for a test CA, a server certificate for localhost/127.0.0.1, and a client
/// certificate, all written under one directory.
pub struct TestPki {
    pub dir: tempfile::TempDir,
}

impl TestPki {
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        for (name, sans) in [
            ("server", vec!["localhost", "127.0.0.1"]),
            ("client", vec!["client"]),
        ] {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(sans.into_iter().map(str::to_owned).collect::<Vec<_>>())
                    .unwrap();
            let cert = params.signed_by(&key, &ca).unwrap();
            std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
            std::fs::write(dir.path().join(format!("{name}.key")), key.serialize_pem()).unwrap();
        }
        TestPki { dir }
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}

async fn tls_call(
    addr: std::net::SocketAddr,
    pki: &TestPki,
    with_client_cert: bool,
) -> Result<Value, String> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(pki.path("ca.pem")).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = if with_client_cert {
        let chain = CertificateDer::pem_file_iter(pki.path("client.pem"))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(pki.path("client.key")).unwrap();
        builder.with_client_auth_cert(chain, key).unwrap()
    } else {
        builder.with_no_client_auth()
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let stream = TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|err| err.to_string())?;
    let (read, mut write) = tokio::io::split(stream);
    write
        .write_all(b"{\"id\": 1, \"op\": \"ping\"}\n")
        .await
        .map_err(|err| err.to_string())?;
    let mut line = String::new();
    let read = tokio::time::timeout(PATIENCE, BufReader::new(read).read_line(&mut line))
        .await
        .map_err(|_| "no reply".to_owned())?
        .map_err(|err| err.to_string())?;
    if read == 0 {
        return Err("closed".to_owned());
    }
    serde_json::from_str(&line).map_err(|err| err.to_string())
}

fn start_tls(data: &Path, pki: &TestPki, mutual: bool) -> Lockd {
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let mut flags = vec![
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    if mutual {
        flags.extend(["--tls-client-ca", ca.to_str().unwrap()]);
    }
    Lockd::spawn(
        lockd_command(data, &flags).stderr(std::process::Stdio::inherit()),
        data,
    )
}

#[tokio::test]
async fn tls_clients_are_served_and_plain_ones_are_not() {
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let lockd = start_tls(data.path(), &pki, false);
    assert_eq!(lockd.scheme, "tls", "the start-up line says what to speak");
    assert_eq!(
        tls_call(lockd.addr, &pki, false).await.unwrap(),
        json!({"id": 1, "ok": true})
    );
    let mut plain = tokio::net::TcpStream::connect(lockd.addr).await.unwrap();
    plain
        .write_all(b"{\"id\": 1, \"op\": \"ping\"}\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer);
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    assert!(
        !String::from_utf8_lossy(&answer).contains("\"ok\":true"),
        "a plain-text client must not be served by a TLS server"
    );
}

#[tokio::test]
async fn mutual_tls_needs_a_client_certificate_from_the_ca() {
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let lockd = start_tls(data.path(), &pki, true);
    assert_eq!(
        tls_call(lockd.addr, &pki, true).await.unwrap(),
        json!({"id": 1, "ok": true})
    );
    let refused = tls_call(lockd.addr, &pki, false).await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
}

#[test]
fn unusable_tls_files_stop_lockd_with_a_clear_message() {
    let pki = TestPki::new();
    let data = tempfile::tempdir().unwrap();
    let output = lockd_command(
        data.path(),
        &[
            "--tls-cert",
            pki.path("server.pem").to_str().unwrap(),
            "--tls-key",
            pki.path("client.key").to_str().unwrap(),
        ],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-cert and --tls-key"), "{stderr}");
}

/// SIGHUP, or `POST /v1/reload` with the admin credential, puts a new certificate in force for
/// the connections made after it, without a restart; a bad PEM keeps the one in force.
#[tokio::test]
async fn a_reload_serves_a_new_certificate_and_a_bad_one_changes_nothing() {
    let (old, new) = (TestPki::new(), TestPki::new());
    let live = tempfile::tempdir().unwrap();
    let install = |pki: &TestPki| {
        for file in ["server.pem", "server.key"] {
            std::fs::copy(pki.path(file), live.path().join(file)).unwrap();
        }
    };
    install(&old);
    let admin_token = live.path().join("admin-token");
    std::fs::write(&admin_token, "reload-admin\n").unwrap();
    let data = tempfile::tempdir().unwrap();
    let (cert, key) = (
        live.path().join("server.pem"),
        live.path().join("server.key"),
    );
    let flags = [
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--http",
        "127.0.0.1:0",
        "--admin-token-file",
        admin_token.to_str().unwrap(),
    ];
    let mut lockd = Lockd::spawn(
        lockd_command(data.path(), &flags).stderr(std::process::Stdio::inherit()),
        data.path(),
    );
    let admin = crate::admin::admin_addr(&mut lockd);
    assert!(tls_call(lockd.addr, &old, false).await.is_ok());

    install(&new);
    lockd.signal("HUP");
    let deadline = crate::support::Deadline::new("the new certificate to be served");
    loop {
        match tls_call(lockd.addr, &new, false).await {
            Ok(reply) => {
                assert_eq!(reply, json!({"id": 1, "ok": true}));
                break;
            }
            Err(err) => deadline.tick(err).await,
        }
    }
    assert!(
        tls_call(lockd.addr, &old, false).await.is_err(),
        "the old certificate is gone"
    );

    std::fs::write(&cert, "not a certificate\n").unwrap();
    let bearer = [("Authorization", "Bearer reload-admin")];
    let refused = crate::support::http(admin, "POST", "/v1/reload", &bearer).await;
    assert_eq!(refused.status, 422, "{}", refused.body);
    assert!(refused.body.contains("--tls-cert"), "{}", refused.body);
    let wrong = [("Authorization", "Bearer guess")];
    let unauthorized = crate::support::http(admin, "POST", "/v1/reload", &wrong).await;
    assert_eq!(unauthorized.status, 401, "{}", unauthorized.body);
    assert_eq!(
        tls_call(lockd.addr, &new, false).await.unwrap(),
        json!({"id": 1, "ok": true}),
        "a failed reload keeps the certificate in force"
    );
}
