//! One connection to one server: dialing it (TCP, optionally TLS), the `hello` that opens or
//! resumes the session on it, and moving frames both ways until it ends.
//!
//! A link knows nothing of leaders or of other addresses; `leader.rs` picks which server to
//! dial, and `session.rs` decides what happens when a link ends.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::cmd::{Hello, HelloOk};
use protocol::frame::{Frame, LineCodec};
use protocol::{Command, Incoming, Request, RequestId};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::calls::{Calls, Routed};
use crate::error::{ClientError, ConnectFailure};
use crate::tls::TlsOptions;

/// The largest reply line the client accepts (a `status` of a busy server can be large).
const MAX_REPLY_BYTES: usize = 1 << 30;

/// A plain or TLS stream.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// An open connection; see the module docs.
pub(crate) struct Link {
    frames: FramedRead<ReadHalf<Box<dyn Io>>, LineCodec>,
    writer: WriteHalf<Box<dyn Io>>,
    /// The address dialed, for errors that say the connection never really worked.
    addr: String,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

/// Why a link ended.
#[derive(Debug)]
pub(crate) enum LinkEnd {
    /// End of stream, a reset, or a failed read or write.
    Closed,
    /// The server is not the leader (any more); `leader` is the leader's client address, when
    /// it knew it.
    NotLeader {
        /// The leader's client address, if known.
        leader: Option<String>,
    },
    /// The server sent something this client cannot read.
    Broken(ClientError),
}

/// Opens a connection to `addr` (`host:port`; a leading `tcp://` or `tls://` is accepted), giving the TCP
/// handshake `connect_timeout`, and the TLS one (if any) as long again.
pub(crate) async fn dial(
    addr: &str,
    tls: Option<&TlsOptions>,
    connect_timeout: Duration,
) -> Result<Link, ClientError> {
    let target = without_scheme(addr);
    let connect_error = |kind: ConnectFailure, reason: String| ClientError::Connect {
        addr: target.to_owned(),
        reason,
        kind,
    };
    if let Err(problem) = check_address(target) {
        return Err(connect_error(ConnectFailure::BadAddress, problem));
    }
    let stream = match tokio::time::timeout(connect_timeout, TcpStream::connect(target)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => {
            let (kind, reason) = describe_io_error(&err);
            return Err(connect_error(kind, reason));
        }
        Err(_) => {
            return Err(connect_error(
                ConnectFailure::TimedOut,
                format!(
                    "it did not accept the connection within {} s",
                    crate::error::seconds(connect_timeout)
                ),
            ))
        }
    };
    let _ = stream.set_nodelay(true);
    let stream: Box<dyn Io> = match tls {
        None => Box::new(stream),
        Some(tls) => {
            let host = target.rsplit_once(':').map_or(target, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let (connector, name) = tls.connector(host)?;
            let stream = tokio::time::timeout(connect_timeout, connector.connect(name, stream))
                .await
                .map_err(|_| ClientError::NoReply {
                    what: "the TLS handshake".to_owned(),
                    waited: connect_timeout,
                })?
                .map_err(|err| {
                    let (kind, reason) = tls_failure(&err)
                        .unwrap_or((ConnectFailure::Tls, format!("TLS handshake failed: {err}")));
                    connect_error(kind, reason)
                })?;
            Box::new(stream)
        }
    };
    let (read_half, writer) = tokio::io::split(stream);
    Ok(Link {
        frames: FramedRead::new(read_half, LineCodec::new(MAX_REPLY_BYTES)),
        writer,
        addr: target.to_owned(),
    })
}

impl Link {
    fn connect_error(&self, kind: ConnectFailure, reason: String) -> ClientError {
        ClientError::Connect {
            addr: self.addr.clone(),
            reason,
            kind,
        }
    }

    /// Sends `hello` as request `id`, the first frame on this link, and waits for its reply
    /// (until `deadline`, if one is given). Nothing else is in flight on the link yet, so any
    /// other frame is a protocol error.
    pub(crate) async fn hello(
        &mut self,
        id: RequestId,
        hello: Hello,
        deadline: Option<Instant>,
    ) -> Result<HelloOk, ClientError> {
        self.exchange(id, Command::Hello(hello), deadline).await
    }

    /// Sends one request and waits for its reply (until `deadline`, if one is given), with
    /// nothing else in flight on the link: `hello`, or a command that needs no session.
    pub(crate) async fn exchange<T: serde::de::DeserializeOwned>(
        &mut self,
        id: RequestId,
        command: Command,
        deadline: Option<Instant>,
    ) -> Result<T, ClientError> {
        let op = command.op();
        let mut frame = Request { id, command }.to_json();
        frame.push(b'\n');
        let started = Instant::now();
        let exchange = async {
            self.writer
                .write_all(&frame)
                .await
                .map_err(|_| ClientError::ConnectionLost)?;
            let line = match self.frames.next().await {
                Some(Ok(Frame::Line(line))) => line,
                Some(Ok(Frame::TooLarge)) => {
                    return Err(ClientError::Protocol("reply larger than 1 GiB".into()))
                }
                Some(Err(err)) => {
                    return Err(match tls_failure(&err) {
                        Some((kind, reason)) => self.connect_error(kind, reason),
                        None => ClientError::ConnectionLost,
                    })
                }
                None => return Err(ClientError::ConnectionLost),
            };
            if looks_like_tls(&line) {
                return Err(self.connect_error(
                    ConnectFailure::TlsExpected,
                    "the server speaks TLS, and this client did not".to_owned(),
                ));
            }
            match Incoming::parse(&line) {
                Ok(Incoming::Reply {
                    id: Some(reply_to),
                    result,
                }) if reply_to == id => {
                    let frame = result.map_err(ClientError::Server)?;
                    Incoming::result(frame).map_err(|err| ClientError::Protocol(err.to_string()))
                }
                Ok(Incoming::Reply {
                    id: None,
                    result: Err(error),
                }) => {
                    // A connection-level refusal (a connection cap, for one).
                    Err(ClientError::Server(error))
                }
                Ok(other) => Err(ClientError::Protocol(format!(
                    "expected the reply to {op}, got {other:?}"
                ))),
                Err(err) => Err(ClientError::Protocol(err.to_string())),
            }
        };
        match deadline {
            None => exchange.await,
            Some(deadline) => tokio::time::timeout_at(deadline, exchange)
                .await
                .unwrap_or_else(|_| {
                    Err(ClientError::NoReply {
                        what: op.to_string(),
                        waited: deadline.saturating_duration_since(started),
                    })
                }),
        }
    }

    /// Carries frames until the link ends: writes what `outgoing` holds, and routes every
    /// line read to its call in `calls`. With `resumable`, a `not_leader` answer ends the
    /// link (its call stays registered). Frames taken from `outgoing` but not written when
    /// the link ends are lost with it; their calls are still registered.
    ///
    /// With `silence`, a server that sends nothing for that long while a call waits for its
    /// reply (the keepalive's ping, at least) is taken for gone: a paused or partitioned
    /// leader closes nothing, and only its silence tells the client to look elsewhere.
    pub(crate) async fn carry(
        self,
        calls: &Calls,
        outgoing: &mut mpsc::UnboundedReceiver<Bytes>,
        resumable: bool,
        silence: Option<Duration>,
    ) -> LinkEnd {
        let Link {
            mut frames,
            mut writer,
            ..
        } = self;
        let reading = async {
            loop {
                let next = match silence {
                    None => frames.next().await,
                    Some(limit) => match tokio::time::timeout(limit, frames.next()).await {
                        Ok(next) => next,
                        Err(_) if calls.has_pending() => return LinkEnd::Closed,
                        Err(_) => continue,
                    },
                };
                match next {
                    Some(Ok(Frame::Line(line))) => match calls.route(&line, resumable) {
                        Routed::Delivered => {}
                        Routed::NotLeader { leader } => return LinkEnd::NotLeader { leader },
                        Routed::Broken(err) => return LinkEnd::Broken(err),
                    },
                    Some(Ok(Frame::TooLarge)) => {
                        return LinkEnd::Broken(ClientError::Protocol(
                            "reply larger than 1 GiB".into(),
                        ))
                    }
                    Some(Err(_)) | None => return LinkEnd::Closed,
                }
            }
        };
        let writing = async {
            let mut batch = Vec::new();
            // `outgoing` never closes while the session task runs: `Calls` holds its sender.
            while let Some(frame) = outgoing.recv().await {
                batch.extend_from_slice(&frame);
                while let Ok(frame) = outgoing.try_recv() {
                    batch.extend_from_slice(&frame);
                }
                if writer.write_all(&batch).await.is_err() {
                    break;
                }
                batch.clear();
            }
            LinkEnd::Closed
        };
        // Both halves run in this one task, polled together, so a write that waits for the
        // server to read never stops this side from reading the server's replies.
        tokio::select! {
            end = reading => end,
            end = writing => end,
        }
    }
}

/// Checks that `addr` (a leading `tcp://` or `tls://` allowed) is `host:port`, before any connect: a host
/// alone would fail with a message about an "invalid socket address", which does not say what
/// is missing. The error says what to write instead.
pub fn check_address(addr: &str) -> Result<(), String> {
    let target = without_scheme(addr);
    let has_port = target
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if has_port {
        return Ok(());
    }
    let host = if target.is_empty() {
        "127.0.0.1"
    } else {
        target
    };
    Err(format!(
        "{addr} has no port: give host:port, e.g. {host}:5555"
    ))
}

/// `addr` without the `tcp://` or `tls://` that lockd's start-up line puts before it (whether to
/// speak TLS is --tls-ca's to say; `tls://` without it is a usage error in lockctl).
pub(crate) fn without_scheme(addr: &str) -> &str {
    ["tcp://", "tls://"]
        .iter()
        .find_map(|scheme| addr.strip_prefix(scheme))
        .unwrap_or(addr)
}

/// Whether a "line" from the server is a TLS record (an alert or a handshake, TLS 1.x): what a
/// TLS server answers a client that does not speak TLS.
fn looks_like_tls(line: &[u8]) -> bool {
    matches!(line, [21 | 22, 3, ..])
}

/// What a TLS error (inside an I/O error) means for the user, if it is one that has a better
/// explanation than rustls's own words.
fn tls_failure(err: &std::io::Error) -> Option<(ConnectFailure, String)> {
    use tokio_rustls::rustls::{AlertDescription, Error as TlsError, InvalidMessage};
    let tls = err.get_ref()?.downcast_ref::<TlsError>()?;
    match tls {
        TlsError::InvalidMessage(InvalidMessage::InvalidContentType) => Some((
            ConnectFailure::NotTls,
            "the server does not speak TLS (it answered the TLS handshake with something else)"
                .to_owned(),
        )),
        TlsError::AlertReceived(
            alert @ (AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::AccessDenied),
        ) => Some((
            ConnectFailure::ClientCertRefused,
            format!("the server refused the TLS client certificate (TLS alert: {alert:?})"),
        )),
        _ => None,
    }
}

fn describe_io_error(err: &std::io::Error) -> (ConnectFailure, String) {
    match err.kind() {
        std::io::ErrorKind::ConnectionRefused => {
            (ConnectFailure::Refused, "connection refused".to_owned())
        }
        std::io::ErrorKind::InvalidInput => (ConnectFailure::BadAddress, err.to_string()),
        // A host name that does not resolve: getaddrinfo's errors have no kind of their own.
        _ if err.raw_os_error().is_none() => (ConnectFailure::BadAddress, err.to_string()),
        _ => (ConnectFailure::Other, err.to_string()),
    }
}
