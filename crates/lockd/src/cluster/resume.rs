//! Resume secrets: what a client needs, besides its session's id, to take the session back on
//! a new connection (after a failover, say).
//!
//! Session ids are no secret: `status` and `/v1/locks` show them. So the leader that opens a
//! session draws a random secret (128 bits) and gives it to the client in the `hello` reply;
//! a later `hello` that resumes the session must present it. Only its digest (SHA-256) goes
//! into the log and the snapshots: a copy of a node's data directory does not let anyone
//! resume a session. The digest of a 128-bit random secret needs no salt or stretching: there
//! is nothing to guess from it.
//!
//! `ResumeKeys` is part of the replicated state (every node knows every session's digest, so
//! any of them can check a resume as leader). The check itself is the front end's, before it
//! routes the session to the resuming connection: a wrong secret must not even close the
//! owner's connection.

use std::fmt::Write as _;

use protocol::SessionId;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};

/// Bytes of randomness in a secret: 128 bits.
const SECRET_BYTES: usize = 16;

/// A session's resume secret, as given to its client: lowercase hex.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ResumeSecret(String);

/// Never shows the secret itself, so that it cannot reach a log line.
impl std::fmt::Debug for ResumeSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ResumeSecret(<redacted>)")
    }
}

impl ResumeSecret {
    /// A fresh secret from the operating system's random source, or `None` if that failed
    /// (the session then opens without one, and cannot be resumed).
    pub(crate) fn generate() -> Option<ResumeSecret> {
        let mut bytes = [0u8; SECRET_BYTES];
        SystemRandom::new().fill(&mut bytes).ok()?;
        Some(ResumeSecret(hex(&bytes)))
    }

    /// The secret as the client sees it.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    /// What the replicated state keeps of it.
    pub(crate) fn digest(&self) -> ResumeDigest {
        ResumeDigest::of(&self.0)
    }
}

/// The SHA-256 of a resume secret, in hex: what the log and the snapshots keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeDigest(String);

impl ResumeDigest {
    fn of(secret: &str) -> ResumeDigest {
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        ResumeDigest(hex(digest.as_ref()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// What a presented secret proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeCheck {
    /// It is the session's secret.
    Matches,
    /// The session is known here, and this is not its secret.
    DoesNotMatch,
    /// This node has applied no session with this id (it may not have applied the entry that
    /// opened it yet).
    UnknownSession,
}

/// Every session's resume digest: replicated, and part of snapshots.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResumeKeys {
    /// Persistent, so that a snapshot copies it in O(1) under the replica's lock.
    digests: imbl::HashMap<SessionId, ResumeDigest>,
}

/// [`ResumeKeys`] in a snapshot, in session order.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ResumeKeysImage(Vec<(SessionId, ResumeDigest)>);

impl ResumeKeys {
    /// `session` opened with this digest (or none: it cannot be resumed).
    pub(crate) fn opened(&mut self, session: SessionId, digest: Option<ResumeDigest>) {
        match digest {
            Some(digest) => self.digests.insert(session, digest),
            None => self.digests.remove(&session),
        };
    }

    /// `session` ended: its secret opens nothing any more.
    pub(crate) fn ended(&mut self, session: SessionId) {
        self.digests.remove(&session);
    }

    /// Whether `secret` resumes `session`. Compares digests in constant time, although a
    /// digest's timing tells little about the secret.
    pub(crate) fn check(&self, session: SessionId, secret: &str) -> ResumeCheck {
        let Some(expected) = self.digests.get(&session) else {
            return ResumeCheck::UnknownSession;
        };
        let given = ResumeDigest::of(secret);
        if crate::secret::matches(given.0.as_bytes(), expected.0.as_bytes()) {
            ResumeCheck::Matches
        } else {
            ResumeCheck::DoesNotMatch
        }
    }

    pub(crate) fn to_image(&self) -> ResumeKeysImage {
        let mut digests: Vec<_> = self
            .digests
            .iter()
            .map(|(session, digest)| (*session, digest.clone()))
            .collect();
        digests.sort_by_key(|(session, _)| *session);
        ResumeKeysImage(digests)
    }

    pub(crate) fn from_image(image: ResumeKeysImage) -> ResumeKeys {
        ResumeKeys {
            digests: image.0.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: SessionId = SessionId(7);

    #[test]
    fn secrets_are_128_random_bits_in_hex() {
        let one = ResumeSecret::generate().expect("the OS has randomness");
        let two = ResumeSecret::generate().expect("the OS has randomness");
        assert_eq!(one.as_str().len(), 32);
        assert!(one.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(one, two);
        assert!(!format!("{one:?}").contains(one.as_str()));
    }

    #[test]
    fn only_the_sessions_own_secret_resumes_it_while_it_lives() {
        let secret = ResumeSecret::generate().unwrap();
        let other = ResumeSecret::generate().unwrap();
        let mut keys = ResumeKeys::default();
        assert_eq!(keys.check(S, secret.as_str()), ResumeCheck::UnknownSession);
        keys.opened(S, Some(secret.digest()));
        assert_eq!(keys.check(S, secret.as_str()), ResumeCheck::Matches);
        assert_eq!(keys.check(S, other.as_str()), ResumeCheck::DoesNotMatch);
        assert_eq!(keys.check(S, ""), ResumeCheck::DoesNotMatch);
        assert_eq!(
            keys.check(SessionId(8), secret.as_str()),
            ResumeCheck::UnknownSession
        );
        keys.ended(S);
        assert_eq!(keys.check(S, secret.as_str()), ResumeCheck::UnknownSession);
    }

    #[test]
    fn images_round_trip_and_keep_no_secret() {
        let secret = ResumeSecret::generate().unwrap();
        let mut keys = ResumeKeys::default();
        keys.opened(S, Some(secret.digest()));
        let json = serde_json::to_string(&keys.to_image()).unwrap();
        assert!(!json.contains(secret.as_str()), "{json}");
        let back = ResumeKeys::from_image(serde_json::from_str(&json).unwrap());
        assert_eq!(back, keys);
        assert_eq!(back.check(S, secret.as_str()), ResumeCheck::Matches);
    }
}
