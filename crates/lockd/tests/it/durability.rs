//! Durability: acknowledged values and fencing tokens survive SIGKILL, SIGTERM and crash
//! loops; a store that fails answers `internal` and locks keep working.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockd::server::{Server, ServerConfig};
use lockd::store::{CommitBatch, RedbStore, Store, StoreError};
use serde_json::json;

use crate::support::{error_code, Conn, Deadline, Lockd, PATIENCE};

/// Writes `value` to `resource` under a fresh exclusive lock, returning the lock's token.
async fn write_under_lock(conn: &mut Conn, resource: &str, value: &str) -> u64 {
    let token = conn.lock(1, resource, "exclusive").await;
    let write =
        json!({"id": 2, "op": "write", "resource": resource, "token": token, "value": value});
    assert_eq!(conn.call(write).await, json!({"id": 2, "ok": true}));
    let release = json!({"id": 3, "op": "release", "resource": resource, "token": token});
    assert_eq!(conn.call(release).await["ok"], true);
    token
}

/// The value of `resource` read under a shared lock (taken and released here), and its token.
pub(crate) async fn read_under_lock(conn: &mut Conn, resource: &str) -> (u64, serde_json::Value) {
    let token = conn.lock(10, resource, "shared").await;
    let read = conn
        .call(json!({"id": 11, "op": "read", "resource": resource, "token": token}))
        .await;
    assert_eq!(read["ok"], true, "{read}");
    let release = json!({"id": 12, "op": "release", "resource": resource, "token": token});
    assert_eq!(conn.call(release).await["ok"], true);
    (token, read["value"].clone())
}

#[tokio::test]
async fn values_and_tokens_survive_sigkill_and_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut last_token = 0;
    for (round, signal) in ["KILL", "TERM", "KILL"].into_iter().enumerate() {
        let mut lockd = Lockd::start_in(dir.path(), &[]);
        let mut conn = lockd.connect().await;
        if round > 0 {
            let (token, value) = read_under_lock(&mut conn, "config").await;
            assert_eq!(
                value,
                format!("v{}", round - 1),
                "after SIG{signal} restart"
            );
            assert!(token > last_token, "token {token} after {last_token}");
        }
        last_token = write_under_lock(&mut conn, "config", &format!("v{round}")).await;
        let status = lockd.signal_and_wait(signal);
        assert_eq!(
            status.success(),
            signal == "TERM",
            "SIG{signal}: {status:?}"
        );
    }
}

/// A backup restored after more tokens were handed out still never hands one out twice: a store
/// that issued tokens before starts above the wall clock in microseconds, which every earlier
/// token is below. Before, the restored reservation let the next grant repeat a token.
#[tokio::test]
async fn a_restored_backup_never_hands_out_a_token_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("lockd.redb");
    let backup = dir.path().join("backup.redb");
    let mut lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    write_under_lock(&mut conn, "config", "backed up").await;
    assert!(lockd.signal_and_wait("TERM").success());
    std::fs::copy(&store, &backup).unwrap();

    let mut issued = Vec::new();
    for _ in 0..2 {
        let mut lockd = Lockd::start_in(dir.path(), &[]);
        let mut conn = lockd.connect().await;
        for _ in 0..20 {
            issued.push(write_under_lock(&mut conn, "config", "after the backup").await);
        }
        assert!(lockd.signal_and_wait("TERM").success());
    }
    let highest = *issued.iter().max().unwrap();

    std::fs::copy(&backup, &store).unwrap();
    let mut lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    let (token, value) = read_under_lock(&mut conn, "config").await;
    assert_eq!(value, "backed up", "the backup's value is back");
    assert!(
        token > highest,
        "token {token} after a restore, but {highest} was handed out after the backup"
    );
    assert!(lockd.signal_and_wait("TERM").success());
}

