//! Chaos: a few hundred connections mixing good requests, garbage, half lines, huge lines,
//! sudden disconnects and SIGKILLed client processes against one lockd for a bounded time.
//! Afterwards lockd still answers, its memory is back near where it started, no lock is left
//! with a dead holder or waiter, and a counter guarded by the lock lost no update.

use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::support::{Conn, Deadline, Lockd};

const CHAOS_TIME: Duration = Duration::from_secs(2);
/// Waves of chaos. lockd's RSS after a wave is the allocator's high-water mark, which rises
/// whenever a wave happens to keep more connections alive at once than the ones before (more
/// likely on a loaded machine); a leak makes it rise after every wave. With three waves, two
/// new peaks in a row failed 1 run in 20 on a loaded two-core machine; five make a run of four
/// new peaks, each over 8 MiB, rare enough to mean a leak.
const WAVES: usize = 5;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc")
}

/// A tiny deterministic generator, so a failing run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockd_survives_a_crowd_of_broken_clients() {
    let lockd = Lockd::start(&[
        "--max-frame-bytes",
        "4096",
        "--max-connections-per-ip",
        "5000",
    ]);
    let addr = lockd.addr;
    let pid = lockd.child.id();
    let mut probe = lockd.connect().await;
    // The probe stays idle through the waves, which on a loaded machine take longer than the
    // default lease (15 s): with it, lockd would rightly expire the probe's session and close
    // its connection before the checks below. Ask for the longest lease lockd grants.
    let hello = probe
        .call(json!({"id": 0, "op": "hello", "lease_ms": 300_000}))
        .await;
    assert_eq!(hello["lease_ms"], 300_000, "{hello}");
    for id in 0..200 {
        probe.call(json!({"id": id, "op": "ping"})).await;
    }
    let rss_start = rss_kib(pid);

    // The first waves grow the allocator's pools to their working size; a later wave must not
    // grow them much further, or something leaks.
    let (mut acked, mut killed) = (0, 0);
    let mut rss_after_wave = Vec::new();
    for _ in 0..WAVES {
        let (wave_acked, wave_killed) = chaos_wave(addr).await;
        acked += wave_acked;
        killed += wave_killed;
        rss_after_wave.push(settled_rss_kib(pid).await);
    }

    // Still answering.
    assert_eq!(
        probe.call(json!({"id": 1, "op": "ping"})).await,
        json!({"id": 1, "ok": true})
    );
    // Every lock is accounted for: all chaos clients are gone, so once lockd has seen every
    // connection close, nothing is held or queued.
    let deadline = Deadline::new("every chaos client's holds and waits to be gone");
    loop {
        let status = probe.call(json!({"id": 2, "op": "status"})).await;
        if status["resources"] == json!([]) {
            break;
        }
        deadline.tick(format!("left behind: {status}")).await;
    }
    // No lost update.
    let token = probe.lock(3, "counter", "shared").await;
    let read = probe
        .call(json!({"id": 4, "op": "read", "resource": "counter", "token": token}))
        .await;
    let counter: u64 = read["value"].as_str().unwrap().parse().unwrap();
    assert_eq!(counter, acked);
    eprintln!(
        "chaos: {WAVES} waves of {CHAOS_TIME:?}, {counter} counted increments, {killed} SIGKILLed \
         client processes; RSS {rss_start} KiB at start, then after each wave (KiB): \
         {rss_after_wave:?}"
    );
    // A leak grows RSS by about the same amount in every wave. One wave can still end higher
    // than the others without a leak (on a loaded machine more of its connections are alive
    // at once, and the allocator keeps the pages), so only growth in every wave fails (see
    // WAVES).
    let grew_every_wave = rss_after_wave
        .windows(2)
        .all(|pair| pair[1] > pair[0] + 8 * 1024);
    assert!(
        !grew_every_wave,
        "RSS kept growing wave after wave: {rss_after_wave:?} KiB"
    );
}

/// RSS once it has stopped falling (freed memory goes back to the OS with some delay).
async fn settled_rss_kib(pid: u32) -> u64 {
    let mut rss = rss_kib(pid);
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = rss_kib(pid);
        if now >= rss {
            return now;
        }
        rss = now;
    }
    rss
}

