//! The Raft log and vote on disk: [`WalLogStore`], openraft's `RaftLogStorage` over the
//! append-only segment files of `wal.rs`, in the data directory's `raft-log/`.
//!
//! It stores nothing of the state machine and knows nothing of the lock table: entries are
//! opaque serialized `C::Entry` values keyed by log index.
//!
//! Durability: a vote, a truncate and a purge are durable before their call returns; appended
//! entries are reported flushed (through openraft's callback) only once durable; the committed
//! index, which openraft lets lag, is kept in memory and written with the next of those.
//!
//! `append` does not wait for the disk: it puts the entries in the in-memory index, where
//! readers find them at once, and hands them to the log's writer thread, which writes
//! everything queued in one batch with one sync, then tells openraft through each append's
//! callback. The writer is a thread of its own rather than a task on Tokio's blocking pool: it
//! does nothing but block on the disk, and a hand-off to the pool for each batch would cost a
//! wake-up each time. openraft 0.10's core does not wait for the callback either (its
//! `run_append_entries` submits the append and goes on), so a leader replicates an entry while
//! its own sync runs; openraft 0.9.25's core waited for it (its `append_to_log`), and a commit
//! cost the leader's sync and then a follower's (docs/cluster.md, "Where the time of one
//! request goes").
//!
//! The index keeps each live entry, decoded, until it is written, and then the most recent
//! ones (up to `CACHED_BYTES` encoded), which is what replication reads: a clone, not a decode
//! of JSON for each follower. Older ones are read back from their segment and decoded.
//! Readers ([`WalLogReader`]) take the index's lock only to find and clone entries, never while
//! reading a file or decoding.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::type_config::alias::{LogIdOf, VoteOf};
use openraft::{OptionalSend, RaftTypeConfig};
use prometheus_client::metrics::histogram::Histogram;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use super::wal::{self, Location, Record, Wal, WalError, SEGMENT_BYTES};

/// The log's directory, in the data directory.
pub const LOG_DIR: &str = "raft-log";
/// How much of the written log (by encoded size) the index keeps in memory, decoded, for
/// readers: replication reads an entry just after it is appended, so this serves every
/// follower that is not far behind, without holding much memory when entries carry big values
/// (a decoded entry takes two or three times its encoded size).
pub(crate) const CACHED_BYTES: usize = 8 << 20;

/// Where a lockd from before `raft-log/` kept the log, in the node's redb file: read once, to
/// move the log into `raft-log/`, then dropped (`raft_meta` then holds only a vote that an
/// older lockd cannot read; see [`fence_off_older_lockd`]).
const LEGACY_LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const LEGACY_META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");

/// The Raft log, vote and committed pointer in a directory of segment files.
///
/// Cloning is not offered: openraft must be the only writer, through `&mut self`.
pub struct WalLogStore<C: RaftTypeConfig> {
    index: Arc<Mutex<Index<C::Entry>>>,
    /// The vote, once durable; shared with the readers, which openraft asks for it.
    vote: Arc<Mutex<Option<VoteOf<C>>>>,
    committed: Option<LogIdOf<C>>,
    /// The committed pointer, encoded, not yet handed to the writer: it goes with the next op.
    unsent_committed: Option<Vec<u8>>,
    last_purged: Option<LogIdOf<C>>,
    writer: Option<mpsc::UnboundedSender<WriterOp<C>>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    probe: WriteProbe,
}

/// When the log's writer started the write (and sync) it is still doing, if any: how a node
/// notices that its own disk hangs. Cheap to clone; every clone sees the same writer.
#[derive(Debug, Clone, Default)]
pub struct WriteProbe {
    started: Arc<Mutex<Option<Instant>>>,
}

impl WriteProbe {
    /// How long the write under way has taken by `now`; `None` while the writer is idle.
    pub fn busy_for(&self, now: Instant) -> Option<std::time::Duration> {
        let started = *self.started.lock().unwrap_or_else(PoisonError::into_inner);
        started.map(|started| now.saturating_duration_since(started))
    }

