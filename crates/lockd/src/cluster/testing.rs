//! Test-only: a type config and the smallest state machine openraft's test suite accepts (an
//! in-memory key-value map with snapshots), so the log store and the network can be tested
//! before, and apart from, the lock-table state machine.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use openraft::storage::RaftStateMachine;
use openraft::testing::StoreBuilder;
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, Snapshot, SnapshotMeta,
    StorageError, StorageIOError, StoredMembership,
};
use redb::Database;
use serde::{Deserialize, Serialize};

use super::log_store::{WalLogStore, LOG_DIR};

openraft::declare_raft_types!(
    /// Types for the tests of this module: a key-value write, answered with the previous value.
    pub TestConfig:
        D = KvWrite,
        R = Option<String>,
        NodeId = u64,
        Node = BasicNode,
);

/// Sets `key` to `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvWrite {
    pub key: String,
    pub value: String,
}

/// An in-memory key-value state machine. Clones share the state, so a test can keep one to look
/// inside while Raft owns another.
#[derive(Debug, Clone, Default)]
pub struct MemStateMachine {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    last_applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembership<u64, BasicNode>,
    data: BTreeMap<String, String>,
    snapshot: Option<(SnapshotMeta<u64, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
    snapshots_installed: u64,
}

impl MemStateMachine {
    /// A copy of the key-value map.
    pub fn data(&self) -> BTreeMap<String, String> {
        self.state.lock().unwrap().data.clone()
    }

    /// How many snapshots were installed from a leader.
    pub fn snapshots_installed(&self) -> u64 {
        self.state.lock().unwrap().snapshots_installed
    }
}

impl RaftSnapshotBuilder<TestConfig> for MemStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TestConfig>, StorageError<u64>> {
        let mut state = self.state.lock().unwrap();
        state.snapshots_built += 1;
        let data = serde_json::to_vec(&state.data)
            .map_err(|err| StorageIOError::write_snapshot(None, &err))?;
        let last_index = state.last_applied.map_or(0, |log_id| log_id.index);
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id: format!("{last_index}-{}", state.snapshots_built),
        };
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TestConfig> for MemStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembership<u64, BasicNode>), StorageError<u64>> {
        let state = self.state.lock().unwrap();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Option<String>>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TestConfig>> + Send,
    {
        let mut state = self.state.lock().unwrap();
        let mut replies = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => replies.push(None),
                EntryPayload::Normal(write) => {
                    replies.push(state.data.insert(write.key, write.value));
                }
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    replies.push(None);
                }
            }
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let bytes = snapshot.into_inner();
        let data = serde_json::from_slice(&bytes)
            .map_err(|err| StorageIOError::read_snapshot(Some(meta.signature()), &err))?;
        let mut state = self.state.lock().unwrap();
        state.data = data;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        state.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TestConfig>>, StorageError<u64>> {
        let state = self.state.lock().unwrap();
        Ok(state.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

/// Opens (or creates) `dir/lockd.redb`, as cluster mode will.
pub fn open_database(dir: &std::path::Path) -> Arc<Database> {
    Arc::new(Database::create(dir.join(crate::store::DB_FILE)).unwrap())
}

/// Opens the log store in `dir`, as cluster mode does (without a redb file to move a log from).
pub async fn open_log_store(
    dir: &std::path::Path,
) -> Result<WalLogStore<TestConfig>, StorageError<u64>> {
    WalLogStore::open(dir.join(LOG_DIR), None, None).await
}

/// Builds a fresh log store in a temporary directory and an empty state machine, for
/// `openraft::testing::Suite`.
#[derive(Debug)]
pub struct TempStoreBuilder;

impl StoreBuilder<TestConfig, WalLogStore<TestConfig>, MemStateMachine, tempfile::TempDir>
    for TempStoreBuilder
{
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, WalLogStore<TestConfig>, MemStateMachine), StorageError<u64>>
    {
        let dir = tempfile::tempdir().unwrap();
        let log_store = open_log_store(dir.path()).await?;
        Ok((dir, log_store, MemStateMachine::default()))
    }
}
