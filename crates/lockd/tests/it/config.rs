//! Settings from a `--config` file and `LOCKD_*` variables reach a running lockd, and a bad file
//! stops it before it serves, naming the file, the key and the reason.

use serde_json::json;

use crate::support::{error_code, lockd_command, Lockd};

#[tokio::test]
async fn a_config_file_sets_what_flags_do_and_the_environment_wins_over_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lockd.toml");
    std::fs::write(&file, "max-frame-bytes = 100\nmax-value-bytes = 5\n").unwrap();
    let data = dir.path().join("data");
    let mut command = lockd_command(&data, &["--config", file.to_str().unwrap()]);
    command.env("LOCKD_MAX_VALUE_BYTES", "8");
    let lockd = Lockd::spawn(&mut command, &data);
    let mut conn = lockd.connect().await;
    let long = json!({"id": 1, "op": "ping", "padding": "p".repeat(200)});
    let reply = conn.call(long).await;
    assert_eq!(error_code(&reply), "frame_too_large", "{reply}");
    let token = conn.lock(2, "r", "exclusive").await;
    let write = |id: u64, value: &str| json!({"id": id, "op": "write", "resource": "r", "token": token, "value": value});
    let reply = conn.call(write(3, "1234567")).await;
    assert_eq!(
        reply["ok"], true,
        "the environment's 8 bytes, not the file's 5: {reply}"
    );
    let reply = conn.call(write(4, "123456789")).await;
    assert_eq!(error_code(&reply), "value_too_large", "{reply}");
}

#[test]
fn a_bad_config_file_stops_lockd_with_the_file_the_key_and_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lockd.toml");
    for (text, wanted) in [
        (
            "max-frame-bytes = 1\n",
            "key `max-frame-bytes`: invalid value '1'",
        ),
        ("colour = \"blue\"\n", "unknown key `colour`"),
    ] {
        std::fs::write(&file, text).unwrap();
        let output = lockd_command(
            &dir.path().join("data"),
            &["--config", file.to_str().unwrap()],
        )
        .output()
        .unwrap();
        assert_eq!(output.status.code(), Some(2), "{text:?}: {output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            stderr.contains(file.to_str().unwrap()) && stderr.contains(wanted),
            "{text:?}: {stderr}"
        );
    }
}
