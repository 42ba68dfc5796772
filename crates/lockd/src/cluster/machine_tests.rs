//! The replica's routing of frames to a session's connection, and its snapshots.

use openraft::testing::log_id;
use openraft::type_config::alias::EntryOf;
use openraft::Membership;
use protocol::ResourceName;
use redb::{ReadableDatabase, TableDefinition};
use tokio::io::AsyncWriteExt;

use super::*;
use crate::cluster::snapshot_store::SNAPSHOT_DIR;
use crate::cluster::testing::open_database;
use crate::seam::OutboxReceiver;

/// Applies `entries` as openraft 0.10 hands them over: a stream, without responders.
async fn apply(
    machine: &mut ReplicaMachine,
    entries: impl IntoIterator<Item = EntryOf<TypeConfig>>,
) {
    let stream = futures_util::stream::iter(
        entries
            .into_iter()
            .map(|entry| Ok::<_, io::Error>((entry, None)))
            .collect::<Vec<_>>(),
    );
    machine.apply(stream).await.unwrap();
}

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
        dir.path(),
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

/// The state machine of a node over `dir`.
fn open_machine(dir: &Path) -> ReplicaMachine {
    let db = open_database(dir);
    ReplicaMachine::open(db, dir, TableConfig::default(), Arc::new(Metrics::new())).unwrap()
}

/// The log entry at `index` of a deterministic busy history: sessions open, acquire locks
/// (some wait behind others), write values, and some expire, which grants their waiters.
fn history_entry(index: u64) -> EntryOf<TypeConfig> {
    // Seven sessions; every tenth entry one of them expires, and the next opens it again.
    let again = SessionId(1 + (index / 10) % 7);
    let ops = match index % 10 {
        _ if index <= 7 => vec![EntryOp::Open {
            session: SessionId(index),
            resume_digest: None,
        }],
        0 => vec![EntryOp::Expire {
            sessions: vec![again],
        }],
        1 => vec![EntryOp::Open {
            session: again,
            resume_digest: None,
        }],
        2 => vec![EntryOp::RestoreValues {
            values: vec![(
                ResourceName::new(&format!("v{}", index % 13)).unwrap(),
                format!("value {index}"),
            )],
            tokens_above: 0,
        }],
        _ => vec![EntryOp::Request {
            session: SessionId(1 + index % 7),
            request: request(&format!(
                r#"{{"id":{index},"op":"acquire","resource":"r{}"}}"#,
                index % 17
            )),
        }],
    };
    EntryOf::<TypeConfig> {
        log_id: log_id::<TypeConfig>(1, 1, index),
        payload: EntryPayload::Normal(Proposal {
            at_ms: 1_000 + index,
            ops,
        }),
    }
}

/// Applies entries `from..=to` of the history, as openraft would.
async fn apply_history(machine: &mut ReplicaMachine, from: u64, to: u64) {
    for index in from..=to {
        apply(machine, [history_entry(index)]).await;
    }
}

/// Everything a snapshot of the machine would hold, as JSON, with its last applied entry.
fn state(machine: &ReplicaMachine) -> (Option<LogIdOf<TypeConfig>>, serde_json::Value) {
    let replica = machine.lock();
    let parts = replica.snapshot_parts();
    (
        replica.last_applied,
        serde_json::to_value(parts.writer()).unwrap(),
    )
}

/// A snapshot built while entries keep applying is exactly the state at its log index: a node
/// that installs it has the state of a node that applied the log up to that index and no
/// further, keeps it across a restart, and reaches the builder's state by applying the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_while_entries_apply_is_the_state_at_its_index() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut leader = open_machine(dirs[0].path());
    apply_history(&mut leader, 1, 100).await;
    {
        let mut replica = leader.lock();
        replica.membership = StoredMembershipOf::<TypeConfig>::new(
            Some(log_id::<TypeConfig>(1, 1, 1)),
            Membership::new_with_defaults(vec![[1].into()], [1]),
        );
    }
    let mut builder = leader.get_snapshot_builder().await;
    let building = tokio::spawn(async move { builder.build_snapshot().await });
    let mut last = 100;
    while !building.is_finished() || last < 200 {
        last += 1;
        apply_history(&mut leader, last, last).await;
        tokio::task::yield_now().await;
    }
    let snapshot = building.await.unwrap().unwrap();
    let index = snapshot.meta.last_log_id.as_ref().unwrap().index;
    assert!((100..=last).contains(&index), "{index} of {last}");

    // A fresh node installs it, through openraft's calls.
    let mut follower = open_machine(dirs[1].path());
    let mut sent = leader.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(sent.meta, snapshot.meta);
    let mut received = follower.begin_receiving_snapshot().await.unwrap();
    tokio::io::copy(&mut sent.snapshot, &mut received)
        .await
        .unwrap();
    received.shutdown().await.unwrap();
    follower
        .install_snapshot(&sent.meta, received)
        .await
        .unwrap();

    let mut reference = open_machine(dirs[2].path());
    apply_history(&mut reference, 1, index).await;
    let (follower_last, follower_state) = state(&follower);
    assert_eq!(follower_last, snapshot.meta.last_log_id);
    assert_eq!(follower_state, state(&reference).1);
    let queues = follower_state["table"]["queues"].as_array().unwrap();
    assert!(queues.len() > 10, "a busy table: {queues:?}");

    // The follower restarts from it.
    drop(follower);
    let mut follower = open_machine(dirs[1].path());
    assert_eq!(state(&follower), (follower_last, follower_state));

    // And the log after it brings the follower to the leader's state.
    apply_history(&mut follower, index + 1, last).await;
    assert_eq!(state(&follower), state(&leader));
}

