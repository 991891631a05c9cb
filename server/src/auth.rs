//! The cluster secret: what makes a request, a gossip datagram or a
//! gossiped member record come from a node rather than from anyone who can
//! reach the port.
//!
//! - Internal HTTP routes require `Authorization: Bearer <secret>`, compared
//!   in constant time ([`ClusterSecret::verify_bearer`]).
//! - Gossip datagrams are sealed under a key derived from the secret
//!   ([`gossip_transport`](crate::gossip_transport)): nothing from outside
//!   the cluster reaches membership.
//! - Each node also signs the record it publishes (id, generation, address,
//!   state, tokens) with an HMAC-SHA256 under the secret
//!   ([`ClusterSecret::sign`]); `membership` admits a member only on a
//!   record that verifies, and keeps its last verified record when a newer
//!   one does not.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a cluster. Its `Debug` never prints it.
#[derive(Clone)]
pub struct ClusterSecret(String);

impl std::fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterSecret(..)")
    }
}

impl ClusterSecret {
    /// Wraps a configured secret.
    pub fn new(secret: String) -> Self {
        Self(secret)
    }

    /// A random secret, for a node that forms a cluster of one.
    pub fn random() -> Self {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        Self(hex::encode(bytes))
    }

    /// The secret itself, to put in the `Authorization` header of a call to
    /// another node.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether an `Authorization` header value is `Bearer <this secret>`.
    /// The comparison takes the same time wherever the first difference is.
    pub fn verify_bearer(&self, header: &[u8]) -> bool {
        let Some(token) = header.strip_prefix(b"Bearer ") else {
            return false;
        };
        // ct_eq returns false at once for slices of different lengths, which
        // leaks only the length, never the content.
        token.ct_eq(self.0.as_bytes()).into()
    }

    /// HMAC-SHA256 of `message` under the secret, lower-case hex.
    pub fn sign(&self, message: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(message);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` is [`ClusterSecret::sign`] of `message`, checked
    /// in constant time.
    pub fn verify(&self, message: &[u8], signature: &str) -> bool {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(message);
        mac.verify_slice(&bytes).is_ok()
    }

    fn mac(&self) -> HmacSha256 {
        // HMAC takes keys of any length, so this never fails.
        match HmacSha256::new_from_slice(self.0.as_bytes()) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC accepts keys of every length"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_must_match_exactly() {
        let s = ClusterSecret::new("s3cret".into());
        assert!(s.verify_bearer(b"Bearer s3cret"));
        assert!(!s.verify_bearer(b"Bearer s3cre"));
        assert!(!s.verify_bearer(b"Bearer s3cret "));
        assert!(!s.verify_bearer(b"bearer s3cret"));
        assert!(!s.verify_bearer(b"s3cret"));
        assert!(!s.verify_bearer(b""));
    }

    #[test]
    fn signatures_verify_only_under_the_same_secret_and_message() {
        let a = ClusterSecret::new("a".into());
        let b = ClusterSecret::new("b".into());
        let sig = a.sign(b"node1|127.0.0.1:7700");
        assert!(a.verify(b"node1|127.0.0.1:7700", &sig));
        assert!(!a.verify(b"node1|127.0.0.1:7701", &sig));
        assert!(!b.verify(b"node1|127.0.0.1:7700", &sig));
        assert!(!a.verify(b"node1|127.0.0.1:7700", "zz"));
        assert!(!a.verify(b"node1|127.0.0.1:7700", "abc"));
    }

    #[test]
    fn random_secrets_differ_and_debug_hides_them() {
        let a = ClusterSecret::random();
        assert_ne!(a.expose(), ClusterSecret::random().expose());
        assert!(!format!("{a:?}").contains(a.expose()));
    }
}
