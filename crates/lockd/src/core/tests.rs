//! Lock table tests on a fake clock: each feeds inputs at hand-picked instants and checks the
//! exact replies and effects.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{FenceToken, LockMode, RequestId, SessionId};

use super::harness::*;
use super::table::{MIN_TOKEN_BLOCK, TOKEN_BLOCK};
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn harness() -> Harness {
    Harness::new(TableConfig {
        max_value_bytes: 8,
        max_locks_per_session: 4,
        max_waits_per_session: 2,
        ..TableConfig::default()
    })
}

#[test]
fn exclusive_waiters_are_granted_in_arrival_order() {
    let mut h = harness();
    let [a, b, c, d] = [h.session(), h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(h.acquire(b, 1, "f", X), queued(1));
    assert_eq!(h.acquire(c, 1, "f", X), queued(2));
    assert_eq!(h.acquire(d, 1, "f", X), queued(3));
    assert_eq!(h.effects(), vec![]);

    h.release(a, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![granted(b, 1, "f", 2, X)]);
    h.release(b, "f", 2).unwrap();
    assert_eq!(h.effects(), vec![granted(c, 1, "f", 3, X)]);
    h.release(c, "f", 3).unwrap();
    assert_eq!(h.effects(), vec![granted(d, 1, "f", 4, X)]);
    h.release(d, "f", 4).unwrap();
    assert_eq!(h.effects(), vec![]);
    assert!(
        h.table.status(h.now, None).is_empty(),
        "idle queues are dropped"
    );
}

#[test]
fn readers_share_and_a_queued_writer_is_never_overtaken() {
    let mut h = harness();
    let [r1, r2, w, r3, r4] = [
        h.session(),
        h.session(),
        h.session(),
        h.session(),
        h.session(),
    ];
    assert_eq!(h.acquire(r1, 1, "f", S), granted_now(1));
    assert_eq!(h.acquire(r2, 1, "f", S), granted_now(2));
    assert_eq!(h.acquire(w, 1, "f", X), queued(1));
    // Readers arriving after the writer wait behind it although the lock is held shared.
    assert_eq!(h.acquire(r3, 1, "f", S), queued(2));
    assert_eq!(h.acquire(r4, 1, "f", S), queued(3));

    h.release(r1, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![], "one reader still holds");
    h.release(r2, "f", 2).unwrap();
    assert_eq!(h.effects(), vec![granted(w, 1, "f", 3, X)]);
    h.release(w, "f", 3).unwrap();
    // Both readers behind the writer are granted at once, in order.
    assert_eq!(
        h.effects(),
        vec![granted(r3, 1, "f", 4, S), granted(r4, 1, "f", 5, S)]
    );
    assert_eq!(h.holders("f"), vec![(r3, S, 4), (r4, S, 5)]);
}

#[test]
fn readers_behind_readers_behind_a_writer_stop_at_the_next_writer() {
    let mut h = harness();
    let [w1, r1, r2, w2, r3] = [
        h.session(),
        h.session(),
        h.session(),
        h.session(),
        h.session(),
    ];
    h.acquire(w1, 1, "f", X);
    assert_eq!(h.acquire(r1, 1, "f", S), queued(1));
    assert_eq!(h.acquire(r2, 1, "f", S), queued(2));
    assert_eq!(h.acquire(w2, 1, "f", X), queued(3));
    assert_eq!(h.acquire(r3, 1, "f", S), queued(4));
    h.release(w1, "f", 1).unwrap();
    assert_eq!(
        h.effects(),
        vec![granted(r1, 1, "f", 2, S), granted(r2, 1, "f", 3, S)]
    );
    assert_eq!(h.waiters("f"), vec![w2, r3]);
}

#[test]
fn a_timed_out_writer_unblocks_the_readers_behind_it() {
    let mut h = harness();
    let [r1, w, r2, r3] = [h.session(), h.session(), h.session(), h.session()];
    h.acquire(r1, 1, "f", S);
    assert_eq!(h.try_acquire(w, 7, "f", X, Some(100)), Ok(queued(1)));
    assert_eq!(h.acquire(r2, 1, "f", S), queued(2));
    assert_eq!(h.acquire(r3, 1, "f", S), queued(3));
    assert_eq!(
        h.table.next_deadline(),
        Some(h.now + Duration::from_millis(100))
    );

    h.advance(99);
    assert_eq!(h.effects(), vec![]);
    h.advance(1);
    assert_eq!(
        h.effects(),
        vec![
            failed(w, 7, "f", WaitFailure::Timeout),
            granted(r2, 1, "f", 2, S),
            granted(r3, 1, "f", 3, S),
        ]
    );
    // The writer may queue again: it no longer counts as waiting.
    assert_eq!(h.acquire(w, 8, "f", X), queued(1));
}

#[test]
fn a_cancelled_writer_unblocks_the_readers_behind_it() {
    let mut h = harness();
    let [r1, w, r2] = [h.session(), h.session(), h.session()];
    h.acquire(r1, 1, "f", S);
    assert_eq!(h.try_acquire(w, 5, "f", X, Some(60_000)), Ok(queued(1)));
    assert_eq!(h.acquire(r2, 1, "f", S), queued(2));

    h.table.handle_cancel(h.now, w, RequestId(5)).unwrap();
    assert_eq!(
        h.effects(),
        vec![
            failed(w, 5, "f", WaitFailure::Cancelled),
            granted(r2, 1, "f", 2, S)
        ]
    );
    // Its timeout is gone with it.
    assert_eq!(
        h.table.next_deadline(),
        Some(h.now + Duration::from_secs(15))
    );
    assert_eq!(
        h.table.handle_cancel(h.now, w, RequestId(5)),
        Err(LockError::NoSuchWaiter(RequestId(5)))
    );
}

#[test]
fn a_grant_clears_the_waiters_timeout() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.try_acquire(b, 1, "f", X, Some(100)).unwrap();
    h.release(a, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![granted(b, 1, "f", 2, X)]);
    h.advance(200);
    assert_eq!(h.effects(), vec![], "no timeout after the grant");
    assert_eq!(h.holders("f"), vec![(b, X, 2)]);
}

