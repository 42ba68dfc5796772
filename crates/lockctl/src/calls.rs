//! The calls of one session that await their final reply, by request id, and the queue of
//! frames for its connection.
//!
//! The registry outlives connections. In a cluster, the calls in flight when a leader fails
//! stay registered while the session resumes on the new leader, and their frames are sent
//! again there with the same ids (the server answers a request it already applied from the
//! reply it saved, so nothing is applied twice). Registering a call and queueing its frame
//! happen under one lock, and so does re-queueing on a resume, so that every frame reaches
//! the new connection exactly once and in id order.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use protocol::cmd::WatchEvent;
use protocol::{Command, ErrorBody, ErrorCode, Incoming, Request, RequestId};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::error::ClientError;

/// A call's final reply: the whole success frame (read with `Incoming::result`), or why it
/// failed.
pub(crate) type Reply = Result<serde_json::Value, ClientError>;

/// The calls awaiting replies; see the module docs.
#[derive(Debug)]
pub(crate) struct Calls {
    next_id: AtomicU64,
    state: Mutex<State>,
    /// Frames for whichever connection the session has; read by the session task.
    outgoing: mpsc::UnboundedSender<Bytes>,
}

#[derive(Debug)]
struct State {
    /// `None` once the session is lost, so that no call can be registered after the others
    /// were failed.
    pending: Option<BTreeMap<RequestId, PendingCall>>,
    /// Open watches, by the `watch` request's id: where their events go. Emptied when the
    /// session is lost, which ends every watch's stream.
    watches: BTreeMap<RequestId, mpsc::UnboundedSender<WatchEvent>>,
    /// When the newest call the server has answered was registered. The server heard from
    /// the session no earlier than that, so the session's lease lasts at least until then
    /// plus the lease: the time a failed-over client has to resume it.
    heard_since: Instant,
    /// The lease the server granted (set once the session's `hello` is answered, and again on
    /// each resume): with `heard_since`, it gives the local deadline (`lease.rs`).
    lease: Duration,
}

#[derive(Debug)]
struct PendingCall {
    /// The request as sent, to send again after a resume.
    frame: Bytes,
    registered: Instant,
    reply: oneshot::Sender<Reply>,
    /// Where `queued` events go, for acquires.
    events: Option<mpsc::UnboundedSender<u64>>,
}

/// What became of a frame from the server.
#[derive(Debug)]
pub(crate) enum Routed {
    /// Given to its call (or dropped: nobody waits for that id any more).
    Delivered,
    /// The server answered a call with `not_leader`: this connection serves nothing. The call
    /// stays registered, to be sent again where the session resumes; `leader` is the leader's
    /// client address, when the server knew it.
    NotLeader {
        /// The leader's client address, if known.
        leader: Option<String>,
    },
    /// The frame cannot be read, or reports a request the server could not read: a bug on
    /// one side, after which replies cannot be trusted to reach the right calls.
    Broken(ClientError),
}

impl Calls {
    /// An empty registry whose frames go to `outgoing`; the first id is 1.
    pub(crate) fn new(outgoing: mpsc::UnboundedSender<Bytes>) -> Calls {
        Calls {
            next_id: AtomicU64::new(1),
            state: Mutex::new(State {
                pending: Some(BTreeMap::new()),
                watches: BTreeMap::new(),
                heard_since: Instant::now(),
                lease: Duration::MAX,
            }),
            outgoing,
        }
    }

