//! No lockctl command hangs on a frozen or black-holed server: a connect timeout and a reply
//! timeout end it, each with its own exit code and a hint that fits (issue 18, point 1).
//!
//! The frozen server is a bare listener that accepts and never answers, or a link blackholed by
//! the fault proxy after the session opened. The black-holed connect is a listener whose accept
//! queue is full: Linux then drops the SYNs of new connections, so `connect` waits, on loopback
//! and without any timing luck.

use std::net::TcpListener as StdListener;
use std::time::{Duration, Instant};

use lockctl::{Client, ClientError};

use crate::fault_proxy::{FaultProxy, Mode};
use crate::support::{run_lockctl, stderr_text, Server, PATIENCE};

/// `lockctl`'s exit code when lockd cannot be reached.
const EXIT_UNREACHABLE: i32 = 4;
/// `lockctl`'s exit code when lockd does not answer.
const EXIT_NO_REPLY: i32 = 5;

/// A server that accepts every connection and never says a word; dropped with the test.
struct SilentServer {
    addr: String,
}

impl SilentServer {
    fn start() -> SilentServer {
        let listener = StdListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        std::thread::spawn(move || {
            // Keeps every connection open, unread, until the test process ends.
            let mut open = Vec::new();
            for stream in listener.incoming().flatten() {
                open.push(stream);
            }
        });
        SilentServer { addr }
    }
}

/// A listener whose accept queue is full, and the one connection that fills it.
fn full_listener() -> (tokio::net::TcpListener, std::net::TcpStream) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    // Backlog 0: Linux queues one connection, and drops the SYNs of any more.
    let listener = socket.listen(0).unwrap();
    let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    (listener, filler)
}

#[tokio::test]
async fn run_and_status_give_up_on_a_server_that_never_answers() {
    let silent = SilentServer::start();
    for args in [
        &[
            "--reply-timeout",
            "0.3",
            "run",
            "-n",
            "-E",
            "0",
            "cron/report",
            "--",
            "echo",
            "ran",
        ][..],
        &["--reply-timeout", "0.3", "status"],
    ] {
        let started = Instant::now();
        let output = run_lockctl(&silent.addr, args).await;
        let took = started.elapsed();
        assert_eq!(
            output.status.code(),
            Some(EXIT_NO_REPLY),
            "{args:?}: {output:?}"
        );
        assert!(took < PATIENCE, "{args:?} took {took:?}");
        assert!(output.stdout.is_empty(), "{output:?}");
        let stderr = stderr_text(&output);
        assert!(
            stderr.contains("did not answer hello within 0.3 s")
                && stderr.contains(&format!("the lockd at {}", silent.addr)),
            "{stderr}"
        );
        assert!(
            stderr.contains("frozen"),
            "the hint names the likely cause: {stderr}"
        );
        assert!(
            !stderr.contains("Start it with"),
            "lockd is running: {stderr}"
        );
    }
}

#[tokio::test]
async fn the_reply_timeout_has_a_default() {
    // LOCKD_REPLY_TIMEOUT sets it like the flag; without either, the default applies (10 s,
    // too long to wait for here, so the environment variable stands in for the flag).
    let silent = SilentServer::start();
    let mut command = crate::support::lockctl(&silent.addr, &["status"]);
    command.env("LOCKD_REPLY_TIMEOUT", "0.2");
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(EXIT_NO_REPLY), "{output:?}");
    let help = run_lockctl(&silent.addr, &["--help"]).await;
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--reply-timeout") && help.contains("[default: 10]"),
        "{help}"
    );
    assert!(
        help.contains("--connect-timeout") && help.contains("[default: 5]"),
        "{help}"
    );
}

#[tokio::test]
async fn a_connect_that_is_never_accepted_is_unreachable() {
    let (listener, _filler) = full_listener();
    let addr = listener.local_addr().unwrap().to_string();
    let started = Instant::now();
    let output = run_lockctl(&addr, &["--connect-timeout", "0.3", "status"]).await;
    assert!(started.elapsed() < PATIENCE);
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE), "{output:?}");
    let stderr = stderr_text(&output);
    assert!(
        stderr.contains("did not accept the connection within 0.3 s"),
        "{stderr}"
    );
    assert!(
        stderr.contains("firewall"),
        "the hint fits a timeout: {stderr}"
    );
    assert!(!stderr.contains("Start it with"), "{stderr}");
}

#[tokio::test]
async fn a_refused_connection_is_unreachable_and_says_how_to_start_lockd() {
    let port = StdListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is gone: nothing listens on the port now.
    let addr = format!("127.0.0.1:{port}");
    let output = run_lockctl(&addr, &["status"]).await;
    assert_eq!(output.status.code(), Some(EXIT_UNREACHABLE), "{output:?}");
    let stderr = stderr_text(&output);
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(
        stderr.contains(&format!("Start it with `lockd --listen {addr}`")),
        "{stderr}"
    );
}

#[tokio::test]
async fn exit_codes_for_unreachable_and_silent_servers_are_in_help() {
    let output = run_lockctl("127.0.0.1:1", &["--help"]).await;
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("4 lockd unreachable"), "{help}");
    assert!(help.contains("5 lockd not answering"), "{help}");
    let output = run_lockctl("127.0.0.1:1", &["run", "--help"]).await;
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(
        help.contains("  4                 lockd unreachable"),
        "{help}"
    );
    assert!(
        help.contains("  5                 lockd not answering"),
        "{help}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_to_a_server_that_froze_after_hello_fails_with_no_reply() {
    let server = Server::start();
    let proxy = FaultProxy::start(server.addr).await;
    let client = Client::builder(&proxy.addr().to_string())
        .reply_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    proxy.set_mode(Mode::Blackhole);
    let started = Instant::now();
    let err = client.status(None).await.unwrap_err();
    assert!(started.elapsed() < PATIENCE);
    assert!(
        matches!(&err, ClientError::NoReply { what, waited } if what == "status" && *waited == Duration::from_millis(300)),
        "{err:?}"
    );
    // An acquire that never hears a word (no grant, no place in line) fails the same way.
    let mut call = client
        .start_acquire("r", lockctl::LockMode::Exclusive, None)
        .unwrap();
    let lockctl::AcquireProgress::Done(Err(err)) = call.next().await else {
        panic!("a silent server cannot grant");
    };
    assert!(matches!(err, ClientError::NoReply { .. }), "{err:?}");
}

#[tokio::test]
async fn a_connect_timeout_in_the_library_is_its_own_error() {
    let (listener, _filler) = full_listener();
    let err = Client::builder(&listener.local_addr().unwrap().to_string())
        .connect_timeout(Duration::from_millis(200))
        .connect()
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Connect {
                kind: lockctl::ConnectFailure::TimedOut,
                ..
            }
        ),
        "{err:?}"
    );
}
