//! Test-only: a type config and the smallest state machine openraft's test suite accepts (an
//! in-memory key-value map with snapshots), so the log store and the network can be tested
//! before, and apart from, the lock-table state machine.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::testing::log::StoreBuilder;
use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::{
    BasicNode, EntryPayload, ErrorSubject, ErrorVerb, OptionalSend, RaftSnapshotBuilder,
    StorageError,
};
use openraft_legacy::network_v1::SnapshotReceiverFactory;
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

impl std::fmt::Display for KvWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.key, self.value)
    }
}

type TestSnapshot = SnapshotOf<TestConfig, Cursor<Vec<u8>>>;

/// An in-memory key-value state machine. Clones share the state, so a test can keep one to look
/// inside while Raft owns another.
#[derive(Debug, Clone, Default)]
pub struct MemStateMachine {
    state: Arc<Mutex<MemState>>,
}

#[derive(Debug, Default)]
struct MemState {
    last_applied: Option<LogIdOf<TestConfig>>,
    membership: StoredMembershipOf<TestConfig>,
    data: BTreeMap<String, String>,
    snapshot: Option<(SnapshotMetaOf<TestConfig>, Vec<u8>)>,
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
    type SnapshotData = Cursor<Vec<u8>>;

    async fn build_snapshot(&mut self) -> Result<TestSnapshot, std::io::Error> {
        let mut state = self.state.lock().unwrap();
        state.snapshots_built += 1;
        let data = serde_json::to_vec(&state.data)?;
        let meta = SnapshotMetaOf::<TestConfig> {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
        };
        state.snapshot = Some((meta.clone(), data.clone()));
        Ok(TestSnapshot {
            meta,
            snapshot: Cursor::new(data),
        })
    }
}

impl RaftStateMachine<TestConfig> for MemStateMachine {
    type SnapshotData = Cursor<Vec<u8>>;
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TestConfig>>, StoredMembershipOf<TestConfig>), std::io::Error> {
        let state = self.state.lock().unwrap();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), std::io::Error>
    where
        Strm: futures_util::Stream<Item = Result<EntryResponder<TestConfig>, std::io::Error>>
            + Unpin
            + OptionalSend,
    {
        while let Some(next) = entries.next().await {
            let (entry, responder) = next?;
            let reply = {
                let mut state = self.state.lock().unwrap();
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(write) => state.data.insert(write.key, write.value),
                    EntryPayload::Membership(membership) => {
                        state.membership =
                            StoredMembershipOf::<TestConfig>::new(Some(entry.log_id), membership);
                        None
                    }
                }
            };
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TestConfig>,
        snapshot: Cursor<Vec<u8>>,
    ) -> Result<(), std::io::Error> {
        let bytes = snapshot.into_inner();
        let data = serde_json::from_slice(&bytes)?;
        let mut state = self.state.lock().unwrap();
        state.data = data;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), bytes));
        state.snapshots_installed += 1;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<TestSnapshot>, std::io::Error> {
        let state = self.state.lock().unwrap();
        Ok(state.snapshot.as_ref().map(|(meta, data)| TestSnapshot {
            meta: meta.clone(),
            snapshot: Cursor::new(data.clone()),
        }))
    }
}

/// Snapshots sent in chunks (openraft 0.9's RPC, kept on lockd's peer wire) are received into
/// memory.
impl SnapshotReceiverFactory<TestConfig> for MemStateMachine {
    type SnapshotReceiver = Cursor<Vec<u8>>;

    async fn begin_receiving_snapshot(&mut self) -> Result<Cursor<Vec<u8>>, std::io::Error> {
        Ok(Cursor::new(Vec::new()))
    }
}

/// Opens (or creates) `dir/lockd.redb`, as cluster mode will.
pub fn open_database(dir: &std::path::Path) -> Arc<Database> {
    Arc::new(Database::create(dir.join(crate::store::DB_FILE)).unwrap())
}

/// Opens the log store in `dir`, as cluster mode does (without a redb file to move a log from).
pub async fn open_log_store(
    dir: &std::path::Path,
) -> Result<WalLogStore<TestConfig>, std::io::Error> {
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
    ) -> Result<
        (tempfile::TempDir, WalLogStore<TestConfig>, MemStateMachine),
        StorageError<TestConfig>,
    > {
        let dir = tempfile::tempdir().unwrap();
        let log_store = open_log_store(dir.path())
            .await
            .map_err(|err| StorageError::from_io_error(ErrorSubject::Logs, ErrorVerb::Read, err))?;
        Ok((dir, log_store, MemStateMachine::default()))
    }
}