    fn set(&self, started: Option<Instant>) {
        *self.started.lock().unwrap_or_else(PoisonError::into_inner) = started;
    }
}

/// A read-only view of a [`WalLogStore`]'s log, for openraft's replication tasks.
pub struct WalLogReader<C: RaftTypeConfig> {
    index: Arc<Mutex<Index<C::Entry>>>,
    vote: Arc<Mutex<Option<VoteOf<C>>>>,
    _config: PhantomData<C>,
}

/// The live entries, and the files to read them back from.
#[derive(Debug)]
struct Index<E> {
    entries: BTreeMap<u64, Slot<E>>,
    files: BTreeMap<u64, Arc<File>>,
    /// Written entries still kept in memory, oldest first (an index may be stale: one
    /// truncated or replaced since).
    cached: VecDeque<u64>,
    /// The encoded size of the entries kept in memory.
    kept_bytes: usize,
    /// Counts appends, to tell an entry from one appended at the same index after a truncate.
    appends: u64,
}

/// One live entry: kept in memory, decoded, until written and no longer among the most recent;
/// and where it is on disk once written. At least one of the two is always there.
#[derive(Debug)]
struct Slot<E> {
    entry: Option<E>,
    /// Its encoded size.
    size: usize,
    /// Which append put it here.
    append: u64,
    at: Option<Location>,
}

impl<E> Index<E> {
    fn new(files: BTreeMap<u64, Arc<File>>, written: BTreeMap<u64, Location>) -> Self {
        let entries = written.into_iter().map(|(index, at)| {
            let slot = Slot {
                entry: None,
                size: 0,
                append: 0,
                at: Some(at),
            };
            (index, slot)
        });
        Index {
            entries: entries.collect(),
            files,
            cached: VecDeque::new(),
            kept_bytes: 0,
            appends: 0,
        }
    }

    /// Puts `entry` (`size` bytes encoded) at `index`, replacing it and every entry after it;
    /// returns the append's number, for [`Index::written`].
    fn insert(&mut self, index: u64, entry: E, size: usize) -> u64 {
        self.remove_from(index);
        self.appends += 1;
        self.kept_bytes += size;
        let slot = Slot {
            entry: Some(entry),
            size,
            append: self.appends,
            at: None,
        };
        self.entries.insert(index, slot);
        self.appends
    }

    /// Removes the entries from `index` on.
    fn remove_from(&mut self, index: u64) {
        let removed = self.entries.split_off(&index);
        self.forget(removed.into_values());
    }

    /// Removes the entries up to `index`.
    fn remove_through(&mut self, index: u64) {
        let kept = self.entries.split_off(&index.saturating_add(1));
        let removed = std::mem::replace(&mut self.entries, kept);
        self.forget(removed.into_values());
    }

    fn forget(&mut self, slots: impl Iterator<Item = Slot<E>>) {
        for slot in slots {
            if slot.entry.is_some() {
                self.kept_bytes -= slot.size;
            }
        }
    }

    /// Notes that append number `append`, at `index`, is on disk at `at`, unless the entry was
    /// truncated or replaced meanwhile; then drops the oldest kept entries beyond the budget.
    fn written(&mut self, index: u64, append: u64, at: Location) {
        let Some(slot) = self.entries.get_mut(&index) else {
            return;
        };
        if slot.append != append {
            return;
        }
        slot.at = Some(at);
        self.cached.push_back(index);
        // Purged entries leave the queue too, so it stays as long as the live log.
        while let Some(front) = self.cached.front() {
            if self.entries.contains_key(front) {
                break;
            }
            self.cached.pop_front();
        }
        while self.kept_bytes > CACHED_BYTES {
            let Some(oldest) = self.cached.pop_front() else {
                break;
            };
            if let Some(slot) = self.entries.get_mut(&oldest) {
                if slot.at.is_some() && slot.entry.take().is_some() {
                    self.kept_bytes -= slot.size;
                }
            }
        }
    }
}

