//! lockd's Prometheus metrics: what `/metrics` serves, and the handles the server counts with.
//!
//! Every family is registered once, when the server is built, and a handle is resolved then for
//! every label value it can ever have (two modes, the ops, the error codes, the reasons a lock
//! is let go). Counting on the request path is therefore an atomic add, or for a histogram one
//! short uncontended mutex; it never allocates, hashes a label set or takes the registry lock.
//! Label values are closed sets chosen here, never resource names or client names, so the
//! number of series is fixed.
//!
//! Gauges of current holders and waiters are not kept up to date on every change: they are set
//! from the driver's shared snapshot when `/metrics` is scraped (see `admin`), which is both
//! cheaper and always consistent with what `/v1/locks` shows.

use std::time::Duration;

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use protocol::{ErrorCode, LockMode, Op};

use crate::core::{HoldEnd, Observation, SessionEnd, WaitEnd};

/// The `Content-Type` of what [`Metrics::encode`] returns: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Lock modes, in the order of their handles.
const MODES: [LockMode; 2] = [LockMode::Exclusive, LockMode::Shared];

/// Why a hold ended, in the order of the `releases` handles.
const HOLD_ENDS: [&str; 4] = ["release", "disconnect", "expiry", "forced"];

/// Why a wait was abandoned (other than timeout and cancel), in the order of their handles.
const ABANDONS: [&str; 3] = ["disconnect", "expiry", "forced"];

/// Lock waits and holds last from a millisecond to hours.
const LOCK_BUCKETS: [f64; 15] = [
    0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0,
];

/// A request takes tens of microseconds, or an fsync's worth of milliseconds for a write.
const REQUEST_BUCKETS: [f64; 14] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0,
];

/// A commit is one fsync: sub-millisecond on NVMe, seconds on a struggling disk.
const COMMIT_BUCKETS: [f64; 15] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0,
];

