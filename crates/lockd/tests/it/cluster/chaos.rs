//! Faults on purpose: while clients count under exclusive locks, the test kills leaders,
//! pauses nodes for longer than an election timeout, restarts nodes and cuts or drops the links
//! into a node. Afterwards, per counter: no acknowledged write lost, none applied twice, every
//! accepted write's token above the previous accepted write's, and every client still served
//! (no waiter lost).
//!
//! `LOCKD_CHAOS_SECS` sets how long faults are injected (default 8; docs/testing.md has a long
//! run's figures).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::net::TcpStream;

use super::Cluster;
use crate::fault_proxy::Mode;
use crate::support::Conn;

const CLIENTS: usize = 6;
const COUNTERS: [&str; 2] = ["counter/a", "counter/b"];
const LEASE_MS: u64 = 3_000;
/// Silence after which a client pings to learn whether its connection still works.
const SILENCE: Duration = Duration::from_millis(700);
/// How long a client may go without finding a leader before the test fails.
const NO_LEADER_LIMIT: Duration = Duration::from_secs(30);

/// A write the cluster acknowledged.
#[derive(Debug, Clone, Copy)]
struct Ack {
    counter: usize,
    value: u64,
    token: u64,
}

#[derive(Debug, Default)]
struct Tally {
    acks: Mutex<Vec<Ack>>,
    /// Writes whose outcome no client can know (their session expired around them).
    unknown: Mutex<Vec<usize>>,
    sessions_lost: AtomicU64,
    reconnects: AtomicU64,
}

/// The session ended (its lease ran out while no leader could be reached).
#[derive(Debug)]
struct SessionLost;

/// A client that finds the leader, resumes its session after any failure, and re-sends its
/// request in flight with the same id (the cluster answers a retry from its saved reply).
struct ChaosClient {
    addrs: Vec<SocketAddr>,
    conn: Option<Conn>,
    /// The session to resume after a failure: its id and resume secret, as its `hello` gave
    /// them.
    session: Option<(u64, Value)>,
    next_id: u64,
    tally: Arc<Tally>,
}

impl ChaosClient {
    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Connects to the leader and says hello, resuming the session if there is one.
    async fn reconnect(&mut self) -> Result<(), SessionLost> {
        self.conn = None;
        self.tally.reconnects.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + NO_LEADER_LIMIT;
        let mut candidates: VecDeque<SocketAddr> = VecDeque::new();
        loop {
            assert!(
                Instant::now() < deadline,
                "no leader reachable for {NO_LEADER_LIMIT:?}"
            );
            let Some(addr) = candidates.pop_front() else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                candidates.extend(&self.addrs);
                continue;
            };
            let connect = TcpStream::connect(addr);
            let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(500), connect).await
            else {
                continue;
            };
            let mut conn = Conn::from_stream(stream);
            let id = self.new_id();
            let mut hello = json!({"id": id, "op": "hello", "lease_ms": LEASE_MS});
            if let Some((session, secret)) = &self.session {
                hello["session"] = json!(session);
                hello["resume_secret"] = secret.clone();
            }
            if !conn.try_send(hello).await {
                continue;
            }
            // Frames for earlier requests of the session may come first (they are routed to
            // the session's newest connection).
            let reply = loop {
                match conn.try_recv(Duration::from_secs(1)).await {
                    Ok(Some(frame)) if frame["id"] == id || frame["id"].is_null() => {
                        break Some(frame)
                    }
                    Ok(Some(_)) => {}
                    _ => break None,
                }
            };
            let Some(reply) = reply else {
                continue;
            };
            match (reply["ok"] == true, code(&reply)) {
                (true, _) => {
                    // A resume's reply has no secret: the one the session opened with stays.
                    if self.session.is_none() {
                        let session = reply["session"].as_u64().expect("a session id");
                        self.session = Some((session, reply["resume_secret"].clone()));
                    }
                    self.conn = Some(conn);
                    return Ok(());
                }
                (false, "not_leader") => {
                    if let Some(leader) = reply["error"]["leader"].as_str() {
                        candidates.push_front(leader.parse().expect("a leader address"));
                    }
                }
                (false, "no_session") => {
                    self.session = None;
                    self.tally.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    return Err(SessionLost);
                }
                _ => panic!("unexpected hello reply {reply}"),
            }
        }
    }

    /// Sends `frame` and returns its final reply, across reconnects and retries.
    async fn call(&mut self, mut frame: Value) -> Result<Value, SessionLost> {
        let id = self.new_id();
        frame["id"] = json!(id);
        loop {
            if self.conn.is_none() {
                self.reconnect().await?;
            }
            let Some(conn) = self.conn.as_mut() else {
                continue;
            };
            if !conn.try_send(frame.clone()).await {
                self.conn = None;
                continue;
            }
            match self.await_reply(id).await {
                Some(reply) if code(&reply) == "no_session" => {
                    self.session = None;
                    self.conn = None;
                    self.tally.sessions_lost.fetch_add(1, Ordering::Relaxed);
                    return Err(SessionLost);
                }
                Some(reply) => return Ok(reply),
                None => self.conn = None,
            }
        }
    }

    /// The final reply to `id`; `None` when the connection ended, went silent (a ping went
    /// unanswered), or its node is no longer the leader.
    async fn await_reply(&mut self, id: u64) -> Option<Value> {
        let mut ping: Option<u64> = None;
        loop {
            let received = self.conn.as_mut()?.try_recv(SILENCE).await;
            match received {
                Ok(Some(frame)) => {
                    if code(&frame) == "not_leader" {
                        return None;
                    }
                    if frame["id"] == id {
                        if frame["event"] == "queued" {
                            continue;
                        }
                        return Some(frame);
                    }
                    // Frames are routed by session: a reply to a request sent on an earlier
                    // connection (a hello that timed out, the first try of a retried request)
                    // may arrive here. It must at least answer something this client sent.
                    assert!(
                        frame["id"]
                            .as_u64()
                            .is_some_and(|other| other <= self.next_id),
                        "a frame for no request this client sent: {frame}"
                    );
                    if frame["id"].as_u64() == ping {
                        ping = None;
                    }
                }
                Ok(None) => return None,
                Err(()) if ping.is_some() => return None,
                Err(()) => {
                    let ping_id = self.new_id();
                    let sent = self
                        .conn
                        .as_mut()?
                        .try_send(json!({"id": ping_id, "op": "ping"}))
                        .await;
                    if !sent {
                        return None;
                    }
                    ping = Some(ping_id);
                }
            }
        }
    }

    /// One round: lock a counter, read it, write it plus one, unlock. Returns whether the
    /// write was acknowledged.
    async fn count(&mut self, counter: usize) -> Result<bool, SessionLost> {
        let resource = COUNTERS[counter];
        let reply = self
            .call(json!({"op": "acquire", "resource": resource}))
            .await?;
        assert_eq!(reply["ok"], true, "{reply}");
        let token = reply["token"].as_u64().expect("a token");
        let reply = self
            .call(json!({"op": "read", "resource": resource, "token": token}))
            .await?;
        assert_eq!(reply["ok"], true, "{reply}");
        let value = reply["value"]
            .as_str()
            .map_or(0, |value| value.parse::<u64>().expect("a number"))
            + 1;
        let write = json!({"op": "write", "resource": resource, "token": token,
                           "value": value.to_string()});
        let reply = match self.call(write).await {
            Ok(reply) => reply,
            Err(SessionLost) => {
                lock(&self.tally.unknown).push(counter);
                return Err(SessionLost);
            }
        };
        assert_eq!(reply["ok"], true, "{reply}");
        lock(&self.tally.acks).push(Ack {
            counter,
            value,
            token,
        });
        let reply = self
            .call(json!({"op": "release", "resource": resource, "token": token}))
            .await?;
        assert_eq!(reply["ok"], true, "{reply}");
        Ok(true)
    }
}

