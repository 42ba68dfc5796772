//! Lock-delay and server pauses on a fake clock: a holder that loses its lock other than by
//! `release` keeps its resource from the next holder for its lock-delay, and time the server
//! could not hear anyone is not counted as anyone's silence.

use protocol::{LockMode, RequestId, SessionId};

use super::harness::*;
use super::*;

use LockMode::Exclusive as X;

fn harness() -> Harness {
    Harness::new(TableConfig {
        default_lease: ms(1_000),
        max_lock_delay: ms(2_000),
        ..TableConfig::default()
    })
}

impl Harness {
    fn acquire_delayed(&mut self, s: SessionId, request: u64, resource: &str, delay: u64) {
        let acquired = self.table.handle_acquire(
            self.now,
            s,
            RequestId(request),
            name(resource),
            X,
            None,
            Some(ms(delay)),
        );
        assert!(matches!(acquired, Ok(Acquired::Granted(_))), "{acquired:?}");
    }

    /// Moves the clock on by `total` ms in steps of 100, keeping `alive` heard from.
    fn advance_keeping(&mut self, total: u64, alive: &[SessionId]) {
        for _ in 0..total / 100 {
            self.advance(100);
            for &s in alive {
                self.table.touch(self.now, s);
            }
        }
    }

    fn delayed_ms(&self, resource: &str) -> Option<u64> {
        self.table.status(self.now, Some(&name(resource)))[0].delayed_ms
    }
}

#[test]
fn an_expired_holders_lock_delay_holds_back_the_next_grant() {
    let mut h = harness();
    let [holder, waiter] = [h.session(), h.session()];
    h.acquire_delayed(holder, 1, "f", 500);
    assert_eq!(h.acquire(waiter, 1, "f", X), queued(1));
    h.advance_keeping(1_000, &[waiter]);
    assert_eq!(
        h.effects(),
        vec![Effect::SessionExpired { session: holder }],
        "expired, but nobody is granted f during its lock-delay"
    );
    assert_eq!(h.delayed_ms("f"), Some(500));
    assert_eq!(h.holders("f"), vec![]);
    assert_eq!(h.waiters("f"), vec![waiter]);
    h.advance_keeping(400, &[waiter]);
    assert_eq!(h.effects(), vec![]);
    assert_eq!(h.delayed_ms("f"), Some(100));
    h.advance(100);
    assert_eq!(h.effects(), vec![granted(waiter, 1, "f", 2, X)]);
    assert_eq!(h.delayed_ms("f"), None);
    assert_eq!(
        h.observations().last(),
        Some(&Observation::Granted {
            mode: X,
            permits: None,
            waited: ms(1_500)
        })
    );
}

#[test]
fn a_released_lock_is_granted_at_once_whatever_its_lock_delay() {
    let mut h = harness();
    let [holder, waiter] = [h.session(), h.session()];
    h.acquire_delayed(holder, 1, "f", 2_000);
    assert_eq!(h.acquire(waiter, 1, "f", X), queued(1));
    h.release(holder, "f", 1).unwrap();
    assert_eq!(h.effects(), vec![granted(waiter, 1, "f", 2, X)]);
    assert_eq!(h.delayed_ms("f"), None);
}

#[test]
fn a_disconnect_or_an_eviction_starts_the_lock_delay_and_try_once_fails_meanwhile() {
    let mut h = harness();
    let [a, b, c] = [h.session(), h.session(), h.session()];
    h.acquire_delayed(a, 1, "f", 300);
    h.acquire_delayed(b, 1, "g", 300);
    h.table.handle_session_closed(h.now, a);
    let forced = h.table.handle_force_release(h.now, &name("g"), None);
    assert_eq!(forced.len(), 1);
    // Idle but delayed resources are busy: status lists them.
    let listed: Vec<_> = h
        .table
        .status(h.now, None)
        .into_iter()
        .map(|status| (status.resource.to_string(), status.delayed_ms))
        .collect();
    assert_eq!(
        listed,
        vec![("f".to_owned(), Some(300)), ("g".to_owned(), Some(300))]
    );
    assert_eq!(
        h.try_acquire(c, 1, "f", X, Some(0)),
        Err(LockError::Timeout(name("f")))
    );
    assert_eq!(h.try_acquire(c, 2, "g", X, None), Ok(queued(1)));
    h.advance_keeping(300, &[c]);
    assert_eq!(h.effects(), vec![granted(c, 2, "g", 3, X)]);
    assert!(
        h.table
            .status(h.now, None)
            .iter()
            .all(|status| status.resource.as_str() == "g"),
        "f's delay is over and nothing else holds it"
    );
    assert_eq!(h.acquire(c, 3, "f", X), granted_now(4));
}

