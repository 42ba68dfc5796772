//! What lockd logs: the filter (`--log-level`, else `RUST_LOG`, else `info`), with openraft's
//! own logs held at `warn` unless the filter names openraft, and openraft's repeated warnings
//! let through at most once per callsite every [`OPENRAFT_REPEAT_EVERY`].
//!
//! While a cluster node is down, openraft warns about it on every heartbeat tick (several times
//! a second) and dumps its state at `info`; lockd's own lines drowned in that. The first
//! warning from a callsite still shows, and the next one after the window, so an operator sees
//! that the condition lasts without reading it four times a second.
//!
//! This module reads the clock (`Instant::now`) to rate-limit; nothing else depends on it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::Metadata;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::EnvFilter;

/// How often one openraft callsite may log.
pub const OPENRAFT_REPEAT_EVERY: Duration = Duration::from_secs(10);

/// The log filter: `log_level` (from `--log-level`), else `rust_log` (`RUST_LOG`), else `info`;
/// `openraft=warn` is added unless the filter already says something about openraft.
pub fn filter(
    log_level: Option<&str>,
    rust_log: Option<&str>,
) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let directives = log_level
        .or(rust_log.filter(|text| !text.trim().is_empty()))
        .unwrap_or("info");
    if directives.contains("openraft") {
        EnvFilter::try_new(directives)
    } else {
        EnvFilter::try_new(format!("{directives},openraft=warn"))
    }
}

/// A per-layer filter that lets each openraft callsite log once per `every`; every other
/// event passes untouched.
#[derive(Debug)]
pub struct OpenraftRepeats {
    limiter: RepeatLimiter<Identifier>,
}

impl OpenraftRepeats {
    /// Lets one event per openraft callsite through every `every`.
    pub fn new(every: Duration) -> OpenraftRepeats {
        OpenraftRepeats {
            limiter: RepeatLimiter::new(every),
        }
    }
}

impl<S> Filter<S> for OpenraftRepeats {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !(is_openraft(metadata) && metadata.is_event())
            || self.limiter.allow(metadata.callsite(), Instant::now())
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // An openraft event must be asked about each time, or the first answer would stick.
        if is_openraft(metadata) {
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

fn is_openraft(metadata: &Metadata<'_>) -> bool {
    metadata.target().starts_with("openraft")
}

/// When each key last got through; see [`RepeatLimiter::allow`].
#[derive(Debug)]
struct RepeatLimiter<K> {
    every: Duration,
    last: Mutex<HashMap<K, Instant>>,
}

impl<K: Hash + Eq> RepeatLimiter<K> {
    fn new(every: Duration) -> RepeatLimiter<K> {
        RepeatLimiter {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `key` may log at `now`: the first time, and then once `every` has passed since
    /// the last time it did.
    fn allow(&self, key: K, now: Instant) -> bool {
        // A panic while holding this lock would leave only a stale time behind.
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        match last.get(&key) {
            Some(&then) if now.saturating_duration_since(then) < self.every => false,
            _ => {
                last.insert(key, now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Arc;

    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    use super::*;

    #[test]
    fn a_key_gets_through_once_per_window() {
        let limiter = RepeatLimiter::new(Duration::from_secs(10));
        let (a, b) = ("a", "b");
        let start = Instant::now();
        let at = |secs| start + Duration::from_secs(secs);
        assert!(limiter.allow(a, at(0)));
        assert!(!limiter.allow(a, at(1)));
        assert!(limiter.allow(b, at(1)), "another key has its own window");
        assert!(!limiter.allow(a, at(9)));
        assert!(limiter.allow(a, at(10)));
        assert!(!limiter.allow(a, at(11)));
    }

    #[test]
    fn openraft_is_held_at_warn_unless_the_filter_names_it() {
        let text = |filter: EnvFilter| filter.to_string();
        assert_eq!(text(filter(None, None).unwrap()), "openraft=warn,info");
        assert_eq!(
            text(filter(None, Some("debug")).unwrap()),
            "openraft=warn,debug"
        );
        assert_eq!(
            text(filter(Some("trace"), Some("debug")).unwrap()),
            "openraft=warn,trace",
            "--log-level wins over RUST_LOG"
        );
        assert_eq!(
            text(filter(None, Some("info,openraft=debug")).unwrap()),
            "openraft=debug,info"
        );
        assert!(filter(Some("=bad="), None).is_err());
    }

    /// Lines written by a subscriber, for the test below.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_repeated_openraft_warning_shows_once_and_lockds_own_lines_all_show() {
        let lines = Lines::default();
        let writer = lines.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_filter(OpenraftRepeats::new(Duration::from_secs(3600)));
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            for tick in 0..5 {
                tracing::warn!(target: "openraft::replication", tick, "node 3 unreachable");
                tracing::warn!(target: "lockd::cluster", tick, "our own warning");
            }
        });
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.matches("node 3 unreachable").count(), 1, "{text}");
        assert_eq!(text.matches("our own warning").count(), 5, "{text}");
    }
}