#[test]
fn a_timeout_beyond_the_clock_waits_forever() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    assert_eq!(h.try_acquire(b, 1, "f", X, Some(u64::MAX)), Ok(queued(1)));
    h.release(a, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![granted(b, 1, "f", 2, X)]);
}

#[test]
fn try_once_fails_without_queueing() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    assert_eq!(h.try_acquire(a, 1, "f", X, Some(0)), Ok(granted_now(1)));
    assert_eq!(
        h.try_acquire(b, 1, "f", S, Some(0)),
        Err(LockError::Timeout(name("f")))
    );
    assert_eq!(h.waiters("f"), vec![]);
}

#[test]
fn closing_a_session_frees_its_locks_and_leaves_its_queues() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.acquire(a, 2, "g", X);
    h.acquire(b, 1, "g", X);
    h.acquire(b, 2, "f", X);
    h.acquire(c, 1, "f", X);
    // b holds nothing and waits behind a on both; c waits behind b on f.
    h.table.handle_session_closed(h.now, b);
    assert_eq!(h.effects(), vec![], "nothing is sent to the closed session");
    assert_eq!(h.waiters("f"), vec![c]);
    assert_eq!(h.waiters("g"), vec![]);

    h.table.handle_session_closed(h.now, a);
    assert_eq!(h.effects(), vec![granted(c, 1, "f", 3, X)]);
    assert_eq!(h.holders("g"), vec![]);
    assert_eq!(h.table.session_count(), 1);
}

