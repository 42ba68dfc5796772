//! The secrets and certificates lockd serves with, read from their files and read again on
//! SIGHUP or `POST /v1/reload`, without a restart: the client secret (`--auth-token-file`), the
//! admin credential (`--admin-token-file`), and the lock port's TLS certificate, key and client
//! CA (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
//!
//! A reload reads every file first and swaps them all in only if every one is good: a bad PEM or
//! an empty token file leaves everything as it was, and the error says which file. What was
//! already established stays: an authenticated session keeps its locks, an open TLS connection
//! keeps its keys; connections made after the reload use the new material. Peer credentials are
//! not reloaded (a cluster rotates them node by node with restarts, see docs/operations.md).

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;

use crate::tls::{self, TlsError};

/// Why a credential file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The file cannot be read.
    #[error("cannot read {flag} {}: {source}", path.display())]
    Read {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error("{flag} {} is empty", path.display())]
    Empty {
        /// The flag that names the file.
        flag: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// A certificate, key or CA file is not usable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reads a secret from `path` (named by `flag`): its contents without surrounding whitespace.
/// Warns when other users may read the file.
pub fn read_secret(path: &Path, flag: &'static str) -> Result<Arc<str>, CredentialError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialError::Read {
        flag,
        path: path.to_owned(),
        source,
    })?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(CredentialError::Empty {
            flag,
            path: path.to_owned(),
        });
    }
    if let Ok(meta) = std::fs::metadata(path) {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "{flag} is readable by other users; chmod 600 it"
            );
        }
    }
    Ok(Arc::from(secret))
}

/// Where the reloadable credentials come from (the flags' files); each absent one stays absent.
#[derive(Debug, Clone, Default)]
pub struct CredentialFiles {
    /// `--auth-token-file`.
    pub auth_token: Option<PathBuf>,
    /// `--admin-token-file`.
    pub admin_token: Option<PathBuf>,
    /// `--tls-cert` and `--tls-key`.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// `--tls-client-ca`.
    pub tls_client_ca: Option<PathBuf>,
}

/// One consistent set of credentials.
#[derive(Clone, Default)]
pub struct Credentials {
    /// The secret every session's `hello` must carry, if any.
    pub auth: Option<Arc<str>>,
    /// The admin credential, if any.
    pub admin_token: Option<Arc<str>>,
    /// The lock port's TLS settings, if it speaks TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

/// Hand-written so that no secret reaches a log line.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field(
                "admin_token",
                &self.admin_token.as_ref().map(|_| "<redacted>"),
            )
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl CredentialFiles {
    /// Reads every file; the first that cannot be used is the error.
    pub fn load(&self) -> Result<Credentials, CredentialError> {
        let auth = self
            .auth_token
            .as_deref()
            .map(|path| read_secret(path, "--auth-token-file"))
            .transpose()?;
        let admin_token = self
            .admin_token
            .as_deref()
            .map(|path| read_secret(path, "--admin-token-file"))
            .transpose()?;
        let tls = self
            .tls
            .as_ref()
            .map(|(cert, key)| tls::server_config(cert, key, self.tls_client_ca.as_deref()))
            .transpose()?;
        Ok(Credentials {
            auth,
            admin_token,
            tls,
        })
    }
}

/// The credentials in force, shared by the accept loop, the backends and the admin API, and
/// where they are read from, for reloads.
#[derive(Debug)]
pub struct LiveCredentials {
    current: RwLock<Credentials>,
    files: Option<CredentialFiles>,
}

/// What a reload did not do.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The credentials came with the server's configuration, not from files.
    #[error("this lockd was not given its credentials as files, so there is nothing to reload")]
    NoFiles,
    /// A file could not be used; nothing changed.
    #[error("{0}; the credentials in force are unchanged")]
    Unusable(#[from] CredentialError),
}

impl LiveCredentials {
    /// Credentials that never change (for a server built in code, as the tests do).
    pub fn fixed(credentials: Credentials) -> LiveCredentials {
        LiveCredentials {
            current: RwLock::new(credentials),
            files: None,
        }
    }

    /// Credentials read from `files`, and read again by [`reload`](Self::reload).
    pub fn from_files(files: CredentialFiles) -> Result<LiveCredentials, CredentialError> {
        Ok(LiveCredentials {
            current: RwLock::new(files.load()?),
            files: Some(files),
        })
    }

    /// The credentials in force now.
    pub fn current(&self) -> Credentials {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Reads the files again and puts the new credentials in force, all or none.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let files = self.files.as_ref().ok_or(ReloadError::NoFiles)?;
        let fresh = files.load()?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_swaps_everything_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let auth = dir.path().join("auth");
        let admin = dir.path().join("admin");
        std::fs::write(&auth, "one\n").unwrap();
        std::fs::write(&admin, "admin-one\n").unwrap();
        let live = LiveCredentials::from_files(CredentialFiles {
            auth_token: Some(auth.clone()),
            admin_token: Some(admin.clone()),
            ..CredentialFiles::default()
        })
        .unwrap();
        assert_eq!(live.current().auth.as_deref(), Some("one"));

        std::fs::write(&auth, "two\n").unwrap();
        std::fs::write(&admin, "  \n").unwrap();
        let refused = live.reload().unwrap_err().to_string();
        assert!(
            refused.contains("--admin-token-file") && refused.contains("empty"),
            "{refused}"
        );
        assert_eq!(
            live.current().auth.as_deref(),
            Some("one"),
            "nothing changed"
        );

        std::fs::write(&admin, "admin-two\n").unwrap();
        live.reload().unwrap();
        let now = live.current();
        assert_eq!(
            (now.auth.as_deref(), now.admin_token.as_deref()),
            (Some("two"), Some("admin-two"))
        );
        assert!(!format!("{now:?}").contains("two"), "{now:?}");
    }

    #[test]
    fn fixed_credentials_cannot_be_reloaded() {
        let live = LiveCredentials::fixed(Credentials::default());
        assert!(matches!(live.reload(), Err(ReloadError::NoFiles)));
    }
}