/// What the writer thread is asked to do, in order.
enum WriterOp<C: RaftTypeConfig> {
    /// Write these entries (index, append number, encoded), sync, then call back.
    Append {
        rows: Vec<(u64, u64, Vec<u8>)>,
        callback: IOFlushed<C>,
    },
    Truncate {
        since: u64,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Record the purge, sync, then delete the segments it emptied.
    Purge {
        index: u64,
        log_id: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    Vote {
        bytes: Vec<u8>,
        done: oneshot::Sender<io::Result<()>>,
    },
    /// Written, and synced with the op after it.
    Committed { bytes: Vec<u8> },
}

impl<C: RaftTypeConfig> WriterOp<C> {
    fn record(&self) -> Record<'_> {
        match self {
            // Each row is a record of its own; see `write_batch`.
            WriterOp::Append { .. } => unreachable!("appends are written row by row"),
            WriterOp::Truncate { since, .. } => Record::Truncate { since: *since },
            WriterOp::Purge { index, log_id, .. } => Record::Purge {
                index: *index,
                log_id,
            },
            WriterOp::Vote { bytes, .. } => Record::Vote(bytes),
            WriterOp::Committed { bytes } => Record::Committed(bytes),
        }
    }

    /// Tells the caller how its op went.
    fn finish(self, outcome: io::Result<()>) {
        match self {
            WriterOp::Append { callback, .. } => callback.io_completed(outcome),
            WriterOp::Truncate { done, .. }
            | WriterOp::Purge { done, .. }
            | WriterOp::Vote { done, .. } => {
                let _ = done.send(outcome);
            }
            WriterOp::Committed { .. } => {}
        }
    }
}

/// The writer thread: writes queued ops, as many as are waiting, in one batch and one sync, in
/// order, and tells each caller once its op is durable. After a failed write or sync, what is
/// on disk is unknown, so every later op fails too (openraft then stops the node). Ends when
/// the store is dropped.
fn run_writer<C: RaftTypeConfig>(
    mut wal: Wal,
    index: Arc<Mutex<Index<C::Entry>>>,
    mut ops: mpsc::UnboundedReceiver<WriterOp<C>>,
    sync_seconds: Option<Histogram>,
    probe: WriteProbe,
) {
    let mut failed: Option<(io::ErrorKind, String)> = None;
    while let Some(first) = ops.blocking_recv() {
        let mut batch = vec![first];
        while let Ok(op) = ops.try_recv() {
            batch.push(op);
        }
        let outcome = match &failed {
            Some(_) => Ok(()),
            None => {
                // The sync keeps this thread off the CPU for a while: keep the CPU awake for
                // when it is done (see `idle_poll`).
                crate::idle_poll::touch();
                probe.set(Some(Instant::now()));
                #[cfg(test)]
                test_stall::wait_while_stalled();
                let started = Instant::now();
                let written = write_batch(&mut wal, &index, &batch);
                probe.set(None);
                if let Some(histogram) = &sync_seconds {
                    histogram.observe(started.elapsed().as_secs_f64());
                }
                written
            }
        };
        if let Err(error) = outcome {
            tracing::error!(%error, "the Raft log cannot be written; this node stops");
            failed = Some((error.kind(), error.to_string()));
        }
        for op in batch {
            let result = match &failed {
                Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
                None => Ok(()),
            };
            op.finish(result);
        }
    }
}

fn write_batch<C: RaftTypeConfig>(
    wal: &mut Wal,
    index: &Mutex<Index<C::Entry>>,
    batch: &[WriterOp<C>],
) -> io::Result<()> {
    let mut records = Vec::new();
    let mut sync = false;
    for op in batch {
        match op {
            WriterOp::Append { rows, .. } => {
                records.extend(rows.iter().map(|(index, _, bytes)| Record::Entry {
                    index: *index,
                    bytes,
                }));
            }
            other => records.push(other.record()),
        }
        sync |= !matches!(op, WriterOp::Committed { .. });
    }
    let locations = wal.write(&records, sync)?;
    let purged = batch
        .iter()
        .filter_map(|op| match op {
            WriterOp::Purge { index, .. } => Some(*index),
            _ => None,
        })
        .max();
    if let Some(purged) = purged {
        wal.delete_purged(purged)?;
    }
    let files_changed = wal.take_files_changed();
    let mut index = lock(index);
    if files_changed {
        // Before any reader can find an entry in a new segment; without the deleted ones.
        index.files = wal.files();
    }
    let rows = batch.iter().flat_map(|op| match op {
        WriterOp::Append { rows, .. } => rows.as_slice(),
        _ => &[],
    });
    let written = locations.iter().filter_map(|at| *at);
    for ((at_index, append, _), at) in rows.zip(written) {
        index.written(*at_index, *append, at);
    }
    Ok(())
}

fn lock<E>(index: &Mutex<Index<E>>) -> MutexGuard<'_, Index<E>> {
    index.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<C: RaftTypeConfig> WalLogStore<C> {
    /// Opens the log in `dir` (created when missing), first moving into it a log that an
    /// older lockd kept in `legacy`, the node's redb file. Each write's time, sync included,
    /// goes to `sync_seconds`.
    pub async fn open(
        dir: PathBuf,
        legacy: Option<Arc<Database>>,
        sync_seconds: Option<Histogram>,
    ) -> Result<Self, io::Error> {
        Self::open_with(dir, legacy, sync_seconds, SEGMENT_BYTES).await
    }

    /// [`WalLogStore::open`] with segments of `segment_bytes`.
    pub(crate) async fn open_with(
        dir: PathBuf,
        legacy: Option<Arc<Database>>,
        sync_seconds: Option<Histogram>,
        segment_bytes: u64,
    ) -> Result<Self, io::Error> {
        #[cfg(test)]
        let stall_key = dir.clone();
        let opened = blocking(move || {
            if let Some(db) = legacy {
                move_legacy_log(&db, &dir)?;
                fence_off_older_lockd(&db)?;
            }
            Ok(Wal::open(&dir, segment_bytes)?)
        })
        .await;
        let (wal, recovered) =
            opened.map_err(|fault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Read))?;
        let decode_pointers = || -> Result<_, StorageFault> {
            let vote = recovered
                .pointers
                .vote
                .as_deref()
                .map(serde_json::from_slice);
            let committed = recovered
                .pointers
                .committed
                .as_deref()
                .map(serde_json::from_slice::<Option<LogIdOf<C>>>);
            let purged = recovered.pointers.last_purged.as_ref();
            let last_purged = purged.map(|(_, bytes)| serde_json::from_slice(bytes));
            Ok((
                vote.transpose()?,
                committed.transpose()?.flatten(),
                last_purged.transpose()?,
            ))
        };
        let (vote, committed, last_purged) = decode_pointers()
            .map_err(|fault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Read))?;
        let index = Index::new(recovered.files, recovered.entries);
        let index = Arc::new(Mutex::new(index));
        let (writer, ops) = mpsc::unbounded_channel();
        let writer_index = Arc::clone(&index);
        let probe = WriteProbe::default();
        let writer_probe = probe.clone();
        let writer_thread = std::thread::Builder::new()
            .name("raft-log-writer".to_owned())
            .spawn(move || {
                #[cfg(test)]
                test_stall::writer_of(stall_key);
                run_writer::<C>(wal, writer_index, ops, sync_seconds, writer_probe)
            })
            .map_err(|err| {
                StorageFault::Io(err).into_storage(ErrorSubject::Store, ErrorVerb::Write)
            })?;
        Ok(WalLogStore {
            index,
            vote: Arc::new(Mutex::new(vote)),
            committed,
            unsent_committed: None,
            last_purged,
            writer: Some(writer),
            writer_thread: Some(writer_thread),
            probe,
        })
    }

    /// Tells how long the writer's current write has taken (see [`WriteProbe`]).
    pub fn write_probe(&self) -> WriteProbe {
        self.probe.clone()
    }

    /// Hands `op` to the writer, after the committed pointer if it changed since the last op.
    fn send(&mut self, op: WriterOp<C>) -> Result<(), StorageFault> {
        let writer = self.writer.as_ref().ok_or(StorageFault::WriterStopped)?;
        let stopped = |_| StorageFault::WriterStopped;
        if let Some(bytes) = self.unsent_committed.take() {
            writer
                .send(WriterOp::Committed { bytes })
                .map_err(stopped)?;
        }
        writer.send(op).map_err(stopped)
    }

    /// Queues an op and waits until it is durable.
    async fn write_durably(
        &mut self,
        op: impl FnOnce(oneshot::Sender<io::Result<()>>) -> WriterOp<C>,
    ) -> Result<(), StorageFault> {
        let (done, finished) = oneshot::channel();
        self.send(op(done))?;
        finished.await.map_err(|_| StorageFault::WriterStopped)??;
        Ok(())
    }
}