#[test]
fn tokens_strictly_increase_over_every_grant() {
    let mut h = harness();
    let sessions: Vec<_> = (0..4).map(|_| h.session()).collect();
    let mut tokens = Vec::new();
    for (i, &s) in sessions.iter().enumerate() {
        for resource in ["a", "b", "c"] {
            let mode = if i % 2 == 0 { S } else { X };
            if let Ok(Acquired::Granted(token)) = h.try_acquire(s, 1, resource, mode, Some(0)) {
                tokens.push(token.0);
            }
        }
    }
    for &s in &sessions {
        h.table.handle_session_closed(h.now, s);
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    let s = h.session();
    let Acquired::Granted(next) = h.acquire(s, 1, "a", X) else {
        panic!("idle lock not granted");
    };
    assert!(next.0 > *tokens.last().unwrap());
}

#[test]
fn a_restored_table_grants_above_the_old_reservation_once_a_new_one_is_durable() {
    let values = [(name("f"), Arc::from("kept"))].into_iter().collect();
    let mut table = LockTable::restore(TableConfig::default(), values, 1000);
    let now = Instant::now();
    let s = table.open_session(now);
    // The clock at the old reservation, as on a restart that raised the floor to the clock.
    assert_eq!(table.tokens_wanted(1000), Some(1000 + MIN_TOKEN_BLOCK));
    // Free, but no token is durable yet: the acquire waits instead of reusing a token.
    assert_eq!(
        table.handle_acquire(now, s, RequestId(1), name("f"), X, None, None),
        Ok(queued(1))
    );
    assert_eq!(table.poll_effect(), None);
    table.handle_tokens_reserved(now, 1000 + MIN_TOKEN_BLOCK);
    assert_eq!(table.poll_effect(), Some(granted(s, 1, "f", 1001, X)));
    assert_eq!(table.tokens_wanted(1000), None);
    assert_eq!(
        table.read(s, &name("f"), FenceToken(1001)),
        Ok(Some("kept"))
    );
}

#[test]
fn grants_pause_when_reserved_tokens_run_out_and_resume_in_order() {
    let mut table = LockTable::restore(TableConfig::default(), HashMap::new(), 0);
    let now = Instant::now();
    table.handle_tokens_reserved(now, 2);
    assert_eq!(
        table.tokens_wanted(0),
        Some(MIN_TOKEN_BLOCK),
        "running low: ask early"
    );
    let [a, b, c, d] = [(); 4].map(|()| table.open_session(now));
    let acquire = |table: &mut LockTable, s, resource: &str| {
        table.handle_acquire(now, s, RequestId(1), name(resource), X, None, None)
    };
    assert_eq!(acquire(&mut table, a, "f"), Ok(granted_now(1)));
    assert_eq!(acquire(&mut table, b, "g"), Ok(granted_now(2)));
    assert_eq!(acquire(&mut table, c, "f"), Ok(queued(1)));
    assert_eq!(acquire(&mut table, d, "h"), Ok(queued(1)), "no token left");
    table
        .handle_release(now, a, &name("f"), FenceToken(1))
        .unwrap();
    assert_eq!(table.poll_effect(), None, "c must wait for tokens too");
    table.handle_tokens_reserved(now, MIN_TOKEN_BLOCK);
    let effects: Vec<_> = std::iter::from_fn(|| table.poll_effect()).collect();
    assert_eq!(
        effects,
        vec![granted(c, 1, "f", 3, X), granted(d, 1, "h", 4, X)]
    );
}

#[test]
fn a_try_lock_of_a_free_resource_waits_for_tokens_instead_of_failing() {
    let mut table = LockTable::restore(TableConfig::default(), HashMap::new(), 0);
    let now = Instant::now();
    table.handle_tokens_reserved(now, 1);
    let [a, b, c] = [(); 3].map(|()| table.open_session(now));
    let zero = Some(Duration::ZERO);
    let try_lock = |table: &mut LockTable, s, id, resource: &str| {
        table.handle_acquire(now, s, RequestId(id), name(resource), X, zero, None)
    };
    assert_eq!(try_lock(&mut table, a, 1, "f"), Ok(granted_now(1)));
    // No token left: "g" is free, so the try-lock waits for the reservation's fsync, not for
    // a holder, and is granted once it is durable.
    assert_eq!(
        try_lock(&mut table, b, 1, "g"),
        Ok(Acquired::AwaitingTokens)
    );
    // "f" is held: a try-lock fails at once, tokens or not; and one behind b's fails too.
    assert_eq!(
        try_lock(&mut table, c, 1, "f"),
        Err(LockError::Timeout(name("f")))
    );
    assert_eq!(
        try_lock(&mut table, c, 2, "g"),
        Err(LockError::Timeout(name("g")))
    );
    // No deadline: it waits for tokens only.
    table.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(table.poll_effect(), None);
    table.handle_tokens_reserved(now, MIN_TOKEN_BLOCK);
    let effects: Vec<_> = std::iter::from_fn(|| table.poll_effect()).collect();
    assert_eq!(effects, vec![granted(b, 1, "g", 2, X)]);
}

#[test]
fn a_free_resource_awaiting_tokens_is_not_held_to_the_waits_limit() {
    let config = TableConfig {
        max_waits_per_session: 1,
        ..TableConfig::default()
    };
    let mut table = LockTable::restore(config, HashMap::new(), 0);
    let now = Instant::now();
    table.handle_tokens_reserved(now, 2);
    let [a, b] = [(); 2].map(|()| table.open_session(now));
    let acquire = |table: &mut LockTable, s, id, resource: &str| {
        table.handle_acquire(now, s, RequestId(id), name(resource), X, None, None)
    };
    assert_eq!(acquire(&mut table, a, 1, "f"), Ok(granted_now(1)));
    assert_eq!(acquire(&mut table, a, 2, "h"), Ok(granted_now(2)));
    assert_eq!(
        acquire(&mut table, b, 1, "f"),
        Ok(queued(1)),
        "b's one wait"
    );
    // No token left: "g" is free, so b waits for the reservation's fsync, not for a holder,
    // and its waits limit, used up, does not refuse it.
    assert_eq!(acquire(&mut table, b, 2, "g"), Ok(queued(1)));
    // Behind a holder, the limit holds.
    assert_eq!(
        acquire(&mut table, b, 3, "h"),
        Err(LockError::TooManyWaits { waiting: 2 })
    );
    table.handle_tokens_reserved(now, MIN_TOKEN_BLOCK);
    let effects: Vec<_> = std::iter::from_fn(|| table.poll_effect()).collect();
    assert_eq!(effects, vec![granted(b, 2, "g", 3, X)]);
}

/// A reservation reaches up to the wall clock, at least MIN_TOKEN_BLOCK and at most
/// TOKEN_BLOCK past the last token handed out: a fresh data directory, far below the clock,
/// fsyncs a reservation once per million grants; one that starts at the clock reserves more as
/// the clock moves ahead of its grants.
#[test]
fn reservations_reach_up_to_the_clock() {
    let now = Instant::now();
    let fresh = LockTable::restore(TableConfig::default(), HashMap::new(), 0);
    let clock: u64 = 1_800_000_000_000_000;
    assert_eq!(fresh.tokens_wanted(clock), Some(TOKEN_BLOCK));

    let mut table = LockTable::restore(TableConfig::default(), HashMap::new(), 0);
    table.raise_token_floor(clock);
    assert_eq!(
        table.tokens_wanted(clock),
        Some(clock - 1 + MIN_TOKEN_BLOCK)
    );
    table.handle_tokens_reserved(now, clock - 1 + MIN_TOKEN_BLOCK);
    let s = table.open_session(now);
    let mut issued = clock - 1;
    for id in 1..=MIN_TOKEN_BLOCK / 2 {
        issued = grant_and_release(&mut table, now, s, id);
    }
    assert_eq!(issued, clock - 1 + MIN_TOKEN_BLOCK / 2);
    assert_eq!(table.tokens_wanted(clock), None, "half the block is left");
    issued = grant_and_release(&mut table, now, s, MIN_TOKEN_BLOCK / 2 + 1);
    // 100 ms later the clock is 100,000 µs ahead: that much is reserved.
    assert_eq!(
        table.tokens_wanted(clock + 100_000),
        Some(clock + 100_000),
        "up to the clock"
    );
    assert_eq!(
        table.tokens_wanted(clock + 10_000_000),
        Some(issued + TOKEN_BLOCK),
        "at most a block"
    );
}

/// A server that hands out at most half a token a microsecond (500,000 a second, several times
/// what lockd can) never reserves more than MIN_TOKEN_BLOCK beyond the wall clock, through a
/// long busy run and a crash loop of runs that each live 10 ms. So a copy restored from a
/// backup, which starts at the clock, never hands out a token twice (operations.md, "Backup
/// and restore").
#[test]
fn reservations_stay_within_a_minimum_block_of_the_clock() {
    let now = Instant::now();
    let mut clock: u64 = 1_800_000_000_000_000;
    let mut reserved = 0;
    // The first run is long; then each lives 10 ms.
    let runs = std::iter::once(100_000).chain(std::iter::repeat_n(5_000, 100));
    for (run, grants) in runs.enumerate() {
        let mut table = LockTable::restore(TableConfig::default(), HashMap::new(), reserved);
        if reserved > 0 {
            table.raise_token_floor(clock);
        }
        let s = table.open_session(now);
        for id in 0..grants {
            if let Some(wanted) = table.tokens_wanted(clock) {
                assert!(
                    wanted <= clock + MIN_TOKEN_BLOCK,
                    "run {run}, grant {id}: reserved {} past the clock",
                    wanted - clock
                );
                reserved = wanted;
                table.handle_tokens_reserved(now, wanted);
            }
            grant_and_release(&mut table, now, s, id);
            clock += 2;
        }
    }
}

/// Acquires "f", which must be free and granted at once, releases it, and returns its token.
fn grant_and_release(table: &mut LockTable, now: Instant, s: SessionId, id: u64) -> u64 {
    let acquired = table.handle_acquire(now, s, RequestId(id), name("f"), X, None, None);
    let Ok(Acquired::Granted(token)) = acquired else {
        panic!("grant {id}: {acquired:?}");
    };
    table
        .handle_release(now, s, &name("f"), token)
        .expect("released");
    token.0
}

#[test]
fn a_write_can_be_reverted_to_what_it_replaced() {
    let mut h = harness();
    let s = h.session();
    h.acquire(s, 1, "f", X);
    let f = name("f");
    let first = h.table.handle_write(s, &f, FenceToken(1), Arc::from("one"));
    assert_eq!(first, Ok(None));
    let second = h.table.handle_write(s, &f, FenceToken(1), Arc::from("two"));
    assert_eq!(second, Ok(Some(Arc::from("one"))));
    h.table.revert_write(&f, Some(Arc::from("one")));
    assert_eq!(h.table.read(s, &f, FenceToken(1)), Ok(Some("one")));
    h.table.revert_write(&f, None);
    assert_eq!(h.table.read(s, &f, FenceToken(1)), Ok(None));
}

#[test]
fn locks_are_not_reentrant() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", S);
    assert_eq!(
        h.try_acquire(a, 2, "f", S, None),
        Err(LockError::AlreadyHeld {
            resource: name("f"),
            holding: true
        })
    );
    h.acquire(b, 1, "g", X);
    h.acquire(a, 3, "g", X);
    assert_eq!(
        h.try_acquire(a, 4, "g", S, None),
        Err(LockError::AlreadyHeld {
            resource: name("g"),
            holding: false
        })
    );
    assert_eq!(
        h.try_acquire(a, 3, "h", X, None),
        Err(LockError::DuplicateRequestId(RequestId(3)))
    );
}

