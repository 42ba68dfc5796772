//! Idle polling: keep this process's CPU awake for a short while after it was last busy, so
//! that the next step of a request does not wait for a sleeping CPU to wake up.
//!
//! A request in cluster mode crosses many threads (the connection, the Raft core, the log
//! writer and its fsync, the peers) and several processes, and between two steps a thread
//! often has nothing to do for some tens or hundreds of microseconds. When every thread on a
//! CPU waits, the CPU goes idle; on a virtual machine whose guest does not poll before halting,
//! waking it again costs an exit to the hypervisor, and a request pays that cost at almost every
//! step. Measured on a 2-core VM (docs/cluster.md, "Idle polling"), polling took a fifth off a
//! lone client's latency against a 3-node cluster (593 µs p50 against 756 µs).
//!
//! So, as Seastar's reactor and the kernel's own `haltpoll` do, one thread spins for a short
//! window (`--idle-poll-us`) after the last sign of activity, and then sleeps until the next. It
//! runs under `SCHED_IDLE`, so the scheduler gives the CPU to any other thread that wants it at
//! once: it only uses time that would otherwise be idle, and only while requests are flowing. What it costs is that idle time: CPU counters show lockd busier than it
//! is, and a VM that bills for or shares idle cycles pays for them.
//!
//! Activity is reported with [`touch`]: the runtime's workers report every time they go to sleep
//! and wake up, and the Raft log writer before each sync. Without [`start`], [`touch`] does
//! nothing, so tests and embedders never get a spinning thread they did not ask for.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::thread::Thread;
use std::time::{Duration, Instant};

use thread_priority::unix::{
    set_thread_priority_and_policy, thread_native_id, NormalThreadSchedulePolicy,
    ThreadSchedulePolicy,
};
use thread_priority::ThreadPriority;

/// The shared state of the process's idle poller.
struct Poller {
    /// What `last_active_ns` counts from.
    epoch: Instant,
    /// Nanoseconds after `epoch` of the last [`touch`].
    last_active_ns: AtomicU64,
    /// Whether the poller thread is (about to be) parked, waiting for a [`touch`] to wake it.
    asleep: AtomicBool,
    /// How long to spin after the last activity.
    window_ns: u64,
    thread: Thread,
}

static POLLER: OnceLock<Poller> = OnceLock::new();

/// Starts this process's idle poller, which spins for `window` after every [`touch`]. A zero
/// window starts nothing. Only the first call of a process starts a thread.
pub fn start(window: Duration) -> std::io::Result<()> {
    if window.is_zero() || POLLER.get().is_some() {
        return Ok(());
    }
    let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
    let handle = std::thread::Builder::new()
        .name("idle-poll".to_owned())
        .spawn(move || {
            // SCHED_IDLE: the scheduler runs this thread only on a CPU nothing else wants, gives
            // that CPU to any other thread that wakes at once, and counts the CPU as idle when it
            // places a waking thread (nice 19 does none of the last, and cost throughput).
            let idle = ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle);
            if let Err(error) =
                set_thread_priority_and_policy(thread_native_id(), ThreadPriority::Min, idle)
            {
                tracing::warn!(
                    ?error,
                    "idle polling: cannot make the poller SCHED_IDLE; polling stays off"
                );
                return;
            }
            // `start` sets the poller before this thread can look for it.
            let poller = loop {
                if let Some(poller) = POLLER.get() {
                    break poller;
                }
                std::thread::park();
            };
            poller.run();
        })?;
    let thread = handle.thread().clone();
    let poller = Poller {
        epoch: Instant::now(),
        last_active_ns: AtomicU64::new(0),
        asleep: AtomicBool::new(false),
        window_ns,
        thread: thread.clone(),
    };
    // main.rs calls this once. Were two calls to race, the loser's thread would spin with the
    // winner's poller until it first parks, and then stay parked, since touches wake only the
    // winner's thread: one idle thread too many, nothing worse.
    let _ = POLLER.set(poller);
    thread.unpark();
    Ok(())
}

/// Notes that this process is busy now: the poller spins for the window from here.
#[inline]
pub fn touch() {
    if let Some(poller) = POLLER.get() {
        poller.touch();
    }
}

impl Poller {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn touch(&self) {
        // SeqCst here and in the poller's last look before it parks: a toucher that stores and
        // then sees the poller awake, and a poller that says it sleeps and then looks at
        // `last_active_ns`, cannot both miss each other (they would only cost a window).
        self.last_active_ns.store(self.now_ns(), Ordering::SeqCst);
        // Only the toucher that flips `asleep` pays for the wake-up.
        if self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst) {
            self.thread.unpark();
        }
    }

    fn within_window(&self) -> bool {
        self.now_ns()
            .saturating_sub(self.last_active_ns.load(Ordering::SeqCst))
            < self.window_ns
    }

    fn run(&self) -> ! {
        loop {
            while self.within_window() {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
            }
            self.asleep.store(true, Ordering::SeqCst);
            // A touch between the last look and `asleep` saw the poller awake and did not wake
            // it: look once more before sleeping.
            if self.within_window() {
                self.asleep.store(false, Ordering::SeqCst);
                continue;
            }
            // A touch that flipped `asleep` unparks; a spurious wake-up finds an old
            // `last_active_ns` and parks again.
            while self.asleep.load(Ordering::SeqCst) {
                std::thread::park();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn poller(window: Duration) -> Poller {
        Poller {
            // A second back, so that "51 ms ago" is after the epoch.
            epoch: Instant::now()
                .checked_sub(Duration::from_secs(1))
                .expect("the clock runs for a second"),
            last_active_ns: AtomicU64::new(0),
            asleep: AtomicBool::new(false),
            window_ns: u64::try_from(window.as_nanos()).unwrap(),
            thread: std::thread::current(),
        }
    }

    #[test]
    fn a_touch_opens_the_window_and_it_closes_after_it() {
        let poller = poller(Duration::from_millis(50));
        poller.touch();
        assert!(poller.within_window(), "just touched");
        poller.last_active_ns.store(
            poller.now_ns().saturating_sub(51_000_000),
            Ordering::Relaxed,
        );
        assert!(!poller.within_window(), "touched 51 ms ago, window 50 ms");
    }

    #[test]
    fn a_touch_wakes_a_sleeping_poller_once() {
        let poller = poller(Duration::from_millis(1));
        poller.asleep.store(true, Ordering::SeqCst);
        poller.touch();
        assert!(!poller.asleep.load(Ordering::SeqCst), "the touch woke it");
    }
}
