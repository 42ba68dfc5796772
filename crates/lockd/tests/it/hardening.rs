//! Hostile and broken clients: authentication, connection caps, silent and half-open
//! connections, clients that stop reading, and per-session limits.

use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::{error_code, lockd_command, Conn, Deadline, Lockd, PATIENCE};

const SECRET: &str = "correct horse battery staple";

fn start_with_secret() -> (Lockd, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, format!("{SECRET}\n")).unwrap();
    let log = dir.path().join("lockd.log");
    let data = dir.path().join("data");
    let mut command = lockd_command(
        &data,
        &[
            "--auth-token-file",
            secret.to_str().unwrap(),
            "--log-level",
            "trace",
        ],
    );
    command.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    (Lockd::spawn(&mut command, &data), dir, log)
}

#[tokio::test]
async fn authentication_is_required_and_the_secret_is_never_logged() {
    let (mut lockd, _dir, log) = start_with_secret();
    let mut stranger = lockd.connect().await;
    let refused = stranger
        .call(json!({"id": 1, "op": "acquire", "resource": "f"}))
        .await;
    assert_eq!(error_code(&refused), "unauthorized");
    assert_eq!(refused["id"], 1);
    let refused = stranger.call(json!({"id": 2, "op": "status"})).await;
    assert_eq!(error_code(&refused), "unauthorized");
    // A wrong secret is refused and the connection closed.
    let wrong = stranger
        .call(json!({"id": 3, "op": "hello", "auth": "guess"}))
        .await;
    assert_eq!(error_code(&wrong), "unauthorized");
    assert_eq!(stranger.try_recv(PATIENCE).await, Ok(None));

    let mut friend = lockd.connect().await;
    let hello = friend
        .call(json!({"id": 1, "op": "hello", "auth": SECRET}))
        .await;
    assert_eq!(hello["ok"], true, "{hello}");
    friend.lock(2, "f", "exclusive").await;

    assert!(lockd.signal_and_wait("TERM").success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("wrong or missing auth token"),
        "the refusal is logged"
    );
    assert!(
        !log.contains(SECRET) && !log.contains("guess"),
        "a secret leaked into the log"
    );
}

/// A new client secret takes effect at SIGHUP for new sessions; a session that authenticated
/// with the old one keeps its connection and its locks.
#[tokio::test]
async fn a_reloaded_secret_admits_new_sessions_and_keeps_the_old_ones() {
    let (lockd, dir, _log) = start_with_secret();
    let mut friend = lockd.connect().await;
    let hello = friend
        .call(json!({"id": 1, "op": "hello", "auth": SECRET}))
        .await;
    assert_eq!(hello["ok"], true, "{hello}");
    let token = friend.lock(2, "f", "exclusive").await;

    std::fs::write(dir.path().join("secret"), "a brand new secret\n").unwrap();
    lockd.signal("HUP");
    let deadline = Deadline::new("the new secret to be in force");
    loop {
        let mut newcomer = lockd.connect().await;
        let hello = newcomer
            .call(json!({"id": 1, "op": "hello", "auth": "a brand new secret"}))
            .await;
        if hello["ok"] == true {
            break;
        }
        deadline.tick(hello).await;
    }
    let mut stale = lockd.connect().await;
    let refused = stale
        .call(json!({"id": 1, "op": "hello", "auth": SECRET}))
        .await;
    assert_eq!(error_code(&refused), "unauthorized", "{refused}");

    let valid = friend
        .call(json!({"id": 3, "op": "validate", "resource": "f", "token": token}))
        .await;
    assert_eq!(
        valid["valid"], true,
        "the old session keeps its lock: {valid}"
    );
}