impl<C: RaftTypeConfig> Drop for WalLogStore<C> {
    /// Lets the writer finish what was queued, so the files are quiet once the store is gone
    /// (a node reopened in the same process must not race its old writer).
    fn drop(&mut self) {
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

impl<C: RaftTypeConfig> Debug for WalLogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLogStore").finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> Debug for WalLogReader<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WalLogReader").finish_non_exhaustive()
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for WalLogReader<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        read_entries::<C>(&self.index, range).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(current_vote::<C>(&self.vote))
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for WalLogStore<C>
where
    C::Entry: Clone,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        read_entries::<C>(&self.index, range).await
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<C>>, io::Error> {
        Ok(current_vote::<C>(&self.vote))
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for WalLogStore<C>
where
    C::Entry: Clone,
{
    type LogReader = WalLogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last = lock(&self.index).entries.last_key_value().map(|(i, _)| *i);
        let last_entry = match last {
            Some(last) => read_entries::<C>(&self.index, last..=last).await?.pop(),
            None => None,
        };
        // An empty log ends where the last purge left it.
        let last_log_id = match last_entry {
            Some(entry) => Some(entry.log_id()),
            None => self.last_purged.clone(),
        };
        Ok(LogState {
            last_purged_log_id: self.last_purged.clone(),
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        WalLogReader {
            index: Arc::clone(&self.index),
            vote: Arc::clone(&self.vote),
            _config: PhantomData,
        }
    }

    async fn save_vote(&mut self, vote: &VoteOf<C>) -> Result<(), io::Error> {
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Vote, ErrorVerb::Write);
        let bytes = encode(vote).map_err(to_storage)?;
        self.write_durably(|done| WriterOp::Vote { bytes, done })
            .await
            .map_err(to_storage)?;
        *self.vote.lock().unwrap_or_else(PoisonError::into_inner) = Some(vote.clone());
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        // openraft allows the committed index to lag (it is only a hint for re-applying after a
        // restart), so it goes to the writer with the next op and is synced with it, instead of
        // costing a sync, or even a write and a wake-up of the writer, on every commit, on
        // every node.
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Store, ErrorVerb::Write);
        self.unsent_committed = Some(encode(&committed).map_err(to_storage)?);
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        Ok(self.committed.clone())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Write);
        let mut encoded = Vec::new();
        for entry in entries {
            let bytes = encode(&entry).map_err(to_storage)?;
            encoded.push((entry, bytes));
        }
        let mut rows = Vec::with_capacity(encoded.len());
        {
            let mut index = lock(&self.index);
            for (entry, bytes) in encoded {
                let at = entry.index();
                let append = index.insert(at, entry, bytes.len());
                rows.push((at, append, bytes));
            }
        }
        // Readable now; flushed when the writer has synced them (see the module docs).
        self.send(WriterOp::Append { rows, callback })
            .map_err(to_storage)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let since = last_log_id.as_ref().map_or(0, |log_id| log_id.index() + 1);
        lock(&self.index).remove_from(since);
        self.write_durably(|done| WriterOp::Truncate { since, done })
            .await
            .map_err(|fault| fault.into_storage(ErrorSubject::Log(since), ErrorVerb::Delete))
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        let to_storage =
            |fault: StorageFault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Delete);
        let bytes = encode(&log_id).map_err(to_storage)?;
        let index = log_id.index();
        lock(&self.index).remove_through(index);
        self.write_durably(|done| WriterOp::Purge {
            index,
            log_id: bytes,
            done,
        })
        .await
        .map_err(to_storage)?;
        self.last_purged = Some(log_id);
        Ok(())
    }
}

