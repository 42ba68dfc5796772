//! A TCP proxy that can cut a link on command, for cluster tests: put one between two nodes,
//! then drop or blackhole what crosses it.
//!
//! [`FaultProxy`] listens on 127.0.0.1 and relays every connection to one upstream address.
//! Its [`Mode`] applies at once to new and existing connections. Blackholing discards bytes
//! rather than holding them, so a connection that lived through a blackhole has lost data in
//! the middle of its stream: after [`Mode::Pass`] again, only a protocol that drops such
//! connections (as lockd's peer network does after a timeout) will make sense of it.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does with the traffic it relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Relay bytes both ways.
    Pass,
    /// Close every connection, and close new ones as soon as they are accepted: the peer sees
    /// the connection end, as when a process dies.
    Drop,
    /// Keep connections open and accept new ones, but discard every byte in both directions,
    /// and hold back the end of a stream until the mode changes: a network partition as TCP
    /// sees it, where reads wait until they time out.
    Blackhole,
}

/// A running proxy; dropping it closes its listener and every connection.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept_task: JoinHandle<()>,
}

impl FaultProxy {
    /// Starts relaying connections made to [`FaultProxy::addr`] to `upstream`, in `Mode::Pass`.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let accept_task = tokio::spawn(accept_loop(listener, upstream, mode.clone()));
        FaultProxy {
            addr,
            mode,
            accept_task,
        }
    }

    /// Where to connect instead of the upstream address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Applies `mode` to existing and new connections from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.mode.send_replace(Mode::Drop);
        self.accept_task.abort();
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, mode: watch::Sender<Mode>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        if *mode.borrow() == Mode::Drop {
            drop(client);
            continue;
        }
        let mode = mode.subscribe();
        tokio::spawn(async move {
            // An upstream that cannot be reached closes the client's connection, as it would
            // have been refused without the proxy.
            if let Ok(upstream) = TcpStream::connect(upstream).await {
                relay(client, upstream, mode).await;
            }
        });
    }
}

/// Relays both directions until both ends have closed, or until the mode becomes `Drop`.
async fn relay(client: TcpStream, upstream: TcpStream, mut mode: watch::Receiver<Mode>) {
    let (from_client, to_client) = client.into_split();
    let (from_upstream, to_upstream) = upstream.into_split();
    let forward = pump(from_client, to_upstream, mode.clone());
    let backward = pump(from_upstream, to_client, mode.clone());
    let both_ways = async { tokio::join!(forward, backward) };
    tokio::select! {
        _ = both_ways => {}
        _ = mode.wait_for(|mode| *mode == Mode::Drop) => {}
    }
    // Returning drops all four halves, which closes both sockets.
}

/// Copies one direction, discarding what arrives while blackholed. Passes the end of the
/// stream on, so a half-closed connection stays half-closed; but not while blackholed, since
/// a partition carries no FIN either: then only once the mode changes.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        let current = *mode.borrow();
        match current {
            Mode::Pass => {
                if to.write_all(&buffer[..read]).await.is_err() {
                    break;
                }
            }
            Mode::Blackhole => {}
            Mode::Drop => break,
        }
    }
    let _ = mode.wait_for(|mode| *mode != Mode::Blackhole).await;
    let _ = to.shutdown().await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::support::PATIENCE;

    /// How long a read must stay empty to count as blackholed.
    const SILENCE: Duration = Duration::from_millis(300);

    /// An echo server on 127.0.0.1.
    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut stream, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut reader, mut writer) = stream.split();
                    let _ = tokio::io::copy(&mut reader, &mut writer).await;
                });
            }
        });
        addr
    }

    async fn echo(stream: &mut TcpStream, message: &[u8]) {
        stream.write_all(message).await.unwrap();
        let mut answer = vec![0; message.len()];
        tokio::time::timeout(PATIENCE, stream.read_exact(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, message);
    }

    /// Waits for the proxy to close `stream`: the end of the stream, or a reset.
    async fn assert_closed(stream: &mut TcpStream) {
        let mut byte = [0];
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte)).await;
        assert!(
            matches!(read, Ok(Ok(0) | Err(_))),
            "the connection is still open: {read:?}"
        );
    }

    #[tokio::test]
    async fn passes_bytes_both_ways() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut stream = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut stream, b"hello").await;
        echo(&mut stream, &vec![7; 100_000]).await;
    }

    #[tokio::test]
    async fn drop_closes_existing_and_new_connections() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut existing, b"before").await;
        proxy.set_mode(Mode::Drop);
        assert_closed(&mut existing).await;
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        assert_closed(&mut new).await;
    }

    #[tokio::test]
    async fn blackhole_keeps_connections_open_and_silent_then_pass_resumes() {
        let proxy = FaultProxy::start(echo_server().await).await;
        let mut existing = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut existing, b"before").await;
        proxy.set_mode(Mode::Blackhole);
        let mut new = TcpStream::connect(proxy.addr()).await.unwrap();
        for stream in [&mut existing, &mut new] {
            stream.write_all(b"lost").await.unwrap();
            let mut byte = [0];
            let read = tokio::time::timeout(SILENCE, stream.read(&mut byte)).await;
            assert!(read.is_err(), "a blackholed read returned: {read:?}");
        }
        proxy.set_mode(Mode::Pass);
        // "lost" never reached the echo server, so only what follows comes back.
        echo(&mut existing, b"after").await;
        echo(&mut new, b"after").await;
        let mut fresh = TcpStream::connect(proxy.addr()).await.unwrap();
        echo(&mut fresh, b"fresh").await;
    }
}
