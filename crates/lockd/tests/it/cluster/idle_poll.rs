//! Idle polling (`--idle-poll-us`): which lockd runs the poller thread, under which scheduling
//! policy, and that it sleeps when nothing happens.

use crate::support::{Deadline, Lockd};

use super::Cluster;

/// Linux's number for the SCHED_IDLE scheduling policy (`sched.h`).
const SCHED_IDLE: u64 = 5;

/// The idle poller thread of process `pid`, if it has one: its state letter and its policy,
/// from `/proc/PID/task/TID/stat` (fields 3 and 41).
fn idle_poller(pid: u32) -> Option<(char, u64)> {
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
        // After the command name in brackets: field 3 (state) is the first, field 41 (policy)
        // the 39th.
        let rest = &stat[stat.rfind(')').expect("stat names the command") + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        let state = fields[0].chars().next().expect("a state letter");
        let policy = fields[38].parse().expect("a policy number");
        return Some((state, policy));
    }
    None
}

#[tokio::test]
async fn a_cluster_node_polls_under_sched_idle_and_sleeps_when_nothing_happens() {
    let cluster = Cluster::start(1, &[]).await;
    cluster.leader(None).await;
    let pid = cluster.nodes[0].as_ref().expect("the node runs").child.id();
    let deadline = Deadline::new("the idle poller to sleep between heartbeats");
    loop {
        let poller = idle_poller(pid).expect("a cluster node runs the idle poller by default");
        assert_eq!(
            poller.1, SCHED_IDLE,
            "the poller runs only on otherwise idle CPU"
        );
        // Only the timers of an idle node wake it (150 ms heartbeats here, a 200 µs window
        // each): a poller that never sleeps would burn a CPU for nothing.
        if poller.0 == 'S' {
            break;
        }
        deadline.tick(format!("state {}", poller.0)).await;
    }
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
    assert_eq!(poller.1, SCHED_IDLE);
}
