//! The `lockd` binary: flags, logging, signals, then [`lockd::server::run`].

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::TypedValueParser;
use clap::Parser;
use lockd::core::TableConfig;
use lockd::data_dir::DataDir;
use lockd::server::{Server, ServerConfig, DEFAULT_MAX_IN_FLIGHT};
use protocol::cmd::DEFAULT_MAX_VALUE_BYTES;
use protocol::frame::DEFAULT_MAX_FRAME_BYTES;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// lockd: a lock server with FIFO queues, shared and exclusive locks, and fencing tokens.
///
/// Clients speak newline-delimited JSON over TCP (see docs/protocol.md); `lockctl` is the CLI.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on; port 0 picks a free port. Use 0.0.0.0:5555 to serve other machines.
    #[arg(long, default_value = "127.0.0.1:5555", value_name = "ADDR")]
    listen: String,

    /// Directory for lockd's data; created if missing, and owned by one lockd at a time.
    #[arg(long, default_value = "./lockd-data", value_name = "DIR")]
    data_dir: PathBuf,

    /// Log filter (error, warn, info, debug, trace, or a tracing directive). Without it,
    /// RUST_LOG is used, else `info`.
    #[arg(long, value_name = "FILTER")]
    log_level: Option<String>,

    /// Longest request line accepted, in bytes without the newline.
    #[arg(long, default_value_t = DEFAULT_MAX_FRAME_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(64..=(1 << 30)).map(|n| n as usize))]
    max_frame_bytes: usize,

    /// Largest value `write` accepts, in UTF-8 bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_VALUE_BYTES, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=(1 << 30)).map(|n| n as usize))]
    max_value_bytes: usize,

    /// Requests one connection may have in flight before lockd stops reading from it.
    #[arg(long, default_value_t = DEFAULT_MAX_IN_FLIGHT, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=1_000_000).map(|n| n as usize))]
    max_in_flight: usize,

    /// Lease of a session that does not ask for one in `hello`, in milliseconds.
    #[arg(long, default_value_t = 15_000, value_name = "MS")]
    default_lease_ms: u64,

    /// Shortest lease `hello` may ask for; shorter requests are raised to it.
    #[arg(long, default_value_t = 1_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(10..))]
    min_lease_ms: u64,

    /// Longest lease `hello` may ask for; longer requests are lowered to it.
    #[arg(long, default_value_t = 300_000, value_name = "MS",
          value_parser = clap::value_parser!(u64).range(..=86_400_000))]
    max_lease_ms: u64,
}

impl Args {
    fn server_config(&self) -> Result<ServerConfig, String> {
        if !(self.min_lease_ms <= self.default_lease_ms
            && self.default_lease_ms <= self.max_lease_ms)
        {
            return Err(format!(
                "leases must satisfy --min-lease-ms ({}) <= --default-lease-ms ({}) <= \
                 --max-lease-ms ({})",
                self.min_lease_ms, self.default_lease_ms, self.max_lease_ms
            ));
        }
        Ok(ServerConfig {
            table: TableConfig {
                default_lease: Duration::from_millis(self.default_lease_ms),
                min_lease: Duration::from_millis(self.min_lease_ms),
                max_lease: Duration::from_millis(self.max_lease_ms),
                max_value_bytes: self.max_value_bytes,
            },
            max_frame_bytes: self.max_frame_bytes,
            max_in_flight: self.max_in_flight,
        })
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match &args.log_level {
        Some(level) => EnvFilter::try_new(level),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    };
    let filter = match filter {
        Ok(filter) => filter,
        Err(err) => return fail(format!("invalid --log-level: {err}")),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match args.server_config() {
        Ok(config) => config,
        Err(message) => return fail(message),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => return fail(format!("cannot start the async runtime: {err}")),
    };
    runtime.block_on(serve(args, config))
}

async fn serve(args: Args, config: ServerConfig) -> ExitCode {
    let data_dir = match DataDir::open(&args.data_dir) {
        Ok(data_dir) => data_dir,
        Err(err) => return fail(err.to_string()),
    };
    let server = match Server::open(config, data_dir.path()) {
        Ok(server) => server,
        Err(err) => return fail(err.to_string()),
    };
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(err) => return fail(format!("cannot listen on {}: {err}", args.listen)),
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => return fail(format!("cannot read the listening address: {err}")),
    };
    let mut stdout = std::io::stdout();
    // Scripts and tests wait for this exact line to learn the real port.
    if writeln!(stdout, "Lock Server started on tcp://{addr}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        // Nobody is reading stdout; keep serving anyway.
    }
    tracing::info!(
        %addr,
        data_dir = %data_dir.path().display(),
        "lockd {} ready",
        env!("CARGO_PKG_VERSION")
    );
    server.run(listener, shutdown_signal()).await;
    tracing::info!("stopped");
    drop(data_dir);
    ExitCode::SUCCESS
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        () = terminate => tracing::info!("SIGTERM received"),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("lockd: error: {message}");
    ExitCode::FAILURE
}