/// Moves a log kept in the node's redb file by an older lockd into `dir`, then drops its
/// tables. The new log is built aside and renamed into place, so a crash leaves either the old
/// log or the whole new one; once `dir` holds a segment the move is done (only the tables may be
/// left).
fn move_legacy_log(db: &Database, dir: &Path) -> Result<(), StorageFault> {
    let txn = db.begin_read()?;
    let log = match txn.open_table(LEGACY_LOG) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
        Err(err) => return Err(err.into()),
    };
    // The move is done once the directory has a segment; an empty one is no log.
    let moved = dir.is_dir()
        && std::fs::read_dir(dir)?
            .filter_map(Result::ok)
            .any(|item| item.file_name().to_string_lossy().ends_with(".wal"));
    if !moved {
        if dir.exists() {
            std::fs::remove_dir_all(dir)?;
        }
        let meta = txn.open_table(LEGACY_META)?;
        let get = |key: &str| -> Result<Option<Vec<u8>>, StorageFault> {
            Ok(meta.get(key)?.map(|bytes| bytes.value().to_vec()))
        };
        let vote = get("vote")?;
        let committed = get("committed")?;
        let last_purged = get("last_purged")?;
        let purged_index = match &last_purged {
            Some(bytes) => Some(serde_json::from_slice::<LogIdIndex>(bytes)?.index),
            None => None,
        };
        let aside = dir.with_extension("moving");
        if aside.exists() {
            std::fs::remove_dir_all(&aside)?;
        }
        let (mut wal, _) = Wal::open(&aside, SEGMENT_BYTES)?;
        let mut records = Vec::new();
        if let Some(vote) = &vote {
            records.push(Record::Vote(vote));
        }
        if let Some(committed) = &committed {
            records.push(Record::Committed(committed));
        }
        if let (Some(index), Some(log_id)) = (purged_index, &last_purged) {
            records.push(Record::Purge { index, log_id });
        }
        wal.write(&records, true)?;
        let mut rows = Vec::new();
        for row in log.iter()? {
            let (index, bytes) = row?;
            rows.push((index.value(), bytes.value().to_vec()));
        }
        let entries: Vec<Record<'_>> = rows
            .iter()
            .map(|(index, bytes)| Record::Entry {
                index: *index,
                bytes,
            })
            .collect();
        wal.write(&entries, true)?;
        drop(wal);
        std::fs::rename(&aside, dir)?;
        if let Some(parent) = dir.parent() {
            wal::sync_dir(parent)?;
        }
        tracing::info!(
            entries = rows.len(),
            dir = %dir.display(),
            "moved the Raft log out of the redb file into its own log files"
        );
    }
    drop(log);
    drop(txn);
    let txn = db.begin_write()?;
    txn.delete_table(LEGACY_LOG)?;
    txn.delete_table(LEGACY_META)?;
    txn.commit()?;
    Ok(())
}

