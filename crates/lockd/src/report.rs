//! A locks report: a point-in-time copy of who holds and who waits, with each session's client
//! name and peer address: what `/v1/locks`, the dashboard and the holder and waiter gauges are
//! made from.
//!
//! A backend builds one with [`LocksReport::build`] from the table's `status` and its own
//! per-connection facts (the table knows neither peers nor should it) and hands out an `Arc` of
//! it; the single server does so at most a few times a second however many browsers and
//! scrapers ask. Everything else (ages as of the moment of the request, filtering, sorting hot
//! resources first, JSON) happens in the HTTP tasks, off the backend, so a busy dashboard costs
//! the lock traffic almost nothing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use protocol::cmd::ResourceStatus;
use protocol::{FenceToken, LockMode, ResourceName, SessionId};
use serde::Serialize;

use crate::core::LockTable;
use crate::metrics::{mode_index, LockGauges};

/// What a backend knows of a session beyond the table: who it is and where it connects from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// The name it gave in `hello`, if any.
    pub client: Option<Arc<str>>,
    /// Its TCP peer address.
    pub peer: SocketAddr,
}

/// Holders and waiters of every busy resource at one instant.
#[derive(Debug)]
pub struct LocksReport {
    /// When it was taken; ages are as of this instant.
    pub taken: Instant,
    /// Busy resources in name order, as the `status` op lists them.
    pub resources: Vec<ResourceStatus>,
    /// Every open session.
    pub sessions: HashMap<SessionId, SessionInfo>,
    /// How many watches each watched resource has.
    pub watchers: HashMap<ResourceName, usize>,
    /// Indexes into `resources`, hottest first; computed by the first request that wants it.
    hot: OnceLock<Vec<usize>>,
}

/// How to order resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Order {
    /// By name, as `status` does.
    #[default]
    Name,
    /// Hot first: the longest queue, then the longest wait, then the oldest hold.
    Hot,
}

/// What to show of a report.
#[derive(Debug, Clone, Default)]
pub struct View<'a> {
    /// Only resources whose name, or a holder's or waiter's client name or peer, contains this
    /// text (case-insensitive).
    pub filter: Option<&'a str>,
    /// The order.
    pub order: Order,
    /// At most this many resources.
    pub limit: Option<usize>,
    /// In name order only: just the resources whose names come after this one (the `next` of
    /// the previous page).
    pub after: Option<&'a ResourceName>,
}

impl LocksReport {
    /// The report of `table` at `now`, with what the backend knows of each connected session.
    pub(crate) fn build(
        now: Instant,
        table: &LockTable,
        sessions: impl Iterator<Item = (SessionId, SessionInfo)>,
    ) -> LocksReport {
        let mut report = LocksReport::new(now, table.status(now, None), sessions.collect());
        report.watchers = table.watcher_counts();
        report
    }

    /// A report taken at `taken`.
    pub fn new(
        taken: Instant,
        resources: Vec<ResourceStatus>,
        sessions: HashMap<SessionId, SessionInfo>,
    ) -> LocksReport {
        LocksReport {
            taken,
            resources,
            sessions,
            watchers: HashMap::new(),
            hot: OnceLock::new(),
        }
    }

