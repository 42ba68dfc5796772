//! The client: typed methods for each op, [`AcquireCall`] for an acquire's progress, the
//! keepalive, and [`ClientBuilder::connect`], which opens the session and hands its connection
//! to the session task (`session.rs`).

use std::sync::Arc;
use std::time::Duration;

use protocol::cmd::Member;
use protocol::cmd::{
    Acquire, AcquireMany, AcquireManyOk, AcquireOk, Cancel, Hello, HelloOk, Permits, Read, ReadOk,
    Release, ResourceStatus, Status, StatusOk, Validate, ValidateOk, Write,
};
use protocol::{Command, FenceToken, Incoming, LockMode, RequestId, ResourceName, SessionId};
use serde::de::DeserializeOwned;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::calls::{Calls, Reply};
use crate::error::ClientError;
use crate::leader::{Dialer, Resume};
use crate::session::SessionTask;
use crate::timeouts::Timeouts;
use crate::tls::TlsOptions;

/// Where lockd listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5555";

/// A progress report or the outcome of a waiting acquire (`T`: [`AcquireManyOk`] for a
/// multi-resource acquire).
#[derive(Debug)]
pub enum AcquireProgress<T = AcquireOk> {
    /// The request waits in line at this position (1 = next).
    Queued(u64),
    /// The acquire finished.
    Done(Result<T, ClientError>),
}

/// An acquire in flight: read its progress with [`AcquireCall::next`].
#[derive(Debug)]
pub struct AcquireCall<T = AcquireOk> {
    /// What the grant's reply is read as.
    result: std::marker::PhantomData<fn() -> T>,
    id: RequestId,
    events: mpsc::UnboundedReceiver<u64>,
    reply: Option<oneshot::Receiver<Reply>>,
    /// Until the server's first answer (a place in line, or the outcome): when the reply
    /// timeout runs out, and how long it is.
    unanswered: Option<(Instant, Duration)>,
}

