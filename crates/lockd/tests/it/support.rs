//! Test support: the real `lockd` binary on 127.0.0.1:0, and a raw JSON-lines connection.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before the test fails instead of hanging.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a [`Deadline`] loop looks again.
pub const POLL: Duration = Duration::from_millis(10);

/// The end of a wait for a condition: a loop checks the condition, and between checks calls
/// [`Deadline::tick`], which fails the test after [`PATIENCE`] saying what was awaited and what
/// was last seen. Tests wait for conditions this way, never for a fixed time.
#[derive(Debug)]
pub struct Deadline {
    at: std::time::Instant,
    what: String,
}

impl Deadline {
    /// A wait of [`PATIENCE`] for `what`, e.g. "the disconnect's release to be counted".
    pub fn new(what: impl Into<String>) -> Deadline {
        Deadline {
            at: std::time::Instant::now() + PATIENCE,
            what: what.into(),
        }
    }

    /// Fails the test if the deadline has passed, naming what was awaited and `seen` (the
    /// state last observed); otherwise sleeps for [`POLL`].
    pub async fn tick(&self, seen: impl std::fmt::Display) {
        self.check(seen);
        tokio::time::sleep(POLL).await;
    }

    /// [`Deadline::tick`] for code that runs on a plain thread.
    pub fn tick_blocking(&self, seen: impl std::fmt::Display) {
        self.check(seen);
        std::thread::sleep(POLL);
    }

    fn check(&self, seen: impl std::fmt::Display) {
        assert!(
            std::time::Instant::now() < self.at,
            "waited {PATIENCE:?} for {}; last seen: {seen}",
            self.what
        );
    }
}

/// A running `lockd` process, killed when dropped.
pub struct Lockd {
    pub child: Child,
    pub addr: SocketAddr,
    /// How the start-up line names the listener: `tcp`, or `tls` when lockd serves TLS.
    pub scheme: String,
    pub data_dir: PathBuf,
    /// Removed on drop when the test created it.
    owned_dir: Option<tempfile::TempDir>,
    /// The rest of lockd's stdout, kept open so that later lines have a reader.
    stdout: BufReader<std::process::ChildStdout>,
}

impl Lockd {
    /// Starts lockd on a free port with a fresh data directory and extra flags.
    pub fn start(flags: &[&str]) -> Lockd {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut lockd = Lockd::start_in(dir.path(), flags);
        lockd.owned_dir = Some(dir);
        lockd
    }

    /// Starts lockd on a free port with the given data directory.
    pub fn start_in(data_dir: &Path, flags: &[&str]) -> Lockd {
        Lockd::spawn(
            lockd_command(data_dir, flags).stderr(Stdio::inherit()),
            data_dir,
        )
    }

    /// Runs `command`, which must end up exec-ing lockd, and waits for its start-up line.
    pub fn spawn(command: &mut Command, data_dir: &Path) -> Lockd {
        let mut child = command
            .stdout(Stdio::piped())
            .spawn()
            .expect("lockd binary runs");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stdout = BufReader::new(stdout);
        let mut first_line = String::new();
        stdout
            .read_line(&mut first_line)
            .expect("lockd prints its address");
        let (scheme, addr) = first_line
            .trim()
            .strip_prefix("Lock Server started on ")
            .and_then(|url| url.split_once("://"))
            .unwrap_or_else(|| panic!("unexpected first line {first_line:?} (stderr above)"));
        Lockd {
            addr: addr.parse().expect("a socket address"),
            scheme: scheme.to_owned(),
            child,
            data_dir: data_dir.to_owned(),
            owned_dir: None,
            stdout,
        }
    }

    pub async fn connect(&self) -> Conn {
        Conn::connect(self.addr).await
    }

    /// The next line lockd prints on stdout after the first (which `spawn` reads).
    pub fn next_stdout_line(&mut self) -> String {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .expect("lockd's stdout is readable");
        line
    }

    /// Sends a signal (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Sends a signal and waits for the exit status.
    pub fn signal_and_wait(&mut self, signal: &str) -> std::process::ExitStatus {
        self.signal(signal);
        wait_with_patience(&mut self.child)
    }
}

impl Drop for Lockd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        drop(self.owned_dir.take());
    }
}

/// The `lockd` command with `--listen 127.0.0.1:0` and a data dir, not yet spawned.
pub fn lockd_command(data_dir: &Path, flags: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lockd"));
    command
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data_dir)
        .args(flags)
        .stdin(Stdio::null());
    command
}

pub fn wait_with_patience(child: &mut Child) -> std::process::ExitStatus {
    let deadline = Deadline::new(format!("process {} to exit", child.id()));
    loop {
        if let Some(status) = child.try_wait().expect("try_wait works") {
            return status;
        }
        deadline.tick_blocking("still running");
    }
}

