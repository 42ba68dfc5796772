//! The client connection: a writer task, a reader task that routes replies to waiting calls by
//! request id, and typed methods for each op.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use protocol::cmd::{
    Acquire, AcquireOk, Cancel, Hello, HelloOk, Read, ReadOk, Release, ResourceStatus, Status,
    StatusOk, Validate, ValidateOk, Write,
};
use protocol::frame::{Frame, LineCodec};
use protocol::{
    Command, ErrorBody, ErrorCode, FenceToken, Incoming, LockMode, Request, RequestId,
    ResourceName, SessionId,
};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::lock::LockRequest;
use crate::tls::TlsOptions;

/// Where lockd listens unless told otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:5555";

/// How long [`Client::connect`] waits for the TCP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The largest reply line the client accepts (a `status` of a busy server can be large).
const MAX_REPLY_BYTES: usize = 1 << 30;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached.
    #[error("cannot reach lockd at {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// What went wrong, e.g. "connection refused".
        reason: String,
    },
    /// The server answered with an error.
    #[error("{}", .0.message)]
    Server(ErrorBody),
    /// The connection ended before the reply came (server stopped, network failed, or the
    /// session expired). Any lock this session held is no longer held.
    #[error("the connection to lockd was lost")]
    ConnectionLost,
    /// A name or value was refused before it was sent.
    #[error("{0}")]
    InvalidInput(String),
    /// The server sent something this client cannot read.
    #[error("protocol error: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, when the server refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(error) => Some(error.code),
            _ => None,
        }
    }
}

/// A progress report or the outcome of a waiting acquire.
#[derive(Debug)]
pub enum AcquireProgress {
    /// The request waits in line at this position (1 = next).
    Queued(u64),
    /// The acquire finished.
    Done(Result<AcquireOk, ClientError>),
}

/// An acquire in flight: read its progress with [`AcquireCall::next`].
#[derive(Debug)]
pub struct AcquireCall {
    id: RequestId,
    events: mpsc::UnboundedReceiver<u64>,
    reply: Option<oneshot::Receiver<Reply>>,
}