#[test]
fn release_needs_the_right_session_and_token() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    assert_eq!(
        h.release(a, "f", 2),
        Err(LockError::NotHeld(name("f"), FenceToken(2)))
    );
    assert_eq!(
        h.release(b, "f", 1),
        Err(LockError::NotHeld(name("f"), FenceToken(1)))
    );
    assert_eq!(
        h.release(a, "g", 1),
        Err(LockError::NotHeld(name("g"), FenceToken(1)))
    );
    h.release(a, "f", 1).unwrap();
    assert_eq!(
        h.release(a, "f", 1),
        Err(LockError::NotHeld(name("f"), FenceToken(1)))
    );
}

#[test]
fn a_reader_among_several_releases_reads_and_leaves_only_with_its_own_token() {
    let mut h = harness();
    let [a, b, c, w] = [h.session(), h.session(), h.session(), h.session()];
    let f = name("f");
    h.acquire(a, 1, "f", S);
    h.acquire(b, 1, "f", S);
    h.acquire(c, 1, "f", S);
    h.acquire(w, 1, "f", X);
    // A reader's token is only good for that reader, even while others share the lock.
    assert_eq!(
        h.release(b, "f", 1),
        Err(LockError::NotHeld(f.clone(), FenceToken(1)))
    );
    assert_eq!(
        h.table.read(a, &f, FenceToken(2)),
        Err(LockError::NotHeld(f.clone(), FenceToken(2)))
    );
    assert_eq!(h.table.read(b, &f, FenceToken(2)), Ok(None));
    // Closing the reader in the middle takes its hold and no other.
    h.table.handle_session_closed(h.now, b);
    assert_eq!(h.holders("f"), vec![(a, S, 1), (c, S, 3)]);
    h.release(a, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![]);
    h.table.handle_session_closed(h.now, c);
    assert_eq!(h.effects(), vec![granted(w, 1, "f", 4, X)]);
    assert_eq!(h.table.read(w, &f, FenceToken(4)), Ok(None));
}

