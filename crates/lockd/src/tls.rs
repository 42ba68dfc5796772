//! TLS for client connections (rustls with the ring provider), and mutual TLS when a client CA
//! is given. Plain TCP stays the default; `main.rs` builds the acceptor from the flags.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore};

/// The TLS settings for serving `cert` (a PEM chain, leaf first) with `key` (PEM). With `client_ca`,
/// clients must present a certificate signed by one of its CAs.
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certs(cert, "--tls-cert")?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|err| {
        format!(
            "cannot read a private key from --tls-key {}: {err}",
            key.display()
        )
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|err| format!("TLS setup failed: {err}"))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca, "--tls-client-ca")? {
                roots
                    .add(cert)
                    .map_err(|err| format!("bad CA certificate in {}: {err}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|err| format!("cannot use --tls-client-ca {}: {err}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key)
        .map_err(|err| format!("--tls-cert and --tls-key do not make a usable pair: {err}"))?;
    Ok(Arc::new(config))
}

fn read_certs(path: &Path, flag: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|err| {
            format!(
                "cannot read certificates from {flag} {}: {err}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!("{flag} {} holds no certificate", path.display()));
    }
    Ok(certs)
}
