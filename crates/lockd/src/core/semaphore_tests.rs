//! Semaphore tests on a fake clock: permits up to the limit, strict FIFO, how a limit is set and
//! forgotten, what a mismatch does, and the wait-for edges that permits add to the deadlock
//! search. Each checks the exact replies and effects.

use std::num::NonZeroU16;
use std::sync::Arc;
use std::time::Duration;

use protocol::{ErrorCode, FenceToken, LockMode, RequestId};

use super::harness::*;
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn harness() -> Harness {
    Harness::new(TableConfig::default())
}

fn limit(n: u16) -> Option<NonZeroU16> {
    NonZeroU16::new(n)
}

/// The limit and permits in use that `status` reports for `resource`.
fn usage(h: &Harness, resource: &str) -> (Option<u16>, Option<u32>) {
    let status = h.table.status(h.now, Some(&name(resource)));
    (status[0].limit, status[0].permits_used)
}

#[test]
fn permits_are_granted_up_to_the_limit_each_with_its_own_token() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire_permits(a, 1, "e", 2, 4, None), Ok(granted_now(1)));
    assert_eq!(h.acquire_permits(b, 1, "e", 2, 4, None), Ok(granted_now(2)));
    assert_eq!(h.acquire_permits(c, 1, "e", 1, 4, None), Ok(queued(1)));
    assert_eq!(usage(&h, "e"), (Some(4), Some(4)));
    assert_eq!(h.holders("e"), vec![(a, S, 1), (b, S, 2)]);
    let status = h.table.status(h.now, Some(&name("e")));
    assert_eq!(status[0].holders[0].permits, Some(2));
    assert_eq!(status[0].waiters[0].permits, Some(1));

    h.release(a, "e", 1).unwrap();
    assert_eq!(h.effects(), vec![granted_permits(c, 1, "e", 3, (1, 4))]);
    assert_eq!(usage(&h, "e"), (Some(4), Some(3)));
    h.release(b, "e", 2).unwrap();
    h.release(c, "e", 3).unwrap();
    assert_eq!(h.effects(), vec![]);
    assert!(h.table.status(h.now, None).is_empty(), "idle: dropped");
    assert_eq!(usage(&h, "e"), (None, None), "and its limit forgotten");
}

#[test]
fn a_large_waiter_is_never_overtaken_by_later_small_ones() {
    let mut h = harness();
    let [a, x, big, small] = [h.session(), h.session(), h.session(), h.session()];
    assert_eq!(h.acquire_permits(a, 1, "e", 2, 4, None), Ok(granted_now(1)));
    assert_eq!(h.acquire_permits(x, 1, "e", 1, 4, None), Ok(granted_now(2)));
    assert_eq!(h.acquire_permits(big, 1, "e", 4, 4, None), Ok(queued(1)));
    // One permit is free, but the small request waits behind the big one.
    assert_eq!(h.acquire_permits(small, 1, "e", 1, 4, None), Ok(queued(2)));
    h.release(x, "e", 2).unwrap();
    assert_eq!(
        h.effects(),
        vec![],
        "two permits free; the big one needs four"
    );
    h.release(a, "e", 1).unwrap();
    assert_eq!(h.effects(), vec![granted_permits(big, 1, "e", 3, (4, 4))]);
    h.release(big, "e", 3).unwrap();
    assert_eq!(h.effects(), vec![granted_permits(small, 1, "e", 4, (1, 4))]);
}

#[test]
fn a_release_grants_every_waiter_at_the_front_that_fits_in_order() {
    let mut h = harness();
    let [a, b, c, d] = [h.session(), h.session(), h.session(), h.session()];
    assert_eq!(h.acquire_permits(a, 1, "e", 4, 4, None), Ok(granted_now(1)));
    assert_eq!(h.acquire_permits(b, 1, "e", 1, 4, None), Ok(queued(1)));
    assert_eq!(h.acquire_permits(c, 1, "e", 2, 4, None), Ok(queued(2)));
    assert_eq!(h.acquire_permits(d, 1, "e", 2, 4, None), Ok(queued(3)));
    h.release(a, "e", 1).unwrap();
    // b and c fit (3 of 4); d would make 5, so it waits, first in line.
    assert_eq!(
        h.effects(),
        vec![
            granted_permits(b, 1, "e", 2, (1, 4)),
            granted_permits(c, 1, "e", 3, (2, 4)),
        ]
    );
    assert_eq!(h.waiters("e"), vec![d]);
    assert_eq!(usage(&h, "e"), (Some(4), Some(3)));
    h.release(b, "e", 2).unwrap();
    assert_eq!(h.effects(), vec![granted_permits(d, 1, "e", 4, (2, 4))]);
}