impl AcquireCall {
    /// The request id, for [`Client::cancel`].
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// The next `queued` event, or the final outcome. After `Done`, it returns
    /// `Done(Err(ConnectionLost))` forever.
    pub async fn next(&mut self) -> AcquireProgress {
        let Some(reply) = self.reply.as_mut() else {
            return AcquireProgress::Done(Err(ClientError::ConnectionLost));
        };
        tokio::select! {
            biased;
            Some(position) = self.events.recv() => AcquireProgress::Queued(position),
            outcome = reply => {
                self.reply = None;
                AcquireProgress::Done(typed(outcome))
            }
        }
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

pub(crate) type Reply = Result<serde_json::Value, ClientError>;

#[derive(Debug)]
struct PendingCall {
    reply: oneshot::Sender<Reply>,
    events: Option<mpsc::UnboundedSender<u64>>,
}

#[derive(Debug)]
struct Shared {
    /// Cancelled when the connection is gone: the session and every lock it held are lost.
    lost: CancellationToken,
    next_id: AtomicU64,
    /// Calls waiting for their reply; `None` once the connection is gone, so that no call can
    /// be registered after the reader has failed the others.
    pending: Mutex<Option<HashMap<RequestId, PendingCall>>>,
    outgoing: mpsc::UnboundedSender<Vec<u8>>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Option<HashMap<RequestId, PendingCall>>> {
        // A panic while holding this lock would be a bug in this module; the map is still
        // consistent (every operation on it is a single insert or remove), so keep going.
        self.pending
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// A connection to lockd: one session. Cheap to clone; all clones share the connection, which
/// closes (releasing the session's locks) when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Client {
    shared: Arc<Shared>,
    session: Option<SessionId>,
    lease: Duration,
    _connection: Arc<ConnectionTasks>,
    _keepalive: Option<Arc<Keepalive>>,
}

/// The reader and writer tasks, stopped when the last client handle goes.
#[derive(Debug)]
struct ConnectionTasks(Vec<JoinHandle<()>>);

impl Drop for ConnectionTasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
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
}

impl ClientBuilder {
    /// The addresses, TLS options and secret, for connections that do not say `hello` as a
    /// session (cluster status).
    pub(crate) fn target(&self) -> (&str, Option<&TlsOptions>, Option<&str>) {
        (&self.addr, self.tls.as_ref(), self.auth.as_deref())
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

    /// Whether to ping at a third of the lease so that the session never expires while the
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

    /// Connects, says `hello`, and starts the keepalive. With several addresses (a cluster),
    /// tries them in turn and follows `not_leader` answers to the leader, for up to
    /// [`LEADER_SEARCH`] while a cluster elects one.
    pub async fn connect(self) -> Result<Client, ClientError> {
        let lease_ms = self
            .lease
            .map(|lease| u64::try_from(lease.as_millis()).unwrap_or(u64::MAX));
        let hello_command = || {
            Command::Hello(Hello {
                client: self.name.clone(),
                lease_ms,
                auth: self.auth.clone(),
                session: None,
            })
        };
        let addrs: Vec<String> = self
            .addr
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect();
        let deadline = tokio::time::Instant::now() + LEADER_SEARCH;
        let mut candidates: std::collections::VecDeque<String> = addrs.iter().cloned().collect();
        let mut last_error = ClientError::Connect {
            addr: self.addr.clone(),
            reason: "no address given".to_owned(),
        };
        let (mut client, hello) = loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(last_error);
            }
            let Some(addr) = candidates.pop_front() else {
                if tokio::time::Instant::now() >= deadline || addrs.len() < 2 {
                    return Err(last_error);
                }
                // Every node refused or is unreachable: a cluster may be electing a leader.
                tokio::time::sleep(Duration::from_millis(100)).await;
                candidates.extend(addrs.iter().cloned());
                continue;
            };
            let client = match Client::connect_raw(&addr, self.tls.as_ref()).await {
                Ok(client) => client,
                Err(err) => {
                    last_error = err;
                    continue;
                }
            };
            match client.call::<HelloOk>(hello_command()).await {
                Ok(hello) => break (client, hello),
                Err(ClientError::Server(error)) if error.code == ErrorCode::NotLeader => {
                    if let Some(leader) = error.leader.clone() {
                        if !candidates.contains(&leader) {
                            candidates.push_front(leader);
                        }
                    }
                    last_error = ClientError::Server(error);
                }
                Err(err) if addrs.len() > 1 && matches!(err, ClientError::ConnectionLost) => {
                    last_error = err;
                }
                Err(err) => return Err(err),
            }
        };
        client.session = Some(hello.session);
        client.lease = Duration::from_millis(hello.lease_ms);
        if self.keepalive {
            // A third of the lease: two pings can be lost before the session expires.
            let every = (client.lease / 3).max(Duration::from_millis(10));
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
        }
    }

    /// This connection's session id, as `status` shows it.
    pub fn session(&self) -> Option<SessionId> {
        self.session
    }

    /// The lease the server granted.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Resolves when the connection is gone (server stopped, network failed, lease expired).
    /// From then on this client holds no lock: select on it next to the work a lock protects.
    pub async fn lost(&self) {
        self.shared.lost.cancelled().await;
    }

    /// Whether the connection is gone.
    pub fn is_lost(&self) -> bool {
        self.shared.lost.is_cancelled()
    }

    /// Starts a lock request for `resource`: exclusive, waiting as long as it takes, unless the
    /// builder says otherwise. See [`LockRequest`].
    pub fn lock(&self, resource: &str) -> LockRequest<'_> {
        LockRequest::new(self, resource)
    }