/// Before a client has authenticated, its lines may only be as long as a `hello`: a stranger
/// cannot make lockd buffer a megabyte per connection while the first-frame timeout runs.
#[tokio::test]
async fn a_stranger_cannot_send_long_lines_before_authenticating() {
    let (lockd, _dir, _log) = start_with_secret();
    let mut stranger = lockd.connect().await;
    // No newline: the old server kept buffering up to --max-frame-bytes, silently.
    stranger.send_raw(&[b'x'; 64 * 1024]).await;
    let refused = stranger.recv().await;
    assert_eq!(error_code(&refused), "frame_too_large", "{refused}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("--max-unauthenticated-frame-bytes"),
        "{refused}"
    );
    assert_eq!(
        stranger.try_recv(PATIENCE).await,
        Ok(None),
        "a stranger's oversized first frame closes its connection"
    );

    // Once authenticated, the whole --max-frame-bytes applies again.
    let mut friend = lockd.connect().await;
    let hello = friend
        .call(json!({"id": 1, "op": "hello", "auth": SECRET}))
        .await;
    assert_eq!(hello["ok"], true, "{hello}");
    let long = json!({"id": 2, "op": "ping", "padding": "p".repeat(64 * 1024)});
    let reply = friend.call(long).await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn connections_over_the_caps_are_refused_with_a_reason() {
    let lockd = Lockd::start(&["--max-connections", "3", "--max-connections-per-ip", "2"]);
    let mut first = lockd.connect().await;
    let second = lockd.connect().await;
    let mut third = lockd.connect().await;
    let refused = third.recv().await;
    assert_eq!(error_code(&refused), "limit_exceeded");
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-connections-per-ip"));
    assert_eq!(third.try_recv(PATIENCE).await, Ok(None));

    // Another address on the loopback network is another client.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(lockd.addr).await.unwrap();
    let mut other_ip = Conn::from_stream(stream);
    assert_eq!(
        other_ip.call(json!({"id": 1, "op": "ping"})).await["ok"],
        true
    );
    let mut fourth = lockd.connect().await;
    let refused = fourth.recv().await;
    assert!(refused["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-connections"));

    // Places come back when connections close.
    drop(second);
    assert_eq!(first.call(json!({"id": 1, "op": "ping"})).await["ok"], true);
    let deadline = Deadline::new("a new connection to get the place `second` freed");
    loop {
        let mut conn = lockd.connect().await;
        conn.send(json!({"id": 1, "op": "ping"})).await;
        let reply = conn.recv().await;
        if reply["ok"] == true {
            break;
        }
        deadline.tick(format!("refused: {reply}")).await;
    }
}

#[tokio::test]
async fn a_half_line_is_closed_after_the_first_frame_timeout_without_slowing_others() {
    let lockd = Lockd::start(&["--first-frame-timeout-ms", "300"]);
    let mut slow = lockd.connect().await;
    slow.send_raw(b"{\"id\": 1, \"op\": \"pi").await;
    let mut silent = lockd.connect().await;
    // Meanwhile others are served at once.
    let mut busy = lockd.connect().await;
    for id in 0..20 {
        assert_eq!(busy.call(json!({"id": id, "op": "ping"})).await["ok"], true);
    }
    for conn in [&mut slow, &mut silent] {
        let closed = conn.recv().await;
        assert_eq!(error_code(&closed), "limit_exceeded");
        assert!(closed["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--first-frame-timeout-ms"));
        assert_eq!(conn.try_recv(PATIENCE).await, Ok(None));
    }
    // Only the first frame is timed: after it, the lease is the idle limit.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(busy.call(json!({"id": 99, "op": "ping"})).await["ok"], true);
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_its_locks_freed() {
    let lockd = Lockd::start(&["--write-timeout-ms", "300", "--max-value-bytes", "262144"]);
    let mut hog = lockd.connect().await;
    let token = hog.lock(1, "big", "exclusive").await;
    let value = "x".repeat(256 * 1024);
    let write = json!({"id": 2, "op": "write", "resource": "big", "token": token, "value": value});
    assert_eq!(hog.call(write).await["ok"], true);
    // Ask for 16 MiB of replies, four times what the kernel buffers of a stalled loopback
    // connection hold, and never read them. (More only makes lockd build replies for longer
    // before its writes stall: 50 MiB took over 5 s on a loaded machine.)
    let read = json!({"id": 3, "op": "read", "resource": "big", "token": token}).to_string() + "\n";
    let mut batch = String::new();
    for _ in 0..64 {
        batch.push_str(&read);
    }
    let (reader, mut writer) = hog.into_split();
    writer.write_all(batch.as_bytes()).await.unwrap();

    // The acquire's timeout only makes a failing run end with a reply that says so.
    let mut other = lockd.connect().await;
    let timeout_ms = PATIENCE.as_millis() as u64;
    other
        .send(json!({"id": 1, "op": "acquire", "resource": "big", "timeout_ms": timeout_ms}))
        .await;
    let mut granted = other.recv().await;
    if granted.get("event").is_some() {
        granted = other
            .try_recv(2 * PATIENCE)
            .await
            .expect("the acquire is answered within its timeout")
            .expect("the connection stays open");
    }
    assert_eq!(
        granted["ok"], true,
        "the hog was dropped and its lock freed: {granted}"
    );
    drop(reader);
}

#[tokio::test]
async fn an_address_that_keeps_failing_authentication_is_refused_for_a_while() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "right").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let lockd = Lockd::start(&[
        "--auth-token-file",
        secret.to_str().unwrap(),
        "--max-auth-failures-per-minute",
        "3",
    ]);
    // From 127.0.0.1: three wrong guesses, each answered and closed.
    for guess in ["wrong", "Right", ""] {
        let mut conn = lockd.connect().await;
        let reply = conn
            .call(json!({"id": 1, "op": "hello", "auth": guess}))
            .await;
        assert_eq!(error_code(&reply), "unauthorized", "{reply}");
        assert_eq!(conn.try_recv(PATIENCE).await, Ok(None));
    }
    // The fourth connection from that address is refused before it can guess again.
    let mut refused = lockd.connect().await;
    let reply = refused.recv().await;
    assert_eq!(error_code(&reply), "limit_exceeded", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--max-auth-failures-per-minute"),
        "{reply}"
    );
    // Another address is not affected.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let stream = socket.connect(lockd.addr).await.unwrap();
    let mut other = Conn::from_stream(stream);
    let reply = other
        .call(json!({"id": 1, "op": "hello", "auth": "right"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
}

#[tokio::test]
async fn client_names_are_short_and_printable() {
    let lockd = Lockd::start(&["--max-client-name-bytes", "16"]);
    let mut conn = lockd.connect().await;
    let long = conn
        .call(json!({"id": 1, "op": "hello", "client": "x".repeat(17)}))
        .await;
    assert_eq!(error_code(&long), "bad_request", "{long}");
    let message = long["error"]["message"].as_str().unwrap();
    assert!(message.contains("--max-client-name-bytes"), "{message}");
    let forged = conn
        .call(json!({"id": 2, "op": "hello", "client": "ok\nFORGED line"}))
        .await;
    assert_eq!(error_code(&forged), "bad_request", "{forged}");
    // The connection stays usable, and a name within the limit is taken.
    let fine = conn
        .call(json!({"id": 3, "op": "hello", "client": "deploy@ci-7"}))
        .await;
    assert_eq!(fine["ok"], true, "{fine}");
}

#[tokio::test]
async fn per_session_limits_come_from_flags() {
    let lockd = Lockd::start(&[
        "--max-waits-per-session",
        "1",
        "--max-locks-per-session",
        "2",
    ]);
    let mut holder = lockd.connect().await;
    holder.lock(1, "a", "exclusive").await;
    holder.lock(2, "b", "exclusive").await;
    let mut conn = lockd.connect().await;
    conn.send(json!({"id": 1, "op": "acquire", "resource": "a"}))
        .await;
    assert_eq!(conn.recv().await["event"], "queued");
    let second_wait = conn
        .call(json!({"id": 2, "op": "acquire", "resource": "b"}))
        .await;
    assert_eq!(error_code(&second_wait), "limit_exceeded");
    assert!(second_wait["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-waits-per-session"));
    let third = holder
        .call(json!({"id": 3, "op": "acquire", "resource": "c"}))
        .await;
    assert_eq!(error_code(&third), "limit_exceeded");
}

#[tokio::test]
async fn an_unauthenticated_client_cannot_keep_its_session_alive_with_junk() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let lockd = Lockd::start(&[
        "--auth-token-file",
        secret.to_str().unwrap(),
        "--default-lease-ms",
        "300",
        "--min-lease-ms",
        "100",
    ]);
    let mut stranger = lockd.connect().await;
    let deadline = Deadline::new("lockd to close the junk-sending stranger after its 300 ms lease");
    loop {
        stranger.send_raw(b"{\"id\": 1, \"op\": \"ping\"}\n").await;
        match stranger.try_recv(Duration::from_millis(100)).await {
            Ok(None) => break,
            Ok(Some(reply)) => assert_eq!(error_code(&reply), "unauthorized"),
            Err(()) => {}
        }
        deadline.tick("still open").await;
    }
}

#[test]
fn waits_must_stay_below_the_in_flight_limit() {
    let dir = tempfile::tempdir().unwrap();
    let output = lockd_command(
        dir.path(),
        &["--max-waits-per-session", "64", "--max-in-flight", "64"],
    )
    .output()
    .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--max-in-flight"), "{stderr}");
}