/// `GET /v1/backup` copies the store while writers keep writing; a lockd started on the copy
/// has every value acknowledged before the backup was asked for (or a later one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_online_backup_under_writes_holds_every_value_acknowledged_before_it() {
    const WRITERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let admin_token = dir.path().join("admin-token");
    std::fs::write(&admin_token, "backup-admin\n").unwrap();
    let data = dir.path().join("data");
    let mut command = crate::support::lockd_command(
        &data,
        &[
            "--http",
            "127.0.0.1:0",
            "--admin-token-file",
            admin_token.to_str().unwrap(),
        ],
    );
    let mut lockd = Lockd::spawn(command.stderr(std::process::Stdio::inherit()), &data);
    let admin = crate::admin::admin_addr(&mut lockd);

    // Each writer holds its own resource and writes 1, 2, 3, ... there; `acked` is the last
    // value lockd acknowledged (so: durable).
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Vec<AtomicUsize>> =
        Arc::new((0..WRITERS).map(|_| AtomicUsize::new(0)).collect());
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let mut conn = lockd.connect().await;
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        writers.push(tokio::spawn(async move {
            let resource = format!("w{writer}");
            let token = conn.lock(1, &resource, "exclusive").await;
            let mut value = 0;
            while !stop.load(Ordering::Relaxed) {
                value += 1;
                let write = json!({"id": 2, "op": "write", "resource": resource, "token": token,
                                   "value": value.to_string()});
                assert_eq!(conn.call(write).await["ok"], true);
                acked[writer].store(value, Ordering::Relaxed);
            }
        }));
    }
    let deadline = Deadline::new("every writer to have 20 writes acknowledged");
    while acked.iter().any(|count| count.load(Ordering::Relaxed) < 20) {
        deadline.tick("fewer").await;
    }

    let before: Vec<usize> = acked
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .collect();
    let started = std::time::Instant::now();
    let bearer = [("Authorization", "Bearer backup-admin")];
    let (status, backup) = crate::support::http_bytes(admin, "GET", "/v1/backup", &bearer).await;
    let took = started.elapsed();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&backup));
    let during: usize = acked
        .iter()
        .map(|count| count.load(Ordering::Relaxed))
        .sum::<usize>()
        - before.iter().sum::<usize>();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    eprintln!(
        "backup of {WRITERS} values took {took:?} ({} bytes) while {during} writes were \
         acknowledged",
        backup.len()
    );
    let (wrong, _) = crate::support::http_bytes(admin, "GET", "/v1/backup", &[]).await;
    assert_eq!(wrong, 401, "a backup needs the admin credential");

    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    std::fs::write(restored.join("lockd.redb"), &backup).unwrap();
    let lockd = Lockd::start_in(&restored, &[]);
    let mut conn = lockd.connect().await;
    for (writer, acknowledged) in before.iter().enumerate() {
        let (_, value) = read_under_lock(&mut conn, &format!("w{writer}")).await;
        let value: usize = value.as_str().unwrap().parse().unwrap();
        assert!(
            value >= *acknowledged,
            "w{writer} restored as {value}, but {acknowledged} was acknowledged before the backup"
        );
    }
}

#[tokio::test]
async fn an_acknowledged_write_pipelined_with_its_release_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    let token = conn.lock(1, "r", "exclusive").await;
    // Write and release in one packet: the release must not overtake the write.
    conn.send_batch(&[
        json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "pipelined"}),
        json!({"id": 3, "op": "release", "resource": "r", "token": token}),
    ])
    .await;
    assert_eq!(conn.recv().await, json!({"id": 2, "ok": true}));
    assert_eq!(conn.recv().await, json!({"id": 3, "ok": true}));
    lockd.signal_and_wait("KILL");
    let lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    assert_eq!(read_under_lock(&mut conn, "r").await.1, "pipelined");
}

/// A semaphore's limit is lock state, not a value: after a restart the resource is idle, and its
/// value (written under the exclusive lock of an earlier life as a lock) is still there, so the
/// next acquirer sets a new limit. A cluster keeps limits in its log instead (cluster tests).
#[tokio::test]
async fn a_restart_forgets_semaphore_limits_and_keeps_values() {
    let dir = tempfile::tempdir().unwrap();
    let mut lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    write_under_lock(&mut conn, "exports", "kept").await;
    let reply = conn
        .call(json!({"id": 5, "op": "acquire", "resource": "exports", "permits": 2, "limit": 4}))
        .await;
    assert_eq!(reply["limit"], 4, "{reply}");
    lockd.signal_and_wait("KILL");

    let lockd = Lockd::start_in(dir.path(), &[]);
    let mut conn = lockd.connect().await;
    let reply = conn
        .call(json!({"id": 1, "op": "acquire", "resource": "exports", "permits": 1, "limit": 8}))
        .await;
    assert_eq!(reply["limit"], 8, "the old limit is gone: {reply}");
    let token = reply["token"].as_u64().unwrap();
    let read = conn
        .call(json!({"id": 2, "op": "read", "resource": "exports", "token": token}))
        .await;
    assert_eq!(
        read["value"], "kept",
        "a permit holder reads the value: {read}"
    );
}

