//! The Raft log and vote on disk: [`RedbLogStore`], openraft's `RaftLogStorage` over redb.
//!
//! It shares the database file of single-node mode (`DIR/lockd.redb`) and keeps to tables of its
//! own, so a node's log, vote and (in the lead's state machine) applied state commit through one
//! crash-tested engine. It stores nothing of the state machine and knows nothing of the lock
//! table: entries are opaque serialized `C::Entry` values keyed by log index.
//!
//! Every write is a redb transaction committed with `Durability::Immediate`, so it is fsynced
//! (except the committed index, which openraft lets lag: it is written without an fsync and
//! made durable by the next write): a vote is durable before `save_vote` returns, and `append`
//! reports its entries flushed only after their commit.
//!
//! `append` does not wait for that commit: openraft's core calls it inline, and would stand
//! still for the whole fsync, and replication (which reads the entries back) would start only
//! after it, so a commit cost the leader's fsync and then a follower's, one after the other.
//! Instead `append` puts the entries in `unflushed`, where readers find them at once, and hands
//! them to the log's writer task, which commits everything queued in one transaction (one
//! fsync for several appends), then tells openraft through each append's callback and drops
//! them from `unflushed`. `truncate`, `purge` and `get_log_state` first wait for the writer to
//! finish what was queued before them, so they see and change the log in order. Readers
//! ([`RedbLogReader`]) look in `unflushed` before redb (an entry leaves it only once committed,
//! so it is in one or the other), use redb's snapshot isolation, and never block writes. All
//! redb work runs on Tokio's blocking pool.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    AnyError, ErrorSubject, ErrorVerb, LogId, LogState, OptionalSend, RaftLogId, RaftLogReader,
    RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Log index → the entry, serialized as JSON.
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
/// The log's pointers, each serialized as JSON under one of the keys below.
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
/// The id of the last entry removed by `purge`; the log's start when it is empty.
const LAST_PURGED: &str = "last_purged";

/// The Raft log, vote and committed pointer in a redb database.
///
/// Cloning is not offered: openraft must be the only writer, through `&mut self`.
pub struct RedbLogStore<C: RaftTypeConfig> {
    db: Arc<Database>,
    unflushed: Unflushed,
    writer: mpsc::UnboundedSender<WriterOp<C>>,
}

/// A read-only view of a [`RedbLogStore`]'s log, for openraft's replication tasks.
pub struct RedbLogReader<C> {
    db: Arc<Database>,
    unflushed: Unflushed,
    _config: PhantomData<C>,
}

/// Entries appended and not yet committed, by index, serialized as they will be stored.
type Unflushed = Arc<Mutex<BTreeMap<u64, Arc<[u8]>>>>;

/// What the writer task is asked to do, in order.
enum WriterOp<C: RaftTypeConfig> {
    /// Commit these rows, then call back.
    Append {
        rows: Vec<(u64, Arc<[u8]>)>,
        callback: LogFlushed<C>,
    },
    /// Answer once every op before this one is done.
    Barrier(oneshot::Sender<()>),
}

/// The writer task: commits queued appends, as many as are waiting in one durable transaction,
/// in order, and calls their callbacks once it is on disk; answers barriers in turn. Ends when
/// the store is dropped. It keeps only a weak handle on the database between batches, so that
/// dropping the store (and its readers) closes the file, as before it had a writer.
async fn write_appends<C: RaftTypeConfig>(
    db: std::sync::Weak<Database>,
    unflushed: Unflushed,
    mut ops: mpsc::UnboundedReceiver<WriterOp<C>>,
) {
    while let Some(first) = ops.recv().await {
        let mut rows = Vec::new();
        let mut callbacks = Vec::new();
        let mut barriers = Vec::new();
        let mut next = Some(first);
        while let Some(op) = next.take() {
            match op {
                WriterOp::Append {
                    rows: more,
                    callback,
                } => {
                    rows.extend(more);
                    callbacks.push(callback);
                }
                // Everything before it is in this batch: answered once the batch is done.
                WriterOp::Barrier(done) => {
                    barriers.push(done);
                    break;
                }
            }
            next = ops.try_recv().ok();
        }
        if !rows.is_empty() {
            let committed = rows.clone();
            let Some(db) = db.upgrade() else {
                return;
            };
            let outcome = write(&db, Durability::Immediate, move |txn| {
                let mut log = txn.open_table(LOG)?;
                for (index, bytes) in &committed {
                    log.insert(*index, &**bytes)?;
                }
                Ok(())
            })
            .await;
            drop(db);
            {
                let mut unflushed = unflushed.lock().unwrap_or_else(PoisonError::into_inner);
                for (index, bytes) in &rows {
                    // Only the bytes committed here: an index truncated and appended again
                    // meanwhile keeps its newer entry.
                    if unflushed
                        .get(index)
                        .is_some_and(|kept| Arc::ptr_eq(kept, bytes))
                    {
                        unflushed.remove(index);
                    }
                }
            }
            for callback in callbacks {
                // The commit above was fsynced: only now may openraft count these as flushed.
                let result = match &outcome {
                    Ok(()) => Ok(()),
                    Err(fault) => Err(std::io::Error::other(fault.to_string())),
                };
                callback.log_io_completed(result);
            }
        }
        for done in barriers {
            let _ = done.send(());
        }
    }
}

