//! The redb-backed store: one database file, `DIR/lockd.redb`, written with immediate
//! durability (each commit is fsynced before it returns).
//!
//! redb is crash-safe by design (copy-on-write B-trees with a checksummed commit slot), pure
//! Rust, and refuses files that are not its own, which is why it was chosen over a hand-rolled
//! log: see ARCHITECTURE.md.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use protocol::ResourceName;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use super::{BackupStats, CommitBatch, Snapshot, Store, StoreError, StoredState};

/// The database file inside the data directory.
pub const DB_FILE: &str = "lockd.redb";

/// Resource name → value.
const VALUES: TableDefinition<&str, &str> = TableDefinition::new("values");
/// Small named numbers; today only [`TOKENS_RESERVED`].
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const TOKENS_RESERVED: &str = "tokens_reserved";

/// A store in a redb database file.
#[derive(Debug)]
pub struct RedbStore {
    /// `None` after a failed commit: redb refuses every later transaction after an I/O error
    /// ("close and re-open the database"), so the next commit opens the file again, which
    /// also recovers it to the last durable commit.
    db: Option<Database>,
    path: PathBuf,
}

impl RedbStore {
    /// Opens (or creates) `dir/lockd.redb` and reads everything in it. Any error names the file:
    /// lockd must never start with an empty state in place of data it could not read.
    pub fn open(dir: &Path) -> Result<(RedbStore, StoredState), StoreError> {
        let path = dir.join(DB_FILE);
        let fail = |action: &'static str| {
            let path = path.clone();
            move |source: redb::Error| StoreError::Open {
                action,
                path,
                source: Box::new(source),
            }
        };
        let db = Database::create(&path).map_err(|err| fail("open the store")(err.into()))?;
        let mut store = RedbStore {
            db: Some(db),
            path: path.clone(),
        };
        // Create the tables on first use, so a read-only open below always finds them.
        store
            .try_commit(&CommitBatch::default())
            .map_err(fail("initialise the store"))?;
        let stored = store.read_all().map_err(fail("read the store"))?;
        Ok((store, stored))
    }

    fn read_all(&mut self) -> Result<StoredState, redb::Error> {
        let txn = self.database()?.begin_read()?;
        let mut stored = StoredState::default();
        for entry in txn.open_table(VALUES)?.iter()? {
            let (name, value) = entry?;
            let name = ResourceName::new(name.value()).map_err(|err| {
                redb::Error::Corrupted(format!("stored resource name is invalid: {err}"))
            })?;
            stored.values.insert(name, Arc::from(value.value()));
        }
        if let Some(reserved) = txn.open_table(META)?.get(TOKENS_RESERVED)? {
            stored.tokens_reserved = reserved.value();
        }
        Ok(stored)
    }

    /// The open database, opening the file again first if an earlier commit failed.
    fn database(&mut self) -> Result<&Database, redb::Error> {
        let db = match self.db.take() {
            Some(db) => db,
            None => {
                let db = Database::create(&self.path)?;
                tracing::info!(path = %self.path.display(), "store reopened after a failed commit");
                db
            }
        };
        Ok(self.db.insert(db))
    }

    fn try_commit(&mut self, batch: &CommitBatch) -> Result<(), redb::Error> {
        let mut txn = self.database()?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut values = txn.open_table(VALUES)?;
            for (name, value) in &batch.values {
                values.insert(name.as_str(), &**value)?;
            }
            let mut meta = txn.open_table(META)?;
            if let Some(reserved) = batch.tokens_reserved {
                meta.insert(TOKENS_RESERVED, reserved)?;
            }
        }
        txn.commit()?;
        Ok(())
    }
}

impl Store for RedbStore {
    fn commit(&mut self, batch: &CommitBatch) -> Result<(), StoreError> {
        self.try_commit(batch).map_err(|err| {
            self.db = None;
            StoreError::Write {
                path: self.path.clone(),
                source: Box::new(err),
            }
        })
    }

    /// A read transaction: redb keeps its view of the last commit however many commits follow,
    /// so the copy is consistent without stopping anyone.
    fn snapshot(&mut self) -> Result<Box<dyn Snapshot>, StoreError> {
        let path = self.path.clone();
        let txn = self
            .database()
            .and_then(|db| db.begin_read().map_err(redb::Error::from))
            .map_err(|err| StoreError::Backup {
                path,
                source: Box::new(err),
            })?;
        Ok(Box::new(RedbSnapshot { txn }))
    }
}

/// [`RedbStore`] at one instant.
#[derive(Debug)]
struct RedbSnapshot {
    txn: redb::ReadTransaction,
}

impl Snapshot for RedbSnapshot {
    fn write_to(self: Box<Self>, dest: &Path) -> Result<BackupStats, StoreError> {
        self.copy(dest).map_err(|err| StoreError::Backup {
            path: dest.to_owned(),
            source: Box::new(err),
        })
    }
}

