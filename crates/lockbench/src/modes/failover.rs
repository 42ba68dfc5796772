//! `failover`: a run of leader kills in the cluster lockbench started (`--cluster`).
//!
//! One writer client keeps writing to a lock it holds, as a real client would: it knows every
//! node's address, follows `not_leader` to the leader, and after losing its connection resumes
//! its session on the new leader (`hello` with `session` and `resume_secret`) and re-sends the
//! write it had in flight under the same id (docs/protocol.md §11). Each kill:
//!
//! 1. waits until the cluster is steady (every node up and following one leader, the writer
//!    writing), then SIGKILLs the leader;
//! 2. polls the two survivors every few milliseconds: `cluster_status` (when one calls itself
//!    leader) and a probe `hello` on that one (opening a session is a log entry, so its
//!    success is the first write the new leader serves);
//! 3. waits for the writer's first acknowledged write after the kill; its stall is the time
//!    from its last acknowledged write before the kill to that one;
//! 4. reads from the new leader's log when it became leader ("this node is now the leader", a
//!    wall-clock timestamp on this machine's clock);
//! 5. restarts the killed node on its old ports and data.
//!
//! Where the time goes, per kill, all from the kill: `leader` (the new leader's log line:
//! detection of the silence plus the election), `status` (a survivor first answers
//! `cluster_status` as leader), `serves` (its first probe `hello` committed: the new leader's
//! first commit), and for the writer `detect` (its connection broke), `resumed` (its session resumed
//! on the new leader) and `write` (its re-sent write acknowledged). The summary gives each as
//! median and worst, and the ratio of `serves` and of the stall to `--election-timeout-ms`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::bench::{Bench, Mode};
use crate::clients::cluster::{cluster_status, find_leader, serves};
use crate::clients::LineReader;
use crate::lockd_cluster::{last_leader_line, LockdCluster};
use crate::report::{round, Record, Report};

/// How long one kill may take to be served again before the run gives up on it.
const KILL_PATIENCE: Duration = Duration::from_secs(60);

/// How often the survivors are polled after a kill.
const POLL: Duration = Duration::from_millis(5);

/// How long the writer waits for one reply before it takes the connection for dead. A request
/// to a leader that can still commit is answered in milliseconds; this only bounds a request
/// stuck on a node that lost its leadership without closing the connection.
const REPLY_PATIENCE: Duration = Duration::from_secs(3);

/// The writer's session lease: what a real client would ask for, and longer than a failover.
const WRITER_LEASE_MS: u64 = 15_000;

/// Runs `bench.kills` leader kills and pushes one record per kill and a summary.
pub async fn run(bench: &mut Bench, report: &mut Report) -> Result<()> {
    let election_ms = election_timeout_ms(&bench.lockd_args)?;
    let addrs = bench.cluster_addrs.clone();
    if bench.cluster.is_none() {
        bail!("--mode failover kills and restarts nodes, so it needs --cluster (not --server)");
    }
    let prefix = bench.run_prefix();
    let journal = Arc::new(Mutex::new(Journal::default()));
    let writer = tokio::spawn(writer_loop(
        addrs.clone(),
        format!("{prefix}failover"),
        Arc::clone(&journal),
    ));
    let mut kills = Vec::new();
    for round_no in 1..=bench.kills {
        if writer.is_finished() {
            break;
        }
        let cluster = bench
            .cluster
            .as_mut()
            .ok_or_else(|| anyhow!("the cluster is gone"))?;
        let kill = one_kill(cluster, &addrs, &journal)
            .await
            .with_context(|| format!("kill {round_no}"))?;
        eprintln!(
            "lockbench: failover {round_no}/{}: leader {} ms, serves {} ms, writer stalled {} ms",
            bench.kills,
            kill.leader_ms.map_or("?".to_owned(), |ms| ms.to_string()),
            kill.serves_ms,
            kill.stall_ms
        );
        let mut record = Record::single(Mode::Failover, Some("kill"), bench.window)
            .with("kill", round_no)
            .with("killed_node", kill.killed + 1)
            .with("new_leader_node", kill.new_leader + 1)
            .with("elections", kill.elections)
            .with("election_timeout_ms", election_ms)
            .with("stall_ms", kill.stall_ms)
            .with("serves_ms", kill.serves_ms)
            .with("status_ms", kill.status_ms)
            .with("writer_detect_ms", kill.detect_ms)
            .with("writer_resumed_ms", kill.resumed_ms)
            .with("writer_write_ms", kill.write_ms)
            .with("writer_new_session", kill.new_session);
        if let Some(ms) = kill.leader_ms {
            record = record.with("leader_ms", ms);
        }
        report.push(record)?;
        kills.push(kill);
    }
    journal.lock().map_err(|_| anyhow!("poisoned"))?.stop = true;
    match tokio::time::timeout(Duration::from_secs(10), writer).await {
        Ok(Ok(Err(err))) => return Err(err.context("the failover writer failed")),
        Ok(Err(join)) => bail!("the failover writer panicked: {join}"),
        Ok(Ok(Ok(()))) | Err(_) => {}
    }
    if kills.len() < bench.kills as usize {
        bail!("the writer stopped after {} kills", kills.len());
    }
    report.push(summary(&kills, election_ms, bench))?;
    Ok(())
}

