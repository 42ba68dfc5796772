//! `lockctl backup`: a consistent copy of a running lockd's store, written whole or not at all.

use lockd::server::ServerConfig;
use lockd::store::{RedbStore, DB_FILE};

use crate::support::{run_lockctl, stdout_lines, Server};

const ADMIN_TOKEN: &str = "backup-admin-credential";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_writes_a_store_lockd_can_start_from_and_refuses_without_the_credential() {
    let (server, admin) = Server::start_with_admin(ServerConfig {
        admin_token: Some(ADMIN_TOKEN.into()),
        ..ServerConfig::default()
    });
    let client = server.client().await;
    let lock = client.lock("config").acquire().await.unwrap();
    lock.write("kept in the backup").await.unwrap();
    drop(lock);

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let wrong = dir.path().join("wrong-token");
    std::fs::write(&wrong, "guess\n").unwrap();
    let restored = dir.path().join("restored");
    std::fs::create_dir(&restored).unwrap();
    let out = restored.join(DB_FILE);
    let (out_arg, http) = (out.to_str().unwrap(), admin.to_string());
    let args = |token: &std::path::Path| {
        vec![
            "backup".to_owned(),
            "--http".to_owned(),
            http.clone(),
            "--admin-token-file".to_owned(),
            token.to_str().unwrap().to_owned(),
            out_arg.to_owned(),
        ]
    };
    let addr = server.addr_string();

    let refused = run_lockctl(&addr, &as_strs(&args(&wrong))).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("401"),
        "{refused:?}"
    );
    assert!(!out.exists(), "a refused backup writes nothing");

    let done = run_lockctl(&addr, &as_strs(&args(&token))).await;
    assert!(done.status.success(), "{done:?}");
    let line = &stdout_lines(&done)[0];
    assert!(line.starts_with("Backup of 1 values written to"), "{line}");
    let (_, stored) = RedbStore::open(&restored).unwrap();
    let value = stored
        .values
        .iter()
        .find(|(name, _)| name.as_str() == "config")
        .map(|(_, value)| value.to_string());
    assert_eq!(value.as_deref(), Some("kept in the backup"));

    let again = run_lockctl(&addr, &as_strs(&args(&token))).await;
    assert_eq!(again.status.code(), Some(2), "never overwrites: {again:?}");
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `lockctl restore` sends the file to the admin API and says what lockd answered: a single
/// server refuses, naming how it restores (a cluster's restore is tested in lockd's suite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_reports_the_servers_refusal_and_a_missing_file() {
    let (server, admin) = Server::start_with_admin(ServerConfig {
        admin_token: Some(ADMIN_TOKEN.into()),
        ..ServerConfig::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("admin-token");
    std::fs::write(&token, format!("{ADMIN_TOKEN}\n")).unwrap();
    let backup = dir.path().join("backup.redb");
    let (token_arg, http) = (token.to_str().unwrap().to_owned(), admin.to_string());
    let args = |file: &std::path::Path| {
        vec![
            "restore".to_owned(),
            "--http".to_owned(),
            http.clone(),
            "--admin-token-file".to_owned(),
            token_arg.clone(),
            file.to_str().unwrap().to_owned(),
        ]
    };
    let addr = server.addr_string();

    let missing = run_lockctl(&addr, &as_strs(&args(&backup))).await;
    assert_eq!(missing.status.code(), Some(2), "{missing:?}");
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read"),
        "{missing:?}"
    );

    let (_store, _) = RedbStore::open(dir.path()).unwrap();
    let refused = run_lockctl(&addr, &as_strs(&args(&dir.path().join(DB_FILE)))).await;
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("501") && stderr.contains("single server restores by starting"),
        "{refused:?}"
    );
}
