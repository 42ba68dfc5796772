//! A picture of the whole table that can be written down and read back: what a Raft snapshot
//! of the replicated table holds.
//!
//! Instants cannot be serialized, so every time in an image is milliseconds after an `origin`
//! the caller chooses. A replicated table only ever sees instants of the form `origin + ms`
//! (the time carried in each log entry), so its images are exact; for any other table they are
//! rounded down to the millisecond.
//!
//! Only what cannot be derived is kept: each session's holds and waits, and the table's
//! deadlines, are rebuilt from the queues on the way back.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::{Duration, Instant};

use imbl::{HashMap as PersistentMap, OrdMap};
use protocol::cmd::Permits;
use protocol::{FenceToken, LockMode, RequestId, ResourceName, SessionId};
use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};

use super::elect::Campaigns;
use super::multi::Group;
use super::queue::{Holder, LockQueue, Ticket, Waiter};
use super::session::Session;
use super::table::{Deadline, LockTable, TableConfig};
use super::watch::Watches;

/// The table, ready for serde.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableImage {
    next_session: u64,
    next_token: u64,
    next_ticket: u64,
    token_limit: u64,
    sessions: Vec<SessionImage>,
    queues: Vec<QueueImage>,
    values: Vec<(ResourceName, String)>,
    /// Resources in lock-delay, with the time it ends.
    #[serde(default)]
    delayed: Vec<(ResourceName, u64)>,
    /// Open watches: (session, the `watch` request's id, resource).
    #[serde(default)]
    watches: Vec<(SessionId, RequestId, ResourceName)>,
    /// The values of campaigns that wait or hold: (session, resource, value).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    campaigns: Vec<(SessionId, ResourceName, String)>,
    /// Waiting multi-resource acquires; their waiters are in the queues with their tickets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    groups: Vec<GroupImage>,
}