/// Many clients increment counters under locks while lockd is SIGKILLed at random moments and
/// restarted. Afterwards every acknowledged write is there, every holder read at least the last
/// acknowledged value, and tokens never went backwards, within a run or across restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_loses_no_acknowledged_write() {
    let cycles: usize = std::env::var("LOCKD_CRASH_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    const CLIENTS: usize = 8;
    const RESOURCES: usize = 3;
    let dir = tempfile::tempdir().unwrap();
    // Every other lockd runs on one thread (a current-thread runtime), so both runtimes are
    // crashed in the middle of their commits.
    let flags = |cycle: usize| -> &'static [&'static str] {
        if cycle % 2 == 1 {
            &["--worker-threads", "1"]
        } else {
            &[]
        }
    };
    let lockd = Lockd::start_in(dir.path(), flags(0));
    let state = Arc::new(CrashState {
        addr: Mutex::new(lockd.addr),
        max_acked: Mutex::new(vec![0; RESOURCES]),
        tokens_by_cycle: Mutex::new(HashMap::new()),
        cycle: std::sync::atomic::AtomicUsize::new(0),
        stop: AtomicBool::new(false),
    });
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| tokio::spawn(crash_client(Arc::clone(&state), client)))
        .collect();

    let mut lockd = lockd;
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for cycle in 0..cycles {
        // A pseudo-random lifetime between 50 and 300 ms, reproducible run to run.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(50 + seed % 250)).await;
        lockd.signal_and_wait("KILL");
        drop(lockd);
        state.cycle.store(cycle + 1, Ordering::SeqCst);
        lockd = Lockd::start_in(dir.path(), flags(cycle + 1));
        *state.addr.lock().unwrap() = lockd.addr;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    state.stop.store(true, Ordering::SeqCst);
    let mut acked_total = 0;
    for client in clients {
        acked_total += client.await.unwrap();
    }

    // Every acknowledged increment is there.
    let mut conn = lockd.connect().await;
    let max_acked = state.max_acked.lock().unwrap().clone();
    for (r, acked) in max_acked.iter().enumerate() {
        let (_, value) = read_under_lock(&mut conn, &format!("counter{r}")).await;
        let value: u64 = value.as_str().map_or(0, |v| v.parse().unwrap());
        assert!(
            value >= *acked,
            "counter{r} is {value}, but {acked} was acknowledged"
        );
    }
    // Tokens only grow across restarts.
    let tokens = state.tokens_by_cycle.lock().unwrap();
    let mut previous_max = 0;
    for cycle in 0..=cycles {
        let Some((min, max)) = tokens.get(&cycle) else {
            continue;
        };
        assert!(
            *min > previous_max,
            "cycle {cycle} handed out {min} after {previous_max}"
        );
        previous_max = *max;
    }
    assert!(acked_total > 0, "no write was acknowledged at all");
    eprintln!(
        "crash loop: {cycles} SIGKILL cycles, {CLIENTS} clients, {acked_total} writes \
         acknowledged, 0 lost; tokens up to {previous_max}"
    );
}

struct CrashState {
    addr: Mutex<SocketAddr>,
    /// The highest value acknowledged per counter.
    max_acked: Mutex<Vec<u64>>,
    /// (min, max) token granted per lockd lifetime.
    tokens_by_cycle: Mutex<HashMap<usize, (u64, u64)>>,
    cycle: std::sync::atomic::AtomicUsize,
    stop: AtomicBool,
}