    /// The report as JSON for the admin API, with ages as of `now`.
    pub fn render(&self, now: Instant, view: &View<'_>) -> LocksJson<'_> {
        let age = millis(now.saturating_duration_since(self.taken));
        let needle = view.filter.map(str::to_lowercase).filter(|n| !n.is_empty());
        let order: Box<dyn Iterator<Item = &ResourceStatus>> = match view.order {
            Order::Name => Box::new(self.resources.iter()),
            Order::Hot => Box::new(self.hot_order().iter().map(|&i| &self.resources[i])),
        };
        let mut matching = 0;
        let limit = view.limit.unwrap_or(usize::MAX);
        let mut resources = Vec::new();
        let mut more = false;
        for status in order {
            if let Some(needle) = &needle {
                if !self.matches(status, needle) {
                    continue;
                }
            }
            matching += 1;
            if view.after.is_some_and(|after| status.resource <= *after) {
                continue;
            }
            if resources.len() < limit {
                resources.push(self.resource_json(status, age));
            } else {
                more = true;
            }
        }
        // A cursor is a name, so only name order has one.
        let next = if more && view.order == Order::Name {
            resources.last().map(|last| last.resource)
        } else {
            None
        };
        let gauges = self.gauges(now);
        LocksJson {
            server: concat!("lockd ", env!("CARGO_PKG_VERSION")),
            matching,
            totals: Totals {
                busy_resources: gauges.busy_resources,
                delayed_resources: gauges.delayed_resources,
                holders: gauges.holders.iter().sum(),
                waiters: gauges.waiters.iter().sum(),
                sessions: self.sessions.len() as u64,
                watches: self.watchers.values().sum::<usize>() as u64,
            },
            resources,
            next,
        }
    }

    /// One resource as JSON, with ages as of `now`: empty holders and waiters when it is idle.
    pub fn render_one<'s>(&'s self, now: Instant, resource: &'s ResourceName) -> ResourceJson<'s> {
        let age = millis(now.saturating_duration_since(self.taken));
        match self
            .resources
            .binary_search_by(|status| status.resource.cmp(resource))
        {
            Ok(index) => self.resource_json(&self.resources[index], age),
            Err(_) => ResourceJson {
                resource,
                holders: Vec::new(),
                waiters: Vec::new(),
                delayed_ms: None,
                limit: None,
                permits_used: None,
                watchers: self.watcher_count(resource),
            },
        }
    }

    /// Counts for the gauges, with ages as of `now`.
    pub fn gauges(&self, now: Instant) -> LockGauges {
        let mut gauges = LockGauges {
            busy_resources: self.resources.len() as u64,
            ..LockGauges::default()
        };
        let mut oldest_hold = 0;
        let mut longest_wait = 0;
        for status in &self.resources {
            if status.delayed_ms.is_some() {
                gauges.delayed_resources += 1;
            }
            for holder in &status.holders {
                gauges.holders[mode_index(holder.mode)] += 1;
                oldest_hold = oldest_hold.max(holder.held_ms);
            }
            for waiter in &status.waiters {
                gauges.waiters[mode_index(waiter.mode)] += 1;
                longest_wait = longest_wait.max(waiter.waited_ms);
            }
        }
        let age = now.saturating_duration_since(self.taken);
        if gauges.holders.iter().sum::<u64>() > 0 {
            gauges.oldest_hold = Duration::from_millis(oldest_hold) + age;
        }
        if gauges.waiters.iter().sum::<u64>() > 0 {
            gauges.longest_wait = Duration::from_millis(longest_wait) + age;
        }
        gauges
    }

    fn hot_order(&self) -> &[usize] {
        self.hot.get_or_init(|| {
            let mut order: Vec<usize> = (0..self.resources.len()).collect();
            // Stable, so equally hot resources stay in name order.
            order.sort_by_key(|&i| {
                let status = &self.resources[i];
                let longest_wait = status.waiters.iter().map(|w| w.waited_ms).max();
                let oldest_hold = status.holders.iter().map(|h| h.held_ms).max();
                std::cmp::Reverse((status.waiters.len(), longest_wait, oldest_hold))
            });
            order
        })
    }

    fn matches(&self, status: &ResourceStatus, needle: &str) -> bool {
        if contains_folded(status.resource.as_str(), needle) {
            return true;
        }
        let sessions = status
            .holders
            .iter()
            .map(|h| h.session)
            .chain(status.waiters.iter().map(|w| w.session));
        sessions.into_iter().any(|session| {
            self.sessions.get(&session).is_some_and(|info| {
                info.client
                    .as_deref()
                    .is_some_and(|client| contains_folded(client, needle))
                    || contains_folded(&info.peer.to_string(), needle)
            })
        })
    }

    fn resource_json<'s>(&'s self, status: &'s ResourceStatus, age: u64) -> ResourceJson<'s> {
        ResourceJson {
            resource: &status.resource,
            holders: status
                .holders
                .iter()
                .map(|holder| {
                    let info = self.sessions.get(&holder.session);
                    HolderJson {
                        session: holder.session,
                        client: info.and_then(|info| info.client.as_deref()),
                        peer: info.map(|info| info.peer),
                        mode: holder.mode,
                        token: holder.token,
                        held_ms: holder.held_ms.saturating_add(age),
                        lock_delay_ms: holder.lock_delay_ms,
                        permits: holder.permits,
                        value: holder.value.as_deref(),
                    }
                })
                .collect(),
            waiters: status
                .waiters
                .iter()
                .enumerate()
                .map(|(index, waiter)| {
                    let info = self.sessions.get(&waiter.session);
                    WaiterJson {
                        position: index as u64 + 1,
                        session: waiter.session,
                        client: info.and_then(|info| info.client.as_deref()),
                        peer: info.map(|info| info.peer),
                        mode: waiter.mode,
                        waited_ms: waiter.waited_ms.saturating_add(age),
                        permits: waiter.permits,
                        group: waiter.group.as_deref(),
                    }
                })
                .collect(),
            delayed_ms: status.delayed_ms.map(|ms| ms.saturating_sub(age)),
            limit: status.limit,
            permits_used: status.permits_used,
            watchers: self.watcher_count(&status.resource),
        }
    }

    fn watcher_count(&self, resource: &ResourceName) -> u64 {
        self.watchers.get(resource).copied().unwrap_or(0) as u64
    }
}

/// `GET /v1/locks`.
#[derive(Debug, Serialize)]
pub struct LocksJson<'a> {
    /// The server's name and version.
    pub server: &'static str,
    /// How many resources matched the filter, on every page (before the cursor and the limit).
    pub matching: usize,
    /// Counts over everything, whatever the filter.
    pub totals: Totals,
    /// The resources shown.
    pub resources: Vec<ResourceJson<'a>>,
    /// Where the next page starts, in name order (pass it as `after`); `null` on the last page.
    pub next: Option<&'a ResourceName>,
}

