//! What ships for operators: the systemd unit passes `systemd-analyze verify`, and the
//! configuration docs/operations.md shows is one lockd accepts.

use std::process::Command;

use crate::support::lockd_command;

/// The unit as installed, with `ExecStart` pointing at the lockd under test (verify checks that
/// the program exists and is executable).
#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/systemd/lockd.service"
    ))
    .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/lockd --config /etc/lockd/lockd.toml"),
        "the unit runs lockd with its configuration file"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lockd.service");
    let here = unit.replace("/usr/local/bin/lockd", env!("CARGO_BIN_EXE_lockd"));
    std::fs::write(&path, here).unwrap();
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze runs (scripts/test.sh installs Debian's systemd package)");
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze has remarks: {stderr}"
    );
}

#[test]
fn the_documented_configuration_file_is_one_lockd_accepts() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/operations.md"
    ))
    .unwrap();
    let start = doc.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + doc[start..].find("```").expect("its end");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lockd.toml");
    std::fs::write(&file, &doc[start..end]).unwrap();
    let output = lockd_command(&dir.path().join("data"), &[])
        .args(["--config", file.to_str().unwrap(), "--print-config"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    assert!(
        printed.contains("tls-key = \"/run/credentials/lockd.service/tls-key\""),
        "{printed}"
    );
}

/// `lockd --version` names the commit it was built from, as an operator reporting a problem
/// needs to; outside a git checkout it says `unknown`.
#[test]
fn the_version_names_the_commit() {
    let output = Command::new(env!("CARGO_BIN_EXE_lockd"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let line = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let expected_commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    assert_eq!(
        line,
        format!("lockd {} ({expected_commit})", env!("CARGO_PKG_VERSION"))
    );
}
