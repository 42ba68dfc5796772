//! Requests: the `Request` envelope, the `Command` enum, and parsing a line into them.
//!
//! Parsing is strict about what it needs and lenient about what it does not: unknown fields are
//! ignored (so newer clients can talk to older servers), `null` counts as absent, and every
//! problem becomes a [`RequestError`] with the code and the request id when it could be read.

mod cluster;
mod lock;
mod session;
mod value;
mod watch;

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

pub use self::cluster::{AddNode, ClusterMember, ClusterStatusOk, RemoveNode};
pub use self::lock::{
    Acquire, AcquireMany, AcquireManyOk, AcquireOk, Cancel, HolderStatus, Permits, Release,
    ResourceStatus, Status, StatusOk, Validate, ValidateOk, WaiterStatus, DEFAULT_STATUS_LIMIT,
    MAX_PERMIT_LIMIT,
};
pub use self::lock::{Member, MemberToken};
pub use self::session::{Hello, HelloOk};
pub use self::value::{Read, ReadOk, Write, DEFAULT_MAX_VALUE_BYTES};
pub use self::watch::{
    Unwatch, Watch, WatchChange, WatchEvent, WatchHolder, WatchState,
    DEFAULT_MAX_WATCHES_PER_SESSION,
};
use crate::error::{ErrorBody, ErrorCode};
use crate::ids::{FenceToken, LockMode, RequestId, SessionId};
use crate::name::ResourceName;

/// One request frame: `{"id": <u64>, "op": "<op>", ...fields}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    /// The client's id for this request, echoed in the reply.
    pub id: RequestId,
    /// What to do.
    #[serde(flatten)]
    pub command: Command,
}

/// The operations of protocol v1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Command {
    /// Name the client and set the lease.
    Hello(Hello),
    /// Take a lock.
    Acquire(Acquire),
    /// Take several locks at once: an `acquire` with `resources`.
    #[serde(rename = "acquire")]
    AcquireMany(AcquireMany),
    /// Give a lock back.
    Release(Release),
    /// Read the value under a lock.
    Read(Read),
    /// Write the value under the exclusive lock.
    Write(Write),
    /// Withdraw a waiting acquire.
    Cancel(Cancel),
    /// Check a fencing token against the current holders.
    Validate(Validate),
    /// Keep the session alive.
    Ping,
    /// List holders and waiters.
    Status(Status),
    /// Describe the cluster (cluster mode).
    ClusterStatus,
    /// Add a member (cluster mode, leader).
    AddNode(AddNode),
    /// Remove a member (cluster mode, leader).
    RemoveNode(RemoveNode),
    /// Subscribe to a resource's changes.
    Watch(Watch),
    /// End a watch.
    Unwatch(Unwatch),
}

impl Command {
    /// Which op this is.
    pub fn op(&self) -> Op {
        match self {
            Command::Hello(_) => Op::Hello,
            Command::Acquire(_) | Command::AcquireMany(_) => Op::Acquire,
            Command::Release(_) => Op::Release,
            Command::Read(_) => Op::Read,
            Command::Write(_) => Op::Write,
            Command::Cancel(_) => Op::Cancel,
            Command::Validate(_) => Op::Validate,
            Command::Ping => Op::Ping,
            Command::Status(_) => Op::Status,
            Command::ClusterStatus => Op::ClusterStatus,
            Command::AddNode(_) => Op::AddNode,
            Command::RemoveNode(_) => Op::RemoveNode,
            Command::Watch(_) => Op::Watch,
            Command::Unwatch(_) => Op::Unwatch,
        }
    }
}

/// The ops of protocol v1: the one table of their wire names. Parsing, the `unknown_op`
/// message and the server's per-op metrics all read it, so an op is named in one place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `hello`
    Hello,
    /// `acquire`
    Acquire,
    /// `release`
    Release,
    /// `read`
    Read,
    /// `write`
    Write,
    /// `cancel`
    Cancel,
    /// `validate`
    Validate,
    /// `ping`
    Ping,
    /// `status`
    Status,
    /// `cluster_status`
    ClusterStatus,
    /// `add_node`
    AddNode,
    /// `remove_node`
    RemoveNode,
    /// `watch`
    Watch,
    /// `unwatch`
    Unwatch,
}

