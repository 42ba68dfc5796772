//! Tests of [`WalLogStore`]: openraft's own storage suite, then what it does not cover:
//! reopening the files, moving an older lockd's log out of redb, reading back entries no
//! longer in memory, and the edges of truncate and purge. (`wal_tests.rs` tests the files.)

use openraft::storage::{LogState, RaftLogReader, RaftLogStorage, RaftLogStorageExt};
use openraft::testing::blank_ent;
use openraft::testing::log::Suite;
use openraft::type_config::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::EntryPayload;

use super::*;
use crate::cluster::testing::{
    open_database, open_log_store, KvWrite, TempStoreBuilder, TestConfig,
};

type Store = WalLogStore<TestConfig>;

fn log_id(term: u64, node_id: u64, index: u64) -> LogIdOf<TestConfig> {
    openraft::testing::log_id::<TestConfig>(term, node_id, index)
}

async fn indexes(store: &mut impl RaftLogReader<TestConfig>) -> Vec<u64> {
    let entries = store.try_get_log_entries(..).await.unwrap();
    entries.iter().map(|entry| entry.log_id.index).collect()
}

async fn append_blanks(store: &mut Store, term: u64, indexes: std::ops::RangeInclusive<u64>) {
    let entries = indexes.map(|index| blank_ent::<TestConfig>(term, 1, index));
    store
        .blocking_append(entries.collect::<Vec<_>>())
        .await
        .unwrap();
}

fn state(
    last_purged: Option<LogIdOf<TestConfig>>,
    last: Option<LogIdOf<TestConfig>>,
) -> LogState<TestConfig> {
    LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    }
}

/// The state both the reopening and the moving tests write: vote (3, 2), committed 4, purged
/// through 2, entries up to 5.
async fn assert_vote_3_committed_4_purged_2_last_5(store: &mut Store) {
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(VoteOf::<TestConfig>::new_committed(3, 2))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
    assert_eq!(
        store.get_log_state().await.unwrap(),
        state(Some(log_id(1, 1, 2)), Some(log_id(1, 1, 5)))
    );
}

#[tokio::test]
async fn passes_openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).await.unwrap();
}

#[tokio::test]
async fn vote_committed_and_entries_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open_log_store(dir.path()).await.unwrap();
        store
            .save_vote(&VoteOf::<TestConfig>::new_committed(3, 2))
            .await
            .unwrap();
        append_blanks(&mut store, 1, 1..=5).await;
        store.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        store.purge(log_id(1, 1, 2)).await.unwrap();
        // Dropping the store waits for its writer to finish.
    }
    let mut store = open_log_store(dir.path()).await.unwrap();
    assert_vote_3_committed_4_purged_2_last_5(&mut store).await;
    assert_eq!(indexes(&mut store).await, [3, 4, 5]);
}

#[tokio::test]
async fn a_new_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_log_store(dir.path()).await.unwrap();
    assert_eq!(store.read_vote().await.unwrap(), None);
    assert_eq!(store.read_committed().await.unwrap(), None);
    assert_eq!(store.get_log_state().await.unwrap(), state(None, None));
    store.save_committed(None).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn purging_the_whole_log_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_log_store(dir.path()).await.unwrap();
    append_blanks(&mut store, 1, 1..=3).await;
    store.purge(log_id(1, 1, 3)).await.unwrap();
    assert_eq!(indexes(&mut store).await, Vec::<u64>::new());
    // An empty log ends at the last purged entry, so the next append continues from there.
    let purged = Some(log_id(1, 1, 3));
    assert_eq!(store.get_log_state().await.unwrap(), state(purged, purged));
    append_blanks(&mut store, 2, 4..=4).await;
    assert_eq!(
        store.get_log_state().await.unwrap(),
        state(purged, Some(log_id(2, 1, 4)))
    );
    // Purging again up to an index already gone moves the pointer and removes nothing more.
    store.purge(log_id(1, 1, 3)).await.unwrap();
    assert_eq!(indexes(&mut store).await, [4]);
}

#[tokio::test]
async fn truncating_removes_from_the_index_on_and_a_new_term_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_log_store(dir.path()).await.unwrap();
    append_blanks(&mut store, 1, 1..=5).await;
    // Past the end: nothing to remove. (openraft 0.10 names the last entry to keep.)
    store.truncate_after(Some(log_id(1, 1, 8))).await.unwrap();
    assert_eq!(indexes(&mut store).await, [1, 2, 3, 4, 5]);
    store.truncate_after(Some(log_id(1, 1, 3))).await.unwrap();
    assert_eq!(indexes(&mut store).await, [1, 2, 3]);
    append_blanks(&mut store, 2, 4..=6).await;
    let entries = store.try_get_log_entries(3..).await.unwrap();
    let ids: Vec<_> = entries.iter().map(|entry| entry.log_id).collect();
    assert_eq!(
        ids,
        [
            log_id(1, 1, 3),
            log_id(2, 1, 4),
            log_id(2, 1, 5),
            log_id(2, 1, 6)
        ]
    );
    // Truncating everything leaves no entry and no purge pointer.
    store.truncate_after(None).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap(), state(None, None));
}