type Labels = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Every metric lockd exports, with pre-resolved handles. Shared (`Arc`) by the driver, the
/// connections, the accept loop and the admin API.
pub struct Metrics {
    registry: Registry,
    /// Open TCP connections of lock clients.
    pub(crate) connections: Gauge,
    pub(crate) connections_accepted: Counter,
    pub(crate) connections_refused: Counter,
    /// Bytes of replies serialized for lock clients and not yet taken by their sockets.
    pub(crate) unsent_reply_bytes: Gauge,
    /// Cluster mode: requests a follower holds until it hears from a leader.
    pub(crate) requests_awaiting_leader: Gauge,
    /// Cluster mode: this node's Raft term.
    pub(crate) raft_term: Gauge,
    /// Cluster mode: times this node's election timer ran out and it asked for votes.
    pub(crate) raft_campaigns: Counter,
    /// Cluster mode: one write and sync of the Raft log.
    pub(crate) raft_log_sync_seconds: Histogram,
    /// Watch events made by the table and not yet taken by their connections (each watch keeps
    /// at most `--max-watch-backlog` of them; see `seam.rs`).
    pub(crate) watch_backlog_events: Gauge,
    /// Watch events made for watchers (a `resync` counts as one).
    pub(crate) watch_events: Counter,
    /// Watch backlogs that passed `--max-watch-backlog` and were replaced by one `resync`.
    pub(crate) watch_resyncs: Counter,
    /// Open watches (set after every input to the table, in `apply.rs`; on a cluster node, the
    /// whole cluster's).
    pub(crate) watches: Gauge,
    /// Open connections to the admin HTTP API.
    pub(crate) admin_connections: Gauge,
    /// Admin HTTP connections closed at once for `--admin-max-connections`.
    pub(crate) admin_connections_refused: Counter,
    /// Open sessions: on a single server the connections the driver knows; on a cluster node
    /// the sessions whose client is connected to it.
    sessions: Gauge,
    pub(crate) expirations: Counter,
    /// Stalls of the backend loop (see `pause.rs`) long enough to be credited to the leases.
    pub(crate) server_pauses: Counter,
    lock_delays: Counter,
    permits_granted: Counter,
    group_grants: Counter,
    /// Multi-resource acquires waiting now (set after every input to the table, in `apply.rs`,
    /// like `watches`).
    pub(crate) group_waiters: Gauge,
    delayed_resources: Gauge,
    grants: [Counter; 2],
    releases: [[Counter; 4]; 2],
    timeouts: [Counter; 2],
    cancels: [Counter; 2],
    deadlocks: [Counter; 2],
    abandoned_waits: [[Counter; 3]; 2],
    wait_seconds: [Histogram; 2],
    hold_seconds: [Histogram; 2],
    /// One per op, indexed by [`Op::index`].
    request_seconds: [Histogram; Op::ALL.len()],
    errors: Vec<Counter>,
    store_commit_seconds: Histogram,
    store_commit_errors: Counter,
    holders: [Gauge; 2],
    waiters: [Gauge; 2],
    busy_resources: Gauge,
    oldest_hold_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    longest_wait_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Current lock state, for the gauges (see the module docs).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LockGauges {
    /// Holders by mode, exclusive first.
    pub holders: [u64; 2],
    /// Waiters by mode, exclusive first.
    pub waiters: [u64; 2],
    /// Resources with a holder or a waiter, or in lock-delay.
    pub busy_resources: u64,
    /// Resources in lock-delay.
    pub delayed_resources: u64,
    /// The longest current hold.
    pub oldest_hold: Duration,
    /// The longest current wait.
    pub longest_wait: Duration,
}

impl Metrics {
    /// Registers every family and resolves every handle.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("lockd");
        registry.register(
            "build",
            "The lockd version serving these metrics",
            Info::new([("version", env!("CARGO_PKG_VERSION"))]),
        );

        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open TCP connections of lock clients",
            connections.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Connections admitted since start",
            connections_accepted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "connections_refused",
            "Connections refused for --max-connections or --max-connections-per-ip",
            connections_refused.clone(),
        );
        let unsent_reply_bytes = Gauge::default();
        registry.register(
            "unsent_reply_bytes",
            "Bytes of replies serialized for lock clients and not yet taken by their sockets \
             (each connection stops reading past --max-unsent-bytes)",
            unsent_reply_bytes.clone(),
        );
        let requests_awaiting_leader = Gauge::default();
        registry.register(
            "requests_awaiting_leader",
            "Cluster mode: clients' requests this follower holds until it hears from a leader \
             (it knows none, or its leader missed two heartbeats), to name the new one",
            requests_awaiting_leader.clone(),
        );
        let raft_term = Gauge::default();
        registry.register(
            "raft_term",
            "Cluster mode: this node's Raft term, which each election raises; a term that rises \
             while the leader lives means elections that served no one",
            raft_term.clone(),
        );
        let raft_campaigns = Counter::default();
        registry.register(
            "raft_campaigns",
            "Cluster mode: times this node heard no leader for an election timeout and asked the \
             others whether they would vote for it (a pre-vote; an election follows if a \
             majority would)",
            raft_campaigns.clone(),
        );
        let watch_backlog_events = Gauge::default();
        registry.register(
            "watch_backlog_events",
            "Watch events made and not yet taken by their connections (each watch keeps at \
             most --max-watch-backlog before they are replaced by one resync)",
            watch_backlog_events.clone(),
        );
        let watch_events = Counter::default();
        registry.register(
            "watch_events",
            "Watch events made for watchers, a resync included",
            watch_events.clone(),
        );
        let watch_resyncs = Counter::default();
        registry.register(
            "watch_resyncs",
            "Watches whose backlog passed --max-watch-backlog and was replaced by one resync",
            watch_resyncs.clone(),
        );
        let watches = Gauge::default();
        registry.register("watches", "Open watches", watches.clone());
        let admin_connections = Gauge::default();
        registry.register(
            "admin_connections",
            "Open connections to the admin HTTP API",
            admin_connections.clone(),
        );
        let admin_connections_refused = Counter::default();
        registry.register(
            "admin_connections_refused",
            "Admin HTTP connections closed at once for --admin-max-connections",
            admin_connections_refused.clone(),
        );
        let sessions = Gauge::default();
        registry.register("sessions", "Open sessions", sessions.clone());
        let expirations = Counter::default();
        registry.register(
            "session_expirations",
            "Sessions ended because nothing was heard from them for their whole lease",
            expirations.clone(),
        );
        let server_pauses = Counter::default();
        registry.register(
            "server_pauses",
            "Times the server woke from a stall (SIGSTOP, a VM pause, a starved loop) and did \
             not count the stall as its clients' silence",
            server_pauses.clone(),
        );
        let lock_delays = Counter::default();
        registry.register(
            "lock_delays",
            "Holds with a lock-delay that ended other than by release, holding their resource \
             back from the next grant",
            lock_delays.clone(),
        );
        let permits_granted = Counter::default();
        registry.register(
            "permits_granted",
            "Semaphore permits granted (a grant of k permits adds k; each grant also counts in \
             grants, as shared)",
            permits_granted.clone(),
        );
        let group_grants = Counter::default();
        registry.register(
            "multi_acquire_grants",
            "Multi-resource acquires granted, at once or after waiting (each member also counts \
             in grants)",
            group_grants.clone(),
        );
        let group_waiters = Gauge::default();
        registry.register(
            "multi_acquire_waiters",
            "Multi-resource acquires waiting now (each waits in every one of its resources' \
             queues)",
            group_waiters.clone(),
        );
        let delayed_resources = Gauge::default();
        registry.register(
            "delayed_resources",
            "Resources in lock-delay now: granted to nobody until it ends",
            delayed_resources.clone(),
        );

