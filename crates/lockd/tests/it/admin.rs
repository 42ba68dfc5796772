//! The admin HTTP API of `lockd --http`: probes, Prometheus metrics after real lock traffic,
//! `/v1/locks` against the `status` op, forced release (off by default, then with a token),
//! deadlocks, readiness on a stuck disk, JSON logs with the session span, and the dashboard's
//! files.

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Condvar, Mutex};

use lockd::server::{AdminOptions, Server, ServerConfig};
use lockd::store::{CommitBatch, RedbStore, Store, StoreError};
use serde_json::{json, Value};
use tokio::net::TcpStream;

use crate::support::{error_code, http, lockd_command, Conn, Deadline, Lockd, PATIENCE};

/// Frees a [`StuckStore`] when dropped.
struct Unstick(Arc<(Mutex<bool>, Condvar)>);

impl Drop for Unstick {
    fn drop(&mut self) {
        *self
            .0
             .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = false;
        self.0 .1.notify_all();
    }
}

/// Starts lockd with `--http 127.0.0.1:0` and returns it with the admin address it printed on
/// its second stdout line.
pub fn start_with_admin(flags: &[&str]) -> (Lockd, SocketAddr) {
    let mut all = vec!["--http", "127.0.0.1:0"];
    all.extend_from_slice(flags);
    let mut lockd = Lockd::start(&all);
    let addr = admin_addr(&mut lockd);
    (lockd, addr)
}

pub fn admin_addr(lockd: &mut Lockd) -> SocketAddr {
    let line = lockd.next_stdout_line();
    line.trim()
        .strip_prefix("Admin HTTP listening on http://")
        .unwrap_or_else(|| panic!("unexpected second line {line:?}"))
        .parse()
        .expect("a socket address")
}

/// A connection whose local address (its peer address as lockd sees it) is known.
pub async fn connect(lockd: &Lockd) -> (Conn, SocketAddr) {
    let stream = TcpStream::connect(lockd.addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    (Conn::from_stream(stream), local)
}

/// Says hello with a client name and returns the session id.
pub async fn hello(conn: &mut Conn, client: &str) -> u64 {
    let reply = conn
        .call(json!({"id": 0, "op": "hello", "client": client}))
        .await;
    reply["session"].as_u64().expect("a session id")
}

async fn get(addr: SocketAddr, path: &str) -> crate::support::HttpReply {
    http(addr, "GET", path, &[]).await
}

/// The value of one sample line in Prometheus text, e.g. `lockd_grants_total{mode="shared"}`.
pub fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
        .parse()
        .expect("a number")
}

#[tokio::test]
async fn without_http_there_is_no_second_line_and_with_it_the_probes_answer() {
    let (_lockd, admin) = start_with_admin(&[]);
    let live = get(admin, "/healthz").await;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"));
    let ready = get(admin, "/readyz").await;
    assert_eq!((ready.status, ready.body.as_str()), (200, "ready\n"));

    // Without --http, stdout has nothing after the first line: the banner is one write, so a
    // second line would already be in the pipe when lockd dies.
    let mut plain = Lockd::start(&[]);
    plain.child.kill().unwrap();
    plain.child.wait().unwrap();
    assert_eq!(plain.next_stdout_line(), "");
}