impl<T: DeserializeOwned> AcquireCall<T> {
    /// The request id, for [`Client::cancel`].
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next `queued` event, or the final outcome. After `Done`, it returns
    /// `Done(Err(ConnectionLost))` forever. If the server says nothing at all within the
    /// reply timeout, the outcome is [`ClientError::NoReply`]; once it has put the acquire in
    /// line, the wait is as long as the acquire's own timeout.
    pub async fn next(&mut self) -> AcquireProgress<T> {
        let Some(reply) = self.reply.as_mut() else {
            return AcquireProgress::Done(Err(ClientError::ConnectionLost));
        };
        let silence = async {
            match self.unanswered {
                Some((deadline, _)) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let progress = tokio::select! {
            biased;
            Some(position) = self.events.recv() => AcquireProgress::Queued(position),
            outcome = reply => AcquireProgress::Done(typed(outcome)),
            () = silence => {
                let waited = self.unanswered.map(|(_, waited)| waited).unwrap_or_default();
                AcquireProgress::Done(Err(ClientError::NoReply {
                    what: "acquire".to_owned(),
                    waited,
                }))
            }
        };
        self.unanswered = None;
        if let AcquireProgress::Done(_) = progress {
            self.reply = None;
        }
        progress
    }
}

/// Stops the keepalive task when dropped.
#[derive(Debug)]
pub struct Keepalive(JoinHandle<()>);

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A session with lockd. Cheap to clone; all clones share the session and its connection,
/// which closes when the last clone is dropped. On a single server that ends the session and
/// releases its locks; a cluster keeps them until the session's lease runs out.
///
/// Given a cluster's addresses, the client survives a failover: when its connection ends, it
/// resumes the session on the new leader and sends again the requests still awaiting their
/// replies, so locks, guards and waiting acquires carry on (see [`Client::lost`]).
#[derive(Debug, Clone)]
pub struct Client {
    calls: Arc<Calls>,
    /// How long a call waits for the server's first answer.
    reply_timeout: Duration,
    /// Cancelled by the session task when the session is lost.
    lost: CancellationToken,
    session: Option<SessionId>,
    _connection: Arc<SessionTaskHandle>,
    _keepalive: Option<Arc<Keepalive>>,
}

/// The session task, stopped when the last client handle goes.
#[derive(Debug)]
struct SessionTaskHandle(JoinHandle<()>);

impl Drop for SessionTaskHandle {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How long [`ClientBuilder::connect`] looks for a cluster's leader among several addresses
/// (an election takes one to two election timeouts).
pub const LEADER_SEARCH: Duration = Duration::from_secs(10);

/// Options for a new connection; see [`Client::builder`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    addr: String,
    name: Option<String>,
    lease: Option<Duration>,
    keepalive: bool,
    auth: Option<String>,
    tls: Option<TlsOptions>,
    timeouts: Timeouts,
}

impl ClientBuilder {
    /// The addresses, TLS options and secret, for connections that do not say `hello` as a
    /// session (cluster status).
    pub(crate) fn target(&self) -> (&str, Option<&TlsOptions>, Option<&str>) {
        (&self.addr, self.tls.as_ref(), self.auth.as_deref())
    }

    /// The time limits of each connection and request.
    pub(crate) fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// A name for the server's logs and `status`, e.g. `backup@host1`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The lease to ask for (the server clamps it to its range; default: the server's).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Whether to ping at a quarter of the lease so that the session never expires while the
    /// client lives (default: yes). Without it, a client silent for its lease loses its locks.
    pub fn keepalive(mut self, keepalive: bool) -> Self {
        self.keepalive = keepalive;
        self
    }

    /// Speak TLS to a server started with `--tls-cert`.
    pub fn tls(mut self, tls: TlsOptions) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The secret of a server started with `--auth-token-file`.
    pub fn auth(mut self, secret: impl Into<String>) -> Self {
        self.auth = Some(secret.into());
        self
    }

    /// How long a server gets to accept the connection (and again for the TLS handshake)
    /// before it counts as unreachable ([`ClientError::Connect`], kind `TimedOut`); default
    /// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.connect = timeout;
        self
    }

    /// How long a request waits for the server's first answer before it fails with
    /// [`ClientError::NoReply`]: the reply, or for an acquire its place in line (after which
    /// it waits as long as its own timeout says). `hello` included. Default
    /// [`DEFAULT_REPLY_TIMEOUT`](crate::DEFAULT_REPLY_TIMEOUT). `add_node` is not limited: a
    /// learner catches up for as long as the log takes to copy.
    pub fn reply_timeout(mut self, timeout: Duration) -> Self {
        self.timeouts.reply = timeout;
        self
    }

    /// Connects, says `hello`, and starts the keepalive. With several addresses (a cluster),
    /// tries them in turn and follows `not_leader` answers to the leader, for up to 10 s
    /// (`LEADER_SEARCH`) while a cluster elects one.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let lease_ms = self
            .lease
            .map(|lease| u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let hello = Hello {
            client: self.name,
            lease_ms,
            auth: self.auth,
            session: None,
            resume_secret: None,
        };
        let dialer = Dialer::new(&self.addr, self.tls, hello).with_timeouts(self.timeouts);
        let (outgoing_tx, outgoing) = mpsc::unbounded_channel();
        let calls = Arc::new(Calls::new(outgoing_tx));
        let deadline = Instant::now() + LEADER_SEARCH;
        let (link, hello) = dialer.open(&calls, None, None, deadline).await?;
        let lease = Duration::from_millis(hello.lease_ms);
        calls.set_lease(lease);
        let lost = CancellationToken::new();
        let task = SessionTask {
            calls: Arc::clone(&calls),
            lost: lost.clone(),
            dialer,
            resume: Resume::opened_by(&hello),
            lease,
            outgoing,
        };
        let mut client = Client {
            calls,
            reply_timeout: self.timeouts.reply,
            lost,
            session: Some(hello.session),
            _connection: Arc::new(SessionTaskHandle(tokio::spawn(task.run(link)))),
            _keepalive: None,
        };
        if self.keepalive {
            // A quarter of the lease: a ping answered late or lost still leaves most of the
            // local lease (`lease.rs`).
            let every = crate::lease::keepalive_interval(lease);
            client._keepalive = Some(Arc::new(client.spawn_keepalive(every)));
        }
        Ok(client)
    }
}

impl Client {
    /// Connects to lockd at `addr` (`host:port`; a leading `tcp://` is accepted) with the
    /// default options: the server's lease, kept alive with pings.
    pub async fn connect(addr: &str) -> Result<Client, ClientError> {
        Client::builder(addr).connect().await
    }

