//! Campaigns: an exclusive acquire that carries a value (a candidate's address, say), for leader
//! election.
//!
//! The value belongs to the hold, not to the resource: it is set when the acquire is granted and
//! goes when the hold ends, so "who leads, and what did it say" is one fact with one token. A
//! watcher sees the value in the very `granted` event that names the new holder, and in the
//! holders of every `state` and `resync`: it can never see a new leader's token next to the
//! previous leader's value, and once the leader resigns or is lost it sees no holder at all (no
//! leader), never a stale value. The resource's stored value (`read`, `write`) is another thing,
//! untouched by campaigns, durable, and the leader's to write like any holder's.
//!
//! Kept apart from the grant path: a campaign is an ordinary exclusive acquire
//! ([`LockTable::handle_campaign`] wraps `handle_acquire`), and the table tells this module when
//! a hold or a wait ends through the same hooks that make watch events (`notify_hold`), plus
//! `end_wait` and `end_session`. Like locks, values are not durable: they live exactly as long as
//! their hold.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::HashMap as PersistentMap;
use protocol::{LockMode, RequestId, ResourceName, SessionId};

use super::effect::LockError;
use super::queue::Claim;
use super::table::{Acquired, LockTable};

/// The value of every campaign that waits or holds, by session then resource. A session holds
/// or waits for a resource at most once (locks are not re-entrant), so the pair names one
/// campaign, through its wait and then its hold. Persistent, like the table's other maps, for
/// its snapshots.
#[derive(Debug, Default, Clone)]
pub(super) struct Campaigns {
    by_session: PersistentMap<SessionId, HashMap<ResourceName, Arc<str>>>,
}

impl Campaigns {
    /// The value `session` campaigns for `resource` with, if it does.
    pub(super) fn get(&self, session: SessionId, resource: &ResourceName) -> Option<&Arc<str>> {
        self.by_session.get(&session)?.get(resource)
    }

    pub(super) fn insert(&mut self, session: SessionId, resource: ResourceName, value: Arc<str>) {
        self.by_session
            .entry(session)
            .or_default()
            .insert(resource, value);
    }

    /// Ends `session`'s campaign for `resource` (its hold or its wait ended); returns its value.
    pub(super) fn remove(
        &mut self,
        session: SessionId,
        resource: &ResourceName,
    ) -> Option<Arc<str>> {
        let values = self.by_session.get_mut(&session)?;
        let value = values.remove(resource);
        if values.is_empty() {
            self.by_session.remove(&session);
        }
        value
    }

    /// Ends every campaign of a session that is ending.
    pub(super) fn forget_session(&mut self, session: SessionId) {
        self.by_session.remove(&session);
    }

    /// Every campaign as (session, resource, value), sorted: for a table image.
    pub(super) fn all(&self) -> Vec<(SessionId, ResourceName, String)> {
        let mut all: Vec<_> = self
            .by_session
            .iter()
            .flat_map(|(session, values)| {
                values
                    .iter()
                    .map(|(resource, value)| (*session, resource.clone(), value.to_string()))
            })
            .collect();
        all.sort();
        all
    }

    /// How many campaigns wait or hold.
    pub(super) fn len(&self) -> usize {
        self.by_session.values().map(HashMap::len).sum()
    }
}

impl LockTable {
    /// `acquire` with a `value`: campaigns for the exclusive lock on `resource`. Exactly
    /// [`handle_acquire`](Self::handle_acquire) of the exclusive lock (same queue, same FIFO,
    /// same token: the leader's epoch), except that the hold carries `value` from its grant to
    /// its end, and watchers see it with the holder. A value over `max_value_bytes` is refused
    /// as a `write` of it would be.
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per field of the request"
    )]
    pub fn handle_campaign(
        &mut self,
        now: Instant,
        session_id: SessionId,
        request: RequestId,
        resource: ResourceName,
        value: Arc<str>,
        timeout: Option<Duration>,
        lock_delay: Option<Duration>,
    ) -> Result<Acquired, LockError> {
        if value.len() > self.config.max_value_bytes {
            return Err(LockError::ValueTooLarge(
                value.len(),
                self.config.max_value_bytes,
            ));
        }
        let session = self
            .sessions
            .get(&session_id)
            .ok_or(LockError::SessionGone)?;
        // A session that already holds or waits for the resource is refused (`already_held`)
        // by the acquire below; its own campaign's value, if any, must stay as it is.
        let busy = session.held.contains(&resource) || session.waiting.contains_key(&resource);
        if !busy {
            // In place before the acquire, whose grant (at once or later) tells the watchers.
            self.campaigns
                .insert(session_id, resource.clone(), Arc::clone(&value));
        }
        let result = self.handle_acquire(
            now,
            session_id,
            request,
            resource.clone(),
            Claim::Lock(LockMode::Exclusive),
            timeout,
            lock_delay,
        );
        if result.is_err() && !busy {
            // A refused acquire neither holds nor waits.
            self.campaigns.remove(session_id, &resource);
        }
        result
    }

    /// The value `session` campaigns for `resource` with (waiting or holding), if it does.
    pub fn campaign_value(&self, session: SessionId, resource: &ResourceName) -> Option<&str> {
        self.campaigns.get(session, resource).map(|value| &**value)
    }

    /// How many campaigns wait or hold, over all resources.
    pub fn campaign_count(&self) -> usize {
        self.campaigns.len()
    }
}
