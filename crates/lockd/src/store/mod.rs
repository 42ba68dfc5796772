//! Durable state: resource values and the fencing-token reservation.
//!
//! Only two things outlive a lockd process: each resource's value, and the highest fencing token
//! the server may have handed out. Everything else (sessions, holders, queues) is memory and
//! ends with the process, so every lock is free after a restart.
//!
//! The driver hands the store one [`CommitBatch`] at a time (everything written since the last
//! one), and sends the replies that depend on it only after [`Store::commit`] returns `Ok`.
//! That is group commit: the writes of many sessions that arrive while a commit runs share the
//! next fsync, and a lone writer gets its own at once.

mod redb_store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::ResourceName;

pub use self::redb_store::{RedbStore, StateCopy, DB_FILE};

/// What a store holds when it is opened.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoredState {
    /// Every value ever written and not since replaced.
    pub values: HashMap<ResourceName, Arc<str>>,
    /// The highest token the server may have handed out (0 for a new store): the next server
    /// starts above it.
    pub tokens_reserved: u64,
}

/// What the driver wrote since its last commit, committed atomically.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CommitBatch {
    /// New values, in the order they were written (a later entry for the same resource wins).
    pub values: Vec<(ResourceName, Arc<str>)>,
    /// A new token reservation to record, if the table asked for one.
    pub tokens_reserved: Option<u64>,
}

impl CommitBatch {
    /// True when there is nothing to commit.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.tokens_reserved.is_none()
    }
}

/// Why the store failed. Messages name the file and the cause.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's file could not be opened, set up or read at start.
    #[error("cannot {action} {}: {source}", path.display())]
    Open {
        /// What failed, e.g. "open the store".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A commit could not be made durable.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// The disk failed (a store that is not redb, such as a test's failing store).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// An earlier commit panicked and took the store with it: every later commit fails.
    #[error("the store is unavailable after an earlier failure")]
    Unavailable,
    /// The commit panicked; the text is the panic's.
    #[error("the store failed: {0}")]
    Panicked(String),
    /// A backup could not be taken or written.
    #[error("cannot back up the store to {}: {source}", path.display())]
    Backup {
        /// Where the copy was going.
        path: PathBuf,
        /// The cause.
        source: Box<redb::Error>,
    },
    /// This store keeps nothing that could be copied (stores built for tests).
    #[error("this store cannot be backed up")]
    NoBackup,
}

/// Where values and the token reservation are kept. Implementations must make a batch durable
/// (on disk, synced) before `commit` returns `Ok`, and must apply it all or not at all.
pub trait Store: Send + 'static {
    /// Makes `batch` durable. On error nothing of it may be visible after a restart.
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError>;

    /// A consistent view of everything committed so far, to copy while commits go on.
    fn snapshot(&mut self) -> Result<Box<dyn Snapshot>, StoreError> {
        Err(StoreError::NoBackup)
    }
}

/// A store as it was at one instant (a read transaction), copied while later commits go on.
pub trait Snapshot: Send + std::fmt::Debug + 'static {
    /// Writes the copy as a new store file at `dest`, which must not exist yet, durably; says
    /// what it holds. Slow for a large store: run it off the driver.
    fn write_to(self: Box<Self>, dest: &Path) -> Result<BackupStats, StoreError>;
}

/// What a backup holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupStats {
    /// Values copied.
    pub values: u64,
    /// The token reservation copied (a restore starts above it, and above the clock).
    pub tokens_reserved: u64,
}
