//! Who may do what: the cluster secret, which makes a request, a gossip
//! datagram or a gossiped member record come from a node rather than from
//! anyone who can reach the port, and the clients' tokens.
//!
//! - Internal HTTP routes (and the operator's cluster changes) require a
//!   request signed under a key derived from the secret ([`request`]): the
//!   secret itself never travels, and a captured request cannot be replayed.
//! - Client routes take `Authorization: Bearer <token>`, checked against the
//!   tokens file's SHA-256 digests ([`tokens`]).
//! - Gossip datagrams are sealed under a key derived from the secret
//!   ([`gossip_transport`](crate::gossip_transport)): nothing from outside
//!   the cluster reaches membership.
//! - Each node also signs the record it publishes (id, generation, address,
//!   state, tokens) with an HMAC-SHA256 under the secret
//!   ([`ClusterSecret::sign`]); `membership` admits a member only on a
//!   record that verifies, and keeps its last verified record when a newer
//!   one does not.

pub mod request;
pub mod tokens;

use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
use sha2::Sha256;

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
        Self(bytes.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// Reads a secret from `path`, which only its owner may access (a
    /// secret in a file others can read is no secret). One trailing newline
    /// (or any trailing white space) is not part of it.
    pub fn from_file(path: &Path) -> Result<Self, SecretFileError> {
        check_private(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self(text.trim_end().to_owned()))
    }

    /// The secret itself: the input of the keys derived from it, and what a
    /// parent process hands its children (`kvnode demo`). Never sent.
    pub fn expose(&self) -> &str {
        &self.0
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

/// Why a file holding a secret is refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretFileError {
    /// It could not be read (or its mode not found).
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Its group or others have permissions on it.
    #[error(
        "{path} has mode {mode:04o}: a file holding a secret must not be accessible by group \
         or others (chmod 600 {path})"
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
}

/// Refuses a file its group or others may read, write or run: like ssh with
/// a private key, any of those bits means the file is not kept private.
pub fn check_private(path: &Path) -> Result<(), SecretFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(|source| SecretFileError::Read {
            path: path.to_owned(),
            source,
        })?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(SecretFileError::TooOpen {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn a_secret_file_others_can_read_is_refused_naming_it_and_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "0123456789abcdef-from-a-file\n").unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let e = ClusterSecret::from_file(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("{mode:04o}")), "{e}");
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let s = ClusterSecret::from_file(&path).unwrap();
            assert_eq!(s.expose(), "0123456789abcdef-from-a-file");
        }
        assert!(matches!(
            ClusterSecret::from_file(&dir.path().join("missing")),
            Err(SecretFileError::Read { .. })
        ));
    }
}