impl Op {
    /// Every op, in the order of [`Op::index`].
    pub const ALL: [Op; 14] = [
        Op::Hello,
        Op::Acquire,
        Op::Release,
        Op::Read,
        Op::Write,
        Op::Cancel,
        Op::Validate,
        Op::Ping,
        Op::Status,
        Op::ClusterStatus,
        Op::AddNode,
        Op::RemoveNode,
        Op::Watch,
        Op::Unwatch,
    ];

    /// The op's name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Acquire => "acquire",
            Op::Release => "release",
            Op::Read => "read",
            Op::Write => "write",
            Op::Cancel => "cancel",
            Op::Validate => "validate",
            Op::Ping => "ping",
            Op::Status => "status",
            Op::ClusterStatus => "cluster_status",
            Op::AddNode => "add_node",
            Op::RemoveNode => "remove_node",
            Op::Watch => "watch",
            Op::Unwatch => "unwatch",
        }
    }

    /// The op with this wire name.
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.name() == name)
    }

    /// Its position in [`Op::ALL`], for arrays indexed by op.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A request that could not be parsed: the reply to send, and the id when it could be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct RequestError {
    /// The request's id, or `None` when the frame was too broken to read it.
    pub id: Option<RequestId>,
    /// The code and message.
    pub error: ErrorBody,
}

impl Request {
    /// Parses one frame (a line without its newline).
    pub fn parse(line: &[u8]) -> Result<Request, RequestError> {
        // serde would also accept a JSON array for a struct; the protocol wants an object.
        let first = line.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Err(RequestError {
                id: None,
                error: ErrorBody::new(
                    ErrorCode::BadRequest,
                    describe_non_object(line, first.copied()),
                ),
            });
        }
        let raw: RawRequest<'_> = match serde_json::from_slice(line) {
            Ok(raw) => raw,
            Err(err) => {
                return Err(RequestError {
                    id: salvage_id(line),
                    error: ErrorBody::new(ErrorCode::BadRequest, json_error_message(&err)),
                })
            }
        };
        let Some(id) = raw.id else {
            return Err(RequestError {
                id: None,
                error: ErrorBody::new(ErrorCode::BadRequest, "missing field `id` (a u64)"),
            });
        };
        let id = RequestId(id);
        raw.into_command()
            .map(|command| Request { id, command })
            .map_err(|error| RequestError {
                id: Some(id),
                error,
            })
    }

    /// The frame as one line of JSON, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Every field any op may carry. Unknown fields are ignored; `null` reads as absent.
#[derive(Deserialize)]
struct RawRequest<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    op: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
    #[serde(borrow)]
    resources: Option<Vec<RawMember<'a>>>,
    timeout_ms: Option<u64>,
    lock_delay_ms: Option<u64>,
    permits: Option<u64>,
    /// A semaphore's size on `acquire`; a page's size on `status`.
    limit: Option<u64>,
    token: Option<u64>,
    #[serde(borrow)]
    value: Option<Cow<'a, str>>,
    target: Option<u64>,
    #[serde(borrow)]
    client: Option<Cow<'a, str>>,
    lease_ms: Option<u64>,
    #[serde(borrow)]
    auth: Option<Cow<'a, str>>,
    session: Option<u64>,
    #[serde(borrow)]
    resume_secret: Option<Cow<'a, str>>,
    node_id: Option<u64>,
    #[serde(borrow)]
    admin_token: Option<Cow<'a, str>>,
    #[serde(borrow)]
    peer: Option<Cow<'a, str>>,
    #[serde(borrow)]
    after: Option<Cow<'a, str>>,
}

