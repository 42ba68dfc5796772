//! Where a node keeps its Raft snapshot: the data in a file of its own in `DIR/snapshots/`, and
//! which file is current, with the snapshot's metadata, in the redb file's `raft_snapshot`
//! table.
//!
//! A snapshot counts once the redb transaction that names its file has committed, and that
//! happens only after the file was written in full under a temporary name, fsynced, renamed to
//! its final name and the directory fsynced. So a node that crashes at any point restarts from
//! the snapshot before. Files that no transaction names (a crash between the rename and the
//! commit, or a temporary file) are deleted when the node opens. A snapshot written by a lockd
//! from before these files keeps its data inside redb (key `data`); opening moves it to a file.
//!
//! Ignorant of what a snapshot holds (`machine.rs` knows): it moves bytes and names files. Its
//! calls block, so async callers run them on the blocking pool.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use openraft::type_config::alias::{LogIdOf, SnapshotMetaOf};
use redb::{Database, ReadableDatabase, TableDefinition};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

use super::types::TypeConfig;

/// The current snapshot, in the node's redb file: `meta` (JSON `SnapshotMeta`) and `file` (the
/// data's file name in the snapshot directory), or, as a lockd from before snapshot files wrote
/// it, `data` (the data itself).
const SNAPSHOT: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_snapshot");

/// The snapshot directory's name in the data directory.
pub const SNAPSHOT_DIR: &str = "snapshots";

/// How a snapshot file's name starts and ends; a temporary file ends in `.tmp` instead.
const PREFIX: &str = "snapshot-";
const SUFFIX: &str = ".json";
const TEMP_SUFFIX: &str = ".tmp";
/// How the temporary file of a snapshot being received starts.
const RECEIVING: &str = "receiving-";

/// A node's snapshot files and the redb rows that say which one is current. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    db: Arc<Database>,
    dir: PathBuf,
    /// Held while a snapshot is made current and the files before it are deleted, so that a
    /// snapshot built here and one installed from the leader, which openraft may run at once,
    /// never delete each other's file.
    commit: Mutex<()>,
    /// Numbers the temporary files of snapshots being received.
    next_temp: AtomicU64,
}

/// A snapshot's data as openraft reads and writes it: an open file, and where it is.
#[derive(Debug)]
pub struct SnapshotFile {
    file: tokio::fs::File,
    path: PathBuf,
}

impl SnapshotStore {
    /// Opens the snapshot directory in `data_dir` (creating it), moves a snapshot kept inside
    /// redb by an older lockd to a file, and deletes every file that is not the current
    /// snapshot's.
    pub(crate) fn open(db: Arc<Database>, data_dir: &Path) -> io::Result<SnapshotStore> {
        let dir = data_dir.join(SNAPSHOT_DIR);
        fs::create_dir_all(&dir)?;
        let store = SnapshotStore {
            inner: Arc::new(Inner {
                db,
                dir,
                commit: Mutex::new(()),
                next_temp: AtomicU64::new(0),
            }),
        };
        store.move_inline_data()?;
        let current = store.current_name()?;
        store.delete_files_but(current.as_deref(), true)?;
        Ok(store)
    }

    /// The redb file the current snapshot is named in.
    #[cfg(test)]
    pub(crate) fn db(&self) -> &Database {
        &self.inner.db
    }

