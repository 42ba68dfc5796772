//! Session commands: `hello` (optional; sets the lease) and `ping` (keeps the session alive).

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;

/// `hello`: names the client and asks for a lease. Optional, unless the server requires
/// authentication; a session that never sends it gets the server's default lease.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Hello {
    /// A free-form name for logs and `status`, e.g. `backup@host1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The lease asked for, in milliseconds; the server clamps it to its allowed range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease_ms: Option<u64>,
    /// The shared secret of a server started with `--auth-token-file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    /// Resume this session instead of the connection's own (cluster mode): a client whose
    /// server failed over reconnects to the new leader and keeps its locks and its places in
    /// line, as long as the session's lease has not run out. Needs `resume_secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionId>,
    /// The `resume_secret` that the `hello` opening `session` returned: a session id is shown
    /// by `status`, so it is not enough to take a session over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
}

/// Hand-written so that the secret never reaches a log line.
impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("client", &self.client)
            .field("lease_ms", &self.lease_ms)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .field("session", &self.session)
            .field(
                "resume_secret",
                &self.resume_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// The result of `hello`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloOk {
    /// This connection's session id, as shown by `status`.
    pub session: SessionId,
    /// The lease granted: the session expires after this long without a frame from the client.
    pub lease_ms: u64,
    /// The server's name and version, e.g. `lockd 0.1.0`.
    pub server: String,
    /// The protocol version, 1.
    pub protocol: u32,
    /// What resuming this session needs besides its id (cluster mode): random, 128 bits in
    /// hex. Only the `hello` that opened the session carries it; keep it as a password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_secret: Option<String>,
}

/// Hand-written so that the resume secret never reaches a log line.
impl std::fmt::Debug for HelloOk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HelloOk")
            .field("session", &self.session)
            .field("lease_ms", &self.lease_ms)
            .field("server", &self.server)
            .field("protocol", &self.protocol)
            .field(
                "resume_secret",
                &self.resume_secret.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
