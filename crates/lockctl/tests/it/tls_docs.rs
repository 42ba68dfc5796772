//! docs/security.md's openssl commands, run as they stand: the CA, server and client
//! certificates they make must carry lockctl to a mutual-TLS lockd (issue 18, point 5). openssl
//! must be installed (`scripts/test.sh` installs it).

use std::process::Command;

use crate::support::{run_lockctl, start_tls_server, stdout_lines};

/// The shell block between the `tls-certificates` markers of docs/security.md.
fn certificate_commands() -> String {
    let doc = include_str!("../../../../docs/security.md");
    let (_, rest) = doc
        .split_once("<!-- tls-certificates: begin -->")
        .expect("docs/security.md marks the start of its openssl commands");
    let (block, _) = rest
        .split_once("<!-- tls-certificates: end -->")
        .expect("docs/security.md marks the end of its openssl commands");
    let block = block.trim();
    let block = block
        .strip_prefix("```sh")
        .and_then(|block| block.strip_suffix("```"))
        .expect("the openssl commands are one ```sh block");
    block.to_owned()
}

#[tokio::test]
async fn the_documented_openssl_commands_make_certificates_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let commands = certificate_commands();
    let dir_path = dir.path().to_owned();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("sh")
            .args(["-eu", "-c", &commands])
            .current_dir(&dir_path)
            .output()
            .expect("sh runs")
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "the documented commands failed (is openssl installed?): {output:?}"
    );
    let server = start_tls_server(dir.path(), true);
    let file = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let (ca, cert, key) = (file("ca.pem"), file("client.pem"), file("client.key"));
    let output = run_lockctl(
        &server.addr_string(),
        &[
            "--tls-ca",
            &ca,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "f",
            "WRITE",
            "over mTLS",
            "0",
        ],
    )
    .await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout_lines(&output)[2], "WROTE 'over mTLS' to f");
}
