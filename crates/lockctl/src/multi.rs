//! Multi-resource lock guards: several locks taken together, all at once or not at all.
//!
//! `client.multi().exclusive("accounts/alice").exclusive("accounts/bob").acquire().await?`
//! sends one `acquire` with `resources`; lockd grants every member at once or none (it waits in
//! every member's queue, holding nothing), so two clients that name the same resources in a
//! different order cannot deadlock each other. The [`MultiLockGuard`] knows each member's
//! fencing token and releases them all when dropped.

use std::time::Duration;

use futures_util::future::join_all;
use protocol::cmd::{AcquireManyOk, MemberToken, Release};
use protocol::{Command, FenceToken, LockMode};

use crate::client::{AcquireProgress, Client};
use crate::error::ClientError;

impl Client {
    /// Starts a multi-resource lock request: add resources with
    /// [`exclusive`](MultiLockRequest::exclusive) and [`shared`](MultiLockRequest::shared),
    /// then [`acquire`](MultiLockRequest::acquire) them together.
    pub fn multi(&self) -> MultiLockRequest<'_> {
        MultiLockRequest {
            client: self,
            members: Vec::new(),
            timeout: None,
            lock_delay: None,
        }
    }
}

/// A multi-resource lock request being built; see [`Client::multi`].
#[derive(Debug)]
#[must_use = "a lock request does nothing until `acquire` is awaited"]
pub struct MultiLockRequest<'a> {
    client: &'a Client,
    members: Vec<(String, LockMode)>,
    timeout: Option<Duration>,
    lock_delay: Option<Duration>,
}

impl MultiLockRequest<'_> {
    /// Adds `resource` in exclusive mode.
    pub fn exclusive(mut self, resource: &str) -> Self {
        self.members
            .push((resource.to_owned(), LockMode::Exclusive));
        self
    }

    /// Adds `resource` in shared mode.
    pub fn shared(mut self, resource: &str) -> Self {
        self.members.push((resource.to_owned(), LockMode::Shared));
        self
    }

    /// Gives up after waiting this long for all of them (the server answers `timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Each member's lock-delay; see [`LockRequest::lock_delay`](crate::LockRequest::lock_delay).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// Takes them only if every one is free now; never queues.
    pub fn try_once(self) -> Self {
        self.timeout(Duration::ZERO)
    }

    /// Waits until every resource is granted, together, and returns the guard. Naming no
    /// resource, or one twice, is refused by the server (`bad_request`).
    pub async fn acquire(self) -> Result<MultiLockGuard, ClientError> {
        let members: Vec<(&str, LockMode)> = self
            .members
            .iter()
            .map(|(resource, mode)| (resource.as_str(), *mode))
            .collect();
        let mut call = self
            .client
            .start_acquire_many(&members, self.timeout, self.lock_delay)?;
        let granted: AcquireManyOk = loop {
            if let AcquireProgress::Done(outcome) = call.next().await {
                break outcome?;
            }
        };
        Ok(MultiLockGuard {
            client: self.client.clone(),
            tokens: granted.tokens,
            released: false,
        })
    }
}

/// Several locks held together. Dropping it releases every one (without waiting for the
/// server's answers); [`release`](Self::release) does the same and reports the result.
#[derive(Debug)]
#[must_use = "dropping the guard releases the locks at once"]
pub struct MultiLockGuard {
    client: Client,
    tokens: Vec<MemberToken>,
    released: bool,
}

impl MultiLockGuard {
    /// Each member's resource, fencing token and mode, in the order they were added.
    pub fn tokens(&self) -> &[MemberToken] {
        &self.tokens
    }

    /// The fencing token `resource` is held with, if it is a member.
    pub fn token(&self, resource: &str) -> Option<FenceToken> {
        self.member(resource).ok().map(|member| member.token)
    }

    /// The value of member `resource`.
    pub async fn read(&self, resource: &str) -> Result<Option<String>, ClientError> {
        let member = self.member(resource)?;
        self.client.read(resource, member.token).await
    }

    /// Replaces the value of member `resource`; it must be held exclusive. Durable once it
    /// returns `Ok`.
    pub async fn write(&self, resource: &str, value: &str) -> Result<(), ClientError> {
        let member = self.member(resource)?;
        self.client.write(resource, member.token, value).await
    }

    /// Resolves when the locks are lost: they are held by one session, so they are lost
    /// together. See [`LockGuard::lost`](crate::LockGuard::lost).
    pub async fn lost(&self) {
        self.client.lost().await;
    }

    /// How long the locks are still certainly held; see
    /// [`LockGuard::valid_for`](crate::LockGuard::valid_for).
    pub fn valid_for(&self) -> Duration {
        self.client.valid_for()
    }

    /// Whether the locks are in jeopardy; see
    /// [`LockGuard::in_jeopardy`](crate::LockGuard::in_jeopardy).
    pub fn in_jeopardy(&self) -> bool {
        self.client.in_jeopardy()
    }

    /// Releases every member, all sent at once, and waits for the server to confirm each.
    /// Returns the first failure, if any (the others are released all the same).
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.released = true;
        let releases = self
            .tokens
            .iter()
            .map(|member| self.client.release(member.resource.as_str(), member.token));
        join_all(releases).await.into_iter().collect()
    }

    fn member(&self, resource: &str) -> Result<&MemberToken, ClientError> {
        self.tokens
            .iter()
            .find(|member| member.resource.as_str() == resource)
            .ok_or_else(|| {
                ClientError::InvalidInput(format!("{resource} is not held by this guard"))
            })
    }
}

impl Drop for MultiLockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Queued without waiting for answers: a drop cannot await. If the connection is
        // already gone, the locks went with it.
        for member in &self.tokens {
            let _ = self.client.send(
                Command::Release(Release {
                    resource: member.resource.clone(),
                    token: member.token,
                }),
                None,
            );
        }
    }
}
