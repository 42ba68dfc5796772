//! What the driver has applied to the table but not yet made durable: the values written since
//! the last finished commit, and the frames that must not go out before those values are on
//! disk.
//!
//! The driver keeps applying requests while a commit runs on the blocking pool, and the writes
//! it applies meanwhile are grouped into the next commit (group commit, pipelined one deep). A
//! frame goes out at once unless it shows a value that is not durable yet (a write's own reply,
//! or a read of such a value) or its session already has a frame waiting, so that replies to
//! one connection keep their order. Locks, grants and tokens are never waited for: locks do not
//! outlive the process, and every token handed out is under a reservation that is already
//! durable. Commits run one at a time and finish in order.
//!
//! When a commit fails, every write not yet durable is undone, those that came after it too:
//! they were applied on top of its values, and some were already read by frames that are
//! waiting for the same commits.
//!
//! No I/O and no clock: the driver runs the commits, sends the frames and undoes the writes.

use std::collections::HashMap;
use std::sync::Arc;

use protocol::cmd::{WatchChange, WatchState};
use protocol::{ErrorCode, Op, RequestId, ResourceName, ServerFrame, SessionId};

use crate::store::CommitBatch;

/// Numbers commits in the order they run, from 1.
pub(crate) type CommitId = u64;

/// A frame on its way to a session.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) session: SessionId,
    pub(crate) frame: ServerFrame,
    /// The request this frame answers, for the latency metric: its op and
    /// when it was read. `None` for a frame that answers no request of this turn (a grant
    /// after waiting).
    pub(crate) answers: Option<(Op, std::time::Instant)>,
}

/// A value written to the table and not yet durable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingWrite {
    pub(crate) resource: ResourceName,
    pub(crate) value: Arc<str>,
    /// The value it replaced, to put back if its commit fails.
    pub(crate) previous: Option<Arc<str>>,
    /// The commit it goes into.
    pub(crate) commit: CommitId,
}

#[derive(Debug)]
struct HeldFrame {
    outgoing: Outgoing,
    /// The commit that must finish before it goes out: the one that saves the value it shows,
    /// or a later one that an earlier frame of its session waits for.
    commit: CommitId,
    /// The commit that saves the value it shows, if it shows one: if that commit fails, the
    /// frame becomes an `internal` error.
    shows: Option<CommitId>,
}

/// The driver's writes and frames between the table and the disk.
#[derive(Debug)]
pub(crate) struct CommitPipeline {
    /// The commit that writes applied now go into.
    filling: CommitId,
    /// The commit running now, if any (always `filling - 1`).
    running: Option<CommitId>,
    /// Writes not yet durable, oldest first.
    writes: Vec<PendingWrite>,
    /// Frames waiting for a commit, in the order they were made.
    held: Vec<HeldFrame>,
    /// Sessions with held frames: how many, and the last commit one of them waits for.
    held_sessions: HashMap<SessionId, (usize, CommitId)>,
}

/// Entries the buffers keep room for once emptied; a burst's larger room is given back.
const CAPACITY_KEPT: usize = 4096;

impl CommitPipeline {
    pub(crate) fn new() -> CommitPipeline {
        CommitPipeline {
            filling: 1,
            running: None,
            writes: Vec::new(),
            held: Vec::new(),
            held_sessions: HashMap::new(),
        }
    }

    /// Records a write just applied to the table. Returns the commit it goes into, which its
    /// reply must wait for.
    pub(crate) fn write_applied(
        &mut self,
        resource: ResourceName,
        value: Arc<str>,
        previous: Option<Arc<str>>,
    ) -> CommitId {
        self.writes.push(PendingWrite {
            resource,
            value,
            previous,
            commit: self.filling,
        });
        self.filling
    }

    /// The commit that makes `resource`'s current value durable, if that has not happened yet.
    pub(crate) fn undurable_write(&self, resource: &ResourceName) -> Option<CommitId> {
        self.writes
            .iter()
            .rev()
            .find(|write| write.resource == *resource)
            .map(|write| write.commit)
    }

    /// `resource`'s value as the last finished commit left it (`Some(None)`: no value), if a
    /// write of it is not yet durable; `None` when its current value is durable. A watch's
    /// `resync` shows this, so that no watcher sees a value a failed commit could take back.
    pub(crate) fn durable_value(&self, resource: &ResourceName) -> Option<Option<Arc<str>>> {
        self.writes
            .iter()
            .find(|write| write.resource == *resource)
            .map(|write| write.previous.clone())
    }