impl RawRequest<'_> {
    fn into_command(self) -> Result<Command, ErrorBody> {
        let Some(name) = self.op.as_deref() else {
            return Err(missing("op", "a string"));
        };
        let Some(op) = Op::from_name(name) else {
            let known: Vec<&str> = Op::ALL.iter().map(|op| op.name()).collect();
            return Err(ErrorBody::new(
                ErrorCode::UnknownOp,
                format!("unknown op {name:?}; expected one of {}", known.join(", ")),
            ));
        };
        Ok(match op {
            Op::Hello => Command::Hello(Hello {
                client: self.client.map(Cow::into_owned),
                lease_ms: self.lease_ms,
                auth: self.auth.map(Cow::into_owned),
                session: self.session.map(SessionId),
                resume_secret: self.resume_secret.map(Cow::into_owned),
            }),
            Op::Acquire if self.resources.is_some() => Command::AcquireMany(self.acquire_many()?),
            Op::Acquire => {
                let permits = semaphore(self.permits, self.limit)?;
                let mode = acquire_mode(self.mode.as_deref(), permits.is_some())?;
                if self.value.is_some() && mode != LockMode::Exclusive {
                    return Err(ErrorBody::new(
                        ErrorCode::BadRequest,
                        "`value` on an acquire is a campaign for leadership, which needs the \
                         exclusive lock; drop `mode`, `permits` and `limit`",
                    ));
                }
                Command::Acquire(Acquire {
                    resource: resource(self.resource)?,
                    mode,
                    timeout_ms: self.timeout_ms,
                    lock_delay_ms: self.lock_delay_ms,
                    permits,
                    value: self.value.map(Cow::into_owned),
                })
            }
            Op::Release => Command::Release(Release {
                resource: resource(self.resource)?,
                token: token(self.token)?,
            }),
            Op::Read => Command::Read(Read {
                resource: resource(self.resource)?,
                token: token(self.token)?,
            }),
            Op::Write => Command::Write(Write {
                resource: resource(self.resource)?,
                token: token(self.token)?,
                value: self
                    .value
                    .ok_or_else(|| missing("value", "a string"))?
                    .into_owned(),
            }),
            Op::Cancel => Command::Cancel(Cancel {
                target: RequestId(self.target.ok_or_else(|| missing("target", "a u64"))?),
            }),
            Op::Validate => Command::Validate(Validate {
                resource: resource(self.resource)?,
                token: token(self.token)?,
            }),
            Op::Ping => Command::Ping,
            Op::ClusterStatus => Command::ClusterStatus,
            Op::AddNode => Command::AddNode(AddNode {
                node_id: self.node_id.ok_or_else(|| missing("node_id", "a u64"))?,
                client: self
                    .client
                    .ok_or_else(|| missing("client", "the node's client address"))?
                    .into_owned(),
                peer: self
                    .peer
                    .ok_or_else(|| missing("peer", "the node's peer address"))?
                    .into_owned(),
                admin_token: self.admin_token.map(Cow::into_owned),
            }),
            Op::RemoveNode => Command::RemoveNode(RemoveNode {
                node_id: self.node_id.ok_or_else(|| missing("node_id", "a u64"))?,
                admin_token: self.admin_token.map(Cow::into_owned),
            }),
            Op::Status => Command::Status(status(self.resource, self.limit, self.after)?),
            Op::Watch => Command::Watch(Watch {
                resource: resource(self.resource)?,
            }),
            Op::Unwatch => Command::Unwatch(Unwatch {
                target: RequestId(self.target.ok_or_else(|| missing("target", "a u64"))?),
            }),
        })
    }
}

/// One entry of an `acquire`'s `resources`.
#[derive(Deserialize)]
struct RawMember<'a> {
    #[serde(borrow)]
    resource: Option<Cow<'a, str>>,
    #[serde(borrow)]
    mode: Option<Cow<'a, str>>,
}

impl RawRequest<'_> {
    /// An `acquire` with `resources`: each member a lock in its own mode, each named once.
    fn acquire_many(self) -> Result<AcquireMany, ErrorBody> {
        let bad = |message: String| ErrorBody::new(ErrorCode::BadRequest, message);
        if self.resource.is_some() {
            return Err(bad(
                "an `acquire` names `resource` or `resources`, not both".into(),
            ));
        }
        if self.mode.is_some() {
            return Err(bad(
                "an `acquire` with `resources` gives each member its own `mode`; drop the \
                 top-level `mode`"
                    .into(),
            ));
        }
        if self.permits.is_some() || self.limit.is_some() {
            return Err(bad(
                "`resources` members are locks; `permits` and `limit` are for an `acquire` of \
                 one semaphore"
                    .into(),
            ));
        }
        if self.value.is_some() {
            return Err(bad(
                "`value` is a campaign for the leadership of one resource; an `acquire` with \
                 `resources` cannot carry one"
                    .into(),
            ));
        }
        let raw = self.resources.unwrap_or_default();
        if raw.is_empty() {
            return Err(bad("`resources` must name at least one resource".into()));
        }
        let mut resources: Vec<Member> = Vec::with_capacity(raw.len());
        for (i, member) in raw.into_iter().enumerate() {
            let resource = member
                .resource
                .ok_or_else(|| bad(format!("missing field `resource` in `resources[{i}]`")))
                .and_then(|name| valid_name(&name))?;
            if resources.iter().any(|m| m.resource == resource) {
                return Err(bad(format!(
                    "resource {resource} appears twice in `resources`; name each resource once"
                )));
            }
            let mode = acquire_mode(member.mode.as_deref(), false)?;
            resources.push(Member { resource, mode });
        }
        Ok(AcquireMany {
            resources,
            timeout_ms: self.timeout_ms,
            lock_delay_ms: self.lock_delay_ms,
        })
    }
}

