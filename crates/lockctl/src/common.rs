//! What the subcommands share: where to connect and how, the one-line error and its exit code,
//! the interrupt signal, and aligned tables. It lives apart from `main.rs` so that the
//! subcommand modules import it rather than the crate root that declares them.

use std::process::ExitCode;
use std::time::Duration;

use lockctl::cli::{AdminCredential, Cli};
use lockctl::{Client, ClientError};

use crate::hints::explain;

/// The environment variable that holds lockd's secret; `lockctl run` keeps it from the command.
pub(crate) const AUTH_TOKEN_ENV: &str = "LOCKD_AUTH_TOKEN";

/// Where and how to connect: the address, and the secret if the server wants one.
pub(crate) struct Server {
    addr: String,
    auth: Option<String>,
    tls: Option<lockctl::TlsOptions>,
    connect_timeout: Duration,
    reply_timeout: Duration,
    /// The client name for `hello`.
    name: String,
}

impl Server {
    /// The secret comes from --auth-token-file, else $LOCKD_AUTH_TOKEN (not LOCKD_TOKEN, which
    /// `lockctl run` sets to the fencing token).
    pub(crate) fn from_cli(cli: &Cli) -> Result<Server, ExitCode> {
        let auth = match &cli.auth_token_file {
            Some(path) => match std::fs::read_to_string(path) {
                Ok(text) => Some(text.trim().to_owned()),
                Err(err) => {
                    return Err(fail(&format!(
                        "cannot read --auth-token-file {}: {err}",
                        path.display()
                    )))
                }
            },
            None => std::env::var(AUTH_TOKEN_ENV).ok(),
        };
        cli.check_connection_flags();
        Ok(Server {
            addr: cli.server.clone(),
            auth: auth.filter(|secret| !secret.is_empty()),
            connect_timeout: cli.connect_timeout,
            name: cli.name.clone().unwrap_or_else(default_client_name),
            reply_timeout: cli.reply_timeout,
            tls: cli.tls_ca.as_ref().map(|ca| lockctl::TlsOptions {
                ca: ca.clone(),
                cert: cli.tls_cert.clone(),
                key: cli.tls_key.clone(),
                server_name: cli.tls_server_name.clone(),
            }),
        })
    }

    /// The address(es) given with --server or LOCKD_ADDR.
    pub(crate) fn addr(&self) -> &str {
        &self.addr
    }

    /// Whether lockctl gives a TLS client certificate.
    pub(crate) fn gives_client_cert(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.cert.is_some())
    }
}

/// A client builder for the server's address(es), secret and TLS options.
pub(crate) fn builder(server: &Server) -> lockctl::ClientBuilder {
    let mut builder = Client::builder(&server.addr)
        .name(server.name.clone())
        .connect_timeout(server.connect_timeout)
        .reply_timeout(server.reply_timeout);
    if let Some(secret) = &server.auth {
        builder = builder.auth(secret.clone());
    }
    if let Some(tls) = &server.tls {
        builder = builder.tls(tls.clone());
    }
    builder
}

/// Connects, says hello with this process's name, and keeps the session alive with pings at a
/// quarter of the lease until exit.
pub(crate) async fn connect(server: &Server) -> Result<Client, ExitCode> {
    builder(server)
        .connect()
        .await
        .map_err(|err| explain(server, &err, None))
}

/// Prints why a call about `resource` failed; returns the exit code.
pub(crate) fn fail_call(server: &Server, err: &ClientError, resource: &str) -> ExitCode {
    explain(server, err, Some(resource))
}

pub(crate) fn fail(message: &str) -> ExitCode {
    fail_with(1, message)
}

/// Prints `lockctl: error: MESSAGE` on stderr; returns `code` as the exit code.
pub(crate) fn fail_with(code: u8, message: &str) -> ExitCode {
    eprintln!("lockctl: error: {message}");
    ExitCode::from(code)
}

/// The name for `hello` when --name and LOCKD_CLIENT_NAME give none, so that `status` and the
/// server log say who holds a lock: `USER@HOST`, with the host's real name (shells do not export
/// $HOSTNAME, so the environment cannot be trusted for it).
fn default_client_name() -> String {
    use nix::unistd::{gethostname, getuid, User};
    let user = ["USER", "LOGNAME"]
        .into_iter()
        .filter_map(|var| std::env::var(var).ok())
        .find(|user| !user.is_empty())
        .or_else(|| {
            User::from_uid(getuid())
                .ok()
                .flatten()
                .map(|user| user.name)
        })
        .unwrap_or_else(|| format!("uid{}", getuid()));
    let host = gethostname()
        .ok()
        .and_then(|host| host.into_string().ok())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{user}@{host}")
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn interrupted() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

/// Rows as columns padded to their widest cell, two spaces apart.
pub(crate) fn aligned<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|col| {
            rows.iter()
                .map(|row| row[col].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// A usage error: the one-line message, and exit code 2 as for a bad flag.
pub(crate) fn usage_error(message: &str) -> ExitCode {
    eprintln!("lockctl: error: {message}");
    ExitCode::from(2)
}

/// The admin credential from --admin-token-file, else $LOCKD_ADMIN_TOKEN, for `what` (which
/// needs it); without one, a usage error (exit 2): lockd would refuse anyway.
pub(crate) fn admin_token(admin: &AdminCredential, what: &str) -> Result<String, ExitCode> {
    let token = match &admin.admin_token_file {
        Some(path) => std::fs::read_to_string(path).map_err(|err| {
            usage_error(&format!(
                "cannot read --admin-token-file {}: {err}",
                path.display()
            ))
        })?,
        None => std::env::var("LOCKD_ADMIN_TOKEN").unwrap_or_default(),
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(usage_error(&format!(
            "{what} need lockd's admin credential (its --admin-token-file): give it with \
             --admin-token-file FILE or LOCKD_ADMIN_TOKEN"
        )));
    }
    Ok(token.to_owned())
}
