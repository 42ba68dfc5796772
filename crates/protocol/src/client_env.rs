//! The environment variables a lockd client (lockctl) reads or sets, named in one place so that
//! the server's own `LOCKD_*` variables (one per lockd flag) can keep clear of them: a shell set
//! up for lockctl (`LOCKD_TLS_CERT` is the client's certificate) must never change a lockd
//! started from it.

/// Every variable lockctl reads, and those `lockctl run` sets for its command.
pub const CLIENT_VARIABLES: &[&str] = &[
    "LOCKD_ADDR",
    "LOCKD_AUTH_TOKEN",
    "LOCKD_ADMIN_TOKEN",
    "LOCKD_CLIENT_NAME",
    "LOCKD_CONNECT_TIMEOUT",
    "LOCKD_REPLY_TIMEOUT",
    "LOCKD_TLS_CA",
    "LOCKD_TLS_CERT",
    "LOCKD_TLS_KEY",
    "LOCKD_HTTP",
    "LOCKD_TOKEN",
    "LOCKD_RESOURCE",
];