/// Runs the crowd for [`CHAOS_TIME`]; returns (acknowledged increments, killed processes).
async fn chaos_wave(addr: std::net::SocketAddr) -> (u64, usize) {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for client in 0..8u64 {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::connect(addr).await;
            let mut id = client * 1_000_000;
            while !stop.load(Ordering::Relaxed) {
                id += 10;
                conn.send(json!({"id": id, "op": "acquire", "resource": "counter"}))
                    .await;
                let mut granted = conn.recv().await;
                while granted.get("event").is_some() {
                    granted = conn.recv().await;
                }
                let token = granted["token"].as_u64().expect("counter lock granted");
                let read = conn
                    .call(
                        json!({"id": id + 1, "op": "read", "resource": "counter", "token": token}),
                    )
                    .await;
                let count: u64 = read["value"].as_str().map_or(0, |v| v.parse().unwrap());
                let write = json!({"id": id + 2, "op": "write", "resource": "counter",
                    "token": token, "value": (count + 1).to_string()});
                if conn.call(write).await["ok"] == true {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                let release =
                    json!({"id": id + 3, "op": "release", "resource": "counter", "token": token});
                assert_eq!(conn.call(release).await["ok"], true);
            }
        }));
    }
    for worker in 0..200u64 {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (worker + 1));
            while !stop.load(Ordering::Relaxed) {
                misbehave(addr, &mut rng).await;
            }
        }));
    }
    // Real client processes holding locks, killed with SIGKILL mid-hold.
    let mut killed = 0;
    let deadline = tokio::time::Instant::now() + CHAOS_TIME;
    while tokio::time::Instant::now() < deadline {
        let mut holders: Vec<Child> = (0..10).map(|i| hold_in_a_process(addr, i)).collect();
        tokio::time::sleep(Duration::from_millis(150)).await;
        for child in &mut holders {
            let _ = child.kill();
            let _ = child.wait();
            killed += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        task.await.unwrap();
    }
    (acked.load(Ordering::Relaxed), killed)
}

/// One misbehaving connection, chosen at random.
async fn misbehave(addr: std::net::SocketAddr, rng: &mut Rng) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
        return;
    };
    let resource = format!("r{}", rng.next() % 16);
    match rng.next() % 6 {
        // Garbage, then leave.
        0 => {
            let garbage: Vec<u8> = (0..rng.next() % 200).map(|_| rng.next() as u8).collect();
            let _ = stream.write_all(&garbage).await;
            let _ = stream.write_all(b"\n").await;
        }
        // Half a line, then silence, then leave.
        1 => {
            let _ = stream.write_all(b"{\"id\": 1, \"op\": \"acq").await;
            tokio::time::sleep(Duration::from_millis(rng.next() % 50)).await;
        }
        // A line far over the frame limit.
        2 => {
            let _ = stream
                .write_all(&vec![b'x'; 10_000 + (rng.next() % 50_000) as usize])
                .await;
            let _ = stream.write_all(b"\n").await;
        }
        // Take or queue for a lock, then vanish without releasing.
        3 => {
            let line = json!({"id": 1, "op": "acquire", "resource": resource}).to_string() + "\n";
            let _ = stream.write_all(line.as_bytes()).await;
            tokio::time::sleep(Duration::from_millis(rng.next() % 30)).await;
        }
        // Pipelined nonsense mixed with valid requests.
        4 => {
            let mut batch = String::new();
            for id in 0..20 {
                batch.push_str(&json!({"id": id, "op": "ping"}).to_string());
                batch.push_str("\n{\"id\": -1}\n[]\n");
            }
            batch.push_str(
                &json!({"id": 99, "op": "release", "resource": resource, "token": 1}).to_string(),
            );
            batch.push('\n');
            let _ = stream.write_all(batch.as_bytes()).await;
        }
        // A good citizen that cancels its wait.
        _ => {
            let (read, write) = stream.into_split();
            let mut conn = Conn::from_halves(read, write);
            conn.send(json!({"id": 1, "op": "acquire", "resource": resource, "timeout_ms": 20}))
                .await;
            conn.send(json!({"id": 2, "op": "cancel", "target": 1}))
                .await;
            let _ = conn.try_recv(Duration::from_millis(100)).await;
        }
    }
}

/// A shell process that takes a lock over /dev/tcp and then sleeps holding it.
fn hold_in_a_process(addr: std::net::SocketAddr, i: usize) -> Child {
    let script = format!(
        "exec 3<>/dev/tcp/{}/{}; printf '{{\"id\":1,\"op\":\"acquire\",\"resource\":\"proc{}\"}}\\n' >&3; sleep 30",
        addr.ip(),
        addr.port(),
        i % 4
    );
    Command::new("bash")
        .args(["-c", &script])
        .spawn()
        .expect("bash runs")
}
