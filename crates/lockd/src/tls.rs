//! TLS for client connections (rustls with the ring provider), and mutual TLS when a client CA
//! is given. Plain TCP stays the default; `main.rs` builds the acceptor from the flags.

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
    #[error("cannot read a private key from --tls-key {}: {source}", path.display())]
    ReadKey {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        source: rustls_pki_types::pem::Error,
    },
    /// rustls refused the protocol versions (the crypto provider lacks something).
    #[error("TLS setup failed: {0}")]
    Setup(rustls::Error),
    /// A CA certificate of `--tls-client-ca` is unusable.
    #[error("bad CA certificate in {}: {source}", path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// rustls's error.
        source: rustls::Error,
    },
    /// The client CAs cannot verify clients.
    #[error("cannot use --tls-client-ca {}: {source}", path.display())]
    ClientVerifier {
        /// The file.
        path: PathBuf,
        /// rustls's error.
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and the key do not belong together.
    #[error("--tls-cert and --tls-key do not make a usable pair: {0}")]
    Pair(rustls::Error),
}

/// The TLS settings for serving `cert` (a PEM chain, leaf first) with `key` (PEM). With `client_ca`,
/// clients must present a certificate signed by one of its CAs.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::ReadKey {
        path: key.to_owned(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "--tls-client-ca")? {
                roots.add(cert).map_err(|source| TlsError::BadCa {
                    path: ca.to_owned(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::ClientVerifier {
                    path: ca.to_owned(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(TlsError::Pair)?;
    Ok(Arc::new(config))
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
