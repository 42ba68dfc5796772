//! Server frames: replies (success or failure) and progress events, and how clients read them.
//!
//! - Success: `{"id": <id>, "ok": true, ...result}`
//! - Failure: `{"id": <id or null>, "ok": false, "error": {"code": "...", "message": "..."}}`
//! - Event: `{"id": <id>, "event": "queued", "position": <n>}`
//! - Watch event: `{"id": <watch id>, "event": "watch", "kind": "...", "resource": "...", ...}`

use serde::{Deserialize, Serialize};

use crate::cmd::{
    AcquireManyOk, AcquireOk, ClusterStatusOk, HelloOk, ReadOk, StatusOk, ValidateOk, WatchEvent,
};
use crate::error::{ErrorBody, ErrorCode};
use crate::ids::RequestId;

/// The fields a successful reply adds next to `id` and `ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ReplyBody {
    /// No fields: `release`, `write`, `cancel`, `ping`.
    Empty {},
    /// `hello`.
    Hello(HelloOk),
    /// `acquire`.
    Acquired(AcquireOk),
    /// `acquire` with `resources`.
    AcquiredMany(AcquireManyOk),
    /// `read`.
    Value(ReadOk),
    /// `status`.
    Status(StatusOk),
    /// `validate`.
    Validated(ValidateOk),
    /// `cluster_status`.
    Cluster(ClusterStatusOk),
}

impl ReplyBody {
    /// The body of a reply with no fields.
    pub const EMPTY: ReplyBody = ReplyBody::Empty {};
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame {
    /// A reply sent before, kept as it was encoded, sent again to a client that retried its
    /// request (cluster mode, after resuming a session).
    Saved(std::sync::Arc<[u8]>),
    /// The request succeeded.
    Ok {
        /// The request's id.
        id: RequestId,
        /// Its result.
        body: ReplyBody,
    },
    /// The request failed.
    Err {
        /// The request's id; `None` when it could not be read.
        id: Option<RequestId>,
        /// Why.
        error: ErrorBody,
    },
    /// A waiting acquire was queued; `position` 1 is next in line.
    Queued {
        /// The acquire's id.
        id: RequestId,
        /// Its place in the queue.
        position: u64,
    },
    /// An event of the watch started by request `id`.
    Watch {
        /// The `watch` request's id.
        id: RequestId,
        /// What happened.
        event: WatchEvent,
    },
}

impl ServerFrame {
    /// A failure reply.
    pub fn error(id: Option<RequestId>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Err {
            id,
            error: ErrorBody::new(code, message),
        }
    }

    /// Appends the frame as one line of JSON, without the newline, to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let result = match self {
            ServerFrame::Saved(line) => {
                out.extend_from_slice(line);
                Ok(())
            }
            ServerFrame::Ok { id, body } => serde_json::to_writer(
                &mut *out,
                &OkFrame {
                    id: *id,
                    ok: true,
                    body,
                },
            ),
            ServerFrame::Err { id, error } => serde_json::to_writer(
                &mut *out,
                &ErrFrame {
                    id: *id,
                    ok: false,
                    error,
                },
            ),
            ServerFrame::Queued { id, position } => serde_json::to_writer(
                &mut *out,
                &EventFrame {
                    id: *id,
                    event: "queued",
                    position: *position,
                },
            ),
            ServerFrame::Watch { id, event } => serde_json::to_writer(
                &mut *out,
                &WatchFrame {
                    id: *id,
                    event: "watch",
                    body: event,
                },
            ),
        };
        // Writing plain data with string keys into a Vec cannot fail.
        debug_assert!(
            result.is_ok(),
            "serializing a server frame failed: {result:?}"
        );
    }

    /// The frame as one line of JSON, without the newline.
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        self.write_json(&mut out);
        out
    }
}

#[derive(Serialize)]
struct OkFrame<'a> {
    id: RequestId,
    ok: bool,
    #[serde(flatten)]
    body: &'a ReplyBody,
}

#[derive(Serialize)]
struct ErrFrame<'a> {
    id: Option<RequestId>,
    ok: bool,
    error: &'a ErrorBody,
}

#[derive(Serialize)]
struct EventFrame {
    id: RequestId,
    event: &'static str,
    position: u64,
}

#[derive(Serialize)]
struct WatchFrame<'a> {
    id: RequestId,
    event: &'static str,
    #[serde(flatten)]
    body: &'a WatchEvent,
}

/// A server frame as a client sees it, before it knows which result type to expect.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// A reply to request `id`: its result fields (still JSON) or its error.
    Reply {
        /// The request's id; `None` only for errors about unreadable frames.
        id: Option<RequestId>,
        /// The whole frame on success, to be read with [`Incoming::result`]; the error otherwise.
        result: Result<serde_json::Value, ErrorBody>,
    },
    /// A progress event for request `id`.
    Queued {
        /// The acquire's id.
        id: RequestId,
        /// Its place in the queue, 1 = next.
        position: u64,
    },
    /// An event of the watch started by request `id`.
    Watch {
        /// The `watch` request's id.
        id: RequestId,
        /// What happened.
        event: WatchEvent,
    },
}

