//! When the driver builds a locks report for the admin API, and who waits for the next one.
//!
//! A report walks the whole table, so the driver builds one at most every [`REPORT_INTERVAL`]
//! and only after something changed; every request in between shares the last one. A request
//! that comes after a change waits for the next report rather than see state older than
//! itself. The cache only decides; the driver builds the report (it owns the table and the
//! connections) and hands it to [`ReportCache::publish`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::report::LocksReport;

/// The shortest time between two reports.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// The last report, and the requests waiting for the next.
#[derive(Debug, Default)]
pub(crate) struct ReportCache {
    latest: Option<Arc<LocksReport>>,
    /// When `latest` was built.
    built: Option<Instant>,
    /// Whether the table may have changed since `latest` was built.
    stale: bool,
    /// Requests waiting for the next build.
    waiting: Vec<oneshot::Sender<Arc<LocksReport>>>,
}

impl ReportCache {
    /// The table may have changed.
    pub(crate) fn mark_stale(&mut self) {
        self.stale = true;
    }

    /// A request for a report: answered at once with the last one if nothing changed since,
    /// else queued. Returns true if a report should be built now.
    pub(crate) fn request(&mut self, reply: oneshot::Sender<Arc<LocksReport>>) -> bool {
        match &self.latest {
            Some(latest) if !self.stale => {
                let _ = reply.send(Arc::clone(latest));
                false
            }
            _ => {
                self.waiting.push(reply);
                self.due().is_some_and(|due| due <= Instant::now())
            }
        }
    }

    /// When the next report may be built, if anyone waits for one.
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.waiting.is_empty() {
            return None;
        }
        Some(match self.built {
            Some(built) => built + REPORT_INTERVAL,
            None => Instant::now(),
        })
    }

    /// Answers everyone waiting with a new report, and keeps it for later requests.
    pub(crate) fn publish(&mut self, report: LocksReport) {
        let report = Arc::new(report);
        self.built = Some(Instant::now());
        self.stale = false;
        for reply in self.waiting.drain(..) {
            let _ = reply.send(Arc::clone(&report));
        }
        self.latest = Some(report);
    }
}