    /// Options for a connection to `addr`: one `host:port`, or a cluster's nodes separated by
    /// commas (the client finds the leader).
    pub fn builder(addr: &str) -> ClientBuilder {
        ClientBuilder {
            addr: addr.to_owned(),
            name: None,
            lease: None,
            keepalive: true,
            auth: None,
            tls: None,
            timeouts: Timeouts::default(),
        }
    }

    /// This connection's session id, as `status` shows it.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// The lease the server granted (in a cluster, the one granted at the latest resume).
    pub fn lease(&self) -> Duration {
        self.calls.lease()
    }

    /// The session's local deadline (docs/safety.md): the send time of the newest request the
    /// server answered, plus the lease, minus a margin. The server cannot have expired the
    /// session before it; at it, if no newer answer moved it, the session is given up and
    /// [`lost`](Self::lost) resolves.
    pub fn local_deadline(&self) -> std::time::Instant {
        self.calls.local_deadline().into_std()
    }

    /// How long the session's locks are still certainly held: the time left until the local
    /// deadline, zero once the session is lost.
    pub fn valid_for(&self) -> Duration {
        if self.is_lost() {
            return Duration::ZERO;
        }
        self.calls
            .local_deadline()
            .saturating_duration_since(Instant::now())
    }

    /// Whether the session is *in jeopardy*: nothing the server answered was sent in the last
    /// half lease (a healthy session is renewed every quarter), or it is lost. Its locks are
    /// still held until the local deadline, but work that cannot stop quickly should not start.
    pub fn in_jeopardy(&self) -> bool {
        self.is_lost()
            || self.calls.heard_since().elapsed() >= crate::lease::jeopardy_after(self.lease())
    }

    /// Resolves when the session is lost (server stopped, network failed, lease expired).
    /// From then on this client holds no lock: select on it next to the work a lock protects.
    ///
    /// With a cluster's addresses, a lost connection is not yet a lost session: the client
    /// resumes it on the new leader, and this resolves only if that fails (no leader took the
    /// session back within its lease, or the session had expired). While the client
    /// reconnects, requests wait, and the locks are still held in the cluster.
    pub async fn lost(&self) {
        self.lost.cancelled().await;
    }

    /// Whether the session is lost.
    pub fn is_lost(&self) -> bool {
        self.lost.is_cancelled()
    }

    /// `validate`: whether `token` is the token of a current holder of `resource`.
    pub async fn validate(&self, resource: &str, token: FenceToken) -> Result<bool, ClientError> {
        let resource = name(resource)?;
        let ok: ValidateOk = self
            .call(Command::Validate(Validate { resource, token }))
            .await?;
        Ok(ok.valid)
    }

    /// `hello`: names this client and asks for a lease (the server clamps it).
    pub async fn hello(
        &self,
        client: Option<&str>,
        lease_ms: Option<u64>,
    ) -> Result<HelloOk, ClientError> {
        self.call(Command::Hello(Hello {
            client: client.map(str::to_owned),
            lease_ms,
            ..Hello::default()
        }))
        .await
    }