#[tokio::test]
async fn metrics_count_lock_traffic_by_mode_reason_and_error_code() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    let token = a.lock(1, "x", "exclusive").await;
    let busy = b
        .call(json!({"id": 1, "op": "acquire", "resource": "x", "mode": "shared", "timeout_ms": 0}))
        .await;
    assert_eq!(error_code(&busy), "timeout");
    b.send(json!({"id": 2, "op": "acquire", "resource": "x", "mode": "shared"}))
        .await;
    assert_eq!(b.recv().await["event"], "queued");
    let released = a
        .call(json!({"id": 2, "op": "release", "resource": "x", "token": token}))
        .await;
    assert_eq!(released["ok"], true);
    assert_eq!(b.recv().await["ok"], true, "b is granted x");
    let wrong = b
        .call(json!({"id": 3, "op": "release", "resource": "x", "token": 999}))
        .await;
    assert_eq!(error_code(&wrong), "not_held");
    let y = a.lock(3, "y", "exclusive").await;
    let wrote = a
        .call(json!({"id": 4, "op": "write", "resource": "y", "token": y, "value": "v"}))
        .await;
    assert_eq!(wrote["ok"], true);

    let reply = get(admin, "/metrics").await;
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let m = &reply.body;
    for (series, value) in [
        ("lockd_grants_total{mode=\"exclusive\"}", 2.0),
        ("lockd_grants_total{mode=\"shared\"}", 1.0),
        ("lockd_timeouts_total{mode=\"shared\"}", 1.0),
        (
            "lockd_releases_total{mode=\"exclusive\",reason=\"release\"}",
            1.0,
        ),
        ("lockd_errors_total{code=\"timeout\"}", 1.0),
        ("lockd_errors_total{code=\"not_held\"}", 1.0),
        ("lockd_request_seconds_count{op=\"acquire\"}", 4.0),
        ("lockd_request_seconds_count{op=\"release\"}", 2.0),
        ("lockd_wait_seconds_count{mode=\"shared\"}", 1.0),
        ("lockd_hold_seconds_count{mode=\"exclusive\"}", 1.0),
        ("lockd_store_commit_seconds_count", 1.0),
        ("lockd_sessions", 2.0),
        ("lockd_connections", 2.0),
        ("lockd_connections_accepted_total", 2.0),
        ("lockd_holders{mode=\"shared\"}", 1.0),
        ("lockd_holders{mode=\"exclusive\"}", 1.0),
        ("lockd_waiters{mode=\"exclusive\"}", 0.0),
        ("lockd_busy_resources", 2.0),
    ] {
        assert_eq!(sample(m, series), value, "{series}");
    }
    assert!(m.contains("# TYPE lockd_wait_seconds histogram"), "{m}");
    assert!(sample(m, "lockd_oldest_hold_seconds") >= 0.0);

    // A client that leaves frees its lock: counted as a disconnect. The driver counts the
    // release and the accept loop's task lowers the connection gauge after the connection's
    // task has finished: two tasks, in no fixed order, so wait for both.
    drop(b);
    let deadline = Deadline::new(
        "b's shared hold to be counted as released by a disconnect, and lockd_connections to be 1",
    );
    loop {
        let m = get(admin, "/metrics").await.body;
        let freed = sample(
            &m,
            "lockd_releases_total{mode=\"shared\",reason=\"disconnect\"}",
        );
        let connections = sample(&m, "lockd_connections");
        assert!(freed <= 1.0, "one hold was freed, counted {freed} times");
        assert!(
            connections >= 1.0,
            "a is still connected, yet lockd_connections is {connections}"
        );
        if (freed, connections) == (1.0, 1.0) {
            break;
        }
        deadline
            .tick(format!(
                "released by disconnect {freed}, lockd_connections {connections}"
            ))
            .await;
    }
}

