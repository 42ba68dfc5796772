//! Leader election: [`Client::election`], built from a lock and a watch and nothing else.
//!
//! - [`Election::campaign`] is an exclusive acquire that carries this candidate's value (its
//!   address, say). Candidates wait in the lock's FIFO queue; the winner's [`Leadership`] is a
//!   lock guard, so it is lost exactly when a lock is (the session's end or its local
//!   deadline: [`Leadership::lost`]), and its fencing token is the leader's epoch.
//! - [`Election::observe`] is a watch of the same resource, reduced to the leader: the holder
//!   of the exclusive lock with its value and token. lockd puts the value in the event that
//!   grants the lock, so an observer never sees a new epoch with an old value.
//! - [`Leadership::resign`] releases the lock. The value goes with the hold: observers see no
//!   leader until the next candidate is granted, never a value that nobody stands behind.

use std::time::Duration;

use protocol::cmd::{WatchChange, WatchHolder};
use protocol::{FenceToken, LockMode, SessionId};

use crate::client::Client;
use crate::error::ClientError;
use crate::lock::LockGuard;
use crate::watch::WatchStream;

impl Client {
    /// The election held on the lock `name`: campaign for it, or observe who leads. Every
    /// participant (and every observer) names the same resource.
    pub fn election(&self, name: &str) -> Election {
        Election {
            client: self.clone(),
            name: name.to_owned(),
            lock_delay: None,
        }
    }
}

/// One election, by its resource's name; see [`Client::election`].
#[derive(Debug, Clone)]
pub struct Election {
    client: Client,
    name: String,
    lock_delay: Option<Duration>,
}

impl Election {
    /// The resource the election is held on.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Campaigns with this lock-delay: if this candidate's leadership ends other than by
    /// [`Leadership::resign`] (its process died, its link was cut), lockd makes no one leader
    /// for this long, time for the old leader to notice and stop (default: the server's).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = Some(delay);
        self
    }

    /// Waits until this candidate leads, with `value` for everyone to see while it does.
    pub async fn campaign(&self, value: &str) -> Result<Leadership, ClientError> {
        self.campaign_within(value, None).await
    }

    /// [`campaign`](Self::campaign), giving up with `ErrorCode::Timeout` after `timeout`
    /// (zero: lead now or never).
    pub async fn campaign_within(
        &self,
        value: &str,
        timeout: Option<Duration>,
    ) -> Result<Leadership, ClientError> {
        let mut request = self.client.lock(&self.name).exclusive();
        request.value = Some(value.to_owned());
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        if let Some(delay) = self.lock_delay {
            request = request.lock_delay(delay);
        }
        let guard = request.acquire().await?;
        Ok(Leadership {
            guard,
            value: value.to_owned(),
        })
    }

    /// Observes the election: the stream's first item is the current leader (or `None`), and
    /// every later item is a change of leader.
    pub async fn observe(&self) -> Result<LeaderStream, ClientError> {
        Ok(LeaderStream {
            watch: self.client.watch(&self.name).await?,
            current: None,
        })
    }
}

/// This candidate leads. Dropping it resigns (without waiting for the answer).
#[derive(Debug)]
#[must_use = "dropping the leadership resigns at once"]
pub struct Leadership {
    guard: LockGuard,
    value: String,
}

impl Leadership {
    /// The leader's epoch: the lock's fencing token, larger than every earlier leader's. Pass
    /// it with whatever the leader does, so that the work of a deposed leader can be refused.
    pub fn epoch(&self) -> FenceToken {
        self.guard.token()
    }

    /// The value this candidate campaigned with.
    pub fn value(&self) -> &str {
        &self.value
    }

    /// Resolves when leadership is lost: as a lock guard's [`LockGuard::lost`], strictly
    /// before lockd could make anyone else leader. Select on it next to the leader's work.
    pub async fn lost(&self) {
        self.guard.lost().await;
    }

    /// How long this candidate certainly still leads (zero once lost).
    pub fn valid_for(&self) -> Duration {
        self.guard.valid_for()
    }

    /// Whether leadership is in jeopardy: lockd has not answered for half a lease.
    pub fn in_jeopardy(&self) -> bool {
        self.guard.in_jeopardy()
    }

