//! The outbox's order: frames come out as they were put in, watch events included, whenever the
//! connection's task reads them.

use std::sync::Arc;

use proptest::prelude::*;
use protocol::cmd::{WatchChange, WatchEvent, WatchState};
use protocol::{RequestId, ResourceName, ServerFrame};

use super::{Outbox, OutboxReceiver, WatchSent};
use crate::metrics::Metrics;

/// A frame as the tests tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A `queued` event standing for any reply, numbered by its position.
    Frame(u64),
    /// Watch `watch`'s `queue` event, numbered by its count.
    Event { watch: u64, number: u64 },
    /// Watch `watch`'s resync.
    Resync { watch: u64 },
}

fn event(number: u64) -> WatchEvent {
    WatchEvent {
        resource: ResourceName::new("r").unwrap(),
        change: WatchChange::Queue { queue: number },
    }
}

fn no_resync(_: &ResourceName) -> WatchState {
    panic!("no watch here overflows its backlog")
}

fn seen(frame: ServerFrame) -> Seen {
    match frame {
        ServerFrame::Queued { position, .. } => Seen::Frame(position),
        ServerFrame::Watch { id, event } => match event.change {
            WatchChange::Queue { queue } => Seen::Event {
                watch: id.0,
                number: queue,
            },
            WatchChange::Resync(_) => Seen::Resync { watch: id.0 },
            other => panic!("unexpected watch event {other:?}"),
        },
        other => panic!("unexpected frame {other:?}"),
    }
}

fn received(receiver: &mut OutboxReceiver) -> Vec<Seen> {
    std::iter::from_fn(|| receiver.try_recv())
        .map(seen)
        .collect()
}

fn frame(number: u64) -> ServerFrame {
    ServerFrame::Queued {
        id: RequestId(1),
        position: number,
    }
}

#[test]
fn a_reply_between_two_watch_events_comes_out_between_them() {
    let metrics = Arc::new(Metrics::new());
    let (outbox, mut receiver) = Outbox::new(16, Arc::clone(&metrics));
    // A grant's turn: `released`, the acquire's reply, `granted`.
    outbox.send_watch_event(RequestId(40), event(1), no_resync);
    outbox.send(frame(1));
    outbox.send_watch_event(RequestId(40), event(2), no_resync);
    assert_eq!(
        received(&mut receiver),
        [
            Seen::Event {
                watch: 40,
                number: 1
            },
            Seen::Frame(1),
            Seen::Event {
                watch: 40,
                number: 2
            },
        ]
    );
    assert_eq!(metrics.watch_backlog_events.get(), 0);
}

#[test]
fn events_after_their_segment_was_taken_get_a_marker_of_their_own() {
    let metrics = Arc::new(Metrics::new());
    let (outbox, mut receiver) = Outbox::new(16, metrics);
    outbox.send_watch_event(RequestId(40), event(1), no_resync);
    assert_eq!(received(&mut receiver).len(), 1);
    // No frame in between: without a new marker these would wait for the next frame.
    outbox.send_watch_event(RequestId(40), event(2), no_resync);
    outbox.send_watch_event(RequestId(41), event(3), no_resync);
    assert_eq!(
        received(&mut receiver),
        [
            Seen::Event {
                watch: 40,
                number: 2
            },
            Seen::Event {
                watch: 41,
                number: 3
            },
        ]
    );
}

#[test]
fn a_resync_comes_after_the_frames_queued_before_it() {
    let metrics = Arc::new(Metrics::new());
    let (outbox, mut receiver) = Outbox::new(2, Arc::clone(&metrics));
    let resync = |_: &ResourceName| WatchState {
        holders: Vec::new(),
        value: None,
        queue: 0,
    };
    outbox.send_watch_event(RequestId(40), event(1), no_resync);
    outbox.send_watch_event(RequestId(41), event(2), no_resync);
    outbox.send_watch_event(RequestId(40), event(3), no_resync);
    outbox.send(frame(1));
    assert_eq!(
        outbox.send_watch_event(RequestId(40), event(4), resync),
        WatchSent::Resynced
    );
    // Watch 41's event keeps its place; watch 40's two are replaced by a resync showing the
    // state after the frame, so it comes after the frame.
    assert_eq!(
        received(&mut receiver),
        [
            Seen::Event {
                watch: 41,
                number: 2
            },
            Seen::Frame(1),
            Seen::Resync { watch: 40 },
        ]
    );
    assert_eq!(metrics.watch_backlog_events.get(), 0);
    // The count of watch 40's waiting events started again from the resync.
    outbox.send_watch_event(RequestId(40), event(5), no_resync);
    outbox.send_watch_event(RequestId(40), event(6), no_resync);
    assert_eq!(received(&mut receiver).len(), 2);
}

/// One step of a sender and a receiver taking turns.
#[derive(Debug, Clone)]
enum Step {
    Frame,
    Event { watch: u64 },
    Receive { at_most: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => Just(Step::Frame),
        3 => (40u64..43).prop_map(|watch| Step::Event { watch }),
        2 => (1usize..4).prop_map(|at_most| Step::Receive { at_most }),
    ]
}

proptest! {
    /// However the connection's task interleaves its reads with the backend's sends, it gets
    /// every frame in the order they were sent (no watch falls behind far enough to resync).
    #[test]
    fn frames_come_out_in_the_order_they_were_sent(steps in prop::collection::vec(step(), 1..60)) {
        let metrics = Arc::new(Metrics::new());
        let (outbox, mut receiver) = Outbox::new(1000, Arc::clone(&metrics));
        let mut sent = Vec::new();
        let mut got = Vec::new();
        for (number, step) in (1u64..).zip(steps) {
            match step {
                Step::Frame => {
                    outbox.send(frame(number));
                    sent.push(Seen::Frame(number));
                }
                Step::Event { watch } => {
                    outbox.send_watch_event(RequestId(watch), event(number), no_resync);
                    sent.push(Seen::Event { watch, number });
                }
                Step::Receive { at_most } => {
                    got.extend(std::iter::from_fn(|| receiver.try_recv()).take(at_most).map(seen));
                }
            }
        }
        got.extend(received(&mut receiver));
        prop_assert_eq!(got, sent);
        prop_assert_eq!(metrics.watch_backlog_events.get(), 0);
    }
}
