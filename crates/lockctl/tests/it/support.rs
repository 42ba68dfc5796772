//! Test support: an in-process lockd on its own runtime thread, and `lockctl` runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use lockd::core::TableConfig;
use lockd::server::{AdminOptions, Server as LockServer, ServerConfig};

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// A lockd server on 127.0.0.1:0, stopped (sessions closed) when dropped.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start() -> Server {
        Server::start_with(ServerConfig::default())
    }

    /// A server whose leases may be as short as 100 ms.
    pub fn start_with_short_leases() -> Server {
        Server::start_with(ServerConfig {
            table: TableConfig {
                min_lease: Duration::from_millis(100),
                ..TableConfig::default()
            },
            ..ServerConfig::default()
        })
    }

    pub fn start_with(config: ServerConfig) -> Server {
        Server::start_serving(config, None)
    }

    /// A server that also serves the admin API (lockd --http); its address comes second.
    pub fn start_with_admin(config: ServerConfig) -> (Server, SocketAddr) {
        let (admin_tx, admin_rx) = std::sync::mpsc::channel();
        let server = Server::start_serving(config, Some(admin_tx));
        (server, admin_rx.recv().unwrap())
    }

    fn start_serving(
        config: ServerConfig,
        admin: Option<std::sync::mpsc::Sender<SocketAddr>>,
    ) -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (shutdown_tx, shutdown_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            let data_dir = tempfile::tempdir().unwrap();
            let mut server = LockServer::open(config, data_dir.path()).unwrap();
            runtime.block_on(async move {
                if let Some(admin) = admin {
                    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                    admin.send(listener.local_addr().unwrap()).unwrap();
                    server = server.with_admin(listener, AdminOptions::default());
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                server
                    .run(listener, async {
                        let _ = shutdown_rx.await;
                    })
                    .await;
            });
            drop(data_dir);
        });
        Server {
            addr: addr_rx.recv().unwrap(),
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        }
    }

    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    pub async fn client(&self) -> lockctl::Client {
        lockctl::Client::connect(&self.addr_string()).await.unwrap()
    }

    /// Stops the server now (as if it went away), closing every session.
    pub fn stop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `lockctl` pointed at `addr` through LOCKD_ADDR.
pub fn lockctl(addr: &str, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockctl"));
    command
        .args(args)
        .env("LOCKD_ADDR", addr)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null());
    command
}

/// Runs lockctl to the end on a blocking thread (so the async server and clients go on).
pub async fn run_lockctl(addr: &str, args: &[&str]) -> Output {
    let mut command = lockctl(addr, args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

/// A lockctl running in the background whose stdout is read line by line.
pub struct Running {
    pub child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Running {
    pub fn spawn(addr: &str, args: &[&str]) -> Running {
        Running::from_command(lockctl(addr, args))
    }

    /// Runs `command` (a [`lockctl`] command with more settings).
    pub fn from_command(mut command: Command) -> Running {
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits (up to 10 s) until a stdout line starts with `prefix`.
    pub async fn wait_for_line(&mut self, prefix: &str) {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            while let Ok(line) = self.lines.try_recv() {
                let found = line.starts_with(prefix);
                self.seen.push(line);
                if found {
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line starting with {prefix:?}; saw {:?}",
                self.seen
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for exit; returns the exit code, every stdout line and stderr.
    pub async fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        let mut child = self.child;
        let (status, stderr) = tokio::task::spawn_blocking(move || {
            let status = child.wait().unwrap();
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                std::io::Read::read_to_string(&mut pipe, &mut stderr).unwrap();
            }
            (status, stderr)
        })
        .await
        .unwrap();
        // The reader thread ends at EOF, after the process exits.
        while let Ok(line) = self.lines.recv_timeout(PATIENCE) {
            self.seen.push(line);
        }
        (status.code(), self.seen, stderr)
    }
}

pub fn stdout_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

pub fn stderr_text(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, both signed by
/// it, as PEM files: ca.pem, server.pem, server.key, client.pem, client.key.
pub fn write_test_pki(dir: &std::path::Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    for (name, names) in [
        (
            "server",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        ),
        ("client", vec!["lockctl".to_owned()]),
    ] {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// A lockd serving TLS with the certificates of [`write_test_pki`] in `pki`; with `mutual`, it
/// requires a client certificate signed by the same CA.
pub fn start_tls_server(pki: &std::path::Path, mutual: bool) -> Server {
    let client_ca = pki.join("ca.pem");
    let tls = lockd::tls::server_config(
        &pki.join("server.pem"),
        &pki.join("server.key"),
        mutual.then_some(client_ca.as_path()),
    )
    .unwrap();
    Server::start_with(ServerConfig {
        tls: Some(tls),
        ..ServerConfig::default()
    })
}

/// A session named `deploy@ci-runner-7` that holds `deploy/prod` until dropped.
pub async fn deploy_holder(addr: &str) -> lockctl::Client {
    let holder = lockctl::Client::builder(addr)
        .name("deploy@ci-runner-7")
        .connect()
        .await
        .unwrap();
    holder
        .acquire("deploy/prod", lockctl::LockMode::Exclusive, None)
        .await
        .unwrap();
    holder
}