        let grants = by_mode(
            &mut registry,
            "grants",
            "Locks granted, at once or after waiting",
        );
        let releases_family = Family::<Labels2, Counter>::default();
        registry.register(
            "releases",
            "Locks that stopped being held, by mode and reason: release (the holder released \
             it), disconnect, expiry (the holder's lease ran out), forced (an operator)",
            releases_family.clone(),
        );
        let releases = MODES.map(|mode| {
            HOLD_ENDS.map(|reason| {
                releases_family
                    .get_or_create(&[("mode", mode.as_str()), ("reason", reason)])
                    .clone()
            })
        });
        let timeouts = by_mode(
            &mut registry,
            "timeouts",
            "Acquires that failed with `timeout`: waits that ran out, and try-once acquires of \
             a busy lock",
        );
        let cancels = by_mode(
            &mut registry,
            "cancels",
            "Waiting acquires withdrawn by `cancel`",
        );
        let deadlocks = by_mode(
            &mut registry,
            "deadlocks",
            "Acquires refused with `deadlock` because waiting would close a cycle",
        );
        let abandoned_family = Family::<Labels2, Counter>::default();
        registry.register(
            "abandoned_waits",
            "Waiting acquires that left the queue because their session ended, by mode and \
             reason: disconnect, expiry, forced",
            abandoned_family.clone(),
        );
        let abandoned_waits = MODES.map(|mode| {
            ABANDONS.map(|reason| {
                abandoned_family
                    .get_or_create(&[("mode", mode.as_str()), ("reason", reason)])
                    .clone()
            })
        });

        let wait_family =
            Family::<Labels, Histogram>::new_with_constructor(lock_histogram as fn() -> Histogram);
        registry.register(
            "wait_seconds",
            "How long granted acquires waited in the queue (0 for an immediate grant)",
            wait_family.clone(),
        );
        let wait_seconds = MODES.map(|mode| {
            wait_family
                .get_or_create(&[("mode", mode.as_str())])
                .clone()
        });
        let hold_family =
            Family::<Labels, Histogram>::new_with_constructor(lock_histogram as fn() -> Histogram);
        registry.register(
            "hold_seconds",
            "How long locks were held, whatever ended the hold",
            hold_family.clone(),
        );
        let hold_seconds = MODES.map(|mode| {
            hold_family
                .get_or_create(&[("mode", mode.as_str())])
                .clone()
        });
        let request_family = Family::<Labels, Histogram>::new_with_constructor(
            request_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_seconds",
            "Time from reading a request to handing its reply (or `queued` event) to the \
             connection, by op; includes the commit of writes, excludes time waiting for a lock",
            request_family.clone(),
        );
        let request_seconds =
            Op::ALL.map(|op| request_family.get_or_create(&[("op", op.name())]).clone());
        let error_family = Family::<Labels, Counter>::default();
        registry.register(
            "errors",
            "Error replies sent, by error code",
            error_family.clone(),
        );
        let errors = ErrorCode::ALL
            .iter()
            .map(|code| {
                error_family
                    .get_or_create(&[("code", code.as_str())])
                    .clone()
            })
            .collect();

        let store_commit_seconds = Histogram::new(COMMIT_BUCKETS);
        registry.register(
            "store_commit_seconds",
            "Duration of one store commit (values and token reservations, fsync included)",
            store_commit_seconds.clone(),
        );
        let raft_log_sync_seconds = Histogram::new(COMMIT_BUCKETS);
        registry.register(
            "raft_log_sync_seconds",
            "Cluster mode: one write and fdatasync of the Raft log (a batch of appends, a vote, a truncate or a purge)",
            raft_log_sync_seconds.clone(),
        );
        let store_commit_errors = Counter::default();
        registry.register(
            "store_commit_errors",
            "Store commits that failed; their writes were answered with `internal`",
            store_commit_errors.clone(),
        );

