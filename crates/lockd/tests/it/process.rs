//! The process around the server: start-up line, signals, data directory, bad flags.

use std::process::Stdio;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::support::{lockd_command, wait_with_patience, Deadline, Lockd, PATIENCE};

#[tokio::test]
async fn sigterm_and_sigint_close_sessions_and_exit_zero() {
    for signal in ["TERM", "INT"] {
        let mut lockd = Lockd::start(&[]);
        assert_eq!(
            lockd.scheme, "tcp",
            "plain TCP says so in the start-up line"
        );
        let mut conn = lockd.connect().await;
        conn.lock(1, "f", "exclusive").await;
        let status = lockd.signal_and_wait(signal);
        assert!(status.success(), "SIG{signal}: {status:?}");
        assert_eq!(conn.try_recv(PATIENCE).await, Ok(None), "closed");
    }
}

#[tokio::test]
async fn a_second_lockd_on_the_same_data_dir_exits_at_once() {
    let first = Lockd::start(&[]);
    let output = lockd_command(&first.data_dir, &[])
        .output()
        .expect("lockd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("in use by another lockd"), "{stderr}");
    assert!(
        stderr.contains(&*first.data_dir.to_string_lossy()),
        "{stderr}"
    );
    // The first one is unaffected.
    let mut conn = first.connect().await;
    assert_eq!(conn.call(json!({"id": 1, "op": "ping"})).await["ok"], true);
}

#[test]
fn a_data_dir_that_cannot_be_opened_stops_lockd_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let output = lockd_command(&file, &[]).output().expect("lockd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot open data directory"), "{stderr}");
    assert!(stderr.contains(&*file.to_string_lossy()), "{stderr}");
}

#[test]
fn a_store_file_that_is_not_ours_stops_lockd_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join(lockd::store::DB_FILE);
    std::fs::write(&store, "someone else's file").unwrap();
    let output = lockd_command(dir.path(), &[]).output().expect("lockd runs");
    assert!(!output.status.success());
    assert!(output.stdout.is_empty(), "it never said it started");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&*store.to_string_lossy()), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(&store).unwrap(),
        "someone else's file"
    );
}

#[tokio::test]
async fn a_burst_of_connections_beyond_the_old_backlog_is_served() {
    let lockd = Lockd::start(&["--listen-backlog", "1024"]);
    // Opened concurrently: more than the backlog of 128 that TcpListener::bind gives. Every
    // one must be served (no timing is asserted).
    let burst: Vec<_> = (0..300)
        .map(|_| tokio::spawn(tokio::net::TcpStream::connect(lockd.addr)))
        .collect();
    let mut streams = Vec::new();
    for connect in burst {
        streams.push(connect.await.unwrap().unwrap());
    }
    let ping = b"{\"id\":1,\"op\":\"ping\"}\n";
    for stream in &mut streams {
        stream.write_all(ping).await.unwrap();
    }
    for stream in streams {
        let mut reply = String::new();
        tokio::io::BufReader::new(stream)
            .read_line(&mut reply)
            .await
            .unwrap();
        assert_eq!(reply, "{\"id\":1,\"ok\":true}\n");
    }
}

#[test]
fn an_address_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    // lockd_command listens on port 0, so this one is built by hand.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lockd"))
        .args(["--listen", &addr, "--data-dir"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("lockd runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

#[test]
fn inconsistent_lease_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = lockd_command(
        dir.path(),
        &["--min-lease-ms", "5000", "--default-lease-ms", "1000"],
    )
    .stderr(Stdio::piped())
    .stdout(Stdio::null())
    .spawn()
    .unwrap();
    let status = wait_with_patience(&mut child);
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("--min-lease-ms"), "{stderr}");
}

#[test]
fn sigterm_the_moment_the_start_up_line_appears_is_a_clean_stop() {
    // Supervisors signal as soon as they see the line; the handler must already be there.
    for _ in 0..5 {
        let mut lockd = Lockd::start(&[]);
        let status = lockd.signal_and_wait("TERM");
        assert!(status.success(), "{status:?}");
    }
}

/// The process's threads named as Tokio names its workers (and its blocking threads, which a
/// lockd starts only for its first commit).
fn worker_threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == "tokio-rt-worker")
        .count()
}

#[tokio::test]
async fn worker_threads_sets_the_number_of_runtime_threads() {
    let lockd = Lockd::start(&["--worker-threads", "9"]);
    let mut conn = lockd.connect().await;
    let token = conn.lock(1, "r", "exclusive").await;
    let release = json!({"id": 2, "op": "release", "resource": "r", "token": token});
    assert_eq!(conn.call(release).await["ok"], true);
    // A new thread names itself once it first runs, which on a loaded machine can be later.
    let deadline = Deadline::new("lockd's 9 worker threads to be named tokio-rt-worker");
    loop {
        let named = worker_threads(lockd.child.id());
        if named == 9 {
            break;
        }
        deadline.tick(format!("{named} named")).await;
    }

    // One thread: the main thread runs everything, and commits still work (they run on the
    // blocking pool, whose threads bear the same name, so count before the first write).
    let lockd = Lockd::start(&["--worker-threads", "1"]);
    let mut conn = lockd.connect().await;
    let token = conn.lock(1, "r", "exclusive").await;
    assert_eq!(worker_threads(lockd.child.id()), 0);
    let write = json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"});
    assert_eq!(conn.call(write).await["ok"], true);

    let dir = tempfile::tempdir().unwrap();
    let output = lockd_command(dir.path(), &["--worker-threads", "0"])
        .output()
        .expect("lockd runs");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("--worker-threads"));
}