    /// `validate`: whether `token` is the token of a current holder of `resource`.
    pub async fn validate(&self, resource: &str, token: FenceToken) -> Result<bool, ClientError> {
        let resource = name(resource)?;
        let ok: ValidateOk = self
            .call(Command::Validate(Validate { resource, token }))
            .await?;
        Ok(ok.valid)
    }

    /// Connects without `hello` and without keepalive.
    pub(crate) async fn connect_raw(
        addr: &str,
        tls: Option<&TlsOptions>,
    ) -> Result<Client, ClientError> {
        let target = addr.strip_prefix("tcp://").unwrap_or(addr);
        let connect_error = |reason: String| ClientError::Connect {
            addr: target.to_owned(),
            reason,
        };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(err)) => return Err(connect_error(describe_io_error(&err))),
            Err(_) => {
                return Err(connect_error(format!(
                    "no answer within {CONNECT_TIMEOUT:?}"
                )))
            }
        };
        let _ = stream.set_nodelay(true);
        match tls {
            None => Ok(Client::start(stream)),
            Some(tls) => {
                let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let (connector, name) = tls.connector(host)?;
                let stream = tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                    .await
                    .map_err(|_| connect_error("no TLS handshake within 5 s".to_owned()))?
                    .map_err(|err| connect_error(format!("TLS handshake failed: {err}")))?;
                Ok(Client::start(stream))
            }
        }
    }

    /// Starts the reader and writer tasks on an open connection.
    fn start<S: AsyncRead + AsyncWrite + Send + 'static>(stream: S) -> Client {
        let (read_half, mut write_half) = tokio::io::split(stream);
        let (outgoing, mut outgoing_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let shared = Arc::new(Shared {
            lost: CancellationToken::new(),
            next_id: AtomicU64::new(1),
            pending: Mutex::new(Some(HashMap::new())),
            outgoing,
        });

        let writer = tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(frame) = outgoing_rx.recv().await {
                batch.extend_from_slice(&frame);
                while let Ok(frame) = outgoing_rx.try_recv() {
                    batch.extend_from_slice(&frame);
                }
                if write_half.write_all(&batch).await.is_err() {
                    return;
                }
                batch.clear();
            }
        });
        let reader_shared = Arc::clone(&shared);
        let reader = tokio::spawn(async move {
            let mut frames = FramedRead::new(read_half, LineCodec::new(MAX_REPLY_BYTES));
            let failure = loop {
                match frames.next().await {
                    Some(Ok(Frame::Line(line))) => {
                        if let Err(err) = dispatch(&reader_shared, &line) {
                            break err;
                        }
                    }
                    Some(Ok(Frame::TooLarge)) => {
                        break ClientError::Protocol("reply larger than 1 GiB".into())
                    }
                    Some(Err(_)) | None => break ClientError::ConnectionLost,
                };
            };
            reader_shared.lost.cancel();
            let pending = reader_shared.pending().take();
            for (_, call) in pending.into_iter().flatten() {
                let _ = call.reply.send(Err(match &failure {
                    ClientError::Protocol(message) => ClientError::Protocol(message.clone()),
                    _ => ClientError::ConnectionLost,
                }));
            }
        });
        Client {
            shared,
            session: None,
            lease: Duration::ZERO,
            _connection: Arc::new(ConnectionTasks(vec![writer, reader])),
            _keepalive: None,
        }
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
            auth: None,
            session: None,
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
        let command = Command::Acquire(Acquire {
            resource: name(resource)?,
            mode,
            timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let (id, reply) = self.send(command, Some(events_tx))?;
        Ok(AcquireCall {
            id,
            events,
            reply: Some(reply),
        })
    }

    /// `acquire`, waiting as long as it takes (or `timeout`; zero tries once).
    pub async fn acquire(
        &self,
        resource: &str,
        mode: LockMode,
        timeout: Option<Duration>,
    ) -> Result<AcquireOk, ClientError> {
        let mut call = self.start_acquire(resource, mode, timeout)?;
        loop {
            if let AcquireProgress::Done(outcome) = call.next().await {
                return outcome;
            }
        }
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

    /// `status` of one resource, or of every busy one.
    pub async fn status(&self, resource: Option<&str>) -> Result<Vec<ResourceStatus>, ClientError> {
        let resource = resource.map(name).transpose()?;
        let ok: StatusOk = self.call(Command::Status(Status { resource })).await?;
        Ok(ok.resources)
    }

    /// Pings every `every` until the returned guard (or the client) is dropped, so that the
    /// session outlives long waits and holds. Pick a third of the lease or less.
    pub fn spawn_keepalive(&self, every: Duration) -> Keepalive {
        // The task holds the shared state, not the connection tasks, so it never keeps the
        // connection open by itself.
        let shared = Arc::clone(&self.shared);
        Keepalive(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                let Ok((_, reply)) = send(&shared, Command::Ping, None) else {
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
        let (_, reply) = self.send(command, None)?;
        typed(reply.await)
    }

    pub(crate) async fn call_empty(&self, command: Command) -> Result<(), ClientError> {
        let (_, reply) = self.send(command, None)?;
        match reply.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(ClientError::ConnectionLost),
        }
    }

    pub(crate) fn send(
        &self,
        command: Command,
        events: Option<mpsc::UnboundedSender<u64>>,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
        send(&self.shared, command, events)
    }
}

/// Registers a call and queues its frame; the reply arrives on the returned receiver.
fn send(
    shared: &Shared,
    command: Command,
    events: Option<mpsc::UnboundedSender<u64>>,
) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
    let id = RequestId(shared.next_id.fetch_add(1, Ordering::Relaxed));
    let mut frame = Request { id, command }.to_json();
    frame.push(b'\n');
    let (reply_tx, reply_rx) = oneshot::channel();
    {
        let mut pending = shared.pending();
        let Some(pending) = pending.as_mut() else {
            return Err(ClientError::ConnectionLost);
        };
        pending.insert(
            id,
            PendingCall {
                reply: reply_tx,
                events,
            },
        );
    }
    if shared.outgoing.send(frame).is_err() {
        if let Some(pending) = shared.pending().as_mut() {
            pending.remove(&id);
        }
        return Err(ClientError::ConnectionLost);
    }
    Ok((id, reply_rx))
}

/// Routes one frame from the server to the call it answers.
fn dispatch(shared: &Shared, line: &[u8]) -> Result<(), ClientError> {
    let incoming = Incoming::parse(line).map_err(|err| ClientError::Protocol(err.to_string()))?;
    let mut pending = shared.pending();
    let Some(pending) = pending.as_mut() else {
        return Ok(());
    };
    match incoming {
        Incoming::Queued { id, position } => {
            if let Some(events) = pending.get(&id).and_then(|call| call.events.as_ref()) {
                let _ = events.send(position);
            }
        }
        Incoming::Reply {
            id: Some(id),
            result,
        } => {
            if let Some(call) = pending.remove(&id) {
                let _ = call.reply.send(result.map_err(ClientError::Server));
            }
        }
        Incoming::Reply { id: None, result } => {
            // The server could not read one of our frames: a bug on this side.
            let message = match result {
                Err(error) => error.to_string(),
                Ok(frame) => frame.to_string(),
            };
            return Err(ClientError::Protocol(format!(
                "server could not read a request: {message}"
            )));
        }
    }
    Ok(())
}

fn typed<T: DeserializeOwned>(
    reply: Result<Reply, oneshot::error::RecvError>,
) -> Result<T, ClientError> {
    let frame = reply.map_err(|_| ClientError::ConnectionLost)??;
    Incoming::result(frame).map_err(|err| ClientError::Protocol(err.to_string()))
}

fn name(resource: &str) -> Result<ResourceName, ClientError> {
    ResourceName::new(resource)
        .map_err(|err| ClientError::InvalidInput(format!("invalid resource name: {err}")))
}

fn describe_io_error(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".to_owned(),
        _ => err.to_string(),
    }
}
