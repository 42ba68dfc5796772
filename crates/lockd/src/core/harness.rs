//! The fake-clock harness shared by the table's unit tests: a table, a clock advanced by hand,
//! and short names for the inputs and expected outputs.

use std::time::{Duration, Instant};

use protocol::cmd::Permits;
use protocol::{FenceToken, LockMode, RequestId, ResourceName, SessionId};

use super::*;

impl Harness {
    pub(super) fn new(config: TableConfig) -> Harness {
        Harness {
            table: LockTable::new(config),
            now: Instant::now(),
        }
    }

    /// A table as a single server restores it: tokens up to `previous` were handed out by an
    /// earlier run, and only those up to `reserved` may be handed out now (a stalled grant waits
    /// for `handle_tokens_reserved`).
    pub(super) fn with_reserved_tokens(
        config: TableConfig,
        previous: u64,
        reserved: u64,
    ) -> Harness {
        let now = Instant::now();
        let mut table = LockTable::restore(config, Default::default(), previous);
        table.handle_tokens_reserved(now, reserved);
        Harness { table, now }
    }

    pub(super) fn observations(&mut self) -> Vec<Observation> {
        std::iter::from_fn(|| self.table.poll_observation()).collect()
    }
}

pub(super) fn ms(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A lock table on a hand-advanced clock.
pub(super) struct Harness {
    pub(super) table: LockTable,
    pub(super) now: Instant,
}

pub(super) fn name(s: &str) -> ResourceName {
    ResourceName::new(s).unwrap()
}

pub(super) fn granted(
    session: SessionId,
    request: u64,
    resource: &str,
    token: u64,
    mode: LockMode,
) -> Effect {
    Effect::Granted {
        session,
        request: RequestId(request),
        resource: name(resource),
        token: FenceToken(token),
        mode,
        permits: None,
    }
}

pub(super) fn permits_of(permits: u64, limit: u64) -> Permits {
    Permits::new(permits, limit).unwrap()
}

/// The grant of a waiting semaphore acquire.
pub(super) fn granted_permits(
    session: SessionId,
    request: u64,
    resource: &str,
    token: u64,
    (permits, limit): (u64, u64),
) -> Effect {
    Effect::Granted {
        session,
        request: RequestId(request),
        resource: name(resource),
        token: FenceToken(token),
        mode: LockMode::Shared,
        permits: Some(permits_of(permits, limit)),
    }
}

pub(super) fn failed(
    session: SessionId,
    request: u64,
    resource: &str,
    reason: WaitFailure,
) -> Effect {
    Effect::WaitFailed {
        session,
        request: RequestId(request),
        resource: name(resource),
        reason,
    }
}

impl Harness {
    pub(super) fn session(&mut self) -> SessionId {
        self.table.open_session(self.now)
    }

    pub(super) fn acquire(
        &mut self,
        s: SessionId,
        request: u64,
        resource: &str,
        mode: LockMode,
    ) -> Acquired {
        self.try_acquire(s, request, resource, mode, None).unwrap()
    }

    pub(super) fn try_acquire(
        &mut self,
        s: SessionId,
        request: u64,
        resource: &str,
        mode: LockMode,
        timeout_ms: Option<u64>,
    ) -> Result<Acquired, LockError> {
        self.try_claim(s, request, resource, mode, timeout_ms)
    }

    fn try_claim(
        &mut self,
        s: SessionId,
        request: u64,
        resource: &str,
        claim: impl Into<Claim>,
        timeout_ms: Option<u64>,
    ) -> Result<Acquired, LockError> {
        self.table.handle_acquire(
            self.now,
            s,
            RequestId(request),
            name(resource),
            claim,
            timeout_ms.map(Duration::from_millis),
            None,
        )
    }

    /// A semaphore acquire of `permits` of `limit`, waiting as long as it takes.
    pub(super) fn acquire_permits(
        &mut self,
        s: SessionId,
        request: u64,
        resource: &str,
        permits: u64,
        limit: u64,
        timeout_ms: Option<u64>,
    ) -> Result<Acquired, LockError> {
        self.try_claim(s, request, resource, permits_of(permits, limit), timeout_ms)
    }

    pub(super) fn release(
        &mut self,
        s: SessionId,
        resource: &str,
        token: u64,
    ) -> Result<(), LockError> {
        self.table
            .handle_release(self.now, s, &name(resource), FenceToken(token))
    }

    pub(super) fn advance(&mut self, ms: u64) {
        self.now += Duration::from_millis(ms);
        self.table.handle_timeout(self.now);
    }

    pub(super) fn effects(&mut self) -> Vec<Effect> {
        std::iter::from_fn(|| self.table.poll_effect()).collect()
    }

    pub(super) fn holders(&self, resource: &str) -> Vec<(SessionId, LockMode, u64)> {
        let status = self.table.status(self.now, Some(&name(resource)));
        status[0]
            .holders
            .iter()
            .map(|h| (h.session, h.mode, h.token.0))
            .collect()
    }

    pub(super) fn waiters(&self, resource: &str) -> Vec<SessionId> {
        let status = self.table.status(self.now, Some(&name(resource)));
        status[0].waiters.iter().map(|w| w.session).collect()
    }
}

/// The cycle a deadlock refusal names.
pub(super) fn deadlock(result: Result<Acquired, LockError>) -> String {
    match result {
        Err(LockError::Deadlock { cycle, .. }) => cycle,
        other => panic!("expected a deadlock, got {other:?}"),
    }
}

pub(super) fn granted_now(token: u64) -> Acquired {
    Acquired::Granted(FenceToken(token))
}

pub(super) fn queued(position: u64) -> Acquired {
    Acquired::Queued { position }
}

impl Harness {
    /// A multi-resource acquire of `members` (name and mode), in that order.
    pub(super) fn acquire_many(
        &mut self,
        s: SessionId,
        request: u64,
        members: &[(&str, LockMode)],
        timeout_ms: Option<u64>,
    ) -> Result<AcquiredMany, LockError> {
        self.table.handle_acquire_many(
            self.now,
            s,
            RequestId(request),
            members.iter().map(|(r, mode)| (name(r), *mode)).collect(),
            timeout_ms.map(Duration::from_millis),
            None,
        )
    }
}

/// The grant of a waiting multi-resource acquire: each member's name, token and mode.
pub(super) fn group_granted(
    session: SessionId,
    request: u64,
    tokens: &[(&str, u64, LockMode)],
) -> Effect {
    Effect::GroupGranted {
        session,
        request: RequestId(request),
        tokens: tokens
            .iter()
            .map(|(r, token, mode)| (name(r), FenceToken(*token), *mode))
            .collect(),
    }
}

pub(super) fn all_now(tokens: &[u64]) -> AcquiredMany {
    AcquiredMany::Granted(tokens.iter().map(|t| FenceToken(*t)).collect())
}