fn code(frame: &Value) -> &str {
    frame["error"]["code"].as_str().unwrap_or("")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap()
}

/// The faults, in the order they are injected (then round again).
#[derive(Debug, Clone, Copy)]
enum Fault {
    KillLeader,
    PauseNode,
    CutLinksInto,
    DropLinksInto,
}

const FAULTS: [Fault; 4] = [
    Fault::KillLeader,
    Fault::PauseNode,
    Fault::CutLinksInto,
    Fault::DropLinksInto,
];

/// Injects one fault and heals it; for a leader kill, returns how long the cluster took to
/// serve again (a new leader answering a request).
async fn inject(cluster: &mut Cluster, fault: Fault, round: usize) -> Option<Duration> {
    let victim = round % 3;
    match fault {
        Fault::KillLeader => {
            let leader = cluster.leader(None).await;
            let killed = Instant::now();
            cluster.kill(leader);
            cluster.leader(Some(leader)).await;
            let recovered = killed.elapsed();
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.restart(leader, &[]);
            return Some(recovered);
        }
        Fault::PauseNode => {
            // Longer than the longest election timeout (600 to 1,200 ms).
            cluster.signal(victim, "STOP");
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            cluster.signal(victim, "CONT");
        }
        Fault::CutLinksInto => {
            cluster.set_inbound(victim, Mode::Blackhole);
            tokio::time::sleep(Duration::from_millis(1_200)).await;
            cluster.set_inbound(victim, Mode::Pass);
        }
        Fault::DropLinksInto => {
            cluster.set_inbound(victim, Mode::Drop);
            tokio::time::sleep(Duration::from_millis(600)).await;
            cluster.set_inbound(victim, Mode::Pass);
        }
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_stay_exact_while_leaders_die_and_links_break() {
    let chaos_for = Duration::from_secs(
        std::env::var("LOCKD_CHAOS_SECS")
            .ok()
            .and_then(|secs| secs.parse().ok())
            .unwrap_or(8),
    );
    let mut cluster = Cluster::start(3, &["--min-lease-ms", "100"]).await;
    cluster.leader(None).await;
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rounds: Arc<Vec<AtomicU64>> = Arc::new((0..CLIENTS).map(|_| AtomicU64::new(0)).collect());
    let mut workers = Vec::new();
    for index in 0..CLIENTS {
        let mut client = ChaosClient {
            addrs: cluster.client_addrs(),
            conn: None,
            session: None,
            next_id: 0,
            tally: Arc::clone(&tally),
        };
        let stop = Arc::clone(&stop);
        let rounds = Arc::clone(&rounds);
        workers.push(tokio::spawn(async move {
            let mut round = 0usize;
            while !stop.load(Ordering::Relaxed) {
                round += 1;
                if let Ok(true) = client.count((index + round) % COUNTERS.len()).await {
                    rounds[index].fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    let started = Instant::now();
    let mut injected = Vec::new();
    let mut recoveries: Vec<Duration> = Vec::new();
    let mut round = 0;
    while started.elapsed() < chaos_for {
        let fault = FAULTS[round % FAULTS.len()];
        if let Some(took) = inject(&mut cluster, fault, round).await {
            recoveries.push(took);
        }
        injected.push(fault);
        round += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for index in 0..3 {
        assert!(cluster.is_running(index));
    }

    // Healed: every client must still make progress (nobody is stuck in a lost queue).
    let before: Vec<u64> = rounds.iter().map(|r| r.load(Ordering::Relaxed)).collect();
    let settle = Instant::now() + Duration::from_secs(20);
    while rounds
        .iter()
        .zip(&before)
        .any(|(now, before)| now.load(Ordering::Relaxed) <= *before)
    {
        assert!(
            Instant::now() < settle,
            "a client made no progress after the faults"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        tokio::time::timeout(Duration::from_secs(30), worker)
            .await
            .expect("workers stop")
            .expect("no worker panicked");
    }

    // The history, per counter.
    let acks = lock(&tally.acks).clone();
    let unknown = lock(&tally.unknown).clone();
    let mut reader = ChaosClient {
        addrs: cluster.client_addrs(),
        conn: None,
        session: None,
        next_id: 0,
        tally: Arc::clone(&tally),
    };
    for (counter, resource) in COUNTERS.iter().enumerate() {
        let mut writes: Vec<Ack> = acks
            .iter()
            .copied()
            .filter(|a| a.counter == counter)
            .collect();
        writes.sort_by_key(|ack| ack.value);
        for pair in writes.windows(2) {
            assert!(
                pair[0].value < pair[1].value,
                "{resource}: value {} acknowledged twice: two holders at once, or a write \
                 applied twice",
                pair[1].value
            );
            assert!(
                pair[0].token < pair[1].token,
                "{resource}: write {} has token {} after write {} with token {}",
                pair[1].value,
                pair[1].token,
                pair[0].value,
                pair[0].token
            );
        }
        let reply = reader
            .call(json!({"op": "acquire", "resource": resource}))
            .await
            .expect("a session");
        let token = reply["token"].as_u64().expect("a token");
        let reply = reader
            .call(json!({"op": "read", "resource": resource, "token": token}))
            .await
            .expect("a session");
        let final_value: u64 = reply["value"].as_str().map_or(0, |v| v.parse().unwrap());
        let highest = writes.last().map_or(0, |ack| ack.value);
        let unknown_here = unknown.iter().filter(|c| **c == counter).count() as u64;
        assert!(
            final_value >= highest,
            "{resource}: acknowledged write {highest} lost (value {final_value})"
        );
        assert!(
            final_value <= writes.len() as u64 + unknown_here,
            "{resource}: value {final_value} after {} acknowledged writes and {unknown_here} \
             of unknown outcome",
            writes.len()
        );
        reader
            .call(json!({"op": "release", "resource": resource, "token": token}))
            .await
            .expect("a session");
    }
    recoveries.sort();
    eprintln!(
        "chaos: {:.0} s of faults, {} injected ({} leader kills, {} pauses, {} cuts, {} drops), \
         {} acknowledged writes, {} writes of unknown outcome, {} reconnects, {} sessions lost, \
         violations: 0; serving again after a leader kill: median {:?}, max {:?}",
        chaos_for.as_secs_f64(),
        injected.len(),
        count(&injected, |f| matches!(f, Fault::KillLeader)),
        count(&injected, |f| matches!(f, Fault::PauseNode)),
        count(&injected, |f| matches!(f, Fault::CutLinksInto)),
        count(&injected, |f| matches!(f, Fault::DropLinksInto)),
        acks.len(),
        unknown.len(),
        tally.reconnects.load(Ordering::Relaxed),
        tally.sessions_lost.load(Ordering::Relaxed),
        recoveries
            .get(recoveries.len() / 2)
            .copied()
            .unwrap_or_default(),
        recoveries.last().copied().unwrap_or_default(),
    );
}

fn count(faults: &[Fault], kind: impl Fn(&Fault) -> bool) -> usize {
    faults.iter().filter(|fault| kind(fault)).count()
}