#[test]
fn the_first_acquirer_sets_the_limit_and_others_must_agree() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    assert_eq!(h.acquire_permits(a, 1, "e", 1, 4, None), Ok(granted_now(1)));
    let err = h.acquire_permits(b, 1, "e", 1, 5, None).unwrap_err();
    assert_eq!(
        err,
        LockError::LimitMismatch {
            resource: name("e"),
            asked: limit(5),
            current: limit(4),
        }
    );
    assert_eq!(err.code(), ErrorCode::LimitMismatch);
    assert_eq!(
        err.to_string(),
        "semaphore e has limit 4, not 5; every acquirer must give the same limit (a limit is \
         forgotten once nobody holds or waits for the resource)"
    );
    // A lock on a semaphore is refused the same way, and so are permits of a lock.
    let err = h.try_acquire(b, 2, "e", X, None).unwrap_err();
    assert_eq!(err.code(), ErrorCode::LimitMismatch);
    assert!(
        err.to_string().contains("acquire permits with limit 4"),
        "{err}"
    );
    assert_eq!(h.acquire(b, 3, "l", S), granted_now(2));
    let err = h.acquire_permits(a, 2, "l", 1, 4, None).unwrap_err();
    assert_eq!(
        err,
        LockError::LimitMismatch {
            resource: name("l"),
            asked: limit(4),
            current: None,
        }
    );
    assert_eq!(h.waiters("e"), vec![], "nothing was queued");
    assert_eq!(usage(&h, "e"), (Some(4), Some(1)));

    // Once idle, the resource takes whatever the next acquirer says.
    h.release(a, "e", 1).unwrap();
    assert_eq!(h.acquire_permits(b, 4, "e", 5, 5, None), Ok(granted_now(3)));
    assert_eq!(usage(&h, "e"), (Some(5), Some(5)));
    h.release(b, "e", 3).unwrap();
    assert_eq!(h.acquire(a, 3, "e", X), granted_now(4));
}

#[test]
fn a_limit_set_by_a_waiter_of_an_idle_resource_holds_while_it_waits() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    // A lock-delay leaves the resource idle but ungrantable, so the first acquirer queues.
    let holder = h.session();
    h.table
        .handle_acquire(
            h.now,
            holder,
            RequestId(1),
            name("e"),
            permits_of(1, 2),
            None,
            Some(Duration::from_millis(100)),
        )
        .unwrap();
    h.table.handle_session_closed(h.now, holder);
    assert_eq!(h.acquire_permits(a, 1, "e", 1, 3, None), Ok(queued(1)));
    assert_eq!(
        h.acquire_permits(b, 1, "e", 1, 2, None).unwrap_err().code(),
        ErrorCode::LimitMismatch
    );
    h.advance(100);
    assert_eq!(h.effects(), vec![granted_permits(a, 1, "e", 2, (1, 3))]);
}

#[test]
fn permit_holders_may_read_but_not_write() {
    let mut h = harness();
    let a = h.session();
    h.acquire_permits(a, 1, "e", 1, 2, None).unwrap();
    assert_eq!(h.table.read(a, &name("e"), FenceToken(1)), Ok(None));
    assert_eq!(
        h.table
            .handle_write(a, &name("e"), FenceToken(1), Arc::from("v"))
            .unwrap_err()
            .code(),
        ErrorCode::NotExclusive
    );
}

#[test]
fn a_large_waiter_that_times_out_lets_the_smaller_ones_behind_it_go() {
    let mut h = harness();
    let [a, big, small] = [h.session(), h.session(), h.session()];
    h.acquire_permits(a, 1, "e", 3, 4, None).unwrap();
    assert_eq!(
        h.acquire_permits(big, 1, "e", 2, 4, Some(100)),
        Ok(queued(1))
    );
    assert_eq!(h.acquire_permits(small, 1, "e", 1, 4, None), Ok(queued(2)));
    h.advance(100);
    assert_eq!(
        h.effects(),
        vec![
            failed(big, 1, "e", WaitFailure::Timeout),
            granted_permits(small, 1, "e", 2, (1, 4)),
        ]
    );
}

