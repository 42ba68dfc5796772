//! The loopback limit: an in-process echo server and a client that runs lockd's loop shape on it.
//!
//! A "pair" is two round trips of lines the size of lockd's acquire and release requests, so
//! the only difference from the lockd loop is that the server does nothing but copy bytes back.
//! The server runs on its own thread with a current-thread Tokio runtime, so it competes with
//! the client for the machine's cores as lockd does, with one thread (compare lockd started
//! with `--lockd-arg=--worker-threads=1` for the same shape).

use std::net::SocketAddr;
use std::thread::JoinHandle;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

use super::lockd::LockdLocker;
use super::{LineReader, Locker};
use crate::measure::ServerCpu;

/// The echo server thread's name, by which its CPU time is found in /proc.
const THREAD_NAME: &str = "echo-server";

/// A running echo server; stops (and joins its thread) when dropped.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl EchoServer {
    /// Starts the server on 127.0.0.1 with a free port.
    pub fn start() -> Result<EchoServer> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .context("cannot start the echo server's runtime")?;
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .context("cannot bind the echo server")?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    tokio::select! {
                        _ = stopped => {}
                        () = accept_loop(listener) => {}
                    }
                });
                // Dropping the runtime here ends every connection task.
            })
            .context("cannot start the echo server's thread")?;
        Ok(EchoServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Where the server listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where to read the server's CPU time: its thread, found by name in /proc/self/task.
    pub fn cpu(&self) -> ServerCpu {
        let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
            return ServerCpu::Unknown;
        };
        tasks
            .filter_map(|task| task.ok())
            .find(|task| {
                std::fs::read_to_string(task.path().join("comm"))
                    .is_ok_and(|comm| comm.trim_end() == THREAD_NAME)
            })
            .and_then(|task| task.file_name().to_str()?.parse().ok())
            .map_or(ServerCpu::Unknown, ServerCpu::Thread)
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(echo(stream));
    }
}

/// Copies bytes back as they arrive. The client sends one line and waits for it, so every read
/// is one whole line and every write one reply, as in lockd; no parsing is needed to echo.
async fn echo(mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => {
                if stream.write_all(&buf[..read]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// A client that does lockd's loop against the echo server.
#[derive(Debug)]
pub struct EchoLocker {
    stream: TcpStream,
    lines: LineReader,
    acquire_line: Vec<u8>,
    release_line: Vec<u8>,
}

impl EchoLocker {
    /// Connects; the lines sent are lockd's requests for `resource`, byte for byte in size.
    pub async fn connect(addr: SocketAddr, resource: &str) -> Result<EchoLocker> {
        let stream = TcpStream::connect(addr)
            .await
            .context("cannot connect to the echo server")?;
        stream.set_nodelay(true)?;
        Ok(EchoLocker {
            stream,
            lines: LineReader::new(),
            acquire_line: LockdLocker::sample_acquire_line(resource),
            release_line: LockdLocker::sample_release_line(resource),
        })
    }

    async fn round_trip(&mut self, acquire: bool) -> Result<()> {
        let line = if acquire {
            &self.acquire_line
        } else {
            &self.release_line
        };
        self.stream.write_all(line).await?;
        let echoed = self.lines.next_line(&mut self.stream).await?;
        // The echo has no newline; the line sent has one.
        if echoed.len() + 1 != line.len() {
            bail!("the echo server sent back a different line");
        }
        Ok(())
    }
}

impl Locker for EchoLocker {
    async fn acquire(&mut self) -> Result<()> {
        self.round_trip(true).await
    }

    async fn release(&mut self) -> Result<()> {
        self.round_trip(false).await
    }
}