/// One client: lock a counter, read it, write it + 1, release; reconnect after every failure.
/// Returns how many writes were acknowledged.
async fn crash_client(state: Arc<CrashState>, client: usize) -> u64 {
    let mut acked = 0;
    let mut round = client;
    while !state.stop.load(Ordering::SeqCst) {
        let addr = *state.addr.lock().unwrap();
        let cycle = state.cycle.load(Ordering::SeqCst);
        let Ok(Ok(stream)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                .await
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let mut conn = Conn::from_stream(stream);
        while !state.stop.load(Ordering::SeqCst) {
            round += 1;
            let r = round % state.max_acked.lock().unwrap().len();
            match increment(&mut conn, &state, cycle, r).await {
                Some(true) => acked += 1,
                Some(false) => {}
                None => break,
            }
        }
    }
    acked
}

/// One increment; `None` when the connection broke (lockd was killed).
async fn increment(conn: &mut Conn, state: &CrashState, cycle: usize, r: usize) -> Option<bool> {
    let resource = format!("counter{r}");
    let wait = Duration::from_secs(3);
    if !conn
        .try_send(json!({"id": 1, "op": "acquire", "resource": resource}))
        .await
    {
        return None;
    }
    let granted = loop {
        let frame = conn.try_recv(wait).await.ok()??;
        if frame.get("event").is_none() {
            break frame;
        }
    };
    let token = granted["token"].as_u64()?;
    {
        let mut tokens = state.tokens_by_cycle.lock().unwrap();
        let entry = tokens.entry(cycle).or_insert((token, token));
        entry.0 = entry.0.min(token);
        entry.1 = entry.1.max(token);
    }
    if !conn
        .try_send(json!({"id": 2, "op": "read", "resource": resource, "token": token}))
        .await
    {
        return None;
    }
    let read = conn.try_recv(wait).await.ok()??;
    let value: u64 = read["value"].as_str().map_or(0, |v| v.parse().unwrap());
    {
        let max_acked = state.max_acked.lock().unwrap();
        assert!(
            value >= max_acked[r],
            "read {value} of counter{r} after {} was acknowledged",
            max_acked[r]
        );
    }
    let next = (value + 1).to_string();
    if !conn
        .try_send(
            json!({"id": 3, "op": "write", "resource": resource, "token": token, "value": next}),
        )
        .await
    {
        return None;
    }
    let written = conn.try_recv(wait).await.ok()??;
    let acknowledged = written["ok"] == true;
    if acknowledged {
        let mut max_acked = state.max_acked.lock().unwrap();
        max_acked[r] = max_acked[r].max(value + 1);
    }
    if !conn
        .try_send(json!({"id": 4, "op": "release", "resource": resource, "token": token}))
        .await
    {
        return None;
    }
    conn.try_recv(wait).await.ok()??;
    Some(acknowledged)
}

/// A store that fails every commit while `failing` is set, as a full or broken disk would.
struct FlakyStore {
    inner: RedbStore,
    failing: Arc<AtomicBool>,
}

impl Store for FlakyStore {
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::from_raw_os_error(28)));
        }
        self.inner.commit(batch)
    }
}

#[tokio::test]
async fn a_failing_store_fails_writes_with_internal_and_locks_keep_working() {
    let dir = tempfile::tempdir().unwrap();
    let (store, snapshot) = RedbStore::open(dir.path()).unwrap();
    let failing = Arc::new(AtomicBool::new(false));
    let store = FlakyStore {
        inner: store,
        failing: Arc::clone(&failing),
    };
    let (addr, stop) = serve_in_process(Box::new(store), snapshot).await;

    let mut conn = Conn::connect(addr).await;
    write_under_lock(&mut conn, "r", "safe").await;
    failing.store(true, Ordering::SeqCst);
    let token = conn.lock(1, "r", "exclusive").await;
    // The write and a read of it in one turn: both fail, nothing is half-saved.
    conn.send_batch(&[
        json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "lost"}),
        json!({"id": 3, "op": "read", "resource": "r", "token": token}),
    ])
    .await;
    let write = conn.recv().await;
    assert_eq!(error_code(&write), "internal");
    assert!(
        write["error"]["message"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{write}"
    );
    assert_eq!(error_code(&conn.recv().await), "internal");
    // The old value is still the value, and locks still work.
    let read = conn
        .call(json!({"id": 4, "op": "read", "resource": "r", "token": token}))
        .await;
    assert_eq!(read["value"], "safe");
    let release = json!({"id": 5, "op": "release", "resource": "r", "token": token});
    assert_eq!(conn.call(release).await["ok"], true);
    let other = conn.lock(6, "other", "exclusive").await;
    assert!(other > token);

    failing.store(false, Ordering::SeqCst);
    write_under_lock(&mut conn, "r", "saved again").await;
    assert_eq!(read_under_lock(&mut conn, "r").await.1, "saved again");
    stop.await;
}

