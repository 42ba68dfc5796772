//! The data directory: created on start and owned by one lockd at a time.
//!
//! Ownership is an OS file lock on `DIR/LOCK`, held for the life of the process. The kernel
//! drops it when the process dies, however it dies, so a crash never leaves a stale lock behind
//! (unlike a PID file), and a second lockd on the same directory is refused at once.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};

/// The name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// An open, exclusively locked data directory. Dropping it releases the lock.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// The directory could not be created or the lock file could not be opened.
    #[error("cannot open data directory {}: {source}", path.display())]
    Open {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// Another process holds the lock.
    #[error(
        "data directory {} is in use by another lockd (it holds the lock on {}); \
         stop it or pick another --data-dir",
        path.display(),
        path.join(LOCK_FILE).display()
    )]
    InUse {
        /// The directory.
        path: PathBuf,
    },
}

impl DataDir {
    /// Creates `path` if needed and takes its lock without waiting.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let open_error = |source| DataDirError::Open {
            path: path.to_owned(),
            source,
        };
        std::fs::create_dir_all(path).map_err(open_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path.join(LOCK_FILE))
            .map_err(open_error)?;
        match lock.try_lock() {
            Ok(()) => Ok(DataDir {
                path: path.to_owned(),
                _lock: lock,
            }),
            Err(TryLockError::WouldBlock) => Err(DataDirError::InUse {
                path: path.to_owned(),
            }),
            Err(TryLockError::Error(source)) => Err(open_error(source)),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_is_refused_until_the_first_lets_go() {
        let dir = std::env::temp_dir().join(format!("lockd-data-dir-test-{}", std::process::id()));
        let first = DataDir::open(&dir).unwrap();
        assert!(matches!(
            DataDir::open(&dir),
            Err(DataDirError::InUse { .. })
        ));
        drop(first);
        let again = DataDir::open(&dir).unwrap();
        assert_eq!(again.path(), dir);
        drop(again);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_path_that_is_a_file_is_an_open_error() {
        let file = std::env::temp_dir().join(format!("lockd-data-dir-file-{}", std::process::id()));
        std::fs::write(&file, b"not a directory").unwrap();
        let err = DataDir::open(&file).unwrap_err();
        assert!(matches!(err, DataDirError::Open { .. }), "{err}");
        assert!(err.to_string().contains(&*file.to_string_lossy()));
        std::fs::remove_file(&file).unwrap();
    }
}