#[test]
fn the_lock_delay_defaults_to_the_servers_and_is_clamped_to_its_maximum() {
    let mut h = Harness::new(TableConfig {
        default_lock_delay: ms(250),
        max_lock_delay: ms(1_000),
        ..TableConfig::default()
    });
    let [a, b] = [h.session(), h.session()];
    h.acquire(a, 1, "f", X);
    h.acquire_delayed(b, 1, "g", 60_000);
    let delays: Vec<u64> = h
        .table
        .status(h.now, None)
        .iter()
        .map(|status| status.holders[0].lock_delay_ms)
        .collect();
    assert_eq!(delays, vec![250, 1_000]);
    assert_eq!(h.table.delayed_count(), 0);
    h.table.handle_session_closed(h.now, b);
    assert_eq!(h.table.delayed_count(), 1);
    assert_eq!(
        h.observations().last(),
        Some(&Observation::LockDelayed { delay: ms(1_000) })
    );
}

#[test]
fn a_longer_lock_delay_is_not_cut_short_by_a_shorter_one() {
    let mut h = harness();
    let [r1, r2, w] = [h.session(), h.session(), h.session()];
    for (s, delay) in [(r1, 800), (r2, 200)] {
        let acquired = h.table.handle_acquire(
            h.now,
            s,
            RequestId(1),
            name("f"),
            LockMode::Shared,
            None,
            Some(ms(delay)),
        );
        assert!(matches!(acquired, Ok(Acquired::Granted(_))));
    }
    assert_eq!(h.acquire(w, 1, "f", X), queued(1));
    h.table.handle_session_closed(h.now, r1);
    h.advance_keeping(100, &[r2, w]);
    h.table.handle_session_closed(h.now, r2);
    assert_eq!(h.delayed_ms("f"), Some(700));
    h.advance_keeping(600, &[w]);
    assert_eq!(h.effects(), vec![]);
    h.advance(100);
    assert_eq!(h.effects(), vec![granted(w, 1, "f", 3, X)]);
}

#[test]
fn an_image_keeps_a_running_lock_delay() {
    let mut h = harness();
    let [holder, waiter] = [h.session(), h.session()];
    h.acquire_delayed(holder, 1, "f", 500);
    assert_eq!(h.acquire(waiter, 1, "f", X), queued(1));
    h.table.handle_session_closed(h.now, holder);
    let origin = h.now - ms(10_000);
    let image = h.table.to_image(origin);
    let mut restored = LockTable::from_image(h.table.config.clone(), image, origin).unwrap();
    restored.handle_timeout(h.now + ms(499));
    assert_eq!(restored.poll_effect(), None);
    restored.handle_timeout(h.now + ms(500));
    assert_eq!(restored.poll_effect(), Some(granted(waiter, 1, "f", 2, X)));
}

#[test]
fn a_server_pause_is_not_counted_as_silence() {
    let mut h = harness();
    let [pinging, silent] = [h.session(), h.session()];
    h.acquire(pinging, 1, "f", X);
    h.advance_keeping(500, &[pinging, silent]);
    // `silent` goes quiet now; both clients' next frames would arrive after the pause.
    h.advance_keeping(600, &[pinging]);
    // The server is stopped for 3 s: nothing is touched, and no timer runs.
    h.now += ms(3_000);
    h.table.handle_pause(h.now, ms(3_000));
    h.table.handle_timeout(h.now);
    assert_eq!(
        h.effects(),
        vec![],
        "nobody expires for the server's own pause"
    );
    // The frame `pinging` sent during the pause is read now.
    h.table.touch(h.now, pinging);
    // `silent` was silent for 600 ms before the pause: it has 400 ms left.
    h.advance(399);
    assert_eq!(h.effects(), vec![]);
    h.advance(1);
    assert_eq!(
        h.effects(),
        vec![Effect::SessionExpired { session: silent }]
    );
    assert_eq!(h.holders("f"), vec![(pinging, X, 1)]);
}

#[test]
fn status_pages_list_a_resource_in_lock_delay_once_in_name_order() {
    let mut h = harness();
    let [holder, keeper] = [h.session(), h.session()];
    h.acquire_delayed(holder, 1, "b", 2_000);
    h.acquire(keeper, 1, "a", X);
    h.acquire(keeper, 2, "c", X);
    h.advance_keeping(1_500, &[keeper]);
    assert_eq!(
        h.delayed_ms("b"),
        Some(1_500),
        "b is idle but in lock-delay"
    );
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let page = h.table.status_page(h.now, after.as_ref(), 1);
        walked.extend(page.resources.iter().map(|r| r.resource.to_string()));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(walked, ["a", "b", "c"]);
    let whole = h.table.status_page(h.now, None, 3);
    assert_eq!((whole.resources.len(), whole.next), (3, None));
}
