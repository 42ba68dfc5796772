//! Idle polling (`--idle-poll-us`): which lockd runs the poller thread, under which scheduling
//! policy, and that it sleeps when nothing happens.

use crate::support::Lockd;

use super::Cluster;

/// Linux's number for the SCHED_IDLE scheduling policy (`sched.h`).
const SCHED_IDLE: u64 = 5;

/// What `/proc` says of the idle poller thread of process `pid`, if it has one.
#[derive(Debug, PartialEq)]
struct Poller {
    /// The scheduling policy (field 41 of `/proc/PID/task/TID/stat`).
    policy: u64,
    /// User and system CPU time so far, in clock ticks (fields 14 and 15).
    cpu_ticks: u64,
}

fn idle_poller(pid: u32) -> Option<Poller> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc lists the threads");
    for task in tasks {
        let path = task.expect("a thread entry").path();
        let Ok(comm) = std::fs::read_to_string(path.join("comm")) else {
            continue; // the thread ended meanwhile
        };
        if comm.trim() != "idle-poll" {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).expect("the poller's stat");
        // The fields after the command name in brackets, from field 3 on.
        let rest = &stat[stat.rfind(')').expect("stat names the command") + 2..];
        let field = |n: usize| -> u64 {
            rest.split(' ')
                .nth(n - 3)
                .expect("the field")
                .parse()
                .expect("a number")
        };
        return Some(Poller {
            policy: field(41),
            cpu_ticks: field(14) + field(15),
        });
    }
    None
}

#[tokio::test]
async fn a_cluster_node_polls_under_sched_idle_and_sleeps_when_nothing_happens() {
    let cluster = Cluster::start(1, &[]).await;
    cluster.leader(None).await;
    let pid = cluster.nodes[0].as_ref().expect("the node runs").child.id();
    let before = idle_poller(pid).expect("a cluster node runs the idle poller by default");
    assert_eq!(
        before.policy, SCHED_IDLE,
        "the poller runs only on otherwise idle CPU"
    );
    // Only the timers of an idle node wake it (150 ms heartbeats here, a 200 µs window each):
    // a poller that never slept would spin a whole CPU. Its CPU time over a second of wall
    // time shows which (a rate, so this waits for a window to pass, not for a condition).
    let window = std::time::Duration::from_secs(1);
    let started = std::time::Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed();
    let after = idle_poller(pid).expect("the poller still runs");
    let used = after.cpu_ticks - before.cpu_ticks;
    // Clock ticks are 1/100 s on Linux: at most half of the window.
    let half = u64::try_from(elapsed.as_millis() / 20).expect("a small number");
    assert!(
        used <= half,
        "the idle poller used {used} ticks of CPU in {elapsed:?}: it does not sleep"
    );
}

#[tokio::test]
async fn a_cluster_node_started_with_zero_has_no_poller() {
    let cluster = Cluster::start(1, &["--idle-poll-us", "0"]).await;
    cluster.leader(None).await;
    let pid = cluster.nodes[0].as_ref().expect("the node runs").child.id();
    assert_eq!(idle_poller(pid), None);
}

#[test]
fn a_single_server_polls_only_when_asked() {
    let plain = Lockd::start(&[]);
    assert_eq!(idle_poller(plain.child.id()), None, "off by default");
    let asked = Lockd::start(&["--idle-poll-us", "100"]);
    let poller = idle_poller(asked.child.id()).expect("--idle-poll-us 100 starts the poller");
    assert_eq!(poller.policy, SCHED_IDLE);
}