/// Why a line from the server could not be read as a server frame.
#[derive(Debug, thiserror::Error)]
#[error("unreadable frame from server: {0}")]
pub struct IncomingError(String);

impl Incoming {
    /// Parses one line from the server.
    pub fn parse(line: &[u8]) -> Result<Incoming, IncomingError> {
        let frame: serde_json::Value =
            serde_json::from_slice(line).map_err(|err| IncomingError(err.to_string()))?;
        let id = match frame.get("id") {
            None | Some(serde_json::Value::Null) => None,
            Some(id) => {
                Some(RequestId(id.as_u64().ok_or_else(|| {
                    IncomingError(format!("`id` is not a u64: {id}"))
                })?))
            }
        };
        if let (Some("watch"), Some(id)) = (frame.get("event").and_then(|e| e.as_str()), id) {
            let event = WatchEvent::deserialize(&frame)
                .map_err(|err| IncomingError(format!("bad watch event: {err}: {frame}")))?;
            return Ok(Incoming::Watch { id, event });
        }
        if let Some(event) = frame.get("event") {
            let (Some("queued"), Some(id), Some(position)) = (
                event.as_str(),
                id,
                frame.get("position").and_then(serde_json::Value::as_u64),
            ) else {
                return Err(IncomingError(format!("unknown event: {frame}")));
            };
            return Ok(Incoming::Queued { id, position });
        }
        match frame.get("ok").and_then(serde_json::Value::as_bool) {
            Some(true) => Ok(Incoming::Reply {
                id,
                result: Ok(frame),
            }),
            Some(false) => {
                let error = frame
                    .get("error")
                    .cloned()
                    .ok_or_else(|| IncomingError(format!("failure without `error`: {frame}")))?;
                let error = ErrorBody::deserialize(error)
                    .map_err(|err| IncomingError(format!("bad `error` object: {err}")))?;
                Ok(Incoming::Reply {
                    id,
                    result: Err(error),
                })
            }
            None => Err(IncomingError(format!(
                "frame has no `ok` or `event`: {frame}"
            ))),
        }
    }

