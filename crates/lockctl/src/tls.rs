//! TLS for the client: trust a given CA (lockd deployments usually run their own), and present
//! a client certificate when the server requires mutual TLS.

use std::path::PathBuf;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, RootCertStore};
use tokio_rustls::TlsConnector;

use crate::error::ClientError;

/// How to reach a lockd that serves TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// CA certificates (PEM) to trust for the server's certificate.
    pub ca: PathBuf,
    /// A client certificate chain (PEM) for mutual TLS; needs `key`.
    pub cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key: Option<PathBuf>,
    /// The name to check the server's certificate against; default: the host in the address.
    pub server_name: Option<String>,
}

impl TlsOptions {
    /// Builds the connector and the server name to verify for `host`.
    pub(crate) fn connector(
        &self,
        host: &str,
    ) -> Result<(TlsConnector, ServerName<'static>), ClientError> {
        let bad = |what: String| ClientError::InvalidInput(what);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        let certs = read_certs(&self.ca, "--tls-ca")?;
        for cert in certs {
            roots.add(cert).map_err(|err| {
                bad(format!(
                    "bad CA certificate in {}: {err}",
                    self.ca.display()
                ))
            })?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| bad(format!("TLS setup failed: {err}")))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert, "--tls-cert")?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|err| {
                    bad(format!(
                        "cannot read a private key from --tls-key {}: {err}",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|err| bad(format!("unusable client certificate: {err}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(bad("--tls-cert and --tls-key go together".to_owned())),
        };
        let name = self.server_name.as_deref().unwrap_or(host);
        let name = ServerName::try_from(name.to_owned())
            .map_err(|err| bad(format!("invalid TLS server name {name:?}: {err}")))?;
        Ok((TlsConnector::from(Arc::new(config)), name))
    }
}

fn read_certs(path: &PathBuf, flag: &str) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            ClientError::InvalidInput(format!(
                "cannot read certificates from {flag} {}: {err}",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(ClientError::InvalidInput(format!(
            "{flag} {} holds no certificate",
            path.display()
        )));
    }
    Ok(certs)
}
