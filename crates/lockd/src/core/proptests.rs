//! Property tests of the lock table: random command sequences on a fake clock, with the
//! invariants checked after every step.
//!
//! - never an exclusive holder next to any other holder;
//! - a semaphore's holders never hold more permits than its limit, only permits are held or
//!   awaited in a semaphore and none in a lock, and its count of permits in use is exact;
//! - grants per resource in arrival order (a waiter is never granted before one queued ahead of
//!   it in a conflicting mode);
//! - tokens strictly increasing over every grant;
//! - no acquire granted at once while its resource is in lock-delay (holders lost with a
//!   lock-delay are among the random inputs), and only delayed resources listed with nobody in
//!   them;
//! - every holder and waiter belongs to a live session, and nothing is held or waited for by a
//!   closed or expired session;
//! - each session's own index of what it holds and waits for matches the queues exactly;
//! - the incremental deadlock search agrees with a straightforward one, for locks and permits;
//! - a multi-resource acquire is all or nothing: granted at once only into empty queues, it
//!   otherwise waits in every member's queue holding none of them, and its grant (one token per
//!   member) comes when it is first in line in every one of its queues;
//! - a waiting group at the head of a queue is blocked in at least one of its queues;
//! - once every session has closed and every lock-delay has passed, nothing is held, awaited
//!   or kept: every hold was given back.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU16;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use protocol::cmd::Permits;
use protocol::{FenceToken, LockMode, RequestId, ResourceName, SessionId};

use super::queue::Want;
use super::*;