/// A real full disk: lockd runs in its own mount namespace on a 512 KiB tmpfs that also holds
/// a ballast file. Writes fail with `internal` once the disk is full, locks keep working, and
/// once the ballast is removed writes succeed again without a restart.
#[tokio::test]
async fn a_full_disk_fails_writes_and_lockd_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let script = r#"mount -t tmpfs -o size=512k tmpfs "$0" && \
        dd if=/dev/zero of="$0/ballast" bs=1k count=192 2>/dev/null && \
        exec "$1" --listen 127.0.0.1:0 --data-dir "$0""#;
    let mut lockd = Lockd::spawn(
        std::process::Command::new("unshare")
            .args(["--user", "--map-root-user", "--mount", "sh", "-c", script])
            .arg(&data)
            .arg(env!("CARGO_BIN_EXE_lockd")),
        &data,
    );
    let mut conn = lockd.connect().await;
    let chunk = "x".repeat(24 * 1024);
    let mut full_at = None;
    for i in 0..64 {
        let resource = format!("k{i}");
        let token = conn.lock(1, &resource, "exclusive").await;
        let write =
            json!({"id": 2, "op": "write", "resource": resource, "token": token, "value": chunk});
        let reply = conn.call(write).await;
        let release = json!({"id": 3, "op": "release", "resource": resource, "token": token});
        assert_eq!(conn.call(release).await["ok"], true, "locks keep working");
        if reply["ok"] != true {
            assert_eq!(error_code(&reply), "internal");
            let message = reply["error"]["message"].as_str().unwrap();
            assert!(message.contains("No space left on device"), "{message}");
            full_at = Some(i);
            break;
        }
    }
    let full_at = full_at.expect("the 512 KiB disk filled up");
    assert!(full_at > 0, "the first write already failed");
    // What was acknowledged before is still there; what failed is not.
    assert_eq!(read_under_lock(&mut conn, "k0").await.1, chunk.as_str());
    assert_eq!(
        read_under_lock(&mut conn, &format!("k{full_at}")).await.1,
        json!(null)
    );

    // Free the space (the tmpfs is visible through the process's own root) and write again.
    let ballast = format!("/proc/{}/root{}/ballast", lockd.child.id(), data.display());
    std::fs::remove_file(&ballast).unwrap();
    write_under_lock(&mut conn, "after", "recovered").await;
    assert_eq!(read_under_lock(&mut conn, "after").await.1, "recovered");
    let status = lockd.signal_and_wait("TERM");
    assert!(status.success(), "{status:?}");
}

/// The longest a [`GatedStore`] holds a commit back.
const GATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A store that records how many values each commit carried, can hold commits back, and can
/// fail them.
struct GatedStore {
    inner: RedbStore,
    commits: Arc<Mutex<Vec<usize>>>,
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    failing: Arc<AtomicBool>,
    /// Commits that carry values and have reached the gate but not passed it yet.
    held: Arc<AtomicUsize>,
}