#[tokio::test]
async fn v1_locks_is_paged_by_name_with_a_cursor_and_refuses_bad_pages() {
    let (lockd, admin) = start_with_admin(&["--max-status-limit", "3"]);
    let mut holder = lockd.connect().await;
    for (id, resource) in (1..).zip(["a", "b", "c", "d", "e"]) {
        holder.lock(id, resource, "exclusive").await;
    }
    let names = |page: &Value| -> Vec<String> {
        let resources = page["resources"].as_array().expect("resources");
        resources
            .iter()
            .map(|r| r["resource"].as_str().unwrap().to_owned())
            .collect()
    };
    // No limit: the default page, cut to the server's largest; `matching` counts every page.
    let first = get(admin, "/v1/locks").await.json();
    assert_eq!(names(&first), ["a", "b", "c"]);
    assert_eq!(
        (&first["next"], &first["matching"]),
        (&json!("c"), &json!(5))
    );
    let rest = get(admin, "/v1/locks?limit=3&after=c").await.json();
    assert_eq!(names(&rest), ["d", "e"]);
    assert_eq!(rest["next"], Value::Null);
    let hot = get(admin, "/v1/locks?sort=hot&limit=1").await.json();
    assert_eq!(hot["next"], Value::Null, "hot order has no cursor");
    for bad in [
        "/v1/locks?limit=0",
        "/v1/locks?limit=4",
        "/v1/locks?limit=-1",
        "/v1/locks?after=",
        "/v1/locks?sort=hot&after=a",
    ] {
        let reply = get(admin, bad).await;
        assert_eq!(reply.status, 400, "{bad}: {}", reply.body);
        assert!(reply.json()["error"].is_string(), "{bad}: {}", reply.body);
    }
}

