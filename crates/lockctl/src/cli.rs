//! The command line of `lockctl`, kept compatible with the original `lock_client`:
//! `lockctl <resource> READ [sleep_seconds]` and `lockctl <resource> WRITE <value> [sleep_seconds]`.

use std::time::Duration;

use clap::error::ErrorKind;
use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::DEFAULT_ADDR;

const AFTER_HELP: &str = "\
Examples:
  lockctl file_A WRITE \"Hello Distributed World\" 5   hold file_A exclusively for 5 s, then write
  lockctl file_A READ                                hold file_A shared for 2 s, then read
  lockctl --timeout 0.5 file_A READ                  give up (exit 3) after waiting 0.5 s
  lockctl run jobs/nightly -- ./nightly.sh           run a command under the lock
  lockctl run -n jobs/nightly -- ./nightly.sh        ...or skip it (exit 1) if the lock is taken
  lockctl status                                     who holds and who waits, everywhere
  lockctl lock status READ                           a resource that is named `status`
  lockctl completions bash > /etc/bash_completion.d/lockctl

Exit codes: 0 done, 1 error, 2 bad arguments, 3 timed out waiting, 4 lockd unreachable (nothing
listens, or no connection within --connect-timeout), 5 lockd not answering (no answer within
--reply-timeout), 75 the lock was lost before the read or write (stdout: `LOST lock on RESOURCE;
nothing was written`), 130 interrupted.
`lockctl run` exits with the command's own code; see `lockctl run --help`.";

const RUN_AFTER_HELP: &str = "\
The command runs with LOCKD_RESOURCE (the resource) and LOCKD_TOKEN (the fencing token) in its
environment (with --and: the first resource's, and LOCKD_TOKENS with NAME=TOKEN for each), in a
process group of its own. SIGINT, SIGTERM and SIGHUP are passed on to that group. The lock is
released when the command exits and nothing it started is left in its group. If lockctl is
killed, a watchdog process kills the group. See docs/safety.md.

Exit codes:
  the command's     when it ran (128 + N when it was killed by signal N)
  1 (-E N to set)   the lock was not granted within -w, or at once with -n
  75 (--lost-exit-code N to set)
                    the lock was lost, or about to be, while the command ran (lockd went away,
                    or did not answer for most of the lease; a cluster's failover within the
                    lease is not a loss): the command's group got SIGTERM, then SIGKILL after
                    --kill-after seconds (at most a quarter of the lease), before lockd could
                    give the lock to anyone else
  127               the command could not be started
  2                 bad arguments
  4                 lockd unreachable (nothing listens, or no connection within
                    --connect-timeout); the command did not run
  5                 lockd not answering (no answer within --reply-timeout); the command did
                    not run

Examples:
  lockctl run jobs/nightly -- ./nightly.sh
  lockctl run -w 60 db/migrate -- ./migrate.sh up
  lockctl run -n -E 0 cron/report -- ./report.sh    # skip quietly when another run holds it
  lockctl run -c 'pg_dump app > app.sql' db/dump     # a shell command, as flock -c
  lockctl run -s config -- cat /etc/app.conf";

/// The heading of the options every subcommand shares: where lockd is and how to reach it.
const CONNECTION: &str = "Connection options";

/// What `--version` says: the version, and the commit it was built from (`build.rs`).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("LOCKD_COMMIT"), ")");

/// lockctl: take turns on named resources through lockd.
///
/// Takes a lock (READ: shared, WRITE: exclusive), holds it for the sleep time, then reads or
/// writes the resource's value and releases the lock.
#[derive(Debug, Parser)]
#[command(
    name = "lockctl",
    version = VERSION,
    about,
    after_help = AFTER_HELP,
    subcommand_negates_reqs = true,
    disable_help_flag = true
)]
pub struct Cli {
    /// lockd's address, host:port; for a cluster, every node's, separated by commas
    /// (lockctl finds the leader, and follows a failover to the next one).
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_ADDR", default_value = DEFAULT_ADDR, value_name = "ADDR[,ADDR...]")]
    pub server: String,

