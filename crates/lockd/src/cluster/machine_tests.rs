//! The replica's routing of frames to a session's connection.

use super::*;
use crate::cluster::testing::open_database;
use crate::seam::OutboxReceiver;

fn request(line: &str) -> Request {
    Request::parse(line.as_bytes()).expect("a valid request")
}

fn entry(ops: Vec<EntryOp>) -> Proposal {
    Proposal { at_ms: 1, ops }
}

/// The ids of the frames waiting on `outbox`, in order.
fn ids(outbox: &mut OutboxReceiver) -> Vec<serde_json::Value> {
    std::iter::from_fn(|| outbox.try_recv())
        .map(|frame| {
            let json: serde_json::Value = serde_json::from_slice(&frame.to_json()).unwrap();
            json["id"].clone()
        })
        .collect()
}

/// A new leader may apply a session's requests from before the failover (committed, not yet
/// applied here) after the session was resumed on a connection of its own: their replies wait
/// until the resuming hello's reply has gone, which a client reads first.
#[test]
fn a_resumed_connection_gets_its_hellos_reply_first() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = Arc::new(Metrics::new());
    let machine = ReplicaMachine::open(
        open_database(dir.path()),
        TableConfig::default(),
        metrics.clone(),
    )
    .unwrap();
    let replica = machine.replica();
    let mut replica = lock_replica(&replica);
    let session = SessionId(7);
    replica.apply(
        1,
        entry(vec![
            EntryOp::Open {
                session,
                resume_digest: None,
            },
            EntryOp::Request {
                session,
                request: request(r#"{"id":1,"op":"hello"}"#),
            },
        ]),
    );

    // The session resumes here with hello 9, before this node applied the acquire the client
    // sent the old leader.
    let (outbox, mut received) = Outbox::new(16, metrics);
    replica.routes.insert(
        session,
        Route {
            outbox,
            close: CancellationToken::new(),
            resume_secret: None,
            resumed_by: Some(RequestId(9)),
            held: Vec::new(),
        },
    );
    replica.apply(
        2,
        entry(vec![EntryOp::Request {
            session,
            request: request(r#"{"id":3,"op":"acquire","resource":"r"}"#),
        }]),
    );
    assert_eq!(ids(&mut received), Vec::<serde_json::Value>::new(), "held");

    replica.apply(
        3,
        entry(vec![EntryOp::Request {
            session,
            request: request(r#"{"id":9,"op":"hello","session":7}"#),
        }]),
    );
    assert_eq!(ids(&mut received), [9, 3]);

    // From then on, frames go out as they come.
    replica.apply(
        4,
        entry(vec![EntryOp::Request {
            session,
            request: request(r#"{"id":10,"op":"ping"}"#),
        }]),
    );
    assert_eq!(ids(&mut received), [10]);
}