/// A waiting multi-resource acquire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct GroupImage {
    ticket: u64,
    session: SessionId,
    request: RequestId,
    members: Vec<(ResourceName, LockMode)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionImage {
    id: SessionId,
    client: Option<String>,
    lease_ms: u64,
    last_seen_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct QueueImage {
    resource: ResourceName,
    /// A semaphore's limit; absent for a lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    limit: Option<u16>,
    holders: Vec<HolderImage>,
    waiters: Vec<WaiterImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct HolderImage {
    token: FenceToken,
    session: SessionId,
    mode: LockMode,
    since_ms: u64,
    #[serde(default)]
    lock_delay_ms: u32,
    /// A semaphore holder's permits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permits: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct WaiterImage {
    ticket: u64,
    session: SessionId,
    request: RequestId,
    mode: LockMode,
    since_ms: u64,
    deadline_ms: Option<u64>,
    #[serde(default)]
    lock_delay_ms: u32,
    /// A semaphore waiter's permits (the limit is the queue's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    permits: Option<u16>,
}

/// Why an image cannot become a table: it contradicts itself (a foreign or corrupt snapshot).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("inconsistent table image: {0}")]
pub struct ImageError(String);

impl LockTable {
    /// What an image of the table is made of, as it is now, in O(1): every map it holds is
    /// persistent (`imbl`), so this copies a few pointers, and the table and the snapshot share
    /// their nodes until one of them writes to one. A cluster takes this under its replica's
    /// lock and makes the image after releasing it, while entries keep applying to the table.
    pub fn snapshot(&self) -> TableSnapshot {
        TableSnapshot {
            next_session: self.next_session,
            next_token: self.next_token,
            next_ticket: self.next_ticket,
            token_limit: self.token_limit,
            sessions: self.sessions.clone(),
            queues: self.queues.clone(),
            values: self.values.clone(),
            delayed: self.delayed.clone(),
            watches: self.watches.clone(),
            groups: self.groups.clone(),
            campaigns: self.campaigns.clone(),
        }
    }

    /// The table as an image, with times as milliseconds after `origin`. Everything is listed
    /// in a fixed order, so equal tables give equal images.
    pub fn to_image(&self, origin: Instant) -> TableImage {
        self.snapshot().to_image(origin)
    }

    /// The table an image shows, with times read as milliseconds after `origin`.
    pub fn from_image(
        config: TableConfig,
        image: TableImage,
        origin: Instant,
    ) -> Result<LockTable, ImageError> {
        let at = |ms: u64| origin + Duration::from_millis(ms);
        let mut sessions: HashMap<SessionId, Session> = HashMap::new();
        let mut deadlines = BTreeSet::new();
        for image in image.sessions {
            let mut session = Session::new(at(image.last_seen_ms), Duration::ZERO);
            session.client = image.client;
            session.lease = Duration::from_millis(image.lease_ms);
            session.scheduled_expiry = session.expires_at();
            if config.expire_sessions {
                deadlines.insert((session.scheduled_expiry, Deadline::Expiry(image.id)));
            }
            sessions.insert(image.id, session);
        }
        // Each group's first member: where its timeout deadline is kept.
        let group_first: HashMap<u64, ResourceName> = image
            .groups
            .iter()
            .filter_map(|g| Some((g.ticket, g.members.first()?.0.clone())))
            .collect();
        let mut queues = BTreeMap::new();
        for queue_image in image.queues {
            let resource = queue_image.resource;
            let limit = queue_image.limit.and_then(NonZeroU16::new);
            let mut queue = limit.map_or_else(LockQueue::default, LockQueue::new_semaphore);
            // Permits only in a semaphore, and none past its limit.
            let permits = |count: Option<u16>| -> Result<Option<Permits>, ImageError> {
                match (count, limit) {
                    (None, None) => Ok(None),
                    (Some(count), Some(limit)) => Permits::new(count.into(), limit.get().into())
                        .map(Some)
                        .map_err(|err| ImageError(format!("{resource}: {err}"))),
                    _ => Err(ImageError(format!(
                        "{resource} mixes permits and locks or has no limit"
                    ))),
                }
            };
            for holder in queue_image.holders {
                let session = sessions.get_mut(&holder.session).ok_or_else(|| {
                    ImageError(format!(
                        "{resource} is held by unknown session {}",
                        holder.session
                    ))
                })?;
                session.held.insert(resource.clone());
                queue.add_holder(
                    holder.token,
                    Holder {
                        session: holder.session,
                        mode: holder.mode,
                        permits: permits(holder.permits)?.map(Permits::count),
                        lock_delay_ms: holder.lock_delay_ms,
                        since: at(holder.since_ms),
                    },
                );
            }
            for waiter in queue_image.waiters {
                let session = sessions.get_mut(&waiter.session).ok_or_else(|| {
                    ImageError(format!(
                        "{resource} is awaited by unknown session {}",
                        waiter.session
                    ))
                })?;
                let ticket = Ticket(waiter.ticket);
                session.waiting.insert(resource.clone(), ticket);
                session.waits.insert(waiter.request, resource.clone());
                let deadline = waiter.deadline_ms.map(at);
                let keeps_deadline = group_first
                    .get(&waiter.ticket)
                    .is_none_or(|first| *first == resource);
                if let (Some(deadline), true) = (deadline, keeps_deadline) {
                    deadlines.insert((deadline, Deadline::WaitTimeout(resource.clone(), ticket)));
                }
                queue.enqueue(
                    ticket,
                    Waiter {
                        session: waiter.session,
                        request: waiter.request,
                        mode: waiter.mode,
                        permits: permits(waiter.permits)?,
                        lock_delay_ms: waiter.lock_delay_ms,
                        since: at(waiter.since_ms),
                        deadline,
                        group: group_first.contains_key(&waiter.ticket),
                    },
                );
            }
            queues.insert(resource, queue);
        }
        let mut groups = HashMap::new();
        for image in image.groups {
            let ticket = Ticket(image.ticket);
            let Some((first, _)) = image.members.first() else {
                return Err(ImageError(format!("group {} has no members", image.ticket)));
            };
            let session = sessions.get_mut(&image.session).ok_or_else(|| {
                ImageError(format!(
                    "group {} of unknown session {}",
                    image.ticket, image.session
                ))
            })?;
            for (resource, _) in &image.members {
                if session.waiting.get(resource) != Some(&ticket) {
                    return Err(ImageError(format!(
                        "group {} has no waiter in {resource}",
                        image.ticket
                    )));
                }
            }
            // A group's `cancel` entry and timeout are kept under its first member only.
            session.waits.insert(image.request, first.clone());
            groups.insert(
                ticket,
                Group {
                    session: image.session,
                    request: image.request,
                    members: image.members,
                },
            );
        }
        let mut delayed = BTreeMap::new();
        for (resource, until_ms) in image.delayed {
            deadlines.insert((at(until_ms), Deadline::LockDelay(resource.clone())));
            delayed.insert(resource, at(until_ms));
        }
        let values = image
            .values
            .into_iter()
            .map(|(resource, value)| (resource, Arc::<str>::from(value)))
            .collect();
        let mut table = LockTable::restore(config, values, image.token_limit);
        table.sessions = sessions.into_iter().collect();
        table.queues = queues.into_iter().collect();
        table.deadlines = deadlines;
        table.delayed = delayed.into_iter().collect();
        table.groups = groups.into_iter().collect();
        table.effects = VecDeque::new();
        table.next_session = image.next_session;
        table.next_token = image.next_token;
        table.next_ticket = image.next_ticket;
        for (session, watch, resource) in image.watches {
            if !table.sessions.contains_key(&session) {
                return Err(ImageError(format!(
                    "watch {watch} of session {session}, which is not in the image"
                )));
            }
            table.restore_watch(session, watch, resource);
        }
        for (session, resource, value) in image.campaigns {
            let campaigns = table.sessions.get(&session).is_some_and(|state| {
                state.held.contains(&resource) || state.waiting.contains_key(&resource)
            });
            if !campaigns {
                return Err(ImageError(format!(
                    "a campaign of session {session} for {resource}, which it neither holds nor \
                     awaits"
                )));
            }
            table.campaigns.insert(session, resource, Arc::from(value));
        }
        Ok(table)
    }
}

/// A table's state at one instant, from [`LockTable::snapshot`]: everything an image holds,
/// sharing its maps' nodes with the table. Making its image reads only the snapshot, so the
/// table may change meanwhile.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    next_session: u64,
    next_token: u64,
    next_ticket: u64,
    token_limit: u64,
    sessions: PersistentMap<SessionId, Session>,
    queues: OrdMap<ResourceName, LockQueue>,
    values: OrdMap<ResourceName, Arc<str>>,
    delayed: OrdMap<ResourceName, Instant>,
    watches: Watches,
    groups: PersistentMap<Ticket, Group>,
    campaigns: Campaigns,
}

impl TableSnapshot {
    /// The snapshot as an image, with times as milliseconds after `origin`.
    pub fn to_image(&self, origin: Instant) -> TableImage {
        TableImage {
            next_session: self.next_session,
            next_token: self.next_token,
            next_ticket: self.next_ticket,
            token_limit: self.token_limit,
            sessions: self.session_images(origin),
            queues: self.queue_images(origin).collect(),
            values: self.value_images().collect(),
            delayed: self.delayed_images(origin).collect(),
            watches: self.watches.all(),
            groups: self.group_images(),
            campaigns: self.campaigns.all(),
        }
    }

    /// The snapshot's image as a value to serialize, written as it is serialized: the same
    /// document as [`to_image`](Self::to_image)'s image gives (and reads back as one), without
    /// a copy of the table's queues, the bulk of it, in memory.
    pub fn image(&self, origin: Instant) -> ImageWriter<'_> {
        ImageWriter {
            snapshot: self,
            origin,
        }
    }

    /// Sessions in id order. Collected, because the session map has no order.
    fn session_images(&self, origin: Instant) -> Vec<SessionImage> {
        let mut sessions: Vec<SessionImage> = self
            .sessions
            .iter()
            .map(|(id, session)| SessionImage {
                id: *id,
                client: session.client.clone(),
                lease_ms: u64::try_from(session.lease.as_millis()).unwrap_or(u64::MAX),
                last_seen_ms: millis_after(origin, session.last_seen),
            })
            .collect();
        sessions.sort_by_key(|session| session.id);
        sessions
    }

    /// Queues in name order, the map's own.
    fn queue_images(&self, origin: Instant) -> impl Iterator<Item = QueueImage> + '_ {
        let ms = move |at: Instant| millis_after(origin, at);
        self.queues.iter().map(move |(resource, queue)| QueueImage {
            resource: resource.clone(),
            limit: queue.limit().map(NonZeroU16::get),
            holders: queue
                .holders()
                .map(|(token, holder)| HolderImage {
                    token,
                    session: holder.session,
                    mode: holder.mode,
                    since_ms: ms(holder.since),
                    lock_delay_ms: holder.lock_delay_ms,
                    permits: holder.permits.map(NonZeroU16::get),
                })
                .collect(),
            waiters: queue
                .queued()
                .map(|(ticket, waiter)| WaiterImage {
                    ticket: ticket.0,
                    session: waiter.session,
                    request: waiter.request,
                    mode: waiter.mode,
                    since_ms: ms(waiter.since),
                    deadline_ms: waiter.deadline.map(ms),
                    lock_delay_ms: waiter.lock_delay_ms,
                    permits: waiter.permits.map(|permits| permits.count().get()),
                })
                .collect(),
        })
    }

    /// Values in name order, the map's own.
    fn value_images(&self) -> impl Iterator<Item = (ResourceName, String)> + '_ {
        self.values
            .iter()
            .map(|(resource, value)| (resource.clone(), value.to_string()))
    }

    /// Lock-delays in name order, the map's own.
    fn delayed_images(&self, origin: Instant) -> impl Iterator<Item = (ResourceName, u64)> + '_ {
        self.delayed
            .iter()
            .map(move |(resource, until)| (resource.clone(), millis_after(origin, *until)))
    }

    /// Groups in ticket order.
    fn group_images(&self) -> Vec<GroupImage> {
        let mut groups: Vec<GroupImage> = self
            .groups
            .iter()
            .map(|(ticket, group)| GroupImage {
                ticket: ticket.0,
                session: group.session,
                request: group.request,
                members: group.members.clone(),
            })
            .collect();
        groups.sort_by_key(|group| group.ticket);
        groups
    }
}