/// Counts over the whole report.
#[derive(Debug, Serialize)]
pub struct Totals {
    /// Resources with a holder or a waiter, or in lock-delay.
    pub busy_resources: u64,
    /// Resources in lock-delay: granted to nobody until it ends.
    pub delayed_resources: u64,
    /// Current holders.
    pub holders: u64,
    /// Current waiters.
    pub waiters: u64,
    /// Open sessions.
    pub sessions: u64,
    /// Open watches.
    pub watches: u64,
}

/// One resource: `GET /v1/locks/{resource}`, and each entry of `GET /v1/locks`.
#[derive(Debug, Serialize)]
pub struct ResourceJson<'a> {
    /// The resource name.
    pub resource: &'a ResourceName,
    /// Holders, in grant order.
    pub holders: Vec<HolderJson<'a>>,
    /// Waiters, first in line first.
    pub waiters: Vec<WaiterJson<'a>>,
    /// While the resource is in lock-delay: how long until it may be granted again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delayed_ms: Option<u64>,
    /// For a semaphore: how many permits its holders may hold in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u16>,
    /// For a semaphore: how many permits its holders hold now.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permits_used: Option<u32>,
    /// How many watches it has (`watch` op); absent when none.
    #[serde(skip_serializing_if = "is_zero")]
    pub watchers: u64,
}

/// A holder, with what the driver knows of its session.
#[derive(Debug, Serialize)]
pub struct HolderJson<'a> {
    /// The holding session.
    pub session: SessionId,
    /// Its `hello` client name, or null.
    pub client: Option<&'a str>,
    /// Its peer address, or null in the moment between its session's end and the next report.
    pub peer: Option<SocketAddr>,
    /// The mode held.
    pub mode: LockMode,
    /// The fencing token of the grant.
    pub token: FenceToken,
    /// How long it has held the lock.
    pub held_ms: u64,
    /// The lock-delay that follows if it loses the lock other than by `release`; absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub lock_delay_ms: u64,
    /// For a semaphore: how many of its permits this holder holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permits: Option<u16>,
    /// The value its campaign carries: it leads an election, as this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<&'a str>,
}

fn is_zero(ms: &u64) -> bool {
    *ms == 0
}

/// A waiter, with what the driver knows of its session.
#[derive(Debug, Serialize)]
pub struct WaiterJson<'a> {
    /// Its place in line, 1 = next.
    pub position: u64,
    /// The waiting session.
    pub session: SessionId,
    /// Its `hello` client name, or null.
    pub client: Option<&'a str>,
    /// Its peer address.
    pub peer: Option<SocketAddr>,
    /// The mode asked for.
    pub mode: LockMode,
    /// How long it has waited.
    pub waited_ms: u64,
    /// For a semaphore: how many permits it asks for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub permits: Option<u16>,
    /// For a multi-resource acquire: every resource it waits for together, this one included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<&'a [ResourceName]>,
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Whether `haystack` contains `needle`, which is already lower case, ignoring case.
fn contains_folded(haystack: &str, needle: &str) -> bool {
    if haystack.is_ascii() {
        // The common case, without allocating.
        haystack
            .as_bytes()
            .windows(needle.len())
            .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
    } else {
        haystack.to_lowercase().contains(needle)
    }
}