#[test]
fn a_closed_session_gives_its_permits_back() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire_permits(a, 1, "e", 2, 2, None).unwrap();
    assert_eq!(h.acquire_permits(b, 1, "e", 2, 2, None), Ok(queued(1)));
    h.table.handle_session_closed(h.now, a);
    assert_eq!(h.effects(), vec![granted_permits(b, 1, "e", 2, (2, 2))]);
    assert_eq!(
        h.acquire_permits(b, 2, "e", 1, 2, Some(0))
            .unwrap_err()
            .code(),
        ErrorCode::AlreadyHeld,
        "not re-entrant, as locks"
    );
}

#[test]
fn a_holder_whose_permits_alone_block_a_request_closes_a_cycle() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire_permits(a, 1, "s", 2, 3, None).unwrap();
    h.acquire(b, 1, "x", X);
    assert_eq!(h.acquire(a, 2, "x", X), queued(1));
    // b's two permits do not fit beside a's two, whoever else releases.
    let cycle = deadlock(h.acquire_permits(b, 2, "s", 2, 3, None));
    assert_eq!(
        cycle,
        format!("session {b} waits for s held by session {a}; session {a} waits for x held by session {b}")
    );
}

#[test]
fn a_cycle_through_one_of_several_small_holders_is_no_deadlock() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire_permits(a, 1, "s", 1, 3, None).unwrap();
    h.acquire_permits(c, 1, "s", 1, 3, None).unwrap();
    h.acquire(b, 1, "x", X);
    assert_eq!(h.acquire(a, 2, "x", X), queued(1));
    // b needs either a or c to release; c will, so b waits rather than fail.
    assert_eq!(h.acquire_permits(b, 2, "s", 2, 3, None), Ok(queued(1)));
    h.release(c, "s", 2).unwrap();
    assert_eq!(h.effects(), vec![granted_permits(b, 2, "s", 4, (2, 3))]);
}

#[test]
fn a_request_behind_a_blocked_waiter_waits_for_it_even_when_it_would_fit() {
    let mut h = harness();
    let [holder, ahead, newcomer] = [h.session(), h.session(), h.session()];
    h.acquire(newcomer, 1, "x", X);
    h.acquire_permits(holder, 1, "s", 3, 4, None).unwrap();
    assert_eq!(h.acquire(holder, 2, "x", X), queued(1));
    assert_eq!(h.acquire_permits(ahead, 1, "s", 2, 4, None), Ok(queued(1)));
    // One permit would fit beside the holder's three, but FIFO puts it behind `ahead`, which
    // waits for the holder, which waits for the newcomer's x.
    let cycle = deadlock(h.acquire_permits(newcomer, 2, "s", 1, 4, None));
    assert!(
        cycle.contains(&format!(
            "session {newcomer} waits for s queued behind session {ahead}"
        )),
        "{cycle}"
    );
}

#[test]
fn an_image_keeps_the_limit_the_permits_and_the_order() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire_permits(a, 1, "e", 3, 4, None).unwrap();
    h.acquire_permits(b, 1, "e", 2, 4, None).unwrap();
    h.acquire_permits(c, 1, "e", 1, 4, None).unwrap();
    let origin = h.now;
    let image = h.table.to_image(origin);
    let json = serde_json::to_string(&image).unwrap();
    let mut copy = Harness {
        table: LockTable::from_image(
            TableConfig::default(),
            serde_json::from_str(&json).unwrap(),
            origin,
        )
        .unwrap(),
        now: h.now,
    };
    assert_eq!(copy.table.to_image(origin), image);
    let d = copy.session();
    assert_eq!(
        copy.acquire_permits(d, 1, "e", 1, 8, None)
            .unwrap_err()
            .code(),
        ErrorCode::LimitMismatch
    );
    copy.release(a, "e", 1).unwrap();
    assert_eq!(
        copy.effects(),
        vec![
            granted_permits(b, 1, "e", 2, (2, 4)),
            granted_permits(c, 1, "e", 3, (1, 4)),
        ]
    );
}

#[test]
fn an_image_with_more_permits_than_its_limit_allows_is_refused() {
    let mut h = harness();
    let a = h.session();
    h.acquire_permits(a, 1, "e", 2, 4, None).unwrap();
    let mut json = serde_json::to_value(h.table.to_image(h.now)).unwrap();
    json["queues"][0]["limit"] = serde_json::json!(1);
    let image: TableImage = serde_json::from_value(json).unwrap();
    let err = LockTable::from_image(TableConfig::default(), image, h.now).unwrap_err();
    assert!(
        err.to_string()
            .contains("`permits` must be from 1 to the limit 1"),
        "{err}"
    );
}