impl Store for GatedStore {
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError> {
        // The gate opens by itself after a while, so that a failing test ends instead of
        // hanging (a runtime waits for its blocking threads when it shuts down).
        let (open, changed) = &*self.open;
        let carries_values = !batch.values.is_empty();
        if carries_values {
            self.held.fetch_add(1, Ordering::SeqCst);
        }
        let guard = open.lock().unwrap();
        let (guard, _) = changed
            .wait_timeout_while(guard, GATE_TIMEOUT, |open| !*open)
            .unwrap();
        drop(guard);
        if carries_values {
            self.held.fetch_sub(1, Ordering::SeqCst);
        }
        if !batch.values.is_empty() {
            self.commits.lock().unwrap().push(batch.values.len());
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(StoreError::Io(std::io::Error::from_raw_os_error(5)));
        }
        self.inner.commit(batch)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_that_arrive_during_a_commit_share_the_next_one() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;

    const WRITERS: usize = 10;
    let mut conns = Vec::new();
    for i in 0..=WRITERS {
        let mut conn = Conn::connect(gated.addr).await;
        let token = conn.lock(1, &format!("r{i}"), "exclusive").await;
        conns.push((conn, token));
    }
    let mut probe = Conn::connect(gated.addr).await;
    // Hold the disk: the first write's commit blocks, and the others arrive meanwhile.
    gated.hold_disk();
    for (i, (conn, token)) in conns.iter_mut().enumerate() {
        conn.send(json!({"id": 2, "op": "write", "resource": format!("r{i}"), "token": token, "value": "v"}))
            .await;
        if i == 0 {
            gated.wait_for_a_held_commit().await;
        } else {
            // A marker pipelined after the write: lockd applies a connection's requests in
            // order, so once the marker shows in `status`, the write has been applied. (Its
            // reply waits behind the write's, as the write's waits for the commit.)
            conn.send(json!({"id": 3, "op": "acquire", "resource": "applied", "mode": "shared"}))
                .await;
        }
    }
    wait_for_holders(&mut probe, "applied", WRITERS).await;
    gated.open_disk();
    for (conn, _) in &mut conns {
        assert_eq!(conn.recv().await, json!({"id": 2, "ok": true}));
    }
    // One fsync for the lone first writer, one for the ten that queued behind it.
    assert_eq!(*gated.commits.lock().unwrap(), vec![1, WRITERS]);
    (gated.stop).await;
}

/// A server in this process over a [`GatedStore`]: its address, the sizes of its commits, the
/// gate, the switch that fails commits, and the future that stops it.
struct GatedServer<S> {
    addr: std::net::SocketAddr,
    commits: Arc<Mutex<Vec<usize>>>,
    open: Arc<(Mutex<bool>, std::sync::Condvar)>,
    failing: Arc<AtomicBool>,
    held: Arc<AtomicUsize>,
    stop: S,
}

impl GatedServer<()> {
    async fn start(dir: &std::path::Path) -> GatedServer<impl std::future::Future<Output = ()>> {
        let (store, snapshot) = RedbStore::open(dir).unwrap();
        let commits = Arc::new(Mutex::new(Vec::new()));
        let open = Arc::new((Mutex::new(true), std::sync::Condvar::new()));
        let failing = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicUsize::new(0));
        let store = GatedStore {
            inner: store,
            commits: Arc::clone(&commits),
            open: Arc::clone(&open),
            failing: Arc::clone(&failing),
            held: Arc::clone(&held),
        };
        let (addr, stop) = serve_in_process(Box::new(store), snapshot).await;
        GatedServer {
            addr,
            commits,
            open,
            failing,
            held,
            stop,
        }
    }
}

impl<S> GatedServer<S> {
    /// Makes the next commit wait until [`GatedServer::open_disk`].
    fn hold_disk(&self) {
        *self.open.0.lock().unwrap() = false;
    }

    fn open_disk(&self) {
        *self.open.0.lock().unwrap() = true;
        self.open.1.notify_all();
    }

    /// Waits until a commit carrying values has reached the held gate: the writes applied
    /// from now on go into the next commit.
    async fn wait_for_a_held_commit(&self) {
        let deadline = Deadline::new("a commit of the write to reach the held disk");
        loop {
            let held = self.held.load(Ordering::SeqCst);
            if held == 1 {
                return;
            }
            deadline.tick(format!("{held} commits held")).await;
        }
    }
}

/// Waits until `status` of `resource`, asked on `probe`, shows `holders` holders.
async fn wait_for_holders(probe: &mut Conn, resource: &str, holders: usize) {
    let deadline = Deadline::new(format!("{holders} holders of {resource}"));
    loop {
        let status = probe
            .call(json!({"id": 1, "op": "status", "resource": resource}))
            .await;
        let now = status["resources"][0]["holders"]
            .as_array()
            .map_or(0, Vec::len);
        if now == holders {
            return;
        }
        deadline.tick(&status).await;
    }
}

/// Runs a server over `store` in this process; awaiting the returned future stops it.
async fn serve_in_process(
    store: Box<dyn Store>,
    snapshot: lockd::store::StoredState,
) -> (std::net::SocketAddr, impl std::future::Future<Output = ()>) {
    let server = Server::with_store(ServerConfig::default(), store, snapshot).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(server.run(listener, async {
        let _ = stop_rx.await;
    }));
    let stop = async move {
        stop_tx.send(()).unwrap();
        running.await.unwrap();
    };
    (addr, stop)
}

