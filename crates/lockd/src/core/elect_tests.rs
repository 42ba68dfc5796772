//! Campaign tests on a fake clock: a campaign is an exclusive acquire whose hold carries a value,
//! and watchers see the value with the token in one event, never a new token with an old value.

use std::sync::Arc;

use protocol::cmd::{WatchChange, WatchEvent, WatchHolder, WatchState};
use protocol::{FenceToken, LockMode, RequestId, SessionId};

use super::harness::*;
use super::*;

fn harness() -> Harness {
    Harness::new(TableConfig {
        default_lease: ms(1_000),
        max_value_bytes: 16,
        ..TableConfig::default()
    })
}

fn leader(session: SessionId, token: u64, value: &str) -> WatchHolder {
    WatchHolder {
        session,
        token: FenceToken(token),
        mode: LockMode::Exclusive,
        value: Some(value.to_owned()),
    }
}

fn event(session: SessionId, watch: u64, change: WatchChange) -> Effect {
    Effect::Watch {
        session,
        watch: RequestId(watch),
        event: WatchEvent {
            resource: name("leader"),
            change,
        },
    }
}

fn state(holders: Vec<WatchHolder>, queue: u64) -> WatchChange {
    WatchChange::State(WatchState {
        holders,
        value: None,
        queue,
    })
}

impl Harness {
    fn campaign(
        &mut self,
        s: SessionId,
        request: u64,
        value: &str,
        timeout_ms: Option<u64>,
    ) -> Result<Acquired, LockError> {
        self.table.handle_campaign(
            self.now,
            s,
            RequestId(request),
            name("leader"),
            Arc::from(value),
            timeout_ms.map(ms),
            None,
        )
    }

    fn watch_leader(&mut self, s: SessionId, watch: u64) {
        self.table
            .handle_watch(s, RequestId(watch), name("leader"))
            .unwrap();
    }
}

/// Session a leads with `a:80` (token 1), b waits with `b:80`, and w watches as watch 9; the
/// effects so far are taken.
fn a_leads_b_waits_w_watches() -> (Harness, [SessionId; 3]) {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    assert_eq!(h.campaign(a, 1, "a:80", None), Ok(granted_now(1)));
    assert_eq!(h.campaign(b, 1, "b:80", None), Ok(queued(1)));
    h.watch_leader(w, 9);
    h.effects();
    (h, [a, b, w])
}

#[test]
fn elect_a_campaign_grant_shows_its_value_with_its_token_in_one_event() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    h.watch_leader(w, 9);
    assert_eq!(h.effects(), vec![event(w, 9, state(vec![], 0))]);

    assert_eq!(h.campaign(a, 1, "a:80", None), Ok(granted_now(1)));
    assert_eq!(
        h.effects(),
        vec![event(w, 9, WatchChange::Granted(leader(a, 1, "a:80")))]
    );
    assert_eq!(h.campaign(b, 2, "b:80", None), Ok(queued(1)));
    assert_eq!(
        h.effects(),
        vec![event(w, 9, WatchChange::Queue { queue: 1 })]
    );
    // A waiting candidate's value is not the leader's: the state shows only the holder's.
    h.watch_leader(w, 10);
    assert_eq!(
        h.effects(),
        vec![event(w, 10, state(vec![leader(a, 1, "a:80")], 1))]
    );

    // Resign: the old leader's release (with its value: who left), then the new leader's grant
    // with the new value and token together.
    h.release(a, "leader", 1).unwrap();
    let w9 = |change| event(w, 9, change);
    let w10 = |change| event(w, 10, change);
    assert_eq!(
        h.effects(),
        vec![
            w9(WatchChange::Released(leader(a, 1, "a:80"))),
            w10(WatchChange::Released(leader(a, 1, "a:80"))),
            granted(b, 2, "leader", 2, LockMode::Exclusive),
            w9(WatchChange::Granted(leader(b, 2, "b:80"))),
            w10(WatchChange::Granted(leader(b, 2, "b:80"))),
            w9(WatchChange::Queue { queue: 0 }),
            w10(WatchChange::Queue { queue: 0 }),
        ]
    );
    assert_eq!(h.table.campaign_value(a, &name("leader")), None);
    assert_eq!(h.table.campaign_value(b, &name("leader")), Some("b:80"));
    // `status` shows the leader's value with its hold.
    let status = h.table.status(h.now, Some(&name("leader")));
    assert_eq!(status[0].holders[0].value.as_deref(), Some("b:80"));
    // The resource's stored value is another thing, which campaigns leave alone.
    assert_eq!(h.table.read(b, &name("leader"), FenceToken(2)), Ok(None));
}