    /// Reads a success frame as the result type `T` of its op.
    pub fn result<T: for<'de> Deserialize<'de>>(
        frame: serde_json::Value,
    ) -> Result<T, IncomingError> {
        T::deserialize(frame).map_err(|err| IncomingError(format!("unexpected result: {err}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::Permits;
    use crate::ids::{FenceToken, LockMode};

    fn json(frame: &ServerFrame) -> String {
        String::from_utf8(frame.to_json()).unwrap()
    }

    #[test]
    fn frames_serialize_as_documented() {
        assert_eq!(
            json(&ServerFrame::Ok {
                id: RequestId(1),
                body: ReplyBody::EMPTY
            }),
            r#"{"id":1,"ok":true}"#
        );
        assert_eq!(
            json(&ServerFrame::Ok {
                id: RequestId(2),
                body: ReplyBody::Acquired(AcquireOk {
                    token: FenceToken(7),
                    mode: LockMode::Shared,
                    permits: None,
                })
            }),
            r#"{"id":2,"ok":true,"token":7,"mode":"shared"}"#
        );
        assert_eq!(
            json(&ServerFrame::Ok {
                id: RequestId(2),
                body: ReplyBody::Acquired(AcquireOk {
                    token: FenceToken(8),
                    mode: LockMode::Shared,
                    permits: Some(Permits::new(2, 4).unwrap()),
                })
            }),
            r#"{"id":2,"ok":true,"token":8,"mode":"shared","permits":2,"limit":4}"#
        );
        assert_eq!(
            json(&ServerFrame::Ok {
                id: RequestId(3),
                body: ReplyBody::AcquiredMany(crate::cmd::AcquireManyOk {
                    tokens: vec![crate::cmd::MemberToken {
                        resource: crate::ResourceName::new("a").unwrap(),
                        token: FenceToken(9),
                        mode: LockMode::Exclusive,
                    }],
                })
            }),
            r#"{"id":3,"ok":true,"tokens":[{"resource":"a","token":9,"mode":"exclusive"}]}"#
        );
        assert_eq!(
            json(&ServerFrame::Ok {
                id: RequestId(3),
                body: ReplyBody::Value(ReadOk { value: None })
            }),
            r#"{"id":3,"ok":true,"value":null}"#
        );
        assert_eq!(
            json(&ServerFrame::error(None, ErrorCode::BadRequest, "nope")),
            r#"{"id":null,"ok":false,"error":{"code":"bad_request","message":"Nope"}}"#
        );
        assert_eq!(
            json(&ServerFrame::Queued {
                id: RequestId(4),
                position: 2
            }),
            r#"{"id":4,"event":"queued","position":2}"#
        );
    }

    #[test]
    fn clients_read_back_what_servers_write() {
        let frame = ServerFrame::Ok {
            id: RequestId(2),
            body: ReplyBody::Acquired(AcquireOk {
                token: FenceToken(7),
                mode: LockMode::Exclusive,
                permits: None,
            }),
        };
        let Incoming::Reply {
            id,
            result: Ok(value),
        } = Incoming::parse(&frame.to_json()).unwrap()
        else {
            panic!("not a success reply");
        };
        assert_eq!(id, Some(RequestId(2)));
        let ok: AcquireOk = Incoming::result(value).unwrap();
        assert_eq!(ok.token, FenceToken(7));
        assert_eq!(ok.permits, None);

        let permits = Some(Permits::new(3, 5).unwrap());
        let frame = ServerFrame::Ok {
            id: RequestId(3),
            body: ReplyBody::Acquired(AcquireOk {
                token: FenceToken(8),
                mode: LockMode::Shared,
                permits,
            }),
        };
        let Incoming::Reply {
            result: Ok(value), ..
        } = Incoming::parse(&frame.to_json()).unwrap()
        else {
            panic!("not a success reply");
        };
        let ok: AcquireOk = Incoming::result(value).unwrap();
        assert_eq!(ok.permits, permits);

        let err = ServerFrame::error(Some(RequestId(9)), ErrorCode::NotHeld, "not yours");
        assert_eq!(
            Incoming::parse(&err.to_json()).unwrap(),
            Incoming::Reply {
                id: Some(RequestId(9)),
                result: Err(ErrorBody::new(ErrorCode::NotHeld, "not yours"))
            }
        );
        let queued = ServerFrame::Queued {
            id: RequestId(4),
            position: 3,
        };
        assert_eq!(
            Incoming::parse(&queued.to_json()).unwrap(),
            Incoming::Queued {
                id: RequestId(4),
                position: 3
            }
        );
    }
}

#[cfg(test)]
mod watch_tests {
    use super::*;
    use crate::cmd::{WatchChange, WatchHolder, WatchState};
    use crate::ids::{FenceToken, LockMode, SessionId};
    use crate::name::ResourceName;

    fn round_trip(change: WatchChange, expected: &str) {
        let frame = ServerFrame::Watch {
            id: RequestId(5),
            event: WatchEvent {
                resource: ResourceName::new("jobs/a").unwrap(),
                change,
            },
        };
        assert_eq!(String::from_utf8(frame.to_json()).unwrap(), expected);
        let ServerFrame::Watch { id, event } = frame else {
            unreachable!()
        };
        assert_eq!(
            Incoming::parse(expected.as_bytes()).unwrap(),
            Incoming::Watch { id, event }
        );
    }

    #[test]
    fn watch_events_serialize_as_documented_and_read_back() {
        let holder = WatchHolder {
            session: SessionId(2),
            token: FenceToken(7),
            mode: LockMode::Exclusive,
            value: None,
        };
        round_trip(
            WatchChange::State(WatchState {
                holders: vec![holder.clone()],
                value: None,
                queue: 1,
            }),
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"state","holders":[{"session":2,"token":7,"mode":"exclusive"}],"value":null,"queue":1}"#,
        );
        round_trip(
            WatchChange::Resync(WatchState {
                holders: Vec::new(),
                value: Some("v".to_owned()),
                queue: 0,
            }),
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"resync","holders":[],"value":"v","queue":0}"#,
        );
        round_trip(
            WatchChange::Granted(holder.clone()),
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"granted","session":2,"token":7,"mode":"exclusive"}"#,
        );
        round_trip(
            WatchChange::Released(holder.clone()),
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"released","session":2,"token":7,"mode":"exclusive"}"#,
        );
        round_trip(
            WatchChange::Expired(holder),
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"expired","session":2,"token":7,"mode":"exclusive"}"#,
        );
        round_trip(
            WatchChange::Written {
                token: FenceToken(7),
                value: "x".to_owned(),
            },
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"written","token":7,"value":"x"}"#,
        );
        round_trip(
            WatchChange::Queue { queue: 3 },
            r#"{"id":5,"event":"watch","resource":"jobs/a","kind":"queue","queue":3}"#,
        );
    }

    #[test]
    fn a_watch_event_of_an_unknown_kind_is_an_error() {
        let line = br#"{"id":5,"event":"watch","resource":"a","kind":"bogus"}"#;
        assert!(Incoming::parse(line).is_err());
    }
}