/// A [`TableSnapshot`]'s image, serialized straight from the snapshot; see
/// [`TableSnapshot::image`].
#[derive(Debug)]
pub struct ImageWriter<'a> {
    snapshot: &'a TableSnapshot,
    origin: Instant,
}

impl Serialize for ImageWriter<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The fields of `TableImage`, in its order, with its rules for the optional ones.
        let snapshot = self.snapshot;
        let origin = self.origin;
        let watches = snapshot.watches.all();
        let campaigns = snapshot.campaigns.all();
        let groups = snapshot.group_images();
        let fields = 9 + usize::from(!campaigns.is_empty()) + usize::from(!groups.is_empty());
        let mut image = serializer.serialize_struct("TableImage", fields)?;
        image.serialize_field("next_session", &snapshot.next_session)?;
        image.serialize_field("next_token", &snapshot.next_token)?;
        image.serialize_field("next_ticket", &snapshot.next_ticket)?;
        image.serialize_field("token_limit", &snapshot.token_limit)?;
        image.serialize_field("sessions", &snapshot.session_images(origin))?;
        image.serialize_field("queues", &SeqWith(|| snapshot.queue_images(origin)))?;
        image.serialize_field("values", &SeqWith(|| snapshot.value_images()))?;
        image.serialize_field("delayed", &SeqWith(|| snapshot.delayed_images(origin)))?;
        image.serialize_field("watches", &watches)?;
        if !campaigns.is_empty() {
            image.serialize_field("campaigns", &campaigns)?;
        }
        if !groups.is_empty() {
            image.serialize_field("groups", &groups)?;
        }
        image.end()
    }
}

/// Serializes the items its function yields as a sequence, without collecting them.
struct SeqWith<F>(F);

impl<F, I> Serialize for SeqWith<F>
where
    F: Fn() -> I,
    I: IntoIterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

fn millis_after(origin: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(origin).as_millis()).unwrap_or(u64::MAX)
}
