//! The admin HTTP port is bounded before it is trusted (issue 15, finding 5): a cap on its
//! connections, of its own, so that a flood of silent or half-sent admin connections can
//! neither take the lock port's connections nor stay open for ever.

use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::admin::{sample, start_with_admin};
use crate::support::{http, Deadline, PATIENCE};

/// The admin cap of the test's lockd.
const CAP: usize = 8;

/// The header timeout of the idle test's lockd: short, so that the test sees it pass.
const HEADER_TIMEOUT: Duration = Duration::from_millis(1_000);

/// The header timeout of the flood test's lockd: long enough that the held connections are
/// still open while the test opens more and uses the lock port, short enough to see it pass.
const FLOOD_HEADER_TIMEOUT: Duration = Duration::from_millis(4_000);

/// Waits until the peer closes `stream` (EOF or reset), reading and dropping anything it sends.
async fn closed_by_peer(stream: &mut TcpStream, what: &str) {
    let mut sink = [0u8; 1024];
    let deadline = Instant::now() + PATIENCE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(0) | Err(_)) => return,
            Ok(Ok(_)) => continue,
            Err(_) => panic!("waited {PATIENCE:?} for lockd to close {what}"),
        }
    }
}

#[tokio::test]
async fn a_flood_of_silent_admin_connections_is_capped_and_timed_out_and_spares_the_lock_port() {
    let cap = CAP.to_string();
    let timeout = FLOOD_HEADER_TIMEOUT.as_millis().to_string();
    let (lockd, admin) = start_with_admin(&[
        "--admin-max-connections",
        &cap,
        "--admin-header-timeout-ms",
        &timeout,
        "--max-connections",
        "4",
    ]);
    // The cap's worth of silent connections and half-sent requests. lockd accepts in order, so
    // these take every admin slot before the connections opened after them are accepted.
    let mut held = Vec::new();
    for i in 0..CAP {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        if i % 2 == 1 {
            stream
                .write_all(b"GET /v1/locks HTTP/1.1\r\nHost: x\r\n")
                .await
                .unwrap();
        }
        held.push(stream);
    }
    // (b) More admin connections are refused: answered 503 and closed at once. (They send
    // nothing: closing a socket with a request unread resets it, and the 503 with it.)
    for extra in 0..3 {
        let mut stream = TcpStream::connect(admin).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 503") && answer.contains("--admin-max-connections"),
            "admin connection {extra} over the cap: {answer:?}"
        );
    }
    // (a) The lock port has its own budget: its whole cap of clients connects and works.
    let mut clients = Vec::new();
    for id in 0..4 {
        let mut conn = lockd.connect().await;
        let reply = conn
            .call(json!({"id": id, "op": "acquire", "resource": format!("r{id}")}))
            .await;
        assert_eq!(reply["ok"], true, "lock client {id}: {reply}");
        clients.push(conn);
    }
    drop(clients);
    // (c) Every silent or half-sent connection is closed by the header timeout.
    for (i, stream) in held.iter_mut().enumerate() {
        closed_by_peer(stream, &format!("held admin connection {i}")).await;
    }
    // With the flood gone, the admin port serves again, and has counted its refusals.
    let deadline = Deadline::new("the admin port to serve again after the flood");
    let metrics = loop {
        let reply = http(admin, "GET", "/metrics", &[]).await;
        if reply.status == 200 {
            break reply.body;
        }
        deadline.tick(reply.status).await;
    };
    assert!(sample(&metrics, "lockd_admin_connections_refused_total") >= 3.0);
}

#[tokio::test]
async fn an_idle_keep_alive_admin_connection_is_closed_after_the_header_timeout() {
    let timeout = HEADER_TIMEOUT.as_millis().to_string();
    let (_lockd, admin) = start_with_admin(&["--admin-header-timeout-ms", &timeout]);
    let mut stream = TcpStream::connect(admin).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // The answer comes, the connection stays open for another request, and then, idle, it is
    // closed (the timeout of the next request's head runs from the end of the last answer).
    let mut answer = [0u8; 1024];
    let n = tokio::time::timeout(PATIENCE, stream.read(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        &answer[..n]
    );
    let idle = Instant::now();
    closed_by_peer(&mut stream, "the idle keep-alive connection").await;
    assert!(
        idle.elapsed() >= HEADER_TIMEOUT / 2,
        "not closed before its time"
    );
    let _ = http(admin, "GET", "/healthz", &[]).await;
}