#[test]
fn values_need_the_lock_and_outlive_it() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    let f = name("f");
    h.acquire(a, 1, "f", X);
    assert_eq!(h.table.read(a, &f, FenceToken(1)), Ok(None));
    assert_eq!(
        h.table.handle_write(b, &f, FenceToken(1), Arc::from("x")),
        Err(LockError::NotHeld(f.clone(), FenceToken(1)))
    );
    assert_eq!(
        h.table
            .handle_write(a, &f, FenceToken(1), Arc::from("123456789")),
        Err(LockError::ValueTooLarge(9, 8))
    );
    h.table
        .handle_write(a, &f, FenceToken(1), Arc::from("12345678"))
        .unwrap();
    h.release(a, "f", 1).unwrap();
    assert_eq!(
        h.table.read(a, &f, FenceToken(1)),
        Err(LockError::NotHeld(f.clone(), FenceToken(1)))
    );

    h.acquire(b, 1, "f", S);
    assert_eq!(h.table.read(b, &f, FenceToken(2)), Ok(Some("12345678")));
    assert_eq!(
        h.table.handle_write(b, &f, FenceToken(2), Arc::from("y")),
        Err(LockError::NotExclusive(f.clone()))
    );
}

#[test]
fn a_silent_session_expires_after_its_lease_and_a_touched_one_does_not() {
    let mut h = harness();
    let [silent, chatty, waiter] = [h.session(), h.session(), h.session()];
    h.acquire(silent, 1, "f", X);
    h.acquire(chatty, 1, "g", X);
    h.acquire(waiter, 1, "f", X);
    for _ in 0..14 {
        h.advance(1_000);
        h.table.touch(h.now, chatty);
        h.table.touch(h.now, waiter);
    }
    assert_eq!(h.effects(), vec![]);
    h.advance(999);
    assert_eq!(h.effects(), vec![]);
    h.advance(1);
    assert_eq!(
        h.effects(),
        vec![
            Effect::SessionExpired { session: silent },
            granted(waiter, 1, "f", 3, X)
        ]
    );
    h.advance(60_000);
    assert_eq!(
        h.effects(),
        vec![
            Effect::SessionExpired { session: chatty },
            Effect::SessionExpired { session: waiter }
        ]
    );
    assert_eq!(h.table.session_count(), 0);
    assert!(h.table.status(h.now, None).is_empty());
}

