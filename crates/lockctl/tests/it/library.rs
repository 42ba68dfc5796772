//! The client library: concurrency on one connection, keepalive, and mutual exclusion under
//! load.

use std::time::Duration;

use lockctl::{Client, ClientError, ErrorCode, LockMode};

use crate::support::{Server, PATIENCE};

#[tokio::test]
async fn many_clients_increment_a_counter_without_losing_an_update() {
    const CLIENTS: usize = 16;
    const ROUNDS: usize = 200;
    let server = Server::start();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let client = server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::with_capacity(ROUNDS);
            for _ in 0..ROUNDS {
                let lock = client.acquire("counter", LockMode::Exclusive, None).await?;
                let value = client.read("counter", lock.token).await?;
                let count: u64 = value.as_deref().unwrap_or("0").parse().unwrap();
                client
                    .write("counter", lock.token, &(count + 1).to_string())
                    .await?;
                client.release("counter", lock.token).await?;
                seen.push((lock.token, count));
            }
            Ok::<_, ClientError>(seen)
        }));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.unwrap().unwrap());
    }
    // Ordered by fencing token, the counts read must be 0, 1, 2, ...: every holder saw the
    // previous holder's write, and tokens grew with every grant.
    history.sort();
    let counts: Vec<u64> = history.iter().map(|(_, count)| *count).collect();
    let expected: Vec<u64> = (0..(CLIENTS * ROUNDS) as u64).collect();
    assert_eq!(counts, expected);

    let client = server.client().await;
    let lock = client
        .acquire("counter", LockMode::Shared, None)
        .await
        .unwrap();
    let total = client.read("counter", lock.token).await.unwrap();
    assert_eq!(total, Some((CLIENTS * ROUNDS).to_string()));
}

#[tokio::test]
async fn one_connection_holds_and_waits_for_many_locks_at_once() {
    let server = Server::start();
    let blocker = server.client().await;
    let held = blocker
        .acquire("b", LockMode::Exclusive, None)
        .await
        .unwrap();
    let client = server.client().await;
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.acquire("b", LockMode::Exclusive, None).await })
    };
    // While that waits, the same connection takes and uses other locks.
    for name in ["c", "d", "e"] {
        let lock = client
            .acquire(name, LockMode::Exclusive, None)
            .await
            .unwrap();
        client.write(name, lock.token, name).await.unwrap();
    }
    blocker.release("b", held.token).await.unwrap();
    let granted = waiting.await.unwrap().unwrap();
    assert!(granted.token > held.token);
}

#[tokio::test]
async fn cancel_withdraws_a_waiting_acquire() {
    let server = Server::start();
    let blocker = server.client().await;
    blocker
        .acquire("b", LockMode::Exclusive, None)
        .await
        .unwrap();
    let client = server.client().await;
    let mut call = client.start_acquire("b", LockMode::Shared, None).unwrap();
    assert!(matches!(
        call.next().await,
        lockctl::AcquireProgress::Queued(1)
    ));
    client.cancel(call.id()).await.unwrap();
    let lockctl::AcquireProgress::Done(Err(err)) = call.next().await else {
        panic!("expected the acquire to fail");
    };
    assert_eq!(err.code(), Some(ErrorCode::Cancelled));
}

#[tokio::test]
async fn keepalive_holds_a_lock_past_its_lease_and_silence_loses_it() {
    let server = Server::start_with_short_leases();
    let addr = server.addr_string();
    // Keepalive pings at a third of the lease, so a ping may come up to two thirds of a lease
    // late (a loaded machine) before the session expires by mistake.
    let lease = Duration::from_secs(1);
    let kept = Client::builder(&addr)
        .name("kept")
        .lease(lease)
        .connect()
        .await
        .unwrap();
    assert_eq!(kept.lease(), lease);
    let _k = kept.lock("k").acquire().await.unwrap();

    let silent = Client::builder(&addr)
        .lease(lease)
        .keepalive(false)
        .connect()
        .await
        .unwrap();
    let _s = silent.lock("s").acquire().await.unwrap();

    // "s" is granted once the silent session expires, a lease after its last request, which
    // came after `kept` last said anything itself: only its keepalive can have kept "k" since.
    let other = server.client().await;
    let s = other.lock("s").timeout(PATIENCE).acquire().await;
    assert!(s.is_ok(), "the silent session expired: {s:?}");
    let k = other.lock("k").try_once().acquire().await;
    assert_eq!(
        k.unwrap_err().code(),
        Some(ErrorCode::Timeout),
        "still held"
    );
    // The expired session is told, both by its next call and by `lost`.
    tokio::time::timeout(PATIENCE, silent.lost()).await.unwrap();
    let err = silent.ping().await.unwrap_err();
    assert!(matches!(err, ClientError::ConnectionLost), "{err:?}");
    assert!(!kept.is_lost());
}

#[tokio::test]
async fn a_guard_reads_writes_and_releases_when_dropped() {
    let server = Server::start();
    let client = server.client().await;
    let other = server.client().await;
    {
        let guard = client.lock("cfg").acquire().await.unwrap();
        assert_eq!(guard.mode(), LockMode::Exclusive);
        assert_eq!(guard.read().await.unwrap(), None);
        guard.write("v1").await.unwrap();
        assert!(other.validate("cfg", guard.token()).await.unwrap());
        let busy = other.lock("cfg").shared().try_once().acquire().await;
        assert_eq!(busy.unwrap_err().code(), Some(ErrorCode::Timeout));
    }
    // Dropped: released without an explicit call.
    let reader = other
        .lock("cfg")
        .shared()
        .timeout(Duration::from_secs(5))
        .acquire()
        .await
        .unwrap();
    assert_eq!(reader.read().await.unwrap().as_deref(), Some("v1"));
    let refused = reader.write("v2").await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::NotExclusive));
    let token = reader.token();
    reader.release().await.unwrap();
    assert!(!other.validate("cfg", token).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guard_learns_when_its_session_is_lost() {
    let mut server = Server::start();
    let client = server.client().await;
    let guard = client.lock("l").acquire().await.unwrap();
    tokio::task::block_in_place(|| server.stop());
    tokio::time::timeout(PATIENCE, guard.lost())
        .await
        .expect("lost resolves when the server goes away");
    assert!(client.is_lost());
}