/// A lock reply pipelined before a write goes out before the write's commit (it shows no value
/// of it); the write's reply, and the same session's replies after it, wait for the fsync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_before_a_write_do_not_wait_for_its_commit() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;
    let (addr, commits, open) = (gated.addr, gated.commits, gated.open);
    let stop = gated.stop;
    let mut conn = Conn::connect(addr).await;
    let token = conn.lock(1, "r", "exclusive").await;

    *open.0.lock().unwrap() = false;
    conn.send_batch(&[
        json!({"id": 10, "op": "acquire", "resource": "other"}),
        json!({"id": 11, "op": "write", "resource": "r", "token": token, "value": "v"}),
        json!({"id": 12, "op": "release", "resource": "r", "token": token}),
    ])
    .await;
    let early = conn.recv().await;
    assert_eq!(
        early["id"], 10,
        "the acquire is answered while the disk is held: {early}"
    );
    conn.expect_silence().await;

    *open.0.lock().unwrap() = true;
    open.1.notify_all();
    assert_eq!(conn.recv().await, json!({"id": 11, "ok": true}));
    assert_eq!(conn.recv().await, json!({"id": 12, "ok": true}));
    assert_eq!(
        *commits.lock().unwrap(),
        vec![1],
        "one commit, for the one write"
    );
    stop.await;
}

/// While one commit waits on the disk, the server keeps serving: other sessions' acquires,
/// releases and reads are answered at once, and writes made meanwhile share the next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_served_while_a_commit_waits_on_the_disk() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;
    let mut writer = Conn::connect(gated.addr).await;
    let mut other = Conn::connect(gated.addr).await;
    let mut late_writer = Conn::connect(gated.addr).await;
    let token = writer.lock(1, "w", "exclusive").await;
    let late_token = late_writer.lock(1, "late", "exclusive").await;

    gated.hold_disk();
    writer
        .send(json!({"id": 2, "op": "write", "resource": "w", "token": token, "value": "v1"}))
        .await;
    gated.wait_for_a_held_commit().await;

    // Another session's lock traffic, and its read of a value already durable, do not wait.
    let other_token = other.lock(1, "o", "shared").await;
    let read = json!({"id": 2, "op": "read", "resource": "o", "token": other_token});
    assert_eq!(
        other.call(read).await,
        json!({"id": 2, "ok": true, "value": null})
    );
    let release = json!({"id": 3, "op": "release", "resource": "o", "token": other_token});
    assert_eq!(other.call(release).await, json!({"id": 3, "ok": true}));
    // A write made now goes into the next commit.
    late_writer
        .send(
            json!({"id": 2, "op": "write", "resource": "late", "token": late_token, "value": "v2"}),
        )
        .await;
    writer.expect_silence().await;
    late_writer.expect_silence().await;

    gated.open_disk();
    assert_eq!(writer.recv().await, json!({"id": 2, "ok": true}));
    assert_eq!(late_writer.recv().await, json!({"id": 2, "ok": true}));
    assert_eq!(*gated.commits.lock().unwrap(), vec![1, 1]);
    (gated.stop).await;
}

/// A read of a value whose commit has not finished waits for it, even from another session
/// that got the lock after the writer released it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_value_still_being_committed_waits_for_the_commit() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;
    let mut writer = Conn::connect(gated.addr).await;
    let mut next = Conn::connect(gated.addr).await;
    let token = writer.lock(1, "r", "exclusive").await;

    gated.hold_disk();
    writer
        .send(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"}))
        .await;
    let acquire = json!({"id": 1, "op": "acquire", "resource": "r", "mode": "exclusive"});
    assert_eq!(next.call(acquire).await["event"], "queued");
    // The release waits behind its own session's write reply (replies keep their order)...
    writer
        .send(json!({"id": 3, "op": "release", "resource": "r", "token": token}))
        .await;
    // ...but it is applied at once, so the next in line is granted while the disk is held.
    let granted = next.recv().await;
    assert_eq!(granted["id"], 1, "{granted}");
    let next_token = granted["token"].as_u64().unwrap();
    assert!(next_token > token);
    next.send(json!({"id": 2, "op": "read", "resource": "r", "token": next_token}))
        .await;
    next.expect_silence().await;
    writer.expect_silence().await;

    gated.open_disk();
    assert_eq!(writer.recv().await, json!({"id": 2, "ok": true}));
    assert_eq!(writer.recv().await, json!({"id": 3, "ok": true}));
    assert_eq!(
        next.recv().await,
        json!({"id": 2, "ok": true, "value": "v"})
    );
    (gated.stop).await;
}

