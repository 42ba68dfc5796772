//! The systems under test, each behind the same [`Locker`] loop shape, so that every ratio
//! lockbench prints compares one loop against one loop.
//!
//! - [`lockd`]: a lean client of lockd's protocol, written for this benchmark (the `lockctl`
//!   library parses every frame into a `serde_json::Value`, which would make the client, not the
//!   server, the thing measured on a two-core machine).
//! - [`redis`]: a Redis lock: `SET key token NX PX` and a compare-and-delete script.
//! - [`echo`]: an in-process newline echo server and its client: the loopback limit.
//! - `etcd` (with the `etcd` feature): etcd v3's lock service over gRPC.
//! - [`cluster`]: finding a lockd cluster's leader, and asking a node for its view.

pub mod cluster;
pub mod echo;
#[cfg(feature = "etcd")]
pub mod etcd;
pub mod lockd;
pub mod redis;

use std::future::Future;

use anyhow::{bail, Result};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// One connection's handle on one lock, as the benchmark loops drive it.
pub trait Locker: Send + 'static {
    /// Takes the lock and returns once it is held, however long that takes.
    fn acquire(&mut self) -> impl Future<Output = Result<()>> + Send;

    /// Gives the lock back and returns once the server has acknowledged it.
    fn release(&mut self) -> impl Future<Output = Result<()>> + Send;
}

/// Which kind of server a run measured; its name goes into the JSON line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// lockd, started by lockbench or given with `--server`.
    Lockd,
    /// Redis, given with `--compare-redis`.
    Redis,
    /// The built-in echo server (`--compare-echo`).
    Echo,
    /// etcd's lock service, given with `--compare-etcd`.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    Etcd,
}

impl Target {
    /// The name used in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Target::Lockd => "lockd",
            Target::Redis => "redis",
            Target::Echo => "echo",
            Target::Etcd => "etcd",
        }
    }
}

/// The longest line lockbench accepts from a server; lockd's own replies are far shorter, so
/// anything longer means the bytes are not what we think they are.
const MAX_LINE_BYTES: usize = 1 << 20;

/// Cuts lines out of a byte stream into one buffer that is reused for the whole connection, so
/// that reading a reply allocates nothing once the buffer has grown to the longest line.
#[derive(Debug)]
pub(crate) struct LineReader {
    buf: Vec<u8>,
    /// Start of the bytes not yet returned as a line.
    start: usize,
    /// End of the bytes read from the socket.
    end: usize,
}

impl LineReader {
    pub(crate) fn new() -> LineReader {
        LineReader {
            buf: vec![0; 4096],
            start: 0,
            end: 0,
        }
    }

    /// The next line, without its newline. Fails when the peer closes the connection or sends a
    /// line longer than [`MAX_LINE_BYTES`].
    pub(crate) async fn next_line(&mut self, stream: &mut TcpStream) -> Result<&[u8]> {
        let mut scanned = self.start;
        loop {
            if let Some(offset) = self.buf[scanned..self.end].iter().position(|&b| b == b'\n') {
                let line = self.start..scanned + offset;
                self.start = scanned + offset + 1;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                return Ok(&self.buf[line]);
            }
            scanned = self.end;
            if self.start > 0 {
                // Move the partial line to the front so the buffer never grows for old bytes.
                self.buf.copy_within(self.start..self.end, 0);
                scanned -= self.start;
                self.end -= self.start;
                self.start = 0;
            }
            if self.end == self.buf.len() {
                if self.buf.len() >= MAX_LINE_BYTES {
                    bail!("the server sent a line longer than {MAX_LINE_BYTES} bytes");
                }
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let read = stream.read(&mut self.buf[self.end..]).await?;
            if read == 0 {
                bail!("the server closed the connection");
            }
            self.end += read;
        }
    }
}
