//! Retries after a failover: each session's last replies, so that a request re-sent on a
//! resumed session is answered again rather than applied twice.
//!
//! A client whose leader died cannot know which of its requests in flight were committed. After
//! it resumes its session (`hello` with `session`) it re-sends them with their ids, and counts
//! on above them for new requests. Applying `hello` with `session` sets the session's retry
//! floor to the highest id it had applied: a later request at or below the floor is a retry.
//! If its reply is saved, that reply is sent again; an acquire still waiting is told its place
//! again (the machine checks that); otherwise it was never applied and is applied now. The
//! last [`SAVED_REPLIES`] final replies of each session are kept; a retry older than all of
//! them cannot be told apart from a request applied long ago, so it is refused.
//!
//! Without a resume nothing changes: a client may reuse ids as on a single server.
//!
//! Part of the replicated state (and of snapshots): every node decides retries the same way.

use std::collections::VecDeque;
use std::sync::Arc;

use protocol::{RequestId, SessionId};
use serde::{Deserialize, Serialize};

/// How many final replies each session keeps for retries: more than a client has in flight.
pub const SAVED_REPLIES: usize = 64;

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Apply it.
    New,
    /// It was applied; send this reply again.
    Saved(Arc<[u8]>),
    /// A retry too old to tell whether it was applied.
    TooOld,
}

/// One session's retry state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SessionReplies {
    last_id: Option<RequestId>,
    retry_floor: Option<RequestId>,
    /// Final replies, oldest first.
    saved: VecDeque<(RequestId, Arc<[u8]>)>,
}

/// Every session's retry state.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Retries {
    /// Persistent, so that a snapshot copies it in O(1) under the replica's lock.
    sessions: imbl::HashMap<SessionId, SessionReplies>,
}

/// [`Retries`] in a snapshot.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RetriesImage(Vec<SessionRepliesImage>);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct SessionRepliesImage {
    session: SessionId,
    last_id: Option<RequestId>,
    retry_floor: Option<RequestId>,
    saved: Vec<(RequestId, String)>,
}

impl Retries {
    /// Whether `request` of `session` is new, a retry with a saved reply, or too old.
    pub(crate) fn check(&self, session: SessionId, request: RequestId) -> Retry {
        let Some(replies) = self.sessions.get(&session) else {
            return Retry::New;
        };
        if replies.retry_floor.is_none_or(|floor| request > floor) {
            return Retry::New;
        }
        if let Some((_, line)) = replies.saved.iter().rev().find(|(id, _)| *id == request) {
            return Retry::Saved(Arc::clone(line));
        }
        let full = replies.saved.len() >= SAVED_REPLIES;
        let oldest = replies.saved.iter().map(|(id, _)| *id).min();
        if full && oldest.is_some_and(|oldest| request < oldest) {
            return Retry::TooOld;
        }
        Retry::New
    }

    /// Whether `request` of `session` came after a resume with an id at or below the floor.
    pub(crate) fn is_retry(&self, session: SessionId, request: RequestId) -> bool {
        self.sessions
            .get(&session)
            .and_then(|replies| replies.retry_floor)
            .is_some_and(|floor| request <= floor)
    }

    /// `request` of `session` is being applied.
    pub(crate) fn applied(&mut self, session: SessionId, request: RequestId) {
        let replies = self.sessions.entry(session).or_default();
        replies.last_id = replies.last_id.max(Some(request));
    }

    /// The session was resumed: requests up to the highest id applied so far may be retries.
    pub(crate) fn resumed(&mut self, session: SessionId) {
        let replies = self.sessions.entry(session).or_default();
        replies.retry_floor = replies.last_id;
    }

    /// Keeps the final reply to `request`, as encoded.
    pub(crate) fn save(&mut self, session: SessionId, request: RequestId, line: Arc<[u8]>) {
        let replies = self.sessions.entry(session).or_default();
        replies.saved.push_back((request, line));
        if replies.saved.len() > SAVED_REPLIES {
            replies.saved.pop_front();
        }
    }

    /// The session ended: nothing of it can be retried.
    pub(crate) fn forget(&mut self, session: SessionId) {
        self.sessions.remove(&session);
    }

    pub(crate) fn to_image(&self) -> RetriesImage {
        let mut sessions: Vec<SessionRepliesImage> = self
            .sessions
            .iter()
            .map(|(session, replies)| SessionRepliesImage {
                session: *session,
                last_id: replies.last_id,
                retry_floor: replies.retry_floor,
                saved: replies
                    .saved
                    .iter()
                    .map(|(id, line)| (*id, String::from_utf8_lossy(line).into_owned()))
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|image| image.session);
        RetriesImage(sessions)
    }

    pub(crate) fn from_image(image: RetriesImage) -> Retries {
        let sessions = image
            .0
            .into_iter()
            .map(|image| {
                let replies = SessionReplies {
                    last_id: image.last_id,
                    retry_floor: image.retry_floor,
                    saved: image
                        .saved
                        .into_iter()
                        .map(|(id, line)| (id, Arc::from(line.into_bytes())))
                        .collect(),
                };
                (image.session, replies)
            })
            .collect();
        Retries { sessions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = SessionId(1);

    fn line(text: &str) -> Arc<[u8]> {
        Arc::from(text.as_bytes())
    }

    #[test]
    fn only_requests_at_or_below_the_floor_after_a_resume_are_retries() {
        let mut retries = Retries::default();
        for id in 1..=3 {
            retries.applied(S, RequestId(id));
            retries.save(S, RequestId(id), line(&format!("reply {id}")));
        }
        // Without a resume, an id used before is a new request (as on a single server).
        assert_eq!(retries.check(S, RequestId(2)), Retry::New);
        retries.resumed(S);
        assert_eq!(
            retries.check(S, RequestId(2)),
            Retry::Saved(line("reply 2"))
        );
        assert_eq!(
            retries.check(S, RequestId(4)),
            Retry::New,
            "above the floor"
        );
        assert_eq!(retries.check(SessionId(9), RequestId(1)), Retry::New);
    }

    #[test]
    fn a_retry_older_than_every_saved_reply_is_refused() {
        let mut retries = Retries::default();
        let last = SAVED_REPLIES as u64 + 10;
        for id in 1..=last {
            retries.applied(S, RequestId(id));
            retries.save(S, RequestId(id), line("r"));
        }
        retries.resumed(S);
        assert_eq!(retries.check(S, RequestId(5)), Retry::TooOld);
        assert_eq!(retries.check(S, RequestId(last)), Retry::Saved(line("r")));
        retries.forget(S);
        assert_eq!(retries.check(S, RequestId(5)), Retry::New);
    }

    #[test]
    fn an_unsaved_request_below_the_floor_was_never_applied() {
        let mut retries = Retries::default();
        retries.applied(S, RequestId(1));
        retries.save(S, RequestId(1), line("one"));
        // Request 2 is a waiting acquire (no final reply yet); 3 was applied.
        retries.applied(S, RequestId(2));
        retries.applied(S, RequestId(3));
        retries.save(S, RequestId(3), line("three"));
        retries.resumed(S);
        assert_eq!(retries.check(S, RequestId(2)), Retry::New);
    }

    #[test]
    fn images_round_trip() {
        let mut retries = Retries::default();
        retries.applied(S, RequestId(4));
        retries.save(S, RequestId(4), line("{\"id\":4,\"ok\":true}"));
        retries.resumed(S);
        let json = serde_json::to_string(&retries.to_image()).unwrap();
        let back = Retries::from_image(serde_json::from_str(&json).unwrap());
        assert_eq!(back, retries);
    }
}