    /// The current snapshot's metadata and file, if there is one.
    pub(crate) fn current<M: DeserializeOwned>(&self) -> io::Result<Option<(M, PathBuf)>> {
        let txn = self.inner.db.begin_read().map_err(db_error)?;
        let table = match txn.open_table(SNAPSHOT) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(err) => return Err(db_error(err)),
        };
        let (Some(meta), Some(file)) = (
            table.get("meta").map_err(db_error)?,
            table.get("file").map_err(db_error)?,
        ) else {
            return Ok(None);
        };
        let meta = serde_json::from_slice(meta.value()).map_err(|err| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the snapshot's metadata cannot be read: {err}"),
            )
        })?;
        let name = file_name(file.value())?;
        Ok(Some((meta, self.inner.dir.join(name))))
    }

    /// Writes a snapshot with `write` and makes it current (see [`commit`](Self::commit)),
    /// in a file named after its last log index and `id`. Returns its file.
    pub(crate) fn write(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        id: &str,
        write: impl FnOnce(&mut BufWriter<&File>) -> io::Result<()>,
    ) -> io::Result<PathBuf> {
        let temp = self
            .inner
            .dir
            .join(format!("{}{TEMP_SUFFIX}", snapshot_name(meta, id)));
        let file = File::create(&temp)?;
        let mut writer = BufWriter::with_capacity(1 << 20, &file);
        write(&mut writer)?;
        writer.flush()?;
        drop(writer);
        drop(file);
        self.commit(meta, id, &temp)
    }

    /// A new temporary file for a snapshot received from the leader, to be made current with
    /// [`commit`](Self::commit) once it is whole. openraft receives one snapshot at a time, so
    /// the files of earlier receptions, abandoned, are deleted.
    pub(crate) async fn receiving(&self) -> io::Result<SnapshotFile> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || store.delete_receiving())
            .await
            .map_err(io::Error::other)??;
        let n = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
        let path = self.inner.dir.join(format!("{RECEIVING}{n}{TEMP_SUFFIX}"));
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .await?;
        Ok(SnapshotFile { file, path })
    }

    /// The file name id of a snapshot built here: its term and index, and the time of the last
    /// entry it covers. (openraft 0.9 called it the snapshot's id; 0.10 has none.)
    pub(crate) fn built_id(meta: &SnapshotMetaOf<TypeConfig>, last_at_ms: u64) -> String {
        snapshot_id(meta, &last_at_ms.to_string())
    }

    /// The file name id of a snapshot received from the leader: its term and index, and a
    /// number no earlier reception of this process used. (openraft 0.9 named a snapshot by the
    /// id the leader sent; 0.10 gives the state machine none.)
    pub(crate) fn received_id(&self, meta: &SnapshotMetaOf<TypeConfig>) -> String {
        let n = self.inner.next_temp.fetch_add(1, Ordering::Relaxed);
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_millis());
        snapshot_id(meta, &format!("r{millis}-{n}"))
    }

    /// Makes the whole snapshot in `temp` current: fsyncs it, renames it to its final name
    /// (its last log index and `id`),
    /// fsyncs the directory, and names it in redb, unless the current snapshot is newer (then
    /// `temp` is deleted and the current one kept). Every other snapshot file is deleted after.
    /// Returns the current snapshot's file.
    pub(crate) fn commit(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        id: &str,
        temp: &Path,
    ) -> io::Result<PathBuf> {
        File::open(temp)?.sync_all()?;
        let name = format!("{}{SUFFIX}", snapshot_name(meta, id));
        let path = self.inner.dir.join(&name);
        let _commit = self
            .inner
            .commit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(current) = self.current_last_log_id()? {
            if Some(current) > meta.last_log_id {
                fs::remove_file(temp)?;
                let current = self.current_name()?.unwrap_or_default();
                return Ok(self.inner.dir.join(current));
            }
        }
        fs::rename(temp, &path)?;
        File::open(&self.inner.dir)?.sync_all()?;
        let meta = serde_json::to_vec(meta).map_err(io::Error::other)?;
        let txn = self.inner.db.begin_write().map_err(db_error)?;
        {
            let mut table = txn.open_table(SNAPSHOT).map_err(db_error)?;
            table.insert("meta", meta.as_slice()).map_err(db_error)?;
            table.insert("file", name.as_bytes()).map_err(db_error)?;
            table.remove("data").map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        self.delete_files_but(Some(&name), false)?;
        Ok(path)
    }

    /// The `last_log_id` of the current snapshot, if any.
    fn current_last_log_id(&self) -> io::Result<Option<LogIdOf<TypeConfig>>> {
        #[derive(serde::Deserialize)]
        struct LastLogId {
            last_log_id: Option<LogIdOf<TypeConfig>>,
        }
        Ok(self
            .current::<LastLogId>()?
            .and_then(|(meta, _)| meta.last_log_id))
    }

    fn current_name(&self) -> io::Result<Option<String>> {
        Ok(self
            .current::<serde::de::IgnoredAny>()?
            .and_then(|(_, path)| {
                path.file_name()
                    .map(|name| name.to_string_lossy().into_owned())
            }))
    }

    /// A snapshot from before snapshot files is kept inside redb: writes it to a file and
    /// makes that current.
    fn move_inline_data(&self) -> io::Result<()> {
        let inline = {
            let txn = self.inner.db.begin_read().map_err(db_error)?;
            let table = match txn.open_table(SNAPSHOT) {
                Ok(table) => table,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(err) => return Err(db_error(err)),
            };
            let meta = table.get("meta").map_err(db_error)?;
            let data = table.get("data").map_err(db_error)?;
            match (meta, data) {
                (Some(meta), Some(data)) => Some((meta.value().to_vec(), data.value().to_vec())),
                _ => None,
            }
        };
        let Some((meta, data)) = inline else {
            return Ok(());
        };
        let unreadable = |err: serde_json::Error| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the snapshot's metadata cannot be read: {err}"),
            )
        };
        let parsed: SnapshotMetaOf<TypeConfig> =
            serde_json::from_slice(&meta).map_err(unreadable)?;
        // openraft 0.9 wrote the snapshot's id into its metadata; 0.10 has none, so the file is
        // named after the id that was stored.
        #[derive(serde::Deserialize)]
        struct StoredId {
            #[serde(default)]
            snapshot_id: String,
        }
        let id: StoredId = serde_json::from_slice(&meta).map_err(unreadable)?;
        // The stored one is current: `commit` keeps a newer one, and none is newer.
        self.write(&parsed, &id.snapshot_id, |writer| writer.write_all(&data))?;
        Ok(())
    }

    /// Deletes the temporary files of snapshots being received.
    fn delete_receiving(&self) -> io::Result<()> {
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(RECEIVING) && name.ends_with(TEMP_SUFFIX) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }

    /// Deletes every snapshot file but `keep`, and every temporary file too if `temps`.
    fn delete_files_but(&self, keep: Option<&str>, temps: bool) -> io::Result<()> {
        for entry in fs::read_dir(&self.inner.dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let snapshot = name.starts_with(PREFIX) && name.ends_with(SUFFIX);
            let temp = name.ends_with(TEMP_SUFFIX);
            if (snapshot && Some(&*name) != keep) || (temps && temp) {
                fs::remove_file(entry.path())?;
            }
        }
        Ok(())
    }
}