/// What a lockd from before `raft-log/` reads as its vote, in the table where it kept it: not a
/// vote, so that lockd refuses to start (its error shows this text) instead of finding no log
/// and no vote, and voting again in a term this node already voted in.
const OLDER_LOCKD_VOTE: &[u8] =
    br#""this node's Raft log is in raft-log/, which this lockd is too old to read: run a newer lockd""#;

/// Puts [`OLDER_LOCKD_VOTE`] where an older lockd looks for its vote, once per data directory.
fn fence_off_older_lockd(db: &Database) -> Result<(), StorageFault> {
    {
        let txn = db.begin_read()?;
        match txn.open_table(LEGACY_META) {
            Ok(meta) => {
                if meta
                    .get("vote")?
                    .is_some_and(|vote| vote.value() == OLDER_LOCKD_VOTE)
                {
                    return Ok(());
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(err) => return Err(err.into()),
        }
    }
    let txn = db.begin_write()?;
    txn.open_table(LEGACY_META)?
        .insert("vote", OLDER_LOCKD_VOTE)?;
    txn.commit()?;
    Ok(())
}

/// The index of a stored `LogId`, whatever its node id type.
#[derive(serde::Deserialize)]
struct LogIdIndex {
    index: u64,
}

/// Why a storage operation failed, before it is named for openraft.
#[derive(Debug, thiserror::Error)]
enum StorageFault {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Wal(#[from] WalError),
    #[error("redb: {0}")]
    Database(#[from] redb::Error),
    #[error("stored Raft data does not decode: {0}")]
    Codec(#[from] serde_json::Error),
    #[error("the blocking storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the log's writer stopped")]
    WriterStopped,
    #[error("the log has no entry {0} where its index has one")]
    Missing(u64),
}

impl StorageFault {
    /// The fault as openraft 0.10 takes a storage error: an `io::Error` that says what was
    /// being done to what ("when writing the vote: ..."), as openraft 0.9's storage errors
    /// did.
    fn into_storage(self, subject: ErrorSubject, verb: ErrorVerb) -> io::Error {
        let kind = match &self {
            StorageFault::Io(err) => err.kind(),
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, format!("when {verb} {subject}: {self}"))
    }
}

/// What a storage operation was done to, for its error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ErrorSubject {
    Store,
    Logs,
    Vote,
    /// The log from this index on.
    Log(u64),
}

/// What a storage operation was doing, for its error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum ErrorVerb {
    Read,
    Write,
    Delete,
}

impl std::fmt::Display for ErrorSubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorSubject::Store => f.write_str("the log store"),
            ErrorSubject::Logs => f.write_str("the log"),
            ErrorSubject::Vote => f.write_str("the vote"),
            ErrorSubject::Log(from) => write!(f, "the log from index {from}"),
        }
    }
}