    /// The name lockd shows for this client in `status` and /v1/locks (default: USER@HOST, from
    /// $USER and the host's real name).
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_CLIENT_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// A file holding the secret of a lockd started with --auth-token-file.
    #[arg(long, global = true, help_heading = CONNECTION, value_name = "FILE")]
    pub auth_token_file: Option<std::path::PathBuf>,

    /// Speak TLS, trusting the CA certificates (PEM) in this file.
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// A client certificate (PEM) for a server that requires mutual TLS; needs --tls-key.
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<std::path::PathBuf>,

    /// The private key (PEM) of --tls-cert.
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<std::path::PathBuf>,

    /// The name the server's certificate must carry (default: the host in --server).
    #[arg(long, global = true, help_heading = CONNECTION, value_name = "NAME")]
    pub tls_server_name: Option<String>,

    /// Seconds lockd gets to accept a connection before lockctl gives up (exit 4).
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_CONNECT_TIMEOUT", default_value = DEFAULT_CONNECT_SECS, value_name = "SECS", value_parser = parse_positive_seconds)]
    pub connect_timeout: Duration,

    /// Seconds lockd gets to answer each request before lockctl gives up (exit 5); a lock's
    /// wait in line is not counted.
    #[arg(long, global = true, help_heading = CONNECTION, env = "LOCKD_REPLY_TIMEOUT", default_value = DEFAULT_REPLY_SECS, value_name = "SECS", value_parser = parse_positive_seconds)]
    pub reply_timeout: Duration,

    /// Print help (the same with -h and --help).
    #[arg(short = 'h', long = "help", global = true, action = ArgAction::HelpLong)]
    help: Option<bool>,

    #[command(subcommand)]
    pub command: Option<Subcommands>,

    #[command(flatten)]
    pub lock: Option<LockArgs>,
}

impl Cli {
    /// Checks what clap cannot: every --server address has a port, and the TLS flags come in
    /// the combinations that work. A mistake exits with a usage error (code 2) that says what to
    /// write instead.
    pub fn check_connection_flags(&self) {
        for addr in self
            .server
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
        {
            if let Err(problem) = crate::check_address(addr) {
                usage_error(ErrorKind::InvalidValue, &format!("--server {problem}"));
            }
            if addr.starts_with("tls://") && self.tls_ca.is_none() {
                usage_error(
                    ErrorKind::MissingRequiredArgument,
                    &format!(
                        "--server {addr} needs --tls-ca (the CA that signed lockd's certificate)"
                    ),
                );
            }
        }
        let extras = [
            ("--tls-cert", self.tls_cert.is_some()),
            ("--tls-key", self.tls_key.is_some()),
            ("--tls-server-name", self.tls_server_name.is_some()),
        ];
        for (flag, given) in extras {
            if given && self.tls_ca.is_none() {
                usage_error(
                    ErrorKind::MissingRequiredArgument,
                    &format!("{flag} needs --tls-ca (the CA that signed lockd's certificate)"),
                );
            }
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => usage_error(
                ErrorKind::MissingRequiredArgument,
                "--tls-cert needs --tls-key (the certificate's private key)",
            ),
            (None, Some(_)) => usage_error(
                ErrorKind::MissingRequiredArgument,
                "--tls-key needs --tls-cert (the client certificate it belongs to)",
            ),
            _ => {}
        }
    }
}