impl SnapshotFile {
    /// Opens a stored snapshot's file to read.
    pub(crate) async fn open(path: PathBuf) -> io::Result<SnapshotFile> {
        let file = tokio::fs::File::open(&path).await?;
        Ok(SnapshotFile { file, path })
    }

    /// Where the file is.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl AsyncRead for SnapshotFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_read(cx, buf)
    }
}

impl AsyncWrite for SnapshotFile {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.file).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.file).poll_shutdown(cx)
    }
}

impl AsyncSeek for SnapshotFile {
    fn start_seek(mut self: Pin<&mut Self>, position: io::SeekFrom) -> io::Result<()> {
        Pin::new(&mut self.file).start_seek(position)
    }

    fn poll_complete(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Pin::new(&mut self.file).poll_complete(cx)
    }
}

/// A snapshot's id: its last log id's term and index, then `tail`.
fn snapshot_id(meta: &SnapshotMetaOf<TypeConfig>, tail: &str) -> String {
    let last = meta.last_log_id.as_ref();
    format!(
        "{}-{}-{tail}",
        last.map_or(0, |id| id.leader_id.term),
        last.map_or(0, |id| id.index),
    )
}

/// A snapshot's file name without its suffix: its last log index (zero-padded, so names sort
/// by it) and `id`, kept to the characters a file name may safely have.
fn snapshot_name(meta: &SnapshotMetaOf<TypeConfig>, id: &str) -> String {
    let index = meta.last_log_id.as_ref().map_or(0, |log_id| log_id.index);
    let id: String = id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(64)
        .collect();
    format!("{PREFIX}{index:020}-{id}")
}

/// A file name from redb, which must be a plain name in the snapshot directory.
fn file_name(stored: &[u8]) -> io::Result<&str> {
    std::str::from_utf8(stored)
        .ok()
        .filter(|name| name.starts_with(PREFIX) && name.ends_with(SUFFIX) && !name.contains('/'))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "the snapshot's file name is not one lockd writes",
            )
        })
}

fn db_error(err: impl Into<redb::Error>) -> io::Error {
    io::Error::other(err.into())
}
