//! The task that keeps a session connected: it carries frames over the session's link, and
//! when the link ends it either declares the session lost or, in a cluster, resumes it.
//!
//! A single server ends a session with its connection, so there the end of the link is the
//! end of the session. A cluster keeps a session until its lease runs out, and a leader that
//! fails or steps down closes its connections; so the task dials the cluster again (following
//! `not_leader` to the new leader), says `hello` with the session's id, and queues again
//! every call still awaiting its final reply, with its original id. The server answers a
//! request it already applied from the reply it saved, and tells a waiting acquire its place
//! again, so nothing is lost or applied twice. Callers only see their replies arrive later.
//!
//! The session is lost (and `lost` cancelled, and every call failed) at its local deadline
//! (`lease.rs`), strictly before the server could expire it, if nothing the server answered
//! has moved that deadline on: a link that went silent, a failover that takes longer than the
//! lease. It is lost at once when the link ends on a single server, or when the new leader no
//! longer knows the session (`no_session`). The link is then dropped, which on a single server
//! frees the locks at once if the server can still hear it.

use std::time::Duration;

use bytes::Bytes;
use protocol::cmd::{Hello, HelloOk, Release, Status, StatusOk};
use protocol::Command;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::calls::Calls;
use crate::error::ClientError;
use crate::leader::{Dialer, Resume};
use crate::link::{Link, LinkEnd};

/// How long a client that lost its session tries to find the cluster again to give back its
/// locks (see [`SessionTask::give_up`]): a new leader keeps the session for a lease after its
/// election, so there is no point in trying for much longer than an election and a lease.
const GIVE_BACK_PATIENCE: Duration = Duration::from_secs(30);

/// What the task needs to keep one session; see the module docs.
#[derive(Debug)]
pub(crate) struct SessionTask {
    pub(crate) calls: std::sync::Arc<Calls>,
    /// Cancelled when the session is lost.
    pub(crate) lost: CancellationToken,
    /// How to find the server again.
    pub(crate) dialer: Dialer,
    /// The session, and what resuming it takes.
    pub(crate) resume: Resume,
    /// The lease the server granted: how long a resume may take.
    pub(crate) lease: Duration,
    /// The frames `calls` queues, for the current link.
    pub(crate) outgoing: mpsc::UnboundedReceiver<Bytes>,
}

impl SessionTask {
    /// Runs until the session is lost (or the task is aborted, when the last client handle
    /// goes).
    pub(crate) async fn run(mut self, mut link: Link) {
        let resumable = self.dialer.is_cluster();
        // The keepalive pings every quarter of the lease, so a healthy server sends something at
        // least that often; nothing for half the lease while a reply is due means it is
        // paused or cut off, with what is left of the local lease to resume elsewhere.
        let silence = resumable.then(|| (self.lease / 2).max(Duration::from_millis(100)));
        let calls = std::sync::Arc::clone(&self.calls);
        loop {
            let end = tokio::select! {
                end = link.carry(&self.calls, &mut self.outgoing, resumable, silence) => end,
                () = calls.local_deadline_passed() => return self.give_up().await,
            };
            let leader = match end {
                LinkEnd::Broken(err) => return self.lose(&err),
                LinkEnd::Closed => None,
                LinkEnd::NotLeader { leader } => leader,
            };
            if !resumable {
                return self.lose(&ClientError::ConnectionLost);
            }
            let resumed = tokio::select! {
                resumed = self.resume(leader) => resumed,
                () = calls.local_deadline_passed() => None,
            };
            match resumed {
                Some(resumed) => link = resumed,
                None => return self.give_up().await,
            }
        }
    }

    /// Takes the session back on the cluster's leader, trying `leader` first, before the local
    /// deadline; queues every call in flight again on success.
    async fn resume(&mut self, leader: Option<String>) -> Option<Link> {
        let deadline = self.calls.local_deadline();
        let started = Instant::now();
        let (link, hello) = self
            .dialer
            .open(&self.calls, Some(&self.resume), leader, deadline)
            .await
            .ok()?;
        self.lease = Duration::from_millis(hello.lease_ms);
        self.calls.set_lease(self.lease);
        self.calls.requeue_all(&mut self.outgoing, started);
        Some(link)
    }

    /// The local deadline passed: the session is lost to this client. In a cluster the server
    /// may still keep it (a new leader gives every session a fresh lease), holding locks this
    /// client no longer uses; so the client goes back once to release them, instead of letting
    /// others wait out that lease.
    async fn give_up(&self) {
        self.lose(&ClientError::ConnectionLost);
        if self.dialer.is_cluster() {
            self.give_back().await;
        }
    }

    /// Resumes the session on the leader, if the cluster still has it, releases every lock it
    /// holds there, and asks for the shortest lease, so that its waits end soon too. Tries for
    /// at most `GIVE_BACK_PATIENCE`; gives up quietly on any error (a session the cluster no
    /// longer has holds nothing).
    async fn give_back(&self) {
        let deadline = Instant::now() + GIVE_BACK_PATIENCE;
        let Ok((mut link, _)) = self
            .dialer
            .open(&self.calls, Some(&self.resume), None, deadline)
            .await
        else {
            return;
        };
        // Every page, since this session's holds may be anywhere in the table.
        let mut after = None;
        loop {
            let status = Command::Status(Status::page(after.clone(), None));
            let Ok(page) = link
                .exchange::<StatusOk>(self.calls.next_id(), status, Some(deadline))
                .await
            else {
                return;
            };
            for entry in &page.resources {
                for holder in entry
                    .holders
                    .iter()
                    .filter(|h| h.session == self.resume.session)
                {
                    let release = Command::Release(Release {
                        resource: entry.resource.clone(),
                        token: holder.token,
                    });
                    // A release the server refuses (the lock already went) leaves nothing to do.
                    let _ = link
                        .exchange::<serde_json::Value>(
                            self.calls.next_id(),
                            release,
                            Some(deadline),
                        )
                        .await;
                }
            }
            after = page.next_after(after.as_ref());
            if after.is_none() {
                break;
            }
        }
        let shortest = Hello {
            lease_ms: Some(1),
            ..Hello::default()
        };
        let _ = link
            .exchange::<HelloOk>(
                self.calls.next_id(),
                Command::Hello(shortest),
                Some(deadline),
            )
            .await;
    }

    /// Ends the session: `lost` fires, and every call fails with `error`.
    fn lose(&self, error: &ClientError) {
        self.lost.cancel();
        self.calls.fail_all(|| match error {
            ClientError::Protocol(message) => ClientError::Protocol(message.clone()),
            _ => ClientError::ConnectionLost,
        });
    }
}
