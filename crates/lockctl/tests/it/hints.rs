//! Every connection failure gets a hint that fits it, and a usage error exits 2 (issue 18,
//! point 4). Refused versus timed out is in `timeouts.rs`.

use std::path::Path;

use crate::support::{run_lockctl, start_tls_server, stderr_text, write_test_pki, Server};

/// Asserts that lockctl failed with exit 1 and said all of `says` on stderr, and not the hint
/// for a lockd that is not running (this one is).
fn assert_hint(output: &std::process::Output, says: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stderr = stderr_text(output);
    for said in says {
        assert!(stderr.contains(said), "no {said:?} in {stderr}");
    }
    assert!(!stderr.contains("Start it with"), "{stderr}");
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().unwrap().to_owned()
}

#[tokio::test]
async fn tls_spoken_to_a_plain_server_says_so() {
    let pki = tempfile::tempdir().unwrap();
    write_test_pki(pki.path());
    let server = Server::start();
    let ca = path(pki.path(), "ca.pem");
    let output = run_lockctl(&server.addr_string(), &["--tls-ca", &ca, "status"]).await;
    assert_hint(&output, &["does not speak TLS", "drop --tls-ca"]);
}

#[tokio::test]
async fn plain_spoken_to_a_tls_server_suggests_the_ca() {
    let pki = tempfile::tempdir().unwrap();
    write_test_pki(pki.path());
    let server = start_tls_server(pki.path(), false);
    let output = run_lockctl(&server.addr_string(), &["status"]).await;
    assert_hint(&output, &["speaks TLS", "give --tls-ca FILE"]);
}

#[tokio::test]
async fn a_refused_client_certificate_says_which_flags_to_give() {
    let pki = tempfile::tempdir().unwrap();
    write_test_pki(pki.path());
    let server = start_tls_server(pki.path(), true);
    let addr = server.addr_string();
    let ca = path(pki.path(), "ca.pem");
    let output = run_lockctl(&addr, &["--tls-ca", &ca, "status"]).await;
    assert_hint(
        &output,
        &[
            "refused this client's certificate (none was given)",
            "--tls-cert and --tls-key",
        ],
    );
    // With the client certificate it works: tls_docs.rs.
}

#[tokio::test]
async fn usage_mistakes_exit_2_with_what_to_write() {
    // (arguments, what stderr must say)
    let cases: [(&[&str], &str); 6] = [
        (
            &["--server", "tls://127.0.0.1:5555", "status"],
            "--server tls://127.0.0.1:5555 needs --tls-ca",
        ),
        (
            &["--server", "127.0.0.1", "status"],
            "--server 127.0.0.1 has no port: give host:port, e.g. 127.0.0.1:5555",
        ),
        (
            &["--server", "a:5555,b", "status"],
            "--server b has no port: give host:port, e.g. b:5555",
        ),
        (
            &["--tls-ca", "ca.pem", "--tls-cert", "c.pem", "status"],
            "--tls-cert needs --tls-key",
        ),
        (
            &["--tls-key", "c.key", "status"],
            "--tls-key needs --tls-ca",
        ),
        // A run without a command is shown both forms, the shell one included.
        (
            &["run", "r"],
            "lockctl run [OPTIONS] -c <SHELL_COMMAND> <RESOURCE>",
        ),
    ];
    for (args, said) in cases {
        let output = run_lockctl("127.0.0.1:1", args).await;
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        let stderr = stderr_text(&output);
        assert!(stderr.contains(said), "{args:?}: {stderr}");
        assert!(!stderr.contains("Start it with"), "{stderr}");
    }
}
