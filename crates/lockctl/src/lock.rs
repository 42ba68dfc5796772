//! Lock guards: a held lock that cannot be forgotten.
//!
//! `client.lock("jobs/nightly").shared().timeout(d).acquire().await?` returns a [`LockGuard`]
//! that knows its fencing token, reads and writes the resource's value, and releases the lock
//! when dropped (or explicitly, to see the result). A guard never outlives its session
//! silently: [`LockGuard::lost`] resolves when the connection is gone.
//!
//! Semaphores use the same builder and guard: `client.semaphore("exports", 4).permits(2)`
//! asks for two of the four permits of `exports`, and its guard holds them.

use std::time::Duration;

use protocol::cmd::{Permits, Release};
use protocol::{Command, FenceToken, LockMode, ResourceName};

use crate::client::Client;
use crate::error::ClientError;

impl Client {
    /// Starts a lock request for `resource`: exclusive, waiting as long as it takes, unless the
    /// builder says otherwise. See [`LockRequest`].
    pub fn lock(&self, resource: &str) -> LockRequest<'_> {
        LockRequest::new(self, resource)
    }

    /// Starts a request for one permit (more with [`LockRequest::permits`]) of the semaphore
    /// `resource`, of which at most `limit` permits are held at once. Every acquirer must give
    /// the same limit while anyone holds or waits (else lockd answers `limit_mismatch`); the
    /// first acquirer of an idle resource sets it. Permits are granted strictly in order: a
    /// request for many is never overtaken by later requests for fewer.
    pub fn semaphore(&self, resource: &str, limit: u16) -> LockRequest<'_> {
        let mut request = LockRequest::new(self, resource);
        request.limit = Some(limit);
        request
    }
}

/// A lock request being built; see [`Client::lock`].
#[derive(Debug)]
#[must_use = "a lock request does nothing until `acquire` is awaited"]
pub struct LockRequest<'a> {
    client: &'a Client,
    resource: String,
    mode: LockMode,
    /// For a semaphore: its limit; checked with `permits` by `acquire`.
    limit: Option<u16>,
    /// The permits asked for (a semaphore's; default 1).
    permits: Option<u16>,
    timeout: Option<Duration>,
    lock_delay: Option<Duration>,
    /// A campaign's value (`Election::campaign`): the exclusive hold carries it.
    pub(crate) value: Option<String>,
}

impl<'a> LockRequest<'a> {
    pub(crate) fn new(client: &'a Client, resource: &str) -> Self {
        LockRequest {
            client,
            resource: resource.to_owned(),
            mode: LockMode::Exclusive,
            limit: None,
            permits: None,
            timeout: None,
            lock_delay: None,
            value: None,
        }
    }

    /// For a semaphore (see [`Client::semaphore`]): ask for this many permits (default 1; from
    /// 1 to the limit). A lock request has no permits: `acquire` refuses it.
    pub fn permits(mut self, permits: u16) -> Self {
        self.permits = Some(permits);
        self
    }

    /// Ask for a shared lock (readers share; the default is exclusive).
    pub fn shared(mut self) -> Self {
        self.mode = LockMode::Shared;
        self
    }

    /// Ask for the exclusive lock (the default).
    pub fn exclusive(mut self) -> Self {
        self.mode = LockMode::Exclusive;
        self
    }

    /// Give up after waiting this long (the server answers `timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Ask for a lock-delay: if this lock is lost other than by a release (the session expired,
    /// the link was cut), lockd grants it to nobody for this long, so that this holder has
    /// time to notice and stop before the next one starts (default: the server's,
    /// `--default-lock-delay-ms`, 0 unless set; clamped to `--max-lock-delay-ms`).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// Take the lock only if it is free now; never queue.
    pub fn try_once(self) -> Self {
        self.timeout(Duration::ZERO)
    }

