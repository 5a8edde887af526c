//! Secrets: agents' keys and the comparison of presented credentials.
//!
//! An [`AgentKey`] is 32 random bytes from the operating system, written as URL-safe base64
//! without padding (43 characters of `A-Z a-z 0-9 - _`, never a `:`). It is shown to its agent
//! once, when it is issued; the registry stores only its [`KeyHash`], the lowercase hex SHA-256
//! of the key's text. Every comparison of a presented secret with a stored one compares SHA-256
//! digests in constant time, so neither the content nor the length of a secret leaks through
//! timing.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use cm_domain::KeyHash;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in one key.
const KEY_BYTES: usize = 32;

/// An agent's secret key. `Debug` and `Display` never show it; [`AgentKey::expose`] does, to
/// hand it to the agent once.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey(String);

/// The operating system could not provide randomness for a key.
#[derive(Debug, thiserror::Error)]
#[error("the operating system provided no randomness: {0}")]
pub struct NoRandomness(String);

/// Without randomness no key can be issued: the service is unavailable, as when storage is.
impl From<NoRandomness> for crate::StoreError {
    fn from(e: NoRandomness) -> Self {
        Self::Unavailable(e.to_string())
    }
}

impl AgentKey {
    /// A fresh key from the operating system's random number generator.
    ///
    /// # Errors
    /// [`NoRandomness`] when the operating system cannot provide random bytes.
    pub fn generate() -> Result<Self, NoRandomness> {
        let mut bytes = [0_u8; KEY_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| NoRandomness(e.to_string()))?;
        Ok(Self(URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// The key's text, to give to its agent.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// What the registry stores in place of the key.
    #[must_use]
    pub fn hash(&self) -> KeyHash {
        hash_key(&self.0)
    }

    /// Whether `presented` is this key (constant time).
    #[must_use]
    pub fn matches(&self, presented: &str) -> bool {
        verify_key(presented, &self.hash())
    }
}

impl fmt::Debug for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AgentKey(<redacted>)")
    }
}

impl fmt::Display for AgentKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// The [`KeyHash`] of a key's text: its lowercase hex SHA-256.
#[must_use]
pub fn hash_key(key: &str) -> KeyHash {
    KeyHash::parse(&hex(&digest(key)), "key")
        .unwrap_or_else(|_| unreachable!("a hex SHA-256 digest is a key hash"))
}

/// Whether `presented` hashes to `stored`, compared in constant time.
#[must_use]
pub fn verify_key(presented: &str, stored: &KeyHash) -> bool {
    let presented = hash_key(presented);
    bool::from(
        presented
            .as_str()
            .as_bytes()
            .ct_eq(stored.as_str().as_bytes()),
    )
}

/// Whether `presented` (such as a manager's bearer token) equals any of `expected`, comparing
/// SHA-256 digests in constant time: the time taken depends on neither secret's content nor
/// its length. Every candidate is compared (no early exit), so the time taken does not tell
/// which one matched, or whether one did.
#[must_use]
pub fn matches_any<'a>(presented: &str, expected: impl IntoIterator<Item = &'a str>) -> bool {
    let presented = digest(presented);
    expected
        .into_iter()
        .fold(subtle::Choice::from(0), |found, e| {
            found | presented.ct_eq(&digest(e))
        })
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_43_url_safe_characters_and_differ() {
        let a = AgentKey::generate().unwrap();
        let b = AgentKey::generate().unwrap();
        assert_ne!(a, b);
        for k in [&a, &b] {
            assert_eq!(k.expose().len(), 43);
            assert!(
                k.expose()
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{}",
                k.expose()
            );
        }
    }

    #[test]
    fn a_key_never_shows_in_debug_or_display() {
        let k = AgentKey::generate().unwrap();
        assert_eq!(format!("{k:?}"), "AgentKey(<redacted>)");
        assert_eq!(k.to_string(), "<redacted>");
        assert!(!format!("{k:?}{k}").contains(k.expose()));
    }

    #[test]
    fn the_hash_of_a_key_is_its_lowercase_hex_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_key("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let k = AgentKey::generate().unwrap();
        assert_eq!(k.hash(), hash_key(k.expose()));
        assert_ne!(k.hash().as_str(), k.expose());
    }

    #[test]
    fn only_the_key_itself_verifies_against_its_hash() {
        let k = AgentKey::generate().unwrap();
        assert!(verify_key(k.expose(), &k.hash()));
        assert!(k.matches(k.expose()));
        let mut almost = k.expose().to_owned();
        almost.pop();
        for wrong in ["", almost.as_str(), &format!("{}x", k.expose()), "abc"] {
            assert!(!verify_key(wrong, &k.hash()), "{wrong}");
        }
    }

    #[test]
    fn a_secret_matches_only_an_equal_one() {
        assert!(matches_any(
            "a-long-token-1234567",
            ["a-long-token-1234567"]
        ));
        assert!(!matches_any(
            "a-long-token-1234567",
            ["a-long-token-1234568"]
        ));
        assert!(!matches_any("", ["x"]));
        assert!(!matches_any(
            "a-long-token-1234567",
            ["a-long-token-123456"]
        ));
    }

    #[test]
    fn matches_any_finds_a_match_in_any_position() {
        let tokens = [
            "first-token-000000",
            "second-token-00000",
            "third-token-000000",
        ];
        for t in tokens {
            assert!(matches_any(t, tokens));
        }
        assert!(!matches_any("fourth-token-00000", tokens));
        assert!(!matches_any("first-token-000000", []));
    }
}