    /// Returns `outgoing` if it may go out now, or holds it until commit `shows` (the one that
    /// saves the value it shows, if any) and every commit its session's earlier held frames
    /// wait for have finished.
    pub(crate) fn route(
        &mut self,
        outgoing: Outgoing,
        shows: Option<CommitId>,
    ) -> Option<Outgoing> {
        if shows.is_none() && self.held.is_empty() {
            return Some(outgoing);
        }
        let behind = self
            .held_sessions
            .get(&outgoing.session)
            .map(|&(_, commit)| commit);
        let Some(commit) = shows.max(behind) else {
            return Some(outgoing);
        };
        let entry = self
            .held_sessions
            .entry(outgoing.session)
            .or_insert((0, commit));
        entry.0 += 1;
        entry.1 = entry.1.max(commit);
        self.held.push(HeldFrame {
            outgoing,
            commit,
            shows,
        });
        None
    }

    /// Whether `session` has frames waiting for a commit.
    pub(crate) fn holds_frames_for(&self, session: SessionId) -> bool {
        self.held_sessions.contains_key(&session)
    }

    /// The next commit to run, when none is running and there is something to commit: the
    /// writes applied since the last one, and `tokens_reserved` (the table's wish, asked now).
    pub(crate) fn start_commit(
        &mut self,
        tokens_reserved: Option<u64>,
    ) -> Option<(CommitId, CommitBatch)> {
        if self.running.is_some() {
            return None;
        }
        // With nothing running, every pending write is in the commit being filled.
        let batch = CommitBatch {
            values: self
                .writes
                .iter()
                .map(|write| (write.resource.clone(), Arc::clone(&write.value)))
                .collect(),
            tokens_reserved,
        };
        if batch.is_empty() {
            return None;
        }
        let id = self.filling;
        self.running = Some(id);
        self.filling += 1;
        Some((id, batch))
    }

    /// Commit `id` (the running one) is durable. Returns the frames that may go out now, in
    /// the order they were made.
    pub(crate) fn commit_succeeded(&mut self, id: CommitId) -> Vec<Outgoing> {
        debug_assert_eq!(self.running, Some(id));
        self.running = None;
        let durable = self.writes.partition_point(|write| write.commit <= id);
        self.writes.drain(..durable);
        let ready = self.held.extract_if(.., |held| held.commit <= id).collect();
        self.release(ready, None)
    }

    /// Commit `id` (the running one) failed with `message`. Every write not yet durable must
    /// be undone: they are returned newest first, the order to undo them in. Every held frame
    /// may go out now, those that show a value of commit `id` or later (undone now) replaced by
    /// an `internal` error, or for a watch event, by a `resync` with a state still to fill in.
    pub(crate) fn commit_failed(
        &mut self,
        id: CommitId,
        message: &str,
    ) -> (Vec<PendingWrite>, Vec<Outgoing>) {
        debug_assert_eq!(self.running, Some(id));
        self.running = None;
        let mut undone = std::mem::take(&mut self.writes);
        undone.reverse();
        let held = std::mem::take(&mut self.held);
        (undone, self.release(held, Some((id, message))))
    }

    /// Takes `frames` out of the held set; with `failure` (a failed commit and its message),
    /// those that show a value it or a later commit was to save become `internal` errors.
    fn release(
        &mut self,
        frames: Vec<HeldFrame>,
        failure: Option<(CommitId, &str)>,
    ) -> Vec<Outgoing> {
        let released = frames
            .into_iter()
            .map(|held| {
                if let Some(entry) = self.held_sessions.get_mut(&held.outgoing.session) {
                    entry.0 -= 1;
                    if entry.0 == 0 {
                        self.held_sessions.remove(&held.outgoing.session);
                    }
                }
                let mut outgoing = held.outgoing;
                let undone = |(failed, _): (CommitId, &str)| held.shows >= Some(failed);
                if let Some((_, message)) = failure.filter(|&failure| undone(failure)) {
                    if let ServerFrame::Watch { event, .. } = &mut outgoing.frame {
                        // It shows or follows a value taken back: it becomes a resync, whose
                        // state the driver fills in once the writes are undone.
                        event.change = WatchChange::Resync(WatchState::default());
                    } else if let Some(id) = frame_id(&outgoing.frame) {
                        outgoing.frame = ServerFrame::error(
                            Some(id),
                            ErrorCode::Internal,
                            format!("the value was not saved: {message}"),
                        );
                    }
                }
                outgoing
            })
            .collect();
        // A burst (thousands of pipelined writes) must not stay allocated for the process's life.
        self.held.shrink_to(CAPACITY_KEPT);
        self.writes.shrink_to(CAPACITY_KEPT);
        released
    }
}