#[tokio::test]
async fn v1_locks_shows_holders_and_queues_with_client_names_and_peers() {
    let (lockd, admin) = start_with_admin(&[]);
    let (mut a, a_addr) = connect(&lockd).await;
    let (mut b, b_addr) = connect(&lockd).await;
    let (mut c, c_addr) = connect(&lockd).await;
    let a_session = hello(&mut a, "deploy@web-1").await;
    let b_session = hello(&mut b, "backup").await;
    let token = a.lock(1, "jobs/nightly", "exclusive").await;
    b.send(json!({"id": 1, "op": "acquire", "resource": "jobs/nightly"}))
        .await;
    assert_eq!(b.recv().await["position"], 1);
    // c never says hello: its client is null.
    c.send(json!({"id": 1, "op": "acquire", "resource": "jobs/nightly", "mode": "shared"}))
        .await;
    assert_eq!(c.recv().await["position"], 2);
    a.lock(2, "other", "shared").await;

    let reply = get(admin, "/v1/locks").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    let all = reply.json();
    assert_eq!(all["matching"], 2);
    assert_eq!(
        all["totals"],
        json!({"busy_resources": 2, "delayed_resources": 0, "holders": 2, "waiters": 2, "sessions": 3, "watches": 0})
    );
    // Name order by default, as the `status` op.
    let names: Vec<&str> = all["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["resource"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["jobs/nightly", "other"]);

    let entry = &all["resources"][0];
    let holder = &entry["holders"][0];
    assert_eq!(holder["session"], a_session);
    assert_eq!(holder["client"], "deploy@web-1");
    assert_eq!(holder["peer"], a_addr.to_string());
    assert_eq!(holder["mode"], "exclusive");
    assert_eq!(holder["token"], token);
    assert!(holder["held_ms"].is_u64());
    let waiters = entry["waiters"].as_array().unwrap();
    assert_eq!(waiters.len(), 2);
    assert_eq!(waiters[0]["position"], 1);
    assert_eq!(waiters[0]["session"], b_session);
    assert_eq!(waiters[0]["client"], "backup");
    assert_eq!(waiters[0]["peer"], b_addr.to_string());
    assert_eq!(waiters[0]["mode"], "exclusive");
    assert!(waiters[0]["waited_ms"].is_u64());
    assert_eq!(waiters[1]["position"], 2);
    assert_eq!(waiters[1]["client"], Value::Null);
    assert_eq!(waiters[1]["peer"], c_addr.to_string());
    assert_eq!(waiters[1]["mode"], "shared");

    // The same facts as the `status` op.
    let status = a
        .call(json!({"id": 9, "op": "status", "resource": "jobs/nightly"}))
        .await;
    let from_status = &status["resources"][0];
    assert_eq!(from_status["holders"][0]["token"], holder["token"]);
    assert_eq!(from_status["waiters"][0]["session"], waiters[0]["session"]);
    assert_eq!(from_status["waiters"][1]["session"], waiters[1]["session"]);

    // One resource, by its name with or without its slash escaped.
    for path in ["/v1/locks/jobs/nightly", "/v1/locks/jobs%2Fnightly"] {
        let one = get(admin, path).await;
        assert_eq!(one.status, 200, "{path}");
        let one = one.json();
        assert_eq!(one["resource"], "jobs/nightly");
        assert_eq!(one["holders"][0]["client"], "deploy@web-1");
        assert_eq!(one["waiters"].as_array().unwrap().len(), 2);
    }
    // Every valid name is a lock: an idle one is free, not missing.
    let idle = get(admin, "/v1/locks/never-used").await;
    assert_eq!(idle.status, 200);
    assert_eq!(
        idle.json(),
        json!({"resource": "never-used", "holders": [], "waiters": []})
    );
    // An invalid name is the client's mistake; a path that is no endpoint is not found.
    let invalid = get(admin, "/v1/locks/two%20words").await;
    assert_eq!(invalid.status, 400);
    assert!(invalid.json()["error"]
        .as_str()
        .unwrap()
        .contains("invalid resource name"));
    assert_eq!(get(admin, "/v1/lock/jobs").await.status, 404);
    assert_eq!(get(admin, "/v1/locks/").await.status, 404);

    // Hot first, filtered, limited.
    let hot = get(admin, "/v1/locks?sort=hot&limit=1").await.json();
    assert_eq!(hot["matching"], 2);
    assert_eq!(hot["resources"].as_array().unwrap().len(), 1);
    assert_eq!(hot["resources"][0]["resource"], "jobs/nightly");
    let filtered = get(admin, "/v1/locks?q=BACKUP").await.json();
    assert_eq!(filtered["matching"], 1);
    assert_eq!(filtered["resources"][0]["resource"], "jobs/nightly");
    assert_eq!(get(admin, "/v1/locks?sort=sideways").await.status, 400);

    // A change shows in the next answer, however soon it is asked for.
    drop(a);
    let deadline = Deadline::new(format!("b (session {b_session}) to hold jobs/nightly"));
    loop {
        let one = get(admin, "/v1/locks/jobs/nightly").await.json();
        if one["holders"][0]["session"] == b_session {
            break;
        }
        deadline.tick(&one).await;
    }
}

#[tokio::test]
async fn forced_release_is_refused_unless_enabled() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut a = lockd.connect().await;
    a.lock(1, "r", "exclusive").await;
    let reply = http(
        admin,
        "DELETE",
        "/v1/locks/r",
        &[("Authorization", "Bearer anything")],
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.json()["error"]
        .as_str()
        .unwrap()
        .contains("--allow-force-release"));
    // Nothing changed.
    assert_eq!(a.call(json!({"id": 2, "op": "ping"})).await["ok"], true);
    let one = get(admin, "/v1/locks/r").await.json();
    assert_eq!(one["holders"].as_array().unwrap().len(), 1);
}