    /// Waits for the lock (or the permits) and returns its guard.
    pub async fn acquire(self) -> Result<LockGuard, ClientError> {
        let permits = match (self.limit, self.permits) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(ClientError::InvalidInput(
                    "permits need a semaphore: use client.semaphore(name, limit)".to_owned(),
                ))
            }
            (Some(limit), permits) => Some(
                Permits::new(permits.unwrap_or(1).into(), limit.into())
                    .map_err(ClientError::InvalidInput)?,
            ),
        };
        // Permits are held shared, beside other permits.
        let mode = if permits.is_some() {
            LockMode::Shared
        } else {
            self.mode
        };
        if self.value.is_some() && mode != LockMode::Exclusive {
            return Err(ClientError::InvalidInput(
                "a campaign holds the exclusive lock; it cannot be shared or a semaphore's"
                    .to_owned(),
            ));
        }
        let granted = self
            .client
            .acquire_claim(
                &self.resource,
                mode,
                permits,
                self.timeout,
                self.lock_delay,
                self.value,
            )
            .await?;
        Ok(LockGuard {
            client: self.client.clone(),
            resource: ResourceName::new(&self.resource)
                .map_err(|err| ClientError::InvalidInput(err.to_string()))?,
            token: granted.token,
            mode: granted.mode,
            permits: granted.permits,
            released: false,
        })
    }
}

/// A held lock. Dropping it releases the lock (without waiting for the server's answer);
/// [`release`](Self::release) does the same and reports the result.
#[derive(Debug)]
#[must_use = "dropping the guard releases the lock at once"]
pub struct LockGuard {
    client: Client,
    resource: ResourceName,
    token: FenceToken,
    mode: LockMode,
    permits: Option<Permits>,
    released: bool,
}

impl LockGuard {
    /// The fencing token of this grant: pass it to whatever the lock protects, which can check
    /// it (or ask lockd with `validate`) and refuse writers whose lock has since moved on.
    pub fn token(&self) -> FenceToken {
        self.token
    }

    /// The resource held.
    pub fn resource(&self) -> &str {
        self.resource.as_str()
    }

    /// The mode held (shared for permits).
    pub fn mode(&self) -> LockMode {
        self.mode
    }

    /// For a semaphore: the permits held and its limit.
    pub fn permits(&self) -> Option<Permits> {
        self.permits
    }

    /// The resource's value (`None` when never written).
    pub async fn read(&self) -> Result<Option<String>, ClientError> {
        self.client.read(self.resource.as_str(), self.token).await
    }

    /// Replaces the resource's value; needs the exclusive lock. Durable once it returns `Ok`.
    pub async fn write(&self, value: &str) -> Result<(), ClientError> {
        self.client
            .write(self.resource.as_str(), self.token, value)
            .await
    }

    /// Resolves when the lock is lost: at once when the connection ends (on a single server),
    /// and at the latest at the session's local deadline if nothing renewed it, strictly before
    /// the server could expire the session and grant the lock to someone else
    /// (docs/safety.md). The lock is then no longer held, whatever this guard says. Select on
    /// it next to the protected work.
    pub async fn lost(&self) {
        self.client.lost().await;
    }

    /// How long the lock is still certainly held: the time left until the session's local
    /// deadline (zero once lost). Keepalive pings keep it above half the lease while the
    /// server answers.
    pub fn valid_for(&self) -> Duration {
        self.client.valid_for()
    }

    /// Whether the lock is *in jeopardy*: the server has not answered anything sent in the
    /// last half lease. It is still held until [`valid_for`](Self::valid_for) runs out; work
    /// that cannot stop in that time should not start.
    pub fn in_jeopardy(&self) -> bool {
        self.client.in_jeopardy()
    }

    /// Releases the lock and waits for the server to confirm.
    pub async fn release(mut self) -> Result<(), ClientError> {
        self.released = true;
        self.client
            .release(self.resource.as_str(), self.token)
            .await
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // Queue the release without waiting for its answer: a drop cannot await. If the
        // connection is already gone, the lock went with it.
        let _ = self.client.send(
            Command::Release(Release {
                resource: self.resource.clone(),
                token: self.token,
            }),
            None,
        );
    }
}
