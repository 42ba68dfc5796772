//! Tests of [`RedbLogStore`]: openraft's own storage suite, then what it does not cover:
//! reopening the file, and the edges of truncate and purge.

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{blank_ent, log_id, Suite};
use openraft::{ErrorSubject, ErrorVerb, LogId, LogState, RaftLogReader, Vote};

use super::*;
use crate::cluster::testing::{open_database, TempStoreBuilder, TestConfig};

type Store = RedbLogStore<TestConfig>;

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

fn state(last_purged: Option<LogId<u64>>, last: Option<LogId<u64>>) -> LogState<TestConfig> {
    LogState {
        last_purged_log_id: last_purged,
        last_log_id: last,
    }
}

// Not `#[tokio::test]`: the suite starts a runtime of its own for each case.
#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(TempStoreBuilder).unwrap();
}

#[tokio::test]
async fn vote_committed_and_entries_survive_reopening_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = Store::new(open_database(dir.path())).await.unwrap();
        store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
        append_blanks(&mut store, 1, 1..=5).await;
        store.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
        store.purge(log_id(1, 1, 2)).await.unwrap();
        // Dropping the store drops the last handle on the database, which closes the file.
    }
    let mut store = Store::new(open_database(dir.path())).await.unwrap();
    assert_eq!(
        store.read_vote().await.unwrap(),
        Some(Vote::new_committed(3, 2))
    );
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
    assert_eq!(
        store.get_log_state().await.unwrap(),
        state(Some(log_id(1, 1, 2)), Some(log_id(1, 1, 5)))
    );
    assert_eq!(indexes(&mut store).await, [3, 4, 5]);
}

#[tokio::test]
async fn a_new_store_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(open_database(dir.path())).await.unwrap();
    assert_eq!(store.read_vote().await.unwrap(), None);
    assert_eq!(store.read_committed().await.unwrap(), None);
    assert_eq!(store.get_log_state().await.unwrap(), state(None, None));
    store.save_committed(None).await.unwrap();
    assert_eq!(store.read_committed().await.unwrap(), None);
}

#[tokio::test]
async fn purging_the_whole_log_keeps_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(open_database(dir.path())).await.unwrap();
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
    let mut store = Store::new(open_database(dir.path())).await.unwrap();
    append_blanks(&mut store, 1, 1..=5).await;
    // Past the end: nothing to remove.
    store.truncate(log_id(1, 1, 9)).await.unwrap();
    assert_eq!(indexes(&mut store).await, [1, 2, 3, 4, 5]);
    store.truncate(log_id(1, 1, 4)).await.unwrap();
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
    store.truncate(log_id(1, 1, 1)).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap(), state(None, None));
}

#[tokio::test]
async fn a_reader_sees_entries_appended_after_it_was_made() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::new(open_database(dir.path())).await.unwrap();
    let mut reader = store.get_log_reader().await;
    append_blanks(&mut store, 1, 1..=2).await;
    assert_eq!(indexes(&mut reader).await, [1, 2]);
    assert_eq!(reader.try_get_log_entries(2..=2).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_entry_that_does_not_decode_is_a_read_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let db = open_database(dir.path());
    let mut store = Store::new(Arc::clone(&db)).await.unwrap();
    append_blanks(&mut store, 1, 1..=1).await;
    let txn = db.begin_write().unwrap();
    txn.open_table(LOG)
        .unwrap()
        .insert(2, b"not json".as_slice())
        .unwrap();
    txn.commit().unwrap();
    let err = store.try_get_log_entries(..).await.unwrap_err();
    // The subject and verb are private; openraft shows them as "when {verb:?} {subject:?}".
    let shown = err.into_io().unwrap().to_string();
    let expected = format!(
        "when {:?} {:?}: ",
        ErrorVerb::Read,
        ErrorSubject::<u64>::Logs
    );
    assert!(shown.starts_with(&expected), "{shown}");
    assert!(store.get_log_state().await.is_err());
}