impl std::fmt::Display for ErrorVerb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorVerb::Read => "reading",
            ErrorVerb::Write => "writing",
            ErrorVerb::Delete => "deleting",
        })
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
    redb::CommitError
);

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageFault> {
    Ok(serde_json::to_vec(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageFault> {
    Ok(serde_json::from_slice(bytes)?)
}

/// Runs blocking work on Tokio's blocking pool.
async fn blocking<T, F>(work: F) -> Result<T, StorageFault>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, StorageFault> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await?
}

/// An entry found in the index: the entry, or where to read it.
enum Found<E> {
    Kept(E),
    OnDisk(Arc<File>, Location),
}

/// The vote last saved, as the store and its readers share it.
fn current_vote<C: RaftTypeConfig>(vote: &Mutex<Option<VoteOf<C>>>) -> Option<VoteOf<C>> {
    vote.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The entries whose indexes fall in `range`, in order. Entries still in memory are cloned;
/// the others are read from their segments and decoded, on the blocking pool.
async fn read_entries<C: RaftTypeConfig>(
    index: &Mutex<Index<C::Entry>>,
    range: impl RangeBounds<u64>,
) -> Result<Vec<C::Entry>, io::Error>
where
    C::Entry: Clone,
{
    let to_storage = |fault: StorageFault| fault.into_storage(ErrorSubject::Logs, ErrorVerb::Read);
    let bounds: (Bound<u64>, Bound<u64>) =
        (range.start_bound().cloned(), range.end_bound().cloned());
    let found = {
        let index = lock(index);
        let mut found = Vec::new();
        for (at_index, slot) in index.entries.range(bounds) {
            let item = match (&slot.entry, slot.at) {
                (Some(entry), _) => Found::Kept(entry.clone()),
                (None, Some(at)) => match index.files.get(&at.segment) {
                    Some(file) => Found::OnDisk(Arc::clone(file), at),
                    None => return Err(to_storage(StorageFault::Missing(*at_index))),
                },
                (None, None) => return Err(to_storage(StorageFault::Missing(*at_index))),
            };
            found.push(item);
        }
        found
    };
    if !found.iter().any(|item| matches!(item, Found::OnDisk(..))) {
        return Ok(found
            .into_iter()
            .filter_map(|item| match item {
                Found::Kept(entry) => Some(entry),
                Found::OnDisk(..) => None,
            })
            .collect());
    }
    let read_all = move || -> Result<Vec<C::Entry>, StorageFault> {
        found
            .into_iter()
            .map(|item| match item {
                Found::Kept(entry) => Ok(entry),
                Found::OnDisk(file, at) => decode(&wal::read_at(&file, at)?),
            })
            .collect()
    };
    blocking(read_all).await.map_err(to_storage)
}

#[cfg(test)]
#[path = "log_store_tests.rs"]
mod tests;

/// Tests only: a stuck disk. While a log directory is stalled, its writer thread waits before
/// each write, as if its sync hung, and whoever waits for the log waits with it.
#[cfg(test)]
pub(crate) mod test_stall {
    use std::cell::RefCell;
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};
    use std::sync::{Condvar, Mutex, PoisonError};

    static STALLED: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());
    static CHANGED: Condvar = Condvar::new();

    thread_local! {
        static WRITER_OF: RefCell<Option<PathBuf>> = const { RefCell::new(None) };
    }

    /// This thread writes the log in `dir`.
    pub(super) fn writer_of(dir: PathBuf) {
        WRITER_OF.with(|key| *key.borrow_mut() = Some(dir));
    }

    /// Blocks while this thread's log directory is stalled.
    pub(super) fn wait_while_stalled() {
        let Some(dir) = WRITER_OF.with(|key| key.borrow().clone()) else {
            return;
        };
        let stalled = STALLED.lock().unwrap_or_else(PoisonError::into_inner);
        let _released = CHANGED
            .wait_while(stalled, |stalled| stalled.contains(&dir))
            .unwrap_or_else(PoisonError::into_inner);
    }

    /// Stalls the log in `dir` (a store's directory, as given to `open`) until the guard is
    /// released or dropped (a failing test must not leave a writer stuck, or its runtime
    /// would never finish shutting down).
    pub(crate) fn stall(dir: &Path) -> Stall {
        let mut stalled = STALLED.lock().unwrap_or_else(PoisonError::into_inner);
        stalled.insert(dir.to_path_buf());
        Stall(dir.to_path_buf())
    }

    /// A stalled log; see [`stall`].
    pub(crate) struct Stall(PathBuf);

    impl Stall {
        pub(crate) fn release(self) {}
    }

    impl Drop for Stall {
        fn drop(&mut self) {
            let mut stalled = STALLED.lock().unwrap_or_else(PoisonError::into_inner);
            stalled.remove(&self.0);
            CHANGED.notify_all();
        }
    }
}