/// Subcommands; their names win over resource names (see `lock` for a resource named so).
#[derive(Debug, Subcommand)]
pub enum Subcommands {
    /// Show holders and waiters: of one resource, or of every busy one.
    Status {
        /// Only this resource (shown even when idle).
        resource: Option<String>,
        /// Print the server's answer as one JSON object, `{"resources":[...]}`, as the protocol's
        /// `status` reply has it (docs/protocol.md), instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Watch a resource: print its state, then each change, as one JSON object a line
    /// (docs/protocol.md, "Watches"), until interrupted; exits non-zero if the session is lost.
    Watch {
        /// The resource to watch.
        resource: String,
    },
    /// Take a lock: the long form of `lockctl <resource> ...`, for a resource whose name is
    /// also a subcommand (`lockctl lock status READ`).
    Lock(LockArgs),
    /// Run a command while holding a lock, like flock(1) across machines.
    #[command(after_help = RUN_AFTER_HELP, override_usage = RUN_USAGE)]
    Run(RunArgs),
    /// Campaign to lead NAME with VALUE, and run a command while leading: it is stopped
    /// (SIGTERM, then SIGKILL) as soon as leadership is lost, exactly as `run` stops a command
    /// whose lock is lost. LOCKD_TOKEN is the epoch.
    #[command(override_usage = ELECT_USAGE)]
    Elect(ElectArgs),
    /// Print the leader of NAME, then a line at each change of leader, until interrupted:
    /// `leader epoch=N value=VALUE` or `no leader`. Exits non-zero if the session is lost.
    Observe {
        /// The election's resource.
        name: String,
    },
    /// Fetch a consistent copy of lockd's store from its admin API (lockd --http, with
    /// --admin-token-file) while it serves: a file to restore lockd.redb from.
    Backup {
        /// The admin API's address (lockd's --http), host:port.
        #[arg(long, env = "LOCKD_HTTP", value_name = "ADDR")]
        http: String,
        #[command(flatten)]
        admin: AdminCredential,
        /// Where to write the copy; it must not exist yet.
        out: std::path::PathBuf,
    },
    /// Load a backup into a new, empty cluster through its leader's admin API (a single
    /// server restores by starting on the file instead): every value, and tokens from then on
    /// above the backup's.
    Restore {
        /// The admin API's address (the leader's --http), host:port.
        #[arg(long, env = "LOCKD_HTTP", value_name = "ADDR")]
        http: String,
        #[command(flatten)]
        admin: AdminCredential,
        /// The backup (what `lockctl backup` wrote).
        file: std::path::PathBuf,
    },
    /// Look at a cluster and change its members.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `lockctl cluster ...`: give every node with --server a,b,c.
#[derive(Debug, Clone, Subcommand)]
pub enum ClusterAction {
    /// Each node's view: its role, the term, the leader, and the members.
    Status,
    /// Add a node (started with --node-id and without --bootstrap): first as a learner that
    /// catches up with the log, then as a voter.
    AddNode {
        /// Its --node-id.
        node_id: u64,
        /// Its client address (--listen).
        client: String,
        /// Its peer address (--peer-listen).
        peer: String,
        #[command(flatten)]
        admin: AdminCredential,
    },
    /// Take a node out of the cluster.
    RemoveNode {
        /// Its --node-id.
        node_id: u64,
        #[command(flatten)]
        admin: AdminCredential,
    },
}

/// The cluster's admin credential, which membership changes need.
#[derive(Debug, Clone, Args)]
pub struct AdminCredential {
    /// A file holding the secret of the nodes' --admin-token-file; else $LOCKD_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<std::path::PathBuf>,
}

/// The two forms of `run`, in its usage line (also what a `run` without a command shows).
const RUN_USAGE: &str = "lockctl run [OPTIONS] <RESOURCE> [--] <COMMAND>...\n       \
                         lockctl run [OPTIONS] -c <SHELL_COMMAND> <RESOURCE>";

/// What `run` and `elect` do when the lock (for `elect`, leadership) is lost.
#[derive(Debug, Clone, Args)]
pub struct Losing {
    /// Exit code when the lock (leadership, for `elect`) is lost while the command runs.
    #[arg(long, default_value_t = 75, value_name = "N")]
    pub lost_exit_code: u8,
    /// Seconds between SIGTERM and SIGKILL when the lock is lost or about to be (default and
    /// maximum: a quarter of the lease; a longer value is cut to that, with a note on stderr,
    /// so that the command is dead before lockd could give the lock to anyone else).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub kill_after: Option<Duration>,
    /// Ask for a lock-delay: if the lock is lost other than by a release, lockd grants it to
    /// nobody for this many seconds (default: the server's, --default-lock-delay-ms).
    #[arg(long, value_name = "SECS", value_parser = parse_seconds)]
    pub lock_delay: Option<Duration>,
}

/// The two forms of `elect`, in its usage line.
const ELECT_USAGE: &str = "lockctl elect [OPTIONS] <NAME> <VALUE> [--] <COMMAND>...\n       \
                           lockctl elect [OPTIONS] -c <SHELL_COMMAND> <NAME> <VALUE>";

/// `lockctl elect [options] NAME VALUE [--] COMMAND [ARGS...]`: `run` under a campaign.
#[derive(Debug, Clone, Args)]
pub struct ElectArgs {
    #[command(flatten)]
    pub losing: Losing,
    /// The election's resource.
    pub name: String,
    /// What observers see while this candidate leads (its address, say).
    pub value: String,
    #[command(flatten)]
    pub job: Job,
}

impl ElectArgs {
    /// `run`'s arguments for this campaign: an exclusive lock that waits as long as it takes.
    pub fn into_run(self) -> RunArgs {
        RunArgs {
            shared: false,
            limit: None,
            permits: None,
            and: Vec::new(),
            nonblock: false,
            timeout: None,
            conflict_exit_code: 1,
            losing: self.losing,
            verbose: false,
            resource: self.name,
            job: self.job,
            campaign: Some(self.value),
        }
    }
}

/// `lockctl run [options] RESOURCE [--] COMMAND [ARGS...]` or `lockctl run -c SHELL_COMMAND
/// RESOURCE`; the flags follow flock(1).
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Take a shared lock instead of the exclusive one.
    #[arg(short, long, conflicts_with = "limit")]
    pub shared: bool,
    /// Treat the resource as a semaphore of N permits: at most N held at once, granted in
    /// order of arrival. Everyone using the resource must give the same N (lockd answers
    /// `limit_mismatch` otherwise).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub limit: Option<u16>,
    /// With --limit: how many of its permits to hold while the command runs (default 1).
    #[arg(long, value_name = "K", requires = "limit", value_parser = clap::value_parser!(u16).range(1..))]
    pub permits: Option<u16>,
    /// Lock this resource too (repeatable): RESOURCE and every --and resource are taken
    /// together, all at once or none (one multi-resource acquire, so no deadlock whatever
    /// order others name them in), in the same mode. The command gets LOCKD_TOKENS, `NAME=TOKEN`
    /// for each, separated by spaces.
    #[arg(long = "and", value_name = "RESOURCE", conflicts_with = "limit")]
    pub and: Vec<String>,
    /// Fail at once (exit with the conflict code) if the lock is not free.
    #[arg(short, long, conflicts_with = "timeout")]
    pub nonblock: bool,
    /// Give up after waiting this many seconds for the lock (fractions allowed).
    #[arg(long, short = 'w', value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// Exit code when the lock is not granted (-n, or -w running out).
    #[arg(short = 'E', long, default_value_t = 1, value_name = "N")]
    pub conflict_exit_code: u8,
    #[command(flatten)]
    pub losing: Losing,
    /// Say on stderr why the command did not run when the lock was not granted (by default
    /// that is silent, as with flock(1), so that cron mails nothing for a skipped run).
    #[arg(short, long)]
    pub verbose: bool,
    /// The resource to lock.
    pub resource: String,
    #[command(flatten)]
    pub job: Job,
    /// Set by `lockctl elect`: campaign with this value instead of taking a plain lock.
    #[arg(skip)]
    pub campaign: Option<String>,
}

/// The command `run` and `elect` start: COMMAND, or `-c SHELL_COMMAND`. Declared after the
/// resource, so that COMMAND is the last positional argument.
#[derive(Debug, Clone, Args)]
pub struct Job {
    /// Run this shell command (with `sh -c`) instead of COMMAND, as flock(1)'s -c.
    #[arg(
        short = 'c',
        long = "command",
        value_name = "SHELL_COMMAND",
        conflicts_with = "command"
    )]
    pub shell_command: Option<String>,
    /// The command and its arguments. Everything after its first word is the command's, so
    /// `lockctl run r echo -n hi` needs no `--`; a command that starts with `-` does.
    #[arg(
        trailing_var_arg = true,
        required_unless_present = "shell_command",
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