fn frame_id(frame: &ServerFrame) -> Option<RequestId> {
    match frame {
        ServerFrame::Ok { id, .. } | ServerFrame::Queued { id, .. } => Some(*id),
        ServerFrame::Err { id, .. } => *id,
        ServerFrame::Saved(_) | ServerFrame::Watch { .. } => None,
    }
}

#[cfg(test)]
mod tests {
    use protocol::ReplyBody;

    use super::*;

    fn name(resource: &str) -> ResourceName {
        ResourceName::new(resource).unwrap()
    }

    fn reply(session: u64, id: u64) -> Outgoing {
        Outgoing {
            session: SessionId(session),
            frame: ServerFrame::Ok {
                id: RequestId(id),
                body: ReplyBody::EMPTY,
            },
            answers: None,
        }
    }

    fn ids(frames: &[Outgoing]) -> Vec<(u64, u64)> {
        frames
            .iter()
            .map(|out| (out.session.0, frame_id(&out.frame).unwrap().0))
            .collect()
    }

    fn is_internal_error(out: &Outgoing) -> bool {
        matches!(&out.frame, ServerFrame::Err { error, .. } if error.code == ErrorCode::Internal)
    }

    #[test]
    fn the_durable_value_is_the_one_before_the_first_write_not_yet_durable() {
        let mut pipeline = CommitPipeline::new();
        assert_eq!(pipeline.durable_value(&name("r")), None);
        pipeline.write_applied(name("r"), Arc::from("v1"), Some(Arc::from("v0")));
        pipeline.write_applied(name("r"), Arc::from("v2"), Some(Arc::from("v1")));
        pipeline.write_applied(name("s"), Arc::from("w"), None);
        assert_eq!(
            pipeline.durable_value(&name("r")),
            Some(Some(Arc::from("v0")))
        );
        assert_eq!(pipeline.durable_value(&name("s")), Some(None));
        assert_eq!(pipeline.durable_value(&name("t")), None);
    }

    #[test]
    fn frames_that_wait_for_nothing_go_out_at_once() {
        let mut pipeline = CommitPipeline::new();
        assert!(pipeline.route(reply(1, 1), None).is_some());
        assert!(pipeline.start_commit(None).is_none(), "nothing to commit");
    }

    #[test]
    fn a_write_reply_waits_for_its_commit_and_its_session_waits_behind_it() {
        let mut pipeline = CommitPipeline::new();
        let commit = pipeline.write_applied(name("r"), Arc::from("v"), None);
        assert!(pipeline.route(reply(1, 1), Some(commit)).is_none());
        // The same session's next reply waits behind it; another session's does not.
        assert!(pipeline.route(reply(1, 2), None).is_none());
        assert!(pipeline.route(reply(2, 1), None).is_some());
        assert!(pipeline.holds_frames_for(SessionId(1)));

        let (id, batch) = pipeline.start_commit(None).unwrap();
        assert_eq!(id, commit);
        assert_eq!(batch.values, vec![(name("r"), Arc::from("v"))]);
        assert_eq!(ids(&pipeline.commit_succeeded(id)), vec![(1, 1), (1, 2)]);
        assert!(!pipeline.holds_frames_for(SessionId(1)));
        assert_eq!(pipeline.undurable_write(&name("r")), None);
    }

