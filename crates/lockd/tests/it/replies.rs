//! Replies that grow with the table must not let one client take the server's memory: a client
//! that pipelines `status` requests and never reads its replies (issue 15, finding 6).

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;

use crate::admin::{sample, start_with_admin};
use crate::support::{http, Conn, Deadline, Lockd, PATIENCE};

/// The unsent-bytes limit of the test's lockd: small, so that a few pages pass it.
const MAX_UNSENT: usize = 256 * 1024;

/// Resources held during the flood, and the page each `status` of the flood asks for.
const BUSY: usize = 2_000;
const PAGE: usize = 500;

/// Statuses in the flood: far more pages than the kernel buffers of a stalled loopback
/// connection hold (about 4 MiB, some 90 pages), so a lockd that kept reading would answer
/// them all.
const FLOOD: usize = 600;

/// How long lockd's counters must stand still before it counts as stalled on the flood.
const SETTLED: Duration = Duration::from_millis(500);

#[tokio::test]
async fn unread_status_replies_stop_the_reading_and_stay_under_the_unsent_limit() {
    let limit = MAX_UNSENT.to_string();
    let (lockd, admin) = start_with_admin(&[
        "--max-unsent-bytes",
        &limit,
        "--write-timeout-ms",
        "60000",
        "--max-locks-per-session",
        "100000",
    ]);
    let mut holder = lockd.connect().await;
    let acquires: Vec<_> = (0..BUSY)
        .map(|i| json!({"id": i, "op": "acquire", "resource": format!("r{i:05}")}))
        .collect();
    holder.send_batch(&acquires).await;
    for _ in 0..BUSY {
        assert_eq!(holder.recv().await["ok"], true);
    }
    let mut observer = lockd.connect().await;
    let page = observer
        .call(json!({"id": 1, "op": "status", "limit": PAGE}))
        .await;
    let page_bytes = page.to_string().len() + 1;
    let before = sample(
        &http(admin, "GET", "/metrics", &[]).await.body,
        "lockd_request_seconds_count{op=\"status\"}",
    );

    // The flood, from a socket with a small receive buffer, never read.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut flood = socket.connect(lockd.addr).await.unwrap();
    let mut requests = String::new();
    for id in 0..FLOOD {
        requests.push_str(&json!({"id": id, "op": "status", "limit": PAGE}).to_string());
        requests.push('\n');
    }
    // Written from a task: lockd stops reading, so the write may never finish.
    let writer = tokio::spawn(async move {
        let _ = flood.write_all(requests.as_bytes()).await;
        flood
    });

    // Wait until lockd stands still on the flood: a write stalled, and no more statuses
    // answered for a while.
    let deadline = Deadline::new("lockd to stall on the unread flood");
    let mut last = (f64::NAN, Instant::now());
    let (answered, unsent) = loop {
        let metrics = http(admin, "GET", "/metrics", &[]).await.body;
        let answered = sample(&metrics, "lockd_request_seconds_count{op=\"status\"}") - before;
        let unsent = sample(&metrics, "lockd_unsent_reply_bytes");
        if answered != last.0 {
            last = (answered, Instant::now());
        } else if unsent > 0.0 && last.1.elapsed() >= SETTLED {
            break (answered, unsent);
        }
        deadline
            .tick(format!(
                "{answered} statuses answered, {unsent} bytes unsent"
            ))
            .await;
    };
    assert!(
        answered < FLOOD as f64,
        "lockd stopped reading the flood: it answered {answered} of {FLOOD} statuses"
    );
    // One write takes up to the limit plus the reply that crosses it; the pages of the flood
    // may be a little longer than the one measured (their ages have more digits), so a second
    // page's worth of room, which is still far below a page per request.
    assert!(
        unsent <= (MAX_UNSENT + 2 * page_bytes) as f64,
        "{unsent} bytes unsent; the limit is {MAX_UNSENT} plus a page of about {page_bytes}"
    );

    // Everyone else is still served meanwhile.
    let mut other = Conn::connect(lockd.addr).await;
    assert_eq!(
        other.call(json!({"id": 1, "op": "ping"})).await,
        json!({"id": 1, "ok": true})
    );
    let status = other
        .call(json!({"id": 2, "op": "status", "limit": 1}))
        .await;
    assert_eq!(status["next"], "r00000");
    writer.abort();
}

#[tokio::test]
async fn pipelined_statuses_are_all_answered_even_after_the_client_closes_its_side() {
    let lockd = Lockd::start(&[]);
    let mut holder = lockd.connect().await;
    holder.lock(1, "a", "exclusive").await;
    let conn = lockd.connect().await;
    let (mut reader, mut writer) = conn.into_split();
    let mut requests = String::new();
    for id in 1..=3 {
        requests.push_str(&json!({"id": id, "op": "status"}).to_string());
        requests.push('\n');
    }
    // A second and third `status` wait behind the first; the half-close must not lose them.
    writer.write_all(requests.as_bytes()).await.unwrap();
    writer.shutdown().await.unwrap();
    let mut ids = Vec::new();
    let mut line = String::new();
    loop {
        let read = tokio::io::AsyncBufReadExt::read_line(&mut reader, &mut line);
        let read = tokio::time::timeout(PATIENCE, read).await;
        if read.expect("every reply comes in time").unwrap() == 0 {
            break;
        }
        let reply: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(reply["resources"][0]["resource"], "a", "{reply}");
        ids.push(reply["id"].as_u64().unwrap());
        line.clear();
    }
    ids.sort_unstable();
    assert_eq!(ids, [1, 2, 3]);
}
