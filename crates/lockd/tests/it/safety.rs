//! A holder keeps what the server owes it: a lockd that was stopped does not count its own
//! pause as its clients' silence, and a lock-delay holds the next grant back after an expiry
//! (docs/safety.md).

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncBufReadExt;

use crate::support::{Lockd, PATIENCE};

/// Sends `signal` to `pid`.
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Resumes a stopped process when dropped, so that a failing test never leaves one behind.
struct Stopped(u32);

impl Stopped {
    fn stop(pid: u32) -> Stopped {
        signal(pid, "STOP");
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[tokio::test]
async fn a_lockd_stopped_for_two_leases_keeps_the_lock_of_a_client_that_kept_pinging() {
    const LEASE: Duration = Duration::from_millis(1_000);
    const PING_EVERY: Duration = Duration::from_millis(250);
    let lockd = Lockd::start(&["--min-lease-ms", "100"]);
    let mut holder = lockd.connect().await;
    let hello = holder
        .call(json!({"id": 1, "op": "hello", "lease_ms": LEASE.as_millis() as u64}))
        .await;
    let session = hello["session"].clone();
    holder.lock(2, "p", "exclusive").await;

    // The client pings every PING_EVERY whatever happens, and notes when each reply came.
    let (mut reader, mut writer) = holder.into_split();
    let pinger = tokio::spawn(async move {
        let mut sent = Vec::new();
        for id in 100u64.. {
            let line = format!("{}\n", json!({"id": id, "op": "ping"}));
            if tokio::io::AsyncWriteExt::write_all(&mut writer, line.as_bytes())
                .await
                .is_err()
            {
                break;
            }
            sent.push((id, Instant::now()));
            tokio::time::sleep(PING_EVERY).await;
            if sent.len() > 40 {
                break;
            }
        }
        sent
    });
    let (replies_tx, mut replies) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => {
                    let _ = replies_tx.send(None);
                    break;
                }
                Ok(_) => {
                    let _ = replies_tx.send(Some((line, Instant::now())));
                }
            }
        }
    });

    tokio::time::sleep(PING_EVERY * 2).await;
    let pid = lockd.child.id();
    let stopped_at = Instant::now();
    let stopped = Stopped::stop(pid);
    // The pause under test: twice the client's lease.
    tokio::time::sleep(LEASE * 2).await;
    drop(stopped);
    let woke_at = Instant::now();

    // Every ping is answered, up to one sent more than a lease after the wake-up; a session
    // expired for the pause would see EOF instead.
    let mut first_reply_after_wake = None;
    let mut answered_after_wake = 0;
    let deadline = woke_at + LEASE + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, replies.recv())
            .await
            .expect("the pings sent after a lease past the wake-up were answered in time")
            .expect("the reader reports the end");
        let Some((line, at)) = frame else {
            panic!(
                "lockd closed the connection {:?} after waking from a {:?} pause: the session \
                 expired for the server's own pause",
                woke_at.elapsed(),
                woke_at - stopped_at
            );
        };
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["ok"], true, "{reply}");
        if at >= woke_at {
            first_reply_after_wake.get_or_insert(at);
            answered_after_wake += 1;
        }
        if at > woke_at + LEASE + PING_EVERY * 2 {
            break;
        }
    }
    let mut observer = lockd.connect().await;
    let status = observer
        .call(json!({"id": 1, "op": "status", "resource": "p"}))
        .await;
    assert_eq!(status["resources"][0]["holders"][0]["session"], session);
    eprintln!(
        "pause test: lockd stopped for {:?} (lease {LEASE:?}, a ping every {PING_EVERY:?}); \
         first reply {:?} after SIGCONT; {answered_after_wake} pings answered after it; the \
         lock is still held",
        woke_at - stopped_at,
        first_reply_after_wake.map(|at| at - woke_at),
    );
    pinger.abort();
}

#[tokio::test]
async fn a_lock_delay_holds_back_the_next_grant_after_an_expiry_but_not_after_a_release() {
    const DELAY_MS: u64 = 2_000;
    let (lockd, admin) = crate::admin::start_with_admin(&["--min-lease-ms", "100"]);

    // A release frees the lock at once, whatever lock-delay its holder asked for.
    let mut releaser = lockd.connect().await;
    let granted = releaser
        .call(json!({"id": 1, "op": "acquire", "resource": "r", "lock_delay_ms": DELAY_MS}))
        .await;
    let token = granted["token"].as_u64().expect("a token");
    let mut next = lockd.connect().await;
    next.send(json!({"id": 1, "op": "acquire", "resource": "r"}))
        .await;
    assert_eq!(next.recv().await["event"], "queued");
    let released_at = Instant::now();
    releaser
        .call(json!({"id": 2, "op": "release", "resource": "r", "token": token}))
        .await;
    assert_eq!(next.recv().await["ok"], true);
    assert!(
        released_at.elapsed() < Duration::from_millis(DELAY_MS),
        "granted without a lock-delay"
    );

    // An expiry holds the next grant back for the holder's lock-delay.
    let mut holder = lockd.connect().await;
    holder
        .call(json!({"id": 1, "op": "hello", "lease_ms": 300}))
        .await;
    holder
        .call(json!({"id": 2, "op": "acquire", "resource": "e", "lock_delay_ms": DELAY_MS}))
        .await;
    let mut observer = lockd.connect().await;
    let status = observer
        .call(json!({"id": 1, "op": "status", "resource": "e"}))
        .await;
    assert_eq!(
        status["resources"][0]["holders"][0]["lock_delay_ms"],
        DELAY_MS
    );
    let mut waiter = lockd.connect().await;
    waiter
        .send(json!({"id": 1, "op": "acquire", "resource": "e"}))
        .await;
    assert_eq!(waiter.recv().await["event"], "queued");
    // The holder falls silent; lockd expires it and closes its connection.
    assert_eq!(holder.try_recv(PATIENCE).await, Ok(None), "expired");
    let expired_at = Instant::now();
    let status = observer
        .call(json!({"id": 2, "op": "status", "resource": "e"}))
        .await;
    let entry = &status["resources"][0];
    assert_eq!(entry["holders"], json!([]), "{status}");
    assert_eq!(
        entry["waiters"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );
    let left = entry["delayed_ms"].as_u64().expect("in lock-delay");
    assert!(left > 0 && left <= DELAY_MS, "{status}");
    let locks = crate::support::http(admin, "GET", "/v1/locks/e", &[])
        .await
        .json();
    assert!(locks["delayed_ms"].as_u64().is_some(), "{locks}");
    let metrics = crate::support::http(admin, "GET", "/metrics", &[])
        .await
        .body;
    for line in ["lockd_delayed_resources 1", "lockd_lock_delays_total 1"] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no {line:?} in\n{metrics}"
        );
    }
    let granted = waiter.recv().await;
    assert_eq!(granted["ok"], true, "{granted}");
    let held_back = expired_at.elapsed();
    // The client saw the expiry a little after lockd made it, so allow for that.
    assert!(
        held_back >= Duration::from_millis(DELAY_MS / 2),
        "granted {held_back:?} after the expiry, inside the {DELAY_MS} ms lock-delay"
    );
    eprintln!("lock-delay test: the waiter was granted {held_back:?} after the holder expired");
}
