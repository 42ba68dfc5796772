//! The byte stream under the peer frames, and what a node presents and requires on it:
//! [`PeerCredentials`] (the peer secret of `--peer-secret-file` and the mutual TLS of
//! `--peer-tls-*`) and [`PeerTransport`] (plain TCP, or TLS when the credentials have it).
//!
//! The TLS handshake happens here, before a frame is read or written; the secret travels in the
//! hello, which `network.rs` sends and `peer_server.rs` checks. This module reads no frame.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::tls::{PeerTlsConfig, PEER_SERVER_NAME};

/// What this node presents to its peers, and requires of them. Cheap to clone.
#[derive(Clone, Default)]
pub struct PeerCredentials {
    /// Sent in every hello, and required in every hello received, when set.
    pub secret: Option<Arc<str>>,
    /// Mutual TLS on every peer connection, both ways, when set.
    pub tls: Option<PeerTlsConfig>,
}

impl PeerCredentials {
    /// Credentials of a secret alone (or none).
    pub fn secret(secret: Option<Arc<str>>) -> Self {
        PeerCredentials { secret, tls: None }
    }

    /// Wraps a connection accepted on the peer port: with TLS, completes the handshake, which
    /// fails unless the peer presents a certificate signed by the peer CA.
    pub async fn accept(&self, stream: TcpStream) -> io::Result<PeerTransport> {
        match &self.tls {
            None => Ok(PeerTransport::Plain(stream)),
            Some(tls) => {
                let acceptor = TlsAcceptor::from(Arc::clone(&tls.server));
                let stream = acceptor.accept(stream).await?;
                Ok(PeerTransport::Tls(Box::new(stream.into())))
            }
        }
    }

    /// Wraps a connection this node opened to a peer: with TLS, completes the handshake, which
    /// fails unless the peer's certificate is signed by the peer CA and names
    /// [`PEER_SERVER_NAME`].
    pub async fn connect(&self, stream: TcpStream) -> io::Result<PeerTransport> {
        match &self.tls {
            None => Ok(PeerTransport::Plain(stream)),
            Some(tls) => {
                let connector = TlsConnector::from(Arc::clone(&tls.client));
                let name = ServerName::try_from(PEER_SERVER_NAME)
                    .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
                let stream = connector.connect(name, stream).await?;
                Ok(PeerTransport::Tls(Box::new(stream.into())))
            }
        }
    }
}

impl fmt::Debug for PeerCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret itself.
        f.debug_struct("PeerCredentials")
            .field("secret", &self.secret.as_ref().map(|_| "set"))
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// A peer connection's bytes: plain TCP or TLS over it.
#[derive(Debug)]
pub enum PeerTransport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP, either end's (boxed: it is much larger than a `TcpStream`).
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
}

impl From<TcpStream> for PeerTransport {
    fn from(stream: TcpStream) -> Self {
        PeerTransport::Plain(stream)
    }
}

impl AsyncRead for PeerTransport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerTransport::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            PeerTransport::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PeerTransport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PeerTransport::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            PeerTransport::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerTransport::Plain(stream) => Pin::new(stream).poll_flush(cx),
            PeerTransport::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PeerTransport::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            PeerTransport::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