impl<C: RaftTypeConfig> RedbLogStore<C> {
    /// Opens the log in `db`, creating its tables on first use (one durable commit), and
    /// starts its writer task.
    pub async fn new(db: Arc<Database>) -> Result<Self, StorageError<C::NodeId>> {
        write(&db, Durability::Immediate, |txn| {
            txn.open_table(LOG)?;
            txn.open_table(META)?;
            Ok(())
        })
        .await
        .map_err(|fault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Write))?;
        let unflushed = Unflushed::default();
        let (writer, ops) = mpsc::unbounded_channel();
        tokio::spawn(write_appends::<C>(
            Arc::downgrade(&db),
            Arc::clone(&unflushed),
            ops,
        ));
        Ok(RedbLogStore {
            db,
            unflushed,
            writer,
        })
    }

    /// Waits until the writer has done every append queued before this call.
    async fn drain_writer(&self) -> Result<(), StorageFault> {
        let (done, finished) = oneshot::channel();
        let stopped = || StorageFault::WriterStopped;
        self.writer
            .send(WriterOp::Barrier(done))
            .map_err(|_| stopped())?;
        finished.await.map_err(|_| stopped())
    }

    async fn read_meta<T>(&self, key: &'static str) -> Result<Option<T>, StorageFault>
    where
        T: DeserializeOwned + Send + 'static,
    {
        let db = Arc::clone(&self.db);
        blocking(move || {
            let txn = db.begin_read()?;
            let table = txn.open_table(META)?;
            let value = table.get(key)?;
            match value {
                Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StorageFault> {
        let bytes = serde_json::to_vec(value)?;
        write(&self.db, durability, move |txn| {
            txn.open_table(META)?.insert(key, bytes.as_slice())?;
            Ok(())
        })
        .await
    }
}

impl<C: RaftTypeConfig> Debug for RedbLogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLogStore").finish_non_exhaustive()
    }
}

impl<C> Debug for RedbLogReader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbLogReader").finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for RedbLogReader<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        read_entries::<C>(&self.db, &self.unflushed, range).await
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for RedbLogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        read_entries::<C>(&self.db, &self.unflushed, range).await
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for RedbLogStore<C> {
    type LogReader = RedbLogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        self.drain_writer()
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Read))?;
        let db = Arc::clone(&self.db);
        let read = blocking(move || {
            let txn = db.begin_read()?;
            let last_purged = match txn.open_table(META)?.get(LAST_PURGED)? {
                Some(bytes) => Some(serde_json::from_slice::<LogId<C::NodeId>>(bytes.value())?),
                None => None,
            };
            let last_entry = match txn.open_table(LOG)?.last()? {
                Some((_, bytes)) => Some(serde_json::from_slice::<C::Entry>(bytes.value())?),
                None => None,
            };
            Ok((last_purged, last_entry))
        })
        .await;
        let (last_purged_log_id, last_entry) =
            read.map_err(|fault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Read))?;
        // An empty log ends where the last purge left it.
        let last_log_id = match last_entry {
            Some(entry) => Some(entry.get_log_id().clone()),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        RedbLogReader {
            db: Arc::clone(&self.db),
            unflushed: Arc::clone(&self.unflushed),
            _config: PhantomData,
        }
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.write_meta(VOTE, vote, Durability::Immediate)
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Vote, ErrorVerb::Write))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        self.read_meta(VOTE)
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Vote, ErrorVerb::Read))
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<C::NodeId>>,
    ) -> Result<(), StorageError<C::NodeId>> {
        // openraft allows the committed index to lag (it is only a hint for re-applying after a
        // restart), so it rides along with the next durable write instead of costing an fsync
        // of its own on every commit, on every node.
        self.write_meta(COMMITTED, &committed, Durability::None)
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Write))
    }

    async fn read_committed(
        &mut self,
    ) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        // Stored as `Option` because openraft may save `None`; both mean "nothing committed".
        let stored: Option<Option<LogId<C::NodeId>>> = self
            .read_meta(COMMITTED)
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Read))?;
        Ok(stored.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<C>,
    ) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Write);
        let mut rows = Vec::new();
        for entry in entries {
            let bytes: Arc<[u8]> = serde_json::to_vec(&entry)
                .map_err(|err| to_storage(err.into()))?
                .into();
            rows.push((entry.get_log_id().index, bytes));
        }
        {
            let mut unflushed = self
                .unflushed
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for (index, bytes) in &rows {
                unflushed.insert(*index, Arc::clone(bytes));
            }
        }
        // Readable now; flushed when the writer has committed them (see the module docs).
        self.writer
            .send(WriterOp::Append { rows, callback })
            .map_err(|_| to_storage(StorageFault::WriterStopped))
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let from_index = log_id.index;
        let queued = self.drain_writer().await;
        let fail = |fault: StorageFault| {
            fault.into_storage(ErrorSubject::Log(log_id.clone()), ErrorVerb::Delete)
        };
        queued.map_err(fail)?;
        self.unflushed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|index, _| *index < from_index);
        write(&self.db, Durability::Immediate, move |txn| {
            txn.open_table(LOG)?.retain_in(from_index.., |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(fail)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        let bytes = serde_json::to_vec(&log_id).map_err(|err| to_storage(err.into()))?;
        let up_to_index = log_id.index;
        self.drain_writer().await.map_err(to_storage)?;
        // The pointer and the deletion commit together, so the log never looks as if it started
        // earlier than it does.
        write(&self.db, Durability::Immediate, move |txn| {
            txn.open_table(META)?
                .insert(LAST_PURGED, bytes.as_slice())?;
            txn.open_table(LOG)?
                .retain_in(..=up_to_index, |_, _| false)?;
            Ok(())
        })
        .await
        .map_err(to_storage)
    }
}

/// Why a storage operation failed, before it is named for openraft.
#[derive(Debug, thiserror::Error)]
enum StorageFault {
    #[error("redb: {0}")]
    Database(#[from] redb::Error),
    #[error("stored Raft data does not decode: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("the blocking storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the log's writer task stopped")]
    WriterStopped,
}

impl StorageFault {
    fn into_storage<NID: openraft::NodeId>(
        self,
        subject: ErrorSubject<NID>,
        verb: ErrorVerb,
    ) -> StorageError<NID> {
        StorageIOError::new(subject, verb, AnyError::new(&self)).into()
    }
}

/// Lets `?` turn each of redb's error types into a [`StorageFault`] in one step.
macro_rules! redb_fault {
    ($($error:ty),*) => {$(
        impl From<$error> for StorageFault {
            fn from(error: $error) -> Self {
                StorageFault::Database(error.into())
            }
        }
    )*};
}
redb_fault!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// Runs blocking redb work on Tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, StorageFault>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageFault> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// Runs `work` in one write transaction and commits it with `durability` (`Immediate`: with
/// fsync before returning).
async fn write<F>(db: &Arc<Database>, durability: Durability, work: F) -> Result<(), StorageFault>
where
    F: FnOnce(&redb::WriteTransaction) -> Result<(), StorageFault> + Send + 'static,
{
    let db = Arc::clone(db);
    blocking(move || {
        let mut txn = db.begin_write()?;
        txn.set_durability(durability)?;
        work(&txn)?;
        txn.commit()?;
        Ok(())
    })
    .await
}

/// The entries whose indexes fall in `range`, in order: committed ones from redb, and those
/// still in `unflushed`.
async fn read_entries<C: RaftTypeConfig>(
    db: &Arc<Database>,
    unflushed: &Unflushed,
    range: impl RangeBounds<u64>,
) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
    let bounds: (Bound<u64>, Bound<u64>) =
        (range.start_bound().cloned(), range.end_bound().cloned());
    // Before redb's read transaction: an entry leaves `unflushed` only after its commit, so one
    // missing here is in the transaction begun after.
    let pending: BTreeMap<u64, Arc<[u8]>> = unflushed
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .range(bounds)
        .map(|(index, bytes)| (*index, Arc::clone(bytes)))
        .collect();
    let db = Arc::clone(db);
    blocking(move || {
        let txn = db.begin_read()?;
        let log = txn.open_table(LOG)?;
        let mut entries: BTreeMap<u64, C::Entry> = BTreeMap::new();
        for row in log.range(bounds)? {
            let (index, bytes) = row?;
            if !pending.contains_key(&index.value()) {
                entries.insert(index.value(), serde_json::from_slice(bytes.value())?);
            }
        }
        for (index, bytes) in pending {
            entries.insert(index, serde_json::from_slice(&bytes)?);
        }
        Ok(entries.into_values().collect())
    })
    .await
    .map_err(|fault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Read))
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;
