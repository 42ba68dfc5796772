//! Watches: which sessions watch which resources, and the events the table's changes make for
//! them.
//!
//! Kept apart from the grant logic: `table.rs` calls [`LockTable::notify_hold`] and
//! [`LockTable::notify_queue`] at the points where a hold or a queue changes, and everything
//! else about watches is here. Events are [`Effect::Watch`]s, made in table order like every
//! other effect, so every replica of a table makes the same ones. How far behind a watcher may
//! fall is not the table's business: it never learns what was delivered (see `seam.rs`).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use imbl::HashMap as PersistentMap;

use protocol::cmd::{WatchChange, WatchEvent, WatchHolder, WatchState};
use protocol::{FenceToken, RequestId, ResourceName, SessionId};

use super::effect::{Effect, LockError};
use super::observation::SessionEnd;
use super::queue::Holder;
use super::table::LockTable;

/// Every open watch, indexed both ways. Its maps are persistent, so a table snapshot copies
/// them in O(1) (see `LockTable::snapshot`).
#[derive(Debug, Default, Clone)]
pub(super) struct Watches {
    /// Watchers of each resource, in (session, watch id) order so that events go out in the
    /// same order on every run.
    by_resource: PersistentMap<ResourceName, BTreeSet<(SessionId, RequestId)>>,
    /// Each session's watches, by the `watch` request's id.
    by_session: PersistentMap<SessionId, BTreeMap<RequestId, ResourceName>>,
    /// How many watches are open, kept so that asking costs nothing.
    count: usize,
}

impl Watches {
    /// How many watches are open.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Every open watch as (session, watch id, resource), in that order.
    pub(super) fn all(&self) -> Vec<(SessionId, RequestId, ResourceName)> {
        let mut all: Vec<_> = self
            .by_session
            .iter()
            .flat_map(|(session, watches)| {
                watches
                    .iter()
                    .map(|(id, resource)| (*session, *id, resource.clone()))
            })
            .collect();
        all.sort();
        all
    }

    fn remove(&mut self, session: SessionId, watch: RequestId) -> Option<ResourceName> {
        let watches = self.by_session.get_mut(&session)?;
        let resource = watches.remove(&watch)?;
        self.count -= 1;
        if watches.is_empty() {
            self.by_session.remove(&session);
        }
        if let Some(watchers) = self.by_resource.get_mut(&resource) {
            watchers.remove(&(session, watch));
            if watchers.is_empty() {
                self.by_resource.remove(&resource);
            }
        }
        Some(resource)
    }
}

impl LockTable {
    /// `watch`: subscribes `session` to `resource` under the watch id `watch` (the request's
    /// id). The first event, the resource's current state, is queued as an effect at once.
    pub fn handle_watch(
        &mut self,
        session: SessionId,
        watch: RequestId,
        resource: ResourceName,
    ) -> Result<(), LockError> {
        if !self.sessions.contains_key(&session) {
            return Err(LockError::SessionGone);
        }
        let open = self.watches.by_session.get(&session);
        if open.is_some_and(|watches| watches.contains_key(&watch)) {
            return Err(LockError::DuplicateWatchId(watch));
        }
        let count = open.map_or(0, BTreeMap::len);
        if count >= self.config.max_watches_per_session {
            return Err(LockError::TooManyWatches { watches: count });
        }
        self.watches
            .by_session
            .entry(session)
            .or_default()
            .insert(watch, resource.clone());
        self.watches
            .by_resource
            .entry(resource.clone())
            .or_default()
            .insert((session, watch));
        self.watches.count += 1;
        let state = self.watch_state(&resource);
        self.effects.push_back(Effect::Watch {
            session,
            watch,
            event: WatchEvent {
                resource,
                change: WatchChange::State(state),
            },
        });
        Ok(())
    }

    /// `unwatch`: ends `session`'s watch `watch`. No event of it is made after this.
    pub fn handle_unwatch(
        &mut self,
        session: SessionId,
        watch: RequestId,
    ) -> Result<(), LockError> {
        if !self.sessions.contains_key(&session) {
            return Err(LockError::SessionGone);
        }
        self.watches
            .remove(session, watch)
            .map(|_| ())
            .ok_or(LockError::NoSuchWatch(watch))
    }

    /// The resource as a watcher sees it now: for the first event, and for a `resync`.
    pub fn watch_state(&self, resource: &ResourceName) -> WatchState {
        let queue = self.queues.get(resource);
        WatchState {
            holders: queue
                .into_iter()
                .flat_map(|queue| queue.holders())
                .map(|(token, holder)| self.watch_holder(resource, token, holder))
                .collect(),
            value: self.values.get(resource).map(|value| value.to_string()),
            queue: queue.map_or(0, |queue| queue.waiter_count() as u64),
        }
    }