        let holders = by_mode_gauge(&mut registry, "holders", "Locks held now");
        let waiters = by_mode_gauge(&mut registry, "waiters", "Acquires waiting in a queue now");
        let busy_resources = Gauge::default();
        registry.register(
            "busy_resources",
            "Resources with a holder or a waiter now",
            busy_resources.clone(),
        );
        let oldest_hold_seconds = Gauge::<f64, _>::default();
        registry.register(
            "oldest_hold_seconds",
            "How long the longest current hold has lasted (0 when nothing is held)",
            oldest_hold_seconds.clone(),
        );
        let longest_wait_seconds = Gauge::<f64, _>::default();
        registry.register(
            "longest_wait_seconds",
            "How long the longest current wait has lasted (0 when nobody waits)",
            longest_wait_seconds.clone(),
        );

        Metrics {
            registry,
            connections,
            connections_accepted,
            connections_refused,
            unsent_reply_bytes,
            requests_awaiting_leader,
            raft_term,
            raft_campaigns,
            raft_log_sync_seconds,
            watch_backlog_events,
            watch_events,
            watch_resyncs,
            watches,
            admin_connections,
            admin_connections_refused,
            sessions,
            expirations,
            server_pauses,
            lock_delays,
            permits_granted,
            group_grants,
            group_waiters,
            delayed_resources,
            grants,
            releases,
            timeouts,
            cancels,
            deadlocks,
            abandoned_waits,
            wait_seconds,
            hold_seconds,
            request_seconds,
            errors,
            store_commit_seconds,
            store_commit_errors,
            holders,
            waiters,
            busy_resources,
            oldest_hold_seconds,
            longest_wait_seconds,
        }
    }

    /// Counts and times one observation of the lock table.
    pub(crate) fn observe(&self, observation: Observation) {
        match observation {
            Observation::Granted {
                mode,
                permits,
                waited,
            } => {
                self.grants[mode_index(mode)].inc();
                if let Some(permits) = permits {
                    self.permits_granted.inc_by(u64::from(permits.get()));
                }
                self.wait_seconds[mode_index(mode)].observe(waited.as_secs_f64());
            }
            Observation::HoldEnded { mode, held, reason } => {
                let reason = match reason {
                    HoldEnd::Released => 0,
                    HoldEnd::SessionEnded(SessionEnd::Disconnected) => 1,
                    HoldEnd::SessionEnded(SessionEnd::Expired) => 2,
                    HoldEnd::SessionEnded(SessionEnd::Forced) => 3,
                };
                self.releases[mode_index(mode)][reason].inc();
                self.hold_seconds[mode_index(mode)].observe(held.as_secs_f64());
            }
            Observation::WaitEnded { mode, reason, .. } => {
                let mode = mode_index(mode);
                match reason {
                    WaitEnd::Timeout => self.timeouts[mode].inc(),
                    WaitEnd::Cancelled => self.cancels[mode].inc(),
                    WaitEnd::SessionEnded(SessionEnd::Disconnected) => {
                        self.abandoned_waits[mode][0].inc()
                    }
                    WaitEnd::SessionEnded(SessionEnd::Expired) => {
                        self.abandoned_waits[mode][1].inc()
                    }
                    WaitEnd::SessionEnded(SessionEnd::Forced) => {
                        self.abandoned_waits[mode][2].inc()
                    }
                };
            }
            Observation::GroupGranted => {
                self.group_grants.inc();
            }
            Observation::LockDelayed { .. } => {
                self.lock_delays.inc();
            }
        }
    }

    /// A try-once acquire found the lock busy (a wait that ran out is an [`Observation`]).
    pub(crate) fn try_once_failed(&self, mode: LockMode) {
        self.timeouts[mode_index(mode)].inc();
    }

    /// An acquire was refused because waiting would deadlock.
    pub(crate) fn deadlock(&self, mode: LockMode) {
        self.deadlocks[mode_index(mode)].inc();
    }

    /// An error reply is on its way to a client.
    pub(crate) fn error(&self, code: ErrorCode) {
        if let Some(index) = ErrorCode::ALL.iter().position(|known| *known == code) {
            self.errors[index].inc();
        }
    }

    /// `count` sessions are open (see the field's doc).
    pub(crate) fn set_sessions(&self, count: usize) {
        self.sessions.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// A request of op `op` took `took`.
    pub(crate) fn request_done(&self, op: Op, took: Duration) {
        self.request_seconds[op.index()].observe(took.as_secs_f64());
    }

    /// A store commit took `took` and succeeded or not.
    pub(crate) fn store_commit(&self, took: Duration, ok: bool) {
        self.store_commit_seconds.observe(took.as_secs_f64());
        if !ok {
            self.store_commit_errors.inc();
        }
    }

    /// Sets the gauges of current lock state.
    pub(crate) fn set_lock_gauges(&self, gauges: &LockGauges) {
        for mode in 0..2 {
            self.holders[mode].set(saturating_i64(gauges.holders[mode]));
            self.waiters[mode].set(saturating_i64(gauges.waiters[mode]));
        }
        self.busy_resources
            .set(saturating_i64(gauges.busy_resources));
        self.delayed_resources
            .set(saturating_i64(gauges.delayed_resources));
        self.oldest_hold_seconds
            .set(gauges.oldest_hold.as_secs_f64());
        self.longest_wait_seconds
            .set(gauges.longest_wait.as_secs_f64());
    }

    /// Everything, in the Prometheus text format ([`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The handle index of a mode.
pub(crate) fn mode_index(mode: LockMode) -> usize {
    match mode {
        LockMode::Exclusive => 0,
        LockMode::Shared => 1,
    }
}

fn by_mode(registry: &mut Registry, name: &str, help: &str) -> [Counter; 2] {
    let family = Family::<Labels, Counter>::default();
    registry.register(name, help, family.clone());
    MODES.map(|mode| family.get_or_create(&[("mode", mode.as_str())]).clone())
}

fn by_mode_gauge(registry: &mut Registry, name: &str, help: &str) -> [Gauge; 2] {
    let family = Family::<Labels, Gauge>::default();
    registry.register(name, help, family.clone());
    MODES.map(|mode| family.get_or_create(&[("mode", mode.as_str())]).clone())
}

fn lock_histogram() -> Histogram {
    Histogram::new(LOCK_BUCKETS)
}

fn request_histogram() -> Histogram {
    Histogram::new(REQUEST_BUCKETS)
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_family_is_exported_with_all_its_label_values_before_any_traffic() {
        let metrics = Metrics::new();
        let text = metrics.encode();
        for line in [
            "# TYPE lockd_grants_total counter",
            "lockd_grants_total{mode=\"exclusive\"} 0",
            "lockd_grants_total{mode=\"shared\"} 0",
            "lockd_releases_total{mode=\"shared\",reason=\"forced\"} 0",
            "lockd_errors_total{code=\"deadlock\"} 0",
            "lockd_request_seconds_count{op=\"acquire\"} 0",
            "lockd_store_commit_seconds_count 0",
            "lockd_build_info{version=\"",
            "lockd_holders{mode=\"shared\"} 0",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }

    #[test]
    fn observations_land_in_their_series() {
        let metrics = Metrics::new();
        metrics.observe(Observation::Granted {
            mode: LockMode::Shared,
            permits: None,
            waited: Duration::from_millis(20),
        });
        metrics.observe(Observation::Granted {
            mode: LockMode::Shared,
            permits: std::num::NonZeroU16::new(3),
            waited: Duration::ZERO,
        });
        metrics.observe(Observation::HoldEnded {
            mode: LockMode::Exclusive,
            held: Duration::from_secs(2),
            reason: HoldEnd::SessionEnded(SessionEnd::Expired),
        });
        metrics.observe(Observation::WaitEnded {
            mode: LockMode::Exclusive,
            waited: Duration::from_secs(1),
            reason: WaitEnd::Cancelled,
        });
        metrics.observe(Observation::GroupGranted);
        metrics.error(ErrorCode::NotHeld);
        metrics.request_done(Op::RemoveNode, Duration::from_micros(70));
        let text = metrics.encode();
        for line in [
            "lockd_grants_total{mode=\"shared\"} 2",
            "lockd_permits_granted_total 3",
            "lockd_multi_acquire_grants_total 1",
            "lockd_wait_seconds_bucket{mode=\"shared\",le=\"0.05\"} 2",
            "lockd_releases_total{mode=\"exclusive\",reason=\"expiry\"} 1",
            "lockd_hold_seconds_sum{mode=\"exclusive\"} 2.0",
            "lockd_cancels_total{mode=\"exclusive\"} 1",
            "lockd_errors_total{code=\"not_held\"} 1",
            "lockd_request_seconds_count{op=\"remove_node\"} 1",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