    /// A fresh request id. Ids only count up, across reconnects too: in a cluster the server
    /// tells retries from new requests by id.
    pub(crate) fn next_id(&self) -> RequestId {
        RequestId(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Registers a call and queues its frame; the reply arrives on the returned receiver.
    pub(crate) fn register(
        &self,
        command: Command,
        events: Option<mpsc::UnboundedSender<u64>>,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
        self.register_with(command, events, None)
    }

    /// Registers a `watch` call and, under the same lock, where its events go, so that none
    /// that follows the reply is missed.
    pub(crate) fn register_watch(
        &self,
        command: Command,
        watch_events: mpsc::UnboundedSender<WatchEvent>,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
        self.register_with(command, None, Some(watch_events))
    }

    /// Stops routing the events of watch `id` (after `unwatch`, or a refused `watch`).
    pub(crate) fn forget_watch(&self, id: RequestId) {
        self.state().watches.remove(&id);
    }

    fn register_with(
        &self,
        command: Command,
        events: Option<mpsc::UnboundedSender<u64>>,
        watch_events: Option<mpsc::UnboundedSender<WatchEvent>>,
    ) -> Result<(RequestId, oneshot::Receiver<Reply>), ClientError> {
        let id = self.next_id();
        let mut frame = Request { id, command }.to_json();
        frame.push(b'\n');
        let frame = Bytes::from(frame);
        let (reply_tx, reply_rx) = oneshot::channel();
        let mut state = self.state();
        let State {
            pending, watches, ..
        } = &mut *state;
        let Some(pending) = pending.as_mut() else {
            return Err(ClientError::ConnectionLost);
        };
        if let Some(watch_events) = watch_events {
            watches.insert(id, watch_events);
        }
        // Queued under the lock: see `requeue_all`.
        if self.outgoing.send(frame.clone()).is_err() {
            return Err(ClientError::ConnectionLost);
        }
        pending.insert(
            id,
            PendingCall {
                frame,
                registered: Instant::now(),
                reply: reply_tx,
                events,
            },
        );
        Ok((id, reply_rx))
    }

    /// Whether any call waits for its reply.
    pub(crate) fn has_pending(&self) -> bool {
        self.state()
            .pending
            .as_ref()
            .is_some_and(|pending| !pending.is_empty())
    }

    /// Routes one line from the server to the call it answers. With `resumable` (a cluster),
    /// a `not_leader` answer leaves its call registered and ends the connection instead.
    pub(crate) fn route(&self, line: &[u8], resumable: bool) -> Routed {
        let incoming = match Incoming::parse(line) {
            Ok(incoming) => incoming,
            Err(err) => return Routed::Broken(ClientError::Protocol(err.to_string())),
        };
        let mut state = self.state();
        let State {
            pending,
            heard_since,
            watches,
            ..
        } = &mut *state;
        let Some(pending) = pending.as_mut() else {
            return Routed::Delivered;
        };
        match incoming {
            Incoming::Watch { id, event } => {
                if let Some(watch) = watches.get(&id) {
                    let _ = watch.send(event);
                }
            }
            Incoming::Queued { id, position } => {
                if let Some(call) = pending.get(&id) {
                    *heard_since = (*heard_since).max(call.registered);
                    if let Some(events) = &call.events {
                        let _ = events.send(position);
                    }
                }
            }
            Incoming::Reply {
                id: Some(_),
                result: Err(ErrorBody { code, leader, .. }),
            } if resumable && code == ErrorCode::NotLeader => {
                return Routed::NotLeader { leader };
            }
            Incoming::Reply {
                id: Some(id),
                result,
            } => {
                if let Some(call) = pending.remove(&id) {
                    *heard_since = (*heard_since).max(call.registered);
                    let _ = call.reply.send(result.map_err(ClientError::Server));
                }
            }
            Incoming::Reply { id: None, result } => {
                // The server could not read one of our frames: a bug on this side.
                let message = match result {
                    Err(error) => error.to_string(),
                    Ok(frame) => frame.to_string(),
                };
                return Routed::Broken(ClientError::Protocol(format!(
                    "server could not read a request: {message}"
                )));
            }
        }
        Routed::Delivered
    }

    /// Sets the lease the server granted.
    pub(crate) fn set_lease(&self, lease: Duration) {
        self.state().lease = lease;
    }

    /// The lease the server granted.
    pub(crate) fn lease(&self) -> Duration {
        self.state().lease
    }

    /// The local deadline (`lease.rs`): after it, the server may have expired the session.
    pub(crate) fn local_deadline(&self) -> Instant {
        let state = self.state();
        crate::lease::local_deadline(state.heard_since, state.lease)
    }

    /// Resolves once the local deadline has passed with no newer answer to move it.
    pub(crate) async fn local_deadline_passed(&self) {
        loop {
            let deadline = self.local_deadline();
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// When the newest call the server answered was registered (see `State::heard_since`).
    pub(crate) fn heard_since(&self) -> Instant {
        self.state().heard_since
    }

    /// After a resume at `resumed_at`: drops the frames still queued for the old connection
    /// and queues the frame of every registered call again, in id order, for the new one.
    pub(crate) fn requeue_all(
        &self,
        queue: &mut mpsc::UnboundedReceiver<Bytes>,
        resumed_at: Instant,
    ) {
        let mut state = self.state();
        state.heard_since = state.heard_since.max(resumed_at);
        // Every frame in the queue belongs to a registered call (or to one already answered),
        // and registering takes this lock, so after the drain each call is queued once.
        while queue.try_recv().is_ok() {}
        for call in state.pending.iter().flat_map(BTreeMap::values) {
            let _ = self.outgoing.send(call.frame.clone());
        }
    }

    /// The session is lost: fails every call with `error()` and refuses new ones.
    pub(crate) fn fail_all(&self, error: impl Fn() -> ClientError) {
        let pending = {
            let mut state = self.state();
            // Dropping the senders ends every watch's stream.
            state.watches.clear();
            state.pending.take()
        };
        for (_, call) in pending.into_iter().flatten() {
            let _ = call.reply.send(Err(error()));
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock would be a bug in this module; the state is still
        // consistent (every change to it is a single insert, remove or assignment).
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}