/// A `status`: one resource, or a page of busy resources. The server checks `limit` against
/// its own maximum; here it only has to be a page at all.
fn status(
    resource: Option<Cow<'_, str>>,
    limit: Option<u64>,
    after: Option<Cow<'_, str>>,
) -> Result<Status, ErrorBody> {
    if resource.is_some() && (limit.is_some() || after.is_some()) {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "`limit` and `after` page through busy resources; a `status` of one `resource` \
             takes neither",
        ));
    }
    if limit == Some(0) {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "`limit` must be at least 1 (absent: the server's default page)",
        ));
    }
    let after = after
        .map(|name| valid_name(&name))
        .transpose()
        .map_err(|err| {
            ErrorBody::new(
                err.code,
                format!("`after` is not a resource name: {}", err.message),
            )
        })?;
    Ok(Status {
        resource: resource.map(|name| valid_name(&name)).transpose()?,
        limit,
        after,
    })
}

/// The `permits` and `limit` of a semaphore acquire: both absent for a lock; `limit` alone asks
/// for one permit.
fn semaphore(permits: Option<u64>, limit: Option<u64>) -> Result<Option<Permits>, ErrorBody> {
    match (permits, limit) {
        (None, None) => Ok(None),
        (Some(_), None) => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "`permits` needs `limit`, the semaphore's size (every acquirer must agree on it)",
        )),
        (permits, Some(limit)) => Permits::new(permits.unwrap_or(1), limit)
            .map(Some)
            .map_err(|message| ErrorBody::new(ErrorCode::BadRequest, message)),
    }
}

/// An acquire's mode: exclusive when absent, except that permits are always shared (they are
/// held beside other permits), so a semaphore acquire may say `shared` or nothing.
fn acquire_mode(mode: Option<&str>, semaphore: bool) -> Result<LockMode, ErrorBody> {
    let Some(mode) = mode else {
        return Ok(if semaphore {
            LockMode::Shared
        } else {
            LockMode::Exclusive
        });
    };
    match LockMode::from_wire(mode) {
        Some(LockMode::Exclusive) if semaphore => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            "permits of a semaphore are shared; drop `mode` (or ask for all `limit` permits to \
             hold it alone)",
        )),
        Some(mode) => Ok(mode),
        None => Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("unknown mode {mode:?}; expected \"exclusive\" or \"shared\""),
        )),
    }
}

fn missing(field: &str, what: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorCode::BadRequest,
        format!("missing field `{field}` ({what})"),
    )
}

fn resource(name: Option<Cow<'_, str>>) -> Result<ResourceName, ErrorBody> {
    valid_name(&name.ok_or_else(|| missing("resource", "a string"))?)
}

fn valid_name(name: &str) -> Result<ResourceName, ErrorBody> {
    ResourceName::new(name)
        .map_err(|err| ErrorBody::new(ErrorCode::InvalidResource, err.to_string()))
}

fn token(token: Option<u64>) -> Result<FenceToken, ErrorBody> {
    token
        .map(FenceToken)
        .ok_or_else(|| missing("token", "a u64"))
}

/// Finds the id of a frame that failed to parse as a request, so the error can carry it.
fn salvage_id(line: &[u8]) -> Option<RequestId> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    // Only a well-formed object with a well-typed id counts; anything else gets `id: null`.
    serde_json::from_slice::<IdOnly>(line)
        .ok()
        .and_then(|frame| frame.id)
        .map(RequestId)
}

fn describe_non_object(line: &[u8], first: Option<u8>) -> String {
    match first {
        None => "empty frame; expected a JSON object".to_owned(),
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(line).is_ok() => {
            "frame is JSON but not an object; expected {\"id\": <u64>, \"op\": \"<op>\", ...}"
                .to_owned()
        }
        Some(_) => "frame is not valid JSON; expected a JSON object on one line".to_owned(),
    }
}

fn json_error_message(err: &serde_json::Error) -> String {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => format!("ill-typed field: {err}"),
        Category::Syntax | Category::Eof | Category::Io => {
            format!("frame is not valid JSON: {err}")
        }
    }
}

#[cfg(test)]
mod tests;
