//! Tests of what a replicated table needs beyond a single server's: images that rebuild an
//! equal table, expiry decided by the caller, and tokens that follow a floor.

use std::sync::Arc;

use protocol::{FenceToken, LockMode};

use super::harness::*;
use super::*;

use LockMode::{Exclusive as X, Shared as S};

fn replicated() -> TableConfig {
    TableConfig {
        expire_sessions: false,
        ..TableConfig::default()
    }
}

/// A table with holders, shared holders, waiters with and without timeouts, a value and a
/// named session with a custom lease.
fn busy_table() -> (Harness, Vec<protocol::SessionId>) {
    let mut h = Harness::new(TableConfig::default());
    let sessions: Vec<_> = (0..4).map(|_| h.session()).collect();
    let [a, b, c, d] = [sessions[0], sessions[1], sessions[2], sessions[3]];
    h.table
        .handle_hello(h.now, a, Some("alpha".into()), Some(5_000))
        .unwrap();
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    h.table
        .handle_write(a, &name("f"), FenceToken(1), Arc::from("v1"))
        .unwrap();
    h.advance(7);
    assert_eq!(h.acquire(b, 1, "f", S), queued(1));
    assert_eq!(h.try_acquire(c, 4, "f", S, Some(1_000)), Ok(queued(2)));
    assert_eq!(h.acquire(d, 9, "f", X), queued(3));
    assert_eq!(h.acquire(b, 2, "g", S), granted_now(2));
    assert_eq!(h.acquire(c, 3, "g", S), granted_now(3));
    h.advance(3);
    (h, sessions)
}

#[test]
fn an_image_rebuilds_a_table_that_behaves_the_same() {
    let (mut original, sessions) = busy_table();
    let origin = original.now - std::time::Duration::from_millis(10);
    let image = original.table.to_image(origin);
    let json = serde_json::to_string(&image).unwrap();
    let back: TableImage = serde_json::from_str(&json).unwrap();
    assert_eq!(back, image);
    let mut copy = Harness {
        table: LockTable::from_image(TableConfig::default(), back, origin).unwrap(),
        now: original.now,
    };
    assert_eq!(
        copy.table.to_image(origin),
        image,
        "the copy's image is the same"
    );

    // The same inputs now give the same outputs on both, including the waiter's timeout,
    // the grants in order and the next token.
    let [a, b, c, d] = [sessions[0], sessions[1], sessions[2], sessions[3]];
    for h in [&mut original, &mut copy] {
        h.release(a, "f", 1).unwrap();
        assert_eq!(
            h.effects(),
            vec![granted(b, 1, "f", 4, S), granted(c, 4, "f", 5, S),]
        );
        assert_eq!(h.waiters("f"), vec![d]);
        assert_eq!(
            h.table.read(b, &name("f"), FenceToken(4)).unwrap(),
            Some("v1")
        );
        h.advance(5_000);
        // a's lease (5 s) ran out, the others' default lease (15 s) has not.
        assert_eq!(h.effects(), vec![Effect::SessionExpired { session: a }]);
        h.advance(10_000);
        let expired: Vec<_> = h.effects();
        assert!(
            expired.contains(&Effect::SessionExpired { session: b }),
            "{expired:?}"
        );
    }
    assert_eq!(original.table.to_image(origin), copy.table.to_image(origin));
}

#[test]
fn an_image_that_names_an_unknown_session_is_refused() {
    let (h, _) = busy_table();
    let origin = h.now - std::time::Duration::from_millis(10);
    let mut json = serde_json::to_value(h.table.to_image(origin)).unwrap();
    json["sessions"] = serde_json::json!([]);
    let image: TableImage = serde_json::from_value(json).unwrap();
    let err = LockTable::from_image(TableConfig::default(), image, origin).unwrap_err();
    assert!(err.to_string().contains("unknown session"), "{err}");
}