#[test]
fn hello_clamps_the_lease_and_reschedules_expiry() {
    let mut h = harness();
    let s = h.session();
    let lease = |h: &mut Harness, ms| h.table.handle_hello(h.now, s, None, Some(ms)).unwrap();
    assert_eq!(lease(&mut h, 10), Duration::from_millis(1_000));
    assert_eq!(lease(&mut h, 10_000_000), Duration::from_millis(300_000));
    assert_eq!(lease(&mut h, 2_500), Duration::from_millis(2_500));
    assert_eq!(
        h.table.next_deadline(),
        Some(h.now + Duration::from_millis(2_500))
    );
    h.advance(2_499);
    assert_eq!(h.effects(), vec![]);
    h.advance(1);
    assert_eq!(h.effects(), vec![Effect::SessionExpired { session: s }]);
}

#[test]
fn status_lists_holders_and_waiters_with_their_ages() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire(a, 1, "f", S);
    h.advance(300);
    h.acquire(b, 1, "f", X);
    h.advance(200);
    h.acquire(c, 1, "e", X);
    let status = h.table.status(h.now, None);
    let names: Vec<_> = status.iter().map(|r| r.resource.as_str()).collect();
    assert_eq!(names, ["e", "f"]);
    let f = &status[1];
    assert_eq!(f.holders.len(), 1);
    assert_eq!((f.holders[0].session, f.holders[0].held_ms), (a, 500));
    assert_eq!((f.waiters[0].session, f.waiters[0].waited_ms), (b, 200));

    let idle = h.table.status(h.now, Some(&name("idle")));
    assert_eq!(idle.len(), 1);
    assert!(idle[0].holders.is_empty() && idle[0].waiters.is_empty());
}

#[test]
fn status_names_each_holder_and_waiter_by_its_hello() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.table
        .handle_hello(h.now, a, Some("deploy@ci-runner-7".to_owned()), None)
        .unwrap();
    h.acquire(a, 1, "f", X);
    h.acquire(b, 1, "f", X);
    let f = &h.table.status(h.now, None)[0];
    assert_eq!(f.holders[0].client.as_deref(), Some("deploy@ci-runner-7"));
    assert_eq!(f.waiters[0].client, None, "b never named itself");
    // Peers are the backend's to add: the table knows no connections.
    assert_eq!((&f.holders[0].peer, &f.waiters[0].peer), (&None, &None));
}