    /// `session`'s open watches, by id: what a resumed session is sent a `resync` for.
    pub fn session_watches(&self, session: SessionId) -> Vec<(RequestId, ResourceName)> {
        self.watches
            .by_session
            .get(&session)
            .map(|watches| {
                watches
                    .iter()
                    .map(|(id, resource)| (*id, resource.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Puts back a watch from a table image, without its first event (its watcher had it).
    pub(super) fn restore_watch(
        &mut self,
        session: SessionId,
        watch: RequestId,
        resource: ResourceName,
    ) {
        self.watches
            .by_resource
            .entry(resource.clone())
            .or_default()
            .insert((session, watch));
        let watches = self.watches.by_session.entry(session).or_default();
        if watches.insert(watch, resource).is_none() {
            self.watches.count += 1;
        }
    }

    /// How many watches each watched resource has, for the admin API.
    pub fn watcher_counts(&self) -> HashMap<ResourceName, usize> {
        self.watches
            .by_resource
            .iter()
            .map(|(resource, watchers)| (resource.clone(), watchers.len()))
            .collect()
    }

    /// How many watches are open, over all sessions.
    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Ends every watch of a session that is ending; nothing more is sent to it.
    pub(super) fn forget_watches(&mut self, session: SessionId) {
        let ids: Vec<RequestId> = self
            .watches
            .by_session
            .get(&session)
            .map(|watches| watches.keys().copied().collect())
            .unwrap_or_default();
        for id in ids {
            self.watches.remove(session, id);
        }
    }

    /// A hold of `resource` began or ended: tells its watchers. Every hold that ends passes
    /// here, so this is also where a campaign's value goes with its hold (`elect.rs`); the
    /// event of an ended hold still shows it (who it was that left).
    pub(super) fn notify_hold(
        &mut self,
        resource: &ResourceName,
        change: HoldChange,
        token: FenceToken,
        holder: &Holder,
    ) {
        if self.watches.by_resource.contains_key(resource) {
            let holder = self.watch_holder(resource, token, holder);
            self.notify(resource, || match change {
                HoldChange::Granted => WatchChange::Granted(holder.clone()),
                HoldChange::Released => WatchChange::Released(holder.clone()),
                HoldChange::Expired => WatchChange::Expired(holder.clone()),
            });
        }
        if change != HoldChange::Granted {
            self.campaigns.remove(holder.session, resource);
        }
    }

    /// The number of acquires waiting for `resource` changed: tells its watchers how many wait
    /// now.
    pub(super) fn notify_queue(&mut self, resource: &ResourceName) {
        let queue = self
            .queues
            .get(resource)
            .map_or(0, |queue| queue.waiter_count() as u64);
        self.notify(resource, || WatchChange::Queue { queue });
    }

    /// `resource`'s value was written by the holder of `token`: tells its watchers.
    pub(super) fn notify_written(&mut self, resource: &ResourceName, token: FenceToken) {
        // The shared value, not a copy: every write passes here, and most resources have no
        // watcher, so the text is copied only for each event actually made.
        let Some(value) = self.values.get(resource).cloned() else {
            return;
        };
        self.notify(resource, || WatchChange::Written {
            token,
            value: value.to_string(),
        });
    }

    /// One event per watcher of `resource`, in watcher order; `change` is only called when
    /// somebody watches.
    fn notify(&mut self, resource: &ResourceName, change: impl Fn() -> WatchChange) {
        let Some(watchers) = self.watches.by_resource.get(resource) else {
            return;
        };
        for &(session, watch) in watchers {
            self.effects.push_back(Effect::Watch {
                session,
                watch,
                event: WatchEvent {
                    resource: resource.clone(),
                    change: change(),
                },
            });
        }
    }
}

/// How a hold changed, for [`LockTable::notify_hold`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HoldChange {
    /// A session was granted the lock.
    Granted,
    /// Its holder gave it back, or its connection closed.
    Released,
    /// Its holder's lease ran out, or an operator forced the release.
    Expired,
}

impl HoldChange {
    /// How a hold ends when its session ends for `why`.
    pub(super) fn session_ended(why: SessionEnd) -> HoldChange {
        match why {
            SessionEnd::Disconnected => HoldChange::Released,
            SessionEnd::Expired | SessionEnd::Forced => HoldChange::Expired,
        }
    }
}

impl LockTable {
    /// A holder as watchers see it: with its campaign's value, if it campaigned.
    fn watch_holder(
        &self,
        resource: &ResourceName,
        token: FenceToken,
        holder: &Holder,
    ) -> WatchHolder {
        WatchHolder {
            session: holder.session,
            token,
            mode: holder.mode,
            value: self
                .campaigns
                .get(holder.session, resource)
                .map(|value| value.to_string()),
        }
    }
}