/// A node upgraded from a lockd that kept its snapshot inside redb starts from that snapshot,
/// which it moves to a file; files that no snapshot names (a crash before the commit) go.
#[tokio::test]
async fn a_snapshot_kept_inside_redb_is_read_and_moved_to_a_file() {
    let old = tempfile::tempdir().unwrap();
    let mut reference = open_machine(old.path());
    apply_history(&mut reference, 1, 50).await;
    let (last, expected) = state(&reference);
    // As openraft 0.9 wrote it, with its snapshot id (0.10's `SnapshotMeta` has none).
    let meta_09 = serde_json::json!({
        "last_log_id": last,
        "last_membership": StoredMembershipOf::<TypeConfig>::default(),
        "snapshot_id": "1-50-1050",
    });
    let meta = SnapshotMetaOf::<TypeConfig> {
        last_log_id: last,
        last_membership: StoredMembershipOf::<TypeConfig>::default(),
    };

    let dir = tempfile::tempdir().unwrap();
    {
        let db = open_database(dir.path());
        let txn = db.begin_write().unwrap();
        {
            let table: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");
            let mut table = txn.open_table(table).unwrap();
            let meta = serde_json::to_vec(&meta_09).unwrap();
            table.insert("meta", meta.as_slice()).unwrap();
            let data = serde_json::to_vec(&expected).unwrap();
            table.insert("data", data.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let snapshots = dir.path().join(SNAPSHOT_DIR);
    std::fs::create_dir_all(&snapshots).unwrap();
    std::fs::write(snapshots.join("snapshot-00000000000000000049-x.json"), "{").unwrap();
    std::fs::write(snapshots.join("receiving-0.tmp"), "{").unwrap();

    let mut machine = open_machine(dir.path());
    assert_eq!(state(&machine), (last, expected));
    let files: Vec<_> = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(files, ["snapshot-00000000000000000050-1-50-1050.json"]);
    let current = machine.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(current.meta, meta);
    let db = machine.snapshots.db();
    let txn = db.begin_read().unwrap();
    let table = txn
        .open_table(TableDefinition::<&str, &[u8]>::new("raft_snapshot"))
        .unwrap();
    assert!(
        table.get("data").unwrap().is_none(),
        "the inline data is gone"
    );
}

/// Sessions `sessions` opening and each acquiring `per_session` locks, in entries of 256
/// requests (the front end's largest), from log index `first` on. Returns the entries.
fn fill_entries(
    first: u64,
    sessions: std::ops::RangeInclusive<u64>,
    per_session: u64,
) -> Vec<EntryOf<TypeConfig>> {
    let mut ops: Vec<EntryOp> = sessions
        .clone()
        .map(|session| EntryOp::Open {
            session: SessionId(session),
            resume_digest: None,
        })
        .collect();
    for session in sessions {
        for i in 0..per_session {
            ops.push(EntryOp::Request {
                session: SessionId(session),
                request: request(&format!(
                    r#"{{"id":{},"op":"acquire","resource":"held/{session:03}/{i:07}"}}"#,
                    i + 1
                )),
            });
        }
    }
    let mut entries = Vec::new();
    let mut ops = ops.into_iter().peekable();
    let mut index = first;
    while ops.peek().is_some() {
        entries.push(EntryOf::<TypeConfig> {
            log_id: log_id::<TypeConfig>(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                at_ms: 1_000 + index,
                ops: ops.by_ref().take(256).collect(),
            }),
        });
        index += 1;
    }
    entries
}

/// Entries from `first` on in which `sessions`, each holding `held` locks from `fill_entries`,
/// acquire `count` more locks in turn.
fn more_acquires(
    first: u64,
    sessions: std::ops::RangeInclusive<u64>,
    held: u64,
    count: u64,
) -> Vec<EntryOf<TypeConfig>> {
    let sessions: Vec<u64> = sessions.collect();
    let ops: Vec<EntryOp> = (0..count)
        .map(|i| {
            let session = sessions[(i % sessions.len() as u64) as usize];
            let id = held + 1 + i / sessions.len() as u64;
            EntryOp::Request {
                session: SessionId(session),
                request: request(&format!(
                    r#"{{"id":{id},"op":"acquire","resource":"more/{session:03}/{i:07}"}}"#
                )),
            }
        })
        .collect();
    let mut index = first;
    ops.chunks(256)
        .map(|ops| {
            let entry = EntryOf::<TypeConfig> {
                log_id: log_id::<TypeConfig>(1, 1, index),
                payload: EntryPayload::Normal(Proposal {
                    at_ms: 1_000 + index,
                    ops: ops.to_vec(),
                }),
            };
            index += 1;
            entry
        })
        .collect()
}

/// A table of many held locks: what a snapshot stops applying for (the copy under the lock),
/// what writing it out costs, and the longest an entry waited to apply while a snapshot was
/// built, while the sessions that hold them keep acquiring. `LOCKD_SNAPSHOT_BENCH_LOCKS` sets
/// the number of locks (20,000 by default), `LOCKD_SNAPSHOT_BENCH_SESSIONS` the sessions that
/// hold them (100); the figures are printed, never asserted (docs/cluster.md, "Snapshots").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_of_many_held_locks_stops_applying_only_for_a_copy() {
    let locks: u64 = std::env::var("LOCKD_SNAPSHOT_BENCH_LOCKS")
        .ok()
        .and_then(|locks| locks.parse().ok())
        .unwrap_or(20_000);
    let sessions: u64 = std::env::var("LOCKD_SNAPSHOT_BENCH_SESSIONS")
        .ok()
        .and_then(|sessions| sessions.parse().ok())
        .unwrap_or(100);
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(dir.path());
    let config = TableConfig {
        max_locks_per_session: usize::MAX,
        ..TableConfig::default()
    };
    let mut machine =
        ReplicaMachine::open(db, dir.path(), config.clone(), Arc::new(Metrics::new())).unwrap();
    let started = Instant::now();
    let entries = fill_entries(1, 1..=sessions, locks / sessions);
    let last = entries.len() as u64;
    apply(&mut machine, entries).await;
    let filled = started.elapsed();
    let last_name = format!("held/{sessions:03}/{:07}", locks / sessions - 1);
    let held = {
        let replica = machine.lock();
        let after = ResourceName::new(&format!("held/{sessions:03}/")).unwrap();
        let now = replica.instant_at(replica.last_at_ms);
        replica.table.status_page(now, Some(&after), usize::MAX)
    };
    assert_eq!(
        held.resources.len() as u64,
        locks / sessions,
        "the last session's"
    );
    assert_eq!(held.resources.last().unwrap().resource.as_str(), last_name);

    // What the copy under the lock was before (a deep copy into an image) and is now.
    let (deep_copy, parts, copy) = {
        let replica = machine.lock();
        let started = Instant::now();
        drop(replica.table.to_image(replica.clock_origin));
        let deep_copy = started.elapsed();
        let started = Instant::now();
        let parts = replica.snapshot_parts();
        (deep_copy, parts, started.elapsed())
    };
    let started = Instant::now();
    let mut encoded = Vec::new();
    serde_json::to_writer(&mut encoded, &parts.writer()).unwrap();
    let encode = started.elapsed();
    drop(parts);

    // A real build, while entries keep applying: the sessions that hold the locks acquire
    // more, in turn, one entry at a time, and each apply is timed (including its wait for the
    // replica's lock). Each session's first write after the copy copies what it shares with
    // the snapshot.
    let extra = more_acquires(last + 1, 1..=sessions, locks / sessions, 100_000);
    let mut builder = machine.get_snapshot_builder().await;
    let started = Instant::now();
    let building = tokio::spawn(async move {
        let snapshot = builder.build_snapshot().await;
        (snapshot, started.elapsed())
    });
    let mut longest = Duration::ZERO;
    let mut applied = 0;
    for entry in extra {
        let one = Instant::now();
        apply(&mut machine, [entry]).await;
        longest = longest.max(one.elapsed());
        applied += 1;
        tokio::task::yield_now().await;
        if building.is_finished() {
            break;
        }
    }
    let (snapshot, build) = building.await.unwrap();
    let snapshot = snapshot.unwrap();
    let path = machine
        .snapshots
        .current::<SnapshotMetaOf<TypeConfig>>()
        .unwrap()
        .unwrap()
        .1;
    let size = std::fs::metadata(&path).unwrap().len();
    let started = Instant::now();
    let restored = Restored::read(&path, &config, machine.clock_origin).unwrap();
    let restore = started.elapsed();
    let index = snapshot.meta.last_log_id.as_ref().unwrap().index;
    assert!(index >= last, "{index}");
    drop(restored);
    eprintln!(
        "{locks} locks held by {sessions} sessions (filled in {filled:?}): copy under the lock \
         {copy:?} (a deep copy into an image took {deep_copy:?}); encoding {encode:?}, {} \
         bytes; a build written to disk in {build:?} while {applied} entries of 256 requests \
         applied, the longest apply {longest:?}; reading the {size}-byte file back into a table \
         {restore:?}",
        encoded.len()
    );
}