    #[test]
    fn writes_made_during_a_commit_go_into_the_next_and_their_frames_wait_for_it() {
        let mut pipeline = CommitPipeline::new();
        let first = pipeline.write_applied(name("a"), Arc::from("1"), None);
        pipeline.route(reply(1, 1), Some(first));
        let (running, _) = pipeline.start_commit(None).unwrap();
        assert!(pipeline.start_commit(Some(7)).is_none(), "one at a time");

        let second = pipeline.write_applied(name("b"), Arc::from("2"), None);
        assert!(second > running);
        pipeline.route(reply(2, 1), Some(second));
        // A read of the first value waits only for the running commit.
        assert_eq!(pipeline.undurable_write(&name("a")), Some(first));
        pipeline.route(reply(3, 1), Some(first));

        assert_eq!(
            ids(&pipeline.commit_succeeded(running)),
            vec![(1, 1), (3, 1)]
        );
        let (next, batch) = pipeline.start_commit(Some(7)).unwrap();
        assert_eq!(next, second);
        assert_eq!(batch.values, vec![(name("b"), Arc::from("2"))]);
        assert_eq!(batch.tokens_reserved, Some(7));
        assert_eq!(ids(&pipeline.commit_succeeded(next)), vec![(2, 1)]);
    }

    #[test]
    fn a_failed_commit_undoes_every_pending_write_newest_first_and_fails_their_frames() {
        let mut pipeline = CommitPipeline::new();
        let first = pipeline.write_applied(name("r"), Arc::from("one"), Some(Arc::from("safe")));
        pipeline.route(reply(1, 1), Some(first));
        let (running, _) = pipeline.start_commit(None).unwrap();
        let second = pipeline.write_applied(name("r"), Arc::from("two"), Some(Arc::from("one")));
        pipeline.route(reply(1, 2), Some(second));
        pipeline.route(reply(1, 3), None);

        let (undone, frames) = pipeline.commit_failed(running, "disk on fire");
        let previous: Vec<_> = undone.iter().map(|w| w.previous.as_deref()).collect();
        assert_eq!(previous, vec![Some("one"), Some("safe")], "newest first");
        assert_eq!(ids(&frames), vec![(1, 1), (1, 2), (1, 3)]);
        assert!(is_internal_error(&frames[0]) && is_internal_error(&frames[1]));
        assert!(
            !is_internal_error(&frames[2]),
            "an ordering wait is sent as it is"
        );
        assert!(!pipeline.holds_frames_for(SessionId(1)));
        assert!(
            pipeline.start_commit(None).is_none(),
            "nothing left to commit"
        );
    }

    #[test]
    fn a_watch_event_of_an_undone_write_comes_back_as_a_resync_to_fill_in() {
        use protocol::cmd::WatchEvent;
        let mut pipeline = CommitPipeline::new();
        let commit = pipeline.write_applied(name("r"), Arc::from("v"), None);
        let written = WatchEvent {
            resource: name("r"),
            change: WatchChange::Written {
                token: protocol::FenceToken(1),
                value: "v".to_owned(),
            },
        };
        let event = Outgoing {
            session: SessionId(2),
            frame: ServerFrame::Watch {
                id: RequestId(7),
                event: written,
            },
            answers: None,
        };
        assert!(pipeline.route(event, Some(commit)).is_none());
        let (running, _) = pipeline.start_commit(None).unwrap();
        let (_, frames) = pipeline.commit_failed(running, "disk on fire");
        let [Outgoing {
            frame: ServerFrame::Watch { id, event },
            ..
        }] = &frames[..]
        else {
            panic!("{frames:?}");
        };
        assert_eq!(*id, RequestId(7));
        assert_eq!(event.change, WatchChange::Resync(WatchState::default()));
    }

    /// Random writes, reads, lock replies, commits and failures, with the pipeline's promises
    /// checked on every frame it lets out.
    mod properties {
        use std::collections::HashMap;

        use proptest::prelude::*;

        use super::*;

        #[derive(Debug, Clone)]
        enum Step {
            Write { session: u64, resource: usize },
            Read { session: u64, resource: usize },
            Lock { session: u64 },
            StartCommit,
            Succeed,
            Fail,
        }

        fn step() -> impl Strategy<Value = Step> {
            let session = 1..5u64;
            let resource = 0..3usize;
            prop_oneof![
                3 => (session.clone(), resource.clone())
                    .prop_map(|(session, resource)| Step::Write { session, resource }),
                2 => (session.clone(), resource)
                    .prop_map(|(session, resource)| Step::Read { session, resource }),
                3 => session.prop_map(|session| Step::Lock { session }),
                2 => Just(Step::StartCommit),
                2 => Just(Step::Succeed),
                1 => Just(Step::Fail),
            ]
        }

        /// What the test remembers of a frame it routed: the commit its content depends on.
        struct Routed {
            depends_on: Option<CommitId>,
            released: bool,
        }