impl RunArgs {
    /// The program and arguments to start: COMMAND, or `sh -c SHELL_COMMAND`.
    pub fn argv(&self) -> Vec<String> {
        match &self.job.shell_command {
            Some(line) => vec!["sh".to_owned(), "-c".to_owned(), line.clone()],
            None => self.job.command.clone(),
        }
    }

    /// What the messages call the command: its program, or the whole shell command.
    pub fn display_name(&self) -> &str {
        match &self.job.shell_command {
            Some(line) => line,
            None => self.job.command.first().map_or("", String::as_str),
        }
    }
}

/// `<resource> READ [sleep_seconds]` or `<resource> WRITE <value> [sleep_seconds]`.
#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// Give up after waiting this many seconds for the lock (fractions allowed; 0 = try once).
    #[arg(long, short = 'w', value_name = "SECS", value_parser = parse_seconds)]
    pub timeout: Option<Duration>,
    /// The resource's name, e.g. file_A or jobs/nightly.
    #[arg(required = true)]
    pub resource: String,
    /// READ takes a shared lock and reads; WRITE takes the exclusive lock and writes.
    #[arg(required = true, ignore_case = true)]
    pub operation: Operation,
    /// For WRITE: the value, then the optional hold time. For READ: the optional hold time.
    /// The hold time is in seconds (default 2). A value that starts with `-` and is not a
    /// number goes after `--`: `lockctl f WRITE -- -x`.
    #[arg(num_args = 0..=2, allow_negative_numbers = true, value_name = "[VALUE] [SLEEP_SECONDS]")]
    pub rest: Vec<String>,
}