    /// Sends an acquire and returns at once; follow it with [`AcquireCall::next`].
    pub fn start_acquire(
        &self,
        resource: &str,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Result<AcquireCall, ClientError> {
        self.start_acquire_with(resource, mode, timeout, None)
    }

    /// [`start_acquire`](Self::start_acquire) with a lock-delay: if this lock is lost other
    /// than by a release (the session expired or was cut off), lockd grants it to nobody for
    /// that long (`None`: the server's default, `--default-lock-delay-ms`).
    pub fn start_acquire_with(
        &self,
        resource: &str,
        mode: LockMode,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<AcquireCall, ClientError> {
        self.start_acquire_claim(resource, mode, None, timeout, lock_delay, None)
    }

    /// [`start_acquire_with`](Self::start_acquire_with) for a lock (`permits` absent) or for
    /// permits of a semaphore (then `mode` must be shared); with `value`, a campaign (an
    /// exclusive lock whose hold carries it).
    pub(crate) fn start_acquire_claim(
        &self,
        resource: &str,
        mode: LockMode,
        permits: Option<Permits>,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
        value: Option<String>,
    ) -> Result<AcquireCall, ClientError> {
        let millis = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        let command = Command::Acquire(Acquire {
            resource: name(resource)?,
            mode,
            timeout_ms: timeout.map(millis),
            lock_delay_ms: lock_delay.map(millis),
            permits,
            value,
        });
        self.start_call(command)
    }

    /// `acquire`, waiting as long as it takes (or `timeout`; zero tries once).
    pub async fn acquire(
        &self,
        resource: &str,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Result<AcquireOk, ClientError> {
        self.acquire_with(resource, mode, timeout, None).await
    }

    /// [`acquire`](Self::acquire) with a lock-delay; see
    /// [`start_acquire_with`](Self::start_acquire_with).
    pub async fn acquire_with(
        &self,
        resource: &str,
        mode: LockMode,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<AcquireOk, ClientError> {
        self.acquire_claim(resource, mode, None, timeout, lock_delay, None)
            .await
    }

    /// [`acquire_with`](Self::acquire_with) for a lock or for permits of a semaphore; see
    /// [`start_acquire_claim`](Self::start_acquire_claim).
    pub(crate) async fn acquire_claim(
        &self,
        resource: &str,
        mode: LockMode,
        permits: Option<Permits>,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
        value: Option<String>,
    ) -> Result<AcquireOk, ClientError> {
        let mut call =
            self.start_acquire_claim(resource, mode, permits, timeout, lock_delay, value)?;
        loop {
            if let AcquireProgress::Done(outcome) = call.next().await {
                return outcome;
            }
        }
    }

    /// `acquire` with `resources`: every member (name and mode) at once or none, waiting as
    /// long as it takes (or `timeout`; zero tries once). See [`Client::multi`] for the guard.
    pub fn start_acquire_many(
        &self,
        members: &[(&str, LockMode)],
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<AcquireCall<AcquireManyOk>, ClientError> {
        let millis = |t: Duration| u64::try_from(t.as_millis()).unwrap_or(u64::MAX);
        let resources = members
            .iter()
            .map(|(resource, mode)| {
                Ok(Member {
                    resource: name(resource)?,
                    mode: *mode,
                })
            })
            .collect::<Result<Vec<_>, ClientError>>()?;
        let command = Command::AcquireMany(AcquireMany {
            resources,
            timeout_ms: timeout.map(millis),
            lock_delay_ms: lock_delay.map(millis),
        });
        self.start_call(command)
    }

    /// Sends an acquire whose progress and outcome come back through an [`AcquireCall`].
    fn start_call<T>(&self, command: Command) -> Result<AcquireCall<T>, ClientError> {
        let (events_tx, events) = mpsc::unbounded_channel();
        let (id, reply) = self.send(command, Some(events_tx))?;
        Ok(AcquireCall {
            result: std::marker::PhantomData,
            id,
            events,
            reply: Some(reply),
            unanswered: Some((Instant::now() + self.reply_timeout, self.reply_timeout)),
        })
    }

    /// `release` of the lock held with `token`.
    pub async fn release(&self, resource: &str, token: FenceToken) -> Result<(), ClientError> {
        let resource = name(resource)?;
        self.call_empty(Command::Release(Release { resource, token }))
            .await
    }

    /// `read` of the resource's value under a lock held with `token`.
    pub async fn read(
        &self,
        resource: &str,
        token: FenceToken,
    ) -> Result<Option<String>, ClientError> {
        let resource = name(resource)?;
        let ok: ReadOk = self.call(Command::Read(Read { resource, token })).await?;
        Ok(ok.value)
    }

    /// `write` of the resource's value under the exclusive lock held with `token`.
    pub async fn write(
        &self,
        resource: &str,
        token: FenceToken,
        value: &str,
    ) -> Result<(), ClientError> {
        let resource = name(resource)?;
        self.call_empty(Command::Write(Write {
            resource,
            token,
            value: value.to_owned(),
        }))
        .await
    }

    /// `cancel` of a waiting acquire sent on this connection.
    pub async fn cancel(&self, target: RequestId) -> Result<(), ClientError> {
        self.call_empty(Command::Cancel(Cancel { target })).await
    }

    /// `ping`: keeps the session alive.
    pub async fn ping(&self) -> Result<(), ClientError> {
        self.call_empty(Command::Ping).await
    }

    /// `status` of one resource, or of every busy one: follows the server's cursor page by
    /// page (see [`status_page`](Self::status_page)) and returns them all.
    pub async fn status(&self, resource: Option<&str>) -> Result<Vec<ResourceStatus>, ClientError> {
        if let Some(resource) = resource {
            let one = Status::one(name(resource)?);
            let ok: StatusOk = self.call(Command::Status(one)).await?;
            return Ok(ok.resources);
        }
        let mut resources = Vec::new();
        let mut after = None;
        loop {
            let page = self.status_page(after.as_ref(), None).await?;
            after = page.next_after(after.as_ref());
            resources.extend(page.resources);
            if after.is_none() {
                return Ok(resources);
            }
        }
    }

    /// One page of `status`: at most `limit` busy resources (the server's default page when
    /// `None`) whose names come after `after`, and the page's `next` cursor. To walk every
    /// page, pass [`StatusOk::next_after`] as the next call's `after` until it is `None`.
    pub async fn status_page(
        &self,
        after: Option<&ResourceName>,
        limit: Option<u64>,
    ) -> Result<StatusOk, ClientError> {
        self.call(Command::Status(Status::page(after.cloned(), limit)))
            .await
    }

    /// Pings every `every` until the returned guard (or the client) is dropped, so that the
    /// session outlives long waits and holds. Pick a quarter of the lease or less (`lease::keepalive_interval`).
    pub fn spawn_keepalive(&self, every: Duration) -> Keepalive {
        // The task holds the calls, not the session task, so it never keeps the connection
        // open by itself.
        let calls = Arc::clone(&self.calls);
        Keepalive(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Ok((_, reply)) = calls.register(Command::Ping, None) else {
                    return;
                };
                if reply.await.is_err() {
                    return;
                }
            }
        }))
    }

    pub(crate) async fn call<T: DeserializeOwned>(
        &self,
        command: Command,
    ) -> Result<T, ClientError> {
        typed(Ok(self.exchange(command).await))
    }

    pub(crate) async fn call_empty(&self, command: Command) -> Result<(), ClientError> {
        self.exchange(command).await.map(|_| ())
    }

    /// Sends `command` and waits for its reply, within the reply timeout. A request that timed
    /// out stays sent: a server that wakes up may still apply it.
    async fn exchange(&self, command: Command) -> Reply {
        let op = command.op();
        // Adding a node answers once the learner has copied the whole log: no fixed limit fits.
        let limit = (!matches!(command, Command::AddNode(_))).then_some(self.reply_timeout);
        let (_, reply) = self.send(command, None)?;
        match limit {
            None => reply.await.map_err(|_| ClientError::ConnectionLost)?,
            Some(_) => self.await_reply(op.name(), reply).await,
        }
    }

    /// Waits for the reply to a call named `what`, within the reply timeout.
    pub(crate) async fn await_reply(&self, what: &str, reply: oneshot::Receiver<Reply>) -> Reply {
        let limit = self.reply_timeout;
        let reply = tokio::time::timeout(limit, reply)
            .await
            .map_err(|_| ClientError::NoReply {
                what: what.to_owned(),
                waited: limit,
            })?;
        reply.map_err(|_| ClientError::ConnectionLost)?
    }

    /// The session's calls, for the other call types of this crate.
    pub(crate) fn calls(&self) -> &Calls {
        &self.calls
    }

    pub(crate) fn send(
        &self,
        command: Command,
        events: Option<mpsc::UnboundedSender<u64>>,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
        self.calls.register(command, events)
    }
}

fn typed<T: DeserializeOwned>(
    reply: Result<Reply, oneshot::error::RecvError>,
) -> Result<T, ClientError> {
    let frame = reply.map_err(|_| ClientError::ConnectionLost)??;
    Incoming::result(frame).map_err(|err| ClientError::Protocol(err.to_string()))
}

pub(crate) fn name(resource: &str) -> Result<ResourceName, ClientError> {
    ResourceName::new(resource)
        .map_err(|err| ClientError::InvalidInput(format!("invalid resource name: {err}")))
}