#[derive(Debug, Clone)]
enum Step {
    Acquire {
        session: usize,
        resource: usize,
        shared: bool,
        /// Permits and limit (2 or 3) for a semaphore acquire: any resource may be asked
        /// either way, so limit mismatches are among the inputs.
        permits: Option<(u64, u64)>,
        timeout_ms: Option<u64>,
        lock_delay_ms: Option<u64>,
        /// An exclusive lock asked for as a campaign, with a value.
        campaign: bool,
    },
    /// A multi-resource acquire of distinct resources, each exclusive (`false`) or shared.
    AcquireMany {
        session: usize,
        members: Vec<(usize, bool)>,
        timeout_ms: Option<u64>,
    },
    Release {
        session: usize,
        resource: usize,
    },
    Cancel {
        session: usize,
        request: u64,
    },
    Close {
        session: usize,
    },
    Touch {
        session: usize,
    },
    Advance {
        ms: u64,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let session = 0..6usize;
    let resource = 0..3usize;
    prop_oneof![
        4 => (session.clone(), resource.clone(), any::<bool>(), prop::option::of(0..3_000u64),
              prop::option::of(0..2_000u64),
              prop::option::of((1..=3u64, 2..=3u64).prop_map(|(p, limit)| (p.min(limit), limit))),
              any::<bool>())
            .prop_map(|(session, resource, shared, timeout_ms, lock_delay_ms, permits, campaign)| Step::Acquire {
                session, resource, shared, permits, timeout_ms, lock_delay_ms, campaign
            }),
        2 => (session.clone(), prop::collection::btree_map(0..3usize, any::<bool>(), 1..=3),
              any::<bool>(), prop::option::of(0..3_000u64))
            .prop_map(|(session, members, reversed, timeout_ms)| {
                let mut members: Vec<_> = members.into_iter().collect();
                if reversed {
                    members.reverse();
                }
                Step::AcquireMany { session, members, timeout_ms }
            }),
        3 => (session.clone(), resource).prop_map(|(session, resource)| Step::Release { session, resource }),
        1 => (session.clone(), 0..40u64).prop_map(|(session, request)| Step::Cancel { session, request }),
        1 => session.clone().prop_map(|session| Step::Close { session }),
        2 => session.prop_map(|session| Step::Touch { session }),
        2 => (1..6_000u64).prop_map(|ms| Step::Advance { ms }),
    ]
}

/// What the test remembers about each session slot.
#[derive(Debug, Default)]
struct Slot {
    id: Option<SessionId>,
    /// Tokens held, by resource.
    held: HashMap<usize, FenceToken>,
}

fn name(resource: usize) -> ResourceName {
    ResourceName::new(&format!("r{resource}")).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn random_command_sequences_keep_every_invariant(steps in prop::collection::vec(step(), 1..120)) {
        let mut table = LockTable::new(TableConfig::default());
        let mut now = Instant::now();
        let mut slots: Vec<Slot> = (0..6).map(|_| Slot::default()).collect();
        let mut next_request = 1u64;
        let mut last_token = 0u64;
        // Waiting acquires: who asked, and each resource's queue in arrival order, to check
        // that grants come strictly in that order.
        // A group's request is in the queue of each of its resources.
        let mut arrival: HashMap<RequestId, (usize, Vec<usize>)> = HashMap::new();
        let mut queues: HashMap<usize, Vec<RequestId>> = HashMap::new();

        for step in steps {
            match step {
                Step::Acquire { session, resource, shared, permits, timeout_ms, lock_delay_ms, campaign } => {
                    let id = *slots[session].id.get_or_insert_with(|| table.open_session(now));
                    let request = RequestId(next_request);
                    next_request += 1;
                    let mode = if shared { LockMode::Shared } else { LockMode::Exclusive };
                    let claim = match permits {
                        Some((permits, limit)) => Claim::Permits(Permits::new(permits, limit).unwrap()),
                        None => Claim::Lock(mode),
                    };
                    let delayed = table.status(now, Some(&name(resource)))[0].delayed_ms.is_some();
                    let (timeout, lock_delay) = (timeout_ms.map(Duration::from_millis),
                        lock_delay_ms.map(Duration::from_millis));
                    let acquired = if campaign && claim == Claim::Lock(LockMode::Exclusive) {
                        let value = std::sync::Arc::from(format!("{id}"));
                        table.handle_campaign(now, id, request, name(resource), value, timeout, lock_delay)
                    } else {
                        table.handle_acquire(now, id, request, name(resource), claim, timeout, lock_delay)
                    };
                    match acquired {
                        Ok(Acquired::Granted(token)) => {
                            prop_assert!(!delayed, "r{} granted during its lock-delay", resource);
                            let waiting = queues.get(&resource).map_or(0, Vec::len);
                            prop_assert_eq!(waiting, 0, "granted r{} past {} waiter(s)", resource, waiting);
                            prop_assert!(token.0 > last_token);
                            last_token = token.0;
                            slots[session].held.insert(resource, token);
                        }
                        Ok(Acquired::Queued { position }) => {
                            arrival.insert(request, (session, vec![resource]));
                            let queue = queues.entry(resource).or_default();
                            queue.push(request);
                            prop_assert_eq!(position, queue.len() as u64);
                        }
                        Ok(Acquired::AwaitingTokens) => {
                            prop_assert!(false, "a table with unlimited tokens awaited tokens");
                        }
                        Err(_) => {}
                    }
                }
                Step::AcquireMany { session, members, timeout_ms } => {
                    let id = *slots[session].id.get_or_insert_with(|| table.open_session(now));
                    let request = RequestId(next_request);
                    next_request += 1;
                    let asked: Vec<_> = members.iter().map(|&(r, shared)| {
                        (name(r), if shared { LockMode::Shared } else { LockMode::Exclusive })
                    }).collect();
                    match table.handle_acquire_many(now, id, request, asked,
                        timeout_ms.map(Duration::from_millis), None) {
                        Ok(AcquiredMany::Granted(tokens)) => {
                            prop_assert_eq!(tokens.len(), members.len());
                            for (&(resource, _), token) in members.iter().zip(tokens) {
                                let waiting = queues.get(&resource).map_or(0, Vec::len);
                                prop_assert_eq!(waiting, 0, "group granted r{} past a waiter", resource);
                                prop_assert!(token.0 > last_token);
                                last_token = token.0;
                                slots[session].held.insert(resource, token);
                            }
                        }
                        Ok(AcquiredMany::Queued { position }) => {
                            let resources: Vec<usize> = members.iter().map(|(r, _)| *r).collect();
                            let mut furthest = 0;
                            for resource in &resources {
                                // Holding nothing while it waits.
                                prop_assert!(!slots[session].held.contains_key(resource));
                                let queue = queues.entry(*resource).or_default();
                                queue.push(request);
                                furthest = furthest.max(queue.len() as u64);
                            }
                            prop_assert_eq!(position, furthest);
                            arrival.insert(request, (session, resources));
                        }
                        Ok(AcquiredMany::AwaitingTokens) => {
                            prop_assert!(false, "a table with unlimited tokens awaited tokens");
                        }
                        Err(_) => {}
                    }
                }
                Step::Release { session, resource } => {
                    if let (Some(id), Some(token)) = (slots[session].id, slots[session].held.remove(&resource)) {
                        prop_assert_eq!(table.handle_release(now, id, &name(resource), token), Ok(()));
                    }
                }
                Step::Cancel { session, request } => {
                    if let Some(id) = slots[session].id {
                        let _ = table.handle_cancel(now, id, RequestId(request));
                    }
                }
                Step::Close { session } => {
                    if let Some(id) = slots[session].id.take() {
                        table.handle_session_closed(now, id);
                        slots[session].held.clear();
                        let gone: Vec<_> = arrival.iter().filter(|(_, (s, _))| *s == session).map(|(r, _)| *r).collect();
                        forget(&mut queues, &gone);
                        arrival.retain(|_, (waiting, _)| *waiting != session);
                    }
                }
                Step::Touch { session } => {
                    if let Some(id) = slots[session].id {
                        table.touch(now, id);
                    }
                }
                Step::Advance { ms } => {
                    now += Duration::from_millis(ms);
                    table.handle_timeout(now);
                }
            }
            while let Some(effect) = table.poll_effect() {
                match effect {
                    Effect::Granted { session, request, token, .. } => {
                        prop_assert!(token.0 > last_token, "token {} after {}", token.0, last_token);
                        last_token = token.0;
                        let (slot, resources) = arrival.remove(&request).expect("granted a queued request");
                        prop_assert_eq!(resources.len(), 1);
                        let resource = resources[0];
                        let queue = queues.entry(resource).or_default();
                        prop_assert_eq!(queue.first(), Some(&request), "granted out of arrival order");
                        queue.remove(0);
                        prop_assert_eq!(slots[slot].id, Some(session));
                        slots[slot].held.insert(resource, token);
                    }
                    Effect::GroupGranted { session, request, tokens } => {
                        let (slot, resources) = arrival.remove(&request).expect("granted a queued group");
                        prop_assert_eq!(slots[slot].id, Some(session));
                        // All at once: a token for every member, each first in its line.
                        let granted: Vec<String> = tokens.iter().map(|(r, _, _)| r.to_string()).collect();
                        let asked: Vec<String> = resources.iter().map(|r| name(*r).to_string()).collect();
                        prop_assert_eq!(granted, asked);
                        for (resource, (_, token, _)) in resources.into_iter().zip(tokens) {
                            prop_assert!(token.0 > last_token, "token {} after {}", token.0, last_token);
                            last_token = token.0;
                            let queue = queues.entry(resource).or_default();
                            prop_assert_eq!(queue.first(), Some(&request), "group granted out of arrival order in r{}", resource);
                            queue.remove(0);
                            slots[slot].held.insert(resource, token);
                        }
                    }
                    Effect::WaitFailed { request, .. } => {
                        arrival.remove(&request);
                        forget(&mut queues, &[request]);
                    }
                    Effect::SessionExpired { session } => {
                        let slot = slots.iter().position(|slot| slot.id == Some(session))
                            .expect("an expired session was open");
                        slots[slot].id = None;
                        slots[slot].held.clear();
                        let gone: Vec<_> = arrival.iter().filter(|(_, (s, _))| *s == slot).map(|(r, _)| *r).collect();
                        forget(&mut queues, &gone);
                        arrival.retain(|_, (waiting, _)| *waiting != slot);
                    }
                    // These sequences open no watch.
                    Effect::Watch { .. } => prop_assert!(false, "a watch event without a watch"),
                }
            }
            check_invariants(&table, now, &slots)?;
        }
        // Every guard is given back: close every session, let every lock-delay pass, and
        // nothing is left.
        for slot in &mut slots {
            if let Some(id) = slot.id.take() {
                table.handle_session_closed(now, id);
            }
        }
        now += Duration::from_secs(3_600);
        table.handle_timeout(now);
        while table.poll_effect().is_some() {}
        prop_assert_eq!(table.status(now, None), vec![]);
        prop_assert!(table.queues.is_empty() && table.sessions.is_empty());
        prop_assert_eq!(table.group_waiter_count(), 0);
    }
}

/// Takes requests that left their queues (timed out, cancelled, closed) out of the model.
fn forget(queues: &mut HashMap<usize, Vec<RequestId>>, requests: &[RequestId]) {
    for queue in queues.values_mut() {
        queue.retain(|request| !requests.contains(request));
    }
}

fn check_invariants(table: &LockTable, now: Instant, slots: &[Slot]) -> Result<(), TestCaseError> {
    let live: Vec<SessionId> = slots.iter().filter_map(|slot| slot.id).collect();
    let entries = table.status(now, None);
    // Whether `entry`'s first waiter is kept waiting by this queue alone.
    let held_permits = |entry: &protocol::cmd::ResourceStatus| -> u32 {
        entry
            .holders
            .iter()
            .filter_map(|h| h.permits)
            .map(u32::from)
            .sum()
    };
    let blocked_here = |entry: &protocol::cmd::ResourceStatus| {
        let Some(first) = entry.waiters.first() else {
            return true;
        };
        let exclusive = entry.holders.iter().any(|h| h.mode == LockMode::Exclusive);
        let held_permits = held_permits(entry);
        entry.delayed_ms.is_some()
            || match (first.permits, entry.limit, first.mode) {
                (Some(permits), Some(limit), _) => {
                    held_permits + u32::from(permits) > u32::from(limit)
                }
                (_, _, LockMode::Exclusive) => !entry.holders.is_empty(),
                (_, _, LockMode::Shared) => exclusive,
            }
    };
    for entry in entries.iter().cloned() {
        let exclusive = entry
            .holders
            .iter()
            .filter(|h| h.mode == LockMode::Exclusive)
            .count();
        prop_assert!(exclusive == 0 || entry.holders.len() == 1, "{entry:?}");
        let held_permits = held_permits(&entry);
        match entry.limit {
            Some(limit) => {
                prop_assert!(
                    held_permits <= u32::from(limit),
                    "over the limit: {entry:?}"
                );
                prop_assert_eq!(entry.permits_used, Some(held_permits));
                prop_assert!(
                    entry.holders.iter().all(|h| h.permits.is_some()),
                    "{entry:?}"
                );
                prop_assert!(
                    entry.waiters.iter().all(|w| w.permits.is_some()),
                    "{entry:?}"
                );
            }
            None => {
                prop_assert_eq!(entry.permits_used, None);
                prop_assert!(
                    entry.holders.iter().all(|h| h.permits.is_none()),
                    "{entry:?}"
                );
                prop_assert!(
                    entry.waiters.iter().all(|w| w.permits.is_none()),
                    "{entry:?}"
                );
            }
        }
        for holder in &entry.holders {
            prop_assert!(
                live.contains(&holder.session),
                "holder of a dead session: {entry:?}"
            );
        }
        for waiter in &entry.waiters {
            prop_assert!(
                live.contains(&waiter.session),
                "waiter of a dead session: {entry:?}"
            );
        }
        // FIFO: the first waiter could not be granted now (else it would have been), unless
        // the resource is in lock-delay. A group member at the head may be grantable here if
        // its group is blocked in another of its queues (not first there, or blocked there).
        if let Some(first) = entry.waiters.first() {
            let blocked = match &first.group {
                None => blocked_here(&entry),
                Some(group) => group.iter().any(|member| {
                    entries
                        .iter()
                        .find(|e| &e.resource == member)
                        .is_none_or(|other| {
                            other
                                .waiters
                                .first()
                                .is_none_or(|w| w.session != first.session)
                                || blocked_here(other)
                        })
                }),
            };
            prop_assert!(blocked, "a grantable waiter was left waiting: {entry:?}");
        }
        prop_assert!(
            !entry.holders.is_empty() || !entry.waiters.is_empty() || entry.delayed_ms.is_some(),
            "idle entry kept"
        );
    }
    check_session_index(table)?;
    check_deadlock_search(table, slots)?;
    // What the test believes is held is exactly what the table says is held.
    for slot in slots {
        let Some(id) = slot.id else { continue };
        for (resource, token) in &slot.held {
            prop_assert!(
                table.validate(&name(*resource), *token),
                "{id:?} lost r{resource}"
            );
        }
    }
    Ok(())
}

/// The incremental deadlock search finds a cycle exactly when the straightforward walk of
/// every waiter's every blocker does, for every request any live session could make next.
fn check_deadlock_search(table: &LockTable, slots: &[Slot]) -> Result<(), TestCaseError> {
    for id in slots.iter().filter_map(|slot| slot.id) {
        let session = &table.sessions[&id];
        for resource in (0..3).map(name) {
            if session.held.contains(&resource) || session.waiting.contains_key(&resource) {
                continue;
            }
            // Only what the resource would admit: a lock's modes, or a semaphore's permits.
            let wants: Vec<Want> = match table.queues.get(&resource).and_then(|q| q.limit()) {
                None => [LockMode::Exclusive, LockMode::Shared]
                    .map(|mode| Want {
                        mode,
                        permits: None,
                    })
                    .to_vec(),
                Some(limit) => (1..=limit.get())
                    .map(|permits| Want {
                        mode: LockMode::Shared,
                        permits: NonZeroU16::new(permits),
                    })
                    .collect(),
            };
            for want in wants.iter().copied() {
                let found = table.find_wait_cycle(id, &resource, want);
                let expected = table.reference_wait_cycle_exists(id, &[(&resource, want)]);
                prop_assert_eq!(
                    found.is_some(),
                    expected,
                    "{:?} asking for {} {:?}: {:?}",
                    id,
                    resource,
                    want,
                    found
                );
            }
        }
        // A group of two free-to-ask resources, in every pair of modes.
        let askable: Vec<ResourceName> = (0..3)
            .map(name)
            .filter(|r| !session.held.contains(r) && !session.waiting.contains_key(r))
            .filter(|r| table.queues.get(r).and_then(|q| q.limit()).is_none())
            .collect();
        for pair in askable.windows(2) {
            for modes in [
                (LockMode::Exclusive, LockMode::Shared),
                (LockMode::Shared, LockMode::Shared),
            ] {
                let starts = [
                    (
                        &pair[0],
                        Want {
                            mode: modes.0,
                            permits: None,
                        },
                    ),
                    (
                        &pair[1],
                        Want {
                            mode: modes.1,
                            permits: None,
                        },
                    ),
                ];
                let found = table.find_wait_cycle_from(id, &starts);
                let expected = table.reference_wait_cycle_exists(id, &starts);
                prop_assert_eq!(
                    found.is_some(),
                    expected,
                    "{:?} asking for {:?}: {:?}",
                    id,
                    starts,
                    found
                );
            }
        }
    }
    Ok(())
}

/// The sessions' index (`held`, `waiting`, `waits`) against the queues, which hold the truth:
/// every holder and waiter is indexed by its session, and nothing else is.
fn check_session_index(table: &LockTable) -> Result<(), TestCaseError> {
    let mut held_in_queues = HashSet::new();
    let mut waiting_in_queues = HashSet::new();
    for (resource, queue) in &table.queues {
        for (_, holder) in queue.holders() {
            held_in_queues.insert((holder.session, resource.clone()));
        }
        for (ticket, waiter) in queue.queued() {
            waiting_in_queues.insert((waiter.session, resource.clone(), ticket, waiter.request));
        }
    }
    let mut held_in_sessions = HashSet::new();
    let mut waiting_in_sessions = HashSet::new();
    let mut groups_seen = 0;
    for (id, session) in &table.sessions {
        for resource in &session.held {
            prop_assert!(
                !session.waiting.contains_key(resource),
                "{id:?} holds and waits for {resource}"
            );
            held_in_sessions.insert((*id, resource.clone()));
        }
        // One wait per request: a group waits for several resources under one ticket.
        let tickets: HashSet<_> = session.waiting.values().collect();
        prop_assert_eq!(session.waits.len(), tickets.len());
        for (request, resource) in &session.waits {
            let ticket = session.waiting.get(resource);
            prop_assert!(
                ticket.is_some(),
                "{id:?} waits as {request:?} for {resource}, not indexed"
            );
            let Some(ticket) = ticket else { continue };
            match table.groups.get(ticket) {
                Some(group) => {
                    groups_seen += 1;
                    prop_assert_eq!(group.session, *id);
                    prop_assert_eq!(group.request, *request);
                    prop_assert_eq!(&group.members[0].0, resource);
                    for (member, _) in &group.members {
                        prop_assert_eq!(session.waiting.get(member), Some(ticket));
                        waiting_in_sessions.insert((*id, member.clone(), *ticket, *request));
                    }
                }
                None => {
                    waiting_in_sessions.insert((*id, resource.clone(), *ticket, *request));
                }
            }
        }
    }
    prop_assert_eq!(
        groups_seen,
        table.groups.len(),
        "a group no session waits with"
    );
    // A campaign's value lives exactly as long as its session's hold or wait, and is the one
    // that session campaigned with.
    for (session, resource, value) in table.campaigns.all() {
        let busy = held_in_sessions.contains(&(session, resource.clone()))
            || table
                .sessions
                .get(&session)
                .is_some_and(|state| state.waiting.contains_key(&resource));
        prop_assert!(
            busy,
            "a campaign of {session:?} for {resource} outlived its hold or wait"
        );
        prop_assert_eq!(value, session.to_string());
    }
    prop_assert_eq!(held_in_queues, held_in_sessions);
    prop_assert_eq!(waiting_in_queues, waiting_in_sessions);
    Ok(())
}