#[tokio::test]
async fn a_reader_sees_entries_appended_after_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open_log_store(dir.path()).await.unwrap();
    let mut reader = store.get_log_reader().await;
    append_blanks(&mut store, 1, 1..=2).await;
    assert_eq!(indexes(&mut reader).await, [1, 2]);
    assert_eq!(reader.try_get_log_entries(2..=2).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_entry_that_does_not_decode_is_a_read_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open_log_store(dir.path()).await.unwrap();
        append_blanks(&mut store, 1, 1..=1).await;
    }
    // An entry record whose checksum is right but whose bytes are not an entry.
    let (mut wal, _) = wal::Wal::open(&dir.path().join(LOG_DIR), wal::SEGMENT_BYTES).unwrap();
    let record = Record::Entry {
        index: 2,
        bytes: b"not json",
    };
    wal.write(&[record], true).unwrap();
    drop(wal);
    let mut store = open_log_store(dir.path()).await.unwrap();
    let err = store.try_get_log_entries(..).await.unwrap_err();
    // openraft 0.10 takes an `io::Error`; it says what was being done, as 0.9's did.
    let shown = err.to_string();
    let expected = format!("when {} {}: ", ErrorVerb::Read, ErrorSubject::Logs);
    assert_eq!(expected, "when reading the log: ");
    assert!(shown.starts_with(&expected), "{shown}");
    assert!(shown.contains("does not decode"), "{shown}");
    assert!(store.get_log_state().await.is_err());
}

#[tokio::test]
async fn entries_no_longer_in_memory_are_read_back_from_their_segments() {
    let dir = tempfile::tempdir().unwrap();
    // Small segments, so the log spans several, and entries big enough that most of them
    // leave memory once written.
    let mut store = Store::open_with(dir.path().join(LOG_DIR), None, None, 64 << 10)
        .await
        .unwrap();
    let big = "x".repeat(1 << 20);
    let entries: Vec<_> = (1..=40)
        .map(|index| {
            let write = KvWrite {
                key: format!("k{index}"),
                value: big.clone(),
            };
            EntryOf::<TestConfig> {
                log_id: log_id(1, 1, index),
                payload: EntryPayload::Normal(write),
            }
        })
        .collect();
    for entry in &entries {
        store.blocking_append([entry.clone()]).await.unwrap();
    }
    let kept = lock(&store.index).kept_bytes;
    assert!(
        kept <= CACHED_BYTES + (2 << 20),
        "{kept} bytes kept in memory"
    );
    let read = store.try_get_log_entries(..).await.unwrap();
    assert_eq!(read, entries);
    // Purging deletes the segments it empties, and what remains still reads.
    store.purge(log_id(1, 1, 30)).await.unwrap();
    let segments = std::fs::read_dir(dir.path().join(LOG_DIR)).unwrap().count();
    assert!(
        segments <= 12,
        "{segments} segments left after purging 30 of 40 entries"
    );
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), entries[30..]);
    drop(store);
    let mut store = open_log_store(dir.path()).await.unwrap();
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), entries[30..]);
    assert_eq!(
        store.get_log_state().await.unwrap(),
        state(Some(log_id(1, 1, 30)), Some(log_id(1, 1, 40)))
    );
}

#[tokio::test]
async fn a_log_an_older_lockd_kept_in_redb_is_moved_into_the_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(dir.path());
    let entries: Vec<_> = (3..=5)
        .map(|index| blank_ent::<TestConfig>(1, 1, index))
        .collect();
    {
        // The tables and encodings of the redb log store this one replaced.
        let txn = db.begin_write().unwrap();
        {
            let mut log = txn.open_table(LEGACY_LOG).unwrap();
            for entry in &entries {
                let bytes = serde_json::to_vec(entry).unwrap();
                log.insert(entry.log_id.index, bytes.as_slice()).unwrap();
            }
            let mut meta = txn.open_table(LEGACY_META).unwrap();
            let vote = serde_json::to_vec(&VoteOf::<TestConfig>::new_committed(3, 2)).unwrap();
            let committed = serde_json::to_vec(&Some(log_id(1, 1, 4))).unwrap();
            let last_purged = serde_json::to_vec(&log_id(1, 1, 2)).unwrap();
            meta.insert("vote", vote.as_slice()).unwrap();
            meta.insert("committed", committed.as_slice()).unwrap();
            meta.insert("last_purged", last_purged.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let mut store = Store::open(dir.path().join(LOG_DIR), Some(Arc::clone(&db)), None)
        .await
        .unwrap();
    assert_vote_3_committed_4_purged_2_last_5(&mut store).await;
    assert_eq!(store.try_get_log_entries(..).await.unwrap(), entries);
    // The old log table is gone, and opening again finds the moved log.
    let txn = db.begin_read().unwrap();
    assert!(matches!(
        txn.open_table(LEGACY_LOG),
        Err(redb::TableError::TableDoesNotExist(_))
    ));
    drop(txn);
    assert_an_older_lockd_cannot_read_its_vote(&db);
    drop(store);
    let mut store = Store::open(dir.path().join(LOG_DIR), Some(db), None)
        .await
        .unwrap();
    assert_eq!(indexes(&mut store).await, [3, 4, 5]);
}

/// What the redb log store before `raft-log/` did first on opening: read its vote as JSON. It
/// must fail, with a message that says why, rather than find no vote.
fn assert_an_older_lockd_cannot_read_its_vote(db: &Database) {
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(LEGACY_META).unwrap();
    let stored = meta
        .get("vote")
        .unwrap()
        .expect("a vote for an older lockd to trip on");
    let err = serde_json::from_slice::<VoteOf<TestConfig>>(stored.value()).unwrap_err();
    assert!(err.to_string().contains("too old to read"), "{err}");
}

#[tokio::test]
async fn a_new_nodes_redb_file_also_stops_an_older_lockd() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(dir.path());
    for _ in 0..2 {
        let store = Store::open(dir.path().join(LOG_DIR), Some(Arc::clone(&db)), None)
            .await
            .unwrap();
        drop(store);
        assert_an_older_lockd_cannot_read_its_vote(&db);
    }
}