#[test]
fn status_pages_follow_the_cursor_even_when_the_table_changes_between_pages() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    for (request, resource) in [(1, "d"), (2, "b"), (3, "f")] {
        h.acquire(a, request, resource, X);
    }
    let names = |page: &StatusPage| -> Vec<String> {
        page.resources
            .iter()
            .map(|r| r.resource.to_string())
            .collect()
    };
    let first = h.table.status_page(h.now, None, 2);
    assert_eq!(names(&first), ["b", "d"]);
    assert_eq!(first.next, Some(name("d")));
    // Between pages, a resource before the cursor is taken and one after it is freed: the next
    // page neither repeats nor skips what was busy all along.
    h.acquire(b, 1, "a", X);
    h.release(a, "f", 3).unwrap();
    h.acquire(b, 2, "e", X);
    let second = h.table.status_page(h.now, first.next.as_ref(), 2);
    assert_eq!(names(&second), ["e"]);
    assert_eq!(second.next, None, "the last page has no cursor");
    // A cursor need not name a busy resource, and a page that ends exactly at the end says
    // there is more only when there is.
    assert_eq!(
        names(&h.table.status_page(h.now, Some(&name("c")), 5)),
        ["d", "e"]
    );
    let exact = h.table.status_page(h.now, None, 4);
    assert_eq!(
        (names(&exact), exact.next),
        (vec!["a".into(), "b".into(), "d".into(), "e".into()], None)
    );
}

#[test]
fn a_two_session_cycle_is_refused_and_nothing_changes() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.acquire(b, 1, "g", X);
    assert_eq!(h.acquire(a, 2, "g", X), queued(1));
    let cycle = deadlock(h.try_acquire(b, 2, "f", X, None));
    assert_eq!(
        cycle,
        format!("session {b} waits for f held by session {a}; session {a} waits for g held by session {b}")
    );
    assert_eq!(h.waiters("f"), vec![], "nothing was queued");
    assert_eq!(h.waiters("g"), vec![a]);
    // Once the cycle is broken, the same request queues normally.
    h.table.handle_cancel(h.now, a, RequestId(2)).unwrap();
    h.effects();
    assert_eq!(h.acquire(b, 3, "f", X), queued(1));
}

/// Every replica must refuse with the same words: a session that waits for several locks is
/// searched in name order, whatever order its waits were made in or a copy of the table holds
/// them in (with a hash map, a table rebuilt from a snapshot named another lock).
#[test]
fn a_cycle_through_a_session_waiting_for_several_locks_names_the_first_by_name() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    for (id, name) in [(1, "r"), (2, "p"), (3, "q")] {
        h.acquire(a, id, name, X);
    }
    h.acquire(b, 1, "g", X);
    // Two waits (the harness's limit), made in the reverse of name order.
    for (id, name) in [(2, "q"), (3, "p")] {
        assert_eq!(h.acquire(b, id, name, X), queued(1));
    }
    let cycle = deadlock(h.try_acquire(a, 4, "g", X, None));
    assert_eq!(
        cycle,
        format!("session {a} waits for g held by session {b}; session {b} waits for p held by session {a}")
    );
}

#[test]
fn a_three_session_cycle_is_refused() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire(a, 1, "ra", X);
    h.acquire(b, 1, "rb", X);
    h.acquire(c, 1, "rc", X);
    assert_eq!(h.acquire(a, 2, "rb", X), queued(1));
    assert_eq!(h.acquire(b, 2, "rc", X), queued(1));
    let cycle = deadlock(h.try_acquire(c, 2, "ra", X, None));
    assert_eq!(
        cycle,
        format!(
            "session {c} waits for ra held by session {a}; session {a} waits for rb held by \
             session {b}; session {b} waits for rc held by session {c}"
        )
    );
}

#[test]
fn a_cycle_through_shared_locks_is_refused() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", S);
    h.acquire(b, 1, "g", X);
    // b's exclusive request conflicts with a's shared hold...
    assert_eq!(h.acquire(b, 2, "f", X), queued(1));
    // ...and a's shared request conflicts with b's exclusive hold.
    let cycle = deadlock(h.try_acquire(a, 2, "g", S, None));
    assert!(
        cycle.contains(&format!("session {b} waits for f held by session {a}")),
        "{cycle}"
    );
}

#[test]
fn a_cycle_through_a_waiter_ahead_in_line_is_refused() {
    let mut h = harness();
    let [holder, a, b] = [h.session(), h.session(), h.session()];
    h.acquire(holder, 1, "f", X);
    // a holds nothing, but waits for f ahead of b, so b waits for a as well as for the holder.
    assert_eq!(h.acquire(a, 1, "f", X), queued(1));
    h.acquire(b, 1, "g", X);
    assert_eq!(h.acquire(b, 2, "f", X), queued(2));
    let cycle = deadlock(h.try_acquire(a, 2, "g", X, None));
    assert!(
        cycle.contains(&format!("waits for f queued behind session {a}")),
        "{cycle}"
    );
}