    /// Gives leadership up and waits for lockd to confirm. Observers see no leader, then the
    /// next candidate, if any.
    pub async fn resign(self) -> Result<(), ClientError> {
        self.guard.release().await
    }

    /// The lock guard under the leadership (for code that runs work under any guard).
    pub fn into_guard(self) -> LockGuard {
        self.guard
    }
}

/// A leader, as observers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// What it campaigned with; `None` if it holds the lock without campaigning (a plain
    /// exclusive acquire of the election's resource).
    pub value: Option<String>,
    /// Its epoch (the lock's fencing token).
    pub epoch: FenceToken,
    /// Its session.
    pub session: SessionId,
}

impl Leader {
    fn of(holder: &WatchHolder) -> Option<Leader> {
        (holder.mode == LockMode::Exclusive).then(|| Leader {
            value: holder.value.clone(),
            epoch: holder.token,
            session: holder.session,
        })
    }
}

/// The leader and its changes; see [`Election::observe`].
#[derive(Debug)]
pub struct LeaderStream {
    watch: WatchStream,
    /// What the last item said, once there was one.
    current: Option<Option<Leader>>,
}

impl LeaderStream {
    /// The first call gives the leader now; each later call waits for the next change of
    /// leader (`None`: nobody leads, e.g. after a resignation). A `resync` from lockd (this
    /// client read too slowly, or its session moved to a new cluster leader) yields an item
    /// only if the leader changed meanwhile. [`ClientError::ConnectionLost`] once the session
    /// is lost.
    pub async fn next(&mut self) -> Result<Option<Leader>, ClientError> {
        loop {
            let event = self.watch.next().await?;
            let known = self.current.clone().flatten();
            let Some(leader) = leader_after(known.as_ref(), &event.change) else {
                continue;
            };
            if self.current.as_ref() != Some(&leader) {
                self.current = Some(leader.clone());
                return Ok(leader);
            }
        }
    }

    /// Stops observing.
    pub async fn unwatch(self) -> Result<(), ClientError> {
        self.watch.unwatch().await
    }
}

/// Who leads after `change`, when it says (`None` when it says nothing about the leader, such
/// as a write or a change in the queue).
fn leader_after(current: Option<&Leader>, change: &WatchChange) -> Option<Option<Leader>> {
    match change {
        WatchChange::State(state) | WatchChange::Resync(state) => {
            Some(state.holders.iter().find_map(Leader::of))
        }
        WatchChange::Granted(holder) => Leader::of(holder).map(Some),
        WatchChange::Released(holder) | WatchChange::Expired(holder) => current
            .is_some_and(|leader| leader.epoch == holder.token)
            .then_some(None),
        WatchChange::Written { .. } | WatchChange::Queue { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::cmd::WatchState;

    fn holder(token: u64, mode: LockMode, value: Option<&str>) -> WatchHolder {
        WatchHolder {
            session: SessionId(token),
            token: FenceToken(token),
            mode,
            value: value.map(str::to_owned),
        }
    }

    fn leader(token: u64, value: &str) -> Leader {
        Leader {
            value: Some(value.to_owned()),
            epoch: FenceToken(token),
            session: SessionId(token),
        }
    }

    #[test]
    fn every_event_kind_says_who_leads_or_nothing() {
        let a = holder(1, LockMode::Exclusive, Some("a"));
        let state = |holders| {
            WatchChange::State(WatchState {
                holders,
                value: None,
                queue: 0,
            })
        };
        assert_eq!(leader_after(None, &state(vec![])), Some(None));
        assert_eq!(
            leader_after(None, &state(vec![a.clone()])),
            Some(Some(leader(1, "a")))
        );
        assert_eq!(
            leader_after(None, &WatchChange::Granted(a.clone())),
            Some(Some(leader(1, "a")))
        );
        let now = leader(1, "a");
        assert_eq!(
            leader_after(Some(&now), &WatchChange::Expired(a.clone())),
            Some(None)
        );
        // Readers of the resource are nobody's leadership, and neither is another's release.
        let reader = holder(2, LockMode::Shared, None);
        assert_eq!(
            leader_after(None, &WatchChange::Granted(reader.clone())),
            None
        );
        assert_eq!(
            leader_after(Some(&now), &WatchChange::Released(reader)),
            None
        );
        assert_eq!(
            leader_after(Some(&now), &WatchChange::Queue { queue: 2 }),
            None
        );
    }
}
