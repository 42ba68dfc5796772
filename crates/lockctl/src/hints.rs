//! What lockctl says when a call fails, and which exit code it exits with: the library's
//! error, and a hint that fits the failure (a refused connection calls for starting lockd, a
//! timeout for looking at the network, a TLS mismatch for the right flag), so that the user is
//! never sent the wrong way. One place, so every subcommand explains a failure alike.

use std::process::ExitCode;

use lockctl::{ClientError, ConnectFailure, ErrorCode};

use crate::common::{fail_with, Server};

/// Exit code when lockd cannot be reached: nothing listens, or no connection within
/// --connect-timeout.
pub(crate) const EXIT_UNREACHABLE: u8 = 4;
/// Exit code when lockd took the connection but did not answer within --reply-timeout.
pub(crate) const EXIT_NO_REPLY: u8 = 5;

/// Prints `err` with its hint; returns the exit code. `resource` is the lock the command was
/// about, if any, for a lost connection.
pub(crate) fn explain(server: &Server, err: &ClientError, resource: Option<&str>) -> ExitCode {
    let (code, message) = describe(server, err, resource);
    fail_with(code, &message)
}

fn describe(server: &Server, err: &ClientError, resource: Option<&str>) -> (u8, String) {
    match err {
        ClientError::Connect {
            addr,
            kind: ConnectFailure::Refused,
            ..
        } => (
            EXIT_UNREACHABLE,
            format!(
                "{err}. Is lockd running? Start it with `lockd --listen {addr}`, or point \
                 --server / LOCKD_ADDR at it"
            ),
        ),
        ClientError::Connect {
            kind: ConnectFailure::TimedOut,
            ..
        } => (
            EXIT_UNREACHABLE,
            format!(
                "{err}. A firewall may drop the packets, or the host is down or overloaded \
                 (--connect-timeout sets the wait)"
            ),
        ),
        ClientError::Connect {
            addr,
            kind: ConnectFailure::NotTls,
            ..
        } => (
            1,
            format!(
                "{err}. If lockd at {addr} serves plain TCP, drop --tls-ca (and LOCKD_TLS_CA); to \
                 serve TLS, start lockd with --tls-cert and --tls-key (docs/security.md)"
            ),
        ),
        ClientError::Connect {
            addr,
            kind: ConnectFailure::TlsExpected,
            ..
        } => (
            1,
            format!(
                "{err}. lockd at {addr} speaks TLS: give --tls-ca FILE (or LOCKD_TLS_CA), the CA \
                 that signed its certificate (docs/security.md)"
            ),
        ),
        ClientError::Connect {
            addr,
            kind: ConnectFailure::ClientCertRefused,
            ..
        } => {
            let hint = match server.gives_client_cert() {
                false => {
                    "(none was given): it requires mutual TLS; give --tls-cert and --tls-key \
                     (or LOCKD_TLS_CERT and LOCKD_TLS_KEY)"
                }
                true => {
                    "(it was not signed by a CA that lockd's --tls-client-ca trusts, or has \
                     expired): give one that is (docs/security.md)"
                }
            };
            (
                1,
                format!("{err}. lockd at {addr} refused this client's certificate {hint}"),
            )
        }
        ClientError::Connect {
            kind: ConnectFailure::Tls,
            ..
        } => (
            1,
            format!(
                "{err}. Check that --tls-ca holds the CA that signed lockd's certificate, and that \
                 the certificate names the host in --server (else give --tls-server-name)"
            ),
        ),
        ClientError::Connect { .. } => (EXIT_UNREACHABLE, err.to_string()),
        ClientError::NoReply { .. } => (
            EXIT_NO_REPLY,
            format!(
                "{err}: the lockd at {} is frozen (stopped, overloaded), or the network drops \
                 its replies (--reply-timeout sets the wait)",
                server.addr()
            ),
        ),
        ClientError::Server(body) if body.code == ErrorCode::Unauthorized => (
            1,
            format!(
                "lockd at {} refused the connection: {}. Give its secret with \
                 --auth-token-file or LOCKD_AUTH_TOKEN",
                server.addr(),
                body.message
            ),
        ),
        ClientError::Server(body) => (1, format!("{} ({})", body.message, body.code)),
        ClientError::ConnectionLost => match resource {
            Some(resource) => (
                1,
                format!("lost the connection to lockd; any lock on {resource} is no longer held"),
            ),
            None => (1, err.to_string()),
        },
        ClientError::InvalidInput(_) | ClientError::Protocol(_) => (1, err.to_string()),
    }
}
