//! Multi-resource acquire tests on a fake clock: all or nothing, one ticket in every queue,
//! FIFO in each, no trace after a timeout, cancel or close, the wait-for edges a group adds to
//! the deadlock search, and the refusals. Each checks the exact replies and effects.

use std::time::Duration;

use protocol::{ErrorCode, LockMode, RequestId};

use super::harness::*;
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn harness() -> Harness {
    Harness::new(TableConfig::default())
}

/// Who waits in `resource`, and the group each waits with (empty for a single acquire).
fn line(h: &Harness, resource: &str) -> Vec<(protocol::SessionId, Vec<String>)> {
    let status = h.table.status(h.now, Some(&name(resource)));
    status[0]
        .waiters
        .iter()
        .map(|w| {
            let group = w.group.iter().flatten().map(|r| r.to_string()).collect();
            (w.session, group)
        })
        .collect()
}

fn ab() -> Vec<String> {
    vec!["a".into(), "b".into()]
}

#[test]
fn free_resources_are_granted_at_once_with_a_token_each_in_request_order() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    assert_eq!(
        h.acquire_many(a, 1, &[("b", X), ("a", S)], None),
        Ok(all_now(&[1, 2]))
    );
    assert_eq!(h.holders("b"), vec![(a, X, 1)]);
    assert_eq!(h.holders("a"), vec![(a, S, 2)]);
    // Members are ordinary holds: shared beside others, released one by one.
    assert_eq!(h.acquire(b, 1, "a", S), granted_now(3));
    h.release(a, "b", 1).unwrap();
    h.release(a, "a", 2).unwrap();
    assert_eq!(h.holders("a"), vec![(b, S, 3)]);
    assert_eq!(h.effects(), vec![]);
    assert_eq!(h.table.group_waiter_count(), 0);
}