        struct Model {
            pipeline: CommitPipeline,
            /// Frames by (session, id); ids count up per session in routing order.
            routed: HashMap<(u64, u64), Routed>,
            next_id: HashMap<u64, u64>,
            /// The last id let out per session.
            last_out: HashMap<u64, u64>,
            /// Commits that finished well, and those that failed (with every write undone).
            succeeded: Vec<CommitId>,
            failed: Vec<CommitId>,
            running: Option<CommitId>,
        }

        impl Model {
            fn route(
                &mut self,
                session: u64,
                shows: Option<CommitId>,
            ) -> Result<(), TestCaseError> {
                let id = self.next_id.entry(session).or_insert(0);
                *id += 1;
                let id = *id;
                self.routed.insert(
                    (session, id),
                    Routed {
                        depends_on: shows,
                        released: false,
                    },
                );
                if let Some(out) = self.pipeline.route(reply(session, id), shows) {
                    self.let_out(&[out], false)?;
                }
                Ok(())
            }

            fn let_out(
                &mut self,
                frames: &[Outgoing],
                after_failure: bool,
            ) -> Result<(), TestCaseError> {
                for out in frames {
                    let session = out.session.0;
                    let id = frame_id(&out.frame).unwrap().0;
                    let last = self.last_out.insert(session, id).unwrap_or(0);
                    prop_assert_eq!(last + 1, id, "session {}'s replies out of order", session);
                    let routed = self.routed.get_mut(&(session, id)).unwrap();
                    prop_assert!(!routed.released, "released twice");
                    routed.released = true;
                    match routed.depends_on {
                        // It shows a value: out only once that value is durable, or as an
                        // error once its commit (or an earlier one) failed.
                        Some(commit) if is_internal_error(out) => {
                            prop_assert!(after_failure && !self.succeeded.contains(&commit));
                        }
                        Some(commit) => prop_assert!(self.succeeded.contains(&commit)),
                        None => prop_assert!(!is_internal_error(out)),
                    }
                }
                Ok(())
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

            #[test]
            fn frames_wait_for_exactly_what_they_show(steps in prop::collection::vec(step(), 1..80)) {
                let mut model = Model {
                    pipeline: CommitPipeline::new(),
                    routed: HashMap::new(),
                    next_id: HashMap::new(),
                    last_out: HashMap::new(),
                    succeeded: Vec::new(),
                    failed: Vec::new(),
                    running: None,
                };
                // The steps, then enough commits to let every frame out.
                let drain = [Step::StartCommit, Step::Succeed, Step::StartCommit, Step::Succeed];
                for step in steps.into_iter().chain(drain) {
                    match step {
                        Step::Write { session, resource } => {
                            let commit = model.pipeline.write_applied(name(&format!("r{resource}")), Arc::from("v"), None);
                            prop_assert!(model.running.is_none_or(|running| commit > running));
                            model.route(session, Some(commit))?;
                        }
                        Step::Read { session, resource } => {
                            let waits_for = model.pipeline.undurable_write(&name(&format!("r{resource}")));
                            if let Some(commit) = waits_for {
                                prop_assert!(!model.succeeded.contains(&commit));
                            }
                            model.route(session, waits_for)?;
                        }
                        Step::Lock { session } => model.route(session, None)?,
                        Step::StartCommit => {
                            if let Some((id, batch)) = model.pipeline.start_commit(None) {
                                prop_assert!(model.running.is_none(), "two commits at once");
                                prop_assert!(!batch.values.is_empty());
                                model.running = Some(id);
                            }
                        }
                        Step::Succeed => {
                            if let Some(id) = model.running.take() {
                                model.succeeded.push(id);
                                let out = model.pipeline.commit_succeeded(id);
                                model.let_out(&out, false)?;
                            }
                        }
                        Step::Fail => {
                            if let Some(id) = model.running.take() {
                                model.failed.push(id);
                                let (_, out) = model.pipeline.commit_failed(id, "disk");
                                model.let_out(&out, true)?;
                                prop_assert!(model.pipeline.held.is_empty());
                                prop_assert!(model.pipeline.writes.is_empty());
                            }
                        }
                    }
                }
                prop_assert!(model.routed.values().all(|routed| routed.released), "a frame was never let out");
                prop_assert!(model.pipeline.held_sessions.is_empty());
            }
        }
    }
}
