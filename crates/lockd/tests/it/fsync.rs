//! Evidence that "acknowledged" means "on disk": lockd runs under strace, and every write's
//! acknowledgement must come after an fsync (or fdatasync) that completed after the write
//! request was read. A SIGKILL cannot show this (the page cache outlives the process); the
//! order of system calls can.

use std::process::Command;

use serde_json::json;

use crate::support::{Deadline, Lockd};

const WRITES: u64 = 20;
/// Write requests use ids from here, so they are easy to find in the trace.
const FIRST_WRITE_ID: u64 = 7_000_001;

#[tokio::test]
async fn every_acknowledged_write_follows_a_completed_fsync() {
    audit_writes(&[]).await;
}

/// The same for a cluster (of one voter, so that every commit is this process's fsync): the
/// Raft log store must have the entry on disk before the state machine's reply goes out.
#[tokio::test]
async fn every_acknowledged_write_in_a_cluster_follows_a_completed_fsync() {
    audit_writes(&[
        "--node-id",
        "1",
        "--peer-listen",
        "127.0.0.1:0",
        "--peers",
        "1=127.0.0.1:5555/127.0.0.1:5556",
        "--bootstrap",
        "--election-timeout-ms",
        "300",
        "--heartbeat-ms",
        "80",
    ])
    .await;
}

/// Runs lockd (with `flags`) under strace, makes [`WRITES`] acknowledged writes, and checks
/// the trace.
async fn audit_writes(flags: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("strace.txt");
    let data = dir.path().join("data");
    let mut command = Command::new("strace");
    command
        .args(["-f", "-qq", "-s", "512", "-o"])
        .arg(&trace)
        .args([
            "-e",
            "trace=fsync,fdatasync,read,recvfrom,recvmsg,readv,write,sendto,sendmsg,writev",
            env!("CARGO_BIN_EXE_lockd"),
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .args(flags);
    let mut lockd = Lockd::spawn(&mut command, &data);
    let mut conn = lockd.connect().await;
    // A cluster of one elects itself; until then it answers `not_leader`.
    let deadline = Deadline::new("the cluster of one to elect itself and grant a lock");
    let token = loop {
        let reply = conn
            .call(json!({"id": 1, "op": "acquire", "resource": "audited"}))
            .await;
        if reply["ok"] == true {
            break reply["token"].as_u64().unwrap();
        }
        assert_eq!(reply["error"]["code"], "not_leader", "{reply}");
        conn = lockd.connect().await;
        deadline.tick(&reply).await;
    };
    for i in 0..WRITES {
        let id = FIRST_WRITE_ID + i;
        let write = json!({"id": id, "op": "write", "resource": "audited", "token": token, "value": format!("v{i}")});
        assert_eq!(conn.call(write).await, json!({"id": id, "ok": true}));
    }
    drop(conn);
    // Stop lockd itself (strace's child); strace exits with it and flushes the trace.
    let children = std::fs::read_to_string(format!(
        "/proc/{pid}/task/{pid}/children",
        pid = lockd.child.id()
    ))
    .unwrap();
    let lockd_pid = children
        .split_whitespace()
        .next()
        .expect("strace runs lockd");
    let killed = Command::new("kill")
        .args(["-TERM", lockd_pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = crate::support::wait_with_patience(&mut lockd.child);
    assert!(status.success(), "{status:?}");

    let trace = std::fs::read_to_string(&trace).unwrap();
    let report = check_trace(&trace);
    assert_eq!(report.acks, WRITES, "every ack was seen in the trace");
    assert!(report.syncs >= WRITES, "{report:?}");
}

#[derive(Debug)]
struct TraceReport {
    acks: u64,
    syncs: u64,
}

/// Walks the trace in order and fails on an ack sent before its write was synced.
fn check_trace(trace: &str) -> TraceReport {
    let write_ids = FIRST_WRITE_ID..FIRST_WRITE_ID + WRITES;
    // Ids of write requests read from the socket and not yet covered by a completed sync.
    let mut unsynced = std::collections::BTreeSet::new();
    let mut synced = std::collections::BTreeSet::new();
    let mut report = TraceReport { acks: 0, syncs: 0 };
    for line in trace.lines() {
        let sync_done = (line.contains("fsync(") || line.contains("fdatasync("))
            && !line.contains("<unfinished")
            || line.contains("<... fsync resumed>")
            || line.contains("<... fdatasync resumed>");
        if sync_done && line.trim_end().ends_with("= 0") {
            report.syncs += 1;
            synced.append(&mut unsynced);
            continue;
        }
        for id in write_ids.clone() {
            let request = format!(r#"\"id\":{id},\"op\":\"write\""#);
            let ack = format!(r#"{{\"id\":{id},\"ok\":true}}"#);
            if line.contains(&request) {
                unsynced.insert(id);
            }
            if line.contains(&ack) {
                assert!(
                    synced.contains(&id),
                    "write {id} was acknowledged before any fsync completed after it was read:\n{line}"
                );
                report.acks += 1;
            }
        }
    }
    report
}
