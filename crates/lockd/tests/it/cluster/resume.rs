//! Resuming a session needs the secret its `hello` returned: a session id is no credential
//! (`status` and `/v1/locks` show it), and a wrong guess disturbs nobody.

use serde_json::json;

use super::{hello, Cluster};
use crate::support::{error_code, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_alone_does_not_take_a_session_over() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader(None).await;
    let mut victim = cluster.connect(leader).await;
    let opened = hello(&mut victim, None).await;
    let secret = opened["resume_secret"].as_str().expect("a resume secret");
    assert_eq!(secret.len(), 32, "128 bits in hex: {opened}");
    let token = victim.lock(1, "payroll", "exclusive").await;
    let wrote = victim
        .call(
            json!({"id": 2, "op": "write", "resource": "payroll", "token": token,
                     "value": "salaries"}),
        )
        .await;
    assert_eq!(wrote["ok"], true, "{wrote}");

    // What anyone connected sees: the holder's session id.
    let mut onlooker = cluster.connect(leader).await;
    let status = onlooker.call(json!({"id": 1, "op": "status"})).await;
    let holder = &status["resources"][0]["holders"][0];
    assert_eq!(holder["session"], opened["session"], "{status}");

    let mut wrong = secret.to_owned();
    let last = if wrong.ends_with('0') { "1" } else { "0" };
    wrong.replace_range(31.., last);
    let attempts = [
        json!({"id": 100, "op": "hello", "session": opened["session"]}),
        json!({"id": 100, "op": "hello", "session": opened["session"], "resume_secret": wrong}),
        json!({"id": 100, "op": "hello", "session": opened["session"], "resume_secret": ""}),
    ];
    for attempt in attempts {
        let mut attacker = cluster.connect(leader).await;
        let refused = attacker.call(attempt.clone()).await;
        assert_eq!(
            error_code(&refused),
            "no_session",
            "{attempt} got {refused}"
        );
        // Not bound to the victim's session: the victim's saved reply to request 2 is not
        // given, and its token opens nothing.
        let read = attacker
            .call(json!({"id": 2, "op": "read", "resource": "payroll", "token": token}))
            .await;
        assert_ne!(read["ok"], true, "{attempt}: the attacker read {read}");
        assert_ne!(read["value"], "salaries", "{read}");
    }

    // The victim never noticed: same connection, lock and value.
    let read = victim
        .call(json!({"id": 3, "op": "read", "resource": "payroll", "token": token}))
        .await;
    assert_eq!(read["value"], "salaries", "{read}");

    // Its own client, with the secret, does take the session back.
    let mut rightful = cluster.connect(leader).await;
    let resumed = hello(&mut rightful, Some(&opened)).await;
    assert_eq!(resumed["ok"], true, "{resumed}");
    assert_eq!(resumed["session"], opened["session"], "{resumed}");
    let read = rightful
        .call(json!({"id": 4, "op": "read", "resource": "payroll", "token": token}))
        .await;
    assert_eq!(read["value"], "salaries", "{read}");
    assert_eq!(
        victim.try_recv(PATIENCE).await,
        Ok(None),
        "the session's old connection is closed once its client resumed elsewhere"
    );
}

/// The secret is the client's alone: each session gets its own, and no node keeps it on disk
/// (the log and the snapshots keep only its digest), so a copy of a data directory resumes
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_secrets_differ_and_never_reach_a_data_directory() {
    let cluster = Cluster::start(3, &["--snapshot-every", "10"]).await;
    let leader = cluster.leader(None).await;
    let mut secrets = Vec::new();
    for _ in 0..3 {
        let mut conn = cluster.connect(leader).await;
        let opened = hello(&mut conn, None).await;
        secrets.push(
            opened["resume_secret"]
                .as_str()
                .expect("a secret")
                .to_owned(),
        );
        // A resume on another connection puts the secret in a request: it must not be logged.
        let mut again = cluster.connect(leader).await;
        let resumed = hello(&mut again, Some(&opened)).await;
        assert_eq!(resumed["ok"], true, "{resumed}");
        // Enough entries for a snapshot, which holds every session's resume digest.
        for id in 1..=10 {
            let reply = again.call(json!({"id": id, "op": "ping"})).await;
            assert_eq!(reply["ok"], true, "{reply}");
        }
    }
    let mut unique = secrets.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), secrets.len(), "{secrets:?}");
    for spec in &cluster.specs {
        for file in files_under(&spec.data_dir) {
            let bytes = std::fs::read(&file).expect("a readable data file");
            for secret in &secrets {
                let found = bytes
                    .windows(secret.len())
                    .any(|window| window == secret.as_bytes());
                assert!(!found, "{} holds a resume secret", file.display());
            }
        }
    }
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a data directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}