#[test]
fn a_long_line_is_searched_once_and_a_cycle_at_its_back_is_found() {
    let mut h = harness();
    let holder = h.session();
    h.acquire(holder, 1, "busy", X);
    let waiters: Vec<_> = (0..990).map(|_| h.session()).collect();
    for (position, waiter) in waiters.iter().enumerate() {
        assert_eq!(
            h.acquire(*waiter, 1, "busy", X),
            queued(position as u64 + 1)
        );
    }
    // A session that holds another lock and joins the line closes no cycle.
    let newcomer = h.session();
    h.acquire(newcomer, 1, "other", X);
    assert_eq!(h.acquire(newcomer, 2, "busy", X), queued(991));
    // The last waiter's next lock is free: no wait, no search.
    assert_eq!(h.acquire(waiters[989], 2, "elsewhere", X), granted_now(3));
    // The holder asking for what the newcomer holds closes a cycle through the whole line.
    let cycle = deadlock(h.try_acquire(holder, 2, "other", X, None));
    assert!(
        cycle.contains(&format!("session {newcomer} waits for busy")),
        "{cycle}"
    );
}

#[test]
fn chains_that_only_look_like_cycles_are_not_deadlocks() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    // Readers never wait for each other.
    h.acquire(a, 1, "f", S);
    h.acquire(b, 1, "g", S);
    assert_eq!(h.acquire(a, 2, "g", S), granted_now(3));
    assert_eq!(h.acquire(b, 2, "f", S), granted_now(4));
    // d waits for a and b, and a waits for c: a chain, not a cycle, since c waits for nobody.
    let d = h.session();
    h.acquire(d, 1, "x", X);
    h.acquire(c, 1, "h", X);
    assert_eq!(h.acquire(a, 3, "h", X), queued(1));
    assert_eq!(h.acquire(d, 2, "f", X), queued(1));
    // Two shared waiters behind the same writer do not wait for each other.
    let [w, r1, r2] = [h.session(), h.session(), h.session()];
    h.acquire(w, 1, "k", X);
    h.acquire(r1, 1, "m", X);
    assert_eq!(h.acquire(r1, 2, "k", S), queued(1));
    assert_eq!(h.acquire(r2, 1, "k", S), queued(2));
    assert_eq!(
        h.acquire(r2, 2, "m", S),
        queued(1),
        "r2 waits for r1 via m only"
    );
}

#[test]
fn validate_recognises_only_current_holders_tokens() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    let f = name("f");
    h.acquire(a, 1, "f", S);
    h.acquire(b, 1, "f", S);
    assert!(h.table.validate(&f, FenceToken(1)));
    assert!(h.table.validate(&f, FenceToken(2)));
    assert!(!h.table.validate(&f, FenceToken(3)));
    assert!(!h.table.validate(&name("g"), FenceToken(1)));
    h.release(a, "f", 1).unwrap();
    assert!(
        !h.table.validate(&f, FenceToken(1)),
        "a released token is stale"
    );
    assert!(h.table.validate(&f, FenceToken(2)));
}

#[test]
fn per_session_lock_and_wait_limits() {
    let mut h = harness();
    let [a, b] = [h.session(), h.session()];
    for resource in ["w", "x", "y"] {
        h.acquire(b, 1, resource, X);
    }
    assert_eq!(h.acquire(a, 1, "w", X), queued(1));
    assert_eq!(h.acquire(a, 2, "x", X), queued(1));
    let third_wait = h.try_acquire(a, 3, "y", X, None);
    assert!(
        matches!(third_wait, Err(LockError::TooManyWaits { waiting: 2 })),
        "{third_wait:?}"
    );
    // Trying once never waits, so only the lock limit applies.
    assert_eq!(
        h.try_acquire(a, 4, "y", X, Some(0)),
        Err(LockError::Timeout(name("y")))
    );
    assert_eq!(h.acquire(a, 5, "p", X), granted_now(4));
    assert_eq!(h.acquire(a, 6, "q", X), granted_now(5));
    let fifth = h.try_acquire(a, 7, "r", X, None);
    assert!(
        matches!(fifth, Err(LockError::TooManyLocks { held: 4 })),
        "{fifth:?}"
    );
    assert!(h.table.status(h.now, Some(&name("r")))[0]
        .waiters
        .is_empty());
}