/// `--election-timeout-ms` as given to the nodes (lockd's default when absent).
fn election_timeout_ms(lockd_args: &[String]) -> Result<u64> {
    let mut value = None;
    let mut args = lockd_args.iter();
    while let Some(arg) = args.next() {
        if let Some(ms) = arg.strip_prefix("--election-timeout-ms=") {
            value = Some(ms.to_owned());
        } else if arg == "--election-timeout-ms" {
            value = args.next().cloned();
        }
    }
    match value {
        None => Ok(1000),
        Some(ms) => ms
            .parse()
            .with_context(|| format!("--election-timeout-ms {ms:?} is not a number")),
    }
}

/// What one kill measured, in milliseconds from the SIGKILL.
#[derive(Debug, Clone)]
struct Kill {
    killed: usize,
    new_leader: usize,
    elections: u64,
    leader_ms: Option<u64>,
    status_ms: u64,
    serves_ms: u64,
    detect_ms: u64,
    resumed_ms: u64,
    write_ms: u64,
    stall_ms: u64,
    new_session: bool,
}

/// Kills the leader once and measures until the writer is served again; restarts the node.
async fn one_kill(
    cluster: &mut LockdCluster,
    addrs: &[SocketAddr],
    journal: &Arc<Mutex<Journal>>,
) -> Result<Kill> {
    // Steady: every node up, one leader, and the writer writing to it.
    let (leader_addr, old_term) = steady(addrs, journal).await?;
    let killed = index_of(addrs, leader_addr)?;
    let kill_wall = SystemTime::now();
    let kill_at = Instant::now();
    journal.lock().map_err(|_| anyhow!("poisoned"))?.kill_at = Some(kill_at);
    cluster.kill(killed)?;

    let survivors: Vec<SocketAddr> = addrs
        .iter()
        .copied()
        .filter(|&addr| addr != leader_addr)
        .collect();
    let deadline = kill_at + KILL_PATIENCE;
    let mut status_at = None;
    let (new_leader, serves_at, new_term) = 'poll: loop {
        for &addr in &survivors {
            if let Ok(status) = cluster_status(addr).await {
                if status["role"] == "leader" {
                    status_at.get_or_insert_with(Instant::now);
                    if serves(addr).await {
                        let term = status["term"].as_u64().unwrap_or(0);
                        break 'poll (addr, Instant::now(), term);
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no survivor served within {KILL_PATIENCE:?} of the kill");
        }
        tokio::time::sleep(POLL).await;
    };
    let new_leader = index_of(addrs, new_leader)?;
    // The writer's first acknowledged write after the kill.
    let writer = loop {
        {
            let journal = journal.lock().map_err(|_| anyhow!("poisoned"))?;
            if let Some(error) = &journal.error {
                bail!("the writer failed: {error}");
            }
            if let (Some(first), Some(last)) = (journal.first_after_kill, journal.last_before_kill)
            {
                break (
                    first,
                    last,
                    journal.broke_at,
                    journal.resumed_at,
                    journal.new_session,
                );
            }
        }
        if Instant::now() > deadline {
            bail!("the writer was not served within {KILL_PATIENCE:?} of the kill");
        }
        tokio::time::sleep(POLL).await;
    };
    let (first, last, broke_at, resumed_at, new_session) = writer;
    let leader_ms = last_leader_line(&cluster.log(new_leader))
        .and_then(|stamp| parse_rfc3339(&stamp))
        .and_then(|at| at.duration_since(kill_wall).ok())
        .map(ms);
    cluster.restart(killed)?;
    let since = |at: Option<Instant>| at.map_or(0, |at| ms(at.saturating_duration_since(kill_at)));
    let kill = Kill {
        killed,
        new_leader,
        // Each term is one election started; more than one means votes were split or lost.
        elections: new_term.saturating_sub(old_term),
        leader_ms,
        status_ms: since(status_at),
        serves_ms: since(Some(serves_at)),
        detect_ms: since(broke_at),
        resumed_ms: since(resumed_at),
        write_ms: since(Some(first)),
        stall_ms: ms(first.saturating_duration_since(last)),
        new_session,
    };
    let mut journal = journal.lock().map_err(|_| anyhow!("poisoned"))?;
    journal.kill_at = None;
    journal.first_after_kill = None;
    journal.last_before_kill = None;
    journal.broke_at = None;
    journal.resumed_at = None;
    journal.new_session = false;
    Ok(kill)
}

/// Waits until every node answers `cluster_status` naming one leader that serves, and the
/// writer has had a write acknowledged since; returns the leader's address.
async fn steady(addrs: &[SocketAddr], journal: &Arc<Mutex<Journal>>) -> Result<(SocketAddr, u64)> {
    let deadline = Instant::now() + KILL_PATIENCE;
    loop {
        let mut leaders = Vec::new();
        let mut term = 0;
        for &addr in addrs {
            match cluster_status(addr).await {
                Ok(status) => {
                    leaders.push(status["leader"].as_u64());
                    term = term.max(status["term"].as_u64().unwrap_or(0));
                }
                Err(_) => leaders.push(None),
            }
        }
        if leaders.iter().all(|l| l.is_some() && *l == leaders[0]) {
            let leader = find_leader(addrs, KILL_PATIENCE).await?;
            let seen = journal.lock().map_err(|_| anyhow!("poisoned"))?.writes;
            // A few more writes after the cluster looks steady, so that the restarted node has
            // caught up with them too and the writer is on the leader.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let now = journal.lock().map_err(|_| anyhow!("poisoned"))?.writes;
            if now > seen && find_leader(addrs, KILL_PATIENCE).await? == leader {
                return Ok((leader, term));
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the cluster did not settle within {KILL_PATIENCE:?} (leaders seen: {leaders:?})"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn index_of(addrs: &[SocketAddr], addr: SocketAddr) -> Result<usize> {
    addrs
        .iter()
        .position(|&a| a == addr)
        .ok_or_else(|| anyhow!("{addr} is not a node of the cluster"))
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The run's summary: median and worst of each measure, and the ratios to the timeout.
fn summary(kills: &[Kill], election_ms: u64, bench: &Bench) -> Record {
    let stats = |values: Vec<u64>| -> Value {
        let (median, worst) = median_and_worst(values);
        json!({"median": median, "worst": worst})
    };
    let ratio = |values: Vec<u64>| -> Value {
        let (median, worst) = median_and_worst(values);
        let of = |v: f64| round(v / election_ms.max(1) as f64, 2);
        json!({"median": of(median), "worst": of(worst)})
    };
    let leader: Vec<u64> = kills.iter().filter_map(|k| k.leader_ms).collect();
    Record::single(Mode::Failover, Some("summary"), bench.window)
        .with("kills", kills.len())
        .with("election_timeout_ms", election_ms)
        .with("leader_ms", stats(leader))
        .with(
            "status_ms",
            stats(kills.iter().map(|k| k.status_ms).collect()),
        )
        .with(
            "serves_ms",
            stats(kills.iter().map(|k| k.serves_ms).collect()),
        )
        .with(
            "writer_detect_ms",
            stats(kills.iter().map(|k| k.detect_ms).collect()),
        )
        .with(
            "writer_resumed_ms",
            stats(kills.iter().map(|k| k.resumed_ms).collect()),
        )
        .with(
            "writer_write_ms",
            stats(kills.iter().map(|k| k.write_ms).collect()),
        )
        .with(
            "stall_ms",
            stats(kills.iter().map(|k| k.stall_ms).collect()),
        )
        .with(
            "serves_per_election_timeout",
            ratio(kills.iter().map(|k| k.serves_ms).collect()),
        )
        .with(
            "stall_per_election_timeout",
            ratio(kills.iter().map(|k| k.stall_ms).collect()),
        )
        .with(
            "elections",
            stats(kills.iter().map(|k| k.elections).collect()),
        )
        .with(
            "writer_new_sessions",
            kills.iter().filter(|k| k.new_session).count(),
        )
}

/// The median (the mean of the middle two for an even count) and the largest value.
pub fn median_and_worst(mut values: Vec<u64>) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    values.sort_unstable();
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2] as f64
    } else {
        (values[n / 2 - 1] + values[n / 2]) as f64 / 2.0
    };
    (median, values[n - 1] as f64)
}

/// An RFC 3339 UTC timestamp as lockd's JSON logs write it (`2026-12-04T23:00:02.25Z`, any
/// number of fraction digits), as a wall-clock time.
pub fn parse_rfc3339(stamp: &str) -> Option<SystemTime> {
    let stamp = stamp.strip_suffix('Z')?;
    let (date, time) = stamp.split_once('T')?;
    let mut date = date.split('-').map(str::parse::<i64>);
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':').map(str::parse::<u64>);
    let (hour, minute, second) = (hms.next()?.ok()?, hms.next()?.ok()?, hms.next()?.ok()?);
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let digits: String = fraction.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().ok()?;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// What the writer saw, shared with the kill loop.
#[derive(Debug, Default)]
struct Journal {
    /// Acknowledged writes so far.
    writes: u64,
    /// When the current kill was sent; the writer sorts its writes around it.
    kill_at: Option<Instant>,
    /// The last write acknowledged before the kill.
    last_before_kill: Option<Instant>,
    /// The first write acknowledged after the kill.
    first_after_kill: Option<Instant>,
    /// When the writer's connection broke after the kill.
    broke_at: Option<Instant>,
    /// When the writer's session was resumed (or a new one opened) after the kill.
    resumed_at: Option<Instant>,
    /// Whether the writer had to open a new session (its old one was gone): a failure of the
    /// session guarantee, counted in the summary.
    new_session: bool,
    /// Set by the kill loop when the run is over.
    stop: bool,
    /// Why the writer gave up, if it did.
    error: Option<String>,
}

impl Journal {
    /// A write acknowledged at `at` on a connection opened at `opened`. Only a connection
    /// opened after the kill can be served by the new leader: a reply read after the kill on
    /// an older connection was sent by the old leader before it died, so it counts as before.
    fn acknowledged(&mut self, at: Instant, opened: Instant) {
        self.writes += 1;
        match self.kill_at {
            Some(kill) if opened > kill => {
                self.first_after_kill.get_or_insert(at);
            }
            _ => self.last_before_kill = Some(at),
        }
    }

    fn broke(&mut self, at: Instant) {
        if self.kill_at.is_some_and(|kill| at > kill) && self.first_after_kill.is_none() {
            self.broke_at.get_or_insert(at);
        }
    }

    /// The session resumed (or opened) at `at` on a connection opened at `opened`; as for
    /// writes, only a connection opened after the kill counts.
    fn resumed(&mut self, at: Instant, opened: Instant, new_session: bool) {
        if self.kill_at.is_some_and(|kill| opened > kill) && self.first_after_kill.is_none() {
            self.resumed_at.get_or_insert(at);
            self.new_session |= new_session;
        }
    }
}

/// The writer task: writes until told to stop, recording into `journal`.
async fn writer_loop(
    addrs: Vec<SocketAddr>,
    resource: String,
    journal: Arc<Mutex<Journal>>,
) -> Result<()> {
    let result = write_until_stopped(addrs, resource, &journal).await;
    if let Err(err) = &result {
        if let Ok(mut journal) = journal.lock() {
            journal.error = Some(format!("{err:#}"));
        }
    }
    result
}

/// A session of the writer: its id and resume secret, and what it holds.
struct WriterSession {
    session: u64,
    secret: String,
    token: u64,
}

async fn write_until_stopped(
    addrs: Vec<SocketAddr>,
    resource: String,
    journal: &Arc<Mutex<Journal>>,
) -> Result<()> {
    let mut next_id: u64 = 1;
    let mut session: Option<WriterSession> = None;
    // The write in flight: its id, re-sent unchanged after a resume so it is applied once.
    let mut pending: Option<(u64, u64)> = None;
    let mut written = 0u64;
    let mut hint: Option<SocketAddr> = None;
    loop {
        if journal.lock().map_err(|_| anyhow!("poisoned"))?.stop {
            return Ok(());
        }
        // Find the leader and (re)establish the session on it.
        let Some((mut conn, opened, resumed_or_new)) =
            connect_session(&addrs, &mut hint, &mut session, &mut next_id, &resource).await?
        else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if resumed_or_new.is_some() {
            let new_session = resumed_or_new == Some(true);
            if new_session {
                // A new session holds a new lock: a pending write of the old one is void.
                pending = None;
            }
            journal.lock().map_err(|_| anyhow!("poisoned"))?.resumed(
                Instant::now(),
                opened,
                new_session,
            );
        }
        // Write until the connection breaks or the run stops.
        loop {
            if journal.lock().map_err(|_| anyhow!("poisoned"))?.stop {
                return Ok(());
            }
            let token = session.as_ref().map_or(0, |s| s.token);
            let (id, value) = match pending {
                Some(pending) => pending,
                None => {
                    written += 1;
                    let id = next_id;
                    next_id += 1;
                    (id, written)
                }
            };
            pending = Some((id, value));
            let request = json!({"id": id, "op": "write", "resource": resource, "token": token,
                                 "value": value.to_string()});
            match conn.call(id, &request).await {
                Ok(reply) if reply["ok"] == true => {
                    pending = None;
                    journal
                        .lock()
                        .map_err(|_| anyhow!("poisoned"))?
                        .acknowledged(Instant::now(), opened);
                }
                Ok(reply) if reply["error"]["code"] == "not_leader" => {
                    hint = reply["error"]["leader"]
                        .as_str()
                        .and_then(|a| a.parse().ok());
                    break;
                }
                Ok(reply) => bail!("lockd refused the failover writer's write: {reply}"),
                Err(_) => {
                    journal
                        .lock()
                        .map_err(|_| anyhow!("poisoned"))?
                        .broke(Instant::now());
                    break;
                }
            }
        }
    }
}

/// Connects to the leader (the hint first, then every node) and opens or resumes the session.
/// Returns the connection, when it was opened, and whether a session was resumed
/// (`Some(false)`), newly opened
/// (`Some(true)`, also the very first one), or `None` when no node serves yet.
async fn connect_session(
    addrs: &[SocketAddr],
    hint: &mut Option<SocketAddr>,
    session: &mut Option<WriterSession>,
    next_id: &mut u64,
    resource: &str,
) -> Result<Option<(Conn, Instant, Option<bool>)>> {
    let first = hint.take();
    let order: Vec<SocketAddr> = first
        .into_iter()
        .chain(addrs.iter().copied().filter(|&a| Some(a) != first))
        .collect();
    for addr in order {
        let opened = Instant::now();
        let Ok(mut conn) = Conn::connect(addr).await else {
            continue;
        };
        let id = *next_id;
        *next_id += 1;
        let hello = match session {
            Some(s) => json!({"id": id, "op": "hello", "session": s.session,
                              "resume_secret": s.secret}),
            None => json!({"id": id, "op": "hello", "client": "lockbench-failover",
                           "lease_ms": WRITER_LEASE_MS}),
        };
        let Ok(reply) = conn.call(id, &hello).await else {
            continue;
        };
        if reply["ok"] == true {
            if session.is_some() {
                return Ok(Some((conn, opened, Some(false))));
            }
            let session_id = reply["session"]
                .as_u64()
                .ok_or_else(|| anyhow!("hello gave no session: {reply}"))?;
            let secret = reply["resume_secret"]
                .as_str()
                .ok_or_else(|| anyhow!("hello gave no resume_secret (is this a cluster?)"))?
                .to_owned();
            let id = *next_id;
            *next_id += 1;
            let acquire = json!({"id": id, "op": "acquire", "resource": resource});
            let granted = conn.call(id, &acquire).await?;
            let token = granted["token"]
                .as_u64()
                .ok_or_else(|| anyhow!("the writer's lock was not granted: {granted}"))?;
            *session = Some(WriterSession {
                session: session_id,
                secret,
                token,
            });
            return Ok(Some((conn, opened, Some(true))));
        }
        match reply["error"]["code"].as_str() {
            Some("not_leader") => continue,
            Some("no_session") => {
                // The session is gone (its lease ran out during the outage): start again.
                *session = None;
                return Box::pin(connect_session(addrs, hint, session, next_id, resource)).await;
            }
            _ => bail!("lockd refused the failover writer's hello: {reply}"),
        }
    }
    Ok(None)
}

/// A plain JSON-lines connection that matches replies to requests by id.
struct Conn {
    stream: TcpStream,
    lines: LineReader,
}

impl Conn {
    async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = tokio::time::timeout(REPLY_PATIENCE, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow!("connect to {addr} timed out"))??;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            lines: LineReader::new(),
        })
    }

    /// Sends `request` and returns the final reply with `id`, skipping `queued` events and
    /// replies to other ids (a resumed session may get replies meant for its old connection).
    async fn call(&mut self, id: u64, request: &Value) -> Result<Value> {
        let mut line = serde_json::to_vec(request)?;
        line.push(b'\n');
        let exchange = async {
            self.stream.write_all(&line).await?;
            loop {
                let reply: Value =
                    serde_json::from_slice(self.lines.next_line(&mut self.stream).await?)?;
                if reply["id"].as_u64() == Some(id) && reply.get("event").is_none() {
                    return anyhow::Ok(reply);
                }
            }
        };
        tokio::time::timeout(REPLY_PATIENCE, exchange)
            .await
            .map_err(|_| anyhow!("no reply within {REPLY_PATIENCE:?}"))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_to_the_right_instant() {
        let at = parse_rfc3339("2026-12-04T23:00:02.25Z").expect("parses");
        let since = at.duration_since(UNIX_EPOCH).expect("after the epoch");
        // 2026-12-04 is day 20,791 since 1970-01-01.
        assert_eq!(since.as_secs(), 20_791 * 86_400 + 23 * 3600 + 2);
        assert_eq!(since.subsec_millis(), 250);
        let at = parse_rfc3339("1970-01-01T00:00:00.000000001Z").expect("parses");
        assert_eq!(at.duration_since(UNIX_EPOCH).expect("ok").as_nanos(), 1);
        assert!(parse_rfc3339("yesterday").is_none());
    }

    #[test]
    fn median_and_worst_of_odd_and_even_counts() {
        assert_eq!(median_and_worst(vec![5, 1, 3]), (3.0, 5.0));
        assert_eq!(median_and_worst(vec![4, 1, 3, 2]), (2.5, 4.0));
        assert_eq!(median_and_worst(Vec::new()), (0.0, 0.0));
    }

    #[test]
    fn the_election_timeout_is_read_from_the_node_flags() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(election_timeout_ms(&args(&[])).expect("default"), 1000);
        assert_eq!(
            election_timeout_ms(&args(&["--election-timeout-ms", "600"])).expect("two words"),
            600
        );
        assert_eq!(
            election_timeout_ms(&args(&["--election-timeout-ms=750"])).expect("one word"),
            750
        );
        assert!(election_timeout_ms(&args(&["--election-timeout-ms", "x"])).is_err());
    }

    #[test]
    fn the_journal_sorts_writes_around_the_kill() {
        let mut journal = Journal::default();
        let start = Instant::now();
        let old = start;
        let new = start + Duration::from_millis(890);
        journal.acknowledged(start, old);
        journal.kill_at = Some(start + Duration::from_millis(10));
        // The old leader's last reply, read after the kill: still before.
        journal.acknowledged(start + Duration::from_millis(11), old);
        journal.broke(start + Duration::from_millis(12));
        journal.resumed(start + Duration::from_millis(900), new, false);
        journal.acknowledged(start + Duration::from_millis(950), new);
        journal.acknowledged(start + Duration::from_millis(960), new);
        assert_eq!(
            journal.last_before_kill,
            Some(start + Duration::from_millis(11))
        );
        assert_eq!(
            journal.first_after_kill,
            Some(start + Duration::from_millis(950))
        );
        assert_eq!(journal.broke_at, Some(start + Duration::from_millis(12)));
        assert_eq!(journal.resumed_at, Some(start + Duration::from_millis(900)));
        assert_eq!(journal.writes, 4);
        assert!(!journal.new_session);
    }
}
