//! Fake-clock tests of what the table offers operators: forced releases, and the observations
//! that metrics are made of (grants, and holds and waits that ended, with their durations).

use std::time::Duration;

use protocol::{FenceToken, LockMode, RequestId};

use super::harness::*;
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn harness() -> Harness {
    Harness::new(TableConfig::default())
}

#[test]
fn a_forced_release_ends_the_holders_session_and_hands_the_lock_to_the_next_waiter() {
    let mut h = harness();
    let [stuck, next, other] = [h.session(), h.session(), h.session()];
    h.acquire(stuck, 1, "deploy", X);
    h.acquire(stuck, 2, "cache", S);
    h.acquire(next, 1, "deploy", X);
    h.acquire(other, 1, "cache", X);
    h.advance(1_500);
    h.observations();

    let forced = h.table.handle_force_release(h.now, &name("deploy"), None);
    assert_eq!(
        forced,
        vec![ForcedRelease {
            session: stuck,
            token: FenceToken(1),
            mode: X,
            held: ms(1_500),
        }]
    );
    // The queue moves on through the table, as after a release, and the evicted session's
    // other lock goes too. No effect names the evicted session: the caller closes it.
    assert_eq!(
        h.effects(),
        vec![
            granted(other, 1, "cache", 3, X),
            granted(next, 1, "deploy", 4, X)
        ]
    );
    assert_eq!(h.holders("deploy"), vec![(next, X, 4)]);
    assert_eq!(h.table.session_count(), 2);
    // Anything the evicted session still sends finds its session gone.
    assert_eq!(
        h.table
            .handle_release(h.now, stuck, &name("deploy"), FenceToken(1)),
        Err(LockError::SessionGone)
    );
    let forced_end = HoldEnd::SessionEnded(SessionEnd::Forced);
    assert_eq!(
        h.observations(),
        vec![
            Observation::HoldEnded {
                mode: S,
                held: ms(1_500),
                reason: forced_end
            },
            Observation::HoldEnded {
                mode: X,
                held: ms(1_500),
                reason: forced_end
            },
            Observation::Granted {
                mode: X,
                permits: None,
                waited: ms(1_500)
            },
            Observation::Granted {
                mode: X,
                permits: None,
                waited: ms(1_500)
            },
        ]
    );
}

#[test]
fn a_forced_release_with_a_token_ends_only_that_shared_holder() {
    let mut h = harness();
    let [a, b, writer] = [h.session(), h.session(), h.session()];
    h.acquire(a, 1, "f", S);
    h.acquire(b, 1, "f", S);
    h.acquire(writer, 1, "f", X);

    let forced = h
        .table
        .handle_force_release(h.now, &name("f"), Some(FenceToken(2)));
    assert_eq!(forced.len(), 1);
    assert_eq!(forced[0].session, b);
    assert_eq!(h.effects(), vec![], "a still holds f, so the writer waits");
    assert_eq!(h.holders("f"), vec![(a, S, 1)]);

    // Without a token, every holder goes.
    let forced = h.table.handle_force_release(h.now, &name("f"), None);
    assert_eq!(forced.iter().map(|f| f.session).collect::<Vec<_>>(), [a]);
    assert_eq!(h.effects(), vec![granted(writer, 1, "f", 3, X)]);
}

#[test]
fn forcing_a_lock_nobody_holds_changes_nothing() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.acquire(b, 1, "f", X);
    h.observations();
    assert_eq!(
        h.table.handle_force_release(h.now, &name("idle"), None),
        vec![]
    );
    assert_eq!(
        h.table
            .handle_force_release(h.now, &name("f"), Some(FenceToken(7))),
        vec![],
        "a token nobody holds"
    );
    assert_eq!(h.effects(), vec![]);
    assert_eq!(h.observations(), vec![]);
    assert_eq!(h.holders("f"), vec![(a, X, 1)]);
    assert_eq!(h.table.session_count(), 2);
}

#[test]
fn observations_time_every_grant_hold_and_wait_and_say_why_each_ended() {
    let mut h = harness();
    let [a, b, c, d] = [h.session(), h.session(), h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.acquire(b, 1, "f", S);
    h.table
        .handle_acquire(h.now, c, RequestId(1), name("f"), X, Some(ms(300)), None)
        .unwrap();
    h.acquire(d, 1, "f", X);
    h.advance(100);
    h.table.handle_cancel(h.now, d, RequestId(1)).unwrap();
    h.advance(200); // c's timeout runs out
    h.table
        .handle_release(h.now, a, &name("f"), FenceToken(1))
        .unwrap();
    h.advance(50);
    h.table.handle_session_closed(h.now, b);
    use Observation::*;
    assert_eq!(
        h.observations(),
        vec![
            Granted {
                mode: X,
                permits: None,
                waited: Duration::ZERO
            },
            WaitEnded {
                mode: X,
                waited: ms(100),
                reason: WaitEnd::Cancelled
            },
            WaitEnded {
                mode: X,
                waited: ms(300),
                reason: WaitEnd::Timeout
            },
            HoldEnded {
                mode: X,
                held: ms(300),
                reason: HoldEnd::Released
            },
            Granted {
                mode: S,
                permits: None,
                waited: ms(300)
            },
            HoldEnded {
                mode: S,
                held: ms(50),
                reason: HoldEnd::SessionEnded(SessionEnd::Disconnected)
            },
        ]
    );
}

#[test]
fn an_expired_session_reports_its_holds_and_waits_as_expired() {
    let mut h = harness();
    let [silent, other] = [h.session(), h.session()];
    h.acquire(other, 1, "g", X);
    h.acquire(silent, 1, "f", X);
    h.acquire(silent, 2, "g", S);
    h.observations();
    h.table.touch(h.now + ms(15_000), other);
    h.advance(15_000);
    assert_eq!(
        h.effects(),
        vec![Effect::SessionExpired { session: silent }]
    );
    let expired = SessionEnd::Expired;
    assert_eq!(
        h.observations(),
        vec![
            Observation::HoldEnded {
                mode: X,
                held: ms(15_000),
                reason: HoldEnd::SessionEnded(expired)
            },
            Observation::WaitEnded {
                mode: S,
                waited: ms(15_000),
                reason: WaitEnd::SessionEnded(expired)
            },
        ]
    );
}