/// Fills in the peer address of every holder and waiter in a `status` result whose session
/// `peer_of` knows: the backend's fact the table lacks.
pub(crate) fn add_peers(
    resources: &mut [ResourceStatus],
    peer_of: impl Fn(SessionId) -> Option<SocketAddr>,
) {
    for entry in resources {
        for holder in &mut entry.holders {
            holder.peer = peer_of(holder.session).map(|peer| peer.to_string());
        }
        for waiter in &mut entry.waiters {
            waiter.peer = peer_of(waiter.session).map(|peer| peer.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::cmd::{HolderStatus, WaiterStatus};

    use super::*;

    fn status(name: &str, holders: &[(u64, u64)], waiters: &[(u64, u64)]) -> ResourceStatus {
        ResourceStatus {
            resource: ResourceName::new(name).unwrap(),
            holders: holders
                .iter()
                .map(|&(session, held_ms)| HolderStatus {
                    session: SessionId(session),
                    client: None,
                    peer: None,
                    mode: LockMode::Exclusive,
                    token: FenceToken(session),
                    held_ms,
                    lock_delay_ms: 0,
                    permits: None,
                    value: None,
                })
                .collect(),
            waiters: waiters
                .iter()
                .map(|&(session, waited_ms)| WaiterStatus {
                    session: SessionId(session),
                    client: None,
                    peer: None,
                    mode: LockMode::Shared,
                    waited_ms,
                    permits: None,
                    group: None,
                })
                .collect(),
            delayed_ms: None,
            limit: None,
            permits_used: None,
        }
    }

    fn report() -> LocksReport {
        let peer = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let sessions = HashMap::from([
            (
                SessionId(1),
                SessionInfo {
                    client: Some(Arc::from("deploy@web1")),
                    peer: peer(4001),
                },
            ),
            (
                SessionId(2),
                SessionInfo {
                    client: None,
                    peer: peer(4002),
                },
            ),
            (
                SessionId(3),
                SessionInfo {
                    client: Some(Arc::from("backup")),
                    peer: peer(4003),
                },
            ),
        ]);
        LocksReport::new(
            Instant::now(),
            vec![
                status("a", &[(1, 50)], &[]),
                status("b", &[(2, 10)], &[(3, 5)]),
                status("c", &[(3, 900)], &[]),
            ],
            sessions,
        )
    }

    fn names(json: &LocksJson<'_>) -> Vec<String> {
        json.resources
            .iter()
            .map(|r| r.resource.to_string())
            .collect()
    }

    #[test]
    fn hot_order_puts_queues_first_then_the_oldest_holds() {
        let report = report();
        let view = View {
            order: Order::Hot,
            ..View::default()
        };
        let json = report.render(report.taken, &view);
        assert_eq!(names(&json), ["b", "c", "a"]);
        assert_eq!(json.matching, 3);
        assert_eq!(json.totals.holders, 3);
        assert_eq!(json.totals.waiters, 1);
    }

    #[test]
    fn the_filter_matches_names_clients_and_peers_and_the_limit_cuts_after_counting() {
        let report = report();
        let render = |filter, limit| {
            let view = View {
                filter: Some(filter),
                order: Order::Name,
                limit,
                after: None,
            };
            let json = report.render(report.taken, &view);
            (names(&json), json.matching)
        };
        assert_eq!(render("DEPLOY", None), (vec!["a".to_owned()], 1));
        assert_eq!(render("backup", None), (vec!["b".into(), "c".into()], 2));
        assert_eq!(render(":4002", None), (vec!["b".to_owned()], 1));
        assert_eq!(render("", Some(1)), (vec!["a".to_owned()], 3));
    }

    #[test]
    fn pages_in_name_order_follow_the_cursor_and_count_every_match() {
        let report = report();
        let page = |after: Option<&ResourceName>| {
            let view = View {
                limit: Some(2),
                after,
                ..View::default()
            };
            let json = report.render(report.taken, &view);
            (names(&json), json.next.cloned(), json.matching)
        };
        let (first, next, matching) = page(None);
        assert_eq!((first, matching), (vec!["a".into(), "b".into()], 3));
        assert_eq!(next, Some(ResourceName::new("b").unwrap()));
        let (second, next, matching) = page(next.as_ref());
        assert_eq!((second, next, matching), (vec!["c".to_owned()], None, 3));
    }

    #[test]
    fn ages_count_from_the_report_to_the_request() {
        let report = report();
        let later = report.taken + Duration::from_millis(100);
        let b = ResourceName::new("b").unwrap();
        let json = serde_json::to_value(report.render_one(later, &b)).unwrap();
        assert_eq!(json["holders"][0]["held_ms"], 110);
        assert_eq!(json["holders"][0]["client"], serde_json::Value::Null);
        assert_eq!(json["waiters"][0]["waited_ms"], 105);
        assert_eq!(json["waiters"][0]["position"], 1);
        assert_eq!(json["waiters"][0]["client"], "backup");
        assert_eq!(json["waiters"][0]["peer"], "127.0.0.1:4003");
        let idle = ResourceName::new("idle").unwrap();
        let json = serde_json::to_value(report.render_one(later, &idle)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"resource": "idle", "holders": [], "waiters": []})
        );
        let gauges = report.gauges(later);
        assert_eq!(gauges.oldest_hold, Duration::from_millis(1_000));
        assert_eq!(gauges.longest_wait, Duration::from_millis(105));
    }
}
