//! Resource names, checked once when built so the rest of the system can trust them.
//!
//! A name is data, never a path: lockd never uses it to build a file name.

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The longest resource name, in UTF-8 bytes.
pub const MAX_RESOURCE_NAME_BYTES: usize = 256;

/// A valid resource name: 1 to 256 bytes of UTF-8 with no control characters (Unicode category
/// Cc) and no whitespace (Unicode White_Space).
///
/// Cloning is cheap (a reference count), because the lock table keeps a name in several maps.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceName(Arc<str>);

/// Why a string is not a valid resource name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResourceName {
    /// The name is the empty string.
    #[error("resource name is empty")]
    Empty,
    /// The name is longer than [`MAX_RESOURCE_NAME_BYTES`].
    #[error("resource name is {0} bytes long; the limit is {MAX_RESOURCE_NAME_BYTES}")]
    TooLong(usize),
    /// The name contains a control character or whitespace.
    #[error("resource name contains {0:?} at byte {1}; control characters and whitespace are not allowed")]
    ForbiddenChar(char, usize),
}

impl ResourceName {
    /// Checks `name` and wraps it.
    pub fn new(name: &str) -> Result<ResourceName, InvalidResourceName> {
        if name.is_empty() {
            return Err(InvalidResourceName::Empty);
        }
        if name.len() > MAX_RESOURCE_NAME_BYTES {
            return Err(InvalidResourceName::TooLong(name.len()));
        }
        // `char::is_control` is exactly category Cc and `char::is_whitespace` exactly the
        // White_Space property, which is what the protocol promises.
        if let Some((at, c)) = name
            .char_indices()
            .find(|(_, c)| c.is_control() || c.is_whitespace())
        {
            return Err(InvalidResourceName::ForbiddenChar(c, at));
        }
        Ok(ResourceName(Arc::from(name)))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ResourceName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for ResourceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl TryFrom<&str> for ResourceName {
    type Error = InvalidResourceName;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        ResourceName::new(name)
    }
}

impl Serialize for ResourceName {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ResourceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        ResourceName::new(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_names() {
        for name in [
            "file_A",
            "db_connection",
            "jobs/nightly",
            "ü",
            "../etc/passwd",
            "a:b@c",
        ] {
            assert_eq!(ResourceName::new(name).unwrap().as_str(), name);
        }
        let longest = "x".repeat(MAX_RESOURCE_NAME_BYTES);
        assert!(ResourceName::new(&longest).is_ok());
    }

    #[test]
    fn rejects_empty_long_control_and_whitespace() {
        assert_eq!(ResourceName::new(""), Err(InvalidResourceName::Empty));
        let long = "x".repeat(MAX_RESOURCE_NAME_BYTES + 1);
        assert_eq!(
            ResourceName::new(&long),
            Err(InvalidResourceName::TooLong(257))
        );
        // Multi-byte characters count in bytes, not chars.
        let long_utf8 = "é".repeat(129);
        assert_eq!(
            ResourceName::new(&long_utf8),
            Err(InvalidResourceName::TooLong(258))
        );
        for (name, bad, at) in [
            ("a b", ' ', 1),
            ("a\tb", '\t', 1),
            ("ab\n", '\n', 2),
            ("a\u{0}", '\u{0}', 1),
            ("a\u{7f}", '\u{7f}', 1),
            ("a\u{85}", '\u{85}', 1),
            ("a\u{a0}b", '\u{a0}', 1),
            ("a\u{2028}", '\u{2028}', 1),
            ("\u{3000}", '\u{3000}', 0),
        ] {
            assert_eq!(
                ResourceName::new(name),
                Err(InvalidResourceName::ForbiddenChar(bad, at)),
                "{name:?}"
            );
        }
    }
}
