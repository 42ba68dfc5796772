//! TLS settings (rustls with the ring provider): for client connections, with mutual TLS when a
//! client CA is given ([`server_config`]), and for the peer port, always mutual
//! ([`peer_config`]). This is the one place that reads certificates and keys. Plain TCP stays
//! the default; `main.rs` builds the settings from the flags.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};

/// Why the TLS settings could not be built. Each message names the flag and the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file of certificates could not be read or parsed.
    #[error("cannot read certificates from {flag} {}: {source}", path.display())]
    ReadCerts {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: rustls_pki_types::pem::Error,
    },
    /// A file of certificates held none.
    #[error("{flag} {} holds no certificate", path.display())]
    NoCerts {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// The private key could not be read or parsed.
    #[error("cannot read a private key from {flag} {}: {source}", path.display())]
    ReadKey {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the protocol versions (the crypto provider lacks something).
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    /// A CA certificate of `--tls-client-ca` or `--peer-tls-ca` is unusable.
    #[error("bad CA certificate in {flag} {}: {source}", path.display())]
    BadCa {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
    /// The CAs cannot verify clients.
    #[error("cannot use {flag} {}: {source}", path.display())]
    ClientVerifier {
        /// The flag that named the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// rustls's error.
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and the key do not belong together.
    #[error("{} and {} do not make a usable pair: {source}", flags.cert, flags.key)]
    Pair {
        /// The flags that named the two files.
        flags: &'static Flags,
        /// rustls's error.
        source: rustls::Error,
    },
}

/// The flags that name a port's certificate, key and CA, for error messages.
#[derive(Debug)]
pub struct Flags {
    /// The certificate chain's flag.
    pub cert: &'static str,
    /// The private key's flag.
    pub key: &'static str,
    /// The CA's flag.
    pub ca: &'static str,
}

/// The client port's flags.
const CLIENT_PORT: Flags = Flags {
    cert: "--tls-cert",
    key: "--tls-key",
    ca: "--tls-client-ca",
};

/// The peer port's flags.
const PEER_PORT: Flags = Flags {
    cert: "--peer-tls-cert",
    key: "--peer-tls-key",
    ca: "--peer-tls-ca",
};

/// The name every node's certificate must carry (as a DNS subject alternative name), and that
/// a node verifies its peer's certificate against.
///
/// A peer address is whatever `--peers` or `add_node` says (an IP, a name, a proxy in front of
/// the node), so it is not checked against the certificate: what makes a peer a member is a
/// certificate signed by the peer CA, which must sign nothing but the cluster's nodes.
pub const PEER_SERVER_NAME: &str = "lockd-peer";

/// The peer port's mutual TLS: both ends present a certificate signed by the peer CA, and check
/// the other's against it.
#[derive(Debug, Clone)]
pub struct PeerTlsConfig {
    /// For the peer listener: requires a client certificate signed by the peer CA.
    pub server: Arc<rustls::ServerConfig>,
    /// For connections to peers: presents this node's certificate, verifies the server's
    /// against the peer CA and [`PEER_SERVER_NAME`].
    pub client: Arc<rustls::ClientConfig>,
}

/// The TLS settings for serving `cert` (a PEM chain, leaf first) with `key` (PEM). With `client_ca`,
/// clients must present a certificate signed by one of its CAs.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let identity = Identity::read(cert, key, &CLIENT_PORT)?;
    let client_ca = client_ca
        .map(|ca| read_roots(ca, CLIENT_PORT.ca).map(|roots| (ca, roots)))
        .transpose()?;
    serve(identity, client_ca, &CLIENT_PORT)
}

/// The peer port's TLS settings: this node is `cert` (a PEM chain, leaf first, whose leaf names
/// [`PEER_SERVER_NAME`]) with `key` (PEM), and its peers are whoever has a certificate signed by
/// a CA of `ca` (PEM).
pub fn peer_config(cert: &Path, key: &Path, ca: &Path) -> Result<PeerTlsConfig, TlsError> {
    let identity = Identity::read(cert, key, &PEER_PORT)?;
    let roots = read_roots(ca, PEER_PORT.ca)?;
    let client = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|source| TlsError::Pair {
            flags: &PEER_PORT,
            source,
        })?;
    let server = serve(identity, Some((ca, roots)), &PEER_PORT)?;
    Ok(PeerTlsConfig {
        server,
        client: Arc::new(client),
    })
}

/// A certificate chain and its private key, as read from their files.
struct Identity {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn read(cert: &Path, key: &Path, flags: &'static Flags) -> Result<Identity, TlsError> {
        let chain = read_certs(cert, flags.cert)?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
            flag: flags.key,
            path: key.to_owned(),
            source,
        })?;
        Ok(Identity { chain, key })
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server settings for `identity`; with `client_ca` (its file and its certificates), clients
/// must present a certificate signed by one of them.
fn serve(
    identity: Identity,
    client_ca: Option<(&Path, RootCertStore)>,
    flags: &'static Flags,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some((ca, roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    flag: flags.ca,
                    path: ca.to_owned(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(identity.chain, identity.key)
        .map_err(|source| TlsError::Pair { flags, source })?;
    Ok(Arc::new(config))
}

/// The CA certificates in `path` (named by `flag`).
fn read_roots(path: &Path, flag: &'static str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(path, flag)? {
        roots.add(cert).map_err(|source| TlsError::BadCa {
            flag,
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

fn read_certs(path: &Path, flag: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::ReadCerts {
            flag,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts {
            flag,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}