/// A raw connection that sends and receives JSON lines.
pub struct Conn {
    reader: AsyncBufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> Conn {
        // With a deadline: a connect whose handshake is never answered would otherwise wait out
        // the kernel's SYN retries (minutes), and a test would hang rather than say why.
        let stream = tokio::time::timeout(PATIENCE, TcpStream::connect(addr))
            .await
            .unwrap_or_else(|_| panic!("connecting to {addr} took over {PATIENCE:?}"))
            .unwrap_or_else(|err| panic!("cannot connect to {addr}: {err}"));
        Conn::from_stream(stream)
    }

    pub fn from_stream(stream: TcpStream) -> Conn {
        let (read, write) = stream.into_split();
        Conn::from_halves(read, write)
    }

    pub fn from_halves(read: OwnedReadHalf, write: OwnedWriteHalf) -> Conn {
        Conn {
            reader: AsyncBufReader::new(read),
            writer: write,
        }
    }

    /// The two halves, for tests that write without reading.
    pub fn into_split(self) -> (AsyncBufReader<OwnedReadHalf>, OwnedWriteHalf) {
        (self.reader, self.writer)
    }

    /// Sends raw bytes as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("write works");
    }

    /// Sends one JSON frame; `false` if the connection is gone (for tests that kill lockd).
    pub async fn try_send(&mut self, frame: Value) -> bool {
        let mut line = serde_json::to_vec(&frame).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).await.is_ok()
    }

    /// Sends several frames in one write, so lockd reads them together.
    pub async fn send_batch(&mut self, frames: &[Value]) {
        let mut batch = String::new();
        for frame in frames {
            batch.push_str(&frame.to_string());
            batch.push('\n');
        }
        self.send_raw(batch.as_bytes()).await;
    }

    /// Sends one JSON frame.
    pub async fn send(&mut self, frame: Value) {
        let mut line = serde_json::to_vec(&frame).unwrap();
        line.push(b'\n');
        self.send_raw(&line).await;
    }

    /// The next frame, failing the test after [`PATIENCE`].
    pub async fn recv(&mut self) -> Value {
        self.try_recv(PATIENCE)
            .await
            .expect("a frame arrives in time")
            .expect("the connection stays open")
    }

    /// The next frame within `wait`: `Err` on timeout, `Ok(None)` on EOF.
    pub async fn try_recv(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        let mut line = String::new();
        match tokio::time::timeout(wait, self.reader.read_line(&mut line)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) | Ok(Err(_)) => Ok(None),
            // The connection ended in the middle of a line (lockd was killed mid-write).
            Ok(Ok(_)) if !line.ends_with('\n') => Ok(None),
            Ok(Ok(_)) => Ok(Some(serde_json::from_str(&line).unwrap_or_else(|err| {
                panic!("server sent invalid JSON {line:?}: {err}")
            }))),
        }
    }

    /// Sends a request and returns its reply (the next frame).
    pub async fn call(&mut self, frame: Value) -> Value {
        self.send(frame).await;
        self.recv().await
    }

    /// Acquires `resource` at once (it must be free) and returns the token.
    pub async fn lock(&mut self, id: u64, resource: &str, mode: &str) -> u64 {
        let reply = self
            .call(json!({"id": id, "op": "acquire", "resource": resource, "mode": mode}))
            .await;
        assert_eq!(reply["ok"], true, "{reply}");
        reply["token"].as_u64().expect("a token")
    }

    /// Asserts nothing arrives for a short while.
    pub async fn expect_silence(&mut self) {
        if let Ok(frame) = self.try_recv(Duration::from_millis(100)).await {
            panic!("expected no frame, got {frame:?}");
        }
    }
}

/// The error code of a failure reply, checking its shape on the way.
pub fn error_code(reply: &Value) -> &str {
    assert_eq!(reply["ok"], false, "{reply}");
    let message = reply["error"]["message"].as_str().expect("a message");
    assert!(!message.is_empty());
    reply["error"]["code"].as_str().expect("a code")
}

/// An HTTP answer from the admin API.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|err| panic!("not JSON ({err}): {:?}", self.body))
    }
}

/// Sends one request (`Connection: close`) and reads the whole answer, head and body.
async fn http_exchange(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("the admin API accepts");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut raw))
        .await
        .expect("the admin API answers in time")
        .expect("the answer is readable");
    raw
}

/// [`http`] for a binary body sent with a `Content-Length` (a backup): the status and the
/// body's bytes.
pub async fn http_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<u8>) {
    let raw = http_exchange(addr, method, path, headers, &[]).await;
    let split = raw
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .expect("a head and a body");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "a body with a length: {head}"
    );
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, raw[split + 4..].to_vec())
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end. Small on
/// purpose: the admin API is plain HTTP, and a client library would only hide what is sent.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> HttpReply {
    http_with_body(addr, method, path, headers, &[]).await
}

/// [`http`] with a request body (sent with its `Content-Length`).
pub async fn http_with_body(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpReply {
    let raw = http_exchange(addr, method, path, headers, body).await;
    let raw = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(name, value)| name == "transfer-encoding" && value.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpReply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}
