//! Finding the server that serves a session, and opening the session on it.
//!
//! With one address, that server is the one. With several (a cluster), only the leader
//! serves: followers answer `not_leader`, naming the leader when they know it, and an election
//! leaves a moment with no leader at all. So the dialer tries the addresses in turn, goes to a
//! named leader first, and starts over after a short backoff until its deadline.

use std::collections::VecDeque;
use std::time::Duration;

use protocol::cmd::{Hello, HelloOk};
use protocol::{ErrorCode, SessionId};
use tokio::time::Instant;

use crate::calls::Calls;
use crate::error::ClientError;
use crate::link::{self, Link};
use crate::timeouts::Timeouts;
use crate::tls::TlsOptions;

/// The first pause after every address failed; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// The longest pause between two rounds over the addresses.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What resuming a session takes: its id, and the secret the `hello` that opened it returned
/// (a cluster refuses a resume without it).
#[derive(Clone)]
pub(crate) struct Resume {
    pub(crate) session: SessionId,
    pub(crate) secret: Option<String>,
}

/// Never shows the secret, so that it cannot reach a log line.
impl std::fmt::Debug for Resume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resume")
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

impl Resume {
    /// What resumes the session `hello` opened.
    pub(crate) fn opened_by(hello: &HelloOk) -> Resume {
        Resume {
            session: hello.session,
            secret: hello.resume_secret.clone(),
        }
    }
}

/// Where and how to open a session; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct Dialer {
    addrs: Vec<String>,
    tls: Option<TlsOptions>,
    /// The `hello` of every link of this session, without `session`: the same name, lease and
    /// auth secret on a resume as at the start.
    hello: Hello,
    /// How long one server gets to accept a connection and to answer `hello`.
    timeouts: Timeouts,
}

impl Dialer {
    /// A dialer for `addrs`: one `host:port`, or several separated by commas.
    pub(crate) fn new(addrs: &str, tls: Option<TlsOptions>, hello: Hello) -> Dialer {
        let addrs = addrs
            .split(',')
            .map(str::trim)
            .filter(|addr| !addr.is_empty())
            .map(str::to_owned)
            .collect();
        Dialer {
            addrs,
            tls,
            hello,
            timeouts: Timeouts::default(),
        }
    }

    /// The same dialer with other time limits for each server.
    pub(crate) fn with_timeouts(self, timeouts: Timeouts) -> Dialer {
        Dialer { timeouts, ..self }
    }

    /// Whether this is a cluster (two addresses or more), whose sessions outlive a connection
    /// and can be resumed on another node. A single server ends a session with its
    /// connection.
    pub(crate) fn is_cluster(&self) -> bool {
        self.addrs.len() > 1
    }

    /// Opens a link to the server that serves and says `hello` on it, resuming `resume` if
    /// given; each attempt's `hello` takes a fresh id from `calls`. `first` is an address to
    /// try before the others (a leader named by a follower). A cluster is searched until
    /// `deadline`; a single server is tried once (following a `not_leader` answer, if any).
    ///
    /// Fails at once when a server refuses the session itself (`no_session`, `unauthorized`):
    /// no other node would answer differently.
    pub(crate) async fn open(
        &self,
        calls: &Calls,
        resume: Option<&Resume>,
        first: Option<String>,
        deadline: Instant,
    ) -> Result<(Link, HelloOk), ClientError> {
        let mut candidates: VecDeque<String> = first.into_iter().collect();
        candidates.extend(self.addrs.iter().cloned());
        let mut backoff = FIRST_BACKOFF;
        let mut last_error = ClientError::Connect {
            addr: self.addrs.join(","),
            reason: "no address given".to_owned(),
            kind: crate::ConnectFailure::BadAddress,
        };
        loop {
            let Some(addr) = candidates.pop_front() else {
                if !self.is_cluster() || Instant::now() + backoff >= deadline {
                    return Err(last_error);
                }
                // Every node refused or is unreachable: the cluster may be electing a leader.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                candidates.extend(self.addrs.iter().cloned());
                continue;
            };
            if self.is_cluster() && Instant::now() >= deadline {
                return Err(last_error);
            }
            let dial = link::dial(&addr, self.tls.as_ref(), self.timeouts.connect);
            let dialed = if self.is_cluster() {
                tokio::time::timeout_at(deadline, dial)
                    .await
                    .unwrap_or_else(|_| {
                        Err(ClientError::Connect {
                            addr: addr.clone(),
                            reason: "no answer in time".to_owned(),
                            kind: crate::ConnectFailure::TimedOut,
                        })
                    })
            } else {
                dial.await
            };
            let mut link = match dialed {
                Ok(link) => link,
                Err(err) => {
                    last_error = err;
                    continue;
                }
            };
            let hello = Hello {
                session: resume.map(|resume| resume.session),
                resume_secret: resume.and_then(|resume| resume.secret.clone()),
                ..self.hello.clone()
            };
            // A server that does not answer within the reply timeout is frozen; a cluster node
            // that does not answer in time is passed over for the next.
            let mut reply_deadline = Instant::now() + self.timeouts.reply;
            if self.is_cluster() {
                reply_deadline = reply_deadline.min(deadline);
            }
            let reply_deadline = Some(reply_deadline);
            match link.hello(calls.next_id(), hello, reply_deadline).await {
                Ok(hello) => return Ok((link, hello)),
                Err(ClientError::Server(error)) if error.code == ErrorCode::NotLeader => {
                    if let Some(leader) = error.leader.clone() {
                        if !candidates.contains(&leader) {
                            candidates.push_front(leader);
                        }
                    }
                    last_error = ClientError::Server(error);
                }
                Err(err @ (ClientError::ConnectionLost | ClientError::NoReply { .. }))
                    if self.is_cluster() =>
                {
                    last_error = err
                }
                Err(err) => return Err(err),
            }
        }
    }
}
