//! Comparing a secret a client presents with the one lockd expects, without telling the client
//! anything through the time it takes.
//!
//! `subtle`'s `ct_eq` on two slices returns at once when their lengths differ, so timing it
//! would tell an attacker the secret's length. [`matches`] instead always walks every byte of
//! the expected secret, whatever the length of the guess, and folds the length check into the
//! same constant-time result.

use subtle::{Choice, ConstantTimeEq};

/// Whether `given` equals `expected`. Takes the same time for every `given` of a server (it
/// depends only on the length of `expected`, which is the server's own).
pub(crate) fn matches(given: &[u8], expected: &[u8]) -> bool {
    let mut equal = given.len().ct_eq(&expected.len());
    for (index, byte) in expected.iter().enumerate() {
        // A guess shorter than the secret is compared against zero bytes past its end; the
        // length check above has already made it unequal.
        let guessed = given.get(index).copied().unwrap_or(0);
        equal &= guessed.ct_eq(byte);
    }
    bool::from(equal & Choice::from(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_matches() {
        let secret = b"s3cret-token";
        assert!(matches(secret, secret));
        for guess in [
            &b""[..],
            b"s3cret",
            b"s3cret-token ",
            b"s3cret-tokeN",
            b"s3cret-token\0",
            b"x3cret-token",
        ] {
            assert!(!matches(guess, secret), "{guess:?}");
        }
        assert!(!matches(b"anything", b""));
        assert!(matches(b"", b""));
    }
}