/// What to do under the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Operation {
    /// Shared lock, then read.
    #[value(name = "READ")]
    Read,
    /// Exclusive lock, then write.
    #[value(name = "WRITE")]
    Write,
}

/// A lock command after its positional arguments were sorted out.
#[derive(Debug, Clone, PartialEq)]
pub struct LockPlan {
    pub resource: String,
    /// How long to wait for the lock (`None`: as long as it takes; zero: try once).
    pub timeout: Option<Duration>,
    pub operation: Operation,
    /// The value to write (WRITE only).
    pub value: Option<String>,
    pub hold: Duration,
    /// The hold time as the user wrote it, for the `Sleeping for N seconds...` line.
    pub hold_text: String,
}

/// The hold time when none is given, as in the original client.
pub const DEFAULT_HOLD_SECONDS: &str = "2";

impl LockArgs {
    /// Sorts out `rest` by operation; a mistake exits with a usage error (code 2).
    pub fn plan(self) -> LockPlan {
        let mut rest = self.rest.into_iter();
        let value = match self.operation {
            Operation::Write => match rest.next() {
                Some(value) => Some(value),
                None => usage_error(
                    ErrorKind::MissingRequiredArgument,
                    "WRITE needs a value: lockctl <resource> WRITE <value> [sleep_seconds]",
                ),
            },
            Operation::Read => None,
        };
        let hold_text = rest.next();
        if let Some(extra) = rest.next() {
            usage_error(
                ErrorKind::TooManyValues,
                &format!("unexpected argument {extra:?}: READ takes only [sleep_seconds]"),
            );
        }
        let hold_text = hold_text.unwrap_or_else(|| DEFAULT_HOLD_SECONDS.to_owned());
        let hold = match parse_seconds(&hold_text) {
            Ok(hold) => hold,
            Err(err) => usage_error(
                ErrorKind::InvalidValue,
                &format!("invalid sleep_seconds {hold_text:?}: {err}"),
            ),
        };
        LockPlan {
            resource: self.resource,
            timeout: self.timeout,
            operation: self.operation,
            value,
            hold,
            hold_text,
        }
    }
}

fn usage_error(kind: ErrorKind, message: &str) -> ! {
    Cli::command().error(kind, message).exit()
}

