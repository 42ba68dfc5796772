//! Watch tests on a fake clock: the exact events each change makes, in table order.

use std::sync::Arc;

use protocol::cmd::{WatchChange, WatchEvent, WatchHolder, WatchState};
use protocol::{FenceToken, LockMode, RequestId, SessionId};

use super::harness::*;
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn harness() -> Harness {
    Harness::new(TableConfig {
        max_watches_per_session: 2,
        ..TableConfig::default()
    })
}

fn holder(session: SessionId, token: u64, mode: LockMode) -> WatchHolder {
    WatchHolder {
        session,
        token: FenceToken(token),
        mode,
        value: None,
    }
}

fn event(session: SessionId, watch: u64, resource: &str, change: WatchChange) -> Effect {
    Effect::Watch {
        session,
        watch: RequestId(watch),
        event: WatchEvent {
            resource: name(resource),
            change,
        },
    }
}

fn state(holders: Vec<WatchHolder>, value: Option<&str>, queue: u64) -> WatchChange {
    WatchChange::State(WatchState {
        holders,
        value: value.map(str::to_owned),
        queue,
    })
}

impl Harness {
    fn watch(&mut self, session: SessionId, watch: u64, resource: &str) -> Result<(), LockError> {
        self.table
            .handle_watch(session, RequestId(watch), name(resource))
    }
}

#[test]
fn the_first_event_is_the_current_state() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    h.table
        .handle_write(a, &name("f"), FenceToken(1), Arc::from("v1"))
        .unwrap();
    assert_eq!(h.acquire(b, 1, "f", X), queued(1));
    h.effects();
    h.watch(w, 7, "f").unwrap();
    assert_eq!(
        h.effects(),
        vec![event(
            w,
            7,
            "f",
            state(vec![holder(a, 1, X)], Some("v1"), 1)
        )]
    );
    h.watch(w, 8, "idle").unwrap();
    assert_eq!(
        h.effects(),
        vec![event(w, 8, "idle", state(vec![], None, 0))]
    );
}

#[test]
fn grants_releases_writes_and_the_queue_are_reported_in_table_order() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    h.watch(w, 7, "f").unwrap();
    h.effects();

    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(
        h.effects(),
        vec![event(w, 7, "f", WatchChange::Granted(holder(a, 1, X)))]
    );
    h.table
        .handle_write(a, &name("f"), FenceToken(1), Arc::from("x"))
        .unwrap();
    assert_eq!(
        h.effects(),
        vec![event(
            w,
            7,
            "f",
            WatchChange::Written {
                token: FenceToken(1),
                value: "x".to_owned()
            }
        )]
    );
    assert_eq!(h.acquire(b, 2, "f", S), queued(1));
    assert_eq!(
        h.effects(),
        vec![event(w, 7, "f", WatchChange::Queue { queue: 1 })]
    );
    h.release(a, "f", 1).unwrap();
    assert_eq!(
        h.effects(),
        vec![
            event(w, 7, "f", WatchChange::Released(holder(a, 1, X))),
            granted(b, 2, "f", 2, S),
            event(w, 7, "f", WatchChange::Granted(holder(b, 2, S))),
            event(w, 7, "f", WatchChange::Queue { queue: 0 }),
        ]
    );
    // Another resource's changes are not this watch's business.
    assert_eq!(h.acquire(a, 3, "g", X), granted_now(3));
    assert_eq!(h.effects(), vec![]);
}

#[test]
fn an_expired_holder_and_a_closed_one_are_told_apart() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    h.watch(w, 7, "f").unwrap();
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    h.effects();
    h.table.handle_session_closed(h.now, a);
    assert_eq!(
        h.effects(),
        vec![event(w, 7, "f", WatchChange::Released(holder(a, 1, X)))]
    );
    assert_eq!(h.acquire(b, 1, "f", X), granted_now(2));
    h.effects();
    h.table.handle_session_expired(h.now, b);
    assert_eq!(
        h.effects(),
        vec![
            Effect::SessionExpired { session: b },
            event(w, 7, "f", WatchChange::Expired(holder(b, 2, X))),
        ]
    );
}

#[test]
fn a_timed_out_waiter_changes_the_queue() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(h.try_acquire(b, 1, "f", X, Some(50)), Ok(queued(1)));
    h.watch(w, 7, "f").unwrap();
    h.effects();
    h.table.touch(h.now + ms(50), a);
    h.table.touch(h.now + ms(50), w);
    h.advance(50);
    assert_eq!(
        h.effects(),
        vec![
            failed(b, 1, "f", WaitFailure::Timeout),
            event(w, 7, "f", WatchChange::Queue { queue: 0 }),
        ]
    );
}

#[test]
fn unwatch_and_the_end_of_the_session_end_the_events() {
    let mut h = harness();
    let [a, w] = [h.session(), h.session()];
    h.watch(w, 7, "f").unwrap();
    h.effects();
    h.table.handle_unwatch(w, RequestId(7)).unwrap();
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(h.effects(), vec![]);
    assert_eq!(
        h.table.handle_unwatch(w, RequestId(7)),
        Err(LockError::NoSuchWatch(RequestId(7)))
    );

    h.watch(w, 8, "f").unwrap();
    h.effects();
    h.table.handle_session_closed(h.now, w);
    assert_eq!(h.table.watch_count(), 0);
    h.release(a, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![]);
}

#[test]
fn a_session_has_a_limited_number_of_watches_with_distinct_ids() {
    let mut h = harness();
    let w = h.session();
    h.watch(w, 1, "f").unwrap();
    assert_eq!(
        h.watch(w, 1, "g"),
        Err(LockError::DuplicateWatchId(RequestId(1)))
    );
    h.watch(w, 2, "f").unwrap();
    assert_eq!(
        h.watch(w, 3, "g"),
        Err(LockError::TooManyWatches { watches: 2 })
    );
    assert_eq!(h.table.watch_count(), 2);
    assert_eq!(
        h.table.handle_watch(SessionId(99), RequestId(1), name("f")),
        Err(LockError::SessionGone)
    );
}

#[test]
fn watches_survive_a_table_image_and_keep_making_events() {
    let mut h = harness();
    let [a, w] = [h.session(), h.session()];
    h.watch(w, 7, "f").unwrap();
    h.effects();
    let origin = h.now;
    let image = h.table.to_image(origin);
    h.table = LockTable::from_image(h.table.config().clone(), image, origin).unwrap();
    assert_eq!(h.table.watch_count(), 1);
    assert_eq!(h.table.session_watches(w), vec![(RequestId(7), name("f"))]);
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(
        h.effects(),
        vec![event(w, 7, "f", WatchChange::Granted(holder(a, 1, X)))]
    );
}