/// When a commit fails, every write not yet durable is undone, including those made after it
/// (which saw its value), and each of their replies is `internal`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_undoes_every_write_made_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;
    let mut conn = Conn::connect(gated.addr).await;
    write_under_lock(&mut conn, "r", "safe").await;
    let token = conn.lock(10, "r", "exclusive").await;

    gated.hold_disk();
    gated.failing.store(true, Ordering::SeqCst);
    conn.send(json!({"id": 11, "op": "write", "resource": "r", "token": token, "value": "one"}))
        .await;
    gated.wait_for_a_held_commit().await;
    // Applied while the first commit waits: these go into the next one.
    conn.send_batch(&[
        json!({"id": 12, "op": "write", "resource": "r", "token": token, "value": "two"}),
        json!({"id": 13, "op": "read", "resource": "r", "token": token}),
        json!({"id": 14, "op": "ping"}),
    ])
    .await;
    conn.expect_silence().await;
    gated.open_disk();
    for id in [11, 12, 13] {
        let reply = conn.recv().await;
        assert_eq!(reply["id"], id, "{reply}");
        assert_eq!(error_code(&reply), "internal", "{reply}");
    }
    assert_eq!(conn.recv().await, json!({"id": 14, "ok": true}));

    gated.failing.store(false, Ordering::SeqCst);
    let read = json!({"id": 15, "op": "read", "resource": "r", "token": token});
    assert_eq!(conn.call(read).await["value"], "safe");
    let write = json!({"id": 16, "op": "write", "resource": "r", "token": token, "value": "three"});
    assert_eq!(conn.call(write).await, json!({"id": 16, "ok": true}));
    (gated.stop).await;
}

/// A client that sends a write and then closes its sending side still gets the write's reply
/// once it is durable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_closed_client_gets_the_reply_to_its_last_write() {
    let dir = tempfile::tempdir().unwrap();
    let gated = GatedServer::start(dir.path()).await;
    let mut conn = Conn::connect(gated.addr).await;
    let token = conn.lock(1, "r", "exclusive").await;

    gated.hold_disk();
    conn.send(json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"}))
        .await;
    let (mut read, mut write) = conn.into_split();
    tokio::io::AsyncWriteExt::shutdown(&mut write)
        .await
        .unwrap();
    // The server sees the end of the stream while the commit waits: it ends the session, which
    // frees the lock.
    let mut probe = Conn::connect(gated.addr).await;
    wait_for_holders(&mut probe, "r", 0).await;
    gated.open_disk();
    let mut line = String::new();
    let read_line = tokio::io::AsyncBufReadExt::read_line(&mut read, &mut line);
    tokio::time::timeout(PATIENCE, read_line)
        .await
        .expect("the reply arrives")
        .unwrap();
    let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(reply, json!({"id": 2, "ok": true}));
    (gated.stop).await;
}

/// A store whose commit panics (a bug in it, or in redb) the first time it is asked to save.
struct PanickingStore;

impl Store for PanickingStore {
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError> {
        if batch.values.is_empty() {
            // The start-up token reservation.
            return Ok(());
        }
        panic!("the store broke (a deliberate panic in a test)");
    }
}

/// A commit that panics takes the store with it: that write and every later one fail with
/// `internal`, nothing hangs, and locks keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_panics_fails_writes_and_locks_keep_working() {
    let (addr, stop) = serve_in_process(Box::new(PanickingStore), Default::default()).await;
    let mut conn = Conn::connect(addr).await;
    let token = conn.lock(1, "r", "exclusive").await;
    let write = json!({"id": 2, "op": "write", "resource": "r", "token": token, "value": "v"});
    let reply = conn.call(write).await;
    assert_eq!(error_code(&reply), "internal", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the store failed"),
        "{reply}"
    );
    let again = json!({"id": 3, "op": "write", "resource": "r", "token": token, "value": "w"});
    let reply = conn.call(again).await;
    assert_eq!(error_code(&reply), "internal", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unavailable"),
        "{reply}"
    );
    let read = json!({"id": 4, "op": "read", "resource": "r", "token": token});
    assert_eq!(conn.call(read).await["value"], json!(null));
    let release = json!({"id": 5, "op": "release", "resource": "r", "token": token});
    assert_eq!(conn.call(release).await["ok"], true);
    assert!(conn.lock(6, "r", "exclusive").await > token);
    stop.await;
}