#[test]
fn a_group_waits_in_every_queue_holding_nothing_and_is_granted_all_at_once() {
    let mut h = harness();
    let [x, g, c] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(x, 1, "a", X), granted_now(1));
    assert_eq!(
        h.acquire_many(g, 7, &[("a", X), ("b", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    // b is free, but the group takes nothing until it can take everything.
    assert_eq!(h.holders("b"), vec![]);
    assert_eq!(line(&h, "a"), vec![(g, ab())]);
    assert_eq!(line(&h, "b"), vec![(g, ab())]);
    assert_eq!(h.table.waiting_position(g, RequestId(7)), Some(1));
    // A later request for b queues behind the group (FIFO), though b is free.
    assert_eq!(h.acquire(c, 2, "b", S), queued(2));
    assert_eq!(h.table.waiting_position(c, RequestId(2)), Some(2));

    h.release(x, "a", 1).unwrap();
    assert_eq!(
        h.effects(),
        vec![group_granted(g, 7, &[("a", 2, X), ("b", 3, X)])]
    );
    assert_eq!(h.holders("a"), vec![(g, X, 2)]);
    assert_eq!(line(&h, "b"), vec![(c, vec![])]);
    assert_eq!(h.table.group_waiter_count(), 0);
    h.release(g, "b", 3).unwrap();
    assert_eq!(h.effects(), vec![granted(c, 2, "b", 4, S)]);
}

#[test]
fn a_group_is_granted_only_when_its_last_queue_allows() {
    let mut h = harness();
    let [x, y, g] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(x, 1, "a", X), granted_now(1));
    assert_eq!(h.acquire(y, 1, "b", S), granted_now(2));
    assert_eq!(
        h.acquire_many(g, 1, &[("a", X), ("b", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    h.release(x, "a", 1).unwrap();
    assert_eq!(h.effects(), vec![], "a is free, b is not");
    assert_eq!(h.holders("a"), vec![]);
    h.release(y, "b", 2).unwrap();
    assert_eq!(
        h.effects(),
        vec![group_granted(g, 1, &[("a", 3, X), ("b", 4, X)])]
    );
}

#[test]
fn a_group_never_overtakes_and_never_blocks_those_ahead_of_it() {
    let mut h = harness();
    let [x, w, r, g, late] = [
        h.session(),
        h.session(),
        h.session(),
        h.session(),
        h.session(),
    ];
    assert_eq!(h.acquire(x, 1, "a", X), granted_now(1));
    assert_eq!(h.acquire(w, 1, "a", S), queued(1));
    assert_eq!(h.acquire(r, 1, "b", X), granted_now(2));
    assert_eq!(
        h.acquire_many(g, 1, &[("a", S), ("b", S)], None),
        Ok(AcquiredMany::Queued { position: 2 })
    );
    assert_eq!(h.acquire(late, 1, "a", S), queued(3));
    // x leaves: w (ahead of the group) is granted; the group's share of a would fit too, but b
    // is still held, and the later reader stays behind the group.
    h.release(x, "a", 1).unwrap();
    assert_eq!(h.effects(), vec![granted(w, 1, "a", 3, S)]);
    assert_eq!(line(&h, "a"), vec![(g, ab()), (late, vec![])]);
    h.release(r, "b", 2).unwrap();
    // The group's grant lets the reader behind it in a go as well.
    assert_eq!(
        h.effects(),
        vec![
            group_granted(g, 1, &[("a", 4, S), ("b", 5, S)]),
            granted(late, 1, "a", 6, S),
        ]
    );
}

#[test]
fn a_group_granted_lets_another_group_behind_it_go_in_the_same_step() {
    let mut h = harness();
    let [x, g1, g2] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(x, 1, "a", X), granted_now(1));
    assert_eq!(
        h.acquire_many(g1, 1, &[("a", S), ("b", S)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    assert_eq!(
        h.acquire_many(g2, 1, &[("b", S), ("c", X)], None),
        Ok(AcquiredMany::Queued { position: 2 })
    );
    h.release(x, "a", 1).unwrap();
    assert_eq!(
        h.effects(),
        vec![
            group_granted(g1, 1, &[("a", 2, S), ("b", 3, S)]),
            group_granted(g2, 1, &[("b", 4, S), ("c", 5, X)]),
        ]
    );
}

#[test]
fn a_timeout_cancel_or_close_leaves_no_trace_in_any_queue() {
    for how in ["timeout", "cancel", "close"] {
        let mut h = harness();
        let [x, g, c] = [h.session(), h.session(), h.session()];
        assert_eq!(h.acquire(x, 1, "a", X), granted_now(1));
        assert_eq!(
            h.acquire_many(g, 5, &[("b", X), ("a", X)], Some(1_000)),
            Ok(AcquiredMany::Queued { position: 1 })
        );
        assert_eq!(h.acquire(c, 1, "b", X), queued(2));
        match how {
            "timeout" => {
                h.advance(999);
                assert_eq!(h.effects(), vec![]);
                h.advance(1);
            }
            "cancel" => h.table.handle_cancel(h.now, g, RequestId(5)).unwrap(),
            _ => h.table.handle_session_closed(h.now, g),
        }
        let failure = match how {
            "timeout" => vec![failed(g, 5, "a", WaitFailure::Timeout)],
            "cancel" => vec![failed(g, 5, "a", WaitFailure::Cancelled)],
            _ => vec![],
        };
        // The error names a, which it still waited for; c, behind it in b, goes next.
        let mut expected = failure;
        expected.push(granted(c, 1, "b", 2, X));
        assert_eq!(h.effects(), expected, "{how}");
        assert_eq!(line(&h, "a"), vec![], "{how}");
        assert_eq!(h.table.group_waiter_count(), 0, "{how}");
        assert_eq!(h.table.waiting_position(g, RequestId(5)), None, "{how}");
        let timeouts = h
            .table
            .deadlines
            .iter()
            .filter(|(_, deadline)| matches!(deadline, table::Deadline::WaitTimeout(..)))
            .count();
        assert_eq!(timeouts, 0, "{how}: the group's timeout deadline is gone");
        h.release(x, "a", 1).unwrap();
        h.release(c, "b", 2).unwrap();
        if how != "close" {
            // The session may ask again: nothing of the old wait is left.
            assert_eq!(
                h.acquire_many(g, 5, &[("b", X), ("a", X)], None),
                Ok(all_now(&[3, 4])),
                "{how}"
            );
        } else {
            assert!(h.table.status(h.now, None).is_empty());
        }
        assert_eq!(h.table.group_waiter_count(), 0);
    }
}

#[test]
fn a_try_once_group_fails_naming_a_busy_member_and_queues_nothing() {
    let mut h = harness();
    let [x, g] = [h.session(), h.session()];
    assert_eq!(h.acquire(x, 1, "b", S), granted_now(1));
    assert_eq!(
        h.acquire_many(g, 1, &[("a", X), ("b", X), ("c", S)], Some(0)),
        Err(LockError::Timeout(name("b")))
    );
    assert_eq!(
        h.table.status(h.now, None).len(),
        1,
        "only b, held by x, is busy"
    );
    // Shared with the reader is fine.
    assert_eq!(
        h.acquire_many(g, 2, &[("a", X), ("b", S)], Some(0)),
        Ok(all_now(&[2, 3]))
    );
}

#[test]
fn bad_groups_are_refused_and_change_nothing() {
    let mut h = Harness::new(TableConfig {
        max_resources_per_acquire: 3,
        max_locks_per_session: 3,
        ..TableConfig::default()
    });
    let [a, b] = [h.session(), h.session()];
    let err = h
        .acquire_many(a, 1, &[("a", X), ("b", X), ("c", X), ("d", X)], None)
        .unwrap_err();
    assert_eq!(err, LockError::TooManyResources { asked: 4, max: 3 });
    assert_eq!(err.code(), ErrorCode::LimitExceeded);
    let err = h
        .acquire_many(a, 1, &[("a", X), ("b", X), ("a", S)], None)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::BadRequest);
    assert_eq!(
        err.to_string(),
        "resource a appears twice in `resources`; name each resource once"
    );
    assert_eq!(
        h.acquire_many(a, 1, &[], None).unwrap_err().code(),
        ErrorCode::BadRequest
    );
    assert_eq!(h.acquire(a, 2, "b", X), granted_now(1));
    assert_eq!(
        h.acquire_many(a, 3, &[("a", X), ("b", X)], None),
        Err(LockError::AlreadyHeld {
            resource: name("b"),
            holding: true
        })
    );
    assert_eq!(
        h.acquire_many(a, 3, &[("x", X), ("y", X), ("z", X)], None),
        Err(LockError::TooManyLocks { held: 1 }),
        "1 held + 3 members is over 3"
    );
    assert_eq!(
        h.acquire_permits(b, 1, "sem", 1, 2, None),
        Ok(granted_now(2))
    );
    assert_eq!(
        h.acquire_many(a, 4, &[("c", X), ("sem", S)], None),
        Err(LockError::LimitMismatch {
            resource: name("sem"),
            asked: None,
            current: std::num::NonZeroU16::new(2),
        })
    );
    let busy: Vec<String> = h
        .table
        .status(h.now, None)
        .iter()
        .map(|r| r.resource.to_string())
        .collect();
    assert_eq!(busy, ["b", "sem"], "no refused group left a queue behind");
}

#[test]
fn a_group_waits_for_everything_that_blocks_it_in_any_queue() {
    // s1 holds a, the group of s2 holds b and waits for a: s1 asking for b would deadlock.
    let mut h = harness();
    let [s1, s2, s3] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(s1, 1, "a", X), granted_now(1));
    assert_eq!(h.acquire(s2, 1, "b", X), granted_now(2));
    assert_eq!(
        h.acquire_many(s2, 2, &[("c", X), ("a", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    let cycle = deadlock(h.try_acquire(s1, 2, "b", X, None));
    assert_eq!(
        cycle,
        "session 1 waits for b held by session 2; session 2 waits for a held by session 1"
    );
    // A group that would close a cycle is refused as a whole.
    assert_eq!(h.acquire(s3, 1, "d", X), granted_now(3));
    assert_eq!(h.acquire(s3, 2, "c", S), queued(2));
    let err = h
        .acquire_many(s1, 3, &[("e", X), ("d", S)], None)
        .unwrap_err();
    assert!(
        matches!(&err, LockError::Deadlock { cycle, .. } if cycle.contains("session 3 waits for c queued behind session 2")),
        "{err}"
    );
    assert_eq!(
        h.holders("e"),
        vec![],
        "nothing of the refused group is held"
    );
}

#[test]
fn a_reader_behind_a_waiting_group_waits_for_it() {
    // The group of s2 is at the head of free c but waits for a, held by s1; a shared request
    // for c behind it waits for the group (FIFO), so s1 asking for c would deadlock.
    let mut h = harness();
    let [s1, s2] = [h.session(), h.session()];
    assert_eq!(h.acquire(s1, 1, "a", S), granted_now(1));
    assert_eq!(
        h.acquire_many(s2, 1, &[("c", S), ("a", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    let cycle = deadlock(h.try_acquire(s1, 2, "c", S, None));
    assert_eq!(
        cycle,
        "session 1 waits for c queued behind session 2; session 2 waits for a held by session 1"
    );
}

#[test]
fn a_waiting_group_survives_an_image() {
    let mut h = harness();
    let [x, g] = [h.session(), h.session()];
    assert_eq!(h.acquire(x, 1, "b", X), granted_now(1));
    assert_eq!(
        h.acquire_many(g, 4, &[("b", X), ("a", S)], Some(5_000)),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    let origin = h.now - Duration::from_millis(10);
    let image = h.table.to_image(origin);
    let json = serde_json::to_string(&image).unwrap();
    let back: TableImage = serde_json::from_str(&json).unwrap();
    let mut copy = Harness {
        table: LockTable::from_image(TableConfig::default(), back, origin).unwrap(),
        now: h.now,
    };
    assert_eq!(copy.table.to_image(origin), image);
    assert_eq!(copy.table.group_waiter_count(), 1);
    assert_eq!(copy.table.waiting_position(g, RequestId(4)), Some(1));
    // One deadline for the group's timeout, as in the original.
    assert_eq!(copy.table.next_deadline(), h.table.next_deadline());
    copy.release(x, "b", 1).unwrap();
    assert_eq!(
        copy.effects(),
        vec![group_granted(g, 4, &[("b", 2, X), ("a", 3, S)])]
    );
    // And in the original, the timeout ends the wait in both queues.
    h.advance(5_000);
    assert_eq!(h.effects(), vec![failed(g, 4, "b", WaitFailure::Timeout)]);
    assert_eq!(line(&h, "a"), vec![]);
}

#[test]
fn a_group_waits_for_a_token_reservation_like_any_grant() {
    let mut h = Harness::with_reserved_tokens(TableConfig::default(), 2, 2);
    let g = h.session();
    // Two tokens left, three wanted: it waits, holding nothing.
    assert_eq!(
        h.acquire_many(g, 1, &[("a", X), ("b", X), ("c", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    assert_eq!(h.holders("a"), vec![]);
    h.table.handle_tokens_reserved(h.now, 100);
    assert_eq!(
        h.effects(),
        vec![group_granted(
            g,
            1,
            &[("a", 3, X), ("b", 4, X), ("c", 5, X)]
        )]
    );
}

#[test]
fn a_try_of_free_members_waits_for_tokens_and_a_busy_one_still_fails_at_once() {
    let mut h = Harness::with_reserved_tokens(TableConfig::default(), 2, 2);
    let g = h.session();
    let other = h.session();
    let zero = Some(0);
    // Two tokens left, three wanted, every member free: no holder is in the way, only the
    // next reservation's fsync, so the try is granted once that is durable, not failed.
    assert_eq!(
        h.acquire_many(g, 1, &[("a", X), ("b", X), ("c", X)], zero),
        Ok(AcquiredMany::AwaitingTokens)
    );
    // A try that a holder or waiter is in the way of fails at once, as ever.
    assert_eq!(
        h.acquire_many(other, 1, &[("a", X), ("d", X)], zero),
        Err(LockError::Timeout(name("a")))
    );
    h.advance(1_000);
    assert_eq!(h.effects(), vec![], "no deadline: it waits for tokens only");
    h.table.handle_tokens_reserved(h.now, 100);
    assert_eq!(
        h.effects(),
        vec![group_granted(
            g,
            1,
            &[("a", 3, X), ("b", 4, X), ("c", 5, X)]
        )]
    );
}

#[test]
fn a_group_of_free_members_awaiting_tokens_is_not_held_to_the_waits_limit() {
    let config = TableConfig {
        max_waits_per_session: 1,
        ..TableConfig::default()
    };
    let mut h = Harness::with_reserved_tokens(config, 1, 3);
    let [a, g] = [h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "held", X), granted_now(2));
    assert_eq!(h.acquire(a, 2, "other", X), granted_now(3));
    assert_eq!(h.acquire(g, 1, "held", X), queued(1), "g's one wait");
    // No token left, both members free: a wait for the fsync, which the limit does not count.
    assert_eq!(
        h.acquire_many(g, 2, &[("b", X), ("c", X)], None),
        Ok(AcquiredMany::Queued { position: 1 })
    );
    // Behind a holder, the limit holds.
    assert_eq!(
        h.acquire_many(g, 3, &[("other", X), ("d", X)], None),
        Err(LockError::TooManyWaits { waiting: 2 })
    );
}