impl RedbSnapshot {
    fn copy(&self, dest: &Path) -> Result<BackupStats, redb::Error> {
        create_backup_file(dest, |values, meta, stats| {
            for entry in self.txn.open_table(VALUES)?.iter()? {
                let (name, value) = entry?;
                values.insert(name.value(), value.value())?;
                stats.values += 1;
            }
            for entry in self.txn.open_table(META)?.iter()? {
                let (key, number) = entry?;
                meta.insert(key.value(), number.value())?;
                if key.value() == TOKENS_RESERVED {
                    stats.tokens_reserved = number.value();
                }
            }
            Ok(())
        })
    }
}

/// A store's content held in memory (a cluster node's table), written as the file a
/// [`RedbStore`] keeps: a cluster's backup, which a single server starts from as it is, and a
/// cluster loads.
#[derive(Debug)]
pub struct StateCopy {
    /// The values, and the highest token issued (the reservation a restore starts above).
    pub state: StoredState,
}

impl Snapshot for StateCopy {
    fn write_to(self: Box<Self>, dest: &Path) -> Result<BackupStats, StoreError> {
        let written = create_backup_file(dest, |values, meta, stats| {
            for (name, value) in &self.state.values {
                values.insert(name.as_str(), &**value)?;
                stats.values += 1;
            }
            meta.insert(TOKENS_RESERVED, self.state.tokens_reserved)?;
            stats.tokens_reserved = self.state.tokens_reserved;
            Ok(())
        });
        written.map_err(|err| StoreError::Backup {
            path: dest.to_owned(),
            source: Box::new(err),
        })
    }
}

/// Creates the store file `dest` (which must not exist), lets `fill` write its values and meta
/// tables and count what it wrote, and commits it durably.
fn create_backup_file(
    dest: &Path,
    fill: impl FnOnce(
        &mut redb::Table<'_, &str, &str>,
        &mut redb::Table<'_, &str, u64>,
        &mut BackupStats,
    ) -> Result<(), redb::Error>,
) -> Result<BackupStats, redb::Error> {
    if dest.exists() {
        return Err(redb::Error::Io(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "a backup never overwrites a file",
        )));
    }
    let copy = Database::create(dest)?;
    let mut txn = copy.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    let mut stats = BackupStats {
        values: 0,
        tokens_reserved: 0,
    };
    {
        let mut values = txn.open_table(VALUES)?;
        let mut meta = txn.open_table(META)?;
        fill(&mut values, &mut meta, &mut stats)?;
    }
    txn.commit()?;
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> ResourceName {
        ResourceName::new(s).unwrap()
    }

    #[test]
    fn values_and_reservation_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, stored) = RedbStore::open(dir.path()).unwrap();
        assert_eq!(stored, StoredState::default());
        store
            .commit(&CommitBatch {
                values: vec![
                    (name("a"), Arc::from("1")),
                    (name("b"), Arc::from("x")),
                    (name("a"), Arc::from("2")),
                ],
                tokens_reserved: Some(1 << 20),
            })
            .unwrap();
        drop(store);
        let (_, stored) = RedbStore::open(dir.path()).unwrap();
        assert_eq!(stored.tokens_reserved, 1 << 20);
        assert_eq!(stored.values.len(), 2);
        assert_eq!(&*stored.values[&name("a")], "2");
        assert_eq!(&*stored.values[&name("b")], "x");
    }

    #[test]
    fn a_snapshot_copies_what_was_committed_before_it_and_nothing_after() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _) = RedbStore::open(dir.path()).unwrap();
        let commit = |store: &mut RedbStore, value: &str, reserved: u64| {
            store
                .commit(&CommitBatch {
                    values: vec![(name("a"), Arc::from(value))],
                    tokens_reserved: Some(reserved),
                })
                .unwrap();
        };
        commit(&mut store, "before", 100);
        let snapshot = store.snapshot().unwrap();
        commit(&mut store, "after", 200);
        let copy = dir.path().join("backup");
        std::fs::create_dir(&copy).unwrap();
        let stats = snapshot.write_to(&copy.join(DB_FILE)).unwrap();
        assert_eq!(
            stats,
            BackupStats {
                values: 1,
                tokens_reserved: 100
            }
        );
        let (_, restored) = RedbStore::open(&copy).unwrap();
        assert_eq!(&*restored.values[&name("a")], "before");
        assert_eq!(restored.tokens_reserved, 100);
        // A backup never overwrites.
        let again = store.snapshot().unwrap();
        assert!(again.write_to(&copy.join(DB_FILE)).is_err());
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(DB_FILE),
            b"this is not a redb database at all",
        )
        .unwrap();
        let err = RedbStore::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(DB_FILE), "{err}");
        // The file is left as it was: never replaced by an empty store.
        let kept = std::fs::read(dir.path().join(DB_FILE)).unwrap();
        assert_eq!(kept, b"this is not a redb database at all");
    }
}