#[test]
fn a_replicated_table_expires_sessions_only_when_told() {
    let mut h = Harness::new(replicated());
    let [a, b] = [h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(h.acquire(b, 1, "f", X), queued(1));
    h.advance(3_600_000);
    assert_eq!(h.effects(), vec![], "no lease runs out by itself");
    assert_eq!(h.table.next_deadline(), None);
    assert_eq!(
        h.table.session_leases(),
        vec![
            (a, TableConfig::default().default_lease),
            (b, TableConfig::default().default_lease)
        ]
    );

    h.table.handle_session_expired(h.now, a);
    assert_eq!(
        h.effects(),
        vec![
            Effect::SessionExpired { session: a },
            granted(b, 1, "f", 2, X)
        ]
    );
    assert!(!h.table.has_session(a));
    h.table.handle_session_expired(h.now, a);
    assert_eq!(
        h.effects(),
        vec![],
        "a second expiry of the same session does nothing"
    );
}

#[test]
fn tokens_follow_the_floor_and_never_go_back() {
    let mut h = Harness::new(replicated());
    let [a, b] = [h.session(), h.session()];
    h.table.raise_token_floor(5 << 20);
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(5 << 20));
    assert_eq!(h.acquire(b, 1, "f", X), queued(1));
    h.table.raise_token_floor(6 << 20);
    h.release(a, "f", 5 << 20).unwrap();
    assert_eq!(h.effects(), vec![granted(b, 1, "f", 6 << 20, X)]);
    h.table.raise_token_floor(3);
    assert_eq!(h.acquire(a, 2, "g", X), granted_now((6 << 20) + 1));
}

#[test]
fn a_waiter_can_be_found_by_its_request_id() {
    let mut h = Harness::new(replicated());
    let [a, b, c] = [h.session(), h.session(), h.session()];
    assert_eq!(h.acquire(a, 1, "f", X), granted_now(1));
    assert_eq!(h.acquire(b, 7, "f", X), queued(1));
    assert_eq!(h.acquire(c, 9, "f", S), queued(2));
    assert_eq!(h.table.waiting_position(c, protocol::RequestId(9)), Some(2));
    assert_eq!(h.table.waiting_position(c, protocol::RequestId(7)), None);
    assert_eq!(
        h.table.waiting_position(a, protocol::RequestId(1)),
        None,
        "a holds"
    );
    h.release(a, "f", 1).unwrap();
    assert_eq!(h.table.waiting_position(c, protocol::RequestId(9)), Some(1));
    assert_eq!(
        h.table.waiting_position(b, protocol::RequestId(7)),
        None,
        "b holds now"
    );
}

/// A snapshot is the table as it was when taken, whatever the table does after: the maps it
/// shares with the table are copied on the table's writes, never changed under it. And its
/// streamed image is the same document as its image.
#[test]
fn a_snapshot_keeps_the_table_as_it_was_while_the_table_moves_on() {
    let (mut h, sessions) = busy_table();
    let origin = h.now - std::time::Duration::from_millis(10);
    let before = h.table.to_image(origin);
    let snapshot = h.table.snapshot();

    // Everything the image holds changes: grants, waits, values, lock-delays, new sessions.
    let [a, d] = [sessions[0], sessions[3]];
    h.release(a, "f", 1).unwrap();
    let e = h.session();
    let Acquired::Granted(token) = h.acquire(e, 9, "w", X) else {
        panic!("w is free");
    };
    h.table
        .handle_write(e, &name("w"), token, Arc::from("v2"))
        .unwrap();
    for i in 0..200 {
        h.acquire(e, i + 10, &format!("r{i:03}"), X);
    }
    h.table.handle_session_expired(h.now, d);
    h.advance(20);
    let after = h.table.to_image(origin);
    assert_ne!(after, before);

    assert_eq!(snapshot.to_image(origin), before);
    let streamed = serde_json::to_string(&snapshot.image(origin)).unwrap();
    assert_eq!(streamed, serde_json::to_string(&before).unwrap());
    let streamed = serde_json::to_string(&h.table.snapshot().image(origin)).unwrap();
    assert_eq!(streamed, serde_json::to_string(&after).unwrap());
}
