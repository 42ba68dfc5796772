//! Commits on the blocking pool, one at a time: the store goes to the pool with the batch and
//! comes back with the outcome.
//!
//! The [`Committer`] owns the store. It knows nothing of the table or of frames: the driver
//! decides what to commit and what a finished commit means (see `pipeline.rs`). It reads the
//! clock only to time commits, for the metrics and for readiness.

use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use super::pipeline::CommitId;
use tokio::sync::oneshot;

use crate::seam::BackupRefused;
use crate::store::{CommitBatch, Snapshot, Store, StoreError};

/// Runs the driver's commits, one at a time.
pub(crate) struct Committer {
    /// `None` while a commit runs on the blocking pool, and for good after a commit panicked
    /// with it.
    store: Option<Box<dyn Store>>,
    running: Option<RunningCommit>,
    /// Backups asked for while a commit ran: they get their snapshot when the store is back.
    waiting_snapshots: Vec<SnapshotReply>,
}

/// Where a backup's snapshot goes.
pub(crate) type SnapshotReply = oneshot::Sender<Result<Box<dyn Snapshot>, BackupRefused>>;

/// A commit running on the blocking pool.
struct RunningCommit {
    id: CommitId,
    tokens_reserved: Option<u64>,
    started: Instant,
    /// Gives the store back with the commit's outcome.
    task: JoinHandle<(Box<dyn Store>, Result<(), StoreError>)>,
}

/// How a commit ended.
#[derive(Debug)]
pub(crate) struct CommitOutcome {
    pub(crate) id: CommitId,
    /// The token reservation it carried, now durable if it succeeded.
    pub(crate) tokens_reserved: Option<u64>,
    /// How long it took.
    pub(crate) took: Duration,
    pub(crate) result: Result<(), StoreError>,
}

impl Committer {
    pub(crate) fn new(store: Box<dyn Store>) -> Committer {
        Committer {
            store: Some(store),
            running: None,
            waiting_snapshots: Vec::new(),
        }
    }

    /// A consistent view of the store for a backup, taken between commits: now if no commit
    /// runs, else as soon as the running one is done (so it includes every write acknowledged
    /// before it was asked for).
    pub(crate) fn snapshot(&mut self, reply: SnapshotReply) {
        match self.store.as_mut() {
            Some(store) => {
                let _ = reply.send(store.snapshot().map_err(BackupRefused::from));
            }
            None if self.running.is_some() => self.waiting_snapshots.push(reply),
            None => {
                let _ = reply.send(Err(StoreError::Unavailable.into()));
            }
        }
    }

    /// Whether a commit is running.
    pub(crate) fn is_running(&self) -> bool {
        self.running.is_some()
    }

    /// How long the running commit has run, if one is running.
    pub(crate) fn running_for(&self) -> Option<Duration> {
        let running = self.running.as_ref()?;
        Some(running.started.elapsed())
    }

    /// Starts committing `batch` on the blocking pool. Fails at once, handing back the
    /// outcome, if an earlier commit panicked and took the store with it. Call only when no
    /// commit is running.
    pub(crate) fn start(
        &mut self,
        id: CommitId,
        batch: CommitBatch,
        tokens_reserved: Option<u64>,
    ) -> Result<(), CommitOutcome> {
        let started = Instant::now();
        let Some(mut store) = self.store.take() else {
            return Err(CommitOutcome {
                id,
                tokens_reserved,
                took: Duration::ZERO,
                result: Err(StoreError::Unavailable),
            });
        };
        let task = tokio::task::spawn_blocking(move || {
            let result = store.commit(&batch);
            (store, result)
        });
        self.running = Some(RunningCommit {
            id,
            tokens_reserved,
            started,
            task,
        });
        Ok(())
    }

    /// Waits for the running commit, if any (forever if none), and takes its outcome once it
    /// has finished. Cancel-safe: dropped before the commit finishes, it leaves it running.
    pub(crate) async fn finished(&mut self) -> CommitOutcome {
        let Some(commit) = self.running.as_mut() else {
            return std::future::pending().await;
        };
        let joined = (&mut commit.task).await;
        let Some(commit) = self.running.take() else {
            // Unreachable: `running` was `Some` just above and nothing in between takes it.
            return std::future::pending().await;
        };
        let result = match joined {
            Ok((store, result)) => {
                self.store = Some(store);
                result
            }
            Err(err) => Err(StoreError::Panicked(err.to_string())),
        };
        for reply in std::mem::take(&mut self.waiting_snapshots) {
            self.snapshot(reply);
        }
        CommitOutcome {
            id: commit.id,
            tokens_reserved: commit.tokens_reserved,
            took: commit.started.elapsed(),
            result,
        }
    }
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer")
            .field("running", &self.running.as_ref().map(|commit| commit.id))
            .finish_non_exhaustive()
    }
}