#[test]
fn allow_force_release_needs_a_token_file_and_http() {
    let dir = tempfile::tempdir().unwrap();
    let output = lockd_command(
        dir.path(),
        &["--http", "127.0.0.1:0", "--allow-force-release"],
    )
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--admin-token-file"));
    let output = lockd_command(dir.path(), &["--allow-force-release"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// A lockd that allows forced releases with `token`, its stderr in a log file: the lockd, its
/// admin address, the log's path, and the directory that holds them.
fn with_forced_release(token: &str) -> (Lockd, SocketAddr, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let log = dir.path().join("lockd.log");
    let data = dir.path().join("data");
    let mut command = lockd_command(
        &data,
        &[
            "--http",
            "127.0.0.1:0",
            "--allow-force-release",
            "--admin-token-file",
            token_file.to_str().unwrap(),
        ],
    );
    command.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut lockd = Lockd::spawn(&mut command, &data);
    let admin = admin_addr(&mut lockd);
    (lockd, admin, log, dir)
}

#[tokio::test]
async fn forced_release_needs_the_token_ends_the_holder_and_hands_the_lock_on() {
    const TOKEN: &str = "s3cret-admin-token";
    let (mut lockd, admin, log, _dir) = with_forced_release(TOKEN);

    let (mut stuck, stuck_addr) = connect(&lockd).await;
    let stuck_session = hello(&mut stuck, "stuck-deploy").await;
    let token = stuck.lock(1, "deploy", "exclusive").await;
    stuck.lock(2, "elsewhere", "exclusive").await;
    let mut next = lockd.connect().await;
    next.send(json!({"id": 1, "op": "acquire", "resource": "deploy"}))
        .await;
    assert_eq!(next.recv().await["event"], "queued");

    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Basic czNjcmV0"),
        Some(TOKEN),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
        let reply = http(admin, "DELETE", "/v1/locks/deploy", &headers).await;
        assert_eq!(reply.status, 401, "{auth:?}");
        assert_eq!(
            reply.header("www-authenticate"),
            Some("Bearer realm=\"lockd admin\"")
        );
    }
    let bearer = format!("Bearer {TOKEN}");
    let auth = [("Authorization", bearer.as_str())];
    // Nothing is released without a holder to release, or for a token nobody holds.
    let reply = http(admin, "DELETE", "/v1/locks/idle", &auth).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    let reply = http(admin, "DELETE", "/v1/locks/deploy?token=999", &auth).await;
    assert_eq!(reply.status, 409, "{}", reply.body);
    assert_eq!(
        http(admin, "DELETE", "/v1/locks/two%20words", &auth)
            .await
            .status,
        400
    );

    let reply = http(admin, "DELETE", "/v1/locks/deploy", &auth).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let released = reply.json();
    assert_eq!(released["resource"], "deploy");
    assert_eq!(
        released["released"],
        json!([{
            "session": stuck_session,
            "client": "stuck-deploy",
            "peer": stuck_addr.to_string(),
            "mode": "exclusive",
            "token": token,
            "held_ms": released["released"][0]["held_ms"],
        }])
    );
    // The waiter gets the lock through the queue, and the evicted holder's connection is
    // closed, which also frees its other lock.
    let granted = next.recv().await;
    assert_eq!(
        (granted["id"].as_u64(), granted["ok"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(granted["token"].as_u64().unwrap() > token);
    assert_eq!(stuck.try_recv(PATIENCE).await, Ok(None));
    let elsewhere = get(admin, "/v1/locks/elsewhere").await.json();
    assert_eq!(elsewhere["holders"], json!([]));

    assert!(lockd.signal_and_wait("TERM").success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        log.contains("an operator forced the release of a lock") && log.contains("deploy"),
        "{log}"
    );
    assert!(!log.contains(TOKEN), "the admin token was logged:\n{log}");
}

#[tokio::test]
async fn a_forced_release_of_a_name_that_is_not_one_forges_no_log_line() {
    let (mut lockd, admin, log, _dir) = with_forced_release("the-admin-token");
    // No token, and a "name" that carries a newline and a fake log line.
    let path = "/v1/locks/x%0A2026-01-01T00:00:00Z%20WARN%20FORGED%1B%5B31m";
    let reply = http(admin, "DELETE", path, &[]).await;
    assert_eq!(reply.status, 400, "{}", reply.body);
    let wrong = [("Authorization", "Bearer wrong")];
    assert_eq!(http(admin, "DELETE", path, &wrong).await.status, 400);
    assert!(lockd.signal_and_wait("TERM").success());
    let log = std::fs::read_to_string(log).unwrap();
    assert!(
        !log.lines().any(|line| line.contains("FORGED")),
        "an invalid name reached the log:\n{log}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_session_span() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("lockd.log");
    let data = dir.path().join("data");
    let flags = ["--log-format", "json", "--first-frame-timeout-ms", "200"];
    let mut command = lockd_command(&data, &flags);
    command.stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
    let mut lockd = Lockd::spawn(&mut command, &data);
    let (mut conn, local) = connect(&lockd).await;
    let session = hello(&mut conn, "json-client").await;
    drop(conn);
    // A connection that says nothing is closed by its own task, which logs in the span too.
    let (mut silent, silent_local) = connect(&lockd).await;
    assert_eq!(error_code(&silent.recv().await), "limit_exceeded");
    // Wait for both to be logged before stopping lockd.
    let deadline = Deadline::new("\"session closed\" and \"no complete frame\" in the log");
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains("session closed") && text.contains("no complete frame") {
            break;
        }
        deadline.tick(text).await;
    }
    assert!(lockd.signal_and_wait("TERM").success());
    let text = std::fs::read_to_string(log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let closed = lines
        .iter()
        .find(|line| line["fields"]["message"] == "session closed")
        .unwrap_or_else(|| panic!("no session closed line in\n{text}"));
    assert_eq!(closed["span"]["name"], "session");
    assert_eq!(closed["span"]["session"], session);
    assert_eq!(closed["span"]["peer"], local.to_string());
    assert_eq!(closed["span"]["client"], "json-client");
    let timed_out = lines
        .iter()
        .find(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|message| message.contains("no complete frame"))
        })
        .unwrap_or_else(|| panic!("no first-frame timeout line in\n{text}"));
    assert_eq!(timed_out["span"]["name"], "session");
    assert_eq!(timed_out["span"]["peer"], silent_local.to_string());
    assert!(timed_out["span"]["session"].as_u64().unwrap() > session);
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let (_lockd, admin) = start_with_admin(&[]);
    let page = get(admin, "/").await;
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    assert!(page
        .body
        .contains("<script src=\"dashboard.js\" defer></script>"));
    assert!(page
        .header("content-security-policy")
        .unwrap()
        .contains("default-src 'none'"));
    let script = get(admin, "/dashboard.js").await;
    assert_eq!(script.status, 200);
    assert_eq!(
        script.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(script.body.contains("v1/locks?"));
    let style = get(admin, "/dashboard.css").await;
    assert_eq!(style.status, 200);
    assert_eq!(
        style.header("content-type"),
        Some("text/css; charset=utf-8")
    );
}

#[tokio::test]
async fn deadlocks_are_counted_by_mode() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut a = lockd.connect().await;
    let mut b = lockd.connect().await;
    a.lock(1, "p", "exclusive").await;
    b.lock(1, "q", "shared").await;
    a.send(json!({"id": 2, "op": "acquire", "resource": "q"}))
        .await;
    assert_eq!(a.recv().await["event"], "queued");
    let refused = b
        .call(json!({"id": 2, "op": "acquire", "resource": "p", "mode": "shared"}))
        .await;
    assert_eq!(error_code(&refused), "deadlock");
    let m = get(admin, "/metrics").await.body;
    assert_eq!(sample(&m, "lockd_deadlocks_total{mode=\"shared\"}"), 1.0);
    assert_eq!(sample(&m, "lockd_deadlocks_total{mode=\"exclusive\"}"), 0.0);
    assert_eq!(sample(&m, "lockd_errors_total{code=\"deadlock\"}"), 1.0);
    assert_eq!(sample(&m, "lockd_waiters{mode=\"exclusive\"}"), 1.0);
}

/// A store whose commits wait while `stuck` is set: a disk that stopped answering.
struct StuckStore {
    inner: RedbStore,
    stuck: Arc<(Mutex<bool>, Condvar)>,
}

impl Store for StuckStore {
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError> {
        let (stuck, changed) = &*self.stuck;
        let mut guard = stuck.lock().unwrap();
        while *guard {
            guard = changed.wait(guard).unwrap();
        }
        drop(guard);
        self.inner.commit(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_disk_makes_lockd_unready_but_not_dead() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, snapshot) = RedbStore::open(dir.path()).unwrap();
    let stuck = Arc::new((Mutex::new(false), Condvar::new()));
    let store = StuckStore {
        inner,
        stuck: Arc::clone(&stuck),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let server = Server::with_store(ServerConfig::default(), Box::new(store), snapshot)
        .unwrap()
        .with_admin(admin_listener, AdminOptions::default());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(listener, async {
        let _ = stop_rx.await;
    }));

    let mut conn = Conn::connect(addr).await;
    let token = conn.lock(1, "r", "exclusive").await;
    assert_eq!(get(admin, "/readyz").await.status, 200);
    // The disk stops answering in the middle of a write. If an assertion fails while it is
    // stuck, the guard frees it, or the runtime would wait for the hung commit forever
    // instead of failing the test.
    *stuck.0.lock().unwrap() = true;
    let _unstick = Unstick(Arc::clone(&stuck));
    conn.send(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"}))
        .await;
    // The probe may reach the driver before the write does; once the write's commit has hung
    // for two seconds, the probe says so (the driver itself keeps serving locks).
    let unready = async {
        let deadline = Deadline::new("/readyz to answer 503 while the commit hangs");
        loop {
            let ready = get(admin, "/readyz").await;
            if ready.status == 503 {
                return ready;
            }
            deadline
                .tick(format!("{} {:?}", ready.status, ready.body))
                .await;
        }
    };
    let (ready, live, metrics) =
        tokio::join!(unready, get(admin, "/healthz"), get(admin, "/metrics"));
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(
        ready
            .body
            .contains("a commit to the data directory has run for"),
        "{}",
        ready.body
    );
    // Other sessions' locks still work meanwhile.
    let mut other = Conn::connect(addr).await;
    assert!(other.lock(1, "other", "exclusive").await > token);
    assert_eq!(live.status, 200, "liveness never depends on the disk");
    assert_eq!(metrics.status, 200, "the counters are still served");
    assert!(metrics.body.contains("lockd_store_commit_seconds_count 0"));

    *stuck.0.lock().unwrap() = false;
    stuck.1.notify_all();
    assert_eq!(conn.recv().await, json!({"id": 2, "ok": true}));
    assert_eq!(get(admin, "/readyz").await.status, 200);
    let m = get(admin, "/metrics").await.body;
    assert_eq!(sample(&m, "lockd_store_commit_seconds_count"), 1.0);
    assert!(sample(&m, "lockd_store_commit_seconds_sum") >= 1.0, "{m}");

    stop_tx.send(()).unwrap();
    running.await.unwrap();
}

#[tokio::test]
async fn v1_locks_shows_a_semaphores_limit_and_each_holders_permits() {
    let (lockd, admin) = start_with_admin(&[]);
    let mut holder = lockd.connect().await;
    let reply = holder
        .call(json!({"id": 1, "op": "acquire", "resource": "exports", "permits": 3, "limit": 4}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    let mut waiter = lockd.connect().await;
    waiter
        .send(json!({"id": 1, "op": "acquire", "resource": "exports", "permits": 2, "limit": 4}))
        .await;
    assert_eq!(waiter.recv().await["position"], 1);

    let one = get(admin, "/v1/locks/exports").await.json();
    assert_eq!(
        (one["limit"].clone(), one["permits_used"].clone()),
        (json!(4), json!(3)),
        "{one}"
    );
    assert_eq!(one["holders"][0]["permits"], 3, "{one}");
    assert_eq!(one["waiters"][0]["permits"], 2, "{one}");
    // A lock shows none of these fields.
    holder.lock(2, "plain", "exclusive").await;
    let plain = get(admin, "/v1/locks/plain").await.json();
    assert!(
        plain.get("limit").is_none() && plain["holders"][0].get("permits").is_none(),
        "{plain}"
    );
}