#[test]
fn elect_an_expired_leader_is_followed_by_the_next_candidate_and_its_value() {
    let (mut h, [a, b, w]) = a_leads_b_waits_w_watches();
    // b and w keep talking; a goes silent for its whole lease.
    h.advance(600);
    h.table.touch(h.now, b);
    h.table.touch(h.now, w);
    h.advance(600);
    h.table.handle_timeout(h.now);
    assert_eq!(
        h.effects(),
        vec![
            Effect::SessionExpired { session: a },
            event(w, 9, WatchChange::Expired(leader(a, 1, "a:80"))),
            granted(b, 1, "leader", 2, LockMode::Exclusive),
            event(w, 9, WatchChange::Granted(leader(b, 2, "b:80"))),
            event(w, 9, WatchChange::Queue { queue: 0 }),
        ]
    );
    assert_eq!(h.table.campaign_count(), 1);
}

#[test]
fn elect_a_plain_lock_and_a_campaign_share_one_queue_and_only_the_campaign_has_a_value() {
    let mut h = harness();
    let [a, b, w] = [h.session(), h.session(), h.session()];
    h.watch_leader(w, 9);
    assert_eq!(
        h.acquire(a, 1, "leader", LockMode::Exclusive),
        granted_now(1)
    );
    assert_eq!(h.campaign(b, 1, "b:80", None), Ok(queued(1)));
    h.effects();
    h.table.handle_session_closed(h.now, a);
    let plain = WatchHolder {
        session: a,
        token: FenceToken(1),
        mode: LockMode::Exclusive,
        value: None,
    };
    assert_eq!(
        h.effects(),
        vec![
            event(w, 9, WatchChange::Released(plain)),
            granted(b, 1, "leader", 2, LockMode::Exclusive),
            event(w, 9, WatchChange::Granted(leader(b, 2, "b:80"))),
            event(w, 9, WatchChange::Queue { queue: 0 }),
        ]
    );
}

#[test]
fn elect_waits_that_end_without_a_grant_leave_no_value_behind() {
    let mut h = harness();
    let [a, b, c, d] = [h.session(), h.session(), h.session(), h.session()];
    assert_eq!(h.campaign(a, 1, "a", None), Ok(granted_now(1)));
    // Tried once and refused, timed out, cancelled, and a waiter whose connection closed.
    assert_eq!(
        h.campaign(b, 1, "b", Some(0)),
        Err(LockError::Timeout(name("leader")))
    );
    assert_eq!(h.campaign(b, 2, "b", Some(100)), Ok(queued(1)));
    assert_eq!(h.campaign(c, 1, "c", None), Ok(queued(2)));
    assert_eq!(h.campaign(d, 1, "d", None), Ok(queued(3)));
    assert_eq!(h.table.campaign_count(), 4);
    h.advance(100);
    h.table.handle_timeout(h.now);
    h.table.handle_cancel(h.now, c, RequestId(1)).unwrap();
    h.table.handle_session_closed(h.now, d);
    assert_eq!(h.table.campaign_count(), 1);
    assert_eq!(h.table.campaign_value(a, &name("leader")), Some("a"));
}

#[test]
fn elect_a_refused_campaign_changes_nothing_and_says_why() {
    let mut h = harness();
    let a = h.session();
    assert_eq!(h.campaign(a, 1, "first", None), Ok(granted_now(1)));
    // Not re-entrant: the second campaign is refused and the first keeps its value.
    assert_eq!(
        h.campaign(a, 2, "second", None),
        Err(LockError::AlreadyHeld {
            resource: name("leader"),
            holding: true
        })
    );
    assert_eq!(h.table.campaign_value(a, &name("leader")), Some("first"));
    // A value over the limit is refused as a write of it would be.
    let b = h.session();
    assert_eq!(
        h.campaign(b, 1, "seventeen bytes!!", None),
        Err(LockError::ValueTooLarge(17, 16))
    );
    assert_eq!(
        h.campaign(SessionId(99), 1, "x", None),
        Err(LockError::SessionGone)
    );
    assert_eq!(h.table.campaign_count(), 1);
}

#[test]
fn elect_campaigns_survive_an_image_and_an_image_cannot_invent_one() {
    let (mut h, [a, b, w]) = a_leads_b_waits_w_watches();
    let origin = h.now;
    let image = h.table.to_image(origin);
    h.table = LockTable::from_image(h.table.config().clone(), image.clone(), origin).unwrap();
    assert_eq!(h.table.to_image(origin), image);
    h.release(a, "leader", 1).unwrap();
    assert!(h
        .effects()
        .contains(&event(w, 9, WatchChange::Granted(leader(b, 2, "b:80")))));

    // A campaign of a session that neither holds nor waits: a foreign or corrupt snapshot.
    let mut json = serde_json::to_value(h.table.to_image(origin)).unwrap();
    json["campaigns"] = serde_json::json!([[w.0, "leader", "forged"]]);
    let forged: TableImage = serde_json::from_value(json).unwrap();
    let err = LockTable::from_image(h.table.config().clone(), forged, origin).unwrap_err();
    assert!(
        err.to_string().contains("neither holds nor awaits"),
        "{err}"
    );
}