/// The default --connect-timeout, as clap shows it: `lockctl::DEFAULT_CONNECT_TIMEOUT`.
const DEFAULT_CONNECT_SECS: &str = "5";
/// The default --reply-timeout, as clap shows it: `lockctl::DEFAULT_REPLY_TIMEOUT`.
const DEFAULT_REPLY_SECS: &str = "10";

/// Parses a positive number of seconds, fractions allowed: a time limit of zero would fail
/// every connection.
pub fn parse_positive_seconds(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        Duration::ZERO => Err("expected more than 0 seconds".to_owned()),
        seconds => Ok(seconds),
    }
}

/// Parses a non-negative number of seconds, fractions allowed.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .trim()
        .parse()
        .map_err(|_| "expected a number of seconds, e.g. 5 or 0.5".to_owned())?;
    Duration::try_from_secs_f64(seconds)
        .map_err(|_| "expected a non-negative number of seconds".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variable lockctl reads through its flags is in the list lockd keeps clear of, so
    /// that a shell set up for lockctl never changes a lockd started from it.
    #[test]
    fn lockds_variables_keep_clear_of_every_variable_lockctl_reads() {
        fn envs(command: &clap::Command, found: &mut Vec<String>) {
            for arg in command.get_arguments() {
                if let Some(env) = arg.get_env() {
                    found.push(env.to_string_lossy().into_owned());
                }
            }
            for sub in command.get_subcommands() {
                envs(sub, found);
            }
        }
        let mut found = Vec::new();
        envs(&Cli::command(), &mut found);
        assert!(found.len() >= 5, "{found:?}");
        for env in found {
            assert!(
                protocol::client_env::CLIENT_VARIABLES.contains(&env.as_str()),
                "{env} is missing from protocol::client_env::CLIENT_VARIABLES"
            );
        }
    }

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("lockctl").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn the_original_command_line_parses() {
        let cli = parse(&["file_A", "WRITE", "Hello Distributed World", "5"]);
        let plan = cli.lock.unwrap().plan();
        assert_eq!(plan.resource, "file_A");
        assert_eq!(plan.operation, Operation::Write);
        assert_eq!(plan.value.as_deref(), Some("Hello Distributed World"));
        assert_eq!(plan.hold, Duration::from_secs(5));

        let plan = parse(&["file_A", "READ"]).lock.unwrap().plan();
        assert_eq!(
            (plan.operation, plan.hold_text.as_str()),
            (Operation::Read, "2")
        );
        let plan = parse(&["file_A", "read", "0.5"]).lock.unwrap().plan();
        assert_eq!(plan.hold, Duration::from_millis(500));
    }

    #[test]
    fn options_go_anywhere_and_values_may_start_with_a_dash() {
        let cli = parse(&[
            "file_A",
            "WRITE",
            "-5",
            "--server",
            "h:1",
            "--timeout",
            "0.25",
        ]);
        assert_eq!(cli.server, "h:1");
        let plan = cli.lock.unwrap().plan();
        assert_eq!(plan.timeout, Some(Duration::from_millis(250)));
        assert_eq!(plan.value.as_deref(), Some("-5"));
        let cli = parse(&["--server", "h:2", "file_A", "WRITE", "--", "-x", "1"]);
        assert_eq!(cli.server, "h:2");
        let plan = cli.lock.unwrap().plan();
        assert_eq!(
            (plan.value.as_deref(), plan.hold_text.as_str()),
            (Some("-x"), "1")
        );
    }

    #[test]
    fn global_options_go_before_subcommands_too() {
        let cli = parse(&["--server", "h:1", "status"]);
        assert!(matches!(
            cli.command,
            Some(Subcommands::Status { resource: None, .. })
        ));
        let cli = parse(&["--tls-ca", "ca.pem", "--reply-timeout", "1", "status", "r"]);
        assert!(matches!(
            cli.command,
            Some(Subcommands::Status {
                resource: Some(_),
                ..
            })
        ));
        let cli = parse(&["--server", "h:1", "run", "r", "--", "true"]);
        assert!(matches!(cli.command, Some(Subcommands::Run(_))));
        // A lock's wait belongs to the commands that take a lock, not to `status`.
        assert!(Cli::try_parse_from(["lockctl", "-w", "2", "status"]).is_err());
    }

    #[test]
    fn subcommands_win_and_lock_names_any_resource() {
        let cli = parse(&["status"]);
        assert!(matches!(
            cli.command,
            Some(Subcommands::Status { resource: None, .. })
        ));
        let cli = parse(&["status", "file_A"]);
        assert!(
            matches!(cli.command, Some(Subcommands::Status { resource: Some(r), .. }) if r == "file_A")
        );
        let cli = parse(&["lock", "status", "READ"]);
        let Some(Subcommands::Lock(args)) = cli.command else {
            panic!("not a lock command");
        };
        assert_eq!(args.resource, "status");
    }

    #[test]
    fn run_takes_flock_style_flags_and_a_command_after_the_separator() {
        let cli = parse(&[
            "run", "-s", "-w", "1.5", "-E", "9", "jobs/x", "--", "echo", "-n", "hi",
        ]);
        let Some(Subcommands::Run(run)) = cli.command else {
            panic!("not a run command");
        };
        assert_eq!(run.timeout, Some(Duration::from_millis(1500)));
        assert!(run.shared && !run.nonblock);
        assert_eq!(run.conflict_exit_code, 9);
        assert_eq!(run.resource, "jobs/x");
        assert_eq!(run.job.command, ["echo", "-n", "hi"]);
        let cli = parse(&["run", "jobs/x", "echo", "-n", "--server", "x"]);
        let Some(Subcommands::Run(run)) = cli.command else {
            panic!("not a run command");
        };
        assert_eq!(
            run.argv(),
            ["echo", "-n", "--server", "x"],
            "all the command's"
        );
        let cli = parse(&["run", "-c", "echo hi", "jobs/x"]);
        let Some(Subcommands::Run(run)) = cli.command else {
            panic!("not a run command");
        };
        assert_eq!(run.argv(), ["sh", "-c", "echo hi"]);
        assert!(
            Cli::try_parse_from(["lockctl", "run", "jobs/x"]).is_err(),
            "no command"
        );
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for args in [
            &["file_A"][..],
            &["file_A", "DELETE"],
            &["file_A", "READ", "1", "2", "3"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("lockctl").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("abc").is_err());
        assert!(parse_seconds("NaN").is_err());
        assert!(parse_positive_seconds("0").is_err());
    }

    #[test]
    fn the_default_time_limits_are_the_librarys() {
        let cli = parse(&["status"]);
        assert_eq!(cli.connect_timeout, crate::DEFAULT_CONNECT_TIMEOUT);
        assert_eq!(cli.reply_timeout, crate::DEFAULT_REPLY_TIMEOUT);
        let cli = parse(&["--connect-timeout", "0.5", "--reply-timeout", "2", "status"]);
        assert_eq!(cli.connect_timeout, Duration::from_millis(500));
        assert_eq!(cli.reply_timeout, Duration::from_secs(2));
    }

    #[test]
    fn run_takes_permits_of_a_semaphore_with_its_limit() {
        let cli = parse(&[
            "run",
            "--permits",
            "2",
            "--limit",
            "4",
            "exports",
            "--",
            "true",
        ]);
        let Some(Subcommands::Run(run)) = cli.command else {
            panic!("not a run command");
        };
        assert_eq!((run.permits, run.limit), (Some(2), Some(4)));
        for args in [
            &["run", "--permits", "2", "exports", "--", "true"][..],
            &["run", "--limit", "0", "exports", "--", "true"],
            &["run", "--limit", "65536", "exports", "--", "true"],
            &[
                "run",
                "--limit",
                "4",
                "--permits",
                "0",
                "exports",
                "--",
                "true",
            ],
            &["run", "--limit", "4", "-s", "exports", "--", "true"],
        ] {
            let err = Cli::try_parse_from(std::iter::once("lockctl").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }
}
